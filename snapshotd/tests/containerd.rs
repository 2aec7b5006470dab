//! End to end with a real containerd: a private containerd loads snapshotd as a proxy
//! snapshotter, imports a three-layer OCI image built here (no network), runs a container
//! from it with runc, and garbage-collects everything when the image is removed. It runs
//! with Debian's containerd 1.6 and with containerd 2.x (fetched from Debian's `sid` suite
//! into `target/containerd2` by `tests/containerd2/fetch.sh` when missing; set
//! `SNAPSHOT_CONTAINERD2_DIR` to use another cache). containerd 2.x imports through its
//! transfer service, reads capabilities and exports from the proxy entry, and runs an
//! idmapped container in a user namespace on overlay.
//!
//! Needs (Debian): containerd, runc, busybox-static, tar, and for 2.x apt-get and
//! dpkg-deb with a reachable Debian mirror. Privileged (`SNAPSHOT_TEST_PRIVILEGED=1`, as
//! root).

mod common;

use std::fs;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{privileged, wait_for, ChildGuard};
use rustix::process::Signal;
use serde_json::json;
use sha2::{Digest, Sha256};
use snapshotd::containerd::{ProxyEntry, Release};

const SNAPSHOTD: &str = env!("CARGO_BIN_EXE_snapshotd");
const SNAPSHOTCTL: &str = env!("CARGO_BIN_EXE_snapshotctl");
const PLUGIN: &str = "snaptest";
const IMAGE: &str = "docker.io/library/snaptest:latest";
const BUSYBOX: &str = "/bin/busybox";
const CTR_TIMEOUT: Duration = Duration::from_secs(180);

#[test]
#[serial_test::serial(containerd)]
fn containerd_imports_runs_and_collects_on_overlay() {
    if privileged("containerd_imports_runs_and_collects_on_overlay") {
        end_to_end(&Flavor::v1(), "overlay", None);
    }
}

#[test]
#[serial_test::serial(containerd)]
fn containerd_imports_runs_and_collects_on_native() {
    if privileged("containerd_imports_runs_and_collects_on_native") {
        end_to_end(&Flavor::v1(), "native", None);
    }
}

#[test]
#[serial_test::serial(containerd)]
fn containerd2_imports_runs_and_collects_on_overlay() {
    if privileged("containerd2_imports_runs_and_collects_on_overlay") {
        end_to_end(&Flavor::v2(), "overlay", None);
    }
}

#[test]
#[serial_test::serial(containerd)]
fn containerd2_imports_runs_and_collects_on_native() {
    if privileged("containerd2_imports_runs_and_collects_on_native") {
        end_to_end(&Flavor::v2(), "native", None);
    }
}

/// A container in a user namespace through containerd 2.x on overlay: with
/// `--remap-labels` ctr asks snapshotd for an ID-mapped snapshot (the proxy's configured
/// `remap-ids`), which containerd mounts with idmapped lower layers; without it ctr
/// chowns a copy of the image. Both show the container the image's files as its root's;
/// only the copy touches them. Prints the median time of each way over three runs.
#[test]
#[serial_test::serial(containerd)]
fn containerd2_runs_an_idmapped_container_on_overlay() {
    if privileged("containerd2_runs_an_idmapped_container_on_overlay") {
        idmapped_container(&Flavor::v2());
    }
}

/// Files in the image's bulk layer: enough that chowning a copy costs what it costs for
/// a real image.
const BULK_FILES: usize = 10_000;
const MAP: &str = "0:100000:65536";

