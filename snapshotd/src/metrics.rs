//! Prometheus metrics: `snapshotd --metrics-address ADDR` serves them over HTTP at
//! `/metrics` (a unix socket path, or `IP:PORT` such as `127.0.0.1:9101`); off by default.
//!
//! What is exported (OpenMetrics text, which Prometheus scrapes):
//! - `snapshotd_operations_total{op}`: calls of each snapshots API method served;
//! - `snapshotd_operation_errors_total{op,kind}`: those that failed, by containerd error
//!   kind (`not_found`, `already_exists`, `failed_precondition`, `invalid_argument`,
//!   `not_implemented`, `unavailable`, `unknown`, …);
//! - `snapshotd_operation_duration_seconds{op}`: their latency, as a histogram (List: until
//!   its stream is set up);
//! - `snapshotd_snapshots{kind}`: snapshots by kind (`active`, `view`, `committed`), read
//!   at each scrape (one walk of the backend);
//! - `snapshotd_committed_bytes` / `snapshotd_committed_inodes`: the usage committed
//!   layers recorded at their commit, summed at each scrape;
//! - `snapshotd_filesystem_used_bytes` / `snapshotd_filesystem_used_inodes`: what is in use
//!   on the root's filesystem (`statvfs`);
//! - `snapshotd_fsck_runs_total` and `snapshotd_fsck_findings{kind}`: audits run
//!   (`snapshotctl fsck`) and the findings the latest one left, by kind;
//! - with `--namespaced`: `snapshotd_gc_collections_total`,
//!   `snapshotd_gc_pause_seconds_total` (time collections held the metadata transaction),
//!   `snapshotd_gc_removed_total{what="records"|"snapshots"}`.
//!
//! A scrape's walk reads every snapshot's record once (about 1 µs each); nothing else is
//! computed per scrape, so no file of a snapshot is walked.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use snapshots::{Kind, Snapshotter};

/// Where the metrics are served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetricsAddress {
    /// A unix socket path (absolute, or holding a `/`).
    Unix(PathBuf),
    /// A TCP address.
    Tcp(SocketAddr),
}

impl MetricsAddress {
    /// `IP:PORT`, or a path (anything with a `/`).
    ///
    /// # Errors
    /// A message naming the value and the two forms.
    pub fn parse(s: &str) -> Result<MetricsAddress, String> {
        if s.contains('/') {
            return Ok(MetricsAddress::Unix(PathBuf::from(s)));
        }
        s.parse::<SocketAddr>()
            .map(MetricsAddress::Tcp)
            .map_err(|_| {
                format!(
                    "metrics address {s:?} is neither a unix socket path (with a '/') nor \
                 IP:PORT: give e.g. /run/snapshotd/metrics.sock or 127.0.0.1:9101"
                )
            })
    }
}

impl fmt::Display for MetricsAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MetricsAddress::Unix(p) => write!(f, "{}", p.display()),
            MetricsAddress::Tcp(a) => write!(f, "{a}"),
        }
    }
}

