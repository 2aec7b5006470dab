//! `cargo xtask test-btrfs`: builds the btrfs image, attaches and mounts it under
//! `target/test-mounts/`, runs `cargo test -p snapshot-btrfs` on it twice (quotas off,
//! then on, so both usage paths run), then containerd's end-to-end test on the btrfs
//! backend (`snapshotd --features btrfs`), and always unmounts and detaches: after
//! failures, and after SIGINT/SIGTERM, which stop the tests first.

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
    let mounted = images::Mounted::new(&img, "btrfs")?;
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
            "btrfs: containerd 1.6 and 2.x end to end and kill-restart through snapshotd (--features btrfs)",
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
                    "containerd2_imports_runs_and_collects_on_btrfs",
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
