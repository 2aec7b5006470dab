//! containerd's own conformance suite (containerd 1.6's `snapshots/testsuite`, in Go)
//! against `snapshotd --namespaced`, through containerd's proxy snapshotter client: see
//! `containerd-suite/suite_test.go`. Each of its cases starts a daemon of its own.
//!
//! Needs (Debian): golang-go and golang-github-containerd-containerd-dev (containerd's
//! source, built in GOPATH mode with no network). Privileged (`SNAPSHOT_TEST_PRIVILEGED=1`,
//! as root): the suite mounts.

use std::path::Path;
use std::process::Command;

const SNAPSHOTD: &str = env!("CARGO_BIN_EXE_snapshotd");
/// Where golang-github-containerd-containerd-dev puts containerd's source.
const GOPATH: &str = "/usr/share/gocode";

#[test]
fn containerds_suite_passes_through_a_namespaced_daemon() {
    if !snapshot_testsuite::privileged::require_privileged_with_tools(
        "containerds_suite_passes_through_a_namespaced_daemon",
        &["go"],
    ) {
        return;
    }
    let suite = Path::new(GOPATH).join("src/github.com/containerd/containerd/snapshots/testsuite");
    assert!(
        suite.is_dir(),
        "{} is missing: apt-get install golang-github-containerd-containerd-dev",
        suite.display()
    );
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/containerd-suite");
    let cache = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/go-cache");
    let out = Command::new("go")
        .args(["test", "-count=1", "-v", "."])
        .current_dir(&dir)
        .env("GO111MODULE", "off")
        .env("GOPATH", GOPATH)
        .env("GOCACHE", &cache)
        .env("GOFLAGS", "")
        .env("SNAPSHOTD", SNAPSHOTD)
        .output()
        .expect("go test");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "containerd's suite failed through snapshotd --namespaced:\n{stdout}\n{stderr}"
    );
    let passed = stdout.matches("    --- PASS").count();
    println!("{passed} cases of containerd's suite passed");
    assert!(passed >= 20, "too few cases ran:\n{stdout}");
    assert!(!stdout.contains("--- FAIL"), "{stdout}");
}
