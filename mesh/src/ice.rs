//! The STUN and TURN servers a link gathers candidates with, and the kind
//! of path its selected candidate pair takes.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use hmac::{Hmac, Mac};
use skygit_ports::ice::{IceKind, IceServer};
use webrtc::peer_connection::{RTCIceCandidateType, RTCIceServer};

/// TURN REST-API credentials (coturn's `use-auth-secret`): a shared
/// secret turns into a time-limited user name and password per link.
#[derive(Clone)]
pub struct TurnRest {
    secret: String,
    /// The user part of the generated user name.
    user: String,
    /// How long generated credentials are valid.
    ttl: Duration,
}

impl std::fmt::Debug for TurnRest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TurnRest")
            .field("user", &self.user)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl TurnRest {
    pub fn new(secret: String, user: String, ttl: Duration) -> Self {
        Self { secret, user, ttl }
    }

    /// The user name and password valid until `expiry` (Unix seconds):
    /// `"<expiry>:<user>"` and base64(HMAC-SHA1(secret, user name)).
    pub fn credentials_until(&self, expiry: u64) -> (String, String) {
        let username = format!("{expiry}:{}", self.user);
        // HMAC takes a key of any length.
        let mut mac = Hmac::<sha1::Sha1>::new_from_slice(self.secret.as_bytes())
            .unwrap_or_else(|_| unreachable!("HMAC accepts every key length"));
        mac.update(username.as_bytes());
        let password =
            base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        (username, password)
    }

    /// Credentials valid for the configured time from now.
    pub fn credentials(&self) -> (String, String) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.credentials_until(now.saturating_add(self.ttl.as_secs()))
    }
}

/// What webrtc is given for one link: STUN servers as they are, TURN
/// servers with their static credentials or fresh REST credentials. A
/// TURN server with neither is left out (webrtc refuses it, and with it
/// the whole link); [`usable`] says so once, at start.
pub(crate) fn for_link(servers: &[IceServer], rest: Option<&TurnRest>) -> Vec<RTCIceServer> {
    let mut out = Vec::with_capacity(servers.len());
    for s in servers {
        match s.kind() {
            IceKind::Stun => out.push(RTCIceServer {
                urls: s.urls.clone(),
                ..Default::default()
            }),
            IceKind::Turn => {
                let creds = match (&s.username, &s.credential, rest) {
                    (Some(u), Some(c), _) => Some((u.clone(), c.clone())),
                    (_, _, Some(r)) => Some(r.credentials()),
                    _ => None,
                };
                if let Some((username, credential)) = creds {
                    out.push(RTCIceServer {
                        urls: s.urls.clone(),
                        username,
                        credential,
                    });
                }
            }
        }
    }
    out
}

/// Why some configured servers will not be used by this build (logged at
/// start): TURN without credentials, and the transports webrtc 0.21 does
/// not speak (`stuns:`, `turns:`, TURN over TCP).
pub fn unusable(servers: &[IceServer], rest: Option<&TurnRest>) -> Vec<String> {
    let mut why = Vec::new();
    for s in servers {
        for u in &s.urls {
            let lower = u.to_ascii_lowercase();
            if lower.starts_with("turns:") || lower.starts_with("stuns:") {
                why.push(format!("{u}: TLS transports are not supported; skipped"));
            } else if lower.contains("transport=tcp") {
                why.push(format!("{u}: TURN over TCP is not supported; skipped"));
            }
        }
        if s.kind() == IceKind::Turn
            && (s.username.is_none() || s.credential.is_none())
            && rest.is_none()
        {
            why.push(format!(
                "{}: TURN without a user name and credential (or a REST secret); left out",
                IceServer::describe(std::slice::from_ref(s))
            ));
        }
    }
    why
}

/// The candidates one offer or answer carried, by type.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Gathered {
    pub host: u32,
    pub srflx: u32,
    pub relay: u32,
}

impl Gathered {
    /// Counts the `a=candidate` lines of a session description.
    pub(crate) fn of_sdp(sdp: &str) -> Self {
        let mut g = Self::default();
        for line in sdp.lines().filter(|l| l.starts_with("a=candidate:")) {
            let typ = line
                .split_whitespace()
                .skip_while(|w| *w != "typ")
                .nth(1)
                .unwrap_or("");
            match typ {
                "host" => g.host += 1,
                "srflx" | "prflx" => g.srflx += 1,
                "relay" => g.relay += 1,
                _ => {}
            }
        }
        g
    }
}

