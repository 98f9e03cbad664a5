//! STUN and TURN servers: how a room (`.messages/config.json`) and a node
//! (flags, environment, config file) name them.
//!
//! Credentials never reach a log, an error or the API: [`IceServer`]'s
//! `Debug` hides them, and [`IceServer::describe`] names only the URLs.

use serde::{Deserialize, Serialize};

/// Servers one list names at most.
pub const MAX_ICE_SERVERS: usize = 8;
/// URLs one server names at most.
pub const MAX_ICE_URLS: usize = 4;
/// Longest URL, user name or credential, in bytes.
pub const MAX_ICE_FIELD_BYTES: usize = 512;

/// The public STUN servers a node uses when neither the room nor the node
/// names any (a room disables them with `"ice_servers": []`).
pub const DEFAULT_STUN: &[&str] = &[
    "stun:stun.l.google.com:19302",
    "stun:stun.cloudflare.com:3478",
];

/// One STUN or TURN server (`stun:`, `turn:` or `turns:` URLs).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IceServer {
    pub urls: Vec<String>,
    /// TURN's long-term user name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// TURN's long-term password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

impl std::fmt::Debug for IceServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IceServer")
            .field("urls", &self.urls)
            .field("username", &self.username.as_ref().map(|_| "<set>"))
            .field("credential", &self.credential.as_ref().map(|_| "<set>"))
            .finish()
    }
}

/// What a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IceKind {
    Stun,
    Turn,
}

impl IceServer {
    /// A server without credentials.
    pub fn url(url: impl Into<String>) -> Self {
        Self {
            urls: vec![url.into()],
            username: None,
            credential: None,
        }
    }

    /// The public STUN servers ([`DEFAULT_STUN`]).
    pub fn defaults() -> Vec<Self> {
        DEFAULT_STUN.iter().map(|u| Self::url(*u)).collect()
    }

    /// The server's URLs, for logs and the status (no credentials).
    pub fn describe(servers: &[Self]) -> String {
        let urls: Vec<&str> = servers
            .iter()
            .flat_map(|s| s.urls.iter().map(String::as_str))
            .collect();
        if urls.is_empty() {
            "none".to_owned()
        } else {
            urls.join(", ")
        }
    }

    /// Whether it is a TURN server (every URL `turn:` or `turns:`).
    pub fn kind(&self) -> IceKind {
        if self.urls.iter().all(|u| kind_of(u) == Some(IceKind::Turn)) {
            IceKind::Turn
        } else {
            IceKind::Stun
        }
    }
}

fn kind_of(url: &str) -> Option<IceKind> {
    let scheme = url.split(':').next()?.to_ascii_lowercase();
    match scheme.as_str() {
        "stun" | "stuns" => Some(IceKind::Stun),
        "turn" | "turns" => Some(IceKind::Turn),
        _ => None,
    }
}

/// Checks a list from outside (the repository, a flag, a file): its size,
/// its URLs' schemes and hosts, and that a server mixes no STUN and TURN
/// URLs. The error names the bad URL, never a credential.
pub fn validate(servers: &[IceServer]) -> Result<(), String> {
    if servers.len() > MAX_ICE_SERVERS {
        return Err(format!(
            "{} ICE servers; at most {MAX_ICE_SERVERS}",
            servers.len()
        ));
    }
    for s in servers {
        if s.urls.is_empty() || s.urls.len() > MAX_ICE_URLS {
            return Err(format!(
                "an ICE server needs 1 to {MAX_ICE_URLS} URLs, not {}",
                s.urls.len()
            ));
        }
        for field in [&s.username, &s.credential].into_iter().flatten() {
            if field.len() > MAX_ICE_FIELD_BYTES || field.chars().any(char::is_control) {
                return Err(format!(
                    "a credential of {} is too long or holds control characters",
                    IceServer::describe(std::slice::from_ref(s))
                ));
            }
        }
        let mut kinds = Vec::new();
        for u in &s.urls {
            if u.len() > MAX_ICE_FIELD_BYTES || u.chars().any(|c| c.is_control() || c == ' ') {
                return Err("an ICE server URL is too long or holds spaces".to_owned());
            }
            let kind =
                kind_of(u).ok_or_else(|| format!("{u:?} is not a stun:, turn: or turns: URL"))?;
            let rest = u.split_once(':').map_or("", |(_, r)| r);
            let host = rest.split(['?', ':']).next().unwrap_or("");
            if host.is_empty() || rest.starts_with("//") {
                return Err(format!("{u:?} names no host (write stun:host:port)"));
            }
            // webrtc 0.21 refuses a query on a STUN URL, and then never
            // finishes gathering with any server.
            if kind == IceKind::Stun && u.contains('?') {
                return Err(format!("{u:?}: a STUN URL takes no ?query"));
            }
            kinds.push(kind);
        }
        if kinds.iter().any(|k| *k != kinds[0]) {
            return Err(format!(
                "{} mixes STUN and TURN URLs in one server",
                IceServer::describe(std::slice::from_ref(s))
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_stay_out_of_debug_output() {
        let s = IceServer {
            urls: vec!["turn:turn.example:3478".into()],
            username: Some("ana".into()),
            credential: Some("hunter2".into()),
        };
        let shown = format!("{s:?} {}", IceServer::describe(std::slice::from_ref(&s)));
        assert!(
            !shown.contains("hunter2") && !shown.contains("ana"),
            "{shown}"
        );
        assert!(shown.contains("turn:turn.example:3478"), "{shown}");
    }

    #[test]
    fn lists_from_outside_are_checked() {
        assert!(validate(&IceServer::defaults()).is_ok());
        assert!(validate(&[]).is_ok());
        let ok = IceServer {
            urls: vec!["turn:10.0.0.1:3478?transport=udp".into()],
            username: Some("u".into()),
            credential: Some("p".into()),
        };
        assert!(validate(&[ok]).is_ok());
        for bad in [
            vec![IceServer::url("http://example.com")],
            vec![IceServer::url("stun:")],
            vec![IceServer::url("stun://host:3478")],
            vec![IceServer::url("stun:host with space")],
            vec![IceServer::url("stun:host:3478?transport=udp")],
            vec![IceServer {
                urls: vec!["stun:a:3478".into(), "turn:a:3478".into()],
                username: None,
                credential: None,
            }],
            vec![IceServer {
                urls: vec![],
                username: None,
                credential: None,
            }],
            vec![IceServer::url("stun:a:1"); MAX_ICE_SERVERS + 1],
        ] {
            assert!(validate(&bad).is_err(), "{bad:?}");
        }
        let secret_error = validate(&[IceServer {
            urls: vec!["turn:a:1".into()],
            username: Some("u".into()),
            credential: Some("s3cr3t\n".into()),
        }])
        .expect_err("a control character");
        assert!(!secret_error.contains("s3cr3t"), "{secret_error}");
    }

    #[test]
    fn kinds_follow_the_scheme() {
        assert_eq!(IceServer::url("turns:a:5349").kind(), IceKind::Turn);
        assert_eq!(IceServer::url("STUN:a:3478").kind(), IceKind::Stun);
    }
}
