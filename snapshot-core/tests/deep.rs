//! A container can make a directory chain far deeper than any stack or descriptor limit:
//! deleting and measuring such a tree must still work, on a small stack and with few
//! descriptors.

use std::os::fd::OwnedFd;

use rustix::fs::{mkdirat, openat, Mode, OFlags};

const DEPTH: usize = 20_000;

/// `dir/d/d/d/...` (DEPTH levels) with a file at the bottom, made relative to each level's
/// descriptor (the path is far longer than PATH_MAX).
fn deep_chain(dir: &std::path::Path) {
    let mut fd: OwnedFd = openat(
        rustix::fs::CWD,
        dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .unwrap();
    for _ in 0..DEPTH {
        mkdirat(&fd, "d", Mode::from_raw_mode(0o755)).unwrap();
        fd = openat(
            &fd,
            "d",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .unwrap();
    }
    let f = openat(
        &fd,
        "bottom",
        OFlags::WRONLY | OFlags::CREATE | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o644),
    )
    .unwrap();
    rustix::io::write(&f, b"x").unwrap();
}

#[test]
fn a_20000_deep_tree_is_measured_and_deleted_on_a_small_stack_with_few_descriptors() {
    // Few descriptors for the whole test process (this file is its own binary).
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    rustix::process::setrlimit(
        rustix::process::Resource::Nofile,
        rustix::process::Rlimit {
            current: Some(256),
            maximum: limit.maximum,
        },
    )
    .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let top = tmp.path().join("tree");
    std::fs::create_dir(&top).unwrap();
    deep_chain(&top);
    let t = std::thread::Builder::new()
        .stack_size(256 << 10)
        .spawn(move || {
            let u = snapshot_core::usage::disk_usage(&top).unwrap();
            assert_eq!(u.inodes, DEPTH as u64 + 2, "the dirs, the top and the file");
            snapshot_core::layout::remove_tree(&top).unwrap();
            assert!(!top.exists());
            snapshot_core::layout::remove_tree(&top).unwrap(); // gone already: fine
        })
        .unwrap();
    t.join().unwrap();
}
