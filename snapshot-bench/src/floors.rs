//! The floor of each operation: the raw work it cannot avoid, done directly (heed,
//! rustix, std) on the same filesystem in the same run.

use std::path::Path;
use std::time::{Duration, Instant};

use heed::types::Bytes;
use heed::{Database, EnvOpenOptions};

use crate::{io_err, BenchError, Result};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort_unstable();
    v[v.len() / 2]
}

fn lmdb_err(path: &Path) -> impl Fn(heed::Error) -> BenchError + '_ {
    move |source| BenchError::Lmdb {
        path: path.to_path_buf(),
        source,
    }
}

/// Medians of one durable LMDB write transaction (a 200-byte put, the size of a record)
/// and of one read transaction with a get.
#[derive(Clone, Copy)]
pub struct Lmdb {
    pub write: Duration,
    pub read: Duration,
}

/// Measures [`Lmdb`] `n` times in `<dir>/floor-lmdb`.
pub fn lmdb(dir: &Path, n: usize) -> Result<Lmdb> {
    let path = dir.join("floor-lmdb");
    let err = lmdb_err(&path);
    let (env, db) = warm_env(&path, n)?;
    let value = vec![7u8; 200];
    let mut writes = Vec::with_capacity(n);
    for i in 0..n as u64 {
        let t = Instant::now();
        let mut w = env.write_txn().map_err(&err)?;
        db.put(&mut w, &i.to_be_bytes(), &value).map_err(&err)?;
        w.commit().map_err(&err)?;
        writes.push(t.elapsed());
    }
    let mut reads = Vec::with_capacity(n);
    for i in 0..n as u64 {
        let t = Instant::now();
        let r = env.read_txn().map_err(&err)?;
        let v = db.get(&r, &i.to_be_bytes()).map_err(&err)?;
        std::hint::black_box(v.map(<[u8]>::len));
        drop(r);
        reads.push(t.elapsed());
    }
    drop(env);
    let _ = std::fs::remove_dir_all(&path);
    Ok(Lmdb {
        write: median(writes),
        read: median(reads),
    })
}

/// A fresh LMDB environment in `path` with one database, warmed with `n` 200-byte puts,
/// each in a durable transaction, as the stores are warm (a fresh file grows with its
/// first pages).
fn warm_env(path: &Path, n: usize) -> Result<(heed::Env, Database<Bytes, Bytes>)> {
    std::fs::create_dir_all(path).map_err(io_err("create", path))?;
    let err = lmdb_err(path);
    // SAFETY: the environment is its caller's own, opened once, in its own directory.
    let env = unsafe {
        EnvOpenOptions::new()
            .map_size(64 << 20)
            .max_dbs(1)
            .open(path)
    }
    .map_err(&err)?;
    let mut wtxn = env.write_txn().map_err(&err)?;
    let db: Database<Bytes, Bytes> = env.create_database(&mut wtxn, None).map_err(&err)?;
    wtxn.commit().map_err(&err)?;
    let value = vec![7u8; 200];
    for i in 0..n as u64 {
        let mut w = env.write_txn().map_err(&err)?;
        db.put(&mut w, &(u64::MAX - i).to_be_bytes(), &value)
            .map_err(&err)?;
        w.commit().map_err(&err)?;
    }
    Ok((env, db))
}

/// What one durable LMDB write transaction takes right after 10 small files were written
/// in a new directory on the same filesystem (as a layer is, just before its Commit), `n`
/// times: on ext4 its fdatasync commits the journal, which then holds those files too.
pub fn lmdb_after_writes(dir: &Path, n: usize) -> Result<Vec<Duration>> {
    let path = dir.join("floor-lmdb-after");
    let err = lmdb_err(&path);
    let (env, db) = warm_env(&path, n)?;
    let value = vec![7u8; 200];
    let files = dir.join("floor-layers");
    let mut v = Vec::with_capacity(n);
    for i in 0..n as u64 {
        let layer = files.join(i.to_string());
        std::fs::create_dir_all(&layer).map_err(io_err("create", &layer))?;
        for f in 0..10 {
            let p = layer.join(format!("f{f}"));
            std::fs::write(&p, b"l").map_err(io_err("write", &p))?;
        }
        let t = Instant::now();
        let mut w = env.write_txn().map_err(&err)?;
        db.put(&mut w, &i.to_be_bytes(), &value).map_err(&err)?;
        w.commit().map_err(&err)?;
        v.push(t.elapsed());
    }
    drop(env);
    let _ = std::fs::remove_dir_all(&path);
    let _ = std::fs::remove_dir_all(&files);
    Ok(v)
}

/// Median of what publishing a new snapshot's tree takes: `mkdir` of a staging directory
/// with `dirs` subdirectories (overlay: `fs` and `work`), the rename to its id, and the
/// fsync of the published directory.
pub fn publish(dir: &Path, dirs: &[&str], n: usize) -> Result<Duration> {
    let base = dir.join("floor-publish");
    std::fs::create_dir_all(&base).map_err(io_err("create", &base))?;
    let mut v = Vec::with_capacity(n);
    for i in 0..n {
        let staging = base.join(format!("new-{i}"));
        let dst = base.join(i.to_string());
        let t = Instant::now();
        std::fs::create_dir(&staging).map_err(io_err("create", &staging))?;
        for d in dirs {
            std::fs::create_dir(staging.join(d)).map_err(io_err("create", &staging))?;
        }
        std::fs::rename(&staging, &dst).map_err(io_err("rename", &staging))?;
        let fd = std::fs::File::open(&dst).map_err(io_err("open", &dst))?;
        fd.sync_all().map_err(io_err("fsync", &dst))?;
        v.push(t.elapsed());
    }
    let _ = std::fs::remove_dir_all(&base);
    Ok(median(v))
}

/// One raw walk of `tree` summing blocks and counting entries (std, not following
/// symlinks): the floor of Usage.
pub fn walk(tree: &Path) -> Result<Duration> {
    fn go(p: &Path, n: &mut u64) -> std::io::Result<()> {
        for e in std::fs::read_dir(p)? {
            let e = e?;
            let m = e.path().symlink_metadata()?;
            *n += std::os::unix::fs::MetadataExt::blocks(&m) + 1;
            if m.is_dir() {
                go(&e.path(), n)?;
            }
        }
        Ok(())
    }
    let t = Instant::now();
    let mut n = 0;
    go(tree, &mut n).map_err(io_err("walk", tree))?;
    std::hint::black_box(n);
    Ok(t.elapsed())
}

/// Builds `files` 4 KiB files in 200 directories under `dir` (new).
pub fn populate(dir: &Path, files: usize) -> Result {
    std::fs::create_dir_all(dir).map_err(io_err("create", dir))?;
    let data = vec![0x42u8; 4096];
    for i in 0..files {
        let d = dir.join(format!("d{:03}", i % 200));
        if i < 200 {
            std::fs::create_dir(&d).map_err(io_err("create", &d))?;
        }
        let f = d.join(format!("f{i}"));
        std::fs::write(&f, &data).map_err(io_err("write", &f))?;
    }
    Ok(())
}

/// One raw removal (std's `remove_dir_all`) of a tree like the one Remove deletes: the
/// floor of Remove + Cleanup.
pub fn remove(dir: &Path, files: usize) -> Result<Duration> {
    let tree = dir.join("floor-remove");
    populate(&tree, files)?;
    rustix::fs::sync();
    let t = Instant::now();
    std::fs::remove_dir_all(&tree).map_err(io_err("remove", &tree))?;
    Ok(t.elapsed())
}
