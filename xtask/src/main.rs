//! `cargo xtask <command>`: project automation (matklad's xtask pattern). One file per
//! subcommand; `util` holds what they share.

mod bench;
mod clean;
mod compare;
mod error;
mod images;
mod test;
mod test_btrfs;
mod test_quota;
mod util;
mod vm;

use std::process::ExitCode;

const COMMANDS: &[(&str, &str)] = &[
    ("test", "run every test of the workspace, btrfs on a loop-device image (the README's test command)"),
    ("test-btrfs", "build and mount the btrfs image, run snapshot-btrfs's tests on it (quotas off, then on), unmount"),
    ("bench", "run the benchmarks on a fresh loop-mounted image: [--backend native|overlay|btrfs] [--quick] [--only chain,meta,store,big-tree,concurrent,scale,fsck,gc | --only quota (in the VM of `vm`)] [--json FILE]; --against containerd: snapshotd against containerd's overlay through containerd's client"),
    ("images", "build the test images under target/test-images/"),
    ("test-quota", "run the layer-limit tests (project quotas) on xfs and ext4 in the virtual machine of `vm`: snapshot-overlay's quota tests and suite, snapshotd's quota tests"),
    ("vm", "run a command as root in a virtual machine on Debian's own kernel (it has project quotas: CONFIG_XFS_QUOTA, CONFIG_QFMT_V2), the host's root read-only as its root, cwd the workspace: [--env K=V]... [--timeout MINUTES] -- CMD ARGS...; exits with CMD's code. KVM, or qemu's emulator on a CPU without vmx/svm (XTASK_VM_ACCEL=kvm|tcg chooses)"),
    ("clean", "unmount and detach leftover test mounts and loop devices of this project"),
    ("help", "print this list"),
];

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("test") => test::run(),
        Some("test-btrfs") => test_btrfs::run(),
        Some("test-quota") => test_quota::run(),
        Some("bench") => bench::run(&args[1..]),
        Some("images") => images::run(),
        Some("clean") => clean::run(),
        Some("vm") => match vm::run(&args[1..]) {
            Ok(code) => return ExitCode::from(code),
            Err(e) => Err(e),
        },
        None | Some("help" | "-h" | "--help") => {
            print_help();
            return ExitCode::SUCCESS;
        }
        Some(other) => {
            eprintln!("xtask: unknown command {other:?}\n");
            print_help();
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            // A shell reports a run stopped by a signal as 128 + the signal.
            match util::interrupted() {
                Some(sig) => ExitCode::from(128 + sig as u8),
                None => ExitCode::FAILURE,
            }
        }
    }
}

fn print_help() {
    println!("usage: cargo xtask <command>\n\ncommands:");
    for (name, what) in COMMANDS {
        println!("  {name:<11} {what}");
    }
}
