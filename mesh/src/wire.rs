//! The mesh's wire format: how one frame becomes data-channel messages and back.
//!
//! Every data-channel message starts with two bytes: the mesh version
//! ([`VERSION`]) and a kind. A frame that fits one message travels as
//! [`Kind::Whole`]; a larger one is cut into [`Kind::Chunk`] messages closed by
//! one [`Kind::Last`]. Pings and pongs carry an 8-byte big-endian timestamp in
//! microseconds that the pong echoes, so the pinger measures the round trip on
//! its own clock.
//!
//! Messages stay at or under 64 KiB because that is the SCTP max-message-size
//! both ends advertise by default (RFC 8841), and DESIGN.md measured that
//! larger messages hurt. The [`Reassembler`] is the only decoder of untrusted
//! bytes here: it never panics, bounds a frame by `MAX_FRAME_BYTES`, and
//! reports anything unexpected as a [`WireError`] so the link can be dropped.

use bytes::{BufMut, BytesMut};

/// The mesh wire version carried in byte 0 of every message.
pub(crate) const VERSION: u8 = 1;
/// Bytes of header in front of every message: version and kind.
pub(crate) const HEADER_BYTES: usize = 2;
/// Largest data-channel message the mesh sends or accepts.
pub(crate) const MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// Largest frame slice carried by one message.
pub(crate) const MAX_CHUNK_PAYLOAD: usize = MAX_MESSAGE_BYTES - HEADER_BYTES;
/// Length of the ping/pong payload.
const STAMP_BYTES: usize = 8;

/// What a message is, byte 1 of the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Kind {
    /// A whole frame.
    Whole = 0,
    /// A slice of a frame; more follow.
    Chunk = 1,
    /// The final slice of a frame.
    Last = 2,
    /// A ping with the sender's timestamp.
    Ping = 3,
    /// A pong echoing a ping's timestamp.
    Pong = 4,
}

impl Kind {
    fn from_byte(b: u8) -> Option<Self> {
        match b {
            0 => Some(Self::Whole),
            1 => Some(Self::Chunk),
            2 => Some(Self::Last),
            3 => Some(Self::Ping),
            4 => Some(Self::Pong),
            _ => None,
        }
    }
}

fn message(kind: Kind, payload: &[u8]) -> BytesMut {
    let mut m = BytesMut::with_capacity(HEADER_BYTES + payload.len());
    m.put_u8(VERSION);
    m.put_u8(kind as u8);
    m.put_slice(payload);
    m
}

/// The messages that carry `frame`, in order: one [`Kind::Whole`] message if
/// it fits, else chunks ending with [`Kind::Last`].
pub(crate) fn encode_frame(frame: &[u8]) -> impl Iterator<Item = BytesMut> + '_ {
    let single = frame.len() <= MAX_CHUNK_PAYLOAD;
    let n = if single {
        1
    } else {
        frame.len().div_ceil(MAX_CHUNK_PAYLOAD)
    };
    (0..n).map(move |i| {
        if single {
            return message(Kind::Whole, frame);
        }
        let start = i * MAX_CHUNK_PAYLOAD;
        let end = (start + MAX_CHUNK_PAYLOAD).min(frame.len());
        let kind = if i + 1 == n { Kind::Last } else { Kind::Chunk };
        message(kind, &frame[start..end])
    })
}

/// A ping stamped with `micros`.
pub(crate) fn encode_ping(micros: u64) -> BytesMut {
    message(Kind::Ping, &micros.to_be_bytes())
}

/// The pong answering a ping stamped with `micros`.
pub(crate) fn encode_pong(micros: u64) -> BytesMut {
    message(Kind::Pong, &micros.to_be_bytes())
}

/// What one accepted message amounted to.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Inbound {
    /// A complete frame.
    Frame(Vec<u8>),
    /// A chunk was stored; the frame is not complete yet.
    Partial,
    /// The peer pinged with this timestamp.
    Ping(u64),
    /// The peer answered our ping stamped with this timestamp.
    Pong(u64),
}

