//! snapshotd: a containerd proxy snapshotter. It serves containerd's snapshots gRPC API
//! (`containerd.services.snapshots.v1.Snapshots`, the wire format of containerd's
//! `snapshots.proto` and `mount.proto`) on a unix socket, backed by one of the
//! [`snapshots`] backends, so containerd loads it as a `proxy_plugins` snapshotter:
//!
//! ```toml
//! # /etc/containerd/config.toml
//! version = 2
//! [proxy_plugins.snapshotd]
//!   type = "snapshot"
//!   address = "/run/snapshotd/snapshotd.sock"
//! ```
//!
//! `snapshotd --print-containerd-config 1|2` prints the whole entry for containerd 1.x or
//! 2.x (capabilities, exports, the transfer service's unpack entry): [`containerd`].
//!
//! The library holds the pieces the two binaries share: the generated protocol code
//! ([`proto`]), conversions and the error-to-status mapping ([`convert`]), the service
//! ([`service`]), configuration ([`config`]), containerd's configuration for it ([`containerd`]), the socket and serving loop ([`server`]),
//! systemd readiness ([`notify`]), a client ([`client`]), a small stderr logger
//! ([`logger`]) and RFC 3339 times ([`time`]).
#![warn(missing_docs)]

pub mod client;
pub mod config;
pub mod containerd;
pub mod containerd_view;
pub mod convert;
pub mod error;
pub mod logger;
pub mod metrics;
pub mod notify;
pub mod proto;
pub mod server;
pub mod service;
pub mod time;
