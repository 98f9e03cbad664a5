//! Git LFS as GitHub serves it: the batch API at
//! `/{owner}/{name}.git/info/lfs/objects/batch` (HTTP Basic with a token as
//! the password; `Accept: application/vnd.git-lfs+json` or 406), and
//! transfer hrefs on another host name (`localhost` instead of
//! `127.0.0.1`) that carry their own `Authorization` header and refuse the
//! client's credentials, as GitHub's storage hosts do. Uploads are checked
//! against their oid.

use axum::http::HeaderMap;
use base64::Engine;
use serde_json::{json, Value};
use sha2::Digest;

use crate::server::{take_fault, Reply, Shared};
use crate::util::lock;

/// The media type of the batch API.
const LFS_JSON: &str = "application/vnd.git-lfs+json";
/// The header the transfer hrefs want.
const STORAGE_AUTH: &str = "RemoteAuth test-storage-grant";

fn lfs_reply(status: u16, body: Value) -> Reply {
    Reply::json(status, body).with_header("content-type", LFS_JSON.to_owned())
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// The login of HTTP Basic credentials whose password is a known token.
fn basic_login(shared: &Shared, h: &HeaderMap) -> Option<String> {
    let v = header(h, "authorization")?.strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(v.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (_, token) = text.split_once(':')?;
    lock(&shared.users).get(token).cloned()
}

fn storage_href(shared: &Shared, what: &str) -> String {
    format!(
        "{}/_lfs/{what}",
        shared.base_url.replace("127.0.0.1", "localhost")
    )
}

/// Answers an LFS request; `None` for any other path.
pub(crate) fn answer(
    shared: &Shared,
    method: &str,
    path: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Option<(Reply, Value)> {
    let path_only = path.split('?').next().unwrap_or(path);
    let batch = format!(
        "/{}/{}.git/info/lfs/objects/batch",
        shared.owner, shared.name
    );
    let recorded = || serde_json::from_slice(body).unwrap_or(Value::Null);
    if path_only == batch && method == "POST" {
        return Some((batch_call(shared, method, path, headers, body), recorded()));
    }
    let storage = path_only.strip_prefix("/_lfs/")?;
    let reply = if header(headers, "authorization") != Some(STORAGE_AUTH) {
        // The client's own credentials must never reach the storage host.
        Reply::message(
            403,
            "the storage host wants the action's header, and only it",
        )
    } else if storage == "verify" && method == "POST" {
        let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let oid = v["oid"].as_str().unwrap_or_default();
        match lock(&shared.lfs).get(oid) {
            Some(b) if v["size"].as_u64() == Some(b.len() as u64) => lfs_reply(200, json!({})),
            _ => lfs_reply(404, json!({ "message": "Object does not exist" })),
        }
    } else if let Some(oid) = storage.strip_prefix("objects/") {
        match method {
            "PUT" => {
                let found = hex::encode(sha2::Sha256::digest(body));
                if found != oid {
                    Reply::message(422, "the bytes do not match the oid")
                } else {
                    lock(&shared.lfs).insert(oid.to_owned(), body.to_vec());
                    Reply::json(200, json!({}))
                }
            }
            "GET" => match lock(&shared.lfs).get(oid) {
                Some(b) => Reply::raw(200, b.clone(), "application/octet-stream"),
                None => Reply::message(404, "Object does not exist"),
            },
            _ => Reply::message(405, "Method not allowed"),
        }
    } else {
        Reply::message(404, "Not Found")
    };
    Some((reply, Value::String(format!("{} bytes", body.len()))))
}

fn batch_call(
    shared: &Shared,
    method: &str,
    path: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Reply {
    if let Some(fault) = take_fault(shared, method, path) {
        return fault;
    }
    if basic_login(shared, headers).is_none() {
        return lfs_reply(401, json!({ "message": "Credentials needed" }))
            .with_header("lfs-authenticate", "Basic realm=\"GitHub\"".to_owned());
    }
    if !header(headers, "accept").is_some_and(|a| a.contains(LFS_JSON)) {
        return Reply::message(406, "Must accept application/vnd.git-lfs+json");
    }
    let Ok(req) = serde_json::from_slice::<Value>(body) else {
        return lfs_reply(422, json!({ "message": "Problems parsing JSON" }));
    };
    let op = req["operation"].as_str().unwrap_or_default();
    if !matches!(op, "upload" | "download") {
        return lfs_reply(
            422,
            json!({ "message": "operation must be upload or download" }),
        );
    }
    if !req["transfers"]
        .as_array()
        .is_none_or(|t| t.iter().any(|x| x == "basic"))
    {
        return lfs_reply(422, json!({ "message": "only the basic transfer" }));
    }
    let mut objects = Vec::new();
    for o in req["objects"].as_array().into_iter().flatten() {
        let oid = o["oid"].as_str().unwrap_or_default();
        let Some(size) = o["size"].as_u64() else {
            return lfs_reply(422, json!({ "message": "an object without a size" }));
        };
        if oid.len() != 64 || !oid.chars().all(|c| c.is_ascii_hexdigit()) {
            objects.push(json!({ "oid": oid, "size": size,
                "error": { "code": 422, "message": "oid is not a SHA-256" } }));
            continue;
        }
        let have = lock(&shared.lfs).get(oid).map(|b| b.len() as u64);
        let grant = json!({ "Authorization": STORAGE_AUTH });
        objects.push(match (op, have) {
            ("upload", Some(n)) if n == size => json!({ "oid": oid, "size": size }),
            ("upload", _) => json!({ "oid": oid, "size": size, "authenticated": true,
                "actions": {
                    "upload": { "href": storage_href(shared, &format!("objects/{oid}")), "header": grant, "expires_in": 3600 },
                    "verify": { "href": storage_href(shared, "verify"), "header": grant, "expires_in": 3600 } } }),
            (_, Some(n)) => json!({ "oid": oid, "size": n, "authenticated": true,
                "actions": { "download": { "href": storage_href(shared, &format!("objects/{oid}")), "header": grant, "expires_in": 3600 } } }),
            (_, None) => json!({ "oid": oid, "size": size,
                "error": { "code": 404, "message": "Object does not exist" } }),
        });
    }
    lfs_reply(200, json!({ "transfer": "basic", "objects": objects }))
}
