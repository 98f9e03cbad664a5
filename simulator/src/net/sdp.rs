//! The simulated session descriptions: what an offer or answer carries and how an untrusted one is parsed.

use super::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SdpKind {
    Offer,
    Answer,
}

impl fmt::Display for SdpKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SdpKind::Offer => "offer",
            SdpKind::Answer => "answer",
        })
    }
}

/// A simulated session description: who offers or answers to whom, for
/// which link generation, presenting which fingerprint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Sdp {
    pub(super) kind: SdpKind,
    pub(super) from: NodeId,
    pub(super) to: NodeId,
    pub(super) generation: u64,
    pub(super) fp: String,
}

impl Sdp {
    pub(super) fn encode(&self) -> String {
        format!(
            "{SDP_PREFIX} {} from={} to={} gen={} fp={}",
            self.kind, self.from, self.to, self.generation, self.fp
        )
    }

    /// Parses a description that must be of `kind` and sent by `from`
    /// to `to`.
    pub(super) fn parse_for(
        s: &str,
        kind: SdpKind,
        from: NodeId,
        to: NodeId,
    ) -> Result<Self, String> {
        let sdp = Self::parse(s)?;
        if sdp.kind != kind {
            return Err(format!("expected an {kind}"));
        }
        if sdp.to != to || sdp.from != from {
            return Err(format!(
                "an {kind} from node {} to node {} (expected {from} to {to})",
                sdp.from, sdp.to
            ));
        }
        Ok(sdp)
    }

    pub(super) fn parse(s: &str) -> Result<Self, String> {
        if s.len() > MAX_SDP_BYTES {
            return Err(format!(
                "session description of {} bytes (at most {MAX_SDP_BYTES})",
                s.len()
            ));
        }
        let mut words = s.split(' ');
        if words.next() != Some(SDP_PREFIX) {
            return Err("not a simulated session description".to_owned());
        }
        let kind = match words.next() {
            Some("offer") => SdpKind::Offer,
            Some("answer") => SdpKind::Answer,
            _ => return Err("session description of unknown kind".to_owned()),
        };
        fn field<'a>(words: &mut std::str::Split<'a, char>, key: &str) -> Result<&'a str, String> {
            words
                .next()
                .and_then(|w| w.strip_prefix(key))
                .and_then(|w| w.strip_prefix('='))
                .ok_or_else(|| format!("session description without {key}"))
        }
        fn number(v: &str, key: &str) -> Result<u64, String> {
            v.parse::<u64>()
                .map_err(|_| format!("session description with a bad {key}"))
        }
        let from = number(field(&mut words, "from")?, "from")?;
        let to = number(field(&mut words, "to")?, "to")?;
        let generation = number(field(&mut words, "gen")?, "gen")?;
        let fp = field(&mut words, "fp")?;
        if fp.is_empty() {
            return Err("session description with an empty fingerprint".to_owned());
        }
        if words.next().is_some() {
            return Err("session description with trailing words".to_owned());
        }
        Ok(Self {
            kind,
            from,
            to,
            generation,
            fp: fp.to_owned(),
        })
    }
}
