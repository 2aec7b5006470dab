//! `cargo xtask bench --against containerd [--quick] [--json FILE]`: snapshotd's overlay
//! and containerd 1.6's overlay snapshotter, each served on its own unix socket with its
//! root on the same fresh ext4 image, driven by one client built on containerd's own
//! proxy snapshotter (`snapshot-bench/containerd`, Go, built with Debian's Go packages).
//! Rounds are interleaved A B B A so drift on a shared machine hits both alike.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::images::{self, Mounted};
use crate::util::{self, Result, XtaskError};

/// Where Debian's golang-github-containerd-containerd-dev puts containerd's source.
const GOPATH: &str = "/usr/share/gocode";

/// Builds the comparison client, starts both servers on a fresh image, runs the
/// comparison with `pass` (`--quick`, `--json FILE`) and stops everything.
pub fn run(image_size: u64, quick: bool, json: Option<PathBuf>) -> Result {
    util::require_tool("go", "golang-go")?;
    let containerd_src =
        Path::new(GOPATH).join("src/github.com/containerd/containerd/snapshots/overlay");
    if !containerd_src.is_dir() {
        return Err(XtaskError::Tool {
            tool: "containerd's Go source",
            package: "golang-github-containerd-containerd-dev",
        });
    }
    let root = util::workspace_root();
    let bin = root.join("target/release/containerd-bench");
    util::header("bench: building the containerd comparison client");
    util::run_tool(
        Command::new("go")
            .args(["build", "-o"])
            .arg(&bin)
            .arg(".")
            .current_dir(root.join("snapshot-bench/containerd"))
            .env("GO111MODULE", "off")
            .env("GOPATH", GOPATH)
            .env("GOCACHE", root.join("target/go-cache"))
            .env("GOFLAGS", ""),
    )?;
    util::run_tool(util::cargo().args(["build", "--release", "-q", "-p", "snapshotd"]))?;

    let img = images::build_ext4("bench-ext4.img", image_size)?;
    let mounted = Mounted::new(&img, "ext4")?;
    let dir = |name: &str| -> Result<PathBuf> {
        let p = mounted.target.join(name);
        std::fs::create_dir_all(&p).map_err(|source| XtaskError::Io {
            what: "mkdir",
            path: p.clone(),
            source,
        })?;
        Ok(p)
    };
    let (ours_root, theirs_root, work) = (dir("snapshotd")?, dir("containerd")?, dir("work")?);
    // Sockets live off the image so a busy socket never holds the unmount.
    let sockets = util::mounts_dir().join(format!("sockets-{}", std::process::id()));
    std::fs::create_dir_all(&sockets).map_err(|source| XtaskError::Io {
        what: "mkdir",
        path: sockets.clone(),
        source,
    })?;
    let (ours_sock, theirs_sock) = (
        sockets.join("snapshotd.sock"),
        sockets.join("containerd.sock"),
    );
    util::header(&format!(
        "bench: snapshotd (overlay) against containerd's overlay, both on ext4 at {}",
        mounted.target.display()
    ));
    let status = {
        let _ours = Server::start(
            Command::new(root.join("target/release/snapshotd"))
                .args(["--backend", "overlay", "--log-level", "warn", "--root"])
                .arg(&ours_root)
                .arg("--address")
                .arg(&ours_sock),
            &ours_sock,
        )?;
        let _theirs = Server::start(
            Command::new(&bin)
                .arg("serve")
                .arg(&theirs_root)
                .arg(&theirs_sock),
            &theirs_sock,
        )?;
        let mut cmd = Command::new(&bin);
        cmd.arg("compare")
            .arg("-ours")
            .arg(&ours_sock)
            .arg("-theirs")
            .arg(&theirs_sock)
            .arg("-work")
            .arg(&work);
        if quick {
            cmd.arg("-quick");
        }
        if let Some(j) = &json {
            cmd.arg("-json").arg(j);
        }
        util::run_interruptible(&mut cmd)?
    };
    let _ = std::fs::remove_dir_all(&sockets);
    drop(mounted);
    if let Some(signal) = util::interrupted() {
        return Err(XtaskError::Interrupted {
            signal,
            outcome: "servers stopped, mounts and loop devices removed",
        });
    }
    if !status.success() {
        return Err(XtaskError::Failed {
            phases: vec!["bench --against containerd"],
        });
    }
    Ok(())
}

/// A server process, stopped with SIGTERM (then SIGKILL after 10 s) when dropped.
struct Server(Child);

impl Server {
    fn start(cmd: &mut Command, socket: &Path) -> Result<Server> {
        cmd.stdin(Stdio::null()).process_group(0);
        let child = cmd.spawn().map_err(|source| XtaskError::Spawn {
            what: "starting",
            command: format!("{cmd:?}"),
            source,
        })?;
        let mut server = Server(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !socket.exists() {
            let exited = server.0.try_wait().ok().flatten();
            if exited.is_some() || Instant::now() > deadline {
                return Err(XtaskError::Command {
                    command: format!("{cmd:?}"),
                    status: exited.unwrap_or_default(),
                    output: format!(
                        "{} did not appear; the server's output is above",
                        socket.display()
                    ),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(server)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let pid = rustix::process::Pid::from_child(&self.0);
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
