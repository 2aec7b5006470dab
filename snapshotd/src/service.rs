//! The `containerd.services.snapshots.v1.Snapshots` service over one [`Snapshotter`].
//!
//! Behaviour follows containerd's `contrib/snapshotservice`: the `snapshotter` field of
//! every request is ignored (one socket serves one snapshotter); List streams batches of
//! [`LIST_BATCH`] infos; Update takes the field mask's paths (none: replace all labels);
//! Cleanup is Unimplemented for a backend without a [`snapshots::Cleaner`]; Commit's
//! `parent` (containerd 2.2's rebase) becomes [`CommitOptions::parent`]. Every backend
//! call runs on tokio's blocking pool, so slow filesystem work never stalls the async
//! threads that serve other clients.

use std::sync::Arc;

use snapshots::filter::FilterSet;
use snapshots::{CommitOptions, CreateOptions, Error, Labels, Snapshotter};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::convert::{info_from_proto, info_to_proto, mount_to_proto, to_status, usage_to_proto};
use crate::metrics::{Metrics, Op};
use crate::proto::snapshots as pb;
use crate::proto::snapshots::snapshots_server::{Snapshots, SnapshotsServer};

/// How many infos one List response carries (containerd's service sends 100).
pub const LIST_BATCH: usize = 100;

/// The most bytes of infos one List response carries: well under containerd's gRPC limit
/// of 16 MiB a message, so snapshots with large labels never make a message too big, and
/// what a slow client pins stays small.
pub const LIST_BATCH_BYTES: usize = 1 << 20;

/// How many List batches may wait for a slow client before the walk pauses.
const LIST_QUEUE: usize = 2;

/// How long a List waits for its client to read a batch before it gives up the stream
/// (and the thread walking for it).
pub const LIST_SEND_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// What the service serves.
#[derive(Clone)]
pub enum Target {
    /// One snapshotter; calls name its keys directly (behind containerd, whose own
    /// metadata layer adds namespaces).
    Plain(Arc<dyn Snapshotter>),
    /// The namespaced metadata layer: each call names its namespace in the
    /// `containerd-namespace` header, as containerd's clients send it.
    Namespaced(Arc<snapshots::metadata::Metadata>),
}

impl From<Arc<dyn Snapshotter>> for Target {
    fn from(sn: Arc<dyn Snapshotter>) -> Target {
        Target::Plain(sn)
    }
}

/// The service: holds the snapshotter shared by every call.
#[derive(Clone)]
pub struct SnapshotService {
    target: Target,
    // Becomes true when the daemon stops: open List streams end at once.
    stopping: tokio::sync::watch::Receiver<bool>,
    _never: Option<Arc<tokio::sync::watch::Sender<bool>>>,
    metrics: Option<Arc<Metrics>>,
}

impl SnapshotService {
    /// A service over `sn` that is never told to stop.
    pub fn new(sn: Arc<dyn Snapshotter>) -> Self {
        let (tx, rx) = tokio::sync::watch::channel(false);
        SnapshotService {
            target: Target::Plain(sn),
            stopping: rx,
            _never: Some(Arc::new(tx)),
            metrics: None,
        }
    }

    /// A service over `sn` whose open List streams end, with Unavailable, once `stopping`
    /// turns true.
    pub fn with_stop(target: Target, stopping: tokio::sync::watch::Receiver<bool>) -> Self {
        SnapshotService {
            target,
            stopping,
            _never: None,
            metrics: None,
        }
    }

    /// Counts every call, its errors and its latency in `metrics`.
    pub fn with_metrics(mut self, metrics: Option<Arc<Metrics>>) -> Self {
        self.metrics = metrics;
        self
    }

    /// Runs a call and records it.
    async fn metered<T>(
        &self,
        op: Op,
        call: impl std::future::Future<Output = Result<T, Status>>,
    ) -> Result<T, Status> {
        let Some(m) = &self.metrics else {
            return call.await;
        };
        let start = std::time::Instant::now();
        let r = call.await;
        m.observe(op, start.elapsed(), r.as_ref().err().map(Status::code));
        r
    }

