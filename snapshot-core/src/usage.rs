//! Disk usage of a directory tree, as containerd's `fs.DiskUsage` computes it.

use std::collections::HashSet;
use std::ffi::CString;
use std::os::fd::OwnedFd;
use std::path::Path;

use rustix::fs::{statat, AtFlags, Dir, FileType, Stat, CWD};
use rustix::io::Errno;

use crate::error::{Error, Result};
use crate::types::Usage;
use crate::walk::{open_dir, vanished, walk, Visitor};

/// The usage of the tree at `root`: the sum of `st_blocks * 512` and the count over
/// unique `(dev, inode)` pairs, the root included. Symlinks are not followed; entries that
/// vanish during the walk are skipped (a running container may delete files meanwhile).
///
/// The walk holds a bounded number of directories open, whatever the depth, and reaches every
/// entry relative to its directory with `O_NOFOLLOW`: a container that swaps a directory
/// for a symlink during the walk makes the walk skip that entry, never count what the
/// symlink points at.
///
/// # Errors
/// NotFound when `root` itself does not exist; Unknown for other I/O errors.
///
/// ```
/// let dir = tempfile::tempdir().unwrap();
/// std::fs::write(dir.path().join("f"), vec![1u8; 10000]).unwrap();
/// let u = snapshot_core::usage::disk_usage(dir.path()).unwrap();
/// assert_eq!(u.inodes, 2);
/// assert!(u.size >= 10000);
/// ```
pub fn disk_usage(root: &Path) -> Result<Usage> {
    let meta = statat(CWD, root, AtFlags::SYMLINK_NOFOLLOW).map_err(|e| match e {
        Errno::NOENT => Error::not_found(format!("usage of {}: no such directory", root.display())),
        e => Error::io("stat", root, e.into()),
    })?;
    let mut counter = Counter {
        seen: HashSet::new(),
        usage: Usage::default(),
    };
    counter.account(&meta);
    if FileType::from_raw_mode(meta.st_mode) != FileType::Directory {
        return Ok(counter.usage);
    }
    let top = match open_dir(CWD, root) {
        Ok(fd) => fd,
        Err(e) if vanished(e) => return Ok(counter.usage),
        Err(e) => return Err(Error::io("open directory", root, e.into())),
    };
    walk(top, &mut counter).map_err(|e| Error::io("walk the tree under", root, e))?;
    Ok(counter.usage)
}

/// Counts what a walk meets: blocks and unique inodes.
struct Counter {
    // Only inodes with several links: the others cannot be met twice.
    seen: HashSet<(u64, u64)>,
    usage: Usage,
}

impl Counter {
    /// Counts `meta` unless its inode was counted already; true when it was new.
    fn account(&mut self, meta: &Stat) -> bool {
        if meta.st_nlink > 1
            && FileType::from_raw_mode(meta.st_mode) != FileType::Directory
            && !self.seen.insert((meta.st_dev, meta.st_ino))
        {
            return false;
        }
        self.usage.inodes += 1;
        self.usage.size += meta.st_blocks as u64 * 512;
        true
    }
}

impl Visitor for Counter {
    fn scan(&mut self, dir: &OwnedFd) -> std::io::Result<Vec<CString>> {
        let mut subdirs = Vec::new();
        for entry in Dir::read_from(dir)? {
            let entry = match entry {
                Ok(e) => e,
                Err(e) if vanished(e) => break,
                Err(e) => return Err(e.into()),
            };
            let name = entry.file_name();
            if name == c"." || name == c".." {
                continue;
            }
            let meta = match statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(m) => m,
                Err(e) if vanished(e) => continue,
                Err(e) => return Err(e.into()),
            };
            if self.account(&meta) && FileType::from_raw_mode(meta.st_mode) == FileType::Directory {
                subdirs.push(name.to_owned());
            }
        }
        Ok(subdirs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn hard_links_count_once() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("a");
        std::fs::write(&f, vec![7u8; 8192]).unwrap();
        std::fs::hard_link(&f, dir.path().join("b")).unwrap();
        std::fs::create_dir(dir.path().join("d")).unwrap();
        std::os::unix::fs::symlink("/nonexistent", dir.path().join("d/l")).unwrap();
        let u = disk_usage(dir.path()).unwrap();
        assert_eq!(u.inodes, 4, "root, a (=b), d, l");
        let blocks = std::fs::metadata(&f).unwrap().blocks() * 512;
        assert!(u.size >= blocks);
        let err = disk_usage(&dir.path().join("missing")).unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::NotFound);
    }

    #[test]
    fn counts_allocated_blocks_not_lengths() {
        let dir = tempfile::tempdir().unwrap();
        let sparse = std::fs::File::create(dir.path().join("sparse")).unwrap();
        sparse.set_len(1 << 30).unwrap();
        let empty = disk_usage(dir.path()).unwrap();
        assert_eq!(empty.inodes, 2);
        assert!(
            empty.size < 1 << 20,
            "a 1 GiB hole allocates nothing: {}",
            empty.size
        );
        // A regular file, a nested tree and a symlink (not followed) each count once.
        std::fs::create_dir_all(dir.path().join("a/b/c")).unwrap();
        std::fs::write(dir.path().join("a/b/c/f"), vec![1u8; 64 << 10]).unwrap();
        std::os::unix::fs::symlink(dir.path(), dir.path().join("a/loop")).unwrap();
        let u = disk_usage(dir.path()).unwrap();
        assert_eq!(u.inodes, 7, "root, sparse, a, b, c, f, loop");
        assert!(u.size >= empty.size + (64 << 10));
        // The usage of a file itself is that file.
        let f = disk_usage(&dir.path().join("a/b/c/f")).unwrap();
        assert_eq!(f.inodes, 1);
        assert!(f.size >= 64 << 10);
    }

    #[test]
    fn a_directory_swapped_for_a_symlink_never_counts_the_target() {
        let tmp = tempfile::tempdir().unwrap();
        let (root, aside, host) = (
            tmp.path().join("root"),
            tmp.path().join("aside"),
            tmp.path().join("host"),
        );
        for d in [&root, &aside, &host] {
            std::fs::create_dir(d).unwrap();
        }
        std::fs::create_dir(root.join("d")).unwrap();
        for i in 0..10 {
            std::fs::write(root.join(format!("d/f{i}")), b"x").unwrap();
        }
        for i in 0..2000 {
            std::fs::write(host.join(format!("h{i}")), b"x").unwrap();
        }
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let swapper = {
            let (root, aside, host, stop) =
                (root.clone(), aside.clone(), host.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    std::fs::rename(root.join("d"), aside.join("d")).unwrap();
                    std::os::unix::fs::symlink(&host, root.join("d")).unwrap();
                    std::fs::remove_file(root.join("d")).unwrap();
                    std::fs::rename(aside.join("d"), root.join("d")).unwrap();
                }
            })
        };
        for _ in 0..300 {
            let u = disk_usage(&root).unwrap();
            // root, d and its 10 files at most; root and the symlink at least.
            assert!(u.inodes <= 12, "counted files outside the tree: {u:?}");
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        swapper.join().unwrap();
        assert_eq!(disk_usage(&root).unwrap().inodes, 12);
    }
}
