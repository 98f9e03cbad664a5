//! The one codec of skygit: bincode 2.0.1 behind a version byte and a size
//! limit.
//!
//! Everything that crosses a peer link is an [`Envelope`], framed as
//! `[WIRE_VERSION][bincode(envelope)]`. Payloads inside an envelope, and the
//! values skygit stores in RocksDB, use [`to_bytes`] and [`from_bytes`]. No
//! other module calls bincode, so the codec can be swapped here alone.
//!
//! Decoding never panics: truncated input, a wrong version, an oversized
//! frame, an unknown variant, a length prefix larger than the limit or
//! trailing bytes are all a [`CodecError`].

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::types::NodeId;

/// The wire version this build speaks (5: call entries in the log and
/// call signalling in media frames; 4: posts carry their attachments'
/// metadata, and media frames move the bytes; 3: envelopes name their raft
/// group's epoch; 2: requests and changes carry their author's signature).
pub const WIRE_VERSION: u8 = 5;
/// Largest frame (version byte plus encoded envelope) a node sends or
/// accepts. The WebRTC transport fragments frames into data-channel
/// messages of at most 64 KiB; this bounds what a peer can make us buffer.
pub const MAX_FRAME_BYTES: usize = 8 * 1024 * 1024;

const LIMIT: usize = MAX_FRAME_BYTES;

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<LIMIT>()
}

/// What an envelope carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum EnvelopeKind {
    /// Chat traffic between nodes (forwarded proposals).
    Chat,
    /// Presence heartbeats over the mesh.
    Presence,
    /// WebRTC signalling relayed over the mesh.
    Signal,
    /// Raft RPCs.
    Raft,
    /// Media: attachments' bytes moved between peers (and, later, call
    /// signalling). Outside any raft group: the epoch is 0.
    Media,
}

/// The versioned unit of peer-link traffic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    pub kind: EnvelopeKind,
    pub from: NodeId,
    pub to: NodeId,
    /// The epoch of the sender's raft group: raft and chat traffic of
    /// another group is not delivered (a re-formed group is a new raft
    /// cluster, so a node's raft identity is its epoch and its id).
    /// Signalling, outside any group, carries 0.
    pub epoch: u64,
    /// Sender's wall clock, milliseconds since the Unix epoch (informative).
    pub timestamp: i64,
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
}

/// A frame or value that could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("empty frame")]
    Empty,
    #[error("frame has wire version {found}, this node speaks {WIRE_VERSION}")]
    WrongVersion { found: u8 },
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("{0} trailing bytes after the encoded value")]
    TrailingBytes(usize),
    #[error("malformed bytes: {0}")]
    Decode(#[from] bincode::error::DecodeError),
    #[error("cannot encode: {0}")]
    Encode(#[from] bincode::error::EncodeError),
}

/// Encodes a value (a payload or a stored record).
pub fn to_bytes<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    let bytes = bincode::serde::encode_to_vec(value, config())?;
    if bytes.len() > LIMIT {
        return Err(CodecError::TooLarge {
            len: bytes.len(),
            max: LIMIT,
        });
    }
    Ok(bytes)
}

/// Decodes a value encoded by [`to_bytes`]; the whole input must be used.
pub fn from_bytes<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    if bytes.len() > LIMIT {
        return Err(CodecError::TooLarge {
            len: bytes.len(),
            max: LIMIT,
        });
    }
    let (value, used) = bincode::serde::decode_from_slice(bytes, config())?;
    if used != bytes.len() {
        return Err(CodecError::TrailingBytes(bytes.len() - used));
    }
    Ok(value)
}

/// Frames an envelope for a peer link.
pub fn encode_frame(envelope: &Envelope) -> Result<Vec<u8>, CodecError> {
    let mut frame = Vec::with_capacity(envelope.payload.len() + 32);
    frame.push(WIRE_VERSION);
    bincode::serde::encode_into_std_write(envelope, &mut frame, config())?;
    if frame.len() > MAX_FRAME_BYTES {
        return Err(CodecError::TooLarge {
            len: frame.len(),
            max: MAX_FRAME_BYTES,
        });
    }
    Ok(frame)
}

/// The kind of a frame without decoding it (the demultiplexer uses it to
/// route signalling away from raft); `None` for a frame that is not of
/// this wire version. The full decode still checks everything.
pub fn peek_kind(frame: &[u8]) -> Option<EnvelopeKind> {
    match frame {
        [WIRE_VERSION, 0, ..] => Some(EnvelopeKind::Chat),
        [WIRE_VERSION, 1, ..] => Some(EnvelopeKind::Presence),
        [WIRE_VERSION, 2, ..] => Some(EnvelopeKind::Signal),
        [WIRE_VERSION, 3, ..] => Some(EnvelopeKind::Raft),
        [WIRE_VERSION, 4, ..] => Some(EnvelopeKind::Media),
        _ => None,
    }
}

