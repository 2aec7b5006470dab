//! Small helpers around the calls the backend makes: libbtrfsutil, statfs, syncfs,
//! `/proc/self/mountinfo` and the btrfs sysfs tree. Paths given to libbtrfsutil are always
//! absolute: several of its calls resolve relative paths against the process's cwd.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use btrfsutil::subvolume::{DeleteFlags, SnapshotFlags, Subvolume};

use crate::error::{BtrfsError, LibbtrfsutilError};

/// `BTRFS_SUPER_MAGIC` from `linux/magic.h`.
pub const BTRFS_SUPER_MAGIC: u64 = 0x9123_683e;

/// Result of the helpers.
pub type Result<T> = std::result::Result<T, BtrfsError>;

fn lib_err(what: &'static str, path: &Path, lib: btrfsutil::error::LibError) -> BtrfsError {
    BtrfsError::Subvolume {
        what,
        path: path.to_path_buf(),
        source: LibbtrfsutilError {
            lib,
            os: io::Error::last_os_error(),
        },
    }
}

/// `statfs(path)`: fails with [`BtrfsError::NotBtrfs`] unless `f_type` is btrfs.
pub fn statfs_require_btrfs(path: &Path) -> Result<()> {
    let st = rustix::fs::statfs(path).map_err(|e| BtrfsError::io("statfs", path, e.into()))?;
    #[allow(clippy::unnecessary_cast)] // f_type's width differs between architectures
    let fs_type = st.f_type as u64;
    if fs_type != BTRFS_SUPER_MAGIC {
        return Err(BtrfsError::NotBtrfs {
            path: path.to_path_buf(),
            fs_type,
        });
    }
    Ok(())
}

/// Creates a new, empty subvolume at `path` with a root of mode 0755 (the kernel applies
/// the umask, and containers expect 0755 roots).
pub fn create_subvolume(path: &Path) -> Result<u64> {
    let sv = Subvolume::create(path, None).map_err(|e| lib_err("create subvolume", path, e))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o755))
        .map_err(|e| BtrfsError::io("chmod", path, e))?;
    Ok(sv.id())
}

/// Snapshots the subvolume `src` to `dst`, read-only when asked.
pub fn snapshot_subvolume(src: &Path, dst: &Path, read_only: bool) -> Result<u64> {
    let sv = Subvolume::get(src).map_err(|e| lib_err("open subvolume", src, e))?;
    let flags = if read_only {
        SnapshotFlags::READ_ONLY
    } else {
        SnapshotFlags::empty()
    };
    let snap = sv
        .snapshot(dst, flags, None)
        .map_err(|e| lib_err("snapshot subvolume to", dst, e))?;
    Ok(snap.id())
}

/// The id of the subvolume whose root is `path`.
pub fn subvolume_id(path: &Path) -> Result<u64> {
    Subvolume::get(path)
        .map(|sv| sv.id())
        .map_err(|e| lib_err("open subvolume", path, e))
}

/// True when the subvolume at `path` is read-only.
pub fn subvolume_read_only(path: &Path) -> Result<bool> {
    let sv = Subvolume::get(path).map_err(|e| lib_err("open subvolume", path, e))?;
    sv.is_ro()
        .map_err(|e| lib_err("read subvolume flags", path, e))
}

/// Makes the subvolume at `path` read-only.
pub fn set_read_only(path: &Path) -> Result<()> {
    let sv = Subvolume::get(path).map_err(|e| lib_err("open subvolume", path, e))?;
    sv.set_ro(true)
        .map_err(|e| lib_err("make subvolume read-only", path, e))
}

/// Deletes the subvolume at `path` (read-only ones too). Subvolumes a container made
/// inside it go with it. A plain directory left by an interrupted step is removed as a
/// tree.
pub fn delete_subvolume(path: &Path) -> Result<()> {
    match Subvolume::get(path) {
        Ok(sv) => sv
            .delete(DeleteFlags::RECURSIVE)
            .map_err(|e| lib_err("delete subvolume", path, e)),
        Err(_) if path.is_dir() && Subvolume::is_subvolume(path).is_err() => {
            snapshot_core::layout::remove_tree(path)
                .map_err(|e| BtrfsError::io("remove directory", path, e))
        }
        Err(e) => Err(lib_err("open subvolume", path, e)),
    }
}

