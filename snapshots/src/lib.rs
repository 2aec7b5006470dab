//! Layered filesystem snapshots, exact to containerd's snapshotter contract: one trait,
//! [`Snapshotter`], and the backends that implement it, chosen with Cargo features.
//!
//! | feature | backend | default |
//! |---|---|---|
//! | `native` | [`snapshot_native`]: copies, works on any filesystem | yes |
//! | `overlay` | [`snapshot_overlay`]: overlayfs, the usual choice on Linux | yes |
//! | `btrfs` | `snapshot_btrfs`: btrfs subvolumes (links libbtrfsutil) | no |
//!
//! Each backend is an optional dependency: a crate that enables only `native` compiles
//! none of the others. [`open`] opens a backend by [`Backend`] (parsed from its name);
//! everything of `snapshot-core` is re-exported here, so one dependency is enough.
//!
//! ```no_run
//! use snapshots::{open, Backend, CommitOptions, CreateOptions, Options, Snapshotter};
//!
//! # fn main() -> snapshots::Result<()> {
//! let backend: Backend = "native".parse()?;
//! let sn = open(backend, "/var/lib/my-snapshots".as_ref(), &Options::default())?;
//! sn.prepare("extract-1", "", &CreateOptions::default())?;
//! // ... mount, unpack, unmount ...
//! sn.commit("layer-1", "extract-1", &CommitOptions::default())?;
//! # Ok(()) }
//! ```
#![warn(missing_docs)]

use std::fmt;
use std::path::Path;
use std::str::FromStr;

pub use snapshot_core;
pub use snapshot_core::{
    error, filter, keyspace, labels, layout, metastore, mount, usage, Cleaner, CommitOptions,
    CreateOptions, Error, ErrorKind, Info, Kind, Labels, Mount, Result, Snapshotter, Usage,
};
/// containerd's namespaced metadata layer over any backend (namespaces, back-links,
/// remote-snapshot targets, garbage collection).
pub use snapshot_metadata as metadata;

#[cfg(feature = "btrfs")]
pub use snapshot_btrfs;
#[cfg(feature = "native")]
pub use snapshot_native;
#[cfg(feature = "overlay")]
pub use snapshot_overlay;

/// A snapshot backend, by the name containerd gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    /// Copies: works on any filesystem (`native`).
    Native,
    /// overlayfs (`overlay`, containerd's `overlayfs`).
    Overlay,
    /// btrfs subvolumes (`btrfs`).
    Btrfs,
}

impl Backend {
    /// Every backend, compiled in or not.
    pub const ALL: [Backend; 3] = [Backend::Native, Backend::Overlay, Backend::Btrfs];

