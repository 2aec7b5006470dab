//! Kill-restart with a model: the daemon serves four concurrent clients that prepare,
//! view, commit and remove on each other's layers through containerd's snapshots API, and
//! is killed with SIGKILL at a random moment, then restarted; again and again. A model of
//! every acknowledged call is checked against what the restarted daemon lists:
//!
//! - nothing acknowledged is lost and nothing acknowledged as removed comes back (a call
//!   in flight at the kill may have happened or not; the model learns which);
//! - no call between two valid calls ever ends with Unknown (races end as if ordered);
//! - at the end, the store passes its consistency check and cleanup leaves no staging or
//!   retired tree.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{privileged, wait_for, ChildGuard};
use snapshotd::client::{connect, Client};
use snapshotd::proto::snapshots as pb;
use tonic::Code;

const SNAPSHOTD: &str = env!("CARGO_BIN_EXE_snapshotd");
const ROUNDS: u64 = 10;
const CLIENTS: u64 = 4;

/// What the model knows of one key or name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Acknowledged to exist with this kind.
    Present(pb::Kind),
    /// Acknowledged gone (removed, committed away) or never made.
    Absent,
    /// A call on it was in flight at a kill: either.
    Uncertain,
}

#[derive(Default)]
struct Model {
    states: HashMap<String, State>,
    violations: Vec<String>,
    acknowledged: u64,
    refused: HashMap<String, u64>,
}

impl Model {
    fn committed(&self) -> Vec<String> {
        self.named(pb::Kind::Committed)
    }

    fn named(&self, kind: pb::Kind) -> Vec<String> {
        let mut v: Vec<String> = self
            .states
            .iter()
            .filter(|(_, s)| **s == State::Present(kind))
            .map(|(k, _)| k.clone())
            .collect();
        v.sort();
        v
    }
}

use snapshot_testsuite::rng::Rng;

enum Op {
    Prepare { key: String, parent: String },
    View { key: String, parent: String },
    Commit { name: String, key: String },
    Remove { key: String },
}

impl Op {
    /// The keys whose state the call changes when it succeeds.
    fn targets(&self) -> Vec<&str> {
        match self {
            Op::Prepare { key, .. } | Op::View { key, .. } | Op::Remove { key } => vec![key],
            Op::Commit { name, key } => vec![name, key],
        }
    }

    fn apply(&self, m: &mut Model) {
        let s = &mut m.states;
        match self {
            Op::Prepare { key, .. } => s.insert(key.clone(), State::Present(pb::Kind::Active)),
            Op::View { key, .. } => s.insert(key.clone(), State::Present(pb::Kind::View)),
            Op::Commit { name, key } => {
                s.insert(key.clone(), State::Absent);
                s.insert(name.clone(), State::Present(pb::Kind::Committed))
            }
            Op::Remove { key } => s.insert(key.clone(), State::Absent),
        };
    }

    async fn call(&self, c: &mut Client) -> Result<(), tonic::Status> {
        let sn = "snapshotd".to_string();
        match self {
            Op::Prepare { key, parent } => c
                .prepare(pb::PrepareSnapshotRequest {
                    snapshotter: sn,
                    key: key.clone(),
                    parent: parent.clone(),
                    labels: HashMap::new(),
                })
                .await
                .map(drop),
            Op::View { key, parent } => c
                .view(pb::ViewSnapshotRequest {
                    snapshotter: sn,
                    key: key.clone(),
                    parent: parent.clone(),
                    labels: HashMap::new(),
                })
                .await
                .map(drop),
            Op::Commit { name, key } => c
                .commit(pb::CommitSnapshotRequest {
                    snapshotter: sn,
                    name: name.clone(),
                    key: key.clone(),
                    ..Default::default()
                })
                .await
                .map(drop),
            Op::Remove { key } => c
                .remove(pb::RemoveSnapshotRequest {
                    snapshotter: sn,
                    key: key.clone(),
                })
                .await
                .map(drop),
        }
    }
}

