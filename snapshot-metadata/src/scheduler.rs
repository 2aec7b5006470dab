//! Collections in the background, on containerd's policy (`gc/scheduler`): a collection
//! runs when enough changed, and often enough that its metadata transactions take at most
//! `pause_threshold` of the time.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use snapshot_core::Result;

use crate::gc::Collection;
use crate::layer::Metadata;

/// containerd's scheduler knobs, with its defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct GcPolicy {
    /// The share of time collections may hold the metadata transaction (0.02: 20 ms in
    /// every second); sets the interval between collections. Clamped to [0, 0.5]; 0
    /// collects at most once a second.
    pub pause_threshold: f64,
    /// Removals that start a collection at once (0: removals wait for the interval).
    pub deletion_threshold: u64,
    /// Other changes that make the next interval collect (0: changes alone never do).
    pub mutation_threshold: u64,
    /// How long after being asked a collection starts.
    pub schedule_delay: Duration,
    /// When the first collection runs after start (zero: only when asked).
    pub startup_delay: Duration,
}

impl Default for GcPolicy {
    fn default() -> Self {
        GcPolicy {
            pause_threshold: 0.02,
            deletion_threshold: 0,
            mutation_threshold: 100,
            schedule_delay: Duration::ZERO,
            startup_delay: Duration::from_millis(100),
        }
    }
}

/// What a scheduler has done so far.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GcStats {
    /// Collections run.
    pub collections: u64,
    /// Their metadata transactions' time, summed.
    pub paused: Duration,
    /// Records and backend snapshots removed, summed.
    pub records_removed: u64,
    pub backend_removed: u64,
    /// Since the scheduler started.
    pub elapsed: Duration,
}

impl GcStats {
    /// The share of the time collections held the metadata transaction.
    pub fn pause_share(&self) -> f64 {
        if self.elapsed.is_zero() {
            return 0.0;
        }
        self.paused.as_secs_f64() / self.elapsed.as_secs_f64()
    }
}

#[derive(Default)]
struct Counters {
    mutations: u64,
    deletions: u64,
    stop: bool,
}

pub(crate) struct Events {
    counters: Mutex<Counters>,
    wake: Condvar,
}

impl Default for Events {
    fn default() -> Self {
        Events {
            counters: Mutex::default(),
            wake: Condvar::new(),
        }
    }
}

impl Events {
    fn lock(&self) -> MutexGuard<'_, Counters> {
        self.counters.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A change was recorded (a removal if `deletion`).
    pub(crate) fn changed(&self, deletion: bool) {
        let mut c = self.lock();
        if deletion {
            c.deletions += 1;
        } else {
            c.mutations += 1;
        }
        drop(c);
        self.wake.notify_all();
    }
}

/// Runs collections of a [`Metadata`] layer in a background thread until dropped.
pub struct Scheduler {
    md: Arc<Metadata>,
    stats: Arc<Mutex<GcStats>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Scheduler {
    /// Starts collecting `md` on `policy`.
    ///
    /// # Errors
    /// Unknown when no thread can be made.
    pub fn start(md: Arc<Metadata>, policy: GcPolicy) -> Result<Scheduler> {
        let stats = Arc::new(Mutex::new(GcStats::default()));
        let thread = {
            let (md, stats) = (Arc::clone(&md), Arc::clone(&stats));
            std::thread::Builder::new()
                .name("gc-scheduler".into())
                .spawn(move || run(&md, &policy, &stats))
                .map_err(|e| snapshot_core::Error::unknown(format!("start the collector: {e}")))?
        };
        Ok(Scheduler {
            md,
            stats,
            thread: Some(thread),
        })
    }

    /// What the scheduler has done so far.
    pub fn stats(&self) -> GcStats {
        self.stats.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Runs a collection now, on the calling thread, and returns what it removed.
    ///
    /// # Errors
    /// As [`Metadata::collect`].
    pub fn collect_now(&self) -> Result<Collection> {
        let done = self.md.collect()?;
        let mut c = self.md.events.lock();
        c.deletions = 0;
        c.mutations = 0;
        drop(c);
        record(&self.stats, &done);
        Ok(done)
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        self.md.events.lock().stop = true;
        self.md.events.wake.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn record(stats: &Mutex<GcStats>, done: &Collection) {
    let mut s = stats.lock().unwrap_or_else(|e| e.into_inner());
    s.collections += 1;
    s.paused += done.metadata_time;
    s.records_removed += done.records.len() as u64;
    s.backend_removed += done.backend.len() as u64;
}

fn run(md: &Metadata, policy: &GcPolicy, stats: &Mutex<GcStats>) {
    let start = Instant::now();
    let pause = policy.pause_threshold.clamp(0.0, 0.5);
    let mut interval = Duration::from_secs(1);
    let mut next = (!policy.startup_delay.is_zero()).then(|| start + policy.startup_delay);
    let mut collected_once = false;
    let mut c = md.events.lock();
    loop {
        if c.stop {
            return;
        }
        stats.lock().unwrap_or_else(|e| e.into_inner()).elapsed = start.elapsed();
        let now = Instant::now();
        // Removals past the threshold pull the next collection in.
        if policy.deletion_threshold > 0 && c.deletions >= policy.deletion_threshold {
            let soon = now + policy.schedule_delay;
            next = Some(next.map_or(soon, |n| n.min(soon)));
        } else if next.is_none() && (c.deletions > 0 || c.mutations > 0) {
            next = Some(now + interval);
        }
        let Some(at) = next else {
            c = md.events.wake.wait(c).unwrap_or_else(|e| e.into_inner());
            continue;
        };
        if now < at {
            c = md
                .events
                .wake
                .wait_timeout(c, at - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
            continue;
        }
        let idle = c.deletions == 0
            && (policy.mutation_threshold == 0 || c.mutations < policy.mutation_threshold)
            && !md.dirty.load(Ordering::SeqCst);
        if collected_once && idle {
            next = Some(now + interval);
            continue;
        }
        c.deletions = 0;
        c.mutations = 0;
        drop(c);
        match md.collect() {
            Ok(done) => {
                record(stats, &done);
                let s = stats.lock().unwrap_or_else(|e| e.into_inner()).clone();
                if pause > 0.0 && s.collections > 0 {
                    // Each collection's pause, averaged, is `pause` of the cycle.
                    let avg = s.paused / s.collections as u32;
                    interval = avg
                        .div_f64(pause)
                        .saturating_sub(avg)
                        .max(Duration::from_millis(10));
                }
            }
            Err(e) => log::warn!("garbage collection failed (retried in {interval:?}): {e}"),
        }
        collected_once = true;
        next = Some(Instant::now() + interval);
        c = md.events.lock();
    }
}
