//! Helpers shared by the integration tests: the privileged gate, mount guards, layers.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use snapshot_core::{CommitOptions, CreateOptions, Snapshotter};
use snapshot_overlay::{OverlayConfig, OverlaySnapshotter};

/// The workspace's one privileged gate (the suite's): true when privileged tests are asked
/// for, else prints the skip line; asked for without root, the test fails.
pub fn privileged(test: &str) -> bool {
    snapshot_testsuite::privileged::require_privileged(test)
}

/// Unmounts everything at its path when dropped, also when a test panics.
pub struct MountGuard(pub PathBuf);

impl MountGuard {
    /// Mounts `mounts` at `target` and returns the guard.
    pub fn mount(mounts: &[snapshot_core::Mount], target: &Path) -> MountGuard {
        std::fs::create_dir_all(target).unwrap();
        snapshot_core::mount::mount_all(mounts, target)
            .unwrap_or_else(|e| panic!("mount {mounts:?} at {}: {e}", target.display()));
        MountGuard(target.to_path_buf())
    }
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        if let Err(e) = snapshot_core::mount::unmount_all(&self.0) {
            eprintln!("unmounting {}: {e}", self.0.display());
        }
    }
}

/// Opens a snapshotter at `<dir>/root`.
pub fn open(dir: &Path, config: OverlayConfig) -> OverlaySnapshotter {
    OverlaySnapshotter::open(&dir.join("root"), config).expect("open the overlay snapshotter")
}

/// Prepares `key` on `parent`, writes `files` straight into its upper directory (no
/// mount needed) and commits it as `name`.
pub fn layer(sn: &OverlaySnapshotter, name: &str, parent: &str, files: &[(&str, &str)]) {
    let key = format!("{name}-active");
    sn.prepare(&key, parent, &CreateOptions::default()).unwrap();
    let upper = sn.upper_dir(&key).unwrap();
    for (path, content) in files {
        let p = upper.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }
    sn.commit(name, &key, &CommitOptions::default()).unwrap();
}

/// The entry names of `<root>/snapshots`, sorted, without the blank trees the store made
/// ahead for creates to come.
pub fn snapshot_entries(sn: &OverlaySnapshotter) -> Vec<String> {
    let blanks: Vec<String> = sn
        .store()
        .blank_trees()
        .iter()
        .map(u64::to_string)
        .collect();
    let mut v: Vec<String> = std::fs::read_dir(sn.root().join("snapshots"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| !blanks.contains(n))
        .collect();
    v.sort();
    v
}

/// A filesystem image of `size` bytes under `dir`, made by `mkfs` (the program and its
/// options; the image path is appended) and loop-mounted at `<dir>/mnt`: mount(8) sets
/// the loop device up with autoclear, so the guard's unmount frees it.
pub fn loop_mounted(dir: &Path, size: u64, mkfs: &[&str]) -> (PathBuf, MountGuard) {
    let img = dir.join("fs.img");
    std::fs::File::create(&img).unwrap().set_len(size).unwrap();
    let out = std::process::Command::new(mkfs[0])
        .args(&mkfs[1..])
        .arg(&img)
        .output()
        .unwrap_or_else(|e| panic!("{} is needed: {e}", mkfs[0]));
    assert!(out.status.success(), "{}: {out:?}", mkfs[0]);
    let mnt = dir.join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let out = std::process::Command::new("mount")
        .args(["-o", "loop"])
        .arg(&img)
        .arg(&mnt)
        .output()
        .unwrap();
    assert!(out.status.success(), "mount -o loop: {out:?}");
    (mnt.clone(), MountGuard(mnt))
}