/// One client: random calls until the daemon dies.
async fn client(
    socket: PathBuf,
    id: u64,
    round: u64,
    model: Arc<Mutex<Model>>,
    killed: Arc<AtomicBool>,
) {
    let Ok(mut c) = connect(&socket).await else {
        return;
    };
    let mut rng = Rng::seeded(id * 1000 + round);
    for n in 0.. {
        let fresh = format!("r{round}-c{id}-{n}");
        let op = {
            let m = model.lock().unwrap();
            let parent = rng.pick(&m.committed()).unwrap_or_default();
            match rng.below(10) {
                0..=3 => Op::Prepare { key: fresh, parent },
                4 => Op::View { key: fresh, parent },
                5..=7 => match rng.pick(&m.named(pb::Kind::Active)) {
                    Some(key) => Op::Commit {
                        name: format!("{fresh}-layer"),
                        key,
                    },
                    None => Op::Prepare { key: fresh, parent },
                },
                _ => {
                    let mut all = m.committed();
                    all.extend(m.named(pb::Kind::View));
                    all.extend(m.named(pb::Kind::Active));
                    match rng.pick(&all) {
                        Some(key) => Op::Remove { key },
                        None => Op::Prepare { key: fresh, parent },
                    }
                }
            }
        };
        let r = op.call(&mut c).await;
        let mut m = model.lock().unwrap();
        match r {
            // An answer, even one that crossed the kill, was sent after the store's commit.
            Ok(()) => {
                op.apply(&mut m);
                m.acknowledged += 1;
            }
            Err(_) if killed.load(Ordering::SeqCst) => {
                for t in op.targets() {
                    m.states.insert(t.to_string(), State::Uncertain);
                }
                return;
            }
            Err(s) => {
                if matches!(s.code(), Code::Unknown | Code::Internal | Code::DataLoss) {
                    m.violations.push(format!(
                        "round {round}, client {id}: {:?} from a call between valid calls: {}",
                        s.code(),
                        s.message()
                    ));
                }
                *m.refused.entry(format!("{:?}", s.code())).or_default() += 1;
            }
        }
        drop(m);
        if killed.load(Ordering::SeqCst) {
            return;
        }
    }
}

async fn listed(socket: &Path) -> HashMap<String, pb::Kind> {
    let mut c = connect(socket).await.expect("connect after the restart");
    let mut stream = c
        .list(pb::ListSnapshotsRequest {
            snapshotter: "snapshotd".into(),
            filters: vec![],
        })
        .await
        .expect("list")
        .into_inner();
    let mut out = HashMap::new();
    while let Some(msg) = stream.message().await.expect("list stream") {
        for i in msg.info {
            out.insert(i.name.clone(), i.kind());
        }
    }
    out
}

/// Checks the model against the restarted daemon and learns the uncertain keys.
fn reconcile(model: &mut Model, seen: &HashMap<String, pb::Kind>, round: u64) {
    for (key, state) in model.states.iter_mut() {
        let now = seen.get(key).copied();
        match (*state, now) {
            (State::Present(k), Some(n)) if k == n => {}
            (State::Absent, None) => {}
            (State::Uncertain, n) => *state = n.map_or(State::Absent, State::Present),
            (want, got) => model.violations.push(format!(
                "after kill {round}: {key:?} should be {want:?}, the daemon has {got:?}"
            )),
        }
    }
    for key in seen.keys() {
        if !model.states.contains_key(key) {
            model
                .violations
                .push(format!("after kill {round}: {key:?} was never made"));
        }
    }
}