    /// The backend's name: `native`, `overlay`, `btrfs`.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Native => "native",
            Backend::Overlay => "overlay",
            Backend::Btrfs => "btrfs",
        }
    }

    /// containerd's name for the backend (`native`, `overlayfs`, `btrfs`), as its
    /// `containerd.io/gc.ref.snapshot.<name>` labels spell it.
    pub fn containerd_name(self) -> &'static str {
        match self {
            Backend::Native => "native",
            Backend::Overlay => "overlayfs",
            Backend::Btrfs => "btrfs",
        }
    }

    /// Whether this build has the backend (its Cargo feature is on).
    pub fn is_compiled(self) -> bool {
        match self {
            Backend::Native => cfg!(feature = "native"),
            Backend::Overlay => cfg!(feature = "overlay"),
            Backend::Btrfs => cfg!(feature = "btrfs"),
        }
    }

    /// The capabilities containerd's proxy-plugin configuration names for this backend
    /// on this machine (`capabilities = [...]` in `[proxy_plugins.<name>]`, containerd
    /// 2.x, which never asks the proxy): for overlay `rebase` (its layers are diffs and
    /// can be committed onto another parent) and, where the kernel idmaps overlay lower
    /// layers (Linux 5.19+), `remap-ids` (ID-mapped snapshots for containers in user
    /// namespaces, no chowned copy of the image); none for native and btrfs, whose layers
    /// are full copies and refuse a rebasing Commit, and which containerd serves user
    /// namespaces by chowning a copy.
    pub fn capabilities(self) -> Vec<&'static str> {
        match self {
            Backend::Overlay => {
                let mut caps = vec!["rebase"];
                if snapshot_core::idmap::overlay_idmaps_lowers() {
                    caps.push("remap-ids");
                }
                caps
            }
            Backend::Native | Backend::Btrfs => Vec::new(),
        }
    }

    /// The backends this build has.
    pub fn compiled() -> Vec<Backend> {
        Backend::ALL
            .into_iter()
            .filter(|b| b.is_compiled())
            .collect()
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Backend {
    type Err = Error;

    /// Parses `native`, `overlay` (or containerd's `overlayfs`) and `btrfs`,
    /// case-insensitively. A backend that is not compiled in still parses; [`open`] says
    /// which feature it needs.
    fn from_str(s: &str) -> Result<Backend> {
        match s.to_ascii_lowercase().as_str() {
            "native" => Ok(Backend::Native),
            "overlay" | "overlayfs" => Ok(Backend::Overlay),
            "btrfs" => Ok(Backend::Btrfs),
            _ => Err(Error::invalid_argument(format!(
                "unknown snapshot backend {s:?}: use native, overlay or btrfs"
            ))),
        }
    }
}

/// Options for [`open`]: the options every backend takes, passed whole to whichever
/// backend opens, and what only overlay has.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct Options {
    /// Durability, `sync`, the remove mode and the map size: every backend gets these.
    pub common: snapshot_core::lifecycle::Options,
    /// What only the overlay backend has (upperdir label, mount options, `redirect_dir`,
    /// `userxattr`). Its own `options` field is ignored: [`open`] puts `common` there.
    #[cfg(feature = "overlay")]
    pub overlay: snapshot_overlay::OverlayConfig,
}

/// Opens `backend` at `root` with `options`.
///
/// # Errors
/// NotImplemented naming the Cargo feature when the backend is not compiled in; whatever
/// the backend's open returns.
pub fn open(backend: Backend, root: &Path, options: &Options) -> Result<Box<dyn Snapshotter>> {
    let common = &options.common;
    let _ = common;
    match backend {
        #[cfg(feature = "native")]
        Backend::Native => Ok(Box::new(snapshot_native::NativeSnapshotter::open(
            root,
            common.clone(),
        )?)),
        #[cfg(feature = "overlay")]
        Backend::Overlay => Ok(Box::new(snapshot_overlay::OverlaySnapshotter::open(
            root,
            snapshot_overlay::OverlayConfig {
                options: common.clone(),
                ..options.overlay.clone()
            },
        )?)),
        #[cfg(feature = "btrfs")]
        Backend::Btrfs => Ok(Box::new(snapshot_btrfs::BtrfsSnapshotter::open_with(
            root, common,
        )?)),
        #[allow(unreachable_patterns)]
        other => Err(Error::not_implemented(format!(
            "snapshot backend {other} at {} is not compiled in: build with the Cargo feature \
             {other:?} of the snapshots crate (this build has: {})",
            root.display(),
            compiled_names()
        ))),
    }
}

/// The backend [`detect`] chose, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detected {
    /// The backend to open.
    pub backend: Backend,
    /// Why, for a log line: "the root holds a native store", "... supports overlayfs", or
    /// why overlay is not usable there.
    pub reason: String,
}

/// Chooses the backend for `root` as the daemon does when none is configured: the one
/// whose store the root already holds; for a new root, overlay where an overlay with its
/// upper directory on the root's filesystem mounts (containerd's check), else native,
/// which works anywhere. A new root's check writes a scratch directory under it.
pub fn detect(root: &Path) -> Detected {
    match snapshot_core::lifecycle::recorded_backend(root) {
        Ok(Some(name)) => match name.parse::<Backend>() {
            Ok(backend) => {
                return Detected {
                    backend,
                    reason: format!("{} holds a {backend} store", root.display()),
                }
            }
            Err(e) => log::warn!("{}: {e}", root.display()),
        },
        Ok(None) => {}
        Err(e) => log::warn!("{e}"),
    }
    #[cfg(feature = "overlay")]
    {
        match snapshot_overlay::probe::overlay_mounts_on(root) {
            Ok(()) => Detected {
                backend: Backend::Overlay,
                reason: format!("{} supports overlayfs", root.display()),
            },
            Err(e) => Detected {
                backend: Backend::Native,
                reason: format!("overlay is not usable at {}: {e}", root.display()),
            },
        }
    }
    #[cfg(not(feature = "overlay"))]
    Detected {
        backend: Backend::Native,
        reason: "overlay is not compiled in".to_string(),
    }
}

