//! The values a snapshotter hands out: [`Kind`], [`Info`], [`Usage`], [`Mount`] and the
//! options of the calls that create snapshots.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::SystemTime;

use crate::error::Error;

/// Labels of a snapshot: string keys to string values, ordered for stable output.
pub type Labels = BTreeMap<String, String>;

/// The kind of a snapshot. The numeric values are containerd's (and its proto's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Kind {
    /// A read-only snapshot of a committed parent, made by `view`.
    View = 1,
    /// A writable snapshot, made by `prepare`; the only kind that can be committed.
    Active = 2,
    /// An immutable snapshot, made by `commit`; the only kind that can be a parent.
    Committed = 3,
}

impl Kind {
    /// The lowercase name used by the filter language (`kind==active`).
    pub fn as_filter_str(self) -> &'static str {
        match self {
            Kind::View => "view",
            Kind::Active => "active",
            Kind::Committed => "committed",
        }
    }

    /// Decodes containerd's numeric value (1, 2, 3); `None` for anything else.
    pub fn from_u8(v: u8) -> Option<Kind> {
        match v {
            1 => Some(Kind::View),
            2 => Some(Kind::Active),
            3 => Some(Kind::Committed),
            _ => None,
        }
    }
}

impl fmt::Display for Kind {
    /// containerd's `Kind.String()`: `View`, `Active`, `Committed`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::View => "View",
            Kind::Active => "Active",
            Kind::Committed => "Committed",
        })
    }
}

impl FromStr for Kind {
    type Err = Error;

    /// Parses a kind name case-insensitively, as containerd's `ParseKind`.
    fn from_str(s: &str) -> Result<Self, Error> {
        match s.to_ascii_lowercase().as_str() {
            "view" => Ok(Kind::View),
            "active" => Ok(Kind::Active),
            "committed" => Ok(Kind::Committed),
            _ => Err(Error::invalid_argument(format!(
                "unknown snapshot kind {s:?}: use view, active or committed"
            ))),
        }
    }
}

/// What `stat` reports of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Info {
    /// Active, View or Committed.
    pub kind: Kind,
    /// The key (active and view snapshots) or name (committed snapshots).
    pub name: String,
    /// The name of the committed parent; empty for a root snapshot.
    pub parent: String,
    /// The snapshot's labels.
    pub labels: Labels,
    /// When the snapshot was created (for a committed snapshot: committed).
    pub created: SystemTime,
    /// When the snapshot was last changed; equal to `created` until an `update`.
    pub updated: SystemTime,
}

impl Info {
    /// An `Info` with the given kind and name, no parent, no labels, and both times set
    /// to the Unix epoch. Useful to build the argument of `update`.
    pub fn new(kind: Kind, name: impl Into<String>) -> Info {
        Info {
            kind,
            name: name.into(),
            parent: String::new(),
            labels: Labels::new(),
            created: SystemTime::UNIX_EPOCH,
            updated: SystemTime::UNIX_EPOCH,
        }
    }
}

/// Disk usage of a snapshot's own layer (not its parents).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Bytes allocated on disk: the sum of `st_blocks * 512` over unique inodes.
    pub size: u64,
    /// The number of unique inodes, the layer's root directory included.
    pub inodes: u64,
}

impl Usage {
    /// Adds another usage figure to this one.
    pub fn add(&mut self, other: Usage) {
        self.size += other.size;
        self.inodes += other.inodes;
    }
}

/// One mount of the list a snapshotter returns. It has no target: the caller picks it.
///
/// `kind` is the filesystem type as `mount(8)` names it ("bind", "overlay", "btrfs").
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Mount {
    /// The mount type: "bind", "overlay", "btrfs", ...
    pub kind: String,
    /// The source: a directory for binds, "overlay" for overlays, a device for btrfs.
    pub source: String,
    /// Options in the order they must be applied, as `mount -o` takes them.
    pub options: Vec<String>,
}

impl Mount {
    /// A mount of `kind` from `source` with `options`.
    pub fn new(kind: impl Into<String>, source: impl Into<String>, options: Vec<String>) -> Self {
        Mount {
            kind: kind.into(),
            source: source.into(),
            options,
        }
    }

    /// True if the options make this mount read-only.
    pub fn is_read_only(&self) -> bool {
        self.options.iter().any(|o| o == "ro")
    }
}

/// Options of `prepare` and `view`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CreateOptions {
    /// Labels of the new snapshot.
    pub labels: Labels,
}

impl CreateOptions {
    /// Options that set `labels`.
    pub fn with_labels(labels: Labels) -> Self {
        CreateOptions { labels }
    }
}

/// Options of `commit`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommitOptions {
    /// Labels of the committed snapshot; the active snapshot's labels are not carried over.
    pub labels: Labels,
    /// Rebase (containerd 2.2's `WithParent`): empty keeps the active snapshot's parent.
    /// A parentless active snapshot adopts this parent; a different existing parent is
    /// InvalidArgument; a parent that is not committed is FailedPrecondition.
    pub parent: String,
}

impl CommitOptions {
    /// Options that set `labels`.
    pub fn with_labels(labels: Labels) -> Self {
        CommitOptions {
            labels,
            parent: String::new(),
        }
    }
}

/// Builds [`Labels`] from pairs: `labels([("a", "1")])`.
pub fn labels<K: Into<String>, V: Into<String>>(pairs: impl IntoIterator<Item = (K, V)>) -> Labels {
    pairs
        .into_iter()
        .map(|(k, v)| (k.into(), v.into()))
        .collect()
}
