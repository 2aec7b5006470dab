//! `cargo xtask images`: the btrfs test image, a sparse file formatted through a loop
//! device and labelled with the project's marker.

use std::path::PathBuf;
use std::process::Command;

use crate::util::{self, Result, MARKER_LABEL};

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
    util::require_tool("mkfs.btrfs", "btrfs-progs")?;
    let dir = util::images_dir();
    std::fs::create_dir_all(&dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
    let img = btrfs_image();
    let file = std::fs::File::create(&img).map_err(|e| format!("create {}: {e}", img.display()))?;
    file.set_len(BTRFS_IMAGE_SIZE)
        .map_err(|e| format!("size {}: {e}", img.display()))?;
    drop(file);
    let dev = attach(&img)?;
    let path = dev.path().ok_or("the loop device has no path")?;
    let res = util::run_tool(
        Command::new("mkfs.btrfs")
            .args(["-q", "-f", "-L", MARKER_LABEL])
            .arg(&path),
    );
    if let Err(e) = dev.detach() {
        eprintln!("xtask: detaching {}: {e}", path.display());
    }
    res?;
    Ok(img)
}

/// Attaches `img` to a free loop device with autoclear, so the device frees itself when
/// its last user (the mount) goes, even if xtask is killed.
pub fn attach(img: &std::path::Path) -> Result<loopdev::LoopDevice> {
    let control = loopdev::LoopControl::open()
        .map_err(|e| format!("open /dev/loop-control: {e} (modprobe loop)"))?;
    // next_free reserves nothing: another process can take the device first.
    for _ in 0..5 {
        let dev = control
            .next_free()
            .map_err(|e| format!("find a free loop device: {e}"))?;
        match dev.with().autoclear(true).attach(img) {
            Ok(()) => return Ok(dev),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => continue,
            Err(e) => return Err(format!("attach {} to a loop device: {e}", img.display())),
        }
    }
    Err(format!(
        "attach {}: every free loop device was taken",
        img.display()
    ))
}
