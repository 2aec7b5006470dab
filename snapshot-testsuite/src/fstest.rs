//! Filesystem test helpers: an applier DSL that builds trees, and a tree comparison that
//! names the first difference.
//!
//! An [`Applier`] is a list of [`Op`]s applied in order under a root directory, like
//! continuity's `fstest.Apply`. Paths are relative to that root; a leading `/` is allowed
//! and ignored, `..` is refused so an applier can never write outside its root.
//!
//! ```
//! use snapshot_testsuite::fstest::{apply, check_directory_equal, create_dir, create_file, symlink};
//!
//! let layer = apply([
//!     create_dir("/etc", 0o755),
//!     create_file("/etc/hosts", b"127.0.0.1 localhost\n", 0o644),
//!     symlink("hosts", "/etc/hosts.link"),
//! ]);
//! let a = tempfile::tempdir().unwrap();
//! let b = tempfile::tempdir().unwrap();
//! layer.apply(a.path()).unwrap();
//! layer.apply(b.path()).unwrap();
//! check_directory_equal(a.path(), b.path()).unwrap();
//!
//! std::fs::write(b.path().join("etc/hosts"), b"changed").unwrap();
//! let diff = check_directory_equal(a.path(), b.path()).unwrap_err();
//! assert_eq!(diff.path, "/etc/hosts");
//! ```
//!
//! The comparison walks both trees without following symlinks and compares, per path:
//! the file type, permission bits (`mode & 0o7777`), owner and group, the blake3 digest
//! and size of regular files, symlink targets, device numbers, `user.*` extended
//! attributes, and which other paths of the same tree are hard links of the same file.
//! The roots themselves are not compared (their modes come from whoever made them), nor
//! are times, as in continuity's `CheckDirectoryEqual`.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

/// One step of an [`Applier`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Create or truncate a regular file with `content`, then chmod it to `mode`.
    CreateFile {
        /// Path under the root.
        path: String,
        /// The file's bytes.
        content: Vec<u8>,
        /// Permission bits, applied with chmod so the umask does not matter.
        mode: u32,
    },
    /// Create a directory and its missing parents, then chmod it to `mode`.
    CreateDir {
        /// Path under the root.
        path: String,
        /// Permission bits.
        mode: u32,
    },
    /// Create a symlink at `link` pointing to `target` (stored as given, not resolved).
    Symlink {
        /// The link's target text.
        target: String,
        /// Path of the link under the root.
        link: String,
    },
    /// Create a hard link at `link` to the existing `existing`.
    Hardlink {
        /// An existing file under the root.
        existing: String,
        /// The new name under the root.
        link: String,
    },
    /// chown(2) (following symlinks, as Go's `os.Chown`).
    Chown {
        /// Path under the root.
        path: String,
        /// New owner.
        uid: u32,
        /// New group.
        gid: u32,
    },
    /// chmod(2).
    Chmod {
        /// Path under the root.
        path: String,
        /// Permission bits.
        mode: u32,
    },
    /// Remove one file or empty directory; a missing path is an error.
    Remove {
        /// Path under the root.
        path: String,
    },
    /// Remove a path and everything below it; a missing path is fine (Go's `RemoveAll`).
    RemoveAll {
        /// Path under the root.
        path: String,
    },
    /// rename(2) `from` to `to`.
    Rename {
        /// Existing path under the root.
        from: String,
        /// New path under the root.
        to: String,
    },
    /// Set an extended attribute without following symlinks (`lsetxattr`).
    SetXattr {
        /// Path under the root.
        path: String,
        /// Attribute name, e.g. `user.origin`.
        name: String,
        /// Attribute value.
        value: Vec<u8>,
    },
}

/// A sequence of [`Op`]s applied in order under a root. Build one with the functions of
/// this module ([`create_file`], [`create_dir`], ...) and join them with [`apply`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applier {
    ops: Vec<Op>,
}

/// An error of [`Applier::apply`]: which operation failed, and the OS error.
#[derive(Debug)]
pub struct ApplyError {
    /// The operation that failed.
    pub op: Op,
    /// The OS error it returned.
    pub source: io::Error,
}

