//! `snapshotd --max-size`: the daemon's default layer limit, as a process.
//!
//! Where the root has no project quotas the daemon refuses to start, naming the flag; on a
//! filesystem that has them (`SNAPSHOT_QUOTA_MOUNT`, which `cargo xtask test-quota` sets in
//! a virtual machine) a container's layer served by the daemon fills up at the limit.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{privileged, wait_for, ChildGuard};
use snapshots::{CreateOptions, Snapshotter};

const SNAPSHOTD: &str = env!("CARGO_BIN_EXE_snapshotd");

fn daemon(dir: &Path, root: &Path, extra: &[&str]) -> Command {
    std::fs::write(dir.join("config.toml"), "log_level = \"info\"\n").unwrap();
    let mut cmd = Command::new(SNAPSHOTD);
    cmd.arg("--root")
        .arg(root)
        .arg("--address")
        .arg(dir.join("snapshotd.sock"))
        .arg("--config")
        .arg(dir.join("config.toml"))
        .args(["--backend", "overlay"])
        .args(extra)
        .stdin(Stdio::null())
        .env_remove("NOTIFY_SOCKET");
    cmd
}

#[test]
fn max_size_is_refused_at_start_where_it_cannot_be_enforced() {
    if !privileged("max_size_is_refused_at_start_where_it_cannot_be_enforced") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = daemon(
        dir.path(),
        &dir.path().join("root"),
        &["--max-size", "lots"],
    )
    .output()
    .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("--max-size") && err.contains("lots"), "{err}");
    let mounts = snapshots::mount::mountinfo().unwrap();
    if snapshots::snapshot_core::quota::project_quotas_in(&mounts, dir.path()) {
        println!("the test's directory has project quotas: --max-size 1G is not refused");
        return;
    }
    let out = daemon(dir.path(), &dir.path().join("root"), &["--max-size", "1G"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "started with a limit it cannot enforce"
    );
    assert!(
        err.contains("--max-size") && err.contains("prjquota"),
        "the error names the flag and what it needs: {err}"
    );
    assert!(!dir.path().join("snapshotd.sock").exists());
}

#[test]
fn a_layer_served_with_max_size_fills_up_at_the_limit() {
    let Some(base) = std::env::var_os("SNAPSHOT_QUOTA_MOUNT") else {
        println!(
            "a_layer_served_with_max_size_fills_up_at_the_limit: skipped: \
             SNAPSHOT_QUOTA_MOUNT names no filesystem with project quotas (cargo xtask \
             test-quota runs it in a virtual machine that has them)"
        );
        return;
    };
    let dir = tempfile::tempdir_in(base).unwrap();
    let limit: u64 = 3 << 20;
    let mut child = ChildGuard::new(
        daemon(dir.path(), &dir.path().join("root"), &["--max-size", "3M"])
            .stderr(std::fs::File::create(dir.path().join("log")).unwrap())
            .spawn()
            .unwrap(),
    );
    let socket = dir.path().join("snapshotd.sock");
    assert!(
        wait_for(&socket, Duration::from_secs(20)),
        "no socket: {}",
        std::fs::read_to_string(dir.path().join("log")).unwrap_or_default()
    );
    let sn = snapshotd::client::RemoteSnapshotter::connect(&socket).unwrap();
    let mounts = sn
        .prepare("container", "", &CreateOptions::default())
        .unwrap();
    let target = dir.path().join("rootfs");
    std::fs::create_dir_all(&target).unwrap();
    snapshots::mount::mount_all(&mounts, &target).unwrap();
    let fill = snapshot_testsuite::fill_as_container(&target.join("fill"), 2 * limit);
    snapshots::mount::unmount_all(&target).unwrap();
    assert!(fill.full(), "wrote past --max-size 3M: {fill:?}");
    let usage = sn.usage("container").unwrap();
    assert!(
        usage.size <= limit && usage.size + 4 * 4096 >= limit,
        "usage {usage:?} through the daemon, limit {limit}"
    );
    drop(sn);
    child.signal_and_wait(rustix::process::Signal::TERM, Duration::from_secs(20));
}
