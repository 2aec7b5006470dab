//! Gating of privileged tests (mounts, loop devices), as DESIGN.md section 6 fixes it.
//!
//! - `SNAPSHOT_TEST_PRIVILEGED` unset (or not `1`): a privileged test prints one line
//!   `skipped: <test>: needs SNAPSHOT_TEST_PRIVILEGED=1 and root` and passes.
//! - `SNAPSHOT_TEST_PRIVILEGED=1`: the test runs; when it cannot (not root, a tool or
//!   kernel feature missing) it **fails**, so CI never reports a green run that tested
//!   nothing. A test never skips because an operation returned EPERM.
//!
//! ```
//! use snapshot_testsuite::privileged::require_privileged;
//!
//! fn mounts_something() {
//!     if !require_privileged("mybackend::mounts_something") {
//!         return; // skipped, the line is printed
//!     }
//!     // ... mount ...
//! }
//! # mounts_something();
//! ```

/// The environment variable that turns privileged tests on.
pub const ENV: &str = "SNAPSHOT_TEST_PRIVILEGED";

/// True when `SNAPSHOT_TEST_PRIVILEGED=1`.
pub fn privileged_requested() -> bool {
    std::env::var(ENV).is_ok_and(|v| v == "1")
}

/// True when the process runs with effective uid 0.
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// The skip line for `test` (`backend::case`).
pub fn skip_line(test: &str) -> String {
    format!("skipped: {test}: needs {ENV}=1 and root")
}

/// Whether the privileged test `test` should run.
///
/// Returns false after printing the skip line when `SNAPSHOT_TEST_PRIVILEGED` is unset.
///
/// # Panics
/// When `SNAPSHOT_TEST_PRIVILEGED=1` but the process is not root.
pub fn require_privileged(test: &str) -> bool {
    if !privileged_requested() {
        println!("{}", skip_line(test));
        return false;
    }
    if !is_root() {
        panic!(
            "{test}: {ENV}=1 but the test runs as uid {}: run it as root (sudo -E) or unset {ENV}",
            rustix::process::geteuid().as_raw()
        );
    }
    true
}

/// Fails a privileged test whose requirement `what` is not met, or skips it (returns
/// false, printing the skip line with `reason`) when privileged tests are off.
///
/// # Panics
/// When `SNAPSHOT_TEST_PRIVILEGED=1`: the requirement must hold in privileged runs.
pub fn unavailable(test: &str, reason: &str) -> bool {
    if privileged_requested() {
        panic!("{test}: {ENV}=1 but it cannot run here: {reason}");
    }
    println!("skipped: {test}: {reason}");
    false
}

/// Whether the program `tool` is on `PATH`.
pub fn has_tool(tool: &str) -> bool {
    let Some(path) = std::env::var_os("PATH") else {
        return false;
    };
    std::env::split_paths(&path).any(|dir| {
        let p = dir.join(tool);
        std::fs::metadata(&p).is_ok_and(|m| {
            use std::os::unix::fs::PermissionsExt;
            m.is_file() && m.permissions().mode() & 0o111 != 0
        })
    })
}

/// [`require_privileged`], then checks that every program of `tools` is on `PATH`.
///
/// # Panics
/// When `SNAPSHOT_TEST_PRIVILEGED=1` and the process is not root or a tool is missing.
pub fn require_privileged_with_tools(test: &str, tools: &[&str]) -> bool {
    if !require_privileged(test) {
        return false;
    }
    for tool in tools {
        if !has_tool(tool) {
            panic!("{test}: {ENV}=1 but {tool} is not on PATH: install it");
        }
    }
    true
}
