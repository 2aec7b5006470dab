//! The contract every snapshot backend implements, and the pieces they share.
//!
//! - [`Snapshotter`] and [`Cleaner`]: the trait of containerd's snapshotters, with the
//!   model, the lifecycle and examples in its documentation;
//! - [`Kind`], [`Info`], [`Usage`], [`Mount`], [`CreateOptions`], [`CommitOptions`];
//! - [`Error`] with containerd's error kinds ([`ErrorKind`]);
//! - [`keyspace`]: what keys and labels may be;
//! - [`filter`]: containerd's filter language for walks;
//! - [`metastore`]: the LMDB store of snapshot metadata;
//! - [`lifecycle`]: the crash-safe create, commit and remove every backend shares, over a
//!   backend's [`lifecycle::Storage`];
//! - [`layout`]: the filesystem steps it is made of (root lock, renames, fsyncs);
//! - [`usage`]: disk usage of a tree;
//! - [`mount`]: mounting what a snapshotter returns (long overlay stacks included).
#![warn(missing_docs)]

mod blank;
pub mod error;
pub mod filter;
pub mod fsck;
pub mod idmap;
mod idmount;
pub mod keyspace;
pub mod layout;
pub mod lifecycle;
pub mod metastore;
pub mod mount;
pub mod quota;
mod record;
mod snapshotter;
mod types;
pub mod usage;
mod walk;

pub use error::{Error, ErrorKind, Result};
pub use snapshotter::{Cleaner, Snapshotter};
pub use types::{labels, CommitOptions, CreateOptions, Info, Kind, Labels, Mount, Usage};