impl fmt::Display for ApplyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "applying {:?}: {}", self.op, self.source)
    }
}

impl std::error::Error for ApplyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

impl ApplyError {
    /// The raw OS error number, e.g. `EXDEV` for a refused rename.
    pub fn raw_os_error(&self) -> Option<i32> {
        self.source.raw_os_error()
    }
}

impl From<Op> for Applier {
    fn from(op: Op) -> Self {
        Applier { ops: vec![op] }
    }
}

impl Applier {
    /// An applier that does nothing (continuity's `fstest.Base()`).
    pub fn new() -> Applier {
        Applier::default()
    }

    /// The operations, in order.
    pub fn ops(&self) -> &[Op] {
        &self.ops
    }

    /// This applier followed by `other`.
    pub fn then(mut self, other: impl Into<Applier>) -> Applier {
        self.ops.extend(other.into().ops);
        self
    }

    /// Applies every operation under `root`, stopping at the first failure.
    ///
    /// # Errors
    /// The failing [`Op`] with its OS error; `..` in a path is `InvalidInput`.
    pub fn apply(&self, root: &Path) -> Result<(), ApplyError> {
        for op in &self.ops {
            apply_op(root, op).map_err(|source| ApplyError {
                op: op.clone(),
                source,
            })?;
        }
        Ok(())
    }
}

/// Joins appliers into one that runs them in order (continuity's `fstest.Apply`).
pub fn apply<I>(appliers: I) -> Applier
where
    I: IntoIterator,
    I::Item: Into<Applier>,
{
    appliers
        .into_iter()
        .fold(Applier::new(), |acc, a| acc.then(a))
}

/// [`Op::CreateFile`].
pub fn create_file(path: &str, content: &[u8], mode: u32) -> Applier {
    Op::CreateFile {
        path: path.into(),
        content: content.to_vec(),
        mode,
    }
    .into()
}

/// [`Op::CreateDir`].
pub fn create_dir(path: &str, mode: u32) -> Applier {
    Op::CreateDir {
        path: path.into(),
        mode,
    }
    .into()
}

/// [`Op::Symlink`]: a link at `link` whose text is `target`.
pub fn symlink(target: &str, link: &str) -> Applier {
    Op::Symlink {
        target: target.into(),
        link: link.into(),
    }
    .into()
}

/// [`Op::Hardlink`]: a new name `link` for the existing file `existing`.
pub fn hardlink(existing: &str, link: &str) -> Applier {
    Op::Hardlink {
        existing: existing.into(),
        link: link.into(),
    }
    .into()
}

/// [`Op::Chown`].
pub fn chown(path: &str, uid: u32, gid: u32) -> Applier {
    Op::Chown {
        path: path.into(),
        uid,
        gid,
    }
    .into()
}

/// [`Op::Chmod`].
pub fn chmod(path: &str, mode: u32) -> Applier {
    Op::Chmod {
        path: path.into(),
        mode,
    }
    .into()
}

/// [`Op::Remove`].
pub fn remove(path: &str) -> Applier {
    Op::Remove { path: path.into() }.into()
}

/// [`Op::RemoveAll`].
pub fn remove_all(path: &str) -> Applier {
    Op::RemoveAll { path: path.into() }.into()
}

/// [`Op::Rename`].
pub fn rename(from: &str, to: &str) -> Applier {
    Op::Rename {
        from: from.into(),
        to: to.into(),
    }
    .into()
}

/// [`Op::SetXattr`]; use the `user.` namespace, the one the comparison looks at.
pub fn set_xattr(path: &str, name: &str, value: &[u8]) -> Applier {
    Op::SetXattr {
        path: path.into(),
        name: name.into(),
        value: value.to_vec(),
    }
    .into()
}

/// `root` joined with `rel`, refusing `..` so that no applier leaves its root.
fn under(root: &Path, rel: &str) -> io::Result<PathBuf> {
    let mut out = root.to_path_buf();
    for c in Path::new(rel).components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir | Component::Prefix(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("path {rel:?} leaves the root: use paths without '..'"),
                ))
            }
        }
    }
    Ok(out)
}