    /// The tonic server for this service, ready to add to a router.
    pub fn into_server(self) -> SnapshotsServer<Self> {
        SnapshotsServer::new(self)
    }

    /// Runs `f` on the calling task: for Stat, one LMDB read transaction of a microsecond
    /// (it waits for a writer only while the map grows, which is rare), where the hop to the blocking pool would cost more
    /// than the call.
    fn inline<T>(
        sn: &dyn Snapshotter,
        f: impl FnOnce(&dyn Snapshotter) -> snapshots::Result<T>,
    ) -> Result<T, Status> {
        f(sn).map_err(|e| {
            log::debug!("request failed: {e}");
            to_status(&e)
        })
    }

    /// Runs `f` with the snapshotter on the blocking pool and maps its error to a status.
    async fn blocking<T, F>(sn: Arc<dyn Snapshotter>, f: F) -> Result<T, Status>
    where
        T: Send + 'static,
        F: FnOnce(&dyn Snapshotter) -> snapshots::Result<T> + Send + 'static,
    {
        match tokio::task::spawn_blocking(move || f(&*sn)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                log::debug!("request failed: {e}");
                Err(to_status(&e))
            }
            Err(join) => {
                log::error!("snapshotter call panicked: {join}");
                Err(Status::unknown(format!("snapshotter call failed: {join}")))
            }
        }
    }
}

impl SnapshotService {
    /// The snapshotter a call works on: the one served, or the namespace its
    /// `containerd-namespace` header names (FailedPrecondition when it names none).
    fn resolve(&self, md: &tonic::metadata::MetadataMap) -> Result<Arc<dyn Snapshotter>, Status> {
        match &self.target {
            Target::Plain(sn) => Ok(Arc::clone(sn)),
            Target::Namespaced(meta) => {
                let ns = md
                    .get(crate::client::NAMESPACE_HEADER)
                    .map(|v| {
                        v.to_str().map_err(|_| {
                            to_status(&Error::invalid_argument(
                                "the containerd-namespace header is not text",
                            ))
                        })
                    })
                    .transpose()?
                    .unwrap_or("");
                let handle = meta.namespace(ns).map_err(|e| to_status(&e))?;
                Ok(Arc::new(handle))
            }
        }
    }
}

fn labels_of(map: std::collections::HashMap<String, String>) -> Labels {
    map.into_iter().collect()
}

/// A List response stream.
pub type ListStream = ReceiverStream<Result<pb::ListSnapshotsResponse, Status>>;

impl SnapshotService {
    async fn prepare_call(
        &self,
        request: Request<pb::PrepareSnapshotRequest>,
    ) -> Result<Response<pb::PrepareSnapshotResponse>, Status> {
        let sn = self.resolve(request.metadata())?;
        let r = request.into_inner();
        let opts = CreateOptions::with_labels(labels_of(r.labels));
        let mounts = Self::blocking(sn, move |sn| sn.prepare(&r.key, &r.parent, &opts)).await?;
        Ok(Response::new(pb::PrepareSnapshotResponse {
            mounts: mounts.iter().map(mount_to_proto).collect(),
        }))
    }

    async fn view_call(
        &self,
        request: Request<pb::ViewSnapshotRequest>,
    ) -> Result<Response<pb::ViewSnapshotResponse>, Status> {
        let sn = self.resolve(request.metadata())?;
        let r = request.into_inner();
        let opts = CreateOptions::with_labels(labels_of(r.labels));
        let mounts = Self::blocking(sn, move |sn| sn.view(&r.key, &r.parent, &opts)).await?;
        Ok(Response::new(pb::ViewSnapshotResponse {
            mounts: mounts.iter().map(mount_to_proto).collect(),
        }))
    }

    async fn mounts_call(
        &self,
        request: Request<pb::MountsRequest>,
    ) -> Result<Response<pb::MountsResponse>, Status> {
        let sn = self.resolve(request.metadata())?;
        let r = request.into_inner();
        // Inline only where it is one read: elsewhere a Mounts racing a Remove re-reads
        // the store after the writes in flight, which waits for the writer.
        let mounts = if sn.mounts_never_block() {
            Self::inline(&*sn, |sn| sn.mounts(&r.key))?
        } else {
            Self::blocking(sn, move |sn| sn.mounts(&r.key)).await?
        };
        Ok(Response::new(pb::MountsResponse {
            mounts: mounts.iter().map(mount_to_proto).collect(),
        }))
    }

