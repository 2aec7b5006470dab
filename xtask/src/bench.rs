//! `cargo xtask bench [--backend native|overlay|btrfs] [--quick] [--only W,...] [--json FILE]`: builds a
//! fresh image (journaled ext4; btrfs for the btrfs backend), mounts it under
//! `target/test-mounts`, runs `snapshot-bench` (release) on it with the same arguments,
//! and unmounts, also after a failure or SIGINT/SIGTERM. The root filesystem of a
//! development machine is not what a node runs on (here: ext4 without a journal, mounted
//! with `discard`), so benchmarks never run on it.

use crate::images::{self, Mounted};
use crate::util::{self, Result, XtaskError};

const USAGE: &str = "usage: cargo xtask bench [--backend native|overlay|btrfs] [--quick] [--only W,...] [--json FILE]\n       cargo xtask bench --against containerd [--quick] [--json FILE]";

/// Size of the sparse benchmark image.
const IMAGE_SIZE: u64 = 8 << 30;

pub fn run(args: &[String]) -> Result {
    util::require_root("bench")?;
    util::catch_signals();
    let mut backend = "overlay".to_string();
    let mut pass = Vec::new();
    let mut against = None;
    let mut json = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--backend" => {
                backend = it.next().cloned().ok_or(XtaskError::Usage {
                    command: "bench",
                    problem: "--backend needs native, overlay or btrfs",
                })?;
            }
            "--quick" => pass.push(a.clone()),
            "--only" => {
                let list = it.next().ok_or(XtaskError::Usage {
                    command: "bench",
                    problem: "--only needs workloads: chain, meta, store, big-tree, concurrent, scale, fsck, gc, quota (comma-separated; quota runs alone, in a virtual machine with project quotas)",
                })?;
                pass.push(a.clone());
                pass.push(list.clone());
            }
            "--against" => match it.next().map(String::as_str) {
                Some("containerd") => against = Some("containerd"),
                _ => {
                    return Err(XtaskError::Usage {
                        command: "bench",
                        problem: "--against takes `containerd` (its overlay snapshotter, served the same way)",
                    })
                }
            },
            "--json" => {
                let file = it.next().ok_or(XtaskError::Usage {
                    command: "bench",
                    problem: "--json needs a file",
                })?;
                // The bench runs in the workspace root; a relative path means the caller's.
                let abs = std::path::absolute(file).map_err(|source| XtaskError::Io {
                    what: "resolve",
                    path: file.into(),
                    source,
                })?;
                pass.push("--json".into());
                pass.push(abs.to_string_lossy().into_owned());
                json = Some(abs);
            }
            _ => {
                return Err(XtaskError::Usage {
                    command: "bench",
                    problem: USAGE,
                })
            }
        }
    }
    if against.is_some() {
        if backend != "overlay" {
            return Err(XtaskError::Usage {
                command: "bench",
                problem: "--against containerd compares overlay with containerd's overlay: drop --backend",
            });
        }
        let quick = pass.iter().any(|a| a == "--quick");
        return crate::compare::run(IMAGE_SIZE, quick, json);
    }
    if pass.iter().any(|a| a.split(',').any(|w| w == "quota")) {
        return quota_in_vm(&backend, &pass);
    }
    let (img, fstype) = if backend == "btrfs" {
        (images::build_btrfs()?, "btrfs")
    } else {
        (images::build_ext4("bench-ext4.img", IMAGE_SIZE)?, "ext4")
    };
    let mounted = Mounted::new(&img, fstype)?;
    util::header(&format!(
        "bench: {backend} on {fstype} ({} at {})",
        mounted.device.display(),
        mounted.target.display()
    ));
    let mut cmd = util::cargo();
    cmd.args(["run", "--release", "-p", "snapshot-bench"]);
    if backend == "btrfs" {
        cmd.args(["--features", "btrfs"]);
    }
    cmd.arg("--")
        .arg("--root")
        .arg(mounted.target.join("bench"))
        .args(["--backend", &backend])
        .args(&pass);
    let status = util::run_interruptible(&mut cmd)?;
    drop(mounted);
    if let Some(signal) = util::interrupted() {
        return Err(XtaskError::Interrupted {
            signal,
            outcome: "mounts and loop devices removed",
        });
    }
    if !status.success() {
        return Err(XtaskError::Failed {
            phases: vec!["bench"],
        });
    }
    Ok(())
}

/// `--only quota`: project quotas, which the host's kernel may lack, so in the VM of
/// `cargo xtask vm` on xfs and ext4 made there (`xtask/vm/bench-quota.sh`).
fn quota_in_vm(backend: &str, pass: &[String]) -> Result {
    if backend != "overlay" || pass.iter().any(|a| a == "--json") {
        return Err(XtaskError::Usage {
            command: "bench",
            problem: "--only quota runs overlay in a virtual machine, alone: drop --backend, --json and the other workloads",
        });
    }
    util::header("bench: build snapshot-bench (release)");
    let status = util::run_interruptible(util::cargo().args([
        "build",
        "--release",
        "-p",
        "snapshot-bench",
    ]))?;
    if !status.success() {
        return Err(XtaskError::Failed {
            phases: vec!["bench build"],
        });
    }
    let root = util::workspace_root();
    let mut command = vec![
        "bash".to_string(),
        root.join("xtask/vm/bench-quota.sh")
            .to_string_lossy()
            .into_owned(),
        root.join("target/release/snapshot-bench")
            .to_string_lossy()
            .into_owned(),
    ];
    command.extend(pass.iter().cloned());
    match crate::vm::run_in_vm(&command, &[])? {
        0 => Ok(()),
        _ => Err(XtaskError::Failed {
            phases: vec!["bench (in the VM)"],
        }),
    }
}