/// `syncfs` on the filesystem holding `path`, so qgroup figures count data still in the
/// page cache (`btrfsutil::sync` only commits the transaction).
pub fn syncfs(path: &Path) -> Result<()> {
    let fd = rustix::fs::open(
        path,
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .map_err(|e| BtrfsError::io("open", path, e.into()))?;
    rustix::fs::syncfs(&fd).map_err(|e| BtrfsError::io("syncfs", path, e.into()))
}

pub use snapshot_core::mount::{mount_of, parse_mountinfo, MountEntry};

/// The block device of the btrfs filesystem holding `path` (canonical).
pub fn btrfs_device(path: &Path) -> Result<String> {
    let mi = Path::new("/proc/self/mountinfo");
    let text = fs::read_to_string(mi).map_err(|e| BtrfsError::io("read", mi, e))?;
    let entries = parse_mountinfo(&text);
    match mount_of(&entries, path) {
        Some(m) if m.fs_type == "btrfs" => Ok(m.source.clone()),
        other => Err(BtrfsError::NoDevice {
            path: path.to_path_buf(),
            source: io::Error::new(
                io::ErrorKind::NotFound,
                match other {
                    Some(m) => format!(
                        "the mount at {} is {} from {}, not btrfs",
                        m.mount_point.display(),
                        m.fs_type,
                        m.source
                    ),
                    None => "no mount holds it".to_string(),
                },
            ),
        }),
    }
}

/// The sysfs directory `/sys/fs/btrfs/<fsid>` of the filesystem on `device`: the one whose
/// `devices/` lists the device's kernel name.
pub fn sysfs_dir(device: &str) -> Option<PathBuf> {
    let dev = fs::canonicalize(device).ok()?;
    let name = dev.file_name()?.to_owned();
    for entry in fs::read_dir("/sys/fs/btrfs").ok()? {
        let dir = entry.ok()?.path();
        if dir.join("devices").join(&name).exists() {
            return Some(dir);
        }
    }
    None
}

/// Qgroup figures of one subvolume, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QgroupUsage {
    /// Everything the subvolume references, shared extents included.
    pub referenced: u64,
    /// What only this subvolume references: the layer's own usage.
    pub exclusive: u64,
}

