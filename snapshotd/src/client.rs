//! A client of the snapshots service on a unix socket.

use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};
use tower::service_fn;

use crate::proto::snapshots as pb;
use crate::proto::snapshots::snapshots_client::SnapshotsClient;

/// The gRPC header containerd's clients name their namespace in.
pub const NAMESPACE_HEADER: &str = "containerd-namespace";

/// Adds the [`NAMESPACE_HEADER`] to every request, when there is a namespace.
#[derive(Debug, Clone, Default)]
pub struct NamespaceHeader(Option<tonic::metadata::AsciiMetadataValue>);

impl NamespaceHeader {
    /// The header for namespace `ns` (None: no header).
    ///
    /// # Errors
    /// InvalidArgument for a name that cannot be a header value.
    pub fn new(ns: Option<&str>) -> snapshots::Result<NamespaceHeader> {
        ns.map(|n| {
            n.parse().map_err(|_| {
                snapshots::Error::invalid_argument(format!(
                    "namespace {n:?} cannot be sent in a gRPC header: use letters, digits, '.', '_' and '-'"
                ))
            })
        })
        .transpose()
        .map(NamespaceHeader)
    }
}

impl tonic::service::Interceptor for NamespaceHeader {
    fn call(&mut self, mut r: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            r.metadata_mut().insert(NAMESPACE_HEADER, v.clone());
        }
        Ok(r)
    }
}

/// A connected client of the `Snapshots` service.
pub type Client =
    SnapshotsClient<tonic::service::interceptor::InterceptedService<Channel, NamespaceHeader>>;

/// Connects to the snapshots service listening on the unix socket `path`.
///
/// # Errors
/// The transport error when the socket cannot be reached (missing, refused, no access).
pub async fn connect(path: &Path) -> Result<Client, tonic::transport::Error> {
    connect_in(path, NamespaceHeader::default()).await
}

/// [`connect`], with every request naming a namespace (for `snapshotd --namespaced`).
///
/// # Errors
/// As [`connect`].
pub async fn connect_in(
    path: &Path,
    namespace: NamespaceHeader,
) -> Result<Client, tonic::transport::Error> {
    Ok(SnapshotsClient::with_interceptor(
        channel(path).await?,
        namespace,
    ))
}

/// A connected client of snapshotd's own `Collector` service.
pub type Collector =
    crate::proto::collector::collector_client::CollectorClient<tonic::transport::Channel>;

/// Connects to snapshotd's `Collector` service (garbage collection of a daemon started
/// with `--namespaced`) on the unix socket `path`.
///
/// # Errors
/// As [`connect`].
pub async fn connect_collector(path: &Path) -> Result<Collector, tonic::transport::Error> {
    Ok(Collector::new(channel(path).await?))
}

/// A connected client of snapshotd's own `Checker` service (`snapshotctl fsck`).
pub type Checker =
    crate::proto::collector::checker_client::CheckerClient<tonic::transport::Channel>;

/// A channel to the unix socket `path`.
pub(crate) async fn channel(path: &Path) -> Result<Channel, tonic::transport::Error> {
    let path: PathBuf = path.to_owned();
    // The URI is required by the API but never used: the connector ignores it.
    let channel = Endpoint::from_static("http://[::]:50051")
        .connect_with_connector(service_fn(move |_: Uri| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
        }))
        .await?;
    Ok(channel)
}

/// A [`Snapshotter`](snapshots::Snapshotter) whose calls go to a snapshots service over
/// its unix socket: what a Rust program (or the benchmark's daemon column) uses to drive a
/// running `snapshotd` through the same trait as an in-process backend. Each call blocks
/// on a small runtime of its own.
pub struct RemoteSnapshotter {
    runtime: tokio::runtime::Runtime,
    client: Client,
    checker: Checker,
}

impl RemoteSnapshotter {
    /// Connects to the service on `path`.
    ///
    /// # Errors
    /// Unavailable naming the socket when it cannot be reached; Unknown when no runtime
    /// can be started.
    pub fn connect(path: &Path) -> snapshots::Result<RemoteSnapshotter> {
        Self::connect_in(path, None)
    }

    /// [`connect`](Self::connect), with every call in namespace `ns` (a daemon serving the
    /// namespaced metadata layer requires one).
    ///
    /// # Errors
    /// As [`connect`](Self::connect); InvalidArgument for a namespace that cannot be a
    /// header value.
    pub fn connect_in(path: &Path, ns: Option<&str>) -> snapshots::Result<RemoteSnapshotter> {
        let header = NamespaceHeader::new(ns)?;
        // One worker of its own: the connection's task must run between calls too (to
        // answer the server's pings and its GOAWAY at shutdown).
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .map_err(|e| snapshots::Error::unknown(format!("starting a runtime: {e}")))?;
        let ch = runtime.block_on(channel(path)).map_err(|e| {
            snapshots::Error::unavailable(format!(
                "cannot connect to snapshotd at {}: {e}: is the daemon running?",
                path.display()
            ))
        })?;
        Ok(RemoteSnapshotter {
            runtime,
            client: SnapshotsClient::with_interceptor(ch.clone(), header),
            checker: Checker::new(ch),
        })
    }

    fn call<T, F, Fut>(&self, f: F) -> snapshots::Result<T>
    where
        F: FnOnce(Client) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        self.runtime
            .block_on(f(self.client.clone()))
            .map(tonic::Response::into_inner)
            .map_err(|s| crate::convert::from_status(&s))
    }
}

const SNAPSHOTTER: &str = "snapshotd";

