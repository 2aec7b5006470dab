//! The socket, the choice of backend, and the serving loop with a clean shutdown.

use crate::service::Target;
use std::future::Future;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use snapshots::{Backend, Cleaner, CommitOptions, CreateOptions, Info, Mount, Snapshotter, Usage};
use tokio_stream::wrappers::UnixListenerStream;

use crate::client::RemoteSnapshotter;
use crate::config::{BackendOptions, Config};
use crate::error::DaemonError;
use crate::notify::notify_or_log;
use crate::service::SnapshotService;

/// The socket's mode: the owner and its group (containerd runs as root) may connect.
pub const SOCKET_MODE: u32 = 0o660;

/// How long a shutdown waits for calls in flight before closing the store anyway.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// A bound socket, and what identifies the file so that only our own socket is removed.
pub struct BoundSocket {
    /// The listener, non-blocking, ready for tokio.
    pub listener: std::os::unix::net::UnixListener,
    path: PathBuf,
    dev_ino: (u64, u64),
}

impl BoundSocket {
    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Removes the socket file if it is still the one this process bound (a successor
    /// may have replaced it).
    pub fn remove(&self) {
        match std::fs::symlink_metadata(&self.path) {
            Ok(m) if (m.dev(), m.ino()) == self.dev_ino => {
                if let Err(e) = std::fs::remove_file(&self.path) {
                    log::warn!("removing socket {}: {e}", self.path.display());
                }
            }
            _ => {}
        }
    }
}

/// Binds the unix socket `path` with mode 0660, creating its directory (0711) if needed.
///
/// A stale socket (a file nobody listens on, left by a crashed daemon) is replaced; a
/// live one (another daemon answers) is refused, and so is a path that is not a socket.
///
/// # Errors
/// A message naming the path and saying what to do.
pub fn bind(path: &Path) -> Result<BoundSocket, DaemonError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            std::fs::create_dir_all(dir)
                .map_err(|e| DaemonError::io("creating socket directory", dir, e))?;
            let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711));
        }
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => {
                return Err(DaemonError::Socket {
                    path: path.to_path_buf(),
                    problem: "is in use by a running daemon: stop it first or pick another \
                              --address",
                })
            }
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                log::info!("replacing stale socket {}", path.display());
                std::fs::remove_file(path)
                    .map_err(|e| DaemonError::io("removing stale socket", path, e))?;
            }
            Err(e) => {
                return Err(DaemonError::io(
                    "probing (remove it if no daemon uses it) socket",
                    path,
                    e,
                ))
            }
        },
        Ok(_) => {
            return Err(DaemonError::Socket {
                path: path.to_path_buf(),
                problem: "exists and is not a socket: remove it or pick another --address",
            })
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(DaemonError::io("checking socket path", path, e)),
    }
    // Bound and listening under a temporary name, then renamed into place: a client that
    // finds the path can connect (bind alone makes the file before listen accepts).
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = path.with_file_name(format!(".{name}.{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let listener = std::os::unix::net::UnixListener::bind(&tmp)
        .map_err(|e| DaemonError::io("binding socket", path, e))?;
    let placed = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(SOCKET_MODE))
        .map_err(|e| DaemonError::io("setting mode 0660 on socket", path, e))
        .and_then(|()| {
            std::fs::rename(&tmp, path).map_err(|e| DaemonError::io("placing socket", path, e))
        });
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    listener
        .set_nonblocking(true)
        .map_err(|e| DaemonError::io("setting non-blocking mode on socket", path, e))?;
    let m =
        std::fs::symlink_metadata(path).map_err(|e| DaemonError::io("checking socket", path, e))?;
    Ok(BoundSocket {
        listener,
        path: path.to_owned(),
        dev_ino: (m.dev(), m.ino()),
    })
}

/// How long a shutdown lets connections finish after open List streams were ended; then
/// the server drops them, whatever their clients do.
pub const STREAM_GRACE: Duration = Duration::from_secs(5);

/// Serves the snapshots service over `sn` on `listener` until `shutdown` completes, then
/// stops accepting, ends open List streams (Unavailable), lets the calls in flight finish
/// for up to [`STREAM_GRACE`] and returns. Blocking backend calls still running are the
/// caller's to wait for (they hold `sn`).
///
/// Must be called inside a tokio runtime.
///
/// # Errors
/// The transport error when serving fails.
pub async fn serve(
    target: impl Into<Target>,
    listener: std::os::unix::net::UnixListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), DaemonError> {
    serve_with(target, listener, shutdown, None).await
}

