//! The service through a real tonic client on a unix socket: every RPC, every error code,
//! List batching and concurrent clients.

mod common;

use std::collections::HashMap;

use common::TestServer;
use prost_types::FieldMask;
use snapshotd::client::Client;
use snapshotd::proto::snapshots as pb;
use tonic::Code;

async fn prepare(c: &mut Client, key: &str, parent: &str) -> Result<Vec<String>, tonic::Status> {
    let r = c
        .prepare(pb::PrepareSnapshotRequest {
            snapshotter: "snapshotd".into(),
            key: key.into(),
            parent: parent.into(),
            labels: HashMap::new(),
        })
        .await?;
    Ok(r.into_inner()
        .mounts
        .into_iter()
        .map(|m| m.r#type)
        .collect())
}

async fn view(c: &mut Client, key: &str, parent: &str) -> Result<(), tonic::Status> {
    c.view(pb::ViewSnapshotRequest {
        key: key.into(),
        parent: parent.into(),
        ..Default::default()
    })
    .await
    .map(|_| ())
}

async fn commit(c: &mut Client, name: &str, key: &str) -> Result<(), tonic::Status> {
    c.commit(pb::CommitSnapshotRequest {
        name: name.into(),
        key: key.into(),
        ..Default::default()
    })
    .await
    .map(|_| ())
}

async fn stat(c: &mut Client, key: &str) -> Result<pb::Info, tonic::Status> {
    let r = c
        .stat(pb::StatSnapshotRequest {
            key: key.into(),
            ..Default::default()
        })
        .await?;
    Ok(r.into_inner().info.expect("stat returns info"))
}

async fn list(c: &mut Client, filters: &[&str]) -> Result<Vec<Vec<pb::Info>>, tonic::Status> {
    let mut s = c
        .list(pb::ListSnapshotsRequest {
            filters: filters.iter().map(|f| f.to_string()).collect(),
            ..Default::default()
        })
        .await?
        .into_inner();
    let mut batches = Vec::new();
    while let Some(b) = s.message().await? {
        batches.push(b.info);
    }
    Ok(batches)
}

/// Asserts the status code and that the message names `needle` and ends in containerd's
/// class suffix, so containerd's `FromGRPC` strips it back to the same message.
fn assert_status(r: Result<impl std::fmt::Debug, tonic::Status>, code: Code, needle: &str) {
    let st = r.expect_err("call must fail");
    assert_eq!(st.code(), code, "{st:?}");
    assert!(
        st.message().contains(needle),
        "message {:?} lacks {needle:?}",
        st.message()
    );
    let back = snapshotd::convert::from_status(&st);
    assert_eq!(snapshotd::convert::code_of(back.kind()), code);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_works() {
    let srv = TestServer::native().await;
    let mut c = srv.client().await;

    assert_eq!(
        prepare(&mut c, "extract-1", "").await.unwrap(),
        vec!["bind"]
    );
    let mounts = c
        .mounts(pb::MountsRequest {
            key: "extract-1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .mounts;
    assert_eq!(mounts.len(), 1);
    assert_eq!(mounts[0].target, "");
    std::fs::write(std::path::Path::new(&mounts[0].source).join("f"), b"hello").unwrap();
    let usage = c
        .usage(pb::UsageRequest {
            key: "extract-1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(usage.inodes >= 2, "{usage:?}");

    c.commit(pb::CommitSnapshotRequest {
        name: "layer-1".into(),
        key: "extract-1".into(),
        labels: HashMap::from([("l".to_string(), "1".to_string())]),
        ..Default::default()
    })
    .await
    .unwrap();
    let info = stat(&mut c, "layer-1").await.unwrap();
    assert_eq!(info.kind, pb::Kind::Committed as i32);
    assert_eq!(info.parent, "");
    assert_eq!(info.labels["l"], "1");
    assert!(info.created_at.is_some() && info.updated_at.is_some());

    view(&mut c, "view-1", "layer-1").await.unwrap();
    assert_eq!(
        stat(&mut c, "view-1").await.unwrap().kind,
        pb::Kind::View as i32
    );

    // Rebase reaches the backend: native layers are full copies, so a commit onto a new
    // parent is refused (Unimplemented) and changes nothing; a plain commit then works.
    prepare(&mut c, "extract-2", "").await.unwrap();
    let err = c
        .commit(pb::CommitSnapshotRequest {
            name: "layer-2".into(),
            key: "extract-2".into(),
            parent: "layer-1".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unimplemented, "{err:?}");
    assert!(
        err.message().contains("backend native cannot rebase"),
        "{err:?}"
    );
    assert_eq!(
        stat(&mut c, "extract-2").await.unwrap().kind,
        pb::Kind::Active as i32
    );
    c.commit(pb::CommitSnapshotRequest {
        name: "layer-2".into(),
        key: "extract-2".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(stat(&mut c, "layer-2").await.unwrap().parent, "");

    // Update with a mask sets one label; without a mask every label is replaced.
    let r = c
        .update(pb::UpdateSnapshotRequest {
            info: Some(pb::Info {
                name: "layer-1".into(),
                labels: HashMap::from([("x".to_string(), "y".to_string())]),
                ..Default::default()
            }),
            update_mask: Some(FieldMask {
                paths: vec!["labels.x".into()],
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .info
        .unwrap();
    assert_eq!(r.labels.len(), 2, "{r:?}");
    let r = c
        .update(pb::UpdateSnapshotRequest {
            info: Some(pb::Info {
                name: "layer-1".into(),
                labels: HashMap::from([("only".to_string(), "me".to_string())]),
                ..Default::default()
            }),
            update_mask: None,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .info
        .unwrap();
    assert_eq!(
        r.labels,
        HashMap::from([("only".to_string(), "me".to_string())])
    );

    let all: Vec<String> = list(&mut c, &[])
        .await
        .unwrap()
        .concat()
        .into_iter()
        .map(|i| i.name)
        .collect();
    assert_eq!(all.len(), 3, "{all:?}");
    let committed = list(&mut c, &["kind==committed"]).await.unwrap().concat();
    assert_eq!(committed.len(), 2);

    for key in ["view-1", "layer-2", "layer-1"] {
        c.remove(pb::RemoveSnapshotRequest {
            key: key.into(),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    c.cleanup(pb::CleanupRequest::default()).await.unwrap();
    assert!(list(&mut c, &[]).await.unwrap().is_empty());
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_map_to_containerd_codes() {
    let srv = TestServer::native().await;
    let mut c = srv.client().await;
    prepare(&mut c, "a", "").await.unwrap();
    commit(&mut c, "base", "a").await.unwrap();
    prepare(&mut c, "child", "base").await.unwrap();
    view(&mut c, "v", "base").await.unwrap();

    // NotFound
    assert_status(
        stat(&mut c, "missing-key").await,
        Code::NotFound,
        "missing-key",
    );
    assert_status(
        prepare(&mut c, "k", "missing-parent").await,
        Code::NotFound,
        "missing-parent",
    );
    assert_status(
        c.mounts(pb::MountsRequest {
            key: "gone".into(),
            ..Default::default()
        })
        .await,
        Code::NotFound,
        "gone",
    );
    assert_status(
        c.remove(pb::RemoveSnapshotRequest {
            key: "gone".into(),
            ..Default::default()
        })
        .await,
        Code::NotFound,
        "gone",
    );
    // AlreadyExists
    assert_status(
        prepare(&mut c, "child", "").await,
        Code::AlreadyExists,
        "child",
    );
    assert_status(view(&mut c, "base", "").await, Code::AlreadyExists, "base");
    prepare(&mut c, "next", "base").await.unwrap();
    assert_status(
        commit(&mut c, "base", "next").await,
        Code::AlreadyExists,
        "base",
    );
    // FailedPrecondition
    assert_status(
        c.mounts(pb::MountsRequest {
            key: "base".into(),
            ..Default::default()
        })
        .await,
        Code::FailedPrecondition,
        "base",
    );
    assert_status(
        c.remove(pb::RemoveSnapshotRequest {
            key: "base".into(),
            ..Default::default()
        })
        .await,
        Code::FailedPrecondition,
        "base",
    );
    assert_status(
        commit(&mut c, "from-view", "v").await,
        Code::FailedPrecondition,
        "v",
    );
    // InvalidArgument
    assert_status(
        prepare(&mut c, "k2", "child").await,
        Code::InvalidArgument,
        "child",
    );
    assert_status(prepare(&mut c, "", "").await, Code::InvalidArgument, "");
    assert_status(
        list(&mut c, &["name=="]).await,
        Code::InvalidArgument,
        "name",
    );
    assert_status(
        c.update(pb::UpdateSnapshotRequest {
            info: Some(pb::Info {
                name: "base".into(),
                ..Default::default()
            }),
            update_mask: Some(FieldMask {
                paths: vec!["parent".into()],
            }),
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        "parent",
    );
    assert_status(
        c.prepare(pb::PrepareSnapshotRequest {
            key: "big-label".into(),
            labels: HashMap::from([("k".to_string(), "v".repeat(5000))]),
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        "label",
    );
    assert_status(
        c.update(pb::UpdateSnapshotRequest::default()).await,
        Code::InvalidArgument,
        "info",
    );
    // Unavailable: the store is closed under the running server.
    srv.sn.close().unwrap();
    assert_status(stat(&mut c, "base").await, Code::Unavailable, "");
    assert_status(list(&mut c, &[]).await, Code::Unavailable, "");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleanup_without_cleaner_is_unimplemented() {
    let srv = TestServer::without_cleaner().await;
    let mut c = srv.client().await;
    assert_status(
        c.cleanup(pb::CleanupRequest::default()).await,
        Code::Unimplemented,
        "cleanup",
    );
    srv.stop().await;

    // The native backend has a cleaner: the same call succeeds.
    let srv = TestServer::native().await;
    srv.client()
        .await
        .cleanup(pb::CleanupRequest::default())
        .await
        .unwrap();
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_streams_batches_of_100_with_filters() {
    let srv = TestServer::native().await;
    let mut c = srv.client().await;
    for i in 0..250 {
        let group = if i % 2 == 0 { "even" } else { "odd" };
        c.prepare(pb::PrepareSnapshotRequest {
            key: format!("snap-{i:03}"),
            labels: HashMap::from([("group".to_string(), group.to_string())]),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    let batches = list(&mut c, &[]).await.unwrap();
    assert_eq!(
        batches.iter().map(Vec::len).collect::<Vec<_>>(),
        vec![100, 100, 50]
    );
    let mut names: Vec<String> = batches.concat().into_iter().map(|i| i.name).collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), 250);

    let even = list(&mut c, &["labels.group==even"]).await.unwrap();
    assert_eq!(even.iter().map(Vec::len).collect::<Vec<_>>(), vec![100, 25]);
    assert!(even.concat().iter().all(|i| i.labels["group"] == "even"));
    // Two filters are OR; a comma inside one is AND.
    let or = list(&mut c, &["name==snap-001", "name==snap-002"])
        .await
        .unwrap()
        .concat();
    assert_eq!(or.len(), 2);
    let and = list(&mut c, &["labels.group==odd,name==snap-002"])
        .await
        .unwrap()
        .concat();
    assert!(and.is_empty());
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_clients_at_once() {
    let srv = TestServer::native().await;
    let mut tasks = Vec::new();
    for n in 0..8 {
        let mut c = srv.client().await;
        tasks.push(tokio::spawn(async move {
            for i in 0..15 {
                let key = format!("client-{n}/extract-{i}");
                let name = format!("client-{n}/layer-{i}");
                let parent = if i == 0 {
                    String::new()
                } else {
                    format!("client-{n}/layer-{}", i - 1)
                };
                prepare(&mut c, &key, &parent).await.unwrap();
                commit(&mut c, &name, &key).await.unwrap();
                assert_eq!(stat(&mut c, &name).await.unwrap().parent, parent);
            }
            let mine = list(&mut c, &[&format!("name~=^client-{n}/")])
                .await
                .unwrap()
                .concat();
            assert_eq!(mine.len(), 15);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut c = srv.client().await;
    assert_eq!(list(&mut c, &[]).await.unwrap().concat().len(), 8 * 15);
    srv.stop().await;
}

/// A backend whose prepare takes a while, to catch a shutdown in the middle of a call.
struct SlowPrepare(Box<dyn snapshots::Snapshotter>);

impl snapshots::Snapshotter for SlowPrepare {
    fn stat(&self, key: &str) -> snapshots::Result<snapshots::Info> {
        self.0.stat(key)
    }
    fn update(
        &self,
        info: &snapshots::Info,
        paths: &[String],
    ) -> snapshots::Result<snapshots::Info> {
        self.0.update(info, paths)
    }
    fn usage(&self, key: &str) -> snapshots::Result<snapshots::Usage> {
        self.0.usage(key)
    }
    fn mounts(&self, key: &str) -> snapshots::Result<Vec<snapshots::Mount>> {
        self.0.mounts(key)
    }
    fn prepare(
        &self,
        key: &str,
        parent: &str,
        opts: &snapshots::CreateOptions,
    ) -> snapshots::Result<Vec<snapshots::Mount>> {
        std::thread::sleep(std::time::Duration::from_millis(600));
        self.0.prepare(key, parent, opts)
    }
    fn view(
        &self,
        key: &str,
        parent: &str,
        opts: &snapshots::CreateOptions,
    ) -> snapshots::Result<Vec<snapshots::Mount>> {
        self.0.view(key, parent, opts)
    }
    fn commit(
        &self,
        name: &str,
        key: &str,
        opts: &snapshots::CommitOptions,
    ) -> snapshots::Result<()> {
        self.0.commit(name, key, opts)
    }
    fn remove(&self, key: &str) -> snapshots::Result<()> {
        self.0.remove(key)
    }
    fn walk(
        &self,
        filters: &[String],
        f: &mut dyn FnMut(&snapshots::Info) -> snapshots::Result<()>,
    ) -> snapshots::Result<()> {
        self.0.walk(filters, f)
    }
    fn close(&self) -> snapshots::Result<()> {
        self.0.close()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_the_call_in_flight_finish() {
    let dir = tempfile::tempdir().unwrap();
    let inner = snapshots::open(
        snapshots::Backend::Native,
        &dir.path().join("root"),
        &snapshots::Options::default(),
    )
    .unwrap();
    let srv = TestServer::with(dir, std::sync::Arc::new(SlowPrepare(inner))).await;
    let mut c = srv.client().await;
    let call = tokio::spawn(async move { prepare(&mut c, "slow", "").await });
    tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    let sn = std::sync::Arc::clone(&srv.sn);
    let started = std::time::Instant::now();
    srv.stop().await;
    // The server waited for the prepare instead of cutting it off.
    assert!(started.elapsed() >= std::time::Duration::from_millis(300));
    assert_eq!(call.await.unwrap().unwrap(), vec!["bind"]);
    assert_eq!(sn.stat("slow").unwrap().kind, snapshots::Kind::Active);
}

/// The List stream of every snapshot.
async fn list_all(c: &mut Client) -> tonic::Streaming<pb::ListSnapshotsResponse> {
    c.list(pb::ListSnapshotsRequest {
        snapshotter: "snapshotd".into(),
        filters: vec![],
    })
    .await
    .unwrap()
    .into_inner()
}

/// Makes `n` snapshots (native, no_sync) carrying `label_bytes` of labels each.
fn many_with_labels(sn: &dyn snapshots::Snapshotter, n: usize, label_bytes: usize) {
    let value = "v".repeat(3900);
    for i in 0..n {
        let labels: snapshots::Labels = (0..label_bytes.div_ceil(4000))
            .map(|l| (format!("l{l}"), value.clone()))
            .collect();
        sn.prepare(&format!("s{i}"), "", &snapshots::CreateOptions { labels })
            .unwrap();
    }
}

async fn no_sync_server() -> TestServer {
    let dir = tempfile::tempdir().unwrap();
    let mut options = snapshots::Options::default();
    options.common.no_sync = true;
    let sn = snapshots::open(
        snapshots::Backend::Native,
        &dir.path().join("root"),
        &options,
    )
    .unwrap();
    TestServer::with(dir, std::sync::Arc::from(sn)).await
}

/// A batch is bounded by bytes as well as by count: snapshots with large labels never make
/// a message near gRPC's 16 MiB limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_batches_are_bounded_by_bytes() {
    let srv = no_sync_server().await;
    many_with_labels(&*srv.sn, 100, 60_000);
    let mut c = srv.client().await;
    let mut stream = list_all(&mut c).await;
    let (mut messages, mut infos) = (0, 0);
    while let Some(msg) = stream.message().await.unwrap() {
        let len = prost::Message::encoded_len(&msg);
        assert!(
            len <= snapshotd::service::LIST_BATCH_BYTES + 70_000,
            "a {len}-byte List message"
        );
        messages += 1;
        infos += msg.info.len();
    }
    assert_eq!(infos, 100);
    assert!(messages >= 6, "6 MB of infos in {messages} messages");
    srv.stop().await;
}

/// A client that opens List and stops reading neither pins the daemon's shutdown nor keeps
/// it from exiting: the stream is ended and the server returns within its grace period.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_a_list_whose_client_stopped_reading() {
    let srv = no_sync_server().await;
    many_with_labels(&*srv.sn, 600, 12_000);
    let mut c = srv.client().await;
    let mut stream = list_all(&mut c).await;
    // One message read, then the client sits on the stream.
    assert!(stream.message().await.unwrap().is_some());
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let t = std::time::Instant::now();
    tokio::time::timeout(
        snapshotd::server::STREAM_GRACE + std::time::Duration::from_secs(10),
        srv.stop(),
    )
    .await
    .expect("the server did not stop while a client sat on a List stream");
    println!("stopped after {:?}", t.elapsed());
    drop(stream);
}
