//! `cargo xtask test-btrfs`: builds the btrfs image, attaches and mounts it under
//! `target/test-mounts/`, runs `cargo test -p snapshot-btrfs` on it twice (quotas off,
//! then on, so both usage paths run), then containerd's end-to-end test on the btrfs
//! backend (`snapshotd --features btrfs`), and always unmounts and detaches: after
//! failures, and after SIGINT/SIGTERM, which stop the tests first.

use std::path::PathBuf;
use std::process::Command;

use crate::util::{self, Result, XtaskError};
use crate::{clean, images};

pub fn run() -> Result {
    util::require_root("test-btrfs")?;
    util::catch_signals();
    run_caught()
}

/// The flow, once signals are caught (`cargo xtask test` installs them first).
pub fn run_caught() -> Result {
    util::require_tool("btrfs", "btrfs-progs")?;
    util::header("btrfs: leftovers of earlier runs");
    clean::clean_all()?;
    util::header("btrfs: image");
    let img = images::build_btrfs()?;
    let mounted = Mounted::new(&img)?;
    println!(
        "mounted {} ({}) at {}",
        img.display(),
        mounted.device.display(),
        mounted.target.display()
    );
    let mut failed = Vec::new();
    for quotas in [false, true] {
        if util::interrupted().is_some() {
            break;
        }
        let title = if quotas { "quotas on" } else { "quotas off" };
        util::header(&format!("btrfs: cargo test -p snapshot-btrfs ({title})"));
        if quotas {
            util::run_tool(
                Command::new("btrfs")
                    .args(["quota", "enable"])
                    .arg(&mounted.target),
            )?;
            util::run_tool(
                Command::new("btrfs")
                    .args(["quota", "rescan", "-w"])
                    .arg(&mounted.target),
            )?;
        }
        let status = util::run_interruptible(
            util::cargo()
                .args(["test", "-p", "snapshot-btrfs"])
                .env("SNAPSHOT_BTRFS_MOUNT", &mounted.target)
                .env("SNAPSHOT_BTRFS_QUOTAS", if quotas { "1" } else { "0" })
                .env("SNAPSHOT_TEST_PRIVILEGED", "1"),
        )?;
        if !status.success() {
            failed.push(title);
        }
    }
    if util::interrupted().is_none() {
        util::header(
            "btrfs: containerd end to end and kill-restart through snapshotd (--features btrfs)",
        );
        let status = util::run_interruptible(
            util::cargo()
                .args([
                    "test",
                    "-p",
                    "snapshotd",
                    "--features",
                    "btrfs",
                    "--test",
                    "containerd",
                    "--test",
                    "killrestart",
                ])
                .args([
                    "--",
                    "containerd_imports_runs_and_collects_on_btrfs",
                    "kill_restart_with_four_clients_on_btrfs",
                ])
                .env("SNAPSHOT_BTRFS_MOUNT", &mounted.target)
                .env("SNAPSHOT_TEST_PRIVILEGED", "1"),
        )?;
        if !status.success() {
            failed.push("containerd on btrfs");
        }
    }
    drop(mounted);
    if let Some(sig) = util::interrupted() {
        return Err(XtaskError::Interrupted {
            signal: sig,
            outcome: "mounts and loop devices removed",
        });
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(XtaskError::BtrfsFailed { runs: failed })
    }
}

/// The image attached (autoclear) and mounted; dropping it unmounts everything under the
/// mount point and lets the loop device go.
struct Mounted {
    device: PathBuf,
    target: PathBuf,
    loopdev: Option<loopdev::LoopDevice>,
}

impl Mounted {
    fn new(img: &std::path::Path) -> Result<Mounted> {
        let target = util::mounts_dir().join(format!("btrfs-{}", std::process::id()));
        std::fs::create_dir_all(&target).map_err(|source| XtaskError::Io {
            what: "mkdir",
            path: target.clone(),
            source,
        })?;
        let dev = images::attach(img)?;
        let device = dev.path().ok_or_else(|| XtaskError::LoopNoPath {
            image: img.to_path_buf(),
        })?;
        let mut m = Mounted {
            device,
            target,
            loopdev: Some(dev),
        };
        rustix::mount::mount(
            &m.device,
            &m.target,
            "btrfs",
            rustix::mount::MountFlags::empty(),
            None,
        )
        .map_err(|source| XtaskError::Mount {
            device: m.device.clone(),
            target: m.target.clone(),
            source,
        })?;
        // With the mount holding the device, autoclear frees it at the unmount.
        m.loopdev.take();
        Ok(m)
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        util::header("btrfs: cleanup");
        for m in clean::mounts_under(&self.target) {
            match clean::unmount(&m) {
                Ok(()) => println!("unmounted {}", m.display()),
                Err(e) => eprintln!("xtask: {e}"),
            }
        }
        if let Some(dev) = self.loopdev.take() {
            let _ = dev.detach();
        }
        if let Err(e) = std::fs::remove_dir(&self.target) {
            eprintln!("xtask: rmdir {}: {e}", self.target.display());
        }
        // Autoclear detaches once the last user is gone; wait for it so the caller sees
        // a clean table.
        let name = self
            .device
            .file_name()
            .map(|n| n.to_owned())
            .unwrap_or_default();
        let backing = PathBuf::from("/sys/block")
            .join(name)
            .join("loop/backing_file");
        for _ in 0..50 {
            if !backing.exists() {
                println!("detached {}", self.device.display());
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        if let Ok(ld) = loopdev::LoopDevice::open(&self.device) {
            let _ = ld.detach();
        }
        eprintln!(
            "xtask: {} did not detach by itself; detached it",
            self.device.display()
        );
    }
}