fn apply_op(root: &Path, op: &Op) -> io::Result<()> {
    match op {
        Op::CreateFile {
            path,
            content,
            mode,
        } => {
            let p = under(root, path)?;
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(*mode)
                .open(&p)?;
            f.write_all(content)?;
            drop(f);
            fs::set_permissions(&p, fs::Permissions::from_mode(*mode))
        }
        Op::CreateDir { path, mode } => {
            let p = under(root, path)?;
            fs::DirBuilder::new()
                .recursive(true)
                .mode(*mode)
                .create(&p)?;
            fs::set_permissions(&p, fs::Permissions::from_mode(*mode))
        }
        Op::Symlink { target, link } => std::os::unix::fs::symlink(target, under(root, link)?),
        Op::Hardlink { existing, link } => {
            fs::hard_link(under(root, existing)?, under(root, link)?)
        }
        Op::Chown { path, uid, gid } => {
            std::os::unix::fs::chown(under(root, path)?, Some(*uid), Some(*gid))
        }
        Op::Chmod { path, mode } => {
            fs::set_permissions(under(root, path)?, fs::Permissions::from_mode(*mode))
        }
        Op::Remove { path } => {
            let p = under(root, path)?;
            if fs::symlink_metadata(&p)?.is_dir() {
                fs::remove_dir(&p)
            } else {
                fs::remove_file(&p)
            }
        }
        Op::RemoveAll { path } => {
            let p = under(root, path)?;
            match fs::symlink_metadata(&p) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(e),
                Ok(m) if m.is_dir() => fs::remove_dir_all(&p),
                Ok(_) => fs::remove_file(&p),
            }
        }
        Op::Rename { from, to } => fs::rename(under(root, from)?, under(root, to)?),
        Op::SetXattr { path, name, value } => rustix::fs::lsetxattr(
            under(root, path)?,
            name.as_str(),
            value,
            rustix::fs::XattrFlags::empty(),
        )
        .map_err(io::Error::from),
    }
}

/// What one path of a tree is, as the comparison sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// `file`, `dir`, `symlink`, `fifo`, `socket`, `char device`, `block device`.
    pub file_type: &'static str,
    /// `st_mode & 0o7777`.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Size in bytes (regular files only; 0 otherwise).
    pub size: u64,
    /// blake3 of the content, hex (regular files only).
    pub digest: Option<String>,
    /// Symlink target.
    pub link_target: Option<PathBuf>,
    /// Device number (devices only).
    pub rdev: Option<u64>,
    /// `user.*` extended attributes.
    pub xattrs: BTreeMap<String, Vec<u8>>,
    /// The other paths of this tree that are hard links of this file, sorted.
    pub hardlinks: Vec<String>,
}

/// A tree read by [`read_tree`]: every path below the root (as `/a/b`), sorted.
pub type Tree = BTreeMap<String, Entry>;

/// The first difference [`check_directory_equal`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    /// The path (`/a/b`, relative to both roots) that differs.
    pub path: String,
    /// What differs, e.g. `mode: expected 0644, got 0666` or `missing`.
    pub what: String,
    /// The two roots compared, for the message.
    pub roots: (PathBuf, PathBuf),
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} (expected tree {}, actual tree {})",
            self.path,
            self.what,
            self.roots.0.display(),
            self.roots.1.display()
        )
    }
}

impl std::error::Error for Difference {}