    async fn commit_call(
        &self,
        request: Request<pb::CommitSnapshotRequest>,
    ) -> Result<Response<()>, Status> {
        let sn = self.resolve(request.metadata())?;
        let r = request.into_inner();
        let opts = CommitOptions {
            labels: labels_of(r.labels),
            parent: r.parent,
        };
        Self::blocking(sn, move |sn| sn.commit(&r.name, &r.key, &opts)).await?;
        Ok(Response::new(()))
    }

    async fn remove_call(
        &self,
        request: Request<pb::RemoveSnapshotRequest>,
    ) -> Result<Response<()>, Status> {
        let sn = self.resolve(request.metadata())?;
        let r = request.into_inner();
        Self::blocking(sn, move |sn| sn.remove(&r.key)).await?;
        Ok(Response::new(()))
    }

    async fn stat_call(
        &self,
        request: Request<pb::StatSnapshotRequest>,
    ) -> Result<Response<pb::StatSnapshotResponse>, Status> {
        let sn = self.resolve(request.metadata())?;
        let r = request.into_inner();
        let info = Self::inline(&*sn, |sn| sn.stat(&r.key))?;
        Ok(Response::new(pb::StatSnapshotResponse {
            info: Some(info_to_proto(&info)),
        }))
    }

    async fn update_call(
        &self,
        request: Request<pb::UpdateSnapshotRequest>,
    ) -> Result<Response<pb::UpdateSnapshotResponse>, Status> {
        let sn = self.resolve(request.metadata())?;
        let r = request.into_inner();
        let Some(info) = r.info else {
            return Err(to_status(&Error::invalid_argument(
                "update request without info: name the snapshot in info.name",
            )));
        };
        let info = info_from_proto(info);
        // containerd treats a missing mask as "no paths": every label is replaced.
        let paths = r.update_mask.map(|m| m.paths).unwrap_or_default();
        let info = Self::blocking(sn, move |sn| sn.update(&info, &paths)).await?;
        Ok(Response::new(pb::UpdateSnapshotResponse {
            info: Some(info_to_proto(&info)),
        }))
    }

