//! `cargo xtask clean`: takes off what an interrupted run left: mounts under
//! `target/test-mounts`, and loop devices whose backing file is under
//! `target/test-images` or whose filesystem carries the project's label. Nothing else.

use std::path::{Path, PathBuf};

use crate::util::{self, Result, XtaskError, MARKER_LABEL};

pub fn run() -> Result {
    util::require_root("clean")?;
    let (mounts, loops) = clean_all()?;
    println!("clean: {mounts} mount(s) and {loops} loop device(s) removed");
    Ok(())
}

/// Removes every leftover; returns how many mounts and loop devices went.
pub fn clean_all() -> Result<(usize, usize)> {
    let mut n_mounts = 0;
    for m in mounts_under(&util::mounts_dir()) {
        unmount(&m)?;
        println!("unmounted {}", m.display());
        n_mounts += 1;
    }
    // The mount points xtask made (btrfs-<pid>), now empty.
    if let Ok(entries) = std::fs::read_dir(util::mounts_dir()) {
        for e in entries.flatten() {
            let _ = std::fs::remove_dir(e.path());
        }
    }
    let mut n_loops = 0;
    for dev in project_loop_devices() {
        // Mounts of it elsewhere are not ours to take off: only the device is.
        if let Ok(ld) = loopdev::LoopDevice::open(&dev) {
            match ld.detach() {
                Ok(()) => {
                    println!("detached {}", dev.display());
                    n_loops += 1;
                }
                Err(e) => eprintln!(
                    "xtask: detaching {}: {e} (is it mounted elsewhere?)",
                    dev.display()
                ),
            }
        }
    }
    Ok((n_mounts, n_loops))
}

/// Mount points at or under `dir`, deepest (and latest) first.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut out: Vec<PathBuf> = text
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(p.replace("\\040", " ")))
        .filter(|p| p.starts_with(dir))
        .collect();
    out.reverse();
    out.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    out
}

/// Unmounts `target`; a busy mount is detached lazily so the device frees once unused.
pub fn unmount(target: &Path) -> Result {
    use rustix::mount::{unmount, UnmountFlags};
    for _ in 0..20 {
        match unmount(target, UnmountFlags::empty()) {
            Ok(()) => return Ok(()),
            Err(rustix::io::Errno::BUSY) => {
                std::thread::sleep(std::time::Duration::from_millis(100))
            }
            Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOENT) => return Ok(()),
            Err(source) => {
                return Err(XtaskError::Unmount {
                    target: target.to_path_buf(),
                    lazy: false,
                    source,
                })
            }
        }
    }
    unmount(target, UnmountFlags::DETACH).map_err(|source| XtaskError::Unmount {
        target: target.to_path_buf(),
        lazy: true,
        source,
    })
}

/// Loop devices that are the project's: backed by a file under `target/test-images`, or
/// holding a filesystem labelled [`MARKER_LABEL`].
pub fn project_loop_devices() -> Vec<PathBuf> {
    let images = util::images_dir();
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir("/sys/block") else {
        return out;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("loop") {
            continue;
        }
        let backing = std::fs::read_to_string(e.path().join("loop/backing_file"));
        let Ok(backing) = backing else { continue }; // not bound
        let backing = PathBuf::from(backing.trim().trim_end_matches(" (deleted)"));
        let dev = PathBuf::from("/dev").join(&name);
        if backing.starts_with(&images) || btrfs_label(&dev).as_deref() == Some(MARKER_LABEL) {
            out.push(dev);
        }
    }
    out
}

/// The label of a btrfs filesystem on `dev`, read from its superblock (64 KiB in: the
/// magic `_BHRfS_M` at 0x40, the label at 0x12b, 256 bytes).
fn btrfs_label(dev: &Path) -> Option<String> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(dev).ok()?;
    let mut sb = [0u8; 0x12b + 256];
    f.read_exact_at(&mut sb, 0x10000).ok()?;
    if &sb[0x40..0x48] != b"_BHRfS_M" {
        return None;
    }
    let label = &sb[0x12b..];
    let end = label.iter().position(|&b| b == 0).unwrap_or(label.len());
    Some(String::from_utf8_lossy(&label[..end]).into_owned())
}
