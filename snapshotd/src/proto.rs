//! Code generated from containerd's protos (compiled with protox at build time; see
//! `build.rs` and `proto/`). The modules nest by proto package, as containerd's do.
#![allow(missing_docs)]
#![allow(clippy::all)]

/// `package containerd...`
pub mod containerd {
    /// `package containerd.types`: `Mount`.
    pub mod types {
        tonic::include_proto!("containerd.types");
    }
    /// `package containerd.services...`
    pub mod services {
        /// `package containerd.services.snapshots`
        pub mod snapshots {
            /// `package containerd.services.snapshots.v1`: the `Snapshots` service.
            pub mod v1 {
                tonic::include_proto!("containerd.services.snapshots.v1");
            }
        }
    }
}

/// `package snapshotd.v1`: the `Collector` service (garbage collection on demand).
pub mod snapshotd_v1 {
    tonic::include_proto!("snapshotd.v1");
}

pub use containerd::services::snapshots::v1 as snapshots;
pub use containerd::types;
pub use snapshotd_v1 as collector;