fn start(backend: &str, root: &Path, socket: &Path, log: &Path) -> ChildGuard {
    let _ = std::fs::remove_file(socket);
    let child = Command::new(SNAPSHOTD)
        .args(["--backend", backend, "--log-level", "info"])
        .arg("--root")
        .arg(root)
        .arg("--address")
        .arg(socket)
        .arg("--config")
        .arg(root.with_extension("toml"))
        .stdin(Stdio::null())
        .stderr(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
                .unwrap(),
        )
        .env_remove("NOTIFY_SOCKET")
        .spawn()
        .unwrap();
    let guard = ChildGuard::new(child);
    assert!(
        wait_for(socket, Duration::from_secs(20)),
        "snapshotd did not come up; log:\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
    guard
}

/// The kill-restart loop on `backend` with its root under `base`; returns the model.
fn kill_restart(backend: &str, base: &Path) -> Model {
    let dir = tempfile::Builder::new()
        .prefix("killrestart-")
        .tempdir_in(base)
        .unwrap();
    let root = dir.path().join("root");
    std::fs::write(root.with_extension("toml"), "").unwrap();
    let socket = dir.path().join("sd.sock");
    let log = dir.path().join("snapshotd.log");
    let model = Arc::new(Mutex::new(Model::default()));
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut rng = Rng::seeded(7);
    for round in 0..ROUNDS {
        let mut daemon = start(backend, &root, &socket, &log);
        let seen = runtime.block_on(listed(&socket));
        reconcile(&mut model.lock().unwrap(), &seen, round);
        let killed = Arc::new(AtomicBool::new(false));
        let tasks: Vec<_> = (0..CLIENTS)
            .map(|id| {
                runtime.spawn(client(
                    socket.clone(),
                    id,
                    round,
                    Arc::clone(&model),
                    Arc::clone(&killed),
                ))
            })
            .collect();
        std::thread::sleep(Duration::from_millis(150 + rng.below(600)));
        killed.store(true, Ordering::SeqCst);
        daemon
            .signal_and_wait(rustix::process::Signal::KILL, Duration::from_secs(10))
            .expect("snapshotd did not die of SIGKILL");
        for t in tasks {
            runtime.block_on(t).unwrap();
        }
    }
    // The last restart: check, then stop cleanly.
    let mut daemon = start(backend, &root, &socket, &log);
    let seen = runtime.block_on(listed(&socket));
    reconcile(&mut model.lock().unwrap(), &seen, ROUNDS);
    let st = daemon
        .signal_and_wait(rustix::process::Signal::TERM, Duration::from_secs(30))
        .expect("snapshotd did not stop on SIGTERM");
    assert!(st.success(), "snapshotd exited with {st}");
    let model = std::mem::take(&mut *model.lock().unwrap());
    check_store(backend, &root, seen.len());
    model
}

/// Opens the root in-process: the store's invariants hold, every snapshot has its tree,
/// and after cleanup no staging or retired tree is left.
fn check_store(backend: &str, root: &Path, snapshots: usize) {
    let sn = snapshots::open(
        backend.parse().unwrap(),
        root,
        &snapshots::Options::default(),
    )
    .unwrap_or_else(|e| panic!("opening {backend} at {}: {e}", root.display()));
    sn.as_cleaner().expect("a cleaner").cleanup().unwrap();
    let mut n = 0;
    sn.walk(&[], &mut |_| {
        n += 1;
        Ok(())
    })
    .unwrap();
    assert_eq!(n, snapshots);
    sn.close().unwrap();
    let n = match backend {
        "native" => snapshots::snapshot_native::NativeSnapshotter::open(root, Default::default())
            .unwrap()
            .store()
            .check()
            .unwrap(),
        "overlay" => {
            snapshots::snapshot_overlay::OverlaySnapshotter::open(root, Default::default())
                .unwrap()
                .check()
                .unwrap()
        }
        #[cfg(feature = "btrfs")]
        "btrfs" => snapshots::snapshot_btrfs::BtrfsSnapshotter::open(root)
            .unwrap()
            .store()
            .check()
            .unwrap(),
        other => panic!("no check for {other}"),
    };
    assert_eq!(n, snapshots);
    for dir in ["snapshots", "active", "view"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir)) else {
            continue;
        };
        for e in entries {
            let name = e.unwrap().file_name().into_string().unwrap();
            assert!(
                name.parse::<u64>().is_ok(),
                "{backend}: {dir}/{name} left after cleanup"
            );
        }
    }
}

fn report(backend: &str, m: &Model, t: Instant) {
    println!(
        "{backend}: {ROUNDS} kills, {} calls acknowledged, refusals {:?}, {} keys known, {:?}",
        m.acknowledged,
        m.refused,
        m.states.len(),
        t.elapsed()
    );
    assert!(
        m.violations.is_empty(),
        "{backend}: {} violations:\n{}",
        m.violations.len(),
        m.violations.join("\n")
    );
    assert!(m.acknowledged > ROUNDS * 10, "the clients did little");
}

#[test]
fn kill_restart_with_four_clients_on_native() {
    if privileged("kill_restart_with_four_clients_on_native") {
        let t = Instant::now();
        let m = kill_restart("native", &std::env::temp_dir());
        report("native", &m, t);
    }
}

#[test]
fn kill_restart_with_four_clients_on_overlay() {
    if privileged("kill_restart_with_four_clients_on_overlay") {
        let t = Instant::now();
        let m = kill_restart("overlay", &std::env::temp_dir());
        report("overlay", &m, t);
    }
}

/// On the btrfs filesystem `SNAPSHOT_BTRFS_MOUNT` names (`cargo xtask test-btrfs` runs it).
#[cfg(feature = "btrfs")]
#[test]
fn kill_restart_with_four_clients_on_btrfs() {
    if privileged("kill_restart_with_four_clients_on_btrfs") {
        let mount = std::env::var_os("SNAPSHOT_BTRFS_MOUNT")
            .expect("SNAPSHOT_BTRFS_MOUNT must name a mounted btrfs filesystem for the btrfs run");
        let t = Instant::now();
        let m = kill_restart("btrfs", Path::new(&mount));
        report("btrfs", &m, t);
    }
}
