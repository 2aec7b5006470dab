//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use snapshotd::client::{connect, Client};
use snapshots::{
    Backend, Cleaner, CommitOptions, CreateOptions, Info, Mount, Options, Result, Snapshotter,
    Usage,
};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The workspace's one privileged gate (the suite's): true when privileged tests must
/// run; prints the skip line otherwise.
pub fn privileged(test: &str) -> bool {
    snapshot_testsuite::privileged::require_privileged(test)
}

/// A snapshotter that hides its backend's cleaner: Cleanup must be Unimplemented.
pub struct NoCleanup(pub Box<dyn Snapshotter>);

impl Snapshotter for NoCleanup {
    fn stat(&self, key: &str) -> Result<Info> {
        self.0.stat(key)
    }
    fn update(&self, info: &Info, fieldpaths: &[String]) -> Result<Info> {
        self.0.update(info, fieldpaths)
    }
    fn usage(&self, key: &str) -> Result<Usage> {
        self.0.usage(key)
    }
    fn mounts(&self, key: &str) -> Result<Vec<Mount>> {
        self.0.mounts(key)
    }
    fn prepare(&self, key: &str, parent: &str, opts: &CreateOptions) -> Result<Vec<Mount>> {
        self.0.prepare(key, parent, opts)
    }
    fn view(&self, key: &str, parent: &str, opts: &CreateOptions) -> Result<Vec<Mount>> {
        self.0.view(key, parent, opts)
    }
    fn commit(&self, name: &str, key: &str, opts: &CommitOptions) -> Result<()> {
        self.0.commit(name, key, opts)
    }
    fn remove(&self, key: &str) -> Result<()> {
        self.0.remove(key)
    }
    fn walk(&self, filters: &[String], f: &mut dyn FnMut(&Info) -> Result<()>) -> Result<()> {
        self.0.walk(filters, f)
    }
    fn close(&self) -> Result<()> {
        self.0.close()
    }
    fn as_cleaner(&self) -> Option<&dyn Cleaner> {
        None
    }
}

/// A service over a native snapshotter in a temp dir, served on a temp socket by a task
/// of the test's runtime. Dropping it stops the server.
pub struct TestServer {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub sn: Arc<dyn Snapshotter>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::result::Result<(), snapshotd::error::DaemonError>>>,
}

impl TestServer {
    /// Native backend.
    pub async fn native() -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let sn = snapshots::open(
            Backend::Native,
            &dir.path().join("root"),
            &Options::default(),
        )
        .unwrap();
        TestServer::with(dir, Arc::from(sn)).await
    }

    /// Native backend with its cleaner hidden.
    pub async fn without_cleaner() -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let sn = snapshots::open(
            Backend::Native,
            &dir.path().join("root"),
            &Options::default(),
        )
        .unwrap();
        TestServer::with(dir, Arc::new(NoCleanup(sn))).await
    }

    pub async fn with(dir: tempfile::TempDir, sn: Arc<dyn Snapshotter>) -> TestServer {
        let socket = dir.path().join("snapshotd.sock");
        let bound = snapshotd::server::bind(&socket).unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let listener = bound.listener.try_clone().unwrap();
        let task = tokio::spawn(snapshotd::server::serve(Arc::clone(&sn), listener, async {
            let _ = stopped.await;
        }));
        TestServer {
            dir,
            socket,
            sn,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub async fn client(&self) -> Client {
        connect(&self.socket).await.unwrap()
    }

    /// Stops serving and waits for the server task.
    pub async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap().unwrap();
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Waits until `path` exists, up to `timeout`.
pub fn wait_for(path: &Path, timeout: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if path.exists() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// A child process killed (SIGKILL) and reaped on drop unless it has exited.
pub struct ChildGuard(pub Option<std::process::Child>);

impl ChildGuard {
    pub fn new(child: std::process::Child) -> ChildGuard {
        ChildGuard(Some(child))
    }

    pub fn pid(&self) -> i32 {
        self.0.as_ref().unwrap().id() as i32
    }

    /// Sends `sig` and waits for the exit, up to `timeout`; the exit status.
    pub fn signal_and_wait(
        &mut self,
        sig: rustix::process::Signal,
        timeout: Duration,
    ) -> Option<std::process::ExitStatus> {
        let child = self.0.as_mut()?;
        let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
        let _ = rustix::process::kill_process(pid, sig);
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Ok(Some(st)) = child.try_wait() {
                self.0 = None;
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