    async fn list_call(
        &self,
        request: Request<pb::ListSnapshotsRequest>,
    ) -> Result<Response<ListStream>, Status> {
        let sn = self.resolve(request.metadata())?;
        let filters = request.into_inner().filters;
        // A bad filter fails the call itself rather than the first stream message.
        FilterSet::parse(&filters).map_err(|e| to_status(&e))?;
        let (tx, rx) = mpsc::channel(LIST_QUEUE);
        let stopping = self.stopping.clone();
        let handle = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || {
            // Sends one message, waiting at most LIST_SEND_TIMEOUT for the client to make
            // room and not at all once the daemon stops.
            let send = |msg: Result<pb::ListSnapshotsResponse, Status>| -> snapshots::Result<()> {
                let mut stopping = stopping.clone();
                handle.block_on(async {
                    if *stopping.borrow() {
                        let _ = tx.try_send(Err(Status::unavailable("list: the daemon is stopping")));
                        return Err(Error::unavailable("list: the daemon is stopping"));
                    }
                    tokio::select! {
                        sent = tokio::time::timeout(LIST_SEND_TIMEOUT, tx.send(msg)) => match sent {
                            Ok(Ok(())) => Ok(()),
                            Ok(Err(_)) => Err(Error::unavailable("list: the client closed the stream")),
                            Err(_) => Err(Error::unavailable(format!(
                                "list: the client read nothing for {LIST_SEND_TIMEOUT:?}: stream dropped"
                            ))),
                        },
                        _ = stopping.wait_for(|s| *s) => {
                            let _ = tx.try_send(Err(Status::unavailable("list: the daemon is stopping")));
                            Err(Error::unavailable("list: the daemon is stopping"))
                        }
                    }
                })
            };
            let mut batch = Vec::with_capacity(LIST_BATCH);
            let mut bytes = 0;
            let mut gone = false;
            let walked = sn.walk(&filters, &mut |info| {
                let info = info_to_proto(info);
                bytes += prost::Message::encoded_len(&info);
                batch.push(info);
                if batch.len() == LIST_BATCH || bytes >= LIST_BATCH_BYTES {
                    let full = std::mem::replace(&mut batch, Vec::with_capacity(LIST_BATCH));
                    bytes = 0;
                    // The walk holds no transaction while a callback runs. A client that
                    // went away, stopped reading, or a stopping daemon ends the walk.
                    send(Ok(pb::ListSnapshotsResponse { info: full }))
                        .inspect_err(|_| gone = true)?;
                }
                Ok(())
            });
            let last = match walked {
                Ok(()) if batch.is_empty() => return,
                Ok(()) => Ok(pb::ListSnapshotsResponse { info: batch }),
                Err(e) => {
                    log::debug!("list ended: {e}");
                    if gone {
                        return;
                    }
                    Err(to_status(&e))
                }
            };
            let _ = send(last);
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn usage_call(
        &self,
        request: Request<pb::UsageRequest>,
    ) -> Result<Response<pb::UsageResponse>, Status> {
        let sn = self.resolve(request.metadata())?;
        let r = request.into_inner();
        let usage = Self::blocking(sn, move |sn| sn.usage(&r.key)).await?;
        Ok(Response::new(usage_to_proto(usage)))
    }

    async fn cleanup_call(
        &self,
        request: Request<pb::CleanupRequest>,
    ) -> Result<Response<()>, Status> {
        let sn = self.resolve(request.metadata())?;
        Self::blocking(sn, |sn| match sn.as_cleaner() {
            Some(cleaner) => cleaner.cleanup(),
            None => Err(Error::not_implemented(
                "cleanup: this snapshotter deletes at remove and has nothing to clean up",
            )),
        })
        .await?;
        Ok(Response::new(()))
    }
}

#[tonic::async_trait]
impl Snapshots for SnapshotService {
    type ListStream = ListStream;

    async fn prepare(
        &self,
        request: Request<pb::PrepareSnapshotRequest>,
    ) -> Result<Response<pb::PrepareSnapshotResponse>, Status> {
        self.metered(Op::prepare, self.prepare_call(request)).await
    }

    async fn view(
        &self,
        request: Request<pb::ViewSnapshotRequest>,
    ) -> Result<Response<pb::ViewSnapshotResponse>, Status> {
        self.metered(Op::view, self.view_call(request)).await
    }

    async fn mounts(
        &self,
        request: Request<pb::MountsRequest>,
    ) -> Result<Response<pb::MountsResponse>, Status> {
        self.metered(Op::mounts, self.mounts_call(request)).await
    }

    async fn commit(
        &self,
        request: Request<pb::CommitSnapshotRequest>,
    ) -> Result<Response<()>, Status> {
        self.metered(Op::commit, self.commit_call(request)).await
    }

    async fn remove(
        &self,
        request: Request<pb::RemoveSnapshotRequest>,
    ) -> Result<Response<()>, Status> {
        self.metered(Op::remove, self.remove_call(request)).await
    }

    async fn stat(
        &self,
        request: Request<pb::StatSnapshotRequest>,
    ) -> Result<Response<pb::StatSnapshotResponse>, Status> {
        self.metered(Op::stat, self.stat_call(request)).await
    }

    async fn update(
        &self,
        request: Request<pb::UpdateSnapshotRequest>,
    ) -> Result<Response<pb::UpdateSnapshotResponse>, Status> {
        self.metered(Op::update, self.update_call(request)).await
    }

    async fn list(
        &self,
        request: Request<pb::ListSnapshotsRequest>,
    ) -> Result<Response<ListStream>, Status> {
        self.metered(Op::list, self.list_call(request)).await
    }

    async fn usage(
        &self,
        request: Request<pb::UsageRequest>,
    ) -> Result<Response<pb::UsageResponse>, Status> {
        self.metered(Op::usage, self.usage_call(request)).await
    }

    async fn cleanup(&self, request: Request<pb::CleanupRequest>) -> Result<Response<()>, Status> {
        self.metered(Op::cleanup, self.cleanup_call(request)).await
    }
}

/// snapshotd's `Collector` service: garbage collection of the namespaced metadata layer on
/// demand (`snapshotctl gc`).
#[derive(Clone)]
pub struct CollectorService {
    target: Target,
}

impl CollectorService {
    /// The service for `target` (Unimplemented unless it is namespaced).
    pub fn new(target: Target) -> Self {
        CollectorService { target }
    }

    /// The tonic server for this service.
    pub fn into_server(self) -> crate::proto::collector::collector_server::CollectorServer<Self> {
        crate::proto::collector::collector_server::CollectorServer::new(self)
    }
}

fn nanos(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

#[tonic::async_trait]
impl crate::proto::collector::collector_server::Collector for CollectorService {
    async fn collect(
        &self,
        request: Request<crate::proto::collector::CollectRequest>,
    ) -> Result<Response<crate::proto::collector::CollectResponse>, Status> {
        use crate::proto::collector as c;
        let Target::Namespaced(md) = &self.target else {
            return Err(to_status(&Error::not_implemented(
                "gc: this daemon serves no namespaces: start it with --namespaced (behind \
                 containerd, containerd collects)",
            )));
        };
        let dry_run = request.into_inner().dry_run;
        let md = Arc::clone(md);
        let done =
            tokio::task::spawn_blocking(move || if dry_run { md.plan() } else { md.collect() })
                .await
                .map_err(|e| Status::unknown(format!("gc failed: {e}")))?
                .map_err(|e| to_status(&e))?;
        Ok(Response::new(c::CollectResponse {
            dry_run,
            records: done
                .records
                .into_iter()
                .map(|(namespace, key)| c::Record { namespace, key })
                .collect(),
            backend: done.backend,
            kept: done
                .kept
                .into_iter()
                .map(|(name, reason)| c::Kept { name, reason })
                .collect(),
            metadata_ns: nanos(done.metadata_time),
            longest_pause_ns: nanos(done.longest_pause),
            total_ns: nanos(done.total_time),
        }))
    }
}

/// snapshotd's `Checker` service: the store's self-audit (`snapshotctl fsck`). On a
/// namespaced daemon it audits the backend under the metadata layer.
#[derive(Clone)]
pub struct CheckerService {
    target: Target,
    metrics: Option<Arc<Metrics>>,
}

impl CheckerService {
    /// The service for `target`.
    pub fn new(target: Target) -> Self {
        CheckerService {
            target,
            metrics: None,
        }
    }

    /// Records each audit's findings in `metrics`.
    pub fn with_metrics(mut self, metrics: Option<Arc<Metrics>>) -> Self {
        self.metrics = metrics;
        self
    }

    /// The tonic server for this service.
    pub fn into_server(self) -> crate::proto::collector::checker_server::CheckerServer<Self> {
        crate::proto::collector::checker_server::CheckerServer::new(self)
    }
}

#[tonic::async_trait]
impl crate::proto::collector::checker_server::Checker for CheckerService {
    async fn fsck(
        &self,
        request: Request<crate::proto::collector::FsckRequest>,
    ) -> Result<Response<crate::proto::collector::FsckResponse>, Status> {
        let repair = request.into_inner().repair;
        let sn: Arc<dyn Snapshotter> = match &self.target {
            Target::Plain(sn) => Arc::clone(sn),
            Target::Namespaced(md) => Arc::clone(md.backend()),
        };
        let report = tokio::task::spawn_blocking(move || match sn.as_cleaner() {
            Some(c) => c.fsck(repair),
            None => Err(Error::not_implemented(
                "fsck: this daemon's snapshotter cannot audit itself",
            )),
        })
        .await
        .map_err(|e| Status::unknown(format!("fsck failed: {e}")))?
        .map_err(|e| to_status(&e))?;
        if let Some(m) = &self.metrics {
            m.observe_fsck(&report);
        }
        Ok(Response::new(crate::convert::fsck_to_proto(&report)))
    }
}