/// Reads every path below `root` into a [`Tree`] without following symlinks.
///
/// # Errors
/// The OS error of the first path that cannot be read, naming the path.
pub fn read_tree(root: &Path) -> io::Result<Tree> {
    let mut tree = Tree::new();
    let mut inodes: HashMap<(u64, u64), Vec<String>> = HashMap::new();
    let mut stack = vec![(root.to_path_buf(), String::new())];
    while let Some((dir, rel)) = stack.pop() {
        let rd = fs::read_dir(&dir).map_err(|e| annotate(&dir, e))?;
        for ent in rd {
            let ent = ent.map_err(|e| annotate(&dir, e))?;
            let path = ent.path();
            let name = format!("{rel}/{}", ent.file_name().to_string_lossy());
            let meta = fs::symlink_metadata(&path).map_err(|e| annotate(&path, e))?;
            let ft = meta.file_type();
            let entry = read_entry(&path, &meta).map_err(|e| annotate(&path, e))?;
            if ft.is_file() {
                inodes
                    .entry((meta.dev(), meta.ino()))
                    .or_default()
                    .push(name.clone());
            }
            if ft.is_dir() {
                stack.push((path, name.clone()));
            }
            tree.insert(name, entry);
        }
    }
    for group in inodes.values().filter(|g| g.len() > 1) {
        for p in group {
            let mut others: Vec<String> = group.iter().filter(|o| *o != p).cloned().collect();
            others.sort();
            tree.get_mut(p)
                .expect("grouped paths are in the tree")
                .hardlinks = others;
        }
    }
    Ok(tree)
}