/// The snapshots API methods.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types, missing_docs)]
pub enum Op {
    prepare,
    view,
    mounts,
    commit,
    remove,
    stat,
    update,
    list,
    usage,
    cleanup,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabel {
    op: Op,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    op: Op,
    kind: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WhatLabel {
    what: String,
}

/// The daemon's metrics: updated by the service on every call, read at each scrape.
pub struct Metrics {
    registry: Registry,
    ops: Family<OpLabel, Counter>,
    errors: Family<ErrorLabels, Counter>,
    latency: Family<OpLabel, Histogram, fn() -> Histogram>,
    snapshots: Family<KindLabel, Gauge>,
    committed_bytes: Gauge,
    committed_inodes: Gauge,
    fs_bytes: Gauge,
    fs_inodes: Gauge,
    gc_collections: Counter,
    gc_pause: Counter<f64, std::sync::atomic::AtomicU64>,
    gc_removed: Family<WhatLabel, Counter>,
    gc_seen: Mutex<snapshots::metadata::GcStats>,
    fsck_runs: Counter,
    fsck_findings: Family<KindLabel, Gauge>,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Metrics")
    }
}

/// The latency buckets: 10 µs to about 40 s, ×4 each.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_01, 4.0, 12))
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Every metric, registered, at zero.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("snapshotd");
        let ops = Family::<OpLabel, Counter>::default();
        let errors = Family::<ErrorLabels, Counter>::default();
        let latency = Family::<OpLabel, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram,
        );
        let snapshots = Family::<KindLabel, Gauge>::default();
        let (committed_bytes, committed_inodes, fs_bytes, fs_inodes) = (
            Gauge::default(),
            Gauge::default(),
            Gauge::default(),
            Gauge::default(),
        );
        let gc_collections = Counter::default();
        let gc_pause = Counter::<f64, std::sync::atomic::AtomicU64>::default();
        let gc_removed = Family::<WhatLabel, Counter>::default();
        let fsck_runs = Counter::default();
        let fsck_findings = Family::<KindLabel, Gauge>::default();
        // Every kind at 0 from the start, so a scrape before the first check shows them.
        for k in snapshots::snapshot_core::fsck::FindingKind::ALL {
            fsck_findings
                .get_or_create(&KindLabel {
                    kind: k.as_str().to_string(),
                })
                .set(0);
        }
        registry.register(
            "operations",
            "Snapshots API calls served, by method",
            ops.clone(),
        );
        registry.register(
            "operation_errors",
            "Snapshots API calls that failed, by method and containerd error kind",
            errors.clone(),
        );
        registry.register(
            "operation_duration_seconds",
            "Latency of snapshots API calls, by method",
            latency.clone(),
        );
        registry.register(
            "snapshots",
            "Snapshots by kind (read at each scrape)",
            snapshots.clone(),
        );
        registry.register(
            "committed_bytes",
            "Bytes committed layers recorded at their commit, summed",
            committed_bytes.clone(),
        );
        registry.register(
            "committed_inodes",
            "Inodes committed layers recorded at their commit, summed",
            committed_inodes.clone(),
        );
        registry.register(
            "filesystem_used_bytes",
            "Bytes in use on the root's filesystem",
            fs_bytes.clone(),
        );
        registry.register(
            "filesystem_used_inodes",
            "Inodes in use on the root's filesystem",
            fs_inodes.clone(),
        );
        registry.register(
            "gc_collections",
            "Garbage collections run (namespaced)",
            gc_collections.clone(),
        );
        registry.register(
            "gc_pause_seconds",
            "Time garbage collections held the metadata transaction (namespaced)",
            gc_pause.clone(),
        );
        registry.register(
            "gc_removed",
            "What garbage collections removed: records and backend snapshots (namespaced)",
            gc_removed.clone(),
        );
        registry.register(
            "fsck_runs",
            "Audits of the store run (snapshotctl fsck)",
            fsck_runs.clone(),
        );
        registry.register(
            "fsck_findings",
            "Findings of the latest audit by kind, what its repair fixed not counted",
            fsck_findings.clone(),
        );
        Metrics {
            registry,
            fsck_runs,
            fsck_findings,
            ops,
            errors,
            latency,
            snapshots,
            committed_bytes,
            committed_inodes,
            fs_bytes,
            fs_inodes,
            gc_collections,
            gc_pause,
            gc_removed,
            gc_seen: Mutex::new(Default::default()),
        }
    }

    /// Records an audit's report: its findings that are left, by kind.
    pub fn observe_fsck(&self, report: &snapshots::snapshot_core::fsck::FsckReport) {
        self.fsck_runs.inc();
        for k in snapshots::snapshot_core::fsck::FindingKind::ALL {
            let n = report
                .findings
                .iter()
                .filter(|f| f.kind == k && !f.repaired)
                .count();
            self.fsck_findings
                .get_or_create(&KindLabel {
                    kind: k.as_str().to_string(),
                })
                .set(n as i64);
        }
    }

    /// Records one call of `op` that took `took` and failed with `code` (if it failed).
    pub fn observe(&self, op: Op, took: Duration, code: Option<tonic::Code>) {
        let l = OpLabel { op };
        self.ops.get_or_create(&l).inc();
        self.latency.get_or_create(&l).observe(took.as_secs_f64());
        if let Some(code) = code {
            self.errors
                .get_or_create(&ErrorLabels {
                    op,
                    kind: error_kind(code).to_string(),
                })
                .inc();
        }
    }

    /// Reads what is read at a scrape: snapshots by kind and committed usage from `sn`
    /// (one walk), the filesystem of `root` (if given), and the collector's totals.
    pub fn refresh(
        &self,
        sn: &dyn Snapshotter,
        root: Option<&Path>,
        gc: Option<snapshots::metadata::GcStats>,
    ) {
        let (mut counts, mut bytes, mut inodes) = ([0i64; 3], 0i64, 0i64);
        let walked = sn.walk(&[], &mut |info| {
            counts[match info.kind {
                Kind::Active => 0,
                Kind::View => 1,
                Kind::Committed => 2,
            }] += 1;
            if info.kind == Kind::Committed {
                // Stored at commit: a read, no walk. Gone meanwhile: skipped.
                if let Ok(u) = sn.usage(&info.name) {
                    bytes += u.size as i64;
                    inodes += u.inodes as i64;
                }
            }
            Ok(())
        });
        match walked {
            Ok(()) => {
                for (i, kind) in ["active", "view", "committed"].into_iter().enumerate() {
                    self.snapshots
                        .get_or_create(&KindLabel {
                            kind: kind.to_string(),
                        })
                        .set(counts[i]);
                }
                self.committed_bytes.set(bytes);
                self.committed_inodes.set(inodes);
            }
            Err(e) => log::warn!("metrics: walking the snapshots: {e}"),
        }
        match root.map(|r| (r, rustix::fs::statvfs(r))) {
            Some((_, Ok(st))) => {
                let used = st.f_blocks.saturating_sub(st.f_bfree) * st.f_frsize;
                self.fs_bytes.set(used as i64);
                self.fs_inodes
                    .set(st.f_files.saturating_sub(st.f_ffree) as i64);
            }
            Some((r, Err(e))) => log::warn!("metrics: statvfs {}: {e}", r.display()),
            None => {}
        }
        if let Some(now) = gc {
            let mut seen = self.gc_seen.lock().unwrap_or_else(|p| p.into_inner());
            self.gc_collections
                .inc_by(now.collections.saturating_sub(seen.collections));
            let paused = now.paused.saturating_sub(seen.paused);
            self.gc_pause.inc_by(paused.as_secs_f64());
            for (what, n, was) in [
                ("records", now.records_removed, seen.records_removed),
                ("snapshots", now.backend_removed, seen.backend_removed),
            ] {
                self.gc_removed
                    .get_or_create(&WhatLabel {
                        what: what.to_string(),
                    })
                    .inc_by(n.saturating_sub(was));
            }
            *seen = now;
        }
    }

    /// The OpenMetrics text of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            log::warn!("metrics: encoding: {e}");
        }
        out
    }
}

