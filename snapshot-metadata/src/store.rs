//! The metadata database: one LMDB environment holding, per namespace, a record for each
//! snapshot the namespace sees, the back-links from parents to children and the sequence
//! its backend keys are numbered from.
//!
//! Databases (keys are hashes, so keys and namespaces of any length fit LMDB's key limit;
//! every record holds its namespace and key in full and every lookup checks them):
//! - `records`: `ns16 ‖ key16` → [`Record`];
//! - `children`: `ns16 ‖ parent16 ‖ child16` → the child's key;
//! - `seqs`: `ns16` → the next sequence number of the namespace (big-endian `u64`);
//! - `targets`: `blake3(target ‖ 0 ‖ backend parent)` → the backend key of a committed
//!   snapshot labelled with that remote-snapshot target, in any namespace (a hint: the
//!   backend is asked before it is used);
//! - `pending`: `ns16 ‖ key16` of both the active key and the committed name of a Commit
//!   whose backend step may have run → its [`Intent`], so that a kill between the
//!   backend's commit and the record's is finished (or undone) at the next open.
//!
//! `ns16` and `key16` are the first 16 bytes of the blake3 hash of the namespace and of the
//! key, so a namespace's records (and a parent's children) are one prefix.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use heed::types::Bytes;
use heed::{Database, Env, EnvOpenOptions, RoTxn, RwTxn, WithoutTls};
use snapshot_core::keyspace::truncate_for_message;
use snapshot_core::{Error, Labels, Result};

/// The record of one snapshot in one namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Record {
    pub ns: String,
    pub key: String,
    /// The backend's key of the snapshot (`<ns>/<seq>/<key>`, or a shared target's).
    pub bkey: String,
    /// The namespace-local key of the parent; empty for none.
    pub parent: String,
    pub created: SystemTime,
    pub updated: SystemTime,
    /// Every label, inherited by the backend or not.
    pub labels: Labels,
}

/// A Commit in flight: the active key it consumes and the record it makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Intent {
    pub active: String,
    pub committed: Record,
}

pub(crate) type Hash16 = [u8; 16];

pub(crate) fn h16(s: &str) -> Hash16 {
    let mut out = [0; 16];
    out.copy_from_slice(&blake3::hash(s.as_bytes()).as_bytes()[..16]);
    out
}

pub(crate) fn record_key(ns: &str, key: &str) -> [u8; 32] {
    let mut k = [0; 32];
    k[..16].copy_from_slice(&h16(ns));
    k[16..].copy_from_slice(&h16(key));
    k
}

fn target_key(t: &str, bparent: &str) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(t.as_bytes());
    h.update(&[0]);
    h.update(bparent.as_bytes());
    *h.finalize().as_bytes()
}

fn child_key(ns: &str, parent: &str, child: &str) -> [u8; 48] {
    let mut k = [0; 48];
    k[..32].copy_from_slice(&record_key(ns, parent));
    k[32..].copy_from_slice(&h16(child));
    k
}

#[derive(Clone, Copy)]
pub(crate) struct Dbs {
    records: Database<Bytes, Bytes>,
    children: Database<Bytes, Bytes>,
    seqs: Database<Bytes, Bytes>,
    targets: Database<Bytes, Bytes>,
    pending: Database<Bytes, Bytes>,
}

/// The open environment and its databases.
pub(crate) struct Db {
    pub env: Env<WithoutTls>,
    pub dbs: Dbs,
}

fn lmdb(e: heed::Error) -> Error {
    match e {
        heed::Error::Mdb(heed::MdbError::MapFull) => Error::unavailable(
            "namespace metadata: the database is full: reopen it with a larger map size",
        ),
        e => Error::unknown("namespace metadata").with_source(e),
    }
}

pub(crate) trait Lmdb<T> {
    fn lmdb(self) -> Result<T>;
}

impl<T> Lmdb<T> for heed::Result<T> {
    fn lmdb(self) -> Result<T> {
        self.map_err(lmdb)
    }
}

