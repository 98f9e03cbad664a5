//! Small helpers: percent-decoding, query strings, base64 in GitHub's line
//! format, dates, path and sha validation, ETags.

use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;

/// Locks a mutex, ignoring poisoning (the data stays usable).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Opens the bare repository at `path`, creating it (HEAD on `main`) if
/// there is none.
pub(crate) fn open_or_init(path: &Path) -> Result<git2::Repository, git2::Error> {
    match git2::Repository::open_bare(path) {
        Ok(repo) => Ok(repo),
        Err(_) => {
            let mut opts = git2::RepositoryInitOptions::new();
            opts.bare(true).initial_head("main").mkdir(true);
            git2::Repository::init_opts(path, &opts)
        }
    }
}

pub(crate) fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Decodes `%XX` escapes (and, in query strings, `+` as space). Returns
/// `None` for a result that is not UTF-8.
pub(crate) fn percent_decode(s: &str, plus_is_space: bool) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' && i + 2 < bytes.len() {
            let hex = |c: u8| (c as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(if plus_is_space && b == b'+' { b' ' } else { b });
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// Encodes a query-string component.
pub(crate) fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Parses a query string into decoded pairs (undecodable pairs are dropped).
pub(crate) fn parse_query(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .filter_map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            Some((percent_decode(k, true)?, percent_decode(v, true)?))
        })
        .collect()
}

/// Base64 with a newline after every 60 characters (also after the last,
/// shorter line), as GitHub (Ruby's `Base64.encode64`) produces it.
pub(crate) fn base64_lines(data: &[u8]) -> String {
    let plain = base64::engine::general_purpose::STANDARD.encode(data);
    let mut out = String::with_capacity(plain.len() + plain.len() / 60 + 1);
    let mut rest = plain.as_str();
    while !rest.is_empty() {
        let n = rest.len().min(60);
        out.push_str(&rest[..n]);
        out.push('\n');
        rest = &rest[n..];
    }
    out
}

/// Decodes base64, ignoring ASCII whitespace (line breaks).
pub(crate) fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let compact: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    base64::engine::general_purpose::STANDARD
        .decode(compact)
        .ok()
}

/// `2026-11-22T10:00:00Z` for unix seconds.
pub(crate) fn iso_utc(secs: i64) -> String {
    chrono::DateTime::<chrono::Utc>::from_timestamp(secs, 0)
        .map(|d| d.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_else(|| "1970-01-01T00:00:00Z".to_owned())
}

/// Parses an RFC 3339 date into unix seconds and the UTC offset in minutes.
pub(crate) fn parse_date(s: &str) -> Option<(i64, i32)> {
    let d = chrono::DateTime::parse_from_rfc3339(s.trim()).ok()?;
    Some((d.timestamp(), d.offset().local_minus_utc() / 60))
}

/// A full 40-hex object id (`Oid::from_str` would pad shorter prefixes).
pub(crate) fn full_oid(s: &str) -> Option<git2::Oid> {
    if s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
        git2::Oid::from_str(s).ok()
    } else {
        None
    }
}

/// Checks a repository-relative file path: no empty, `.` or `..`
/// components, no leading or trailing slash, no NUL.
pub(crate) fn check_path(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("path cannot be empty".to_owned());
    }
    if path.contains('\0') {
        return Err(format!(
            "path '{}' contains a NUL byte",
            path.escape_debug()
        ));
    }
    for part in path.split('/') {
        if part.is_empty() || part == "." || part == ".." || part.eq_ignore_ascii_case(".git") {
            return Err(format!("path '{path}' is invalid"));
        }
    }
    Ok(())
}

/// A stable hash of a response body, used as its ETag.
pub(crate) fn etag_of(body: &[u8]) -> String {
    git2::Oid::hash_object(git2::ObjectType::Blob, body)
        .map(|o| o.to_string())
        .unwrap_or_default()
}

/// Whether an `If-None-Match` header value matches `etag` (quoted).
pub(crate) fn etag_matches(if_none_match: &str, etag: &str) -> bool {
    if_none_match.split(',').any(|t| {
        let t = t.trim();
        let t = t.strip_prefix("W/").unwrap_or(t);
        t == "*" || t == etag || t.trim_matches('"') == etag.trim_matches('"')
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode() {
        assert_eq!(percent_decode("a%2Fb+c", true).as_deref(), Some("a/b c"));
        assert_eq!(percent_decode("a%2", false).as_deref(), Some("a%2"));
        assert_eq!(percent_decode("%", false).as_deref(), Some("%"));
        assert_eq!(percent_decode("%ff", false), None);
        assert_eq!(percent_decode("x%41", false).as_deref(), Some("xA"));
    }

    #[test]
    fn base64_format() {
        assert_eq!(base64_lines(b""), "");
        assert_eq!(base64_lines(b"hi"), "aGk=\n");
        let long = base64_lines(&[0u8; 90]);
        assert_eq!(long.lines().map(str::len).collect::<Vec<_>>(), vec![60, 60]);
        assert_eq!(base64_decode(&long), Some(vec![0u8; 90]));
    }

    #[test]
    fn paths() {
        assert!(check_path("a/b/c.jsonl").is_ok());
        for bad in ["", "/a", "a/", "a//b", "a/../b", "./a", "a/.git/x"] {
            assert!(check_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn dates() {
        assert_eq!(parse_date("2026-11-22T10:00:00Z"), Some((1795341600, 0)));
        assert_eq!(
            parse_date("2026-11-22T12:00:00+02:00"),
            Some((1795341600, 120))
        );
        assert_eq!(iso_utc(1795341600), "2026-11-22T10:00:00Z");
        assert_eq!(parse_date("yesterday"), None);
    }
}
