//! The daemon column's check of snapshotd's metrics: every store served through the
//! daemon is wrapped in [`Counted`], which counts the calls the benchmark makes; at close
//! it scrapes `/metrics` (what `snapshotd --metrics-address` serves) and fails the run
//! unless every method's `snapshotd_operations_total` equals the benchmark's own count.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use snapshotd::server::Background;
use snapshots::{
    Cleaner, CommitOptions, CreateOptions, Error, Info, Mount, Result, Snapshotter, Usage,
};

const OPS: [&str; 10] = [
    "prepare", "view", "mounts", "commit", "remove", "stat", "update", "list", "usage", "cleanup",
];

/// Stores checked so far and the calls they made.
static CHECKED: Mutex<(usize, u64)> = Mutex::new((0, 0));

/// `(stores, calls)` whose metrics matched the benchmark's counts.
pub fn checked() -> (usize, u64) {
    *CHECKED.lock().unwrap_or_else(|p| p.into_inner())
}

/// A store served by the daemon with its metrics on, counting the benchmark's calls.
pub struct Counted {
    inner: Background,
    counts: [AtomicU64; OPS.len()],
}

impl Counted {
    pub fn new(inner: Background) -> Counted {
        Counted {
            inner,
            counts: Default::default(),
        }
    }

    fn count(&self, op: &str) {
        let i = OPS.iter().position(|o| *o == op).expect("a known op");
        self.counts[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Scrapes the daemon and compares.
    fn check(&self) -> Result<()> {
        let socket = self
            .inner
            .metrics_socket()
            .ok_or_else(|| Error::unknown("the daemon serves no metrics socket"))?;
        let text = snapshotd::metrics::scrape_unix(&socket)
            .map_err(|e| Error::unknown(format!("scraping {}: {e}", socket.display())))?;
        let mut total = 0;
        for (i, op) in OPS.iter().enumerate() {
            let ours = self.counts[i].load(Ordering::Relaxed);
            let scraped = snapshotd::metrics::sample(
                &text,
                &format!("snapshotd_operations_total{{op=\"{op}\"}}"),
            )
            .unwrap_or(0.0);
            if scraped != ours as f64 {
                return Err(Error::unknown(format!(
                    "metrics: snapshotd_operations_total{{op=\"{op}\"}} is {scraped}, but the \
                     benchmark made {ours} {op} calls"
                )));
            }
            total += ours;
        }
        let mut c = CHECKED.lock().unwrap_or_else(|p| p.into_inner());
        c.0 += 1;
        c.1 += total;
        Ok(())
    }
}

impl Snapshotter for Counted {
    fn stat(&self, key: &str) -> Result<Info> {
        self.count("stat");
        self.inner.stat(key)
    }
    fn update(&self, info: &Info, fieldpaths: &[String]) -> Result<Info> {
        self.count("update");
        self.inner.update(info, fieldpaths)
    }
    fn usage(&self, key: &str) -> Result<Usage> {
        self.count("usage");
        self.inner.usage(key)
    }
    fn mounts(&self, key: &str) -> Result<Vec<Mount>> {
        self.count("mounts");
        self.inner.mounts(key)
    }
    fn prepare(&self, key: &str, parent: &str, opts: &CreateOptions) -> Result<Vec<Mount>> {
        self.count("prepare");
        self.inner.prepare(key, parent, opts)
    }
    fn view(&self, key: &str, parent: &str, opts: &CreateOptions) -> Result<Vec<Mount>> {
        self.count("view");
        self.inner.view(key, parent, opts)
    }
    fn commit(&self, name: &str, key: &str, opts: &CommitOptions) -> Result<()> {
        self.count("commit");
        self.inner.commit(name, key, opts)
    }
    fn remove(&self, key: &str) -> Result<()> {
        self.count("remove");
        self.inner.remove(key)
    }
    fn walk(&self, filters: &[String], f: &mut dyn FnMut(&Info) -> Result<()>) -> Result<()> {
        self.count("list");
        self.inner.walk(filters, f)
    }
    /// Checks the daemon's metrics against the counts, then closes.
    fn close(&self) -> Result<()> {
        let checked = self.check();
        let closed = self.inner.close();
        checked.and(closed)
    }
    fn as_cleaner(&self) -> Option<&dyn Cleaner> {
        Some(self)
    }
}

impl Cleaner for Counted {
    fn cleanup(&self) -> Result<()> {
        self.count("cleanup");
        match self.inner.as_cleaner() {
            Some(c) => c.cleanup(),
            None => Err(Error::not_implemented("cleanup")),
        }
    }
    /// Not a snapshots API method: not counted.
    fn fsck(&self, repair: bool) -> Result<snapshots::snapshot_core::fsck::FsckReport> {
        match self.inner.as_cleaner() {
            Some(c) => c.fsck(repair),
            None => Err(Error::not_implemented("fsck")),
        }
    }
}
