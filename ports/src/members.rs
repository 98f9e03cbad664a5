//! The room's members on a plain git remote: `.messages/allowed_signers`,
//! one member's SSH public key per line, in the allowed-signers format
//! `ssh-keygen -Y verify` reads:
//!
//! ```text
//! alice namespaces="skygit" ssh-ed25519 AAAAC3Nz... alice@laptop
//! ```
//!
//! A member may have several keys (one line each). The file comes from the
//! repository, so it is untrusted: its size, line count and every field are
//! checked, and an error names the line. Only what this room writes is
//! accepted: one principal per line and at most a `namespaces` option that
//! includes `skygit` (no certificate authorities, no validity windows).

use serde::{Deserialize, Serialize};
use skygit_consensus::model::UserId;

/// Where the members file lives.
pub const ALLOWED_SIGNERS_PATH: &str = ".messages/allowed_signers";
/// The SSH signature namespace of everything a room signs.
pub const SIGNATURE_NAMESPACE: &str = "skygit";
/// Largest members file read.
pub const MAX_ALLOWED_SIGNERS_BYTES: usize = 256 * 1024;
/// Most keys the file may list.
pub const MAX_MEMBER_KEYS: usize = 1000;

/// A problem with the members file or a key given for it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MembersError {
    #[error("{ALLOWED_SIGNERS_PATH} line {line}: {reason}")]
    Line { line: usize, reason: String },
    #[error("{ALLOWED_SIGNERS_PATH} is {0} bytes, over the limit of {MAX_ALLOWED_SIGNERS_BYTES}")]
    TooLarge(usize),
    #[error("{ALLOWED_SIGNERS_PATH} would list more than {MAX_MEMBER_KEYS} keys")]
    TooMany,
    #[error("not an OpenSSH public key: {0}")]
    BadKey(String),
    #[error("{user} already has key {fingerprint}")]
    Duplicate { user: String, fingerprint: String },
}

/// One member's key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberKey {
    pub user: UserId,
    /// `ssh-ed25519 AAAA...` (algorithm and base64 key, no comment).
    pub key: String,
    /// `SHA256:...`, as `ssh-keygen -l` prints it.
    pub fingerprint: String,
    /// The key's comment, if any.
    pub comment: String,
}

impl MemberKey {
    /// Reads an OpenSSH public key (`ssh-ed25519 AAAA... comment`, what a
    /// `.pub` file holds) for `user`.
    pub fn new(user: UserId, openssh: &str) -> Result<MemberKey, MembersError> {
        let key = ssh_key::PublicKey::from_openssh(openssh.trim())
            .map_err(|e| MembersError::BadKey(e.to_string()))?;
        let comment = key.comment().trim().to_owned();
        if comment.chars().any(char::is_control) {
            return Err(MembersError::BadKey(
                "the comment has control characters".to_owned(),
            ));
        }
        let mut bare = key.clone();
        bare.set_comment("");
        let text = bare
            .to_openssh()
            .map_err(|e| MembersError::BadKey(e.to_string()))?;
        Ok(MemberKey {
            user,
            key: text.trim().to_owned(),
            fingerprint: key.fingerprint(ssh_key::HashAlg::Sha256).to_string(),
            comment,
        })
    }

    fn line(&self) -> String {
        let mut line = format!(
            "{} namespaces=\"{SIGNATURE_NAMESPACE}\" {}",
            self.user, self.key
        );
        if !self.comment.is_empty() {
            line.push(' ');
            line.push_str(&self.comment);
        }
        line
    }
}

/// The members file, in its order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowedSigners {
    pub keys: Vec<MemberKey>,
}

