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