fn idmapped_container(flavor: &Flavor) {
    let rig = Rig::start(flavor, "overlay", None);
    let image = build_image(&rig.tmp.path().join("image"), BULK_FILES);
    rig.ctr_ok(&[
        "images",
        "import",
        "--snapshotter",
        PLUGIN,
        image.tar.to_str().unwrap(),
    ]);
    let top = image.chain_ids.last().unwrap().clone();
    // What the container reports: the owners of an image file, a bulk file and its root
    // as it sees them, its uid, the owner of a file it writes, and its uid_map.
    let script = "stat -c %u:%g /etc/layer1.txt /bulk/0/0 /; id -u; echo hi > /etc/written \
                  && stat -c %u:%g /etc/written; cat /proc/self/uid_map";
    let run = |id: &str, remap: bool, rm: bool| -> (String, Duration) {
        rig.ctrd.remember_container(id);
        let mut args = vec![
            "run",
            "--snapshotter",
            PLUGIN,
            "--uidmap",
            MAP,
            "--gidmap",
            MAP,
        ];
        if remap {
            args.push("--remap-labels");
        }
        if rm {
            args.push("--rm");
        }
        args.extend([IMAGE, id, "/bin/sh", "-c", script]);
        let t = Instant::now();
        let out = rig.ctr_ok(&args);
        (out, t.elapsed())
    };
    let check_view = |out: &str, how: &str| {
        let lines: Vec<&str> = out.lines().map(str::trim).collect();
        assert_eq!(
            lines[..5],
            ["0:0", "0:0", "0:0", "0", "0:0"],
            "{how}: the container sees its root's files and writes as its root:\n{out}"
        );
        let map: Vec<&str> = lines[5].split_whitespace().collect();
        assert_eq!(
            map,
            ["0", "100000", "65536"],
            "{how}: in a user namespace:\n{out}"
        );
    };

    // ID-mapped: one snapshot for the container, nothing chowned.
    let (out, _) = run("idmapped-0", true, false);
    check_view(&out, "idmapped");
    let usage = rig.ctr_ok(&["snapshots", "--snapshotter", PLUGIN, "usage", "idmapped-0"]);
    let inodes: u64 = usage
        .lines()
        .nth(1)
        .and_then(|l| l.split_whitespace().last())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("ctr snapshots usage:\n{usage}"));
    // The container's layer holds what it and runc made (its file, /etc, mount points),
    // not a copy of the image.
    assert!(
        inodes < 20,
        "the idmapped container's layer holds {inodes} inodes:\n{usage}"
    );
    let listed = rig.ctr_ok(&["snapshots", "--snapshotter", PLUGIN, "ls"]);
    assert_eq!(
        listed.lines().count(),
        1 + image.chain_ids.len() + 1,
        "the image's layers and the container's snapshot, no chowned copy:\n{listed}"
    );
    let backend = rig.ctr_ok(&[
        "snapshots",
        "--snapshotter",
        PLUGIN,
        "mounts",
        "/mnt",
        "idmapped-0",
    ]);
    assert!(
        backend.contains(&format!("uidmap={MAP}")) && backend.contains(&format!("gidmap={MAP}")),
        "the container's mounts carry the mapping:\n{backend}"
    );
    rig.ctr_ok(&["containers", "rm", "idmapped-0"]);
    // Every file of the layers is still root's on disk (once containerd's collector
    // removed the container's snapshot from the backend, and cleanup its tree).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ls = snapshotctl(&rig.sd_sock, &["--json", "ls"]);
        let n = serde_json::from_str::<serde_json::Value>(&ls)
            .unwrap()
            .as_array()
            .unwrap()
            .len();
        if n == image.chain_ids.len() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the container's snapshot stays: {ls}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    snapshotctl(&rig.sd_sock, &["cleanup"]);
    let layers = rig.sd_root.join("snapshots");
    let mut files = 0usize;
    let mut stack = vec![layers.clone()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let m = fs::symlink_metadata(e.path()).unwrap();
            if m.is_dir() {
                stack.push(e.path());
            } else {
                files += 1;
                assert_eq!(
                    (m.uid(), m.gid()),
                    (0, 0),
                    "{} was chowned",
                    e.path().display()
                );
            }
        }
    }
    assert!(files > BULK_FILES, "walked the layers: {files} files");

    // Three runs each way, alternating. ctr's chowned copy is a committed snapshot on the
    // image's top layer that nothing references once the container is gone, so
    // containerd's collector may remove it before we look; otherwise we remove it. Either
    // way it is gone before the next run, which therefore makes (and times) it again.
    let copies = || -> Vec<String> {
        let listed = rig.ctr_ok(&["snapshots", "--snapshotter", PLUGIN, "ls"]);
        listed
            .lines()
            .skip(1)
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .filter(|r| r.len() == 3 && r[1] == top && r[2] == "Committed")
            .map(|r| r[0].to_string())
            .collect()
    };
    let (mut mapped, mut chowned) = (Vec::new(), Vec::new());
    for round in 0..3 {
        let (out, t) = run(&format!("idmapped-{}", round + 1), true, true);
        check_view(&out, "idmapped");
        mapped.push(t);
        let (out, t) = run(&format!("chowned-{round}"), false, true);
        // Without ID-mapped layers the container could only see its root's files in a
        // copy chowned to the mapped root.
        check_view(&out, "chowned copy");
        chowned.push(t);
        let found = copies();
        assert!(found.len() <= 1, "at most one chowned copy: {found:?}");
        for copy in &found {
            if round == 0 {
                let usage = rig.ctr(&["snapshots", "--snapshotter", PLUGIN, "usage", copy]);
                eprintln!(
                    "the chowned copy {copy}:\n{}",
                    String::from_utf8_lossy(&usage.stdout)
                );
            }
            // Fails only when the collector removed it first.
            let _ = rig.ctr(&["snapshots", "--snapshotter", PLUGIN, "rm", copy]);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while !copies().is_empty() {
            assert!(Instant::now() < deadline, "the chowned copy stays");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    mapped.sort();
    chowned.sort();
    eprintln!(
        "{}: ctr run of an image of {} files in a user namespace, median of 3: idmapped \
         snapshot {:.0} ms, chowned copy {:.0} ms ({:.1}x)",
        flavor.version,
        BULK_FILES,
        mapped[1].as_secs_f64() * 1e3,
        chowned[1].as_secs_f64() * 1e3,
        chowned[1].as_secs_f64() / mapped[1].as_secs_f64()
    );
    rig.remove_image_and_collect();
    rig.finish();
}

/// On btrfs, with the backend's root on the filesystem `SNAPSHOT_BTRFS_MOUNT` names (as
/// `cargo xtask test-btrfs` mounts it): `SNAPSHOT_TEST_PRIVILEGED=1
/// SNAPSHOT_BTRFS_MOUNT=/mnt/btrfs cargo test -p snapshotd --features btrfs --test containerd`.
#[cfg(feature = "btrfs")]
#[test]
#[serial_test::serial(containerd)]
fn containerd_imports_runs_and_collects_on_btrfs() {
    if privileged("containerd_imports_runs_and_collects_on_btrfs") {
        end_to_end(&Flavor::v1(), "btrfs", Some(&btrfs_mount()));
    }
}

/// containerd 2.x on btrfs, as [`containerd_imports_runs_and_collects_on_btrfs`].
#[cfg(feature = "btrfs")]
#[test]
#[serial_test::serial(containerd)]
fn containerd2_imports_runs_and_collects_on_btrfs() {
    if privileged("containerd2_imports_runs_and_collects_on_btrfs") {
        end_to_end(&Flavor::v2(), "btrfs", Some(&btrfs_mount()));
    }
}

#[cfg(feature = "btrfs")]
fn btrfs_mount() -> PathBuf {
    let mount = std::env::var_os("SNAPSHOT_BTRFS_MOUNT")
        .expect("SNAPSHOT_BTRFS_MOUNT must name a mounted btrfs filesystem for the btrfs run");
    PathBuf::from(mount)
}

/// Which containerd runs: its binaries, its release (the configuration's format) and its
/// version, printed by each test.
struct Flavor {
    release: Release,
    /// Where its binaries are; `None`: the machine's (`PATH`).
    bin_dir: Option<PathBuf>,
    version: String,
}

impl Flavor {
    /// The machine's containerd (Debian's 1.6).
    fn v1() -> Flavor {
        for tool in ["containerd", "ctr", "containerd-shim-runc-v2"] {
            assert!(which(tool), "{tool} is missing: apt-get install containerd");
        }
        let f = Flavor {
            release: Release::V1,
            bin_dir: None,
            version: String::new(),
        };
        f.with_version()
    }

    /// containerd 2.x from Debian's `sid` suite, fetched into the cache when missing.
    fn v2() -> Flavor {
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
        let cache = std::env::var_os("SNAPSHOT_CONTAINERD2_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| manifest.join("../target/containerd2"));
        let script = manifest.join("tests/containerd2/fetch.sh");
        let out = Command::new("bash")
            .arg(&script)
            .arg(&cache)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
        assert!(
            out.status.success(),
            "cannot fetch containerd 2.x into {} ({}): {}\nthe containerd 2.x end-to-end \
             tests need it: check that a Debian mirror is reachable, or set \
             SNAPSHOT_CONTAINERD2_DIR to a directory holding x/usr/bin/containerd",
            cache.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let f = Flavor {
            release: Release::V2,
            bin_dir: Some(cache.join("x/usr/bin")),
            version: String::new(),
        };
        let f = f.with_version();
        assert!(
            f.version.contains(" 2."),
            "{} is not a containerd 2.x: {}",
            f.bin("containerd").display(),
            f.version
        );
        f
    }

    fn with_version(mut self) -> Flavor {
        let out = Command::new(self.bin("containerd"))
            .arg("--version")
            .output()
            .unwrap_or_else(|e| panic!("{}: {e}", self.bin("containerd").display()));
        self.version = String::from_utf8_lossy(&out.stdout).trim().to_string();
        eprintln!("running {}", self.version);
        self
    }

    /// `PATH` for containerd: its own directory first, so it starts its own shim.
    fn path_env(&self) -> std::ffi::OsString {
        let mut path = std::ffi::OsString::new();
        if let Some(d) = &self.bin_dir {
            path.push(d);
            path.push(":");
        }
        path.push(
            std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into()),
        );
        path
    }

    fn bin(&self, name: &str) -> PathBuf {
        match &self.bin_dir {
            Some(d) => d.join(name),
            None => PathBuf::from(name),
        }
    }
}

/// snapshotd on `backend` and a private containerd of `flavor` using it, under one temp
/// dir; everything mounted under it is unmounted when the rig goes.
struct Rig {
    // Dropped in this order: containerd, snapshotd, the mounts, the directories.
    ctrd: Containerd,
    sd: Process,
    sd_sock: PathBuf,
    sd_root: PathBuf,
    _root_dir: tempfile::TempDir,
    _mounts: MountSweep,
    tmp: tempfile::TempDir,
}

impl Rig {
    /// Starts both, with the backend's root under `root_base` (default: the temp dir).
    fn start(flavor: &Flavor, backend: &str, root_base: Option<&Path>) -> Rig {
        for tool in ["runc", "tar"] {
            assert!(which(tool), "{tool} is missing: apt-get install runc tar");
        }
        assert!(
            Path::new(BUSYBOX).exists(),
            "{BUSYBOX} is missing: apt-get install busybox-static"
        );
        let tmp = tempfile::Builder::new()
            .prefix("sd-e2e-")
            .tempdir_in("/tmp")
            .unwrap();
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let mounts = MountSweep(tmp.path().to_owned());
        let root_dir = match root_base {
            Some(base) => tempfile::Builder::new()
                .prefix("sd-e2e-root-")
                .tempdir_in(base)
                .unwrap(),
            None => tempfile::Builder::new()
                .prefix("sd-root-")
                .tempdir_in(tmp.path())
                .unwrap(),
        };
        let sd_root = root_dir.path().to_owned();
        let sd_sock = tmp.path().join("sd.sock");
        let sd = Process::spawn(
            "snapshotd",
            Command::new(SNAPSHOTD)
                .args(["--backend", backend, "--log-level", "debug"])
                .arg("--root")
                .arg(&sd_root)
                .arg("--address")
                .arg(&sd_sock),
            &tmp.path().join("snapshotd.log"),
        );
        assert!(
            wait_for(&sd_sock, Duration::from_secs(20)),
            "snapshotd: no socket\n{}",
            sd.log()
        );
        let capabilities = backend
            .parse::<snapshots::Backend>()
            .unwrap()
            .capabilities();
        let entry = ProxyEntry {
            name: PLUGIN,
            address: &sd_sock,
            capabilities: &capabilities,
            root: &sd_root,
        };
        let ctrd = Containerd::start(flavor, tmp.path(), &entry);
        Rig {
            ctrd,
            sd,
            sd_sock,
            sd_root,
            _root_dir: root_dir,
            _mounts: mounts,
            tmp,
        }
    }

    fn ctr(&self, args: &[&str]) -> Output {
        self.ctrd.ctr(args)
    }

    /// Removes the image: containerd's garbage collection removes every snapshot and its
    /// files; then the backend's cleanup.
    fn remove_image_and_collect(&self) {
        let (sd, ctrd, sd_sock) = (&self.sd, &self.ctrd, &self.sd_sock);
        let ctr = |args: &[&str]| self.ctr(args);
        let out = ctr(&["images", "rm", "--sync", IMAGE]);
        assert_ok(&out, "ctr images rm --sync", sd, ctrd);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = ctr(&["snapshots", "--snapshotter", PLUGIN, "ls"]);
            let backend_ls = snapshotctl(sd_sock, &["--json", "ls"]);
            if String::from_utf8_lossy(&out.stdout).lines().count() <= 1
                && backend_ls.trim() == "[]"
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "snapshots left after GC: ctr: {} backend: {backend_ls}\n{}",
                String::from_utf8_lossy(&out.stdout),
                sd.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        // Backends without deferred deletion answer Unimplemented, which containerd's GC
        // takes as success too.
        let out = Command::new(SNAPSHOTCTL)
            .arg("--address")
            .arg(sd_sock)
            .arg("cleanup")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() || err.contains("not implemented"),
            "cleanup: {err}"
        );
    }

    /// Stops containerd, then snapshotd (which must exit cleanly and remove its socket),
    /// and checks that no tree is left in the backend's root.
    fn finish(self) {
        let Rig {
            ctrd,
            mut sd,
            sd_sock,
            sd_root,
            ..
        } = self;
        drop(ctrd);
        let st = sd
            .signal_and_wait(Signal::TERM, Duration::from_secs(20))
            .expect("snapshotd exits");
        assert!(st.success(), "snapshotd: {st:?}\n{}", sd.log());
        assert!(!sd_sock.exists());
        // Every directory that holds snapshots is empty once the daemon stopped (btrfs
        // keeps active and view subvolumes beside the committed ones; the blank trees
        // made ahead for creates to come are deleted at the stop).
        for dir in ["snapshots", "active", "view"] {
            let Ok(entries) = fs::read_dir(sd_root.join(dir)) else {
                assert_ne!(
                    dir,
                    "snapshots",
                    "{} has no snapshots/ directory",
                    sd_root.display()
                );
                continue;
            };
            let left: Vec<_> = entries.map(|e| e.unwrap().path()).collect();
            assert!(left.is_empty(), "files left in the backend root: {left:?}");
        }
    }

    /// `ctr ARGS`, which must succeed: its stdout.
    fn ctr_ok(&self, args: &[&str]) -> String {
        let out = self.ctr(args);
        assert_ok(&out, &format!("ctr {args:?}"), &self.sd, &self.ctrd);
        String::from_utf8_lossy(&out.stdout).replace("\r\n", "\n")
    }
}

/// The whole flow on `backend` with containerd `flavor`, with the backend's root under
/// `root_base` (default: the test's temp dir).
fn end_to_end(flavor: &Flavor, backend: &str, root_base: Option<&Path>) {
    let rig = Rig::start(flavor, backend, root_base);
    let image = build_image(&rig.tmp.path().join("image"), 0);
    let (sd_sock, sd_root) = (rig.sd_sock.clone(), rig.sd_root.clone());
    let (sd, ctrd) = (&rig.sd, &rig.ctrd);
    let ctr = |args: &[&str]| rig.ctr(args);
    if flavor.release == Release::V2 {
        // containerd copies the entry's capabilities and exports into the plugin's
        // metadata: what clients (ctr's --remap-labels, CRI) read.
        let plugins = rig.ctr_ok(&["plugins", "ls", "-d", &format!("id=={PLUGIN}")]);
        for cap in backend
            .parse::<snapshots::Backend>()
            .unwrap()
            .capabilities()
        {
            assert!(plugins.contains(cap), "capability {cap} not in:\n{plugins}");
        }
        assert!(
            plugins.contains(&sd_root.display().to_string()),
            "root export not in:\n{plugins}"
        );
    }

    // Import: containerd unpacks the three layers through snapshotd.
    let out = ctr(&[
        "images",
        "import",
        "--snapshotter",
        PLUGIN,
        image.tar.to_str().unwrap(),
    ]);
    assert_ok(&out, "ctr images import", sd, ctrd);

    let out = ctr(&["snapshots", "--snapshotter", PLUGIN, "ls"]);
    assert_ok(&out, "ctr snapshots ls", sd, ctrd);
    let listed = String::from_utf8_lossy(&out.stdout).to_string();
    let mut rows: Vec<Vec<String>> = listed
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .collect();
    rows.sort();
    let mut want: Vec<Vec<String>> = image
        .chain_ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let mut row = vec![id.clone()];
            if i > 0 {
                row.push(image.chain_ids[i - 1].clone());
            }
            row.push("Committed".to_string());
            row
        })
        .collect();
    want.sort();
    assert_eq!(rows, want, "ctr snapshots ls:\n{listed}");

    // The backend holds the same three layers under containerd's namespaced keys.
    let backend_ls = snapshotctl(&sd_sock, &["--json", "ls"]);
    let infos: serde_json::Value = serde_json::from_str(&backend_ls).unwrap();
    let infos = infos.as_array().unwrap();
    assert_eq!(infos.len(), image.chain_ids.len(), "{backend_ls}");
    for chain_id in &image.chain_ids {
        assert!(
            infos
                .iter()
                .any(|i| i["name"].as_str().unwrap().ends_with(chain_id.as_str())
                    && i["kind"] == "committed"
                    && i["name"].as_str().unwrap().starts_with("default/")),
            "{chain_id} not in {backend_ls}"
        );
    }

    // Run a container and look at what it sees.
    let id = format!("snaptest-{backend}");
    ctrd.remember_container(&id);
    let script = "cat /etc/layer1.txt /etc/layer2.txt; echo ---; ls /etc; echo ---; ls /data/old; \
                  echo ---; ls /data/kept; echo ---; test -e /etc/removed-later || echo gone; \
                  echo written > /tmp-file && cat /tmp-file";
    let out = ctr(&[
        "run",
        "--snapshotter",
        PLUGIN,
        "--rm",
        IMAGE,
        &id,
        "/bin/sh",
        "-c",
        script,
    ]);
    assert_ok(&out, "ctr run", sd, ctrd);
    let seen = String::from_utf8_lossy(&out.stdout).replace("\r\n", "\n");
    let parts: Vec<&str> = seen.split("---\n").collect();
    assert_eq!(parts.len(), 5, "container output:\n{seen}");
    assert_eq!(parts[0], "from layer 1\nfrom layer 2\n", "{seen}");
    let etc: Vec<&str> = parts[1].split_whitespace().collect();
    assert_eq!(etc, vec!["layer1.txt", "layer2.txt"], "{seen}");
    // The opaque whiteout hides layer 1's and layer 2's files of /data/old.
    assert_eq!(
        parts[2].split_whitespace().collect::<Vec<_>>(),
        vec!["new.txt"],
        "{seen}"
    );
    assert_eq!(
        parts[3].split_whitespace().collect::<Vec<_>>(),
        vec!["k.txt"],
        "{seen}"
    );
    assert_eq!(parts[4], "gone\nwritten\n", "{seen}");

    // --rm removed the container's snapshot: only the layers remain.
    let out = ctr(&["snapshots", "--snapshotter", PLUGIN, "ls"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).lines().count(),
        image.chain_ids.len() + 1
    );

    fsck_with_containerd(&rig, &image);
    rig.remove_image_and_collect();
    rig.finish();
}

