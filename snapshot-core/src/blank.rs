//! Blank trees made ahead: the bookkeeping of [`crate::lifecycle::SnapshotStore`]'s pool.
//!
//! A durable create renames its tree into place and fsyncs it before the metastore records
//! it: a journal commit on the caller's path on top of the metastore's own. Most creates
//! build the same tree (an empty active tree, the upper and work directories of an
//! overlay layer), so the store builds a few such trees ahead, already under the `<id>`
//! they will be recorded with and already durable, in a background thread; a create that
//! takes one records it with no directory change of its own. The pool holds ids handed out
//! by [`crate::metastore::MetaStore::reserve_ids`], which persists the id counter past each
//! batch before any tree is named after one: a crash leaves their trees as orphans (a
//! `<id>` without a record), which the next open's sweep retires, and no later open hands
//! the same ids out while one of them may still exist.
//!
//! An id is *held* from before anything exists at its path until its record commits or
//! its tree is deleted: the sweep leaves held ids alone.

use std::collections::HashSet;
use std::sync::{Condvar, Mutex, MutexGuard};

/// How many trees one refill makes.
pub(crate) const BATCH: usize = 16;
/// A refill starts when fewer than this many are ready.
const LOW: usize = 8;

#[derive(Default)]
struct State {
    // Durable trees no create has taken, lowest id last.
    ready: Vec<u64>,
    // Every id the pool or a create using one of its trees holds.
    held: HashSet<u64>,
    filling: bool,
    closed: bool,
}

/// The pool's state; the trees themselves are made and deleted by the store.
#[derive(Default)]
pub(crate) struct Blanks {
    state: Mutex<State>,
    idle: Condvar,
}

impl Blanks {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `id` is the pool's or a running create's: not an orphan.
    pub(crate) fn holds(&self, id: u64) -> bool {
        self.state().held.contains(&id)
    }

    /// A ready tree's id, held by the caller until [`release`](Self::release); and
    /// whether the caller should start a refill (it then owns the refill and must call
    /// [`filled`](Self::filled)).
    pub(crate) fn take(&self) -> (Option<u64>, bool) {
        let mut st = self.state();
        let id = st.ready.pop();
        let refill = !st.closed && !st.filling && st.ready.len() < LOW;
        if refill {
            st.filling = true;
        }
        (id, refill)
    }

    /// Holds `id` for a tree about to be made; false once the pool is closed (make nothing).
    pub(crate) fn hold(&self, id: u64) -> bool {
        let mut st = self.state();
        if st.closed {
            return false;
        }
        st.held.insert(id);
        true
    }

    /// Lets `id` go: its record committed, or its tree was deleted.
    pub(crate) fn release(&self, id: u64) {
        let mut st = self.state();
        st.held.remove(&id);
        if st.held.is_empty() {
            self.idle.notify_all();
        }
    }

    /// Ends a refill: `made` are durable trees (held). Returns the ids the pool did not
    /// take because it closed meanwhile: the caller deletes their trees and releases them.
    pub(crate) fn filled(&self, made: Vec<u64>) -> Vec<u64> {
        let mut st = self.state();
        st.filling = false;
        let rest = if st.closed {
            made
        } else {
            // Lowest id last: trees are taken in the order they were made.
            st.ready.splice(0..0, made.into_iter().rev());
            Vec::new()
        };
        self.idle.notify_all();
        rest
    }

    /// The ready ids, lowest first, once no refill runs.
    pub(crate) fn ready(&self) -> Vec<u64> {
        let mut st = self.state();
        while st.filling {
            st = self.idle.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        let mut ids = st.ready.clone();
        ids.reverse();
        ids
    }

    /// Closes the pool: waits for a running refill, then returns the ready ids (still
    /// held) for the caller to delete and release.
    pub(crate) fn close(&self) -> Vec<u64> {
        let mut st = self.state();
        st.closed = true;
        while st.filling {
            st = self.idle.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        std::mem::take(&mut st.ready)
    }

    /// Waits until no refill runs and no id is held: every tree the pool made is recorded
    /// or deleted (after [`close`](Self::close), nothing holds an id for long).
    pub(crate) fn settle(&self) {
        let mut st = self.state();
        while st.filling || !st.held.is_empty() {
            st = self.idle.wait(st).unwrap_or_else(|e| e.into_inner());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trees_are_taken_oldest_first_and_refills_do_not_overlap() {
        let b = Blanks::default();
        assert_eq!(b.take(), (None, true), "an empty pool asks for a refill");
        assert_eq!(b.take(), (None, false), "one refill at a time");
        for id in [5, 6, 7] {
            assert!(b.hold(id));
        }
        assert!(b.filled(vec![5, 6, 7]).is_empty());
        let (first, refill) = b.take();
        assert_eq!(first, Some(5));
        assert!(refill, "below the low mark");
        assert!(b.holds(5), "a taken id stays held until released");
        b.release(5);
        assert!(!b.holds(5));
        assert!(b.filled(vec![]).is_empty());
        assert_eq!(b.take().0, Some(6));
    }

    #[test]
    fn close_waits_for_the_refill_and_hands_back_what_is_left() {
        let b = std::sync::Arc::new(Blanks::default());
        assert!(b.take().1);
        assert!(b.hold(9));
        let closer = {
            let b = b.clone();
            std::thread::spawn(move || b.close())
        };
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(!closer.is_finished(), "close waits for the running refill");
        assert!(!b.hold(10), "nothing new is made once closing began");
        assert_eq!(b.filled(vec![9]), vec![9], "a closed pool takes nothing");
        assert!(closer.join().unwrap().is_empty());
        assert!(b.holds(9), "still held until the caller deletes it");

        let settler = {
            let b = b.clone();
            std::thread::spawn(move || b.settle())
        };
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(!settler.is_finished(), "settle waits for held ids");
        b.release(9);
        settler.join().unwrap();
    }
}
