//! Disk usage of a directory tree, as containerd's `fs.DiskUsage` computes it.

use std::collections::HashSet;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::types::Usage;

/// The usage of the tree at `root`: the sum of `st_blocks * 512` and the count over
/// unique `(dev, inode)` pairs, the root included. Symlinks are not followed; entries that
/// vanish during the walk are skipped (a running container may delete files meanwhile).
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
    let meta = std::fs::symlink_metadata(root).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => {
            Error::not_found(format!("usage of {}: no such directory", root.display()))
        }
        _ => Error::io("stat", root, e),
    })?;
    let mut seen = HashSet::new();
    let mut usage = Usage::default();
    account(&meta, &mut seen, &mut usage);
    let mut stack: Vec<PathBuf> = Vec::new();
    if meta.is_dir() {
        stack.push(root.to_path_buf());
    }
    while let Some(dir) = stack.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if vanished(&e) => continue,
            Err(e) => return Err(Error::io("read directory", &dir, e)),
        };
        for entry in entries {
            let entry = match entry {
                Ok(e) => e,
                Err(e) if vanished(&e) => continue,
                Err(e) => return Err(Error::io("read directory", &dir, e)),
            };
            let path = entry.path();
            let meta = match std::fs::symlink_metadata(&path) {
                Ok(m) => m,
                Err(e) if vanished(&e) => continue,
                Err(e) => return Err(Error::io("stat", &path, e)),
            };
            if account(&meta, &mut seen, &mut usage) && meta.is_dir() {
                stack.push(path);
            }
        }
    }
    Ok(usage)
}

fn account(meta: &std::fs::Metadata, seen: &mut HashSet<(u64, u64)>, usage: &mut Usage) -> bool {
    if !seen.insert((meta.dev(), meta.ino())) {
        return false;
    }
    usage.inodes += 1;
    usage.size += meta.blocks() * 512;
    true
}

fn vanished(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::NotFound) || e.raw_os_error() == Some(20) // ENOTDIR
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