/// Why a message was refused. Any of these ends the link.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum WireError {
    #[error("message of {0} bytes is shorter than the 2-byte header")]
    TooShort(usize),
    #[error("message of {0} bytes exceeds the {MAX_MESSAGE_BYTES}-byte limit")]
    MessageTooLarge(usize),
    #[error("unknown mesh version {0}")]
    Version(u8),
    #[error("unknown message kind {0}")]
    UnknownKind(u8),
    #[error("frame of more than {max} bytes")]
    FrameTooLarge { max: usize },
    #[error("empty chunk")]
    EmptyChunk,
    #[error("whole frame arrived in the middle of a chunked frame")]
    WholeInsideChunks,
    #[error("last chunk without a preceding chunk")]
    LastWithoutChunk,
    #[error("{0:?} payload must be 8 bytes, got {1}")]
    BadStamp(Kind, usize),
    #[error("text message on a binary channel")]
    Text,
}

/// Rebuilds frames from messages, one per link.
#[derive(Debug)]
pub(crate) struct Reassembler {
    buf: Vec<u8>,
    in_chunks: bool,
    max_frame: usize,
}

impl Reassembler {
    /// A reassembler refusing frames longer than `max_frame` bytes.
    pub(crate) fn new(max_frame: usize) -> Self {
        Self {
            buf: Vec::new(),
            in_chunks: false,
            max_frame,
        }
    }

