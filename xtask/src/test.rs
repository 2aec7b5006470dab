//! `cargo xtask test`: every test of the workspace. Privileged tests run when
//! `SNAPSHOT_TEST_PRIVILEGED=1` is in the environment (CI sets it); btrfs runs on the
//! loop-device image through the test-btrfs flow, the layer-limit tests in a virtual
//! machine with project quotas through the test-quota flow.

use crate::util::{self, Result, XtaskError};

pub fn run() -> Result {
    util::catch_signals();
    let privileged = std::env::var("SNAPSHOT_TEST_PRIVILEGED").is_ok_and(|v| v == "1");
    let root = rustix::process::geteuid().is_root();
    if privileged && !root {
        util::require_root("test")?;
    }
    let mut failed = Vec::new();

    util::header("workspace: cargo test --workspace --exclude snapshot-btrfs");
    let status = util::run_interruptible(util::cargo().args([
        "test",
        "--workspace",
        "--exclude",
        "snapshot-btrfs",
    ]))?;
    if !status.success() {
        failed.push("workspace");
    }

    if root {
        if let Err(e) = crate::test_btrfs::run_caught() {
            if util::interrupted().is_some() {
                return Err(e);
            }
            eprintln!("xtask: {e}");
            failed.push("btrfs");
        }
    } else {
        // Without root there is no image: the btrfs cases print their skip lines.
        util::header("btrfs: cargo test -p snapshot-btrfs (no image: privileged cases skip)");
        let status = util::run_interruptible(util::cargo().args(["test", "-p", "snapshot-btrfs"]))?;
        if !status.success() {
            failed.push("btrfs");
        }
    }

    if root {
        if let Err(e) = crate::test_quota::run_caught() {
            if util::interrupted().is_some() {
                return Err(e);
            }
            eprintln!("xtask: {e}");
            failed.push("quota");
        }
    } else {
        util::header("quota: skipped (the virtual machine with project quotas needs root)");
    }

    util::header("summary");
    if failed.is_empty() {
        println!("all phases passed");
        Ok(())
    } else {
        Err(XtaskError::Failed { phases: failed })
    }
}
