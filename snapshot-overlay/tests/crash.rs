//! Crash safety: a worker process runs prepare/commit/remove loops and is killed with
//! SIGKILL at random moments; after each kill the root must open, pass the consistency
//! check, hold every snapshot the worker saw committed, and be free of orphans after
//! cleanup.
//!
//! The worker is this test binary run again with `OVERLAY_CRASH_ROOT` set: the
//! `crash_worker` test then loops instead of returning.
#![cfg(target_os = "linux")]

mod common;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{privileged, MountGuard};
use snapshot_core::{Cleaner, CommitOptions, CreateOptions, Info, Kind, Snapshotter};
use snapshot_overlay::{OverlayConfig, OverlaySnapshotter, UPPERDIR_LABEL};

const ROOT_ENV: &str = "OVERLAY_CRASH_ROOT";
const LOG_ENV: &str = "OVERLAY_CRASH_LOG";
const ROUND_ENV: &str = "OVERLAY_CRASH_ROUND";
const ROUNDS: u64 = 8;

use snapshot_testsuite::rng::Rng;

fn config(round: u64) -> OverlayConfig {
    // Alternate the removal modes so both kinds of leftovers are met.
    OverlayConfig {
        options: snapshot_core::lifecycle::Options {
            async_remove: Some(round.is_multiple_of(2)),
            ..Default::default()
        },
        ..OverlayConfig::default()
    }
}

/// Appends one line to the log and makes it durable before going on: a line in the log
/// means the operation it names had returned.
fn record(log: &mut std::fs::File, line: &str) {
    writeln!(log, "{line}").unwrap();
    log.sync_data().unwrap();
}

/// The worker: loops until killed. A no-op in a normal test run.
#[test]
fn crash_worker() {
    let Ok(root) = std::env::var(ROOT_ENV) else {
        return;
    };
    let log_path = std::env::var(LOG_ENV).unwrap();
    let round: u64 = std::env::var(ROUND_ENV).unwrap().parse().unwrap();
    let sn = OverlaySnapshotter::open(Path::new(&root), config(round)).unwrap();
    let mut log = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(log_path)
        .unwrap();
    let mut rng = Rng::seeded(round + u64::from(std::process::id()));
    let none = CreateOptions::default();
    let mut chain: Vec<String> = Vec::new();
    for i in 0u64.. {
        let parent = chain.last().cloned().unwrap_or_default();
        let key = format!("r{round}-a{i}");
        sn.prepare(&key, &parent, &none).unwrap();
        let upper = sn.upper_dir(&key).unwrap();
        let name = format!("r{round}-c{i}");
        std::fs::write(upper.join(format!("layer-{name}")), &name).unwrap();
        for f in 0..rng.below(40) {
            std::fs::write(upper.join(format!("extra-{f}")), vec![b'x'; 512]).unwrap();
        }
        sn.commit(&name, &key, &CommitOptions::default()).unwrap();
        record(&mut log, &format!("committed {name} {parent}"));
        chain.push(name.clone());

        if rng.below(3) == 0 {
            let v = format!("r{round}-v{i}");
            sn.view(&v, &name, &none).unwrap();
            sn.remove(&v).unwrap();
        }
        if rng.below(3) == 0 {
            let scratch = format!("r{round}-s{i}");
            sn.prepare(&scratch, &name, &none).unwrap();
            std::fs::write(sn.upper_dir(&scratch).unwrap().join("scratch"), b"s").unwrap();
            sn.remove(&scratch).unwrap();
        }
        if rng.below(4) == 0 {
            let top = chain.pop().unwrap();
            record(&mut log, &format!("removing {top}"));
            sn.remove(&top).unwrap();
        }
        if chain.len() > 6 {
            chain.clear();
        }
        if rng.below(8) == 0 {
            sn.cleanup().unwrap();
        }
    }
}

struct Expect {
    /// Committed name to its parent, for every snapshot the worker saw committed.
    committed: BTreeMap<String, String>,
    /// Names whose remove may or may not have happened.
    removing: HashSet<String>,
}

fn read_log(path: &Path) -> Expect {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut e = Expect {
        committed: BTreeMap::new(),
        removing: HashSet::new(),
    };
    for line in text.lines() {
        let mut parts = line.splitn(3, ' ');
        match (parts.next(), parts.next()) {
            (Some("committed"), Some(name)) => {
                e.committed
                    .insert(name.to_string(), parts.next().unwrap_or("").to_string());
            }
            (Some("removing"), Some(name)) => {
                e.removing.insert(name.to_string());
            }
            // A line cut by the kill: the operation before it had returned, nothing else.
            _ => {}
        }
    }
    e
}

