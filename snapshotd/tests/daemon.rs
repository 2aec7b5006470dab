//! The `snapshotd` and `snapshotctl` binaries as processes: socket handling, readiness,
//! signals, configuration errors, and the CLI against a running daemon.

mod common;

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{privileged, wait_for, ChildGuard};
use rustix::process::Signal;

const SNAPSHOTD: &str = env!("CARGO_BIN_EXE_snapshotd");
const SNAPSHOTCTL: &str = env!("CARGO_BIN_EXE_snapshotctl");

struct Daemon {
    child: ChildGuard,
    socket: PathBuf,
    stderr: PathBuf,
}

fn start(dir: &Path, extra: &[&str], notify: Option<&Path>) -> Daemon {
    let socket = dir.join("run/snapshotd.sock");
    let stderr = dir.join("snapshotd.log");
    let mut cmd = Command::new(SNAPSHOTD);
    cmd.arg("--root")
        .arg(dir.join("root"))
        .arg("--address")
        .arg(&socket)
        .arg("--config")
        .arg(dir.join("config.toml"))
        .args(extra)
        .stdin(Stdio::null())
        .stderr(std::fs::File::create(&stderr).unwrap());
    if !dir.join("config.toml").exists() {
        std::fs::write(dir.join("config.toml"), "log_level = \"debug\"\n").unwrap();
    }
    match notify {
        Some(n) => cmd.env("NOTIFY_SOCKET", n),
        None => cmd.env_remove("NOTIFY_SOCKET"),
    };
    let child = ChildGuard::new(cmd.spawn().unwrap());
    Daemon {
        child,
        socket,
        stderr,
    }
}

impl Daemon {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    fn wait_ready(&self) {
        assert!(
            wait_for(&self.socket, Duration::from_secs(20)),
            "no socket; log:\n{}",
            self.log()
        );
    }
}

fn ctl(socket: &Path, args: &[&str]) -> Output {
    Command::new(SNAPSHOTCTL)
        .arg("--address")
        .arg(socket)
        .args(args)
        .output()
        .unwrap()
}