/// containerd's name for the error kind a status code carries.
pub fn error_kind(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::NotFound => "not_found",
        Code::AlreadyExists => "already_exists",
        Code::FailedPrecondition => "failed_precondition",
        Code::InvalidArgument => "invalid_argument",
        Code::Unimplemented => "not_implemented",
        Code::Unavailable => "unavailable",
        Code::Aborted => "aborted",
        Code::Cancelled => "canceled",
        Code::DeadlineExceeded => "deadline_exceeded",
        Code::PermissionDenied => "permission_denied",
        Code::ResourceExhausted => "resource_exhausted",
        _ => "unknown",
    }
}

/// What a scrape reads besides the counters: the snapshotter to walk (the backend, for a
/// namespaced daemon: every namespace's snapshots), its root, and the collector.
#[derive(Clone)]
pub struct Scrape {
    /// The metrics.
    pub metrics: Arc<Metrics>,
    /// Walked at each scrape.
    pub snapshotter: Arc<dyn Snapshotter>,
    /// The backend's root (its filesystem's usage; not reported when `None`).
    pub root: Option<PathBuf>,
    /// The collector's totals, when namespaced.
    pub gc: Option<Arc<dyn Fn() -> snapshots::metadata::GcStats + Send + Sync>>,
}

impl Scrape {
    /// Refreshes and encodes, on the blocking pool (a walk does I/O).
    async fn render(&self) -> String {
        let s = self.clone();
        let r = tokio::task::spawn_blocking(move || {
            let gc = s.gc.as_ref().map(|f| f());
            s.metrics.refresh(&*s.snapshotter, s.root.as_deref(), gc);
            s.metrics.encode()
        })
        .await;
        r.unwrap_or_else(|e| {
            log::error!("metrics scrape panicked: {e}");
            String::new()
        })
    }
}

/// A bound metrics listener.
pub enum Listener {
    /// On a unix socket (removed when the server stops).
    Unix(tokio::net::UnixListener, PathBuf),
    /// On TCP.
    Tcp(tokio::net::TcpListener),
}

/// Binds `addr` (a stale unix socket file is replaced; its directory is made).
///
/// # Errors
/// The bind's error, naming the address.
pub fn bind(addr: &MetricsAddress) -> Result<Listener, crate::error::DaemonError> {
    let err = |e| {
        crate::error::DaemonError::io(
            "binding the metrics address",
            Path::new(&addr.to_string()),
            e,
        )
    };
    match addr {
        MetricsAddress::Unix(p) => {
            if let Some(d) = p.parent() {
                std::fs::create_dir_all(d).map_err(err)?;
            }
            match std::fs::remove_file(p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(err(e)),
            }
            let l = std::os::unix::net::UnixListener::bind(p).map_err(err)?;
            l.set_nonblocking(true).map_err(err)?;
            Ok(Listener::Unix(
                tokio::net::UnixListener::from_std(l).map_err(err)?,
                p.clone(),
            ))
        }
        MetricsAddress::Tcp(a) => {
            let l = std::net::TcpListener::bind(a).map_err(err)?;
            l.set_nonblocking(true).map_err(err)?;
            Ok(Listener::Tcp(
                tokio::net::TcpListener::from_std(l).map_err(err)?,
            ))
        }
    }
}