fn mounts_of(m: Vec<crate::proto::types::Mount>) -> Vec<snapshots::Mount> {
    m.into_iter()
        .map(crate::convert::mount_from_proto)
        .collect()
}

impl snapshots::Snapshotter for RemoteSnapshotter {
    fn stat(&self, key: &str) -> snapshots::Result<snapshots::Info> {
        let r = self.call(|mut c| async move {
            c.stat(pb::StatSnapshotRequest {
                snapshotter: SNAPSHOTTER.into(),
                key: key.into(),
            })
            .await
        })?;
        Ok(crate::convert::info_from_proto(r.info.unwrap_or_default()))
    }

    fn update(
        &self,
        info: &snapshots::Info,
        fieldpaths: &[String],
    ) -> snapshots::Result<snapshots::Info> {
        let r = self.call(|mut c| async move {
            c.update(pb::UpdateSnapshotRequest {
                snapshotter: SNAPSHOTTER.into(),
                info: Some(crate::convert::info_to_proto(info)),
                update_mask: Some(prost_types::FieldMask {
                    paths: fieldpaths.to_vec(),
                }),
            })
            .await
        })?;
        Ok(crate::convert::info_from_proto(r.info.unwrap_or_default()))
    }

    fn usage(&self, key: &str) -> snapshots::Result<snapshots::Usage> {
        let r = self.call(|mut c| async move {
            c.usage(pb::UsageRequest {
                snapshotter: SNAPSHOTTER.into(),
                key: key.into(),
            })
            .await
        })?;
        Ok(snapshots::Usage {
            size: r.size.max(0) as u64,
            inodes: r.inodes.max(0) as u64,
        })
    }

    fn mounts(&self, key: &str) -> snapshots::Result<Vec<snapshots::Mount>> {
        let r = self.call(|mut c| async move {
            c.mounts(pb::MountsRequest {
                snapshotter: SNAPSHOTTER.into(),
                key: key.into(),
            })
            .await
        })?;
        Ok(mounts_of(r.mounts))
    }

    fn prepare(
        &self,
        key: &str,
        parent: &str,
        opts: &snapshots::CreateOptions,
    ) -> snapshots::Result<Vec<snapshots::Mount>> {
        let r = self.call(|mut c| async move {
            c.prepare(pb::PrepareSnapshotRequest {
                snapshotter: SNAPSHOTTER.into(),
                key: key.into(),
                parent: parent.into(),
                labels: opts.labels.clone().into_iter().collect(),
            })
            .await
        })?;
        Ok(mounts_of(r.mounts))
    }

    fn view(
        &self,
        key: &str,
        parent: &str,
        opts: &snapshots::CreateOptions,
    ) -> snapshots::Result<Vec<snapshots::Mount>> {
        let r = self.call(|mut c| async move {
            c.view(pb::ViewSnapshotRequest {
                snapshotter: SNAPSHOTTER.into(),
                key: key.into(),
                parent: parent.into(),
                labels: opts.labels.clone().into_iter().collect(),
            })
            .await
        })?;
        Ok(mounts_of(r.mounts))
    }

    fn commit(
        &self,
        name: &str,
        key: &str,
        opts: &snapshots::CommitOptions,
    ) -> snapshots::Result<()> {
        self.call(|mut c| async move {
            c.commit(pb::CommitSnapshotRequest {
                snapshotter: SNAPSHOTTER.into(),
                name: name.into(),
                key: key.into(),
                labels: opts.labels.clone().into_iter().collect(),
                parent: opts.parent.clone(),
            })
            .await
        })
    }

    fn remove(&self, key: &str) -> snapshots::Result<()> {
        self.call(|mut c| async move {
            c.remove(pb::RemoveSnapshotRequest {
                snapshotter: SNAPSHOTTER.into(),
                key: key.into(),
            })
            .await
        })
    }

    fn walk(
        &self,
        filters: &[String],
        f: &mut dyn FnMut(&snapshots::Info) -> snapshots::Result<()>,
    ) -> snapshots::Result<()> {
        let mut stream = self.call(|mut c| async move {
            c.list(pb::ListSnapshotsRequest {
                snapshotter: SNAPSHOTTER.into(),
                filters: filters.to_vec(),
            })
            .await
        })?;
        loop {
            let batch = self
                .runtime
                .block_on(stream.message())
                .map_err(|s| crate::convert::from_status(&s))?;
            let Some(batch) = batch else { return Ok(()) };
            for info in batch.info {
                f(&crate::convert::info_from_proto(info))?;
            }
        }
    }

    fn close(&self) -> snapshots::Result<()> {
        Ok(())
    }

    fn as_cleaner(&self) -> Option<&dyn snapshots::Cleaner> {
        Some(self)
    }
}

impl snapshots::Cleaner for RemoteSnapshotter {
    fn cleanup(&self) -> snapshots::Result<()> {
        self.call(|mut c| async move {
            c.cleanup(pb::CleanupRequest {
                snapshotter: SNAPSHOTTER.into(),
            })
            .await
        })
    }

    /// The daemon's audit of its store, through its `Checker` service.
    fn fsck(&self, repair: bool) -> snapshots::Result<snapshots::snapshot_core::fsck::FsckReport> {
        let mut c = self.checker.clone();
        self.runtime
            .block_on(c.fsck(crate::proto::collector::FsckRequest { repair }))
            .map(|r| crate::convert::fsck_from_proto(r.into_inner()))
            .map_err(|s| crate::convert::from_status(&s))
    }
}