/// [`serve`], counting every call in `metrics`.
///
/// # Errors
/// As [`serve`].
pub async fn serve_with(
    target: impl Into<Target>,
    listener: std::os::unix::net::UnixListener,
    shutdown: impl Future<Output = ()> + Send,
    metrics: Option<Arc<crate::metrics::Metrics>>,
) -> Result<(), DaemonError> {
    let target: Target = target.into();
    let listener =
        tokio::net::UnixListener::from_std(listener).map_err(|source| DaemonError::Runtime {
            what: "registering the socket with tokio",
            source,
        })?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (stopped_tx, stopped_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tonic::transport::Server::builder()
        .add_service(
            SnapshotService::with_stop(target.clone(), stop_rx)
                .with_metrics(metrics.clone())
                .into_server(),
        )
        .add_service(crate::service::CollectorService::new(target.clone()).into_server())
        .add_service(
            crate::service::CheckerService::new(target)
                .with_metrics(metrics)
                .into_server(),
        )
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), async move {
            shutdown.await;
            let _ = stop_tx.send(true);
            let _ = stopped_tx.send(());
        });
    tokio::pin!(server);
    let deadline = async {
        if stopped_rx.await.is_err() {
            std::future::pending::<()>().await;
        }
        tokio::time::sleep(STREAM_GRACE).await;
    };
    tokio::select! {
        r = &mut server => r.map_err(DaemonError::Serve),
        () = deadline => {
            log::warn!("connections still open {STREAM_GRACE:?} after the shutdown began: dropping them");
            Ok(())
        }
    }
}