/// Serves `GET /metrics` on `listener` until `stop` turns true. Each connection is served
/// on its own task; anything but `GET /metrics` is 404 (405 for another method).
pub async fn serve(
    listener: Listener,
    scrape: Scrape,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            _ = stop.changed() => break,
            a = accept(&listener) => a,
        };
        let io = match accepted {
            Ok(io) => io,
            Err(e) => {
                log::warn!("metrics: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let scrape = scrape.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let scrape = scrape.clone();
                async move { Ok::<_, std::convert::Infallible>(respond(req, &scrape).await) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, svc)
                .await
            {
                log::debug!("metrics: connection: {e}");
            }
        });
    }
    if let Listener::Unix(_, p) = &listener {
        let _ = std::fs::remove_file(p);
    }
}

type Io = hyper_util::rt::TokioIo<Box<dyn Stream>>;

trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Stream for T {}

async fn accept(l: &Listener) -> std::io::Result<Io> {
    Ok(hyper_util::rt::TokioIo::new(match l {
        Listener::Unix(l, _) => Box::new(l.accept().await?.0) as Box<dyn Stream>,
        Listener::Tcp(l) => Box::new(l.accept().await?.0),
    }))
}

async fn respond(
    req: hyper::Request<hyper::body::Incoming>,
    scrape: &Scrape,
) -> hyper::Response<http_body_util::Full<bytes::Bytes>> {
    let reply = |status: u16, ctype: &str, body: String| {
        hyper::Response::builder()
            .status(status)
            .header("content-type", ctype)
            .body(http_body_util::Full::new(bytes::Bytes::from(body)))
            .expect("a static response")
    };
    if req.uri().path() != "/metrics" {
        return reply(
            404,
            "text/plain",
            "not found: metrics are at /metrics\n".into(),
        );
    }
    if req.method() != hyper::Method::GET {
        return reply(405, "text/plain", "only GET /metrics\n".into());
    }
    reply(
        200,
        "application/openmetrics-text; version=1.0.0; charset=utf-8",
        scrape.render().await,
    )
}

/// `GET path` over HTTP/1.0 on the unix socket `socket` (blocking): the status line and
/// the body.
///
/// # Errors
/// The connection's error.
pub fn get_unix(socket: &Path, path: &str) -> std::io::Result<(String, String)> {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(socket)?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: snapshotd\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    Ok((
        head.lines().next().unwrap_or("").to_string(),
        body.to_string(),
    ))
}

/// Scrapes `/metrics` from a unix socket (blocking): the body of a 200 response.
///
/// # Errors
/// The connection's error, or InvalidData naming the status line of another response.
pub fn scrape_unix(socket: &Path) -> std::io::Result<String> {
    let (status, body) = get_unix(socket, "/metrics")?;
    if !status.contains(" 200") {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("GET /metrics on {}: {status}", socket.display()),
        ));
    }
    Ok(body)
}

/// The value of the series `name{labels}` (exactly as encoded) in metrics text.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .split(' ')
            .next()?
            .parse()
            .ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse() {
        assert_eq!(
            MetricsAddress::parse("127.0.0.1:9101"),
            Ok(MetricsAddress::Tcp("127.0.0.1:9101".parse().unwrap()))
        );
        assert_eq!(
            MetricsAddress::parse("/run/x.sock"),
            Ok(MetricsAddress::Unix("/run/x.sock".into()))
        );
        assert!(MetricsAddress::parse("localhost")
            .unwrap_err()
            .contains("\"localhost\""));
    }

    #[test]
    fn calls_and_errors_are_counted_by_method_and_kind() {
        let m = Metrics::new();
        m.observe(Op::prepare, Duration::from_micros(300), None);
        m.observe(Op::prepare, Duration::from_micros(500), None);
        m.observe(
            Op::stat,
            Duration::from_micros(3),
            Some(tonic::Code::NotFound),
        );
        let text = m.encode();
        assert!(
            text.contains("snapshotd_operations_total{op=\"prepare\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("snapshotd_operations_total{op=\"stat\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("snapshotd_operation_errors_total{op=\"stat\",kind=\"not_found\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("snapshotd_operation_duration_seconds_count{op=\"prepare\"} 2"),
            "{text}"
        );
    }
}
