//! The snapshot file format: the state machine's column families, framed by
//! hand so a snapshot is not bounded by the wire codec's frame limit.
//!
//! ```text
//! "SKYSNAP" version(u8=1) meta_len(u32 BE) meta(codec bytes)
//! { tag(u8) key_len(u32 BE) key value_len(u32 BE) value }*
//! "END" record_count(u64 BE)
//! ```
//!
//! Parsing checks every length against what is left, every tag against the
//! known column families and the final count, so a truncated or corrupt
//! snapshot is an error, never a panic or a partial install.

use skygit_consensus::codec;
use skygit_consensus::types::SnapshotMeta;

use crate::db::{StorageError, SNAPSHOT_CFS};

const MAGIC: &[u8; 7] = b"SKYSNAP";
const VERSION: u8 = 1;
const TRAILER: &[u8; 3] = b"END";
/// Largest key or value a snapshot record may hold.
const MAX_RECORD_PART: usize = 16 << 20;

/// Builds a snapshot file.
pub(crate) struct SnapshotWriter {
    buf: Vec<u8>,
    count: u64,
}

impl SnapshotWriter {
    pub(crate) fn new(meta: &SnapshotMeta) -> Result<Self, StorageError> {
        let meta = codec::to_bytes(meta)?;
        let mut buf = Vec::with_capacity(64 + meta.len());
        buf.extend_from_slice(MAGIC);
        buf.push(VERSION);
        buf.extend_from_slice(&len_u32(meta.len())?.to_be_bytes());
        buf.extend_from_slice(&meta);
        Ok(Self { buf, count: 0 })
    }

    pub(crate) fn record(&mut self, tag: u8, key: &[u8], value: &[u8]) -> Result<(), StorageError> {
        self.buf.push(tag);
        self.buf
            .extend_from_slice(&len_u32(key.len())?.to_be_bytes());
        self.buf.extend_from_slice(key);
        self.buf
            .extend_from_slice(&len_u32(value.len())?.to_be_bytes());
        self.buf.extend_from_slice(value);
        self.count += 1;
        Ok(())
    }

    pub(crate) fn finish(mut self) -> Vec<u8> {
        self.buf.extend_from_slice(TRAILER);
        self.buf.extend_from_slice(&self.count.to_be_bytes());
        self.buf
    }
}

fn len_u32(n: usize) -> Result<u32, StorageError> {
    if n > MAX_RECORD_PART {
        return Err(StorageError::BadSnapshot(format!(
            "record part of {n} bytes"
        )));
    }
    u32::try_from(n).map_err(|_| StorageError::BadSnapshot("length overflow".into()))
}

/// One record of a parsed snapshot.
pub(crate) struct Record<'a> {
    pub cf: &'static str,
    pub key: &'a [u8],
    pub value: &'a [u8],
}

/// A parsed snapshot.
pub(crate) struct ParsedSnapshot<'a> {
    pub meta: SnapshotMeta,
    pub records: Vec<Record<'a>>,
}

struct Cursor<'a> {
    rest: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], StorageError> {
        if n > self.rest.len() {
            return Err(StorageError::BadSnapshot("truncated".into()));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }
    fn u32(&mut self) -> Result<usize, StorageError> {
        let b: [u8; 4] = self
            .take(4)?
            .try_into()
            .map_err(|_| StorageError::BadSnapshot("u32".into()))?;
        let n = u32::from_be_bytes(b) as usize;
        if n > MAX_RECORD_PART {
            return Err(StorageError::BadSnapshot(format!(
                "record part of {n} bytes"
            )));
        }
        Ok(n)
    }
}

/// Parses and checks a whole snapshot file.
pub(crate) fn parse(bytes: &[u8]) -> Result<ParsedSnapshot<'_>, StorageError> {
    let mut c = Cursor { rest: bytes };
    if c.take(MAGIC.len())? != MAGIC {
        return Err(StorageError::BadSnapshot("not a skygit snapshot".into()));
    }
    let version = c.take(1)?[0];
    if version != VERSION {
        return Err(StorageError::BadSnapshot(format!(
            "unknown version {version}"
        )));
    }
    let meta_len = c.u32()?;
    let meta: SnapshotMeta = codec::from_bytes(c.take(meta_len)?)?;
    let mut records = Vec::new();
    loop {
        if c.rest.len() == TRAILER.len() + 8 && c.rest.starts_with(TRAILER) {
            let n: [u8; 8] = c.rest[3..]
                .try_into()
                .map_err(|_| StorageError::BadSnapshot("count".into()))?;
            if u64::from_be_bytes(n) != records.len() as u64 {
                return Err(StorageError::BadSnapshot("record count mismatch".into()));
            }
            return Ok(ParsedSnapshot { meta, records });
        }
        let tag = c.take(1)?[0];
        let cf = SNAPSHOT_CFS
            .iter()
            .find(|(t, _)| *t == tag)
            .map(|(_, name)| *name)
            .ok_or_else(|| StorageError::BadSnapshot(format!("unknown record tag {tag}")))?;
        let klen = c.u32()?;
        let key = c.take(klen)?;
        let vlen = c.u32()?;
        let value = c.take(vlen)?;
        records.push(Record { cf, key, value });
    }
}

/// Reads only the metadata of a snapshot file.
pub(crate) fn parse_meta(bytes: &[u8]) -> Result<SnapshotMeta, StorageError> {
    let mut c = Cursor { rest: bytes };
    if c.take(MAGIC.len())? != MAGIC || c.take(1)?[0] != VERSION {
        return Err(StorageError::BadSnapshot("not a skygit snapshot".into()));
    }
    let meta_len = c.u32()?;
    Ok(codec::from_bytes(c.take(meta_len)?)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let mut w = SnapshotWriter::new(&SnapshotMeta::default()).unwrap();
        w.record(1, b"general\0aaaaaaaa", b"value-1").unwrap();
        w.record(5, &7u64.to_be_bytes(), b"abc123").unwrap();
        w.finish()
    }

    #[test]
    fn round_trip() {
        let bytes = sample();
        let p = parse(&bytes).unwrap();
        assert_eq!(p.records.len(), 2);
        assert_eq!(p.records[0].cf, crate::db::CF_MESSAGES);
        assert_eq!(p.records[1].value, b"abc123");
        assert_eq!(parse_meta(&bytes).unwrap(), SnapshotMeta::default());
    }

    #[test]
    fn every_truncation_and_bit_flip_is_an_error_or_harmless() {
        let bytes = sample();
        for cut in 0..bytes.len() {
            assert!(parse(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x5a;
            // Must not panic; a flip inside a key or value may still parse.
            let _ = parse(&b);
        }
    }
}