impl AllowedSigners {
    /// Parses the file; blank lines and `#` comments are skipped.
    pub fn parse(bytes: &[u8]) -> Result<AllowedSigners, MembersError> {
        if bytes.len() > MAX_ALLOWED_SIGNERS_BYTES {
            return Err(MembersError::TooLarge(bytes.len()));
        }
        let text = std::str::from_utf8(bytes).map_err(|e| MembersError::Line {
            line: 1 + bytes[..e.valid_up_to()]
                .iter()
                .filter(|b| **b == b'\n')
                .count(),
            reason: "not UTF-8".to_owned(),
        })?;
        let mut out = AllowedSigners::default();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |reason: String| MembersError::Line {
                line: i + 1,
                reason,
            };
            let (principal, rest) = line
                .split_once(char::is_whitespace)
                .ok_or_else(|| bad("a member name and a key are expected".to_owned()))?;
            if principal.contains(',') || principal.contains('*') || principal.contains('?') {
                return Err(bad(format!(
                    "{principal:?}: one member per line, without patterns"
                )));
            }
            let user = UserId::new(principal).map_err(|e| bad(e.to_string()))?;
            let rest = rest.trim_start();
            let key_text =
                match rest.strip_prefix("namespaces=\"") {
                    Some(after) => {
                        let (list, key) = after
                            .split_once('"')
                            .ok_or_else(|| bad("unterminated namespaces option".to_owned()))?;
                        if !list.split(',').any(|n| n == SIGNATURE_NAMESPACE) {
                            return Err(bad(format!(
                                "the key is not allowed the {SIGNATURE_NAMESPACE:?} namespace"
                            )));
                        }
                        key
                    }
                    None if rest.starts_with("ssh-") || rest.starts_with("ecdsa-") => rest,
                    None => return Err(bad(
                        "only the namespaces option is supported (no cert-authority or validity)"
                            .to_owned(),
                    )),
                };
            let key = MemberKey::new(user, key_text).map_err(|e| bad(e.to_string()))?;
            out.push(key).map_err(|e| bad(e.to_string()))?;
        }
        Ok(out)
    }

    /// The file's bytes.
    pub fn render(&self) -> Vec<u8> {
        let mut s = String::from(
            "# skygit room members: ssh-keygen -Y verify -f allowed_signers -n skygit ...\n",
        );
        for k in &self.keys {
            s.push_str(&k.line());
            s.push('\n');
        }
        s.into_bytes()
    }

    /// Adds a key; a key the user already has, or one key too many, is refused.
    pub fn push(&mut self, key: MemberKey) -> Result<(), MembersError> {
        if self
            .keys
            .iter()
            .any(|k| k.user == key.user && k.key == key.key)
        {
            return Err(MembersError::Duplicate {
                user: key.user.to_string(),
                fingerprint: key.fingerprint,
            });
        }
        if self.keys.len() >= MAX_MEMBER_KEYS {
            return Err(MembersError::TooMany);
        }
        self.keys.push(key);
        Ok(())
    }

    /// Removes `user`'s keys (only the one with `fingerprint`, if given);
    /// returns how many went.
    pub fn remove(&mut self, user: &UserId, fingerprint: Option<&str>) -> usize {
        let before = self.keys.len();
        self.keys
            .retain(|k| !(&k.user == user && fingerprint.is_none_or(|f| f == k.fingerprint)));
        before - self.keys.len()
    }

    /// The keys of `user`.
    pub fn of<'a>(&'a self, user: &'a UserId) -> impl Iterator<Item = &'a MemberKey> + 'a {
        self.keys.iter().filter(move |k| &k.user == user)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ED: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGgLSh1DdIwS/8ms+DTkE+e+vqH4sFQDdyo9Ub2KAzWo alice@laptop";

    fn user(s: &str) -> UserId {
        UserId::new(s).expect("user")
    }

    #[test]
    fn a_key_round_trips_through_the_file() {
        let mut file = AllowedSigners::default();
        file.push(MemberKey::new(user("alice"), ED).expect("key"))
            .expect("push");
        let bytes = file.render();
        let text = String::from_utf8(bytes.clone()).expect("utf-8");
        assert!(
            text.contains("alice namespaces=\"skygit\" ssh-ed25519 AAAAC3Nz"),
            "{text}"
        );
        let back = AllowedSigners::parse(&bytes).expect("parses");
        assert_eq!(back, file);
        assert!(back.keys[0].fingerprint.starts_with("SHA256:"));
        assert_eq!(back.keys[0].comment, "alice@laptop");
    }

    #[test]
    fn duplicates_and_removal() {
        let mut file = AllowedSigners::default();
        let k = MemberKey::new(user("alice"), ED).expect("key");
        file.push(k.clone()).expect("first");
        assert!(matches!(
            file.push(k.clone()),
            Err(MembersError::Duplicate { .. })
        ));
        // The same key may belong to someone else's line too (shared keys
        // are the team's business), and removal is per user.
        file.push(MemberKey {
            user: user("bob"),
            ..k
        })
        .expect("bob");
        assert_eq!(file.remove(&user("alice"), Some("SHA256:nope")), 0);
        assert_eq!(file.remove(&user("alice"), None), 1);
        assert_eq!(file.of(&user("bob")).count(), 1);
    }

    #[test]
    fn bad_lines_are_named() {
        for (text, line, says) in [
            ("alice\n", 1, "a member name and a key"),
            ("# c\n\nalice,bob ssh-ed25519 AAAA\n", 3, "one member per line"),
            (
                "alice namespaces=\"git\" ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGgLSh1DdIwS/8ms+DTkE+e+vqH4sFQDdyo9Ub2KAzWo\n",
                1,
                "namespace",
            ),
            ("alice cert-authority ssh-ed25519 AAAA\n", 1, "only the namespaces"),
            ("alice ssh-ed25519 bm90IGEga2V5\n", 1, "key"),
            ("a b ssh-ed25519 AAAA\n", 1, "only the namespaces"),
            ("../x ssh-ed25519 AAAA\n", 1, ""),
        ] {
            match AllowedSigners::parse(text.as_bytes()) {
                Err(MembersError::Line { line: l, reason }) => {
                    assert_eq!(l, line, "{text:?}: {reason}");
                    assert!(reason.contains(says), "{text:?}: {reason}");
                }
                other => panic!("{text:?}: expected a line error, got {other:?}"),
            }
        }
        assert!(matches!(
            AllowedSigners::parse(&vec![b'#'; MAX_ALLOWED_SIGNERS_BYTES + 1]),
            Err(MembersError::TooLarge(_))
        ));
        assert!(AllowedSigners::parse(b"\xff\xfe").is_err());
    }
}