impl Db {
    /// Opens (or creates) the database in `dir`.
    ///
    /// This is the crate's one `unsafe` helper: heed marks opening an environment unsafe
    /// because another process writing the file outside LMDB's locking would be undefined
    /// behaviour. The directory is the metadata layer's own.
    pub fn open(dir: &Path, map_size: usize) -> Result<Db> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io("create", dir, e))?;
        let mut options = EnvOpenOptions::new().read_txn_without_tls();
        options.map_size(map_size).max_dbs(8).max_readers(1024);
        // SAFETY: see the function comment.
        let env = unsafe { options.open(dir) }.map_err(|e| match e {
            heed::Error::EnvAlreadyOpened => Error::unavailable(format!(
                "namespace metadata at {} is already open in this process",
                dir.display()
            )),
            e => Error::unknown(format!("open namespace metadata at {}", dir.display()))
                .with_source(e),
        })?;
        let mut w = env.write_txn().lmdb()?;
        let dbs = Dbs {
            records: env.create_database(&mut w, Some("records")).lmdb()?,
            children: env.create_database(&mut w, Some("children")).lmdb()?,
            seqs: env.create_database(&mut w, Some("seqs")).lmdb()?,
            targets: env.create_database(&mut w, Some("targets")).lmdb()?,
            pending: env.create_database(&mut w, Some("pending")).lmdb()?,
        };
        w.commit().lmdb()?;
        Ok(Db { env, dbs })
    }
}

/// Reads shared by read and write transactions.
pub(crate) trait Reader {
    fn parts(&self) -> (&RoTxn<'_, WithoutTls>, Dbs);

    /// The record of `key` in `ns`, if any.
    fn record(&self, ns: &str, key: &str) -> Result<Option<Record>> {
        let (txn, dbs) = self.parts();
        let Some(raw) = dbs.records.get(txn, &record_key(ns, key)).lmdb()? else {
            return Ok(None);
        };
        let rec = decode(raw)?;
        if rec.ns != ns || rec.key != key {
            return Err(Error::unknown(format!(
                "namespace metadata: the record of {:?} in {ns:?} holds {:?} in {:?} \
                 (hash collision or damage): restore the metadata from a backup",
                truncate_for_message(key),
                truncate_for_message(&rec.key),
                rec.ns
            )));
        }
        Ok(Some(rec))
    }

    /// The backend key last recorded for target `t` on backend parent `bparent`.
    fn target(&self, t: &str, bparent: &str) -> Result<Option<String>> {
        let (txn, dbs) = self.parts();
        let raw = dbs.targets.get(txn, &target_key(t, bparent)).lmdb()?;
        raw.map(|v| String::from_utf8(v.to_vec()).map_err(|_| damaged("target")))
            .transpose()
    }

    /// Whether `key` has children in `ns`.
    fn has_children(&self, ns: &str, key: &str) -> Result<bool> {
        let (txn, dbs) = self.parts();
        let mut it = dbs.children.prefix_iter(txn, &record_key(ns, key)).lmdb()?;
        Ok(it.next().transpose().lmdb()?.is_some())
    }

    /// The Commit in flight that involves `key` of `ns` (as its active key or its name).
    fn pending(&self, ns: &str, key: &str) -> Result<Option<Intent>> {
        let (txn, dbs) = self.parts();
        dbs.pending
            .get(txn, &record_key(ns, key))
            .lmdb()?
            .map(decode_intent)
            .transpose()
    }

    /// Every Commit in flight, once each.
    fn all_pending(&self) -> Result<Vec<Intent>> {
        let (txn, dbs) = self.parts();
        let mut out: Vec<Intent> = Vec::new();
        for item in dbs.pending.iter(txn).lmdb()? {
            let i = decode_intent(item.lmdb()?.1)?;
            if !out.contains(&i) {
                out.push(i);
            }
        }
        Ok(out)
    }

    /// Every parent-to-child link: the parent's record key and the child's key.
    fn links(&self) -> Result<Vec<(Vec<u8>, String)>> {
        let (txn, dbs) = self.parts();
        let mut out = Vec::new();
        for item in dbs.children.iter(txn).lmdb()? {
            let (k, v) = item.lmdb()?;
            let child = String::from_utf8(v.to_vec()).map_err(|_| damaged("link"))?;
            out.push((k[..32].to_vec(), child));
        }
        Ok(out)
    }

    /// Up to `n` records of `ns` after the record key `after` (from the start if None).
    fn batch(
        &self,
        ns: Option<&str>,
        after: Option<&[u8]>,
        n: usize,
    ) -> Result<Vec<(Vec<u8>, Record)>> {
        use std::ops::Bound;
        let (txn, dbs) = self.parts();
        let prefix: Vec<u8> = ns.map(|ns| h16(ns).to_vec()).unwrap_or_default();
        // LMDB refuses an empty key, so "from the start" is unbounded.
        let lower = match after {
            Some(a) => Bound::Excluded(a),
            None if prefix.is_empty() => Bound::Unbounded,
            None => Bound::Included(prefix.as_slice()),
        };
        let mut out = Vec::with_capacity(n);
        for item in dbs.records.range(txn, &(lower, Bound::Unbounded)).lmdb()? {
            let (k, v) = item.lmdb()?;
            if !k.starts_with(&prefix) || out.len() == n {
                break;
            }
            out.push((k.to_vec(), decode(v)?));
        }
        Ok(out)
    }
}

pub(crate) struct ReadTxn<'a> {
    pub txn: RoTxn<'a, WithoutTls>,
    pub dbs: Dbs,
}

