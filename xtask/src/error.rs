//! [`XtaskError`]: why a subcommand stopped.

use std::io;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

/// Why a subcommand stopped. The message names the path, tool or command and says what to
/// do; `main` prints it after `xtask: ` and exits non-zero.
#[derive(Debug, thiserror::Error)]
pub enum XtaskError {
    /// A filesystem call on `path` failed.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was being done, e.g. "mkdir".
        what: &'static str,
        /// The path it was done on.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A program the subcommand needs is not on PATH.
    #[error("{tool} is missing: install it with `apt-get install -y {package}`")]
    Tool {
        /// The program, e.g. "mkfs.btrfs".
        tool: &'static str,
        /// The Debian package that has it.
        package: &'static str,
    },
    /// The subcommand needs root and xtask is not running as root.
    #[error(
        "{command} needs root (loop devices and mounts): run `sudo -E env \"PATH=$PATH\" cargo xtask {command}`"
    )]
    NotRoot {
        /// The xtask subcommand, e.g. "test-btrfs".
        command: &'static str,
    },
    /// A child process could not be started or waited for.
    #[error("{what} {command}: {source}")]
    Spawn {
        /// "running", "starting" or "waiting for".
        what: &'static str,
        /// The command line, as `Command`'s Debug prints it.
        command: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A tool ran and did not succeed.
    #[error("{command} failed ({status}): {output}")]
    Command {
        /// The command line, as `Command`'s Debug prints it.
        command: String,
        /// How it exited.
        status: ExitStatus,
        /// What it printed, stdout then stderr.
        output: String,
    },
    /// SIGINT or SIGTERM stopped the run.
    #[error("interrupted by signal {signal}: {outcome}")]
    Interrupted {
        /// The signal number.
        signal: i32,
        /// What xtask did about it, e.g. "the tests were stopped".
        outcome: &'static str,
    },
    /// Unmounting failed.
    #[error("unmount{} {}: {source}", if *lazy { " -l" } else { "" }, target.display())]
    Unmount {
        /// The mount point.
        target: PathBuf,
        /// Whether it was the lazy (detaching) unmount.
        lazy: bool,
        /// The OS error.
        #[source]
        source: rustix::io::Errno,
    },
    /// Mounting the btrfs image's loop device failed.
    #[error("mount -t btrfs {} {}: {source} (modprobe btrfs)", device.display(), target.display())]
    Mount {
        /// The loop device.
        device: PathBuf,
        /// The mount point.
        target: PathBuf,
        /// The OS error.
        #[source]
        source: rustix::io::Errno,
    },
    /// `/dev/loop-control` does not open.
    #[error("open /dev/loop-control: {0} (modprobe loop)")]
    LoopControl(#[source] io::Error),
    /// The kernel gave no free loop device.
    #[error("find a free loop device: {0}")]
    NoFreeLoop(#[source] io::Error),
    /// Attaching the image to a loop device failed.
    #[error("attach {} to a loop device: {source}", image.display())]
    LoopAttach {
        /// The image file.
        image: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Other processes took every free loop device before xtask could attach.
    #[error("attach {}: every free loop device was taken", image.display())]
    LoopsTaken {
        /// The image file.
        image: PathBuf,
    },
    /// An attached loop device reports no `/dev` path.
    #[error("the loop device attached to {} has no path", image.display())]
    LoopNoPath {
        /// The image file.
        image: PathBuf,
    },
    /// A subcommand's arguments are wrong: `problem` says how.
    #[error("{command}: {problem}")]
    Usage {
        /// The subcommand.
        command: &'static str,
        /// What is wrong, or the usage line.
        problem: &'static str,
    },
    /// `/dev/kvm` does not open: no KVM for the VM.
    #[error(
        "open /dev/kvm: {0}: the VM needs KVM: load it with `modprobe kvm_intel` (Intel) or \
         `modprobe kvm_amd` (AMD), with virtualization enabled in the firmware (or nested \
         virtualization on a VM host)"
    )]
    NoKvm(#[source] io::Error),
    /// The busybox found is dynamically linked, so it cannot run in the initramfs.
    #[error(
        "{} is dynamically linked and cannot run in the VM's initramfs: install the static one \
         with `apt-get install -y busybox-static`",
        path.display()
    )]
    BusyboxNotStatic {
        /// The busybox binary.
        path: PathBuf,
    },
    /// A helper script ran and did not succeed; it printed why.
    #[error("{} failed ({status}): its messages are above", script.display())]
    Script {
        /// The script, e.g. `xtask/vm/fetch-kernel.sh`.
        script: PathBuf,
        /// How it exited.
        status: ExitStatus,
    },
    /// Another `cargo xtask vm` holds the VM's lock.
    #[error(
        "another `cargo xtask vm` is running (it holds {}): wait for it to end",
        lock.display()
    )]
    VmBusy {
        /// `target/vm/lock`.
        lock: PathBuf,
    },
    /// The VM ran past its time limit and was killed.
    #[error(
        "the VM ran longer than {} and was stopped: its console is in {}",
        crate::util::minutes(*timeout),
        log.display()
    )]
    VmTimeout {
        /// The limit.
        timeout: Duration,
        /// The console log.
        log: PathBuf,
    },
    /// The VM's init could not set up the command's environment.
    #[error("the VM's init failed: {message} (its console is in {})", log.display())]
    VmInit {
        /// What init wrote to `init-error`.
        message: String,
        /// The console log.
        log: PathBuf,
    },
    /// qemu ended and no exit code of the command was written.
    #[error(
        "the VM ended (qemu {status}) without recording the command's exit code in {}: it \
         failed to boot or died; see the messages above (vm init's, the kernel's, qemu's) and \
         the console in {}",
        rc.display(),
        log.display()
    )]
    VmDied {
        /// How qemu exited.
        status: ExitStatus,
        /// The exit-code file that is missing.
        rc: PathBuf,
        /// The console log.
        log: PathBuf,
    },
    /// Phases of `cargo xtask test` failed; their output is above.
    #[error("failed phases: {}", phases.join(", "))]
    Failed {
        /// The phases, e.g. "workspace", "btrfs".
        phases: Vec<&'static str>,
    },
    /// Runs of the btrfs tests failed; their output is above.
    #[error("btrfs tests failed ({})", runs.join(", "))]
    BtrfsFailed {
        /// The runs, e.g. "quotas on".
        runs: Vec<&'static str>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_object_and_the_fix() {
        let cases = [
            (
                XtaskError::Io {
                    what: "mkdir",
                    path: "/t/x".into(),
                    source: io::Error::from_raw_os_error(libc::EACCES),
                },
                "mkdir /t/x: Permission denied (os error 13)",
            ),
            (
                XtaskError::Tool {
                    tool: "mkfs.btrfs",
                    package: "btrfs-progs",
                },
                "mkfs.btrfs is missing: install it with `apt-get install -y btrfs-progs`",
            ),
            (
                XtaskError::NotRoot { command: "clean" },
                "clean needs root (loop devices and mounts): run `sudo -E env \"PATH=$PATH\" cargo xtask clean`",
            ),
            (
                XtaskError::Unmount {
                    target: "/m".into(),
                    lazy: true,
                    source: rustix::io::Errno::BUSY,
                },
                "unmount -l /m: Device or resource busy (os error 16)",
            ),
            (
                XtaskError::Unmount {
                    target: "/m".into(),
                    lazy: false,
                    source: rustix::io::Errno::BUSY,
                },
                "unmount /m: Device or resource busy (os error 16)",
            ),
            (
                XtaskError::Interrupted {
                    signal: 2,
                    outcome: "the tests were stopped",
                },
                "interrupted by signal 2: the tests were stopped",
            ),
            (
                XtaskError::VmTimeout {
                    timeout: Duration::from_secs(2400),
                    log: "/w/target/vm/console.log".into(),
                },
                "the VM ran longer than 40 min and was stopped: its console is in /w/target/vm/console.log",
            ),
            (
                XtaskError::VmInit {
                    message: "mount tmpfs on /host/tmp".into(),
                    log: "/w/target/vm/console.log".into(),
                },
                "the VM's init failed: mount tmpfs on /host/tmp (its console is in /w/target/vm/console.log)",
            ),
            (
                XtaskError::Failed {
                    phases: vec!["workspace", "btrfs"],
                },
                "failed phases: workspace, btrfs",
            ),
            (
                XtaskError::BtrfsFailed {
                    runs: vec!["quotas on"],
                },
                "btrfs tests failed (quotas on)",
            ),
        ];
        for (err, want) in cases {
            assert_eq!(err.to_string(), want);
        }
    }
}
