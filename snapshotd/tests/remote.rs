//! The whole conformance suite through the daemon: a native backend served by
//! `snapshotd::server::serve` on a unix socket, driven through
//! [`snapshotd::client::RemoteSnapshotter`], the `Snapshotter` trait over gRPC. Every case
//! that passes in process must pass through the socket.

use std::path::Path;
use std::sync::{Arc, Mutex};

use snapshot_testsuite::{snapshotter_suite, Harness};
use snapshotd::client::RemoteSnapshotter;
use snapshots::{
    Backend, Cleaner, CommitOptions, CreateOptions, Info, Mount, Options, Result, Snapshotter,
    Usage,
};

/// A backend served on a socket, and the remote client of it.
type ServeTask = tokio::task::JoinHandle<std::result::Result<(), snapshotd::error::DaemonError>>;

struct Served {
    remote: RemoteSnapshotter,
    runtime: tokio::runtime::Runtime,
    // Taken by the first close.
    serving: Mutex<Option<(tokio::sync::oneshot::Sender<()>, ServeTask)>>,
    sn: Arc<dyn Snapshotter>,
    // The socket lives outside the root (the suite checks nothing is written beside it).
    socket_dir: tempfile::TempDir,
}

impl Served {
    fn start(root: &Path) -> Result<Served> {
        let runtime = tokio::runtime::Runtime::new().expect("a runtime");
        let sn: Arc<dyn Snapshotter> =
            Arc::from(snapshots::open(Backend::Native, root, &Options::default())?);
        let socket_dir = tempfile::tempdir().expect("a socket directory");
        let socket = socket_dir.path().join("sd.sock");
        let bound = snapshotd::server::bind(&socket).expect("bind the socket");
        let listener = bound.listener.try_clone().expect("listener");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = {
            let _guard = runtime.enter();
            runtime.spawn(snapshotd::server::serve(Arc::clone(&sn), listener, async {
                let _ = stopped.await;
            }))
        };
        let remote = RemoteSnapshotter::connect(&socket)?;
        Ok(Served {
            remote,
            runtime,
            serving: Mutex::new(Some((stop, task))),
            sn,
            socket_dir,
        })
    }

    fn shut(&self) -> Result<()> {
        let Some((stop, task)) = self.serving.lock().unwrap().take() else {
            return Ok(());
        };
        let _ = stop.send(());
        let _ = self.runtime.block_on(task);
        let _ = std::fs::remove_file(self.socket_dir.path().join("sd.sock"));
        self.sn.close()
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.shut();
    }
}

impl Snapshotter for Served {
    fn stat(&self, key: &str) -> Result<Info> {
        self.remote.stat(key)
    }
    fn update(&self, info: &Info, fieldpaths: &[String]) -> Result<Info> {
        self.remote.update(info, fieldpaths)
    }
    fn usage(&self, key: &str) -> Result<Usage> {
        self.remote.usage(key)
    }
    fn mounts(&self, key: &str) -> Result<Vec<Mount>> {
        self.remote.mounts(key)
    }
    fn prepare(&self, key: &str, parent: &str, opts: &CreateOptions) -> Result<Vec<Mount>> {
        self.remote.prepare(key, parent, opts)
    }
    fn view(&self, key: &str, parent: &str, opts: &CreateOptions) -> Result<Vec<Mount>> {
        self.remote.view(key, parent, opts)
    }
    fn commit(&self, name: &str, key: &str, opts: &CommitOptions) -> Result<()> {
        self.remote.commit(name, key, opts)
    }
    fn remove(&self, key: &str) -> Result<()> {
        self.remote.remove(key)
    }
    fn walk(&self, filters: &[String], f: &mut dyn FnMut(&Info) -> Result<()>) -> Result<()> {
        self.remote.walk(filters, f)
    }
    /// Stops serving and closes the backend, as a daemon's shutdown does: later calls
    /// find no server (Unavailable).
    fn close(&self) -> Result<()> {
        self.shut()
    }
    fn as_cleaner(&self) -> Option<&dyn Cleaner> {
        Some(&self.remote)
    }
}

struct ThroughDaemon;

impl Harness for ThroughDaemon {
    fn name(&self) -> &str {
        "native through snapshotd"
    }
    fn open(&self, root: &Path) -> Result<Box<dyn Snapshotter>> {
        Ok(Box::new(Served::start(root)?))
    }
}

snapshotter_suite!(through_daemon, ThroughDaemon);