fn ctl_ok(socket: &Path, args: &[&str]) -> String {
    let out = ctl(socket, args);
    assert!(
        out.status.success(),
        "snapshotctl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn daemon_lifecycle_socket_notify_and_signals() {
    let dir = tempfile::tempdir().unwrap();
    let notify_path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();

    // A stale socket (bound, then its listener gone) is replaced.
    std::fs::create_dir_all(dir.path().join("run")).unwrap();
    drop(std::os::unix::net::UnixListener::bind(dir.path().join("run/snapshotd.sock")).unwrap());

    let mut d = start(dir.path(), &["--backend", "native"], Some(&notify_path));
    let mut buf = [0u8; 64];
    let n = notify.recv(&mut buf).expect("READY=1 from the daemon");
    assert_eq!(&buf[..n], b"READY=1");
    let meta = std::fs::symlink_metadata(&d.socket).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    assert!(d.log().contains("replacing stale socket"), "{}", d.log());
    assert!(
        d.log().contains("backend native (configured)"),
        "{}",
        d.log()
    );

    // A live socket is refused by a second daemon, which leaves it in place.
    let other = tempfile::tempdir().unwrap();
    let out = Command::new(SNAPSHOTD)
        .args([
            "--backend",
            "native",
            "--config",
            "/nonexistent-but-unused.toml",
        ])
        .arg("--root")
        .arg(other.path())
        .arg("--address")
        .arg(&d.socket)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let msg = String::from_utf8_lossy(&out.stderr);
    assert!(msg.contains("nonexistent-but-unused.toml"), "{msg}");
    let out = Command::new(SNAPSHOTD)
        .args(["--backend", "native", "--log-level", "info"])
        .arg("--config")
        .arg(dir.path().join("config.toml"))
        .arg("--root")
        .arg(other.path())
        .arg("--address")
        .arg(&d.socket)
        .env_remove("NOTIFY_SOCKET")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let msg = String::from_utf8_lossy(&out.stderr);
    assert!(msg.contains("in use by a running daemon"), "{msg}");
    assert!(d.socket.exists());

    // A second daemon on the same root (another socket) fails at once, naming the root
    // and the first daemon's pid, and leaves the first one's store alone.
    let out = Command::new(SNAPSHOTD)
        .args(["--backend", "native"])
        .arg("--config")
        .arg(dir.path().join("config.toml"))
        .arg("--root")
        .arg(dir.path().join("root"))
        .arg("--address")
        .arg(other.path().join("second.sock"))
        .env_remove("NOTIFY_SOCKET")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let msg = String::from_utf8_lossy(&out.stderr);
    assert!(msg.contains("is in use"), "{msg}");
    assert!(
        msg.contains(dir.path().join("root").to_str().unwrap()),
        "{msg}"
    );
    assert!(msg.contains(&format!("process {}", d.child.pid())), "{msg}");

    // The daemon serves; SIGTERM stops it cleanly: STOPPING=1, exit 0, socket gone.
    ctl_ok(&d.socket, &["prepare", "k"]);
    let st = d
        .child
        .signal_and_wait(Signal::TERM, Duration::from_secs(20))
        .expect("exit");
    assert!(st.success(), "{st:?}; log:\n{}", d.log());
    let n = notify.recv(&mut buf).expect("STOPPING=1");
    assert_eq!(&buf[..n], b"STOPPING=1");
    assert!(!d.socket.exists());
    assert!(d.log().contains("SIGTERM received"), "{}", d.log());

    // The store was closed cleanly and reopens with the snapshot (SIGINT this time).
    let mut d = start(dir.path(), &["--backend", "native"], None);
    d.wait_ready();
    assert!(ctl_ok(&d.socket, &["ls"]).contains("k "));
    let st = d
        .child
        .signal_and_wait(Signal::INT, Duration::from_secs(20))
        .expect("exit");
    assert!(st.success(), "{st:?}");
    assert!(!d.socket.exists());
}

#[test]
fn bad_configuration_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.toml"), "backend = [\n").unwrap();
    let out = Command::new(SNAPSHOTD)
        .arg("--config")
        .arg(dir.path().join("config.toml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let msg = String::from_utf8_lossy(&out.stderr);
    assert!(
        msg.contains("config.toml") && msg.contains("not valid"),
        "{msg}"
    );

    let out = Command::new(SNAPSHOTD)
        .args(["--backend", "zfs"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("zfs"));

    // A backend this build lacks is named with the feature that brings it.
    if !snapshots::Backend::Btrfs.is_compiled() {
        let root = dir.path().join("btrfs-root");
        std::fs::write(dir.path().join("empty.toml"), "").unwrap();
        let out = Command::new(SNAPSHOTD)
            .args(["--backend", "btrfs", "--config"])
            .arg(dir.path().join("empty.toml"))
            .arg("--root")
            .arg(&root)
            .arg("--address")
            .arg(dir.path().join("b.sock"))
            .env_remove("NOTIFY_SOCKET")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        let msg = String::from_utf8_lossy(&out.stderr);
        assert!(
            msg.contains("not compiled in") && msg.contains("btrfs"),
            "{msg}"
        );
        assert!(!dir.path().join("b.sock").exists());
    }

    let out = Command::new(SNAPSHOTD).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--backend",
        "--root",
        "--address",
        "--log-level",
        "--sync-remove",
        "--config",
    ] {
        assert!(help.contains(flag), "help lacks {flag}: {help}");
    }
}

#[test]
fn snapshotctl_drives_the_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let mut d = start(dir.path(), &["--backend", "native"], None);
    d.wait_ready();
    let s = d.socket.clone();

    let out = ctl_ok(&s, &["prepare", "extract-1", "--label", "a=1"]);
    assert!(out.starts_with("TYPE") && out.contains("bind"), "{out}");
    ctl_ok(&s, &["commit", "layer-1", "extract-1", "--label", "gc=yes"]);
    ctl_ok(&s, &["prepare", "container", "layer-1"]);
    ctl_ok(&s, &["view", "inspect", "layer-1"]);

    let ls = ctl_ok(&s, &["ls"]);
    assert!(ls.lines().next().unwrap().starts_with("KEY"), "{ls}");
    assert_eq!(ls.lines().count(), 4, "{ls}");
    let json: serde_json::Value =
        serde_json::from_str(&ctl_ok(&s, &["--json", "ls", "kind==committed"])).unwrap();
    assert_eq!(json.as_array().unwrap().len(), 1);
    assert_eq!(json[0]["name"], "layer-1");
    assert_eq!(json[0]["labels"]["gc"], "yes");

    let tree = ctl_ok(&s, &["tree"]);
    assert!(tree.starts_with("layer-1 [Committed]\n"), "{tree}");
    assert!(
        tree.contains("\\_ container [Active]") && tree.contains("\\_ inspect [View]"),
        "{tree}"
    );

    let info = ctl_ok(&s, &["info", "container"]);
    assert!(
        info.contains("Kind:    Active") && info.contains("Parent:  layer-1"),
        "{info}"
    );
    let labels = ctl_ok(&s, &["label", "layer-1", "new=v", "gc="]);
    assert_eq!(labels.trim(), "new=v");
    let usage: serde_json::Value =
        serde_json::from_str(&ctl_ok(&s, &["--json", "usage", "layer-1"])).unwrap();
    assert!(usage[0]["inodes"].as_u64().unwrap() >= 1);
    let mounts = ctl_ok(&s, &["mounts", "container", "/mnt/x"]);
    assert!(
        mounts.starts_with("mount -t bind ") && mounts.contains(" /mnt/x -o "),
        "{mounts}"
    );

    // Errors come back with the daemon's message and kind.
    let out = ctl(&s, &["rm", "layer-1"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("layer-1") && err.contains("failed precondition"),
        "{err}"
    );
    let out = ctl(&s, &["info", "nope"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("not found"));

    ctl_ok(&s, &["rm", "container", "inspect", "layer-1"]);
    ctl_ok(&s, &["cleanup"]);
    let out = ctl(&s, &["gc"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--namespaced"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(ctl_ok(&s, &["ls"]).lines().count(), 1);

    let help = Command::new(SNAPSHOTCTL).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for c in [
        "ls", "tree", "info", "usage", "mounts", "prepare", "view", "commit", "rm", "label",
        "cleanup", "mount", "unmount",
    ] {
        assert!(help.contains(&format!("  {c} ")), "help lacks {c}: {help}");
    }
    let out = ctl(&dir.path().join("no.sock"), &["ls"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("is the daemon running"));
    d.child
        .signal_and_wait(Signal::TERM, Duration::from_secs(20))
        .expect("exit");
}

/// Mounts through the CLI, and the default backend choice on a filesystem with overlay.
#[test]
fn snapshotctl_mounts_and_default_backend_is_overlay() {
    if !privileged("snapshotctl_mounts_and_default_backend_is_overlay") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut d = start(dir.path(), &[], None);
    d.wait_ready();
    assert!(d.log().contains("backend overlay (detected"), "{}", d.log());
    let s = d.socket.clone();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = snapshots::mount::unmount_all(&self.0);
        }
    }
    let _guard = Unmount(mnt.clone());

    ctl_ok(&s, &["prepare", "extract-1"]);
    ctl_ok(&s, &["mount", "extract-1", mnt.to_str().unwrap()]);
    std::fs::write(mnt.join("hello"), b"layer 1").unwrap();
    ctl_ok(&s, &["unmount", mnt.to_str().unwrap()]);
    ctl_ok(&s, &["commit", "layer-1", "extract-1"]);
    ctl_ok(&s, &["prepare", "c", "layer-1"]);
    let mounts = ctl_ok(&s, &["mounts", "c"]);
    assert!(mounts.contains("overlay"), "{mounts}");
    ctl_ok(&s, &["mount", "c", mnt.to_str().unwrap()]);
    assert_eq!(
        std::fs::read_to_string(mnt.join("hello")).unwrap(),
        "layer 1"
    );
    ctl_ok(&s, &["unmount", mnt.to_str().unwrap()]);
    assert!(!mnt.join("hello").exists());
    ctl_ok(&s, &["rm", "c", "layer-1"]);
    ctl_ok(&s, &["cleanup"]);
    let st = d
        .child
        .signal_and_wait(Signal::TERM, Duration::from_secs(20))
        .expect("exit");
    assert!(st.success());
    // Nothing is left once the daemon stopped (it deletes its blank trees made ahead).
    let left: Vec<_> = std::fs::read_dir(dir.path().join("root/snapshots"))
        .unwrap()
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// The soft and hard "Max open files" of process `pid`.
fn open_file_limits(pid: i32) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("a Max open files line");
    let mut f = line["Max open files".len()..].split_whitespace();
    (f.next().unwrap().into(), f.next().unwrap().into())
}

#[test]
fn the_daemon_raises_its_open_file_limit_to_the_hard_one() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("snapshotd.sock");
    std::fs::write(dir.path().join("empty.toml"), "").unwrap();
    // Started with a soft limit of 256 under a hard one of 4096.
    let child = Command::new("prlimit")
        .arg("--nofile=256:4096")
        .arg("--")
        .arg(SNAPSHOTD)
        .arg("--backend")
        .arg("native")
        .arg("--root")
        .arg(dir.path().join("root"))
        .arg("--address")
        .arg(&socket)
        .arg("--config")
        .arg(dir.path().join("empty.toml"))
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .env_remove("NOTIFY_SOCKET")
        .spawn()
        .expect("prlimit (util-linux)");
    let mut child = ChildGuard::new(child);
    assert!(wait_for(&socket, Duration::from_secs(20)), "no socket");
    assert_eq!(
        open_file_limits(child.pid()),
        ("4096".to_string(), "4096".to_string())
    );
    let st = child.signal_and_wait(Signal::TERM, Duration::from_secs(20));
    assert!(st.is_some_and(|s| s.success()), "{st:?}");
}

/// `snapshotd --namespaced` with `snapshotctl -n`: namespaces apart, one required, and
/// cleanup collecting what was removed.
#[test]
fn a_namespaced_daemon_serves_namespaces_to_snapshotctl() {
    let dir = tempfile::tempdir().unwrap();
    // Collections only on demand here: the scheduler's first one would otherwise run
    // 100 ms after the start, racing the dry run below on a loaded machine.
    std::fs::write(
        dir.path().join("config.toml"),
        "log_level = \"debug\"\n[gc]\nstartup_delay_ms = 600000\n",
    )
    .unwrap();
    let mut d = start(dir.path(), &["--backend", "native", "--namespaced"], None);
    d.wait_ready();
    let s = d.socket.clone();
    let out = ctl_ok(&s, &["-n", "a", "--json", "prepare", "k"]);
    let mounts: serde_json::Value = serde_json::from_str(&out).unwrap();
    let a_tree = std::path::PathBuf::from(mounts[0]["source"].as_str().unwrap());
    // What no root reaches is garbage: b keeps its snapshot with a root label.
    let out = ctl_ok(
        &s,
        &[
            "-n",
            "b",
            "--json",
            "prepare",
            "k",
            "--label",
            "containerd.io/gc.root=yes",
        ],
    );
    let mounts: serde_json::Value = serde_json::from_str(&out).unwrap();
    let b_tree = std::path::PathBuf::from(mounts[0]["source"].as_str().unwrap());
    assert_ne!(a_tree, b_tree);
    ctl_ok(&s, &["-n", "a", "commit", "base", "k"]);
    assert_eq!(ctl_ok(&s, &["-n", "a", "ls"]).lines().count(), 2);
    let b = ctl_ok(&s, &["-n", "b", "--json", "ls"]);
    let b: serde_json::Value = serde_json::from_str(&b).unwrap();
    assert_eq!(b[0]["name"], "k");
    assert_eq!(b[0]["kind"], "active");
    let out = ctl(&s, &["ls"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("namespace is required"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Removed in a, collected: its tree goes; b's stays. A dry run first removes nothing.
    ctl_ok(&s, &["-n", "a", "rm", "base"]);
    assert!(a_tree.is_dir(), "remove only unlinks");
    let plan: serde_json::Value =
        serde_json::from_str(&ctl_ok(&s, &["--json", "gc", "--dry-run"])).unwrap();
    assert_eq!(plan["dry_run"], true);
    let would: Vec<&str> = plan["backend"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        would
            .iter()
            .any(|b| b.starts_with("a/") && b.ends_with("/base")),
        "{plan}"
    );
    assert!(a_tree.is_dir(), "a dry run removes nothing");
    let out = ctl_ok(&s, &["gc"]);
    assert!(out.contains("removed") && out.contains("/base"), "{out}");
    assert!(!a_tree.exists(), "collected: {}", a_tree.display());
    ctl_ok(&s, &["-n", "a", "cleanup"]);
    assert!(b_tree.is_dir(), "b's snapshot keeps its tree");
    assert!(d.log().contains("namespaced"), "{}", d.log());
    d.child
        .signal_and_wait(Signal::TERM, Duration::from_secs(20))
        .expect("exit");
    assert!(dir.path().join("root/namespaces/data.mdb").exists());
}

#[test]
fn print_containerd_config_names_the_daemons_socket_root_and_capabilities() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let run = |args: &[&str]| {
        std::process::Command::new(SNAPSHOTD)
            .args(args)
            .arg("--root")
            .arg(&root)
            .args(["--address", "/run/x/sd.sock", "--containerd-name", "mine"])
            .output()
            .unwrap()
    };
    let out = run(&["--print-containerd-config", "2", "--backend", "native"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let v: toml::Value = toml::from_str(&text).unwrap();
    assert_eq!(v["version"].as_integer(), Some(3));
    let p = &v["proxy_plugins"]["mine"];
    assert_eq!(p["address"].as_str(), Some("/run/x/sd.sock"));
    assert_eq!(
        p["capabilities"].as_array().map(Vec::len),
        Some(0),
        "{text}"
    );
    assert_eq!(p["exports"]["root"].as_str(), root.to_str());
    assert!(!root.exists(), "printing touches nothing");

    let out = run(&["--print-containerd-config", "1.6", "--backend", "overlay"]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with("version = 2\n"), "{text}");
    assert!(text.contains("[proxy_plugins.mine]"), "{text}");

    let out = run(&["--print-containerd-config", "3"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("\"3\"") && err.contains("major version"),
        "{err}"
    );
}

/// `GET path` over the unix socket `sock`: the status line and the body.
fn http_get(sock: &Path, path: &str) -> (String, String) {
    snapshotd::metrics::get_unix(sock, path).unwrap()
}

/// The value of the sample `name{labels}` in OpenMetrics text (0 when absent).
fn sample(text: &str, series: &str) -> f64 {
    snapshotd::metrics::sample(text, series).unwrap_or(0.0)
}

#[test]
fn metrics_count_what_clients_did() {
    let dir = tempfile::tempdir().unwrap();
    let msock = dir.path().join("run/metrics.sock");
    let d = start(
        dir.path(),
        &[
            "--backend",
            "native",
            "--metrics-address",
            msock.to_str().unwrap(),
        ],
        None,
    );
    d.wait_ready();
    assert!(wait_for(&msock, Duration::from_secs(10)), "{}", d.log());
    let sn = snapshotd::client::RemoteSnapshotter::connect(&d.socket).unwrap();
    use snapshots::{CommitOptions, CreateOptions, ErrorKind, Snapshotter};
    const N: usize = 25;
    for i in 0..N {
        sn.prepare(&format!("a{i}"), "", &CreateOptions::default())
            .unwrap();
        sn.commit(
            &format!("c{i}"),
            &format!("a{i}"),
            &CommitOptions::default(),
        )
        .unwrap();
    }
    sn.view("v", "c0", &CreateOptions::default()).unwrap();
    sn.prepare("p", "c1", &CreateOptions::default()).unwrap();
    for _ in 0..3 {
        let e = sn.stat("missing").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound);
    }
    let e = sn
        .prepare("p", "c1", &CreateOptions::default())
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::AlreadyExists);
    sn.remove(&format!("c{}", N - 1)).unwrap();
    let mut listed = 0;
    sn.walk(&[], &mut |_| {
        listed += 1;
        Ok(())
    })
    .unwrap();

    let (status, text) = http_get(&msock, "/metrics");
    assert!(status.contains("200"), "{status}\n{text}");
    let op = |o: &str| sample(&text, &format!("snapshotd_operations_total{{op=\"{o}\"}}"));
    assert_eq!(op("prepare"), (N + 2) as f64, "{text}");
    assert_eq!(op("commit"), N as f64);
    assert_eq!(op("view"), 1.0);
    assert_eq!(op("stat"), 3.0);
    assert_eq!(op("remove"), 1.0);
    assert_eq!(op("list"), 1.0);
    let err = |o: &str, k: &str| {
        sample(
            &text,
            &format!("snapshotd_operation_errors_total{{op=\"{o}\",kind=\"{k}\"}}"),
        )
    };
    assert_eq!(err("stat", "not_found"), 3.0, "{text}");
    assert_eq!(err("prepare", "already_exists"), 1.0);
    assert_eq!(
        sample(
            &text,
            "snapshotd_operation_duration_seconds_count{op=\"commit\"}"
        ),
        N as f64
    );
    let kind = |k: &str| sample(&text, &format!("snapshotd_snapshots{{kind=\"{k}\"}}"));
    assert_eq!(kind("committed"), (N - 1) as f64);
    assert_eq!(kind("active"), 1.0);
    assert_eq!(kind("view"), 1.0);
    assert_eq!(listed, N + 1);
    assert!(
        sample(&text, "snapshotd_filesystem_used_bytes") > 0.0,
        "{text}"
    );
    assert!(
        sample(&text, "snapshotd_committed_inodes") >= (N - 1) as f64,
        "{text}"
    );

    // An audit's findings, by kind, until the next audit.
    let fsck_findings = |k: &str| {
        let (_, text) = http_get(&msock, "/metrics");
        (
            sample(&text, &format!("snapshotd_fsck_findings{{kind=\"{k}\"}}")),
            sample(&text, "snapshotd_fsck_runs_total"),
        )
    };
    assert_eq!(fsck_findings("orphan-directory"), (0.0, 0.0));
    std::fs::create_dir_all(dir.path().join("root/snapshots/999/fs")).unwrap();
    std::fs::create_dir_all(dir.path().join("root/snapshots/998")).unwrap();
    let report = sn.as_cleaner().unwrap().fsck(false).unwrap();
    assert_eq!(report.findings.len(), 2, "{report:?}");
    assert_eq!(fsck_findings("orphan-directory"), (2.0, 1.0));
    assert_eq!(fsck_findings("stale-staging"), (0.0, 1.0));
    sn.as_cleaner().unwrap().fsck(true).unwrap();
    assert_eq!(fsck_findings("orphan-directory"), (0.0, 2.0), "repaired");

    let (status, _) = http_get(&msock, "/other");
    assert!(status.contains("404"), "{status}");
    drop(sn);
    let mut d = d;
    let st = d
        .child
        .signal_and_wait(Signal::TERM, Duration::from_secs(20))
        .unwrap();
    assert!(st.success());
    assert!(!msock.exists(), "the metrics socket is removed at the stop");
}

#[test]
fn namespaced_metrics_count_collections_and_bad_addresses_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let msock = dir.path().join("m.sock");
    // A collection after every removal, at once: the scheduler's own, which the metrics
    // report.
    std::fs::write(
        dir.path().join("config.toml"),
        "log_level = \"debug\"\n[gc]\ndeletion_threshold = 1\nschedule_delay_ms = 0\nstartup_delay_ms = 0\n",
    )
    .unwrap();
    let d = start(
        dir.path(),
        &[
            "--backend",
            "native",
            "--namespaced",
            "--metrics-address",
            msock.to_str().unwrap(),
        ],
        None,
    );
    d.wait_ready();
    assert!(wait_for(&msock, Duration::from_secs(10)), "{}", d.log());
    let sn = snapshotd::client::RemoteSnapshotter::connect_in(&d.socket, Some("ns1")).unwrap();
    use snapshots::{CreateOptions, Snapshotter};
    for i in 0..4 {
        sn.prepare(&format!("k{i}"), "", &CreateOptions::default())
            .unwrap();
        sn.remove(&format!("k{i}")).unwrap();
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let text = loop {
        let (_, text) = http_get(&msock, "/metrics");
        if sample(&text, "snapshotd_gc_removed_total{what=\"snapshots\"}") >= 4.0 {
            break text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no collection counted:\n{text}\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        sample(&text, "snapshotd_gc_collections_total") >= 1.0,
        "{text}"
    );
    assert_eq!(
        sample(&text, "snapshotd_operations_total{op=\"prepare\"}"),
        4.0,
        "{text}"
    );
    assert_eq!(
        sample(&text, "snapshotd_snapshots{kind=\"active\"}"),
        0.0,
        "{text}"
    );
    drop(sn);
    drop(d);

    let out = Command::new(SNAPSHOTD)
        .args(["--metrics-address", "localhost", "--root"])
        .arg(dir.path().join("r2"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("\"localhost\"") && err.contains("127.0.0.1:9101"),
        "{err}"
    );
}

#[test]
fn snapshotctl_fsck_asks_the_daemon_or_opens_a_stopped_root() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let mut d = start(dir.path(), &["--backend", "native"], None);
    d.wait_ready();
    ctl_ok(&d.socket, &["prepare", "a"]);
    ctl_ok(&d.socket, &["commit", "base", "a"]);
    ctl_ok(&d.socket, &["prepare", "b", "base"]);
    let fsck = |args: &[&str]| {
        let out = ctl(&d.socket, &[&["fsck"], args].concat());
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = fsck(&[]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.contains("native store at") && out.contains("clean"),
        "{out}"
    );

    // Faults the daemon's store does not know about.
    let snaps = root.join("snapshots");
    std::fs::create_dir_all(snaps.join("777/fs")).unwrap();
    std::fs::write(snaps.join("777/fs/blob"), vec![1u8; 300 << 10]).unwrap();
    std::fs::create_dir_all(snaps.join("new-4242-0")).unwrap();
    let (code, out, err) = fsck(&[]);
    assert_eq!(code, Some(1), "findings exit 1: {out}{err}");
    assert!(
        out.contains("orphan-directory") && out.contains("stale-staging"),
        "{out}"
    );
    assert!(out.contains("2 findings, 2 left"), "{out}");
    let (code, out, _) = fsck(&["--json"]);
    assert_eq!(code, Some(1));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let orphan = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["kind"] == "orphan-directory")
        .unwrap_or_else(|| panic!("{v}"));
    assert!(orphan["size"].as_u64().unwrap() >= 300 << 10, "{orphan}");
    assert_eq!(v["clean"], false);
    assert!(snaps.join("777").exists(), "a check deletes nothing");
    let (code, out, err) = fsck(&["--repair"]);
    assert_eq!(code, Some(0), "everything repaired: {out}{err}");
    assert!(out.contains("2 findings, all repaired"), "{out}");
    assert!(!snaps.join("777").exists() && !snaps.join("new-4242-0").exists());
    assert_eq!(fsck(&[]).0, Some(0));

    // --root on a root the daemon serves: could not check, naming the way that works.
    let out = ctl(&d.socket, &["fsck", "--root", root.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("process {}", d.child.pid())) && err.contains("without --root"),
        "{err}"
    );
    let st = d
        .child
        .signal_and_wait(Signal::TERM, Duration::from_secs(20))
        .expect("exit");
    assert!(st.success());

    // Offline: the leftover is reported, not swept by the open.
    std::fs::create_dir_all(snaps.join("888")).unwrap();
    let offline = |args: &[&str]| {
        let out = ctl(
            &d.socket,
            &[&["fsck", "--root", root.to_str().unwrap()], args].concat(),
        );
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, out) = offline(&[]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("orphan-directory") && out.contains("888"),
        "{out}"
    );
    assert!(snaps.join("888").exists());
    assert_eq!(offline(&["--repair"]).0, Some(0));
    assert!(!snaps.join("888").exists());
    assert_eq!(offline(&[]).0, Some(0));
    // The daemon is not needed, and a root without a store is a clear could-not-check.
    let out = ctl(&d.socket, &["fsck", "--root", dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("holds no snapshot store"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = ctl(&dir.path().join("nothing.sock"), &["fsck"]);
    assert_eq!(out.status.code(), Some(2));
    // The restarted daemon serves the repaired store.
    let d = start(dir.path(), &["--backend", "native"], None);
    d.wait_ready();
    assert!(ctl_ok(&d.socket, &["ls"]).contains("base "));
}
