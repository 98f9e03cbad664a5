//! What a message says about the files attached to it.
//!
//! An attachment is content-addressed: its SHA-256 names it everywhere (the
//! node's local store, the mesh's transfers, Git LFS, S3). The room's log
//! carries only this metadata inside the post; the bytes never go through
//! raft. Everything here can arrive from the network or the repository, so
//! every field is bounded and checked when it is decoded.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::model::ValidationError;

/// Most attachments one message carries.
pub const MAX_ATTACHMENTS: usize = 10;
/// Longest attachment name, in bytes of UTF-8 (the API's 255 characters
/// of at most 4 bytes each).
pub const MAX_ATTACHMENT_NAME_BYTES: usize = 1020;
/// Longest media type (`type/subtype`), in bytes.
pub const MAX_MEDIA_TYPE_BYTES: usize = 127;
/// Largest attachment any room accepts (a room's own limit, in
/// `config.json`, is at most this).
pub const MAX_ATTACHMENT_SIZE: u64 = 4 * 1024 * 1024 * 1024;

/// The SHA-256 of an attachment's bytes: 64 lower-case hex digits.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ContentHash(String);

impl ContentHash {
    /// Checks and wraps a hash written as hex.
    pub fn new(s: impl Into<String>) -> Result<Self, ValidationError> {
        let s = s.into();
        if s.len() != 64 {
            return Err(ValidationError::OutOfRange {
                field: "sha256",
                allowed: format!("64 hex digits (found {} characters)", s.chars().count()),
            });
        }
        if let Some(ch) = s
            .chars()
            .find(|c| !(c.is_ascii_digit() || ('a'..='f').contains(c)))
        {
            return Err(ValidationError::BadChar {
                field: "sha256",
                ch,
            });
        }
        Ok(Self(s))
    }

    /// The hash of 32 raw bytes.
    pub fn from_digest(d: [u8; 32]) -> Self {
        use std::fmt::Write;
        let mut s = String::with_capacity(64);
        for b in d {
            let _ = write!(s, "{b:02x}");
        }
        Self(s)
    }

    /// The hash as hex.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for ContentHash {
    type Error = ValidationError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::new(s)
    }
}

impl From<ContentHash> for String {
    fn from(h: ContentHash) -> String {
        h.0
    }
}

impl fmt::Display for ContentHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One file attached to a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    pub sha256: ContentHash,
    /// Size in bytes.
    pub size: u64,
    /// The name it was uploaded with: shown to people, never used as a
    /// path.
    pub name: String,
    /// Its media type (`image/png`), as the uploader said.
    pub media_type: String,
}

impl Attachment {
    /// Checks every bound.
    pub fn validate(&self) -> Result<(), ValidationError> {
        if self.size > MAX_ATTACHMENT_SIZE {
            return Err(ValidationError::OutOfRange {
                field: "attachment size",
                allowed: format!("at most {MAX_ATTACHMENT_SIZE} bytes"),
            });
        }
        check_name(&self.name)?;
        check_media_type(&self.media_type)
    }
}

/// An attachment name: 1 to 1020 bytes, no control characters, not only
/// white space.
pub fn check_name(name: &str) -> Result<(), ValidationError> {
    let field = "attachment name";
    if name.trim().is_empty() {
        return Err(ValidationError::Empty { field });
    }
    if name.len() > MAX_ATTACHMENT_NAME_BYTES {
        return Err(ValidationError::TooLong {
            field,
            len: name.len(),
            max: MAX_ATTACHMENT_NAME_BYTES,
        });
    }
    match name.chars().find(|c| c.is_control()) {
        Some(ch) => Err(ValidationError::BadChar { field, ch }),
        None => Ok(()),
    }
}

/// A media type: `type/subtype` of RFC 6838's token characters, at most
/// 127 bytes, without parameters.
pub fn check_media_type(t: &str) -> Result<(), ValidationError> {
    let field = "media type";
    if t.len() > MAX_MEDIA_TYPE_BYTES {
        return Err(ValidationError::TooLong {
            field,
            len: t.len(),
            max: MAX_MEDIA_TYPE_BYTES,
        });
    }
    let token = |s: &str| {
        !s.is_empty()
            && s.chars().all(|c| {
                c.is_ascii_alphanumeric()
                    || matches!(c, '!' | '#' | '$' | '&' | '-' | '^' | '_' | '.' | '+')
            })
    };
    match t.split_once('/') {
        Some((a, b)) if token(a) && token(b) => Ok(()),
        _ => Err(ValidationError::OutOfRange {
            field,
            allowed: "type/subtype (like image/png)".into(),
        }),
    }
}

/// Checks a message's attachments: at most [`MAX_ATTACHMENTS`], each
/// valid, no hash twice.
pub fn validate_all(list: &[Attachment]) -> Result<(), ValidationError> {
    if list.len() > MAX_ATTACHMENTS {
        return Err(ValidationError::OutOfRange {
            field: "attachments",
            allowed: format!("at most {MAX_ATTACHMENTS}"),
        });
    }
    for (i, a) in list.iter().enumerate() {
        a.validate()?;
        if list[..i].iter().any(|b| b.sha256 == a.sha256) {
            return Err(ValidationError::OutOfRange {
                field: "attachments",
                allowed: "each file once".into(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn att(name: &str, media: &str) -> Attachment {
        Attachment {
            sha256: ContentHash::from_digest([7; 32]),
            size: 10,
            name: name.into(),
            media_type: media.into(),
        }
    }

    #[test]
    fn hashes_are_64_lower_hex() {
        assert!(ContentHash::new("a".repeat(64)).is_ok());
        assert!(ContentHash::new("A".repeat(64)).is_err());
        assert!(ContentHash::new("a".repeat(63)).is_err());
        assert!(ContentHash::new("g".repeat(64)).is_err());
        assert!(ContentHash::new("../".repeat(21) + "a").is_err());
        assert_eq!(
            ContentHash::from_digest([0xab; 32]).as_str(),
            "ab".repeat(32)
        );
        let bad: Result<ContentHash, _> = serde_json::from_str("\"zz\"");
        assert!(bad.is_err());
    }

    #[test]
    fn names_and_types_are_bounded() {
        assert!(att("<img src=x onerror=alert(1)>.png", "image/png")
            .validate()
            .is_ok());
        assert!(att("a\nb", "image/png").validate().is_err());
        assert!(att(" ", "image/png").validate().is_err());
        assert!(att(&"x".repeat(1021), "image/png").validate().is_err());
        assert!(att("a", "image").validate().is_err());
        assert!(att("a", "image/png; charset=x").validate().is_err());
        assert!(att("a", "application/vnd.git-lfs+json").validate().is_ok());
        let mut big = att("a", "image/png");
        big.size = MAX_ATTACHMENT_SIZE + 1;
        assert!(big.validate().is_err());
    }

    #[test]
    fn a_list_is_bounded_and_has_each_file_once() {
        let one = att("a", "text/plain");
        assert!(validate_all(std::slice::from_ref(&one)).is_ok());
        assert!(validate_all(&[one.clone(), one.clone()]).is_err());
        let many: Vec<_> = (0..=MAX_ATTACHMENTS as u8)
            .map(|i| Attachment {
                sha256: ContentHash::from_digest([i; 32]),
                ..one.clone()
            })
            .collect();
        assert!(validate_all(&many).is_err());
        assert!(validate_all(&many[..MAX_ATTACHMENTS]).is_ok());
    }
}
