//! DTLS certificate fingerprints: parsing, comparing, and reading them out of SDP.
//!
//! A node's identity on the mesh is the SHA-256 fingerprint of its DTLS
//! certificate, written the way SDP's `a=fingerprint` writes it:
//! `sha-256 AB:CD:…`. Expected fingerprints come from outside (signaling), so
//! they are parsed leniently (any case, `sha256` or `sha-256`, colons optional)
//! and compared as digests, never as strings.

use std::fmt;

/// The only digest the mesh pins (what webrtc-rs puts into SDP).
const SHA256_BYTES: usize = 32;

/// A parsed SHA-256 certificate fingerprint.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Fingerprint([u8; SHA256_BYTES]);

impl Fingerprint {
    /// Wraps a raw SHA-256 digest.
    pub(crate) fn from_digest(digest: &[u8]) -> Option<Self> {
        digest.try_into().ok().map(Self)
    }

    /// Parses `"sha-256 AB:CD:…"`. The algorithm name is case-insensitive and
    /// may be written `sha256`; the hex is case-insensitive and its colons are
    /// optional.
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        let mut parts = text.split_whitespace();
        let (alg, value) = match (parts.next(), parts.next(), parts.next()) {
            (Some(alg), Some(value), None) => (alg, value),
            _ => return Err(format!("fingerprint {text:?} is not \"<algorithm> <hex>\"")),
        };
        let alg = alg.to_ascii_lowercase();
        if alg != "sha-256" && alg != "sha256" {
            return Err(format!("fingerprint algorithm {alg:?} is not sha-256"));
        }
        let hex: Vec<u8> = value.bytes().filter(|b| *b != b':').collect();
        if hex.len() != SHA256_BYTES * 2 {
            return Err(format!(
                "sha-256 fingerprint has {} hex digits, want {}",
                hex.len(),
                SHA256_BYTES * 2
            ));
        }
        let mut out = [0u8; SHA256_BYTES];
        for (i, pair) in hex.chunks_exact(2).enumerate() {
            let digit = |c: u8| (c as char).to_digit(16);
            match (digit(pair[0]), digit(pair[1])) {
                (Some(hi), Some(lo)) => out[i] = (hi * 16 + lo) as u8,
                _ => return Err(format!("fingerprint {value:?} is not hex")),
            }
        }
        Ok(Self(out))
    }
}

impl fmt::Display for Fingerprint {
    /// `sha-256 AB:CD:…`, the SDP form.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("sha-256 ")?;
        for (i, b) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(":")?;
            }
            write!(f, "{b:02X}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Checks every `a=fingerprint` line of `sdp` (session or media level) against
/// `expected`. Refuses an SDP that declares none, one that does not parse, or
/// one that differs.
pub(crate) fn check_sdp(sdp: &str, expected: &Fingerprint) -> Result<(), String> {
    let mut seen = 0usize;
    for line in sdp.lines() {
        let Some(value) = line.trim().strip_prefix("a=fingerprint:") else {
            continue;
        };
        seen += 1;
        let declared = Fingerprint::parse(value)?;
        if &declared != expected {
            return Err(format!(
                "SDP declares certificate {declared}, expected {expected}"
            ));
        }
    }
    if seen == 0 {
        return Err("SDP declares no certificate fingerprint".to_owned());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const FP: &str = "sha-256 AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89";

    #[test]
    fn parsing_is_case_and_separator_insensitive() {
        let a = Fingerprint::parse(FP).expect("parses");
        let b =
            Fingerprint::parse(&FP.to_lowercase().replace("sha-256", "SHA256")).expect("parses");
        let c = Fingerprint::parse(&FP.replace(':', "")).expect("parses");
        assert_eq!(a, b);
        assert_eq!(a, c);
        assert_eq!(a.to_string(), FP);
    }

    #[test]
    fn bad_fingerprints_are_refused() {
        assert!(Fingerprint::parse("").is_err());
        assert!(Fingerprint::parse("sha-1 AB:CD").is_err());
        assert!(Fingerprint::parse("sha-256 AB:CD").is_err());
        assert!(Fingerprint::parse(&FP.replace("AB", "ZZ")).is_err());
        assert!(Fingerprint::parse(&format!("{FP} extra")).is_err());
    }

    #[test]
    fn sdp_check_requires_every_declared_fingerprint_to_match() {
        let fp = Fingerprint::parse(FP).expect("parses");
        let good = format!("v=0\r\na=fingerprint:{FP}\r\nm=application\r\na=fingerprint:{FP}\r\n");
        assert_eq!(check_sdp(&good, &fp), Ok(()));
        let other = FP.replace("AB:CD:EF:01", "00:CD:EF:01");
        let mixed = format!("a=fingerprint:{FP}\r\na=fingerprint:{other}\r\n");
        assert!(check_sdp(&mixed, &fp).is_err());
        assert!(check_sdp("v=0\r\n", &fp).is_err());
    }
}