fn compiled_names() -> String {
    let names: Vec<&str> = Backend::compiled().into_iter().map(Backend::name).collect();
    if names.is_empty() {
        "none".to_string()
    } else {
        names.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_names_round_trip() {
        for b in Backend::ALL {
            assert_eq!(b.name().parse::<Backend>().unwrap(), b);
            assert_eq!(b.to_string(), b.name());
        }
        assert_eq!("OverlayFS".parse::<Backend>().unwrap(), Backend::Overlay);
        let err = "zfs".parse::<Backend>().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument);
        assert!(err.to_string().contains("zfs"), "{err}");
    }

    #[test]
    fn only_overlay_can_rebase() {
        assert_eq!(Backend::Overlay.capabilities()[0], "rebase");
        assert_eq!(
            Backend::Overlay.capabilities().contains(&"remap-ids"),
            snapshot_core::idmap::overlay_idmaps_lowers()
        );
        assert!(Backend::Native.capabilities().is_empty());
        assert!(Backend::Btrfs.capabilities().is_empty());
    }

    #[cfg(feature = "native")]
    #[test]
    fn detect_keeps_the_backend_a_root_holds() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        open(Backend::Native, &root, &Options::default())
            .unwrap()
            .close()
            .unwrap();
        let d = detect(&root);
        assert_eq!(d.backend, Backend::Native, "{d:?}");
        assert!(d.reason.contains("holds a native store"), "{d:?}");
        // And another backend is refused on it, naming both.
        #[cfg(feature = "overlay")]
        if snapshot_testsuite::privileged::require_privileged("snapshots::detect_refuses_overlay") {
            let err = open(Backend::Overlay, &root, &Options::default())
                .err()
                .unwrap();
            assert_eq!(err.kind(), ErrorKind::FailedPrecondition, "{err}");
            assert!(err.to_string().contains("native") && err.to_string().contains("overlay"));
        }
    }

    #[test]
    fn compiled_matches_features() {
        assert_eq!(Backend::Native.is_compiled(), cfg!(feature = "native"));
        assert_eq!(Backend::Overlay.is_compiled(), cfg!(feature = "overlay"));
        assert_eq!(Backend::Btrfs.is_compiled(), cfg!(feature = "btrfs"));
    }

    #[test]
    fn missing_backend_is_not_implemented() {
        let tmp = tempfile::tempdir().unwrap();
        for b in Backend::ALL.into_iter().filter(|b| !b.is_compiled()) {
            let err = open(b, tmp.path(), &Options::default())
                .err()
                .expect("must fail");
            assert_eq!(err.kind(), ErrorKind::NotImplemented);
            assert!(err.to_string().contains(b.name()), "{err}");
        }
    }

    #[cfg(feature = "native")]
    #[test]
    fn native_opens_and_round_trips() {
        let tmp = tempfile::tempdir().unwrap();
        let sn = open(Backend::Native, tmp.path(), &Options::default()).unwrap();
        sn.prepare("a", "", &CreateOptions::default()).unwrap();
        sn.commit("b", "a", &CommitOptions::default()).unwrap();
        assert_eq!(sn.stat("b").unwrap().kind, Kind::Committed);
        sn.close().unwrap();
    }

    #[cfg(feature = "overlay")]
    #[test]
    fn overlay_opens_when_privileged() {
        if !snapshot_testsuite::privileged::require_privileged("snapshots::overlay_opens") {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let sn = open(Backend::Overlay, tmp.path(), &Options::default()).unwrap();
        sn.prepare("a", "", &CreateOptions::default()).unwrap();
        sn.commit("b", "a", &CommitOptions::default()).unwrap();
        let mounts = sn.prepare("c", "b", &CreateOptions::default()).unwrap();
        assert_eq!(mounts[0].kind, "overlay");
        assert!(sn.as_cleaner().is_some());
        sn.close().unwrap();
    }
}
