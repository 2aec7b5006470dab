//! A store's self-audit: what [`SnapshotStore::fsck`](crate::lifecycle::SnapshotStore::fsck)
//! finds when it cross-checks the metastore, the directories under the root and the live
//! mounts (`/proc/self/mountinfo`), and the report it returns.
//!
//! What counts as a finding:
//! - **orphan directory**: a tree `<kind dir>/<id>` no record owns (a crash between a
//!   tree's publish and its record, a copy restored over the root). Holds space no
//!   snapshot accounts for. Repaired: deleted (ids are never reused, so no record can
//!   come to own it).
//! - **stale staging**: a staging tree no running call of this store owns (a process
//!   killed while it built a snapshot). Repaired: deleted (the root lock means no other
//!   process can be building in it).
//! - **record without directory**: a snapshot whose tree is missing (deleted by hand, a
//!   lost restore). Its data is gone; never repaired: the caller decides what replaces it.
//! - **leaked mount**: a mount that uses a tree of a snapshot that no longer exists (a
//!   container's rootfs left mounted after its snapshot was removed), or that is mounted
//!   inside the root. Never repaired: something may still use it.
//! - **unknown entry**: a file in a kind directory that the store never makes. Never
//!   repaired.
//!
//! Not findings: retired trees (`rm-*`) awaiting cleanup are listed as *pending* (with
//! `--repair`, cleanup deletes them), and the trees of calls in flight and blank trees
//! made ahead are skipped.

use std::path::{Path, PathBuf};

use crate::mount::{mount_of, MountEntry};
use crate::types::Usage;

/// What a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FindingKind {
    /// A tree no record owns.
    OrphanDirectory,
    /// A staging tree no running call owns.
    StaleStaging,
    /// A snapshot whose tree is missing.
    RecordWithoutDirectory,
    /// A mount of a removed snapshot's tree, or one inside the root.
    LeakedMount,
    /// A file in a kind directory the store never makes.
    UnknownEntry,
    /// (containerd's view) A backend snapshot that no namespace of containerd knows.
    UnknownToContainerd,
    /// (containerd's view) An active snapshot no container and no lease uses.
    UnusedActive,
}

impl FindingKind {
    /// Every kind, in report order.
    pub const ALL: [FindingKind; 7] = [
        FindingKind::OrphanDirectory,
        FindingKind::StaleStaging,
        FindingKind::RecordWithoutDirectory,
        FindingKind::LeakedMount,
        FindingKind::UnknownEntry,
        FindingKind::UnknownToContainerd,
        FindingKind::UnusedActive,
    ];

    /// The kind's name in reports, JSON and metrics (`orphan-directory`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            FindingKind::OrphanDirectory => "orphan-directory",
            FindingKind::StaleStaging => "stale-staging",
            FindingKind::RecordWithoutDirectory => "record-without-directory",
            FindingKind::LeakedMount => "leaked-mount",
            FindingKind::UnknownEntry => "unknown-entry",
            FindingKind::UnknownToContainerd => "unknown-to-containerd",
            FindingKind::UnusedActive => "unused-active",
        }
    }

    /// The kind named `s` ([`as_str`](Self::as_str)).
    pub fn parse(s: &str) -> Option<FindingKind> {
        FindingKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl std::fmt::Display for FindingKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One finding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// What it is.
    pub kind: FindingKind,
    /// The directory or mount point concerned.
    pub path: Option<PathBuf>,
    /// The snapshot's key, where a record names it.
    pub key: Option<String>,
    /// The internal id, where known.
    pub id: Option<u64>,
    /// The space it holds (a directory's), where it could be measured.
    pub usage: Option<Usage>,
    /// Who owns it, where that can be known (a containerd namespace, a container, a lease,
    /// an image).
    pub owner: Option<String>,
    /// What was seen and what to do.
    pub detail: String,
    /// Whether `--repair` fixed it.
    pub repaired: bool,
}

/// A retired tree awaiting cleanup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    /// The tree (`rm-*`).
    pub path: PathBuf,
    /// Its size, where it could be measured.
    pub usage: Option<Usage>,
    /// Whether `--repair` deleted it.
    pub deleted: bool,
}

/// What an audit saw and found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FsckReport {
    /// The backend (`overlay`, ...).
    pub backend: String,
    /// The store's root.
    pub root: PathBuf,
    /// Records read.
    pub records: usize,
    /// Entries of the kind directories read.
    pub directories: usize,
    /// Mounts that use a tree of this store.
    pub mounts: usize,
    /// The findings, by kind then path.
    pub findings: Vec<Finding>,
    /// Retired trees awaiting cleanup (not findings).
    pub pending: Vec<Pending>,
}

impl FsckReport {
    /// The findings `--repair` left.
    pub fn unrepaired(&self) -> usize {
        self.findings.iter().filter(|f| !f.repaired).count()
    }
}

/// A path under the root that a mount uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountUse {
    /// Where the mount is.
    pub mount_point: PathBuf,
    /// The path under the root it uses (an overlay's layer, a bind's source, the mount
    /// point itself when it lies inside the root).
    pub path: PathBuf,
}