    /// Accepts one message.
    pub(crate) fn push(&mut self, msg: &[u8]) -> Result<Inbound, WireError> {
        if msg.len() < HEADER_BYTES {
            return Err(WireError::TooShort(msg.len()));
        }
        if msg.len() > MAX_MESSAGE_BYTES {
            return Err(WireError::MessageTooLarge(msg.len()));
        }
        if msg[0] != VERSION {
            return Err(WireError::Version(msg[0]));
        }
        let kind = Kind::from_byte(msg[1]).ok_or(WireError::UnknownKind(msg[1]))?;
        let payload = &msg[HEADER_BYTES..];
        match kind {
            Kind::Ping | Kind::Pong => {
                let stamp: [u8; STAMP_BYTES] = payload
                    .try_into()
                    .map_err(|_| WireError::BadStamp(kind, payload.len()))?;
                let micros = u64::from_be_bytes(stamp);
                Ok(if kind == Kind::Ping {
                    Inbound::Ping(micros)
                } else {
                    Inbound::Pong(micros)
                })
            }
            Kind::Whole => {
                if self.in_chunks {
                    return Err(WireError::WholeInsideChunks);
                }
                if payload.len() > self.max_frame {
                    return Err(WireError::FrameTooLarge {
                        max: self.max_frame,
                    });
                }
                Ok(Inbound::Frame(payload.to_vec()))
            }
            Kind::Chunk | Kind::Last => {
                if payload.is_empty() {
                    return Err(WireError::EmptyChunk);
                }
                if kind == Kind::Last && !self.in_chunks {
                    return Err(WireError::LastWithoutChunk);
                }
                if self.buf.len() + payload.len() > self.max_frame {
                    return Err(WireError::FrameTooLarge {
                        max: self.max_frame,
                    });
                }
                self.buf.extend_from_slice(payload);
                if kind == Kind::Chunk {
                    self.in_chunks = true;
                    Ok(Inbound::Partial)
                } else {
                    self.in_chunks = false;
                    Ok(Inbound::Frame(std::mem::take(&mut self.buf)))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(frame: &[u8]) -> Vec<u8> {
        let mut r = Reassembler::new(8 * 1024 * 1024);
        let mut out = None;
        for m in encode_frame(frame) {
            assert!(m.len() <= MAX_MESSAGE_BYTES);
            match r.push(&m).expect("valid message") {
                Inbound::Frame(f) => {
                    assert!(out.is_none(), "one frame per encoding");
                    out = Some(f);
                }
                Inbound::Partial => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        out.expect("frame completes")
    }

    #[test]
    fn frames_of_every_boundary_size_roundtrip() {
        for len in [
            0,
            1,
            MAX_CHUNK_PAYLOAD - 1,
            MAX_CHUNK_PAYLOAD,
            MAX_CHUNK_PAYLOAD + 1,
            2 * MAX_CHUNK_PAYLOAD,
            3 * 1024 * 1024 + 7,
        ] {
            let frame: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            assert_eq!(roundtrip(&frame), frame, "len {len}");
        }
    }

    #[test]
    fn a_frame_that_fits_is_one_whole_message() {
        let msgs: Vec<_> = encode_frame(&[9; MAX_CHUNK_PAYLOAD]).collect();
        assert_eq!(msgs.len(), 1);
        assert_eq!(msgs[0][1], Kind::Whole as u8);
        let msgs: Vec<_> = encode_frame(&[9; MAX_CHUNK_PAYLOAD + 1]).collect();
        assert_eq!(msgs.len(), 2);
        assert_eq!(msgs[0][1], Kind::Chunk as u8);
        assert_eq!(msgs[1][1], Kind::Last as u8);
    }

    #[test]
    fn ping_and_pong_carry_their_stamp_and_may_interleave_chunks() {
        let mut r = Reassembler::new(1 << 20);
        let big = vec![1u8; MAX_CHUNK_PAYLOAD + 10];
        let msgs: Vec<_> = encode_frame(&big).collect();
        assert_eq!(r.push(&msgs[0]), Ok(Inbound::Partial));
        assert_eq!(r.push(&encode_ping(42)), Ok(Inbound::Ping(42)));
        assert_eq!(r.push(&encode_pong(u64::MAX)), Ok(Inbound::Pong(u64::MAX)));
        assert_eq!(r.push(&msgs[1]), Ok(Inbound::Frame(big)));
    }

    #[test]
    fn malformed_messages_are_refused() {
        let mut r = Reassembler::new(100);
        assert_eq!(r.push(&[]), Err(WireError::TooShort(0)));
        assert_eq!(r.push(&[1]), Err(WireError::TooShort(1)));
        assert_eq!(r.push(&[2, 0, 1]), Err(WireError::Version(2)));
        assert_eq!(r.push(&[1, 9]), Err(WireError::UnknownKind(9)));
        assert_eq!(r.push(&[1, 1]), Err(WireError::EmptyChunk));
        assert_eq!(r.push(&[1, 2, 5]), Err(WireError::LastWithoutChunk));
        assert_eq!(
            r.push(&[1, 3, 0, 0]),
            Err(WireError::BadStamp(Kind::Ping, 2))
        );
        assert_eq!(
            r.push(&vec![1; MAX_MESSAGE_BYTES + 1]),
            Err(WireError::MessageTooLarge(MAX_MESSAGE_BYTES + 1))
        );
        let mut whole = vec![1, 0];
        whole.extend([0; 101]);
        assert_eq!(r.push(&whole), Err(WireError::FrameTooLarge { max: 100 }));
    }

    #[test]
    fn broken_chunk_sequences_are_refused() {
        let mut r = Reassembler::new(100);
        assert_eq!(r.push(&[1, 1, 7]), Ok(Inbound::Partial));
        assert_eq!(r.push(&[1, 0, 7]), Err(WireError::WholeInsideChunks));

        let mut r = Reassembler::new(100);
        let mut chunk = vec![1, 1];
        chunk.extend([0; 60]);
        assert_eq!(r.push(&chunk), Ok(Inbound::Partial));
        assert_eq!(r.push(&chunk), Err(WireError::FrameTooLarge { max: 100 }));
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A small deterministic sweep in place of a fuzzer: every 1- to 3-byte
        // message and a few longer ones, fed into one reassembler.
        let mut r = Reassembler::new(1000);
        for a in 0..=255u8 {
            let _ = r.push(&[a]);
            for b in 0..=255u8 {
                let _ = r.push(&[a, b]);
                let _ = r.push(&[a, b, a ^ b]);
                let _ = r.push(&[a, b, 0, 0, 0, 0, 0, 0, 0, a]);
            }
        }
    }
}