/// The qgroup figures of subvolume `subvolid`, or None when quotas are off or their
/// figures are inconsistent (a rescan is due) on the filesystem at `sysfs`.
pub fn read_qgroup(sysfs: &Path, subvolid: u64) -> Result<Option<QgroupUsage>> {
    let q = sysfs.join("qgroups");
    let flag = |name: &str| {
        fs::read_to_string(q.join(name))
            .ok()
            .map(|s| s.trim().to_string())
    };
    if flag("enabled").as_deref() != Some("1") || flag("inconsistent").as_deref() == Some("1") {
        return Ok(None);
    }
    let dir = q.join(format!("0_{subvolid}"));
    if !dir.is_dir() {
        return Ok(None);
    }
    let read = |name: &str| -> Result<u64> {
        let p = dir.join(name);
        let s = fs::read_to_string(&p).map_err(|e| BtrfsError::Qgroup {
            path: p.clone(),
            source: e,
        })?;
        s.trim().parse().map_err(|e| BtrfsError::Qgroup {
            path: p.clone(),
            source: io::Error::new(io::ErrorKind::InvalidData, e),
        })
    };
    Ok(Some(QgroupUsage {
        referenced: read("referenced")?,
        exclusive: read("exclusive")?,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
90 22 7:0 / /mnt/a\\040b rw,relatime shared:40 - btrfs /dev/loop0 rw,space_cache=v2,subvolid=5,subvol=/
91 90 0:55 / /mnt/a\\040b/tmp rw - tmpfs tmpfs rw
92 22 7:1 / /mnt/x rw - ext4 /dev/loop1 rw
93 22 7:2 / /mnt/x rw - btrfs /dev/loop2 rw
";

    #[test]
    fn mountinfo_finds_the_innermost_and_latest_mount() {
        let e = parse_mountinfo(MOUNTINFO);
        assert_eq!(e.len(), 5);
        assert_eq!(e[1].mount_point, PathBuf::from("/mnt/a b"));
        let m = mount_of(&e, Path::new("/mnt/a b/root")).unwrap();
        assert_eq!(
            (m.fs_type.as_str(), m.source.as_str()),
            ("btrfs", "/dev/loop0")
        );
        let m = mount_of(&e, Path::new("/mnt/a b/tmp/x")).unwrap();
        assert_eq!(m.fs_type, "tmpfs");
        // /mnt/x is mounted twice; the later mount shadows the earlier one.
        let m = mount_of(&e, Path::new("/mnt/x/r")).unwrap();
        assert_eq!(m.source, "/dev/loop2");
        // A sibling with a common string prefix is not an ancestor.
        let m = mount_of(&e, Path::new("/mnt/xy")).unwrap();
        assert_eq!(m.mount_point, PathBuf::from("/"));
    }
}

/// `struct btrfs_ioctl_search_key` (linux/btrfs.h).
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct SearchKey {
    tree_id: u64,
    min_objectid: u64,
    max_objectid: u64,
    min_offset: u64,
    max_offset: u64,
    min_transid: u64,
    max_transid: u64,
    min_type: u32,
    max_type: u32,
    nr_items: u32,
    unused: u32,
    unused1: u64,
    unused2: u64,
    unused3: u64,
    unused4: u64,
}

/// `struct btrfs_ioctl_search_args`: the key, then results in the rest of 4 KiB.
#[repr(C)]
struct SearchArgs {
    key: SearchKey,
    buf: [u8; 4096 - std::mem::size_of::<SearchKey>()],
}

const BTRFS_IOCTL_MAGIC: u8 = 0x94;
const BTRFS_FIRST_FREE_OBJECTID: u64 = 256;
const BTRFS_LAST_FREE_OBJECTID: u64 = -256i64 as u64;
const BTRFS_INODE_ITEM_KEY: u32 = 1;
const SEARCH_HEADER_LEN: usize = 32;

/// `ioctl(fd, BTRFS_IOC_TREE_SEARCH, args)`.
///
/// One of the crate's two `unsafe` blocks: the opcode is `_IOWR(0x94, 17, struct
/// btrfs_ioctl_search_args)` and `SearchArgs` is that struct's exact layout (104-byte key,
/// 3992-byte buffer), so the kernel reads and writes only inside it.
fn tree_search(fd: &std::os::fd::OwnedFd, args: &mut SearchArgs) -> io::Result<()> {
    use rustix::ioctl::{opcode, Updater};
    const OP: rustix::ioctl::Opcode = opcode::read_write::<SearchArgs>(BTRFS_IOCTL_MAGIC, 17);
    // SAFETY: see the function comment.
    unsafe { rustix::ioctl::ioctl(fd, Updater::<OP, SearchArgs>::new(args)) }.map_err(Into::into)
}

/// The number of inodes in subvolume `subvolid`, counted from its tree's inode items with
/// `BTRFS_IOC_TREE_SEARCH` (needs CAP_SYS_ADMIN): the kernel reads the metadata, nothing
/// walks the directory tree. `path` is any path on the filesystem.
pub fn count_inodes(path: &Path, subvolid: u64) -> Result<u64> {
    let fd = rustix::fs::open(
        path,
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .map_err(|e| BtrfsError::io("open", path, e.into()))?;
    let mut args = SearchArgs {
        key: SearchKey {
            tree_id: subvolid,
            min_objectid: BTRFS_FIRST_FREE_OBJECTID,
            max_objectid: BTRFS_LAST_FREE_OBJECTID,
            max_offset: u64::MAX,
            max_transid: u64::MAX,
            min_type: BTRFS_INODE_ITEM_KEY,
            max_type: BTRFS_INODE_ITEM_KEY,
            ..SearchKey::default()
        },
        buf: [0; 4096 - std::mem::size_of::<SearchKey>()],
    };
    let mut count = 0u64;
    loop {
        args.key.nr_items = u32::MAX;
        tree_search(&fd, &mut args)
            .map_err(|e| BtrfsError::io("BTRFS_IOC_TREE_SEARCH on", path, e))?;
        let n = args.key.nr_items;
        if n == 0 {
            return Ok(count);
        }
        // The key range is compound (objectid, type, offset): items of other types between
        // the bounds come back too and are skipped here.
        let mut at = 0usize;
        let mut last = (0u64, 0u32, 0u64);
        for _ in 0..n {
            let h = &args.buf[at..at + SEARCH_HEADER_LEN];
            let objectid = u64::from_ne_bytes(h[8..16].try_into().unwrap());
            let offset = u64::from_ne_bytes(h[16..24].try_into().unwrap());
            let typ = u32::from_ne_bytes(h[24..28].try_into().unwrap());
            let len = u32::from_ne_bytes(h[28..32].try_into().unwrap()) as usize;
            if typ == BTRFS_INODE_ITEM_KEY {
                count += 1;
            }
            last = (objectid, typ, offset);
            at += SEARCH_HEADER_LEN + len;
        }
        // Continue right after the last key returned.
        let (objectid, typ, offset) = last;
        if offset < u64::MAX {
            (
                args.key.min_objectid,
                args.key.min_type,
                args.key.min_offset,
            ) = (objectid, typ, offset + 1);
        } else if typ < 255 {
            (
                args.key.min_objectid,
                args.key.min_type,
                args.key.min_offset,
            ) = (objectid, typ + 1, 0);
        } else if objectid < BTRFS_LAST_FREE_OBJECTID {
            (
                args.key.min_objectid,
                args.key.min_type,
                args.key.min_offset,
            ) = (objectid + 1, 0, 0);
        } else {
            return Ok(count);
        }
        if args.key.min_objectid > BTRFS_LAST_FREE_OBJECTID {
            return Ok(count);
        }
    }
}