/// The backend to run: the configured one, else [`snapshots::detect`]'s choice (the one
/// the root holds; for a new root overlay where it mounts, else native). The choice, its
/// reason and the backend's capabilities (for containerd's proxy-plugin configuration) are
/// logged.
pub fn choose_backend(configured: Option<Backend>, root: &Path) -> Backend {
    let backend = match configured {
        Some(b) => {
            log::info!("backend {b} (configured)");
            b
        }
        None => {
            let d = snapshots::detect(root);
            log::info!("backend {} (detected: {})", d.backend, d.reason);
            d.backend
        }
    };
    let caps = backend.capabilities();
    log::info!(
        "capabilities of {backend}: [{}] (containerd 2.x: capabilities = [{}] in its \
         [proxy_plugins] entry; snapshotd --print-containerd-config 2 prints the entry)",
        caps.join(", "),
        caps.iter()
            .map(|c| format!("{c:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    backend
}

/// Runs the daemon with `config` until SIGTERM or SIGINT: opens the backend, binds the
/// socket, reports readiness to systemd, serves, and on a signal stops accepting, lets
/// the calls in flight finish, closes the store and removes the socket.
///
/// # Errors
/// A message saying what failed (backend, socket, runtime); the socket is removed and
/// the store closed on every path that opened them.
pub fn run(config: Config) -> Result<(), DaemonError> {
    raise_open_file_limit();
    let mut backend = choose_backend(config.backend, &config.root);
    let options = config.options.to_options();
    let opened = match snapshots::open(backend, &config.root, &options) {
        // A detected overlay that still cannot open (say, a filesystem without d_type)
        // falls back to native, which works anywhere; a configured one is an error.
        Err(e) if config.backend.is_none() && backend == Backend::Overlay => {
            log::warn!(
                "overlay does not open at {}: {e}; using native",
                config.root.display()
            );
            backend = Backend::Native;
            snapshots::open(backend, &config.root, &options)
        }
        other => other,
    };
    warn_unused_options(backend, &config.options);
    let sn: Arc<dyn Snapshotter> = Arc::from(opened.map_err(|source| DaemonError::Open {
        backend,
        root: config.root.clone(),
        source,
    })?);
    let result = if config.namespaced {
        serve_namespaced(&sn, &config, backend)
    } else {
        let metrics = metrics_of(&config, &sn, None);
        serve_until_signal(
            Target::Plain(Arc::clone(&sn)),
            &config.address,
            backend,
            &config.root,
            metrics,
        )
    };
    drain(&sn);
    if let Err(e) = sn.close() {
        log::error!(
            "closing the snapshot store at {}: {e}",
            config.root.display()
        );
    }
    log::info!("stopped");
    result
}

/// Raises the soft limit on open files to the hard one, as containerd does: every client
/// connection and every walk of a tree (Usage, a removal) holds descriptors, and the usual
/// soft limit of 1024 is reached by a few hundred clients.
fn raise_open_file_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let lim = getrlimit(Resource::Nofile);
    if lim.current == lim.maximum {
        return;
    }
    let raised = Rlimit {
        current: lim.maximum,
        maximum: lim.maximum,
    };
    match setrlimit(Resource::Nofile, raised) {
        Ok(()) => log::debug!("open file limit raised to {:?}", lim.maximum),
        Err(e) => log::warn!(
            "cannot raise the open file limit from {:?}: {e}",
            lim.current
        ),
    }
}

/// Warns about options that do nothing for the chosen backend.
fn warn_unused_options(backend: Backend, opts: &BackendOptions) {
    let overlay_only = opts.sync_remove
        || opts.upperdir_label
        || opts.redirect_dir
        || !opts.mount_options.is_empty();
    if backend != Backend::Overlay && overlay_only {
        log::warn!("overlay options are set but the backend is {backend}: they are ignored");
    }
}

/// Serves the namespaced metadata layer (`<root>/namespaces`) over `sn`, with collections
/// in the background on containerd's default policy.
fn serve_namespaced(
    sn: &Arc<dyn Snapshotter>,
    config: &Config,
    backend: Backend,
) -> Result<(), DaemonError> {
    use snapshots::metadata::{Metadata, MetadataOptions, Scheduler};
    let dir = config.root.join("namespaces");
    let opened = Metadata::open(
        &dir,
        Arc::clone(sn),
        &MetadataOptions {
            snapshotter: backend.containerd_name().into(),
            ..MetadataOptions::default()
        },
    )
    .and_then(|md| Ok((Scheduler::start(Arc::clone(&md), config.gc.clone())?, md)));
    let (scheduler, md) = opened.map_err(|source| DaemonError::Open {
        backend,
        root: dir.clone(),
        source,
    })?;
    log::info!(
        "namespaced: metadata at {}, garbage collected in the background",
        dir.display()
    );
    let scheduler = Arc::new(scheduler);
    let stats = Arc::downgrade(&scheduler);
    let metrics = metrics_of(
        config,
        sn,
        Some(Arc::new(move || {
            stats.upgrade().map(|s| s.stats()).unwrap_or_default()
        })),
    );
    let result = serve_until_signal(
        Target::Namespaced(Arc::clone(&md)),
        &config.address,
        backend,
        &config.root,
        metrics,
    );
    drop(scheduler);
    drain(&md);
    result
}

/// What `--metrics-address` asks for: where, and what a scrape reads (the backend `sn`,
/// every namespace's snapshots, and the collector's totals).
type MetricsSetup = Option<(crate::metrics::MetricsAddress, crate::metrics::Scrape)>;

fn metrics_of(
    config: &Config,
    sn: &Arc<dyn Snapshotter>,
    gc: Option<Arc<dyn Fn() -> snapshots::metadata::GcStats + Send + Sync>>,
) -> MetricsSetup {
    let addr = config.metrics_address.clone()?;
    Some((
        addr,
        crate::metrics::Scrape {
            metrics: Arc::new(crate::metrics::Metrics::new()),
            snapshotter: Arc::clone(sn),
            root: Some(config.root.clone()),
            gc,
        },
    ))
}

fn serve_until_signal(
    target: Target,
    address: &Path,
    backend: Backend,
    root: &Path,
    metrics: MetricsSetup,
) -> Result<(), DaemonError> {
    let socket = bind(address)?;
    let runtime = runtime().map_err(|source| DaemonError::Runtime {
        what: "starting the async runtime",
        source,
    });
    let runtime = match runtime {
        Ok(r) => r,
        Err(e) => {
            socket.remove();
            return Err(e);
        }
    };
    let listener = match socket.listener.try_clone() {
        Ok(l) => l,
        Err(e) => {
            socket.remove();
            return Err(DaemonError::io(
                "duplicating the listener of socket",
                address,
                e,
            ));
        }
    };
    let (metrics_stop, metrics_stopped) = tokio::sync::watch::channel(false);
    let mut metrics_path = None;
    let result = runtime.block_on(async {
        let shutdown = shutdown_signal()?;
        let counters = match metrics {
            Some((addr, scrape)) => {
                let listener = crate::metrics::bind(&addr)?;
                if let crate::metrics::MetricsAddress::Unix(p) = &addr {
                    metrics_path = Some(p.clone());
                }
                log::info!("metrics at http://{addr}/metrics");
                let counters = Arc::clone(&scrape.metrics);
                tokio::spawn(crate::metrics::serve(listener, scrape, metrics_stopped));
                Some(counters)
            }
            None => None,
        };
        log::info!(
            "serving the {backend} snapshotter at {} on {}",
            root.display(),
            address.display()
        );
        notify_or_log("READY=1");
        serve_with(
            target,
            listener,
            async move {
                shutdown.await;
                log::info!("shutting down: finishing the calls in flight");
                notify_or_log("STOPPING=1");
            },
            counters,
        )
        .await
    });
    let _ = metrics_stop.send(true);
    socket.remove();
    if let Some(p) = metrics_path {
        let _ = std::fs::remove_file(p);
    }
    // Blocking calls of clients that went away may still run; they hold the snapshotter
    // and are waited for in `drain`.
    runtime.shutdown_timeout(Duration::from_secs(1));
    result
}

/// The daemon's runtime: one thread for the connections and the cheap calls (Stat, List
/// batches), the blocking pool for the calls that do I/O. A unary call then never crosses
/// between async workers (the wake-ups cost more than a Stat: 10 to 20 µs a call measured
/// with containerd's client), and two cores are left to the blocking pool and the kernel.
fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

/// A future that completes at the first SIGTERM or SIGINT.
fn shutdown_signal() -> Result<impl Future<Output = ()>, DaemonError> {
    use tokio::signal::unix::{signal, SignalKind};
    let handler = |what| move |source| DaemonError::Runtime { what, source };
    let mut term = signal(SignalKind::terminate()).map_err(handler("SIGTERM handler"))?;
    let mut int = signal(SignalKind::interrupt()).map_err(handler("SIGINT handler"))?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => log::info!("SIGTERM received"),
            _ = int.recv() => log::info!("SIGINT received"),
        }
    })
}

