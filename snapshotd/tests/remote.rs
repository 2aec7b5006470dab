//! The whole conformance suite through the daemon: a native backend served by
//! `snapshotd::server::serve` on a unix socket ([`snapshotd::server::Background`]), driven
//! through [`snapshotd::client::RemoteSnapshotter`], the `Snapshotter` trait over gRPC. Every case
//! that passes in process must pass through the socket.

use std::path::Path;

use snapshot_testsuite::{snapshotter_suite, Harness};
use snapshotd::server::Background;
use snapshots::{Backend, Options, Result, Snapshotter};

/// The native backend, served on a socket and reached through it.
struct ThroughDaemon;

impl Harness for ThroughDaemon {
    fn name(&self) -> &str {
        "native through snapshotd"
    }
    fn open(&self, root: &Path) -> Result<Box<dyn Snapshotter>> {
        let sn = snapshots::open(Backend::Native, root, &Options::default())?;
        Ok(Box::new(Background::serve(sn)?))
    }
}

snapshotter_suite!(through_daemon, ThroughDaemon);

/// The namespaced metadata layer over native, served as `snapshotd --namespaced` serves it
/// and reached in namespace `default` through the `containerd-namespace` header. Remove is
/// deferred to a collection, which the suite's cleanup runs.
struct NamespacedThroughDaemon;

impl Harness for NamespacedThroughDaemon {
    fn name(&self) -> &str {
        "namespaced native through snapshotd"
    }
    fn open(&self, root: &Path) -> Result<Box<dyn Snapshotter>> {
        let sn = snapshots::open(Backend::Native, &root.join("backend"), &Options::default())?;
        let md = snapshots::metadata::Metadata::open(
            &root.join("namespaces"),
            std::sync::Arc::from(sn),
            &Default::default(),
        )?;
        Ok(Box::new(Background::serve_namespaced(md, "default")?))
    }
    fn capabilities(&self) -> snapshot_testsuite::Capabilities {
        snapshot_testsuite::Capabilities {
            deferred_remove: true,
            ..Default::default()
        }
    }
}

snapshotter_suite!(namespaced_through_daemon, NamespacedThroughDaemon);

#[test]
fn a_namespaced_daemon_keeps_namespaces_apart_and_requires_one() {
    use snapshots::{CreateOptions, ErrorKind};
    let tmp = tempfile::tempdir().unwrap();
    let sn = snapshots::open(
        Backend::Native,
        &tmp.path().join("backend"),
        &Options::default(),
    )
    .unwrap();
    let md = snapshots::metadata::Metadata::open(
        &tmp.path().join("namespaces"),
        std::sync::Arc::from(sn),
        &Default::default(),
    )
    .unwrap();
    let a = Background::serve_namespaced(std::sync::Arc::clone(&md), "a").unwrap();
    let socket = a.socket();
    let b = snapshotd::client::RemoteSnapshotter::connect_in(&socket, Some("b")).unwrap();
    let none = snapshotd::client::RemoteSnapshotter::connect(&socket).unwrap();
    a.prepare("k", "", &CreateOptions::default()).unwrap();
    assert_eq!(b.stat("k").unwrap_err().kind(), ErrorKind::NotFound);
    b.prepare("k", "", &CreateOptions::default()).unwrap();
    let e = none.stat("k").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::FailedPrecondition, "{e}");
    assert!(e.to_string().contains("namespace is required"), "{e}");
    let bad = snapshotd::client::RemoteSnapshotter::connect_in(&socket, Some("a..b")).unwrap();
    assert_eq!(
        bad.stat("k").unwrap_err().kind(),
        ErrorKind::InvalidArgument
    );
    let mut names = Vec::new();
    md.backend()
        .walk(&[], &mut |i| {
            names.push(i.name.clone());
            Ok(())
        })
        .unwrap();
    names.sort();
    assert_eq!(names, vec!["a/1/k", "b/1/k"]);
}
