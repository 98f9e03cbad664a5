//! Git-like object ids and tree paths of the simulated host: deterministic ids, path checks, file/folder clashes.

use super::*;

/// The first 8 characters of an id, for trace lines.
pub(super) fn short(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

pub(super) fn short_opt(id: Option<&str>) -> &str {
    id.map(short).unwrap_or("none")
}

/// A probability usable by `random_bool`.
pub(super) fn prob(p: f64) -> f64 {
    if p.is_finite() {
        p.clamp(0.0, 1.0)
    } else {
        0.0
    }
}

pub(super) fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// A deterministic 40-hex id of `kind` over `parts`.
pub(super) fn object_id(kind: &str, parts: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    h.update(kind.as_bytes());
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
    hex::encode(&h.finalize()[..20])
}

pub(super) fn tree_id(tree: &Tree) -> String {
    let mut h = Sha256::new();
    h.update(b"tree");
    for (path, blob) in tree {
        h.update((path.len() as u64).to_le_bytes());
        h.update(path.as_bytes());
        h.update(blob.as_bytes());
    }
    hex::encode(&h.finalize()[..20])
}

/// Whether git would accept `path` as a file's path.
pub(super) fn check_path(path: &str) -> Result<(), String> {
    if path.is_empty() || path.len() > MAX_PATH_BYTES {
        return Err(format!("path of {} bytes", path.len()));
    }
    if path.contains('\0') {
        return Err(format!("{path:?} holds a NUL"));
    }
    if path
        .split('/')
        .any(|part| part.is_empty() || part == "." || part == "..")
    {
        return Err(format!("{path:?} is not a clean relative path"));
    }
    Ok(())
}

/// The entries of `tree` under folder `dir` (which ends in `/`).
pub(super) fn under<'a>(
    tree: &'a Tree,
    dir: &'a str,
) -> impl Iterator<Item = (&'a Arc<str>, &'a Arc<str>)> {
    tree.range::<str, _>((Bound::Included(dir), Bound::Unbounded))
        .take_while(move |(p, _)| p.starts_with(dir))
}

/// A path of `tree` that is both a file and a folder, if any.
pub(super) fn file_folder_clash(tree: &Tree, path: &str) -> Option<String> {
    let mut end = 0;
    while let Some(i) = path[end..].find('/') {
        let folder = &path[..end + i];
        if tree.contains_key(folder) {
            return Some(folder.to_owned());
        }
        end += i + 1;
    }
    let dir = format!("{path}/");
    let clash = under(tree, &dir).next().is_some();
    clash.then(|| path.to_owned())
}