/// Waits until no backend call holds the snapshotter any more (each call holds a clone
/// of the `Arc`), so closing the store never cuts an operation in half.
fn drain<T: ?Sized>(sn: &Arc<T>) {
    let start = Instant::now();
    while Arc::strong_count(sn) > 1 {
        if start.elapsed() > DRAIN_TIMEOUT {
            log::warn!(
                "{} backend calls still running after {DRAIN_TIMEOUT:?}: closing the store anyway",
                Arc::strong_count(sn) - 1
            );
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

type ServeTask = std::thread::JoinHandle<()>;

/// A snapshotter served on a unix socket (in a temporary directory) by the daemon's
/// runtime on a thread of its own, with a [`RemoteSnapshotter`] connected to it: every call goes through the socket
/// and the daemon's service, as containerd's would. Close (or drop) stops serving and
/// closes the backend. For tests and the benchmark's daemon column.
pub struct Background {
    remote: RemoteSnapshotter,
    // Taken by the first close.
    serving: Mutex<Option<(tokio::sync::oneshot::Sender<()>, ServeTask)>>,
    sn: Arc<dyn Snapshotter>,
    // The socket lives outside the root (the suite checks nothing is written beside it).
    socket_dir: tempfile::TempDir,
}

impl Background {
    /// Serves `sn` and connects to it.
    ///
    /// # Errors
    /// Unknown when the runtime, the socket or the connection cannot be made.
    pub fn serve(sn: Box<dyn Snapshotter>) -> snapshots::Result<Background> {
        let sn: Arc<dyn Snapshotter> = Arc::from(sn);
        Self::start(Target::Plain(Arc::clone(&sn)), None, sn, false)
    }

    /// [`serve`](Self::serve), with the daemon's metrics counted and served over HTTP at
    /// `/metrics` on [`metrics_socket`](Self::metrics_socket), as `snapshotd
    /// --metrics-address` serves them.
    ///
    /// # Errors
    /// As [`serve`](Self::serve).
    pub fn serve_with_metrics(sn: Box<dyn Snapshotter>) -> snapshots::Result<Background> {
        let sn: Arc<dyn Snapshotter> = Arc::from(sn);
        Self::start(Target::Plain(Arc::clone(&sn)), None, sn, true)
    }

    /// The unix socket serving `/metrics`, for [`serve_with_metrics`](Self::serve_with_metrics).
    pub fn metrics_socket(&self) -> Option<std::path::PathBuf> {
        let p = self.socket_dir.path().join("metrics.sock");
        p.exists().then_some(p)
    }

    /// Serves the namespaced metadata layer `md` (as `snapshotd --namespaced` does) and
    /// connects to it with every call in namespace `ns`. Close closes `md`.
    ///
    /// # Errors
    /// As [`serve`](Self::serve); InvalidArgument for a namespace that is no header value.
    pub fn serve_namespaced(
        md: Arc<snapshots::metadata::Metadata>,
        ns: &str,
    ) -> snapshots::Result<Background> {
        let closer: Arc<dyn Snapshotter> = Arc::new(md.namespace("default")?);
        Self::start(Target::Namespaced(md), Some(ns), closer, false)
    }

    fn start(
        target: Target,
        ns: Option<&str>,
        sn: Arc<dyn Snapshotter>,
        with_metrics: bool,
    ) -> snapshots::Result<Background> {
        let unknown = |what: &str, e: &dyn std::fmt::Display| {
            snapshots::Error::unknown(format!("serving in the background: {what}: {e}"))
        };
        let runtime = runtime().map_err(|e| unknown("runtime", &e))?;
        let socket_dir = tempfile::tempdir().map_err(|e| unknown("socket directory", &e))?;
        let socket = socket_dir.path().join("sd.sock");
        let bound = bind(&socket).map_err(|e| unknown("socket", &e))?;
        let listener = bound
            .listener
            .try_clone()
            .map_err(|e| unknown("socket", &e))?;
        let metrics = match with_metrics {
            true => {
                let addr =
                    crate::metrics::MetricsAddress::Unix(socket_dir.path().join("metrics.sock"));
                let scrape = crate::metrics::Scrape {
                    metrics: Arc::new(crate::metrics::Metrics::new()),
                    snapshotter: Arc::clone(&sn),
                    root: None,
                    gc: None,
                };
                let listener = {
                    let _guard = runtime.enter();
                    crate::metrics::bind(&addr).map_err(|e| unknown("metrics socket", &e))?
                };
                Some((listener, scrape))
            }
            false => None,
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = std::thread::Builder::new()
            .name("snapshotd-background".into())
            .spawn(move || {
                let (metrics_stop, metrics_stopped) = tokio::sync::watch::channel(false);
                let counters = metrics.map(|(listener, scrape)| {
                    let counters = Arc::clone(&scrape.metrics);
                    runtime.spawn(crate::metrics::serve(listener, scrape, metrics_stopped));
                    counters
                });
                let r = runtime.block_on(serve_with(
                    target,
                    listener,
                    async {
                        let _ = stopped.await;
                    },
                    counters,
                ));
                let _ = metrics_stop.send(true);
                if let Err(e) = r {
                    log::error!("serving in the background: {e}");
                }
            })
            .map_err(|e| unknown("thread", &e))?;
        let remote = RemoteSnapshotter::connect_in(&socket, ns)?;
        Ok(Background {
            remote,
            serving: Mutex::new(Some((stop, task))),
            sn,
            socket_dir,
        })
    }

    /// The socket it serves on.
    pub fn socket(&self) -> std::path::PathBuf {
        self.socket_dir.path().join("sd.sock")
    }

    fn shut(&self) -> snapshots::Result<()> {
        let Some((stop, task)) = self
            .serving
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        else {
            return Ok(());
        };
        let _ = stop.send(());
        let _ = task.join();
        let _ = std::fs::remove_file(self.socket_dir.path().join("sd.sock"));
        self.sn.close()
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.shut();
    }
}

impl Snapshotter for Background {
    fn stat(&self, key: &str) -> snapshots::Result<Info> {
        self.remote.stat(key)
    }
    fn update(&self, info: &Info, fieldpaths: &[String]) -> snapshots::Result<Info> {
        self.remote.update(info, fieldpaths)
    }
    fn usage(&self, key: &str) -> snapshots::Result<Usage> {
        self.remote.usage(key)
    }
    fn mounts(&self, key: &str) -> snapshots::Result<Vec<Mount>> {
        self.remote.mounts(key)
    }
    fn prepare(
        &self,
        key: &str,
        parent: &str,
        opts: &CreateOptions,
    ) -> snapshots::Result<Vec<Mount>> {
        self.remote.prepare(key, parent, opts)
    }
    fn view(&self, key: &str, parent: &str, opts: &CreateOptions) -> snapshots::Result<Vec<Mount>> {
        self.remote.view(key, parent, opts)
    }
    fn commit(&self, name: &str, key: &str, opts: &CommitOptions) -> snapshots::Result<()> {
        self.remote.commit(name, key, opts)
    }
    fn remove(&self, key: &str) -> snapshots::Result<()> {
        self.remote.remove(key)
    }
    fn walk(
        &self,
        filters: &[String],
        f: &mut dyn FnMut(&Info) -> snapshots::Result<()>,
    ) -> snapshots::Result<()> {
        self.remote.walk(filters, f)
    }
    /// Stops serving and closes the backend, as a daemon's shutdown does: later calls
    /// find no server (Unavailable).
    fn close(&self) -> snapshots::Result<()> {
        self.shut()
    }
    fn as_cleaner(&self) -> Option<&dyn Cleaner> {
        Some(&self.remote)
    }
}