/// What this endpoint gathers with and what its last gathering found.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct IceStatus {
    /// The servers' URLs (never their credentials).
    pub servers: Vec<String>,
    pub last_gathered: Option<Gathered>,
    /// Set when a TURN server is configured and the last gathering found
    /// no relay candidate (refused credentials, or no answer).
    pub problem: Option<String>,
}

/// The problem a gathering shows, if any.
pub(crate) fn problem(
    servers: &[IceServer],
    rest: Option<&TurnRest>,
    g: &Gathered,
) -> Option<String> {
    let turn = for_link(servers, rest)
        .iter()
        .filter(|s| {
            s.urls
                .iter()
                .any(|u| u.to_ascii_lowercase().starts_with("turn:"))
        })
        .count();
    (turn > 0 && g.relay == 0).then(|| {
        "no relay candidate from the TURN server: it refused the credentials or did not \
         answer (the log has the server's answer)"
            .to_owned()
    })
}

/// The kind of path a selected pair takes: `relay` when either side is a
/// relay, `srflx` when either is reflexive, else `host`.
pub(crate) fn path_of(local: RTCIceCandidateType, remote: RTCIceCandidateType) -> &'static str {
    use RTCIceCandidateType as T;
    if local == T::Relay || remote == T::Relay {
        "relay"
    } else if matches!(local, T::Srflx | T::Prflx) || matches!(remote, T::Srflx | T::Prflx) {
        "srflx"
    } else {
        "host"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rest_credentials_follow_coturns_formula() {
        // The formula's reference values, computed with
        // `printf %s "$U" | openssl dgst -sha1 -hmac s3cret -binary | base64`.
        let r = TurnRest::new("s3cret".into(), "bob".into(), Duration::from_secs(3600));
        let (u, p) = r.credentials_until(1_700_000_000);
        assert_eq!(u, "1700000000:bob");
        assert_eq!(p, "iqOUFv+P824wi/aW3liW77QZa80=");
        assert!(!format!("{r:?}").contains("s3cret"));
    }

    #[test]
    fn turn_without_credentials_is_left_out_and_said_so() {
        let servers = vec![
            IceServer::url("stun:10.0.0.1:3478"),
            IceServer::url("turn:10.0.0.1:3478"),
        ];
        let given = for_link(&servers, None);
        assert_eq!(given.len(), 1, "only the STUN server");
        assert_eq!(unusable(&servers, None).len(), 1);
        let rest = TurnRest::new("k".into(), "ana".into(), Duration::from_secs(60));
        let given = for_link(&servers, Some(&rest));
        assert_eq!(given.len(), 2);
        assert!(given[1].username.ends_with(":ana"));
        assert!(unusable(&servers, Some(&rest)).is_empty());
        assert_eq!(
            unusable(&[IceServer::url("turns:a:5349")], Some(&rest)).len(),
            1
        );
    }

    #[test]
    fn candidates_are_counted_by_type() {
        let sdp = "v=0\r\na=candidate:1 1 udp 2130706431 10.0.1.2 40000 typ host\r\n\
                   a=candidate:2 1 udp 1694498815 198.51.100.10 40000 typ srflx raddr 10.0.1.2 rport 40000\r\n\
                   a=candidate:3 1 udp 16777215 198.51.100.1 49160 typ relay raddr 0.0.0.0 rport 0\r\n\
                   a=candidate:4 1 udp 2130706431 127.0.0.1 40001 typ host\r\n";
        let g = Gathered::of_sdp(sdp);
        assert_eq!(
            g,
            Gathered {
                host: 2,
                srflx: 1,
                relay: 1
            }
        );
        let turn = vec![IceServer {
            urls: vec!["turn:198.51.100.1:3478".into()],
            username: Some("u".into()),
            credential: Some("p".into()),
        }];
        assert!(problem(&turn, None, &g).is_none());
        let no_relay = Gathered { relay: 0, ..g };
        assert!(problem(&turn, None, &no_relay).is_some());
        assert!(problem(&IceServer::defaults(), None, &no_relay).is_none());
    }

    #[test]
    fn the_path_is_the_least_direct_side() {
        use RTCIceCandidateType as T;
        assert_eq!(path_of(T::Host, T::Host), "host");
        assert_eq!(path_of(T::Host, T::Prflx), "srflx");
        assert_eq!(path_of(T::Srflx, T::Host), "srflx");
        assert_eq!(path_of(T::Srflx, T::Relay), "relay");
    }
}
