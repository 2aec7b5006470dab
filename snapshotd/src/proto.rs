//! Code generated from containerd's protos (compiled with protox at build time; see
//! `build.rs` and `proto/`). The modules nest by proto package, as containerd's do.
#![allow(missing_docs)]
#![allow(clippy::all)]

/// `package containerd...`
pub mod containerd {
    /// `package containerd.types`: `Mount`, `Descriptor`.
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
        /// `package containerd.services.namespaces`
        pub mod namespaces {
            /// `package containerd.services.namespaces.v1`: `Namespaces.List`.
            pub mod v1 {
                tonic::include_proto!("containerd.services.namespaces.v1");
            }
        }
        /// `package containerd.services.containers`
        pub mod containers {
            /// `package containerd.services.containers.v1`: `Containers.List`.
            pub mod v1 {
                tonic::include_proto!("containerd.services.containers.v1");
            }
        }
        /// `package containerd.services.leases`
        pub mod leases {
            /// `package containerd.services.leases.v1`: `Leases.List`, `ListResources`.
            pub mod v1 {
                tonic::include_proto!("containerd.services.leases.v1");
            }
        }
        /// `package containerd.services.images`
        pub mod images {
            /// `package containerd.services.images.v1`: `Images.List`.
            pub mod v1 {
                tonic::include_proto!("containerd.services.images.v1");
            }
        }
        /// `package containerd.services.content`
        pub mod content {
            /// `package containerd.services.content.v1`: `Content.List`.
            pub mod v1 {
                tonic::include_proto!("containerd.services.content.v1");
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