fn verify(dir: &Path, root: &Path, log: &Path, round: u64, mount: bool) -> usize {
    let sn = OverlaySnapshotter::open(
        root,
        OverlayConfig {
            upperdir_label: true,
            ..config(round)
        },
    )
    .unwrap_or_else(|e| panic!("round {round}: the root does not open after a kill: {e}"));
    let count = sn
        .check()
        .unwrap_or_else(|e| panic!("round {round}: consistency check: {e}"));

    // Walk and stat everything, as containerd's garbage collector would.
    let mut infos: Vec<Info> = Vec::new();
    sn.walk(&[], &mut |i: &Info| {
        infos.push(i.clone());
        Ok(())
    })
    .unwrap();
    assert_eq!(
        infos.len(),
        count,
        "round {round}: walk sees every snapshot"
    );
    for i in &infos {
        let st = sn.stat(&i.name).unwrap();
        assert_eq!((st.kind, &st.parent), (i.kind, &i.parent));
        let upper = PathBuf::from(&st.labels[UPPERDIR_LABEL]);
        assert!(
            upper.is_dir(),
            "round {round}: {} has no layer at {}",
            i.name,
            upper.display()
        );
    }

    let expect = read_log(log);
    let mut intact = 0;
    for (name, parent) in &expect.committed {
        match sn.stat(name) {
            Ok(st) => {
                assert_eq!(st.kind, Kind::Committed, "round {round}: {name}");
                assert_eq!(&st.parent, parent, "round {round}: parent of {name}");
                let upper = sn.upper_dir(name).unwrap();
                let content = std::fs::read_to_string(upper.join(format!("layer-{name}")))
                    .unwrap_or_else(|e| panic!("round {round}: layer of {name}: {e}"));
                assert_eq!(&content, name);
                intact += 1;
            }
            Err(e) => assert!(
                expect.removing.contains(name),
                "round {round}: committed snapshot {name} was lost: {e}"
            ),
        }
    }

    sn.cleanup().unwrap();
    let live: BTreeSet<String> = infos
        .iter()
        .map(|i| {
            let upper = PathBuf::from(&i.labels[UPPERDIR_LABEL]);
            upper
                .parent()
                .unwrap()
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    let blanks: Vec<String> = sn
        .store()
        .blank_trees()
        .iter()
        .map(u64::to_string)
        .collect();
    let on_disk: BTreeSet<String> = std::fs::read_dir(root.join("snapshots"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !blanks.contains(n))
        .collect();
    assert_eq!(
        on_disk, live,
        "round {round}: after cleanup only live snapshot directories remain"
    );

    if mount {
        mount_deepest_chain(&sn, dir, &infos, round);
    }
    sn.close().unwrap();
    intact
}

/// Mounts a view of the committed snapshot with the longest chain and reads every layer's
/// file through it.
fn mount_deepest_chain(sn: &OverlaySnapshotter, dir: &Path, infos: &[Info], round: u64) {
    let parents: BTreeMap<&str, &str> = infos
        .iter()
        .filter(|i| i.kind == Kind::Committed)
        .map(|i| (i.name.as_str(), i.parent.as_str()))
        .collect();
    let chain_of = |top: &str| {
        let mut c = vec![top.to_string()];
        while let Some(&p) = parents
            .get(c.last().unwrap().as_str())
            .filter(|p| !p.is_empty())
        {
            c.push(p.to_string());
        }
        c
    };
    let Some(chain) = parents.keys().map(|n| chain_of(n)).max_by_key(|c| c.len()) else {
        return;
    };
    let view = format!("verify-{round}");
    let m = sn
        .view(&view, &chain[0], &CreateOptions::default())
        .unwrap();
    let target = dir.join(format!("mnt-{round}"));
    {
        let _g = MountGuard::mount(&m, &target);
        for name in &chain {
            let got =
                std::fs::read_to_string(target.join(format!("layer-{name}"))).unwrap_or_else(|e| {
                    panic!(
                        "round {round}: {name} through the view of {}: {e}",
                        chain[0]
                    )
                });
            assert_eq!(&got, name);
        }
    }
    sn.remove(&view).unwrap();
}

#[test]
fn killed_worker_loses_no_committed_snapshot() {
    let mount = privileged("killed_worker_loses_no_committed_snapshot (mounting the chain)");
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let log = dir.path().join("committed.log");
    let exe = std::env::current_exe().unwrap();
    let mut rng = Rng::seeded(0);
    let mut intact = 0;
    for round in 0..ROUNDS {
        let mut child = Command::new(&exe)
            .args(["--exact", "crash_worker", "--nocapture", "--test-threads=1"])
            .env(ROOT_ENV, &root)
            .env(LOG_ENV, &log)
            .env(ROUND_ENV, round.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(150 + rng.below(600)));
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
            panic!("round {round}: the worker ended by itself ({status}): {err}");
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        intact = verify(dir.path(), &root, &log, round, mount);
        eprintln!("round {round}: {intact} committed snapshots intact after the kill");
    }
    let expect = read_log(&log);
    assert!(
        expect.committed.len() > ROUNDS as usize,
        "the worker got work done: {}",
        expect.committed.len()
    );
    assert!(intact > 0, "some committed snapshots survive");
}
