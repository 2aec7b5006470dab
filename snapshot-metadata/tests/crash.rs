//! Crash safety of the metadata layer: a worker process prepares, commits, removes and
//! collects in two namespaces over native, and is killed with SIGKILL at random moments,
//! collections included. After each kill the layer must open and pass its consistency
//! check (no record names a missing backend snapshot), hold every rooted snapshot the
//! worker saw committed, and, after one collection, keep no backend snapshot no record
//! names.
//!
//! The worker is this test binary run again with `METADATA_CRASH_ROOT` set: the
//! `crash_worker` test then loops instead of returning.
#![cfg(target_os = "linux")]

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use snapshot_core::{labels, CommitOptions, CreateOptions, Kind, Snapshotter};
use snapshot_metadata::{Metadata, MetadataOptions, ROOT_LABEL};
use snapshot_native::{NativeConfig, NativeSnapshotter};
use snapshot_testsuite::rng::Rng;

const ROOT_ENV: &str = "METADATA_CRASH_ROOT";
const LOG_ENV: &str = "METADATA_CRASH_LOG";
const ROUNDS: u64 = 8;

fn open(root: &Path) -> Arc<Metadata> {
    let backend = NativeSnapshotter::open(&root.join("backend"), NativeConfig::default())
        .unwrap_or_else(|e| panic!("the backend does not open after a kill: {e}"));
    Metadata::open(
        &root.join("namespaces"),
        Arc::new(backend),
        &MetadataOptions::default(),
    )
    .unwrap_or_else(|e| panic!("the metadata does not open after a kill: {e}"))
}

/// Appends one line to the log and makes it durable: a line means its operation returned.
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
    let md = open(Path::new(&root));
    let mut log = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(std::env::var(LOG_ENV).unwrap())
        .unwrap();
    let mut rng = Rng::seeded(u64::from(std::process::id()));
    let spaces = [md.namespace("one").unwrap(), md.namespace("two").unwrap()];
    let rooted = CommitOptions {
        labels: labels([(ROOT_LABEL, "1")]),
        parent: String::new(),
    };
    let mut chains: [Vec<String>; 2] = [Vec::new(), Vec::new()];
    for i in 0u64.. {
        let n = rng.below(2) as usize;
        let (sn, chain) = (&spaces[n], &mut chains[n]);
        let parent = chain.last().cloned().unwrap_or_default();
        let key = format!("p{}-a{i}", std::process::id());
        sn.prepare(&key, &parent, &CreateOptions::default())
            .unwrap();
        let name = format!("p{}-c{i}", std::process::id());
        sn.commit(&name, &key, &rooted).unwrap();
        record(&mut log, &format!("committed {n} {name} {parent}"));
        chain.push(name.clone());
        // Garbage: a snapshot nothing roots, made and left for the collector.
        if rng.below(2) == 0 {
            sn.prepare(&format!("{name}-scratch"), &name, &CreateOptions::default())
                .unwrap();
        }
        if rng.below(4) == 0 {
            let top = chain.pop().unwrap();
            record(&mut log, &format!("removing {n} {top}"));
            // Its scratch child (if any) would keep it: unlink the child first.
            let _ = sn.remove(&format!("{top}-scratch"));
            sn.remove(&top).unwrap();
        }
        if chain.len() > 5 {
            chain.clear();
        }
        if rng.below(3) == 0 {
            md.collect().unwrap();
        }
    }
}

struct Expect {
    // (namespace index, name) to parent.
    committed: BTreeMap<(usize, String), String>,
    removing: HashSet<(usize, String)>,
}

fn read_log(path: &Path) -> Expect {
    let mut e = Expect {
        committed: BTreeMap::new(),
        removing: HashSet::new(),
    };
    for line in std::fs::read_to_string(path).unwrap_or_default().lines() {
        let parts: Vec<&str> = line.split(' ').collect();
        match parts.as_slice() {
            ["committed", n, name, rest @ ..] => {
                let parent = rest.first().copied().unwrap_or("");
                e.committed
                    .insert((n.parse().unwrap(), name.to_string()), parent.to_string());
            }
            ["removing", n, name] => {
                e.removing.insert((n.parse().unwrap(), name.to_string()));
            }
            // A line cut by the kill.
            _ => {}
        }
    }
    e
}

#[test]
fn a_kill_at_any_point_loses_nothing_reachable() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let log = tmp.path().join("log");
    let exe = std::env::current_exe().unwrap();
    let mut rng = Rng::seeded(7);
    for round in 0..ROUNDS {
        let mut child = Command::new(&exe)
            .args(["--exact", "crash_worker", "--nocapture", "--test-threads=1"])
            .env(ROOT_ENV, &root)
            .env(LOG_ENV, &log)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(150 + rng.below(400)));
        if let Ok(Some(st)) = child.try_wait() {
            let mut err = String::new();
            std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
            panic!("round {round}: the worker ended by itself ({st}): {err}");
        }
        child.kill().unwrap();
        child.wait().unwrap();

        let md = open(&root);
        md.check()
            .unwrap_or_else(|e| panic!("round {round}: after the kill: {e}"));
        let expect = read_log(&log);
        let spaces = [md.namespace("one").unwrap(), md.namespace("two").unwrap()];
        let mut intact = 0;
        for ((n, name), parent) in &expect.committed {
            match spaces[*n].stat(name) {
                Ok(st) => {
                    assert_eq!(st.kind, Kind::Committed, "round {round}: {name}");
                    assert_eq!(&st.parent, parent, "round {round}: parent of {name}");
                    intact += 1;
                }
                Err(e) => assert!(
                    expect.removing.contains(&(*n, name.clone())),
                    "round {round}: rooted snapshot {name} was lost: {e}"
                ),
            }
        }
        assert!(intact > 0 || expect.committed.is_empty(), "round {round}");
        md.collect()
            .unwrap_or_else(|e| panic!("round {round}: collection after the kill: {e}"));
        md.check().unwrap();
        let left = md.plan().unwrap();
        assert!(
            left.backend.is_empty() && left.records.is_empty(),
            "round {round}: garbage left after a collection: {left:?}"
        );
        md.close().unwrap();
    }
}