struct Image {
    tar: PathBuf,
    chain_ids: Vec<String>,
}

fn sha256_hex(data: &[u8]) -> String {
    let d = Sha256::digest(data);
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes a file with `mode`, creating its parents.
fn put(root: &Path, rel: &str, content: &[u8], mode: u32) {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(&p, content).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
}

fn dir(root: &Path, rel: &str) {
    let p = root.join(rel);
    fs::create_dir_all(&p).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
}

/// Tars the entries of `src` (not `src` itself, so the image's root keeps its mode).
fn tar_dir(src: &Path, out: &Path) -> Vec<u8> {
    let mut names: Vec<String> = fs::read_dir(src)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    let st = Command::new("tar")
        .args([
            "--sort=name",
            "--owner=0",
            "--group=0",
            "--numeric-owner",
            "--format=gnu",
            "-cf",
        ])
        .arg(out)
        .arg("-C")
        .arg(src)
        .args(&names)
        .status()
        .unwrap();
    assert!(st.success(), "tar of {} failed", src.display());
    fs::read(out).unwrap()
}

/// An OCI image archive of three layers (four with `bulk` files):
/// 1. a static busybox with `/bin/sh`, `cat`, `ls`, `echo`, `test`, `stat`, `id`,
///    `touch`, `wc` links, `/etc/layer1.txt`,
///    `/etc/removed-later`, `/data/old/{a,b}.txt`, `/data/kept/k.txt`;
/// 2. adds `/etc/layer2.txt` and `/data/old/c.txt`;
/// 3. deletes `/etc/removed-later` (a `.wh.` whiteout) and replaces `/data/old` with an
///    opaque directory (`.wh..wh..opq`) holding only `new.txt`;
/// 4. with `bulk > 0`: `/bulk/<n>` for n < `bulk`, 100 files a directory, each of 16
///    bytes: an image whose chown costs something.
fn build_image(work: &Path, bulk: usize) -> Image {
    let layers_dir = work.join("layers");
    let (l1, l2, l3) = (
        layers_dir.join("1"),
        layers_dir.join("2"),
        layers_dir.join("3"),
    );
    for d in [&l1, &l2, &l3] {
        fs::create_dir_all(d).unwrap();
    }
    dir(&l1, "bin");
    fs::copy(BUSYBOX, l1.join("bin/busybox")).unwrap();
    fs::set_permissions(l1.join("bin/busybox"), fs::Permissions::from_mode(0o755)).unwrap();
    for applet in [
        "sh", "cat", "ls", "echo", "test", "stat", "id", "touch", "wc",
    ] {
        symlink("busybox", l1.join("bin").join(applet)).unwrap();
    }
    dir(&l1, "etc");
    dir(&l1, "tmp");
    put(&l1, "etc/layer1.txt", b"from layer 1\n", 0o644);
    put(&l1, "etc/removed-later", b"doomed\n", 0o644);
    dir(&l1, "data/old");
    put(&l1, "data/old/a.txt", b"a\n", 0o644);
    put(&l1, "data/old/b.txt", b"b\n", 0o644);
    dir(&l1, "data/kept");
    put(&l1, "data/kept/k.txt", b"k\n", 0o644);

    dir(&l2, "etc");
    put(&l2, "etc/layer2.txt", b"from layer 2\n", 0o644);
    dir(&l2, "data/old");
    put(&l2, "data/old/c.txt", b"c\n", 0o644);

    dir(&l3, "etc");
    put(&l3, "etc/.wh.removed-later", b"", 0o644);
    dir(&l3, "data/old");
    put(&l3, "data/old/.wh..wh..opq", b"", 0o644);
    put(&l3, "data/old/new.txt", b"new\n", 0o644);

    let mut layers = vec![l1, l2, l3];
    if bulk > 0 {
        let l4 = layers_dir.join("4");
        for n in 0..bulk {
            put(
                &l4,
                &format!("bulk/{}/{n}", n / 100),
                b"0123456789abcde\n",
                0o644,
            );
        }
        layers.push(l4);
    }

    let oci = work.join("oci");
    let blobs = oci.join("blobs/sha256");
    fs::create_dir_all(&blobs).unwrap();
    let blob = |data: &[u8]| -> (String, usize) {
        let hex = sha256_hex(data);
        fs::write(blobs.join(&hex), data).unwrap();
        (format!("sha256:{hex}"), data.len())
    };

    let mut layer_descs = Vec::new();
    let mut diff_ids = Vec::new();
    for (i, l) in layers.iter().enumerate() {
        let data = tar_dir(l, &work.join(format!("layer{}.tar", i + 1)));
        let (digest, size) = blob(&data);
        diff_ids.push(digest.clone());
        layer_descs.push(json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": digest,
            "size": size,
        }));
    }
    let mut history = vec![
        json!({ "created_by": "layer 1: busybox" }),
        json!({ "created_by": "layer 2: add files" }),
        json!({ "created_by": "layer 3: whiteouts" }),
    ];
    if bulk > 0 {
        history.push(json!({ "created_by": format!("layer 4: {bulk} files") }));
    }
    let config = json!({
        "architecture": "amd64",
        "os": "linux",
        "config": { "Env": ["PATH=/bin"], "Cmd": ["/bin/sh"], "WorkingDir": "/" },
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
        "history": history,
    });
    let (config_digest, config_size) = blob(config.to_string().as_bytes());
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": config_size,
        },
        "layers": layer_descs,
    });
    let (manifest_digest, manifest_size) = blob(manifest.to_string().as_bytes());
    let index = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": manifest_size,
            "platform": { "architecture": "amd64", "os": "linux" },
            "annotations": {
                "io.containerd.image.name": IMAGE,
                "org.opencontainers.image.ref.name": "latest",
            },
        }],
    });
    fs::write(oci.join("index.json"), index.to_string()).unwrap();
    fs::write(oci.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let tar = work.join("image.tar");
    tar_dir(&oci, &tar);

    // containerd names a layer stack by its chain ID: chain(1) = diff(1),
    // chain(n) = sha256(chain(n-1) + " " + diff(n)).
    let mut chain_ids: Vec<String> = Vec::new();
    for d in &diff_ids {
        let next = match chain_ids.last() {
            None => d.clone(),
            Some(prev) => format!("sha256:{}", sha256_hex(format!("{prev} {d}").as_bytes())),
        };
        chain_ids.push(next);
    }
    Image { tar, chain_ids }
}