impl Reader for ReadTxn<'_> {
    fn parts(&self) -> (&RoTxn<'_, WithoutTls>, Dbs) {
        (&self.txn, self.dbs)
    }
}

pub(crate) struct WriteTxn<'a> {
    pub txn: RwTxn<'a>,
    pub dbs: Dbs,
}

impl Reader for WriteTxn<'_> {
    fn parts(&self) -> (&RoTxn<'_, WithoutTls>, Dbs) {
        (&self.txn, self.dbs)
    }
}

impl WriteTxn<'_> {
    /// Records a Commit in flight under both its active key and its name.
    pub fn put_pending(&mut self, i: &Intent) -> Result<()> {
        let mut v = Vec::new();
        put_str(&mut v, &i.active);
        v.extend_from_slice(&encode(&i.committed));
        let ns = &i.committed.ns;
        for k in [&i.active, &i.committed.key] {
            self.dbs
                .pending
                .put(&mut self.txn, &record_key(ns, k), &v)
                .lmdb()?;
        }
        Ok(())
    }

    /// Holds `key` of `ns` for a create until its record commits (an intent without an
    /// active key).
    pub fn reserve(&mut self, ns: &str, key: &str, bkey: &str) -> Result<()> {
        let mut v = Vec::new();
        put_str(&mut v, "");
        v.extend_from_slice(&encode(&Record {
            ns: ns.to_string(),
            key: key.to_string(),
            bkey: bkey.to_string(),
            parent: String::new(),
            created: UNIX_EPOCH,
            updated: UNIX_EPOCH,
            labels: Labels::new(),
        }));
        self.dbs
            .pending
            .put(&mut self.txn, &record_key(ns, key), &v)
            .lmdb()
    }

    /// Lets a create's hold on `key` go.
    pub fn unreserve(&mut self, ns: &str, key: &str) -> Result<()> {
        self.dbs
            .pending
            .delete(&mut self.txn, &record_key(ns, key))
            .lmdb()
            .map(drop)
    }

    pub fn clear_pending(&mut self, i: &Intent) -> Result<()> {
        let ns = &i.committed.ns;
        for k in [&i.active, &i.committed.key] {
            self.dbs
                .pending
                .delete(&mut self.txn, &record_key(ns, k))
                .lmdb()?;
        }
        Ok(())
    }

    pub fn put_target(&mut self, t: &str, bparent: &str, bkey: &str) -> Result<()> {
        self.dbs
            .targets
            .put(&mut self.txn, &target_key(t, bparent), bkey.as_bytes())
            .lmdb()
    }

    pub fn put(&mut self, rec: &Record) -> Result<()> {
        self.dbs
            .records
            .put(&mut self.txn, &record_key(&rec.ns, &rec.key), &encode(rec))
            .lmdb()
    }

    pub fn delete(&mut self, ns: &str, key: &str) -> Result<()> {
        self.dbs
            .records
            .delete(&mut self.txn, &record_key(ns, key))
            .lmdb()
            .map(drop)
    }

    pub fn link(&mut self, ns: &str, parent: &str, child: &str) -> Result<()> {
        self.dbs
            .children
            .put(
                &mut self.txn,
                &child_key(ns, parent, child),
                child.as_bytes(),
            )
            .lmdb()
    }

    pub fn unlink(&mut self, ns: &str, parent: &str, child: &str) -> Result<()> {
        self.dbs
            .children
            .delete(&mut self.txn, &child_key(ns, parent, child))
            .lmdb()
            .map(drop)
    }

    /// The next sequence number of `ns` (from 1), persisted with the transaction.
    pub fn next_seq(&mut self, ns: &str) -> Result<u64> {
        let k = h16(ns);
        let cur = match self.dbs.seqs.get(&self.txn, &k).lmdb()? {
            Some(v) => u64::from_be_bytes(v.try_into().map_err(|_| damaged("sequence"))?),
            None => 1,
        };
        self.dbs
            .seqs
            .put(&mut self.txn, &k, &(cur + 1).to_be_bytes())
            .lmdb()?;
        Ok(cur)
    }
}

