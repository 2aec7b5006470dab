//! containerd's namespaced metadata layer over any [`Snapshotter`]: what containerd's
//! `metadata/snapshot.go` and `metadata/gc.go` put in front of every backend, for programs
//! that use the backends without containerd.
//!
//! - **Namespaces**: [`Metadata::namespace`] gives a [`Namespaced`] view, itself a
//!   [`Snapshotter`]; the same key in two namespaces names two snapshots. The backend
//!   sees keys `<namespace>/<sequence>/<key>` that no client chooses. Names follow
//!   containerd's rules ([`validate_namespace`]).
//! - **Back-links**: a parent records its children per namespace; Remove of a parent is
//!   FailedPrecondition while it has children there. Remove only unlinks the record: the
//!   backend's snapshot goes with the next collection.
//! - **Labels**: only [`TARGET_LABEL`] and labels under [`INHERITED_PREFIX`] reach the
//!   backend; the rest live in the layer. Stat, Update and Walk show the backend's labels
//!   with the layer's written over them; Walk filters the merged view.
//! - **Remote snapshots**: a Prepare labelled [`TARGET_LABEL`]` = <target>` whose backend
//!   answers AlreadyExists (it has a committed snapshot with that target and the same
//!   parent) records `<target>` in the namespace, pointing at that backend snapshot (no
//!   copy), and returns AlreadyExists so the caller skips unpacking. With
//!   [`MetadataOptions::share_targets`], a target another namespace committed is shared
//!   the same way (this trusts every namespace).
//! - **Races** end as if ordered: a create holds its key until its record commits, a
//!   Commit records its intent first (roots for a collection, and a link that keeps its
//!   parent), a collection spares what records written since its mark keep alive and the
//!   backend keys calls pinned while it swept, and deletes records leaves first.
//! - **Garbage collection**: [`Metadata::collect`] (see [`gc`]) removes what no root
//!   ([`ROOT_LABEL`]) reaches through parents and [`REF_PREFIX`] labels, then every backend
//!   snapshot no record names, leaves first, outside the metadata transaction.
//! - **Scheduling**: a [`Scheduler`] runs collections in the background on containerd's
//!   policy ([`GcPolicy`]: at most 2 % of the time in the metadata transaction).
//! - **Crash safety**: a record is written only after its backend snapshot exists, and a
//!   backend snapshot is removed only after no record names it; a crash in between leaves
//!   a backend snapshot no record names, which the next collection removes (a store is
//!   dirty when opened).
//!
//! ```
//! use std::sync::Arc;
//! use snapshot_core::{CreateOptions, CommitOptions, Snapshotter};
//! use snapshot_metadata::{Metadata, MetadataOptions};
//! # let dir = tempfile::tempdir().unwrap();
//! let backend = snapshot_native::NativeSnapshotter::open(&dir.path().join("native"), Default::default()).unwrap();
//! let md = Metadata::open(&dir.path().join("ns"), Arc::new(backend), &MetadataOptions::default()).unwrap();
//! let a = md.namespace("team-a").unwrap();
//! let b = md.namespace("team-b").unwrap();
//! a.prepare("layer", "", &CreateOptions::default()).unwrap();
//! b.prepare("layer", "", &CreateOptions::default()).unwrap(); // another snapshot
//! a.commit("base", "layer", &CommitOptions::default()).unwrap();
//! assert!(b.stat("base").is_err());
//! a.remove("base").unwrap();
//! // Nothing labelled containerd.io/gc.root: the collection takes everything.
//! let done = md.collect().unwrap();
//! assert_eq!(done.records.len(), 1);
//! assert_eq!(done.backend.len(), 2);
//! ```

pub mod gc;
mod layer;
mod namespace;
pub mod scheduler;
mod store;

pub use gc::{Collection, REF_PREFIX, ROOT_LABEL};
pub use layer::{
    inherited_labels, Metadata, MetadataOptions, Namespaced, INHERITED_PREFIX, TARGET_LABEL,
};
pub use namespace::{validate_namespace, MAX_NAMESPACE};
pub use scheduler::{GcPolicy, GcStats, Scheduler};

#[doc(no_inline)]
pub use snapshot_core::Snapshotter;