/// Decodes a frame received from a peer link.
pub fn decode_frame(frame: &[u8]) -> Result<Envelope, CodecError> {
    let (&version, body) = frame.split_first().ok_or(CodecError::Empty)?;
    if frame.len() > MAX_FRAME_BYTES {
        return Err(CodecError::TooLarge {
            len: frame.len(),
            max: MAX_FRAME_BYTES,
        });
    }
    if version != WIRE_VERSION {
        return Err(CodecError::WrongVersion { found: version });
    }
    from_bytes(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn envelope(payload: Vec<u8>) -> Envelope {
        Envelope {
            kind: EnvelopeKind::Raft,
            from: 1,
            to: 2,
            epoch: 0,
            timestamp: 1_700_000_000_000,
            payload,
        }
    }

    #[test]
    fn round_trip() {
        let e = envelope(b"hello".to_vec());
        let frame = encode_frame(&e).unwrap();
        assert_eq!(frame[0], WIRE_VERSION);
        assert_eq!(decode_frame(&frame).unwrap(), e);
    }

    #[test]
    fn empty_frame_is_an_error() {
        assert!(matches!(decode_frame(&[]), Err(CodecError::Empty)));
    }

    #[test]
    fn wrong_version_is_an_error() {
        let mut frame = encode_frame(&envelope(vec![1, 2, 3])).unwrap();
        frame[0] = WIRE_VERSION + 1;
        assert!(matches!(
            decode_frame(&frame),
            Err(CodecError::WrongVersion { found }) if found == WIRE_VERSION + 1
        ));
    }

    #[test]
    fn every_truncation_is_an_error() {
        let frame = encode_frame(&envelope(vec![7; 300])).unwrap();
        for cut in 0..frame.len() {
            assert!(decode_frame(&frame[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn trailing_bytes_are_an_error() {
        let mut frame = encode_frame(&envelope(vec![1])).unwrap();
        frame.push(0);
        assert!(matches!(
            decode_frame(&frame),
            Err(CodecError::TrailingBytes(1))
        ));
    }

    #[test]
    fn oversized_frames_are_refused_both_ways() {
        let big = envelope(vec![0; MAX_FRAME_BYTES]);
        assert!(matches!(
            encode_frame(&big),
            Err(CodecError::TooLarge { .. }) | Err(CodecError::Encode(_))
        ));
        let mut frame = vec![WIRE_VERSION];
        frame.resize(MAX_FRAME_BYTES + 1, 0);
        assert!(matches!(
            decode_frame(&frame),
            Err(CodecError::TooLarge { .. })
        ));
    }

    #[test]
    fn huge_length_prefix_does_not_allocate_or_panic() {
        // kind=Raft(3), from=1, to=2, timestamp=0, then a payload length
        // prefix claiming u64::MAX bytes (bincode varint marker 253).
        let mut frame = vec![WIRE_VERSION, 3, 1, 2, 0, 253];
        frame.extend_from_slice(&u64::MAX.to_le_bytes());
        assert!(decode_frame(&frame).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]

        #[test]
        fn random_frames_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_frame(&bytes);
            let mut versioned = bytes.clone();
            versioned.insert(0, WIRE_VERSION);
            let _ = decode_frame(&versioned);
        }

        #[test]
        fn mutated_frames_never_panic(
            payload in proptest::collection::vec(any::<u8>(), 0..256),
            flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        ) {
            let mut frame = encode_frame(&envelope(payload)).unwrap();
            for (i, b) in flips {
                let at = i.index(frame.len());
                frame[at] ^= b;
            }
            let _ = decode_frame(&frame);
        }

        #[test]
        fn encoded_envelopes_round_trip(
            kind in 0u8..5, from: u64, to: u64, epoch: u64, ts: i64,
            payload in proptest::collection::vec(any::<u8>(), 0..1024),
        ) {
            let kind = [EnvelopeKind::Chat, EnvelopeKind::Presence, EnvelopeKind::Signal,
                        EnvelopeKind::Raft, EnvelopeKind::Media][kind as usize];
            let e = Envelope { kind, from, to, epoch, timestamp: ts, payload };
            prop_assert_eq!(decode_frame(&encode_frame(&e).unwrap()).unwrap(), e);
        }
    }

    #[test]
    fn peek_kind_agrees_with_decoding() {
        for kind in [
            EnvelopeKind::Chat,
            EnvelopeKind::Presence,
            EnvelopeKind::Signal,
            EnvelopeKind::Raft,
            EnvelopeKind::Media,
        ] {
            let frame = encode_frame(&Envelope {
                kind,
                from: 300,
                to: 7,
                epoch: 0,
                timestamp: 1,
                payload: vec![1, 2, 3],
            })
            .expect("encodes");
            assert_eq!(peek_kind(&frame), Some(kind));
            assert_eq!(decode_frame(&frame).expect("decodes").kind, kind);
        }
        assert_eq!(peek_kind(&[9, 2, 0]), None);
        assert_eq!(peek_kind(&[]), None);
    }
}