fn damaged(what: &str) -> Error {
    Error::unknown(format!(
        "namespace metadata: a {what} entry is damaged: restore the metadata from a backup"
    ))
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_time(out: &mut Vec<u8>, t: SystemTime) {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    out.extend_from_slice(&d.as_secs().to_be_bytes());
    out.extend_from_slice(&d.subsec_nanos().to_be_bytes());
}

fn encode(r: &Record) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + r.key.len() + r.bkey.len());
    out.push(1); // format version
    for s in [&r.ns, &r.key, &r.bkey, &r.parent] {
        put_str(&mut out, s);
    }
    put_time(&mut out, r.created);
    put_time(&mut out, r.updated);
    out.extend_from_slice(&(r.labels.len() as u32).to_be_bytes());
    for (k, v) in &r.labels {
        put_str(&mut out, k);
        put_str(&mut out, v);
    }
    out
}

struct Cursor<'a>(&'a [u8]);

impl Cursor<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8]> {
        if self.0.len() < n {
            return Err(damaged("record"));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_be_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }

    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_be_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }

    fn string(&mut self) -> Result<String> {
        let n = self.u32()? as usize;
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| damaged("record"))
    }

    fn time(&mut self) -> Result<SystemTime> {
        let secs = self.u64()?;
        let nanos = self.u32()?;
        Ok(UNIX_EPOCH + Duration::new(secs, nanos))
    }
}

fn decode_intent(raw: &[u8]) -> Result<Intent> {
    let mut c = Cursor(raw);
    let active = c.string()?;
    Ok(Intent {
        active,
        committed: decode(c.0)?,
    })
}

fn decode(raw: &[u8]) -> Result<Record> {
    let mut c = Cursor(raw);
    if c.take(1)? != [1] {
        return Err(damaged("record"));
    }
    let (ns, key, bkey, parent) = (c.string()?, c.string()?, c.string()?, c.string()?);
    let (created, updated) = (c.time()?, c.time()?);
    let n = c.u32()?;
    let mut labels = Labels::new();
    for _ in 0..n {
        let k = c.string()?;
        labels.insert(k, c.string()?);
    }
    Ok(Record {
        ns,
        key,
        bkey,
        parent,
        created,
        updated,
        labels,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_damage_is_an_error() {
        let r = Record {
            ns: "default".into(),
            key: "k ".repeat(300),
            bkey: "default/7/k".into(),
            parent: "p".into(),
            created: UNIX_EPOCH + Duration::new(1_700_000_000, 123),
            updated: UNIX_EPOCH + Duration::new(1_700_000_001, 456),
            labels: [("a".to_string(), "b".to_string())].into(),
        };
        let raw = encode(&r);
        assert_eq!(decode(&raw).unwrap(), r);
        assert!(decode(&raw[..raw.len() - 1]).is_err());
        assert!(decode(&[2]).is_err());
    }
}
