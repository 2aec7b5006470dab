//! `cargo xtask images`: the btrfs test image, a sparse file formatted through a loop
//! device and labelled with the project's marker.

use std::path::PathBuf;
use std::process::Command;

use crate::clean;
use crate::util::{self, Result, XtaskError, MARKER_LABEL};

/// Size of the sparse btrfs image.
const BTRFS_IMAGE_SIZE: u64 = 2 << 30;

pub fn run() -> Result {
    util::require_root("images")?;
    let img = build_btrfs()?;
    println!("built {}", img.display());
    Ok(())
}

/// The btrfs image's path.
pub fn btrfs_image() -> PathBuf {
    util::images_dir().join("btrfs.img")
}

/// (Re)builds the btrfs image, so every run starts on an empty filesystem.
pub fn build_btrfs() -> Result<PathBuf> {
    build(
        &btrfs_image(),
        BTRFS_IMAGE_SIZE,
        "mkfs.btrfs",
        &["-q", "-f", "-L", MARKER_LABEL],
    )
}

/// (Re)builds the journaled ext4 image the benchmarks run on (ext4's defaults, with one
/// inode per 4 KiB: a store of 100,000 overlay snapshots holds 300,000 directories; the
/// label is at most 16 characters there, so the image is found by its path).
pub fn build_ext4(name: &str, size: u64) -> Result<PathBuf> {
    build(
        &util::images_dir().join(name),
        size,
        "mkfs.ext4",
        &["-q", "-F", "-i", "4096"],
    )
}

/// A sparse image of `size` bytes at `img`, formatted by `mkfs` with `args` through a loop
/// device.
fn build(img: &std::path::Path, size: u64, mkfs: &'static str, args: &[&str]) -> Result<PathBuf> {
    util::require_tool(
        mkfs,
        if mkfs == "mkfs.btrfs" {
            "btrfs-progs"
        } else {
            "e2fsprogs"
        },
    )?;
    let dir = util::images_dir();
    std::fs::create_dir_all(&dir).map_err(|source| XtaskError::Io {
        what: "mkdir",
        path: dir.clone(),
        source,
    })?;
    let img = img.to_path_buf();
    let io_error = |what, source| XtaskError::Io {
        what,
        path: img.clone(),
        source,
    };
    let file = std::fs::File::create(&img).map_err(|e| io_error("create", e))?;
    file.set_len(size).map_err(|e| io_error("size", e))?;
    drop(file);
    let dev = attach(&img)?;
    let path = dev
        .path()
        .ok_or_else(|| XtaskError::LoopNoPath { image: img.clone() })?;
    let res = util::run_tool(Command::new(mkfs).args(args).arg(&path));
    if let Err(e) = dev.detach() {
        eprintln!("xtask: detaching {}: {e}", path.display());
    }
    res?;
    Ok(img)
}

/// Attaches `img` to a free loop device with autoclear, so the device frees itself when
/// its last user (the mount) goes, even if xtask is killed.
pub fn attach(img: &std::path::Path) -> Result<loopdev::LoopDevice> {
    let control = loopdev::LoopControl::open().map_err(XtaskError::LoopControl)?;
    // next_free reserves nothing: another process can take the device first.
    for _ in 0..5 {
        let dev = control.next_free().map_err(XtaskError::NoFreeLoop)?;
        match dev.with().autoclear(true).attach(img) {
            Ok(()) => return Ok(dev),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => continue,
            Err(source) => {
                return Err(XtaskError::LoopAttach {
                    image: img.to_path_buf(),
                    source,
                })
            }
        }
    }
    Err(XtaskError::LoopsTaken {
        image: img.to_path_buf(),
    })
}

/// The image attached (autoclear) and mounted; dropping it unmounts everything under the
/// mount point and lets the loop device go.
pub struct Mounted {
    /// The loop device.
    pub device: PathBuf,
    /// The mount point.
    pub target: PathBuf,
    loopdev: Option<loopdev::LoopDevice>,
}

impl Mounted {
    /// Attaches `img` and mounts it (filesystem `fstype`) under `target/test-mounts`.
    pub fn new(img: &std::path::Path, fstype: &'static str) -> Result<Mounted> {
        let target = util::mounts_dir().join(format!("{fstype}-{}", std::process::id()));
        std::fs::create_dir_all(&target).map_err(|source| XtaskError::Io {
            what: "mkdir",
            path: target.clone(),
            source,
        })?;
        let dev = attach(img)?;
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
            fstype,
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
        util::header("cleanup");
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