fn annotate(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

fn read_entry(path: &Path, meta: &fs::Metadata) -> io::Result<Entry> {
    use std::os::unix::fs::FileTypeExt;
    let ft = meta.file_type();
    let file_type = if ft.is_file() {
        "file"
    } else if ft.is_dir() {
        "dir"
    } else if ft.is_symlink() {
        "symlink"
    } else if ft.is_fifo() {
        "fifo"
    } else if ft.is_socket() {
        "socket"
    } else if ft.is_char_device() {
        "char device"
    } else {
        "block device"
    };
    let (size, digest) = if ft.is_file() {
        let mut h = blake3::Hasher::new();
        h.update_reader(fs::File::open(path)?)?;
        (meta.len(), Some(h.finalize().to_hex().to_string()))
    } else {
        (0, None)
    };
    Ok(Entry {
        file_type,
        mode: meta.mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
        size,
        digest,
        link_target: if ft.is_symlink() {
            Some(fs::read_link(path)?)
        } else {
            None
        },
        rdev: if ft.is_char_device() || ft.is_block_device() {
            Some(meta.rdev())
        } else {
            None
        },
        xattrs: user_xattrs(path)?,
        hardlinks: Vec::new(),
    })
}

/// The `user.*` extended attributes of `path` (not following symlinks). Other namespaces
/// are left out: `security.*` is set by the host's LSM, `trusted.*` belongs to overlayfs.
fn user_xattrs(path: &Path) -> io::Result<BTreeMap<String, Vec<u8>>> {
    let mut out = BTreeMap::new();
    let mut names = vec![0u8; 4096];
    let n = loop {
        match rustix::fs::llistxattr(path, &mut names[..]) {
            Ok(n) => break n,
            Err(rustix::io::Errno::RANGE) => names.resize(names.len() * 4, 0),
            // Filesystems without xattr support have none to compare.
            Err(rustix::io::Errno::NOTSUP) => return Ok(out),
            Err(e) => return Err(e.into()),
        }
    };
    for name in names[..n]
        .split(|b| *b == 0)
        .filter(|n| n.starts_with(b"user."))
    {
        let name = String::from_utf8_lossy(name).into_owned();
        let mut value = vec![0u8; 4096];
        let len = loop {
            match rustix::fs::lgetxattr(path, name.as_str(), &mut value[..]) {
                Ok(len) => break len,
                Err(rustix::io::Errno::RANGE) => value.resize(value.len() * 4, 0),
                Err(e) => return Err(e.into()),
            }
        };
        value.truncate(len);
        out.insert(name, value);
    }
    Ok(out)
}

/// Compares the trees at `expected` and `actual` and returns the first difference, in
/// path order.
///
/// # Errors
/// The first [`Difference`]; a tree that cannot be read is reported as a difference at
/// its root, with the OS error.
pub fn check_directory_equal(expected: &Path, actual: &Path) -> Result<(), Difference> {
    let roots = (expected.to_path_buf(), actual.to_path_buf());
    let read = |p: &Path| {
        read_tree(p).map_err(|e| Difference {
            path: "/".into(),
            what: format!("cannot read tree {}: {e}", p.display()),
            roots: roots.clone(),
        })
    };
    let (a, b) = (read(expected)?, read(actual)?);
    match compare_trees(&a, &b) {
        None => Ok(()),
        Some((path, what)) => Err(Difference { path, what, roots }),
    }
}

/// Builds `applier` in a fresh directory under `scratch` and compares it (as the expected
/// tree) with `actual` (continuity's `CheckDirectoryEqualWithApplier`).
///
/// # Errors
/// The first [`Difference`]; a failure to build the expected tree is a difference at `/`.
pub fn check_directory_equal_with_applier(
    actual: &Path,
    applier: &Applier,
    scratch: &Path,
) -> Result<(), Difference> {
    let fail = |what: String| Difference {
        path: "/".into(),
        what,
        roots: (scratch.to_path_buf(), actual.to_path_buf()),
    };
    let dir = tempfile::Builder::new()
        .prefix("fstest-")
        .tempdir_in(scratch)
        .map_err(|e| {
            fail(format!(
                "cannot create a scratch dir in {}: {e}",
                scratch.display()
            ))
        })?;
    applier
        .apply(dir.path())
        .map_err(|e| fail(format!("building the expected tree: {e}")))?;
    check_directory_equal(dir.path(), actual)
}

/// The first difference between two trees as `(path, what)`, or `None`.
pub fn compare_trees(expected: &Tree, actual: &Tree) -> Option<(String, String)> {
    let mut a = expected.iter().peekable();
    let mut b = actual.iter().peekable();
    loop {
        match (a.peek(), b.peek()) {
            (None, None) => return None,
            (Some((p, e)), None) => {
                return Some(((*p).clone(), format!("missing ({} expected)", e.file_type)))
            }
            (None, Some((p, e))) => {
                return Some(((*p).clone(), format!("unexpected {}", e.file_type)))
            }
            (Some((pa, ea)), Some((pb, eb))) => {
                if pa < pb {
                    return Some((
                        (*pa).clone(),
                        format!("missing ({} expected)", ea.file_type),
                    ));
                }
                if pb < pa {
                    return Some(((*pb).clone(), format!("unexpected {}", eb.file_type)));
                }
                if let Some(what) = compare_entries(ea, eb) {
                    return Some(((*pa).clone(), what));
                }
                a.next();
                b.next();
            }
        }
    }
}

fn compare_entries(e: &Entry, a: &Entry) -> Option<String> {
    if e.file_type != a.file_type {
        return Some(format!(
            "type: expected {}, got {}",
            e.file_type, a.file_type
        ));
    }
    if e.mode != a.mode {
        return Some(format!("mode: expected {:04o}, got {:04o}", e.mode, a.mode));
    }
    if (e.uid, e.gid) != (a.uid, a.gid) {
        return Some(format!(
            "owner: expected {}:{}, got {}:{}",
            e.uid, e.gid, a.uid, a.gid
        ));
    }
    if e.size != a.size {
        return Some(format!("size: expected {}, got {}", e.size, a.size));
    }
    if e.digest != a.digest {
        return Some(format!(
            "content: expected blake3 {}, got {}",
            e.digest.as_deref().unwrap_or("-"),
            a.digest.as_deref().unwrap_or("-")
        ));
    }
    if e.link_target != a.link_target {
        return Some(format!(
            "link target: expected {:?}, got {:?}",
            e.link_target, a.link_target
        ));
    }
    if e.rdev != a.rdev {
        return Some(format!("device: expected {:?}, got {:?}", e.rdev, a.rdev));
    }
    if e.xattrs != a.xattrs {
        return Some(format!(
            "xattrs: expected {:?}, got {:?}",
            e.xattrs, a.xattrs
        ));
    }
    if e.hardlinks != a.hardlinks {
        return Some(format!(
            "hard links: expected {:?}, got {:?}",
            e.hardlinks, a.hardlinks
        ));
    }
    None
}
