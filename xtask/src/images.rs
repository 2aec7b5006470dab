//! `cargo xtask images`: the btrfs test image, a sparse file formatted through a loop
//! device and labelled with the project's marker.

use std::path::PathBuf;
use std::process::Command;

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
    util::require_tool("mkfs.btrfs", "btrfs-progs")?;
    let dir = util::images_dir();
    std::fs::create_dir_all(&dir).map_err(|source| XtaskError::Io {
        what: "mkdir",
        path: dir.clone(),
        source,
    })?;
    let img = btrfs_image();
    let io_error = |what, source| XtaskError::Io {
        what,
        path: img.clone(),
        source,
    };
    let file = std::fs::File::create(&img).map_err(|e| io_error("create", e))?;
    file.set_len(BTRFS_IMAGE_SIZE)
        .map_err(|e| io_error("size", e))?;
    drop(file);
    let dev = attach(&img)?;
    let path = dev
        .path()
        .ok_or_else(|| XtaskError::LoopNoPath { image: img.clone() })?;
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
