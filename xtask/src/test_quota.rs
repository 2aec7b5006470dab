//! `cargo xtask test-quota`: the tests of layer limits, in a virtual machine whose kernel
//! has project quotas (a development kernel may have none: this one lacks
//! CONFIG_XFS_QUOTA and CONFIG_QFMT_V2). Builds snapshot-overlay's `quota` and `suite`
//! tests and snapshotd's `quota` test on the host, then runs `xtask/vm/quota-tests.sh` in
//! the VM ([`crate::vm`]), which makes xfs and ext4 with project quotas and runs them on
//! each.

use std::path::PathBuf;

use crate::util::{self, Result, XtaskError};

pub fn run() -> Result {
    util::require_root("test-quota")?;
    util::catch_signals();
    run_caught()
}

/// The flow, once signals are caught (`cargo xtask test` installs them first).
pub fn run_caught() -> Result {
    util::header("quota: build the tests (cargo test --no-run)");
    let quota = test_binary("snapshot-overlay", "quota")?;
    let suite = test_binary("snapshot-overlay", "suite")?;
    let daemon = test_binary("snapshotd", "quota")?;
    let script = util::workspace_root()
        .join("xtask")
        .join("vm")
        .join("quota-tests.sh");
    let command: Vec<String> = [script, quota, suite, daemon]
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let mut full = vec!["bash".to_string()];
    full.extend(command);
    let code = crate::vm::run_in_vm(&full, &[("RUST_BACKTRACE".into(), "1".into())])?;
    if code == 0 {
        Ok(())
    } else {
        Err(XtaskError::Failed {
            phases: vec!["quota (in the VM)"],
        })
    }
}

/// Builds the test target `test` of `package` and returns its executable.
fn test_binary(package: &str, test: &str) -> Result<PathBuf> {
    let mut cmd = util::cargo();
    cmd.args([
        "test",
        "-p",
        package,
        "--test",
        test,
        "--no-run",
        "--message-format=json",
    ]);
    let out = cmd.output().map_err(|source| XtaskError::Spawn {
        what: "running",
        command: format!("{cmd:?}"),
        source,
    })?;
    let text = String::from_utf8_lossy(&out.stdout);
    let found = text
        .lines()
        .filter(|l| l.contains("\"reason\":\"compiler-artifact\"") && l.contains("\"test\":true"))
        .filter(|l| l.contains(&format!("\"name\":\"{test}\"")))
        .find_map(|l| {
            let rest = &l[l.find("\"executable\":\"")? + 14..];
            Some(PathBuf::from(&rest[..rest.find('"')?]))
        });
    match (out.status.success(), found) {
        (true, Some(p)) => Ok(p),
        _ => Err(XtaskError::Command {
            command: format!("{cmd:?}"),
            status: out.status,
            output: String::from_utf8_lossy(&out.stderr).into_owned(),
        }),
    }
}