fn which(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `snapshotctl --json fsck --containerd ...`: its exit status and report.
fn fsck_json(rig: &Rig) -> (Option<i32>, serde_json::Value) {
    let out = Command::new(SNAPSHOTCTL)
        .arg("--address")
        .arg(&rig.sd_sock)
        .args(["--json", "fsck", "--containerd"])
        .arg(&rig.ctrd.address)
        .args(["--containerd-snapshotter", PLUGIN])
        .output()
        .unwrap();
    let v = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "fsck printed no JSON ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code(), v)
}

/// The tree `<root>/<kind dir>/<id>` of the backend snapshot `key`: an active one's upper
/// layer, bind source or subvolume; a committed one's through a view on it.
fn tree_of(rig: &Rig, key: &str, committed: bool) -> PathBuf {
    let view = format!("fsck-tree-view-{}", key.len());
    let mounts = match committed {
        true => snapshotctl(&rig.sd_sock, &["--json", "view", &view, key]),
        false => snapshotctl(&rig.sd_sock, &["--json", "mounts", key]),
    };
    if committed {
        snapshotctl(&rig.sd_sock, &["rm", &view]);
    }
    let m: serde_json::Value = serde_json::from_str(&mounts).unwrap();
    let m = &m[0];
    // An active overlay's upper layer; a read-only overlay's nearest lower layer (the
    // view's parent); a bind's source.
    let option = |name: &str| {
        m["options"]
            .as_array()
            .unwrap()
            .iter()
            .find_map(|o| o.as_str()?.strip_prefix(name))
    };
    let path = match option("subvolid=") {
        // btrfs: the subvolume's path from the filesystem's top, under which the root's
        // kind directories are the last two components.
        Some(id) => {
            let out = Command::new("btrfs")
                .args(["inspect-internal", "subvolid-resolve", id])
                .arg(&rig.sd_root)
                .output()
                .unwrap();
            assert!(out.status.success(), "{out:?}");
            let rel = String::from_utf8(out.stdout).unwrap();
            let rel = Path::new(rel.trim());
            let n = rel.components().count();
            return rel
                .components()
                .skip(n - 2)
                .fold(rig.sd_root.clone(), |p, c| p.join(c));
        }
        None => option("upperdir=")
            .or_else(|| option("lowerdir=").and_then(|l| l.split(':').next()))
            .unwrap_or_else(|| m["source"].as_str().unwrap()),
    };
    let rest = Path::new(path)
        .strip_prefix(&rig.sd_root)
        .unwrap_or_else(|_| panic!("{path} is not under {}", rig.sd_root.display()));
    rest.components()
        .take(2)
        .fold(rig.sd_root.clone(), |p, c| p.join(c))
}

/// fsck with containerd's view: clean after the import and run; then a container's
/// snapshot and an image layer whose trees are gone are named by their owners, an active
/// snapshot nothing uses and backend snapshots containerd has no record of are found;
/// once undone, clean again.
fn fsck_with_containerd(rig: &Rig, image: &Image) {
    let (code, v) = fsck_json(rig);
    assert_eq!(code, Some(0), "clean: {v:#}");
    let top = image.chain_ids.last().unwrap();
    rig.ctrd.remember_container("fsck-c");
    rig.ctr_ok(&[
        "containers",
        "create",
        "--snapshotter",
        PLUGIN,
        IMAGE,
        "fsck-c",
    ]);
    rig.ctr_ok(&[
        "snapshots",
        "--snapshotter",
        PLUGIN,
        "prepare",
        "fsck-unused",
        top,
    ]);
    rig.ctr_ok(&[
        "snapshots",
        "--snapshotter",
        PLUGIN,
        "label",
        "fsck-unused",
        "containerd.io/gc.root=fsck",
    ]);
    snapshotctl(&rig.sd_sock, &["prepare", "default/999999/ghost"]);
    snapshotctl(&rig.sd_sock, &["prepare", "made-outside"]);
    let backend: serde_json::Value =
        serde_json::from_str(&snapshotctl(&rig.sd_sock, &["--json", "ls"])).unwrap();
    let key_ending = |end: &str| -> String {
        backend
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["name"].as_str().unwrap().to_string())
            .find(|n| n.ends_with(&format!("/{end}")) && n.starts_with("default/"))
            .unwrap_or_else(|| panic!("no backend key for {end}: {backend}"))
    };
    let (c_key, top_key) = (key_ending("fsck-c"), key_ending(top));
    let c_tree = tree_of(rig, &c_key, false);
    let top_tree = match rig.sd_root.join("active").is_dir() {
        // btrfs keeps committed layers apart, and a view is a subvolume of its own: the
        // image's top layer is the last one committed.
        true => fs::read_dir(rig.sd_root.join("snapshots"))
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u64>().ok())
            .max()
            .map(|id| rig.sd_root.join("snapshots").join(id.to_string()))
            .unwrap(),
        false => tree_of(rig, &top_key, true),
    };
    for tree in [&c_tree, &top_tree] {
        use std::os::unix::fs::MetadataExt;
        // A btrfs subvolume (inode 256), read-only when committed, goes whole.
        if fs::metadata(tree).unwrap().ino() == 256 {
            let out = Command::new("btrfs")
                .args(["subvolume", "delete"])
                .arg(tree)
                .output()
                .unwrap();
            assert!(out.status.success(), "{out:?}");
        } else {
            fs::remove_dir_all(tree).unwrap();
        }
    }

    let (code, v) = fsck_json(rig);
    assert_eq!(code, Some(1), "findings: {v:#}");
    let mut got: Vec<(String, String, String)> = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            let s = |k: &str| f[k].as_str().unwrap_or_default().to_string();
            (s("kind"), s("key"), s("owner"))
        })
        .collect();
    got.sort();
    let mut want = vec![
        (
            "record-without-directory".to_string(),
            c_key.clone(),
            "container fsck-c (namespace default)".to_string(),
        ),
        (
            "record-without-directory".to_string(),
            top_key.clone(),
            format!("image {IMAGE} (namespace default)"),
        ),
        (
            "unknown-to-containerd".to_string(),
            "default/999999/ghost".to_string(),
            "containerd namespace default (no record)".to_string(),
        ),
        (
            "unknown-to-containerd".to_string(),
            "made-outside".to_string(),
            String::new(),
        ),
        (
            "unused-active".to_string(),
            "fsck-unused".to_string(),
            "containerd namespace default: no container, no lease".to_string(),
        ),
    ];
    want.sort();
    assert_eq!(got, want, "{v:#}");

    // Undone: clean again (the layer's record stays until the image goes).
    snapshotctl(
        &rig.sd_sock,
        &["rm", "default/999999/ghost", "made-outside"],
    );
    rig.ctr_ok(&["snapshots", "--snapshotter", PLUGIN, "rm", "fsck-unused"]);
    rig.ctr_ok(&["containers", "rm", "fsck-c"]);
    // A collection now, not on the scheduler's pause-based interval (which a slow
    // collection stretches to a minute and more): removing a lease with --sync waits
    // for one, and it removes the container's snapshot from the backend.
    rig.ctr_ok(&["leases", "create", "--id", "fsck-gc"]);
    rig.ctr_ok(&["leases", "rm", "--sync", "fsck-gc"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, v) = fsck_json(rig);
        let left: Vec<&str> = v["findings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["kind"].as_str().unwrap())
            .collect();
        if left == ["record-without-directory"] {
            break;
        }
        assert!(Instant::now() < deadline, "after the undo: {v:#}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn snapshotctl(socket: &Path, args: &[&str]) -> String {
    let out = Command::new(SNAPSHOTCTL)
        .arg("--address")
        .arg(socket)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "snapshotctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn assert_ok(out: &Output, what: &str, sd: &Process, ctrd: &Containerd) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}\n--- snapshotd log:\n{}\n--- containerd log:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        sd.log(),
        ctrd.process.log()
    );
}

/// A child process with its stderr in a log file; killed on drop.
struct Process {
    name: &'static str,
    child: ChildGuard,
    log: PathBuf,
}

impl Process {
    fn spawn(name: &'static str, cmd: &mut Command, log: &Path) -> Process {
        let file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .env_remove("NOTIFY_SOCKET")
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        Process {
            name,
            child: ChildGuard::new(child),
            log: log.to_owned(),
        }
    }

    fn log(&self) -> String {
        format!(
            "[{}]\n{}",
            self.name,
            fs::read_to_string(&self.log).unwrap_or_default()
        )
    }

    fn signal_and_wait(
        &mut self,
        sig: Signal,
        timeout: Duration,
    ) -> Option<std::process::ExitStatus> {
        self.child.signal_and_wait(sig, timeout)
    }
}

/// A private containerd (its own root, state and sockets under the test's temp dir) with
/// snapshotd as the proxy snapshotter `snaptest`. Dropping it kills any container it
/// started, then containerd.
struct Containerd {
    process: Process,
    ctr: PathBuf,
    address: PathBuf,
    containers: std::cell::RefCell<Vec<String>>,
}

impl Containerd {
    /// Starts containerd `flavor` with a configuration made of its own root, state and
    /// sockets under `tmp` and, for the proxy, exactly what `snapshotd
    /// --print-containerd-config` prints for `entry`.
    fn start(flavor: &Flavor, tmp: &Path, entry: &ProxyEntry<'_>) -> Containerd {
        let base = tmp.join("containerd");
        fs::create_dir_all(&base).unwrap();
        let address = base.join("containerd.sock");
        let proxy = snapshotd::containerd::config(flavor.release, entry);
        let (version_line, proxy) = proxy.split_once('\n').unwrap();
        let config = format!(
            r#"{version_line}
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.cri.v1.images",
  "io.containerd.cri.v1.runtime", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.aufs"]

[grpc]
  address = "{address}"

[ttrpc]
  address = "{address}.ttrpc"
{proxy}"#,
            root = base.join("root").display(),
            state = base.join("state").display(),
            address = address.display(),
        );
        let config_path = base.join("config.toml");
        fs::write(&config_path, config).unwrap();
        let process = Process::spawn(
            "containerd",
            Command::new(flavor.bin("containerd"))
                .env("PATH", flavor.path_env())
                .arg("--config")
                .arg(&config_path)
                .args(["--log-level", "debug"]),
            &base.join("containerd.log"),
        );
        let c = Containerd {
            process,
            ctr: flavor.bin("ctr"),
            address,
            containers: Default::default(),
        };
        assert!(
            wait_for(&c.address, Duration::from_secs(30)),
            "containerd: no socket\n{}",
            c.process.log()
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        while !c.ctr(&["version"]).status.success() {
            assert!(
                Instant::now() < deadline,
                "containerd does not answer\n{}",
                c.process.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        c
    }

    /// Runs `ctr` against this containerd; a call that hangs is killed after
    /// [`CTR_TIMEOUT`] and fails the test instead of hanging it.
    fn ctr(&self, args: &[&str]) -> Output {
        let child = Command::new(&self.ctr)
            .arg("--address")
            .arg(&self.address)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait_with_output());
        });
        match rx.recv_timeout(CTR_TIMEOUT) {
            Ok(out) => out.unwrap(),
            Err(_) => {
                if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
                    let _ = rustix::process::kill_process(pid, Signal::KILL);
                }
                panic!(
                    "ctr {args:?} did not finish in {CTR_TIMEOUT:?}\n{}",
                    self.process.log()
                );
            }
        }
    }

    fn remember_container(&self, id: &str) {
        self.containers.borrow_mut().push(id.to_string());
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // A failed run may leave a task and its shim: kill them through containerd first.
        for id in self.containers.borrow().iter() {
            let _ = self.ctr(&["tasks", "kill", "-s", "SIGKILL", id]);
            let _ = self.ctr(&["tasks", "rm", "-f", id]);
            let _ = self.ctr(&["containers", "rm", id]);
        }
        if self
            .process
            .signal_and_wait(Signal::TERM, Duration::from_secs(10))
            .is_none()
        {
            // ChildGuard's drop sends SIGKILL.
            eprintln!("containerd did not stop on SIGTERM: killing it");
        }
    }
}

/// Unmounts everything mounted under a directory (deepest first, detached) on drop.
struct MountSweep(PathBuf);

impl Drop for MountSweep {
    fn drop(&mut self) {
        let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
            return;
        };
        let prefix = self.0.to_string_lossy().to_string();
        let mut targets: Vec<String> = info
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .map(|t| t.replace("\\040", " "))
            .filter(|t| t.starts_with(&prefix))
            .collect();
        targets.sort_by_key(|t| std::cmp::Reverse(t.len()));
        for t in targets {
            let _ = rustix::mount::unmount(t.as_str(), rustix::mount::UnmountFlags::DETACH);
        }
    }
}
