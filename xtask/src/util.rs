//! What the subcommands share: paths, tool checks, running children that Ctrl-C can stop.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

pub use crate::error::XtaskError;

/// What the subcommands return.
pub type Result<T = ()> = std::result::Result<T, XtaskError>;

/// The filesystem label that marks the project's test images.
pub const MARKER_LABEL: &str = "snapshots-rs-test";

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// `target/test-images`.
pub fn images_dir() -> PathBuf {
    workspace_root().join("target").join("test-images")
}

/// `target/test-mounts`.
pub fn mounts_dir() -> PathBuf {
    workspace_root().join("target").join("test-mounts")
}

/// `d` for a message: whole minutes as `40 min`, else seconds.
pub fn minutes(d: Duration) -> String {
    match d.as_secs() {
        s if s % 60 == 0 => format!("{} min", s / 60),
        s => format!("{s} s"),
    }
}

/// Prints a phase header.
pub fn header(title: &str) {
    println!("\n==== {title} ====");
}

/// Fails with the install command when `tool` is not on PATH.
pub fn require_tool(tool: &'static str, package: &'static str) -> Result {
    let found = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()));
    if found {
        Ok(())
    } else {
        Err(XtaskError::Tool { tool, package })
    }
}

/// Fails unless the process is root, naming the command to run instead.
pub fn require_root(command: &'static str) -> Result {
    if rustix::process::geteuid().is_root() {
        Ok(())
    } else {
        Err(XtaskError::NotRoot { command })
    }
}

/// Runs a short tool and fails with its output when it does not succeed.
pub fn run_tool(cmd: &mut Command) -> Result {
    let out = cmd.output().map_err(|e| spawn_error("running", cmd, e))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(XtaskError::Command {
            command: format!("{cmd:?}"),
            status: out.status,
            output: format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        })
    }
}

fn spawn_error(what: &'static str, cmd: &Command, source: std::io::Error) -> XtaskError {
    XtaskError::Spawn {
        what,
        command: format!("{cmd:?}"),
        source,
    }
}

/// The cargo that runs xtask.
pub fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// The last signal received (SIGINT or SIGTERM), 0 for none.
static SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(sig: libc::c_int) {
    SIGNAL.store(sig, Ordering::SeqCst);
}

/// Makes SIGINT and SIGTERM set a flag instead of killing xtask, so it can stop its
/// child and unmount before exiting.
///
/// The crate's one `unsafe` helper: `signal(2)` with a handler that only stores to an
/// atomic, which is async-signal-safe.
pub fn catch_signals() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: see the function comment.
        unsafe {
            libc::signal(
                sig,
                on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t,
            );
        }
    }
}

/// The signal received since [`catch_signals`], if any.
pub fn interrupted() -> Option<i32> {
    match SIGNAL.load(Ordering::SeqCst) {
        0 => None,
        s => Some(s),
    }
}

/// Runs `cmd` in its own process group and waits for it. On SIGINT/SIGTERM the group gets
/// SIGINT, then SIGKILL after 10 s, and this returns Err once the group is gone.
pub fn run_interruptible(cmd: &mut Command) -> Result<ExitStatus> {
    cmd.process_group(0);
    let mut child = cmd.spawn().map_err(|e| spawn_error("starting", cmd, e))?;
    let pgid = rustix::process::Pid::from_child(&child);
    let mut sent: Option<Instant> = None;
    loop {
        if let Some(status) = child
            .try_wait()
            .map_err(|e| spawn_error("waiting for", cmd, e))?
        {
            if let Some(sig) = interrupted() {
                // What is left of the group (the test binary under cargo) must be gone
                // before the caller unmounts.
                let _ = rustix::process::kill_process_group(pgid, rustix::process::Signal::KILL);
                let deadline = Instant::now() + Duration::from_secs(10);
                while rustix::process::test_kill_process_group(pgid).is_ok()
                    && Instant::now() < deadline
                {
                    std::thread::sleep(Duration::from_millis(50));
                }
                return Err(XtaskError::Interrupted {
                    signal: sig,
                    outcome: "the tests were stopped",
                });
            }
            return Ok(status);
        }
        if interrupted().is_some() {
            match sent {
                None => {
                    eprintln!("xtask: interrupted, stopping the tests and cleaning up");
                    let _ = rustix::process::kill_process_group(pgid, rustix::process::Signal::INT);
                    sent = Some(Instant::now());
                }
                Some(t) if t.elapsed() > Duration::from_secs(10) => {
                    let _ =
                        rustix::process::kill_process_group(pgid, rustix::process::Signal::KILL);
                }
                _ => {}
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
