//! The node's API secret and the endpoint file the CLI reads.
//!
//! The secret is 32 random bytes in hex, made once per data directory and
//! kept in `<data-dir>/api-secret` with owner-only permissions; a file
//! others can read is refused (the secret would no longer be ours).
//! `<data-dir>/api.json` names the running node's API address.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use anyhow::Context;

pub const SECRET_FILE: &str = "api-secret";
pub const ENDPOINT_FILE: &str = "api.json";
/// The secret's length in hex digits.
const SECRET_HEX: usize = 64;

/// Writes `bytes` to `path` through a temporary file created readable by
/// its owner only, then renamed over `path`.
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("cannot create {}", tmp.display()))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}

/// Reads the secret from `data_dir`, checking its permissions.
pub fn read(data_dir: &Path) -> anyhow::Result<String> {
    let path = data_dir.join(SECRET_FILE);
    let meta = std::fs::metadata(&path)
        .with_context(|| format!("cannot read the node's secret {}", path.display()))?;
    anyhow::ensure!(
        meta.permissions().mode() & 0o077 == 0,
        "{} can be read by other users; make it owner-only (chmod 600) or delete it to make a new one",
        path.display()
    );
    anyhow::ensure!(
        meta.len() <= 2 * SECRET_HEX as u64,
        "{} is not a secret file",
        path.display()
    );
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let secret = text.trim().to_owned();
    anyhow::ensure!(
        secret.len() == SECRET_HEX && secret.bytes().all(|b| b.is_ascii_hexdigit()),
        "{} does not hold a secret ({SECRET_HEX} hex digits)",
        path.display()
    );
    Ok(secret)
}

/// The node's secret, made and stored on first use.
pub fn load_or_create(data_dir: &Path) -> anyhow::Result<String> {
    if data_dir.join(SECRET_FILE).exists() {
        return read(data_dir);
    }
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create {}", data_dir.display()))?;
    let secret = hex::encode(rand::random::<[u8; 32]>());
    write_private(
        &data_dir.join(SECRET_FILE),
        format!("{secret}\n").as_bytes(),
    )?;
    Ok(secret)
}

/// Records where the running node's API listens.
pub fn write_endpoint(data_dir: &Path, url: &str) -> anyhow::Result<()> {
    let body = serde_json::json!({ "url": url, "pid": std::process::id() });
    write_private(&data_dir.join(ENDPOINT_FILE), body.to_string().as_bytes())
}

/// The API address a running node recorded in `data_dir`.
pub fn read_endpoint(data_dir: &Path) -> anyhow::Result<String> {
    let path = data_dir.join(ENDPOINT_FILE);
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "no running node recorded in {} (start `skygit node`, or pass --api)",
            path.display()
        )
    })?;
    anyhow::ensure!(
        text.len() <= 4096,
        "{} is not an endpoint file",
        path.display()
    );
    let v: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
    v["url"]
        .as_str()
        .filter(|u| u.starts_with("http://"))
        .map(str::to_owned)
        .with_context(|| format!("{} names no http:// address", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_is_made_once_and_kept_owner_only() {
        let d = tempfile::tempdir().unwrap();
        let a = load_or_create(d.path()).unwrap();
        assert_eq!(a.len(), SECRET_HEX);
        assert_eq!(load_or_create(d.path()).unwrap(), a);
        let mode = std::fs::metadata(d.path().join(SECRET_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_secret_others_can_read_is_refused() {
        let d = tempfile::tempdir().unwrap();
        load_or_create(d.path()).unwrap();
        let p = d.path().join(SECRET_FILE);
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = load_or_create(d.path()).unwrap_err().to_string();
        assert!(e.contains("other users"), "{e}");
    }

    #[test]
    fn a_damaged_secret_is_refused() {
        let d = tempfile::tempdir().unwrap();
        write_private(&d.path().join(SECRET_FILE), b"not hex\n").unwrap();
        assert!(read(d.path()).is_err());
    }

    #[test]
    fn the_endpoint_round_trips() {
        let d = tempfile::tempdir().unwrap();
        write_endpoint(d.path(), "http://127.0.0.1:9").unwrap();
        assert_eq!(read_endpoint(d.path()).unwrap(), "http://127.0.0.1:9");
        std::fs::write(d.path().join(ENDPOINT_FILE), "{\"url\": \"file:///x\"}").unwrap();
        assert!(read_endpoint(d.path()).is_err());
    }
}