/// The paths under `root` (canonical) that the mounts `entries` use: an overlay's
/// `lowerdir`/`upperdir`/`workdir` (absolute ones; relative layer paths of the legacy
/// mount route are not resolved), the directory a bind mount or a btrfs subvolume mount
/// shows (matched by device and the mount's root), and a mount point inside the root.
pub fn mount_uses(entries: &[MountEntry], root: &Path) -> Vec<MountUse> {
    let host = mount_of(entries, root);
    // The root's path inside its filesystem, as mountinfo's fourth field shows it.
    let inside = host.and_then(|h| {
        let rest = root.strip_prefix(&h.mount_point).ok()?;
        Some(h.root.join(rest))
    });
    let mut out = Vec::new();
    for e in entries {
        let mut add = |path: PathBuf| {
            if path.starts_with(root) && path != root {
                out.push(MountUse {
                    mount_point: e.mount_point.clone(),
                    path,
                });
            }
        };
        if e.mount_point.starts_with(root) && e.mount_point != root {
            add(e.mount_point.clone());
        }
        if e.fs_type == "overlay" {
            for o in &e.super_options {
                let Some((name, value)) = o.split_once('=') else {
                    continue;
                };
                match name {
                    "lowerdir" => value
                        .split(':')
                        .filter(|p| p.starts_with('/'))
                        .for_each(|p| add(PathBuf::from(p))),
                    "lowerdir+" | "datadir+" | "upperdir" | "workdir" if value.starts_with('/') => {
                        add(PathBuf::from(value))
                    }
                    _ => {}
                }
            }
            continue;
        }
        if let (Some(h), Some(inside)) = (host, &inside) {
            if e.dev == h.dev && e.root != *inside {
                if let Ok(rest) = e.root.strip_prefix(inside) {
                    add(root.join(rest));
                }
            }
        }
    }
    out
}

/// The containerd namespace and key of a backend key that containerd's metadata layer
/// made (`<namespace>/<number>/<key>`), as an owner line.
pub fn containerd_owner(key: &str) -> Option<String> {
    let (ns, rest) = key.split_once('/')?;
    let (n, k) = rest.split_once('/')?;
    (!ns.is_empty() && !k.is_empty() && !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        .then(|| format!("containerd namespace {ns:?}, snapshot {k:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mount::parse_mountinfo;

    #[test]
    fn mounts_are_matched_to_the_trees_they_use() {
        let text = "22 1 8:1 / / rw - ext4 /dev/sda1 rw\n\
            30 22 8:2 / /var rw - ext4 /dev/sdb1 rw\n\
            40 22 0:50 / /run/c/rootfs rw - overlay overlay rw,lowerdir=/var/lib/s/snapshots/2/fs:/var/lib/s/snapshots/1/fs,upperdir=/var/lib/s/snapshots/3/fs,workdir=/var/lib/s/snapshots/3/work\n\
            41 22 0:51 / /run/d rw - overlay overlay rw,lowerdir+=/var/lib/s/snapshots/7/fs,lowerdir+=/elsewhere/x\n\
            42 22 8:2 /lib/s/snapshots/4/fs /run/v ro - ext4 /dev/sdb1 rw\n\
            43 22 8:1 /lib/s/snapshots/9/fs /run/w ro - ext4 /dev/sda1 rw\n\
            44 30 0:60 / /var/lib/s/snapshots/5/fs rw - tmpfs tmpfs rw\n";
        let e = parse_mountinfo(text);
        let uses = mount_uses(&e, Path::new("/var/lib/s"));
        let got: Vec<(&str, &str)> = uses
            .iter()
            .map(|u| (u.mount_point.to_str().unwrap(), u.path.to_str().unwrap()))
            .collect();
        assert_eq!(
            got,
            [
                ("/run/c/rootfs", "/var/lib/s/snapshots/2/fs"),
                ("/run/c/rootfs", "/var/lib/s/snapshots/1/fs"),
                ("/run/c/rootfs", "/var/lib/s/snapshots/3/fs"),
                ("/run/c/rootfs", "/var/lib/s/snapshots/3/work"),
                ("/run/d", "/var/lib/s/snapshots/7/fs"),
                // A bind of a tree on the root's device; the same path on another device
                // is another filesystem's.
                ("/run/v", "/var/lib/s/snapshots/4/fs"),
                ("/var/lib/s/snapshots/5/fs", "/var/lib/s/snapshots/5/fs"),
            ]
        );
    }

    #[test]
    fn owners_of_containerd_keys() {
        assert_eq!(
            containerd_owner("default/12/sha256:ab").as_deref(),
            Some("containerd namespace \"default\", snapshot \"sha256:ab\"")
        );
        assert_eq!(containerd_owner("plain-key"), None);
        assert_eq!(containerd_owner("a/b/c"), None);
        for k in FindingKind::ALL {
            assert_eq!(FindingKind::parse(k.as_str()), Some(k));
        }
    }
}
