//! The binary encoding of a snapshot record, decoded without copying.
//!
//! Layout (all integers little-endian):
//! `version u8, kind u8, created i64 ns, updated i64 ns, size u64, inodes u64,
//!  key (u32 len + bytes), parent name (u32 len + bytes), parent ids (u32 count + u64 each,
//!  nearest first), labels (u32 count + (u32 len + key, u32 len + value) each)`.
//! Keeping the parent ids in the record makes Mounts of a deep chain one lookup.

use std::time::{Duration, SystemTime};

use crate::error::{Error, Result};
use crate::types::{Info, Kind, Labels, Usage};

const VERSION: u8 = 1;

/// A snapshot record borrowed from the store.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RecordRef<'a> {
    pub kind: Kind,
    pub created: i64,
    pub updated: i64,
    pub usage: Usage,
    pub key: &'a str,
    pub parent: &'a str,
    parent_ids: &'a [u8],
    labels: &'a [u8],
    label_count: u32,
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.buf.len() < n {
            return Err(corrupt());
        }
        let (a, b) = self.buf.split_at(n);
        self.buf = b;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
    fn str(&mut self) -> Result<&'a str> {
        let n = self.u32()? as usize;
        std::str::from_utf8(self.take(n)?).map_err(|_| corrupt())
    }
}

fn corrupt() -> Error {
    Error::unknown("metastore: corrupt snapshot record: restore the root from a backup")
}

impl<'a> RecordRef<'a> {
    pub fn decode(buf: &'a [u8]) -> Result<RecordRef<'a>> {
        let mut r = Reader { buf };
        if r.u8()? != VERSION {
            return Err(corrupt());
        }
        let kind = Kind::from_u8(r.u8()?).ok_or_else(corrupt)?;
        let created = r.u64()? as i64;
        let updated = r.u64()? as i64;
        let usage = Usage {
            size: r.u64()?,
            inodes: r.u64()?,
        };
        let key = r.str()?;
        let parent = r.str()?;
        let n = r.u32()? as usize;
        let parent_ids = r.take(n.checked_mul(8).ok_or_else(corrupt)?)?;
        let label_count = r.u32()?;
        let labels = r.buf;
        Ok(RecordRef {
            kind,
            created,
            updated,
            usage,
            key,
            parent,
            parent_ids,
            labels,
            label_count,
        })
    }

    /// Parent ids, nearest first.
    pub fn parent_ids(&self) -> impl ExactSizeIterator<Item = u64> + 'a {
        self.parent_ids
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
    }

    pub fn labels(&self) -> Result<Labels> {
        let mut r = Reader { buf: self.labels };
        let mut out = Labels::new();
        for _ in 0..self.label_count {
            let k = r.str()?;
            let v = r.str()?;
            out.insert(k.to_string(), v.to_string());
        }
        Ok(out)
    }

    pub fn info(&self) -> Result<Info> {
        Ok(Info {
            kind: self.kind,
            name: self.key.to_string(),
            parent: self.parent.to_string(),
            labels: self.labels()?,
            created: from_nanos(self.created),
            updated: from_nanos(self.updated),
        })
    }
}

/// An owned record, for writing.
pub(crate) struct Record<'a> {
    pub kind: Kind,
    pub created: i64,
    pub updated: i64,
    pub usage: Usage,
    pub key: &'a str,
    pub parent: &'a str,
    pub parent_ids: &'a [u64],
    pub labels: &'a Labels,
}

impl Record<'_> {
    pub fn encode(&self) -> Vec<u8> {
        let label_bytes: usize = self.labels.iter().map(|(k, v)| 8 + k.len() + v.len()).sum();
        let mut out = Vec::with_capacity(
            54 + self.key.len() + self.parent.len() + 8 * self.parent_ids.len() + label_bytes,
        );
        out.push(VERSION);
        out.push(self.kind as u8);
        out.extend_from_slice(&(self.created as u64).to_le_bytes());
        out.extend_from_slice(&(self.updated as u64).to_le_bytes());
        out.extend_from_slice(&self.usage.size.to_le_bytes());
        out.extend_from_slice(&self.usage.inodes.to_le_bytes());
        put_str(&mut out, self.key);
        put_str(&mut out, self.parent);
        out.extend_from_slice(&(self.parent_ids.len() as u32).to_le_bytes());
        for id in self.parent_ids {
            out.extend_from_slice(&id.to_le_bytes());
        }
        out.extend_from_slice(&(self.labels.len() as u32).to_le_bytes());
        for (k, v) in self.labels {
            put_str(&mut out, k);
            put_str(&mut out, v);
        }
        out
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// Nanoseconds since the Unix epoch (negative before it).
pub(crate) fn to_nanos(t: SystemTime) -> i64 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_nanos()).unwrap_or(i64::MAX),
    }
}

pub(crate) fn from_nanos(n: i64) -> SystemTime {
    if n >= 0 {
        SystemTime::UNIX_EPOCH + Duration::from_nanos(n as u64)
    } else {
        SystemTime::UNIX_EPOCH - Duration::from_nanos(n.unsigned_abs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::labels;

    #[test]
    fn round_trip() {
        let l = labels([("a", "1"), ("b.c", "")]);
        let rec = Record {
            kind: Kind::Committed,
            created: 5,
            updated: -7,
            usage: Usage {
                size: 4096,
                inodes: 3,
            },
            key: "k/ey",
            parent: "p",
            parent_ids: &[9, 3, 1],
            labels: &l,
        };
        let buf = rec.encode();
        let r = RecordRef::decode(&buf).unwrap();
        assert_eq!(r.kind, Kind::Committed);
        assert_eq!((r.created, r.updated), (5, -7));
        assert_eq!(
            r.usage,
            Usage {
                size: 4096,
                inodes: 3
            }
        );
        assert_eq!((r.key, r.parent), ("k/ey", "p"));
        assert_eq!(r.parent_ids().collect::<Vec<_>>(), vec![9, 3, 1]);
        assert_eq!(r.labels().unwrap(), l);
        assert!(RecordRef::decode(&buf[..20]).is_err());
        assert!(RecordRef::decode(&[2]).is_err());
        assert_eq!(to_nanos(from_nanos(-1234)), -1234);
    }
}
