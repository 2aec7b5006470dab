//! Disk usage of a directory tree, as containerd's `fs.DiskUsage` computes it.

use std::collections::HashMap;
use std::ffi::CString;
use std::os::fd::OwnedFd;
use std::path::Path;

use rustix::fs::{statat, AtFlags, Dir, FileType, Stat, CWD};
use rustix::io::Errno;

use crate::error::{Error, Result};
use crate::types::Usage;
use crate::walk::{open_dir, vanished, walk_parallel, walkers, Visitor};

/// The usage of the tree at `root`: the sum of `st_blocks * 512` and the count over
/// unique `(dev, inode)` pairs, the root included. Symlinks are not followed; entries that
/// vanish during the walk are skipped (a running container may delete files meanwhile).
///
/// The walk holds a bounded number of directories open, whatever the depth, and reaches every
/// entry relative to its directory with `O_NOFOLLOW`: a container that swaps a directory
/// for a symlink during the walk makes the walk skip that entry, never count what the
/// symlink points at. A wide tree is walked by one thread per CPU (at most 4): the
/// directories of the top levels are shared out one by one, the subtrees below them whole.
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
    usage_with(root, walkers())
}

/// [`disk_usage`] with up to `threads` walking threads (1: on the calling thread alone;
/// [`disk_usage`] uses the CPUs this process may run on, at most 4).
///
/// # Errors
/// As [`disk_usage`].
pub fn usage_with(root: &Path, threads: usize) -> Result<Usage> {
    let meta = statat(CWD, root, AtFlags::SYMLINK_NOFOLLOW).map_err(|e| match e {
        Errno::NOENT => Error::not_found(format!("usage of {}: no such directory", root.display())),
        e => Error::io("stat", root, e.into()),
    })?;
    let mut counter = Counter::default();
    counter.account(&meta);
    if FileType::from_raw_mode(meta.st_mode) != FileType::Directory {
        return Ok(Counter::total(vec![counter]));
    }
    let top = match open_dir(CWD, root) {
        Ok(fd) => fd,
        Err(e) if vanished(e) => return Ok(Counter::total(vec![counter])),
        Err(e) => return Err(Error::io("open directory", root, e.into())),
    };
    let mut counters = walk_parallel(top, threads, Counter::default)
        .map_err(|e| Error::io("walk the tree under", root, e))?;
    counters.push(counter);
    Ok(Counter::total(counters))
}

/// Counts what a walk meets: blocks and unique inodes.
#[derive(Default)]
struct Counter {
    // Files with several links, with their bytes: the others cannot be met twice. Kept
    // apart so the counters of a parallel walk add each of them once.
    linked: HashMap<(u64, u64), u64>,
    // Everything else.
    usage: Usage,
}

impl Counter {
    /// Counts `meta` unless its inode was counted already; true when it was new.
    fn account(&mut self, meta: &Stat) -> bool {
        let bytes = meta.st_blocks as u64 * 512;
        if meta.st_nlink > 1 && FileType::from_raw_mode(meta.st_mode) != FileType::Directory {
            return self
                .linked
                .insert((meta.st_dev, meta.st_ino), bytes)
                .is_none();
        }
        self.usage.inodes += 1;
        self.usage.size += bytes;
        true
    }

    /// The usage the counters saw together, a linked file once.
    fn total(counters: Vec<Counter>) -> Usage {
        let mut usage = Usage::default();
        let mut linked = HashMap::new();
        for c in counters {
            usage.inodes += c.usage.inodes;
            usage.size += c.usage.size;
            linked.extend(c.linked);
        }
        usage.inodes += linked.len() as u64;
        usage.size += linked.values().sum::<u64>();
        usage
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

    /// A wide tree: `fan` subdirectories, each three levels deep with files, and files
    /// hard-linked across subtrees (a parallel walk meets the two names in two threads).
    fn wide_tree(root: &Path, fan: usize) {
        for i in 0..fan {
            let d = root.join(format!("d{i}/a/b"));
            std::fs::create_dir_all(&d).unwrap();
            for j in 0..20 {
                std::fs::write(d.join(format!("f{j}")), vec![1u8; 100 * j]).unwrap();
            }
            std::fs::write(root.join(format!("d{i}/top")), vec![2u8; 5000]).unwrap();
            if i > 0 {
                std::fs::hard_link(root.join("d0/top"), root.join(format!("d{i}/a/link"))).unwrap();
            }
        }
    }

    #[test]
    fn a_parallel_walk_counts_what_a_serial_walk_counts() {
        for fan in [0, 1, 3, 40] {
            let dir = tempfile::tempdir().unwrap();
            wide_tree(dir.path(), fan);
            let serial = usage_with(dir.path(), 1).unwrap();
            for threads in [2, 3, 4] {
                assert_eq!(
                    usage_with(dir.path(), threads).unwrap(),
                    serial,
                    "fan {fan}, {threads} threads"
                );
            }
            // root + per subtree: d, a, b, 20 files, top; the linked file once.
            assert_eq!(serial.inodes, 1 + 24 * fan as u64);
        }
    }

    #[test]
    fn a_parallel_removal_deletes_the_whole_tree() {
        let dir = tempfile::tempdir().unwrap();
        let top = dir.path().join("t");
        wide_tree(&top, 40);
        std::os::unix::fs::symlink(dir.path(), top.join("d3/a/escape")).unwrap();
        std::fs::write(dir.path().join("outside"), b"kept").unwrap();
        crate::layout::remove_tree(&top).unwrap();
        assert!(!top.exists());
        assert_eq!(std::fs::read(dir.path().join("outside")).unwrap(), b"kept");
    }

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
