//! GitHub's record of who holds which SSH key (`GET /users/{user}/keys`),
//! as the key directory of a GitHub room: a member's keys are the keys
//! their GitHub account lists. Reads are conditional (a 304 costs no
//! quota) and remembered for a few seconds per user.

use std::sync::Arc;

use futures::future::BoxFuture;
use http::StatusCode;
use serde::Deserialize;
use skygit_ports::identity::{cached, DirectoryError, KeyDirectory, TtlCache};
use ssh_key::PublicKey;

use super::GithubRemote;

/// Largest key list read (GitHub lists at most 100 keys per page).
const MAX_KEYS_ANSWER_BYTES: usize = 256 * 1024;
/// Users whose keys are remembered.
const USERS_CACHED: usize = 1024;

/// `user`'s keys on GitHub, through the room's remote.
pub struct GithubKeys {
    remote: Arc<GithubRemote>,
    cache: Arc<TtlCache<String, Option<Vec<PublicKey>>>>,
}

#[derive(Deserialize)]
struct Key {
    key: String,
}

impl GithubKeys {
    pub fn new(remote: Arc<GithubRemote>) -> GithubKeys {
        GithubKeys {
            remote,
            cache: Arc::new(TtlCache::new(USERS_CACHED)),
        }
    }
}

/// `user`'s keys as GitHub lists them now.
async fn fetch(
    remote: Arc<GithubRemote>,
    user: String,
) -> Result<Option<Vec<PublicKey>>, DirectoryError> {
    // A name GitHub could not have is nobody's (and never reaches a URL).
    if !is_login(&user) {
        return Ok(None);
    }
    let path = format!("/users/{user}/keys?per_page=100");
    let answer = remote
        .get(&path, MAX_KEYS_ANSWER_BYTES)
        .await
        .map_err(|e| DirectoryError(e.to_string()))?;
    match answer.status {
        StatusCode::OK => {}
        StatusCode::NOT_FOUND => return Ok(None),
        s => {
            return Err(DirectoryError(format!(
                "GET {path}: {s} {}",
                answer.message()
            )))
        }
    }
    let keys: Vec<Key> = answer
        .json("the user's keys")
        .map_err(|e| DirectoryError(e.to_string()))?;
    // A key this build cannot read is not one the user signs with here.
    Ok(Some(
        keys.iter()
            .filter_map(|k| PublicKey::from_openssh(k.key.trim()).ok())
            .collect(),
    ))
}

/// A GitHub login: letters, digits and single inner hyphens, 1 to 39.
fn is_login(user: &str) -> bool {
    !user.is_empty()
        && user.len() <= 39
        && user.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !user.starts_with('-')
        && !user.ends_with('-')
}

impl KeyDirectory for GithubKeys {
    fn keys_of<'a>(
        &'a self,
        user: &'a str,
    ) -> BoxFuture<'a, Result<Option<Vec<PublicKey>>, DirectoryError>> {
        Box::pin(async move {
            let (remote, name) = (self.remote.clone(), user.to_owned());
            cached(&self.cache, user.to_owned(), move || {
                Box::pin(fetch(remote, name))
            })
            .await
        })
    }

    fn name(&self) -> &'static str {
        "github"
    }
}

#[cfg(test)]
mod tests {
    use super::is_login;

    #[test]
    fn only_github_logins_reach_a_url() {
        for ok in ["alice", "a", "bob-2", "X9"] {
            assert!(is_login(ok), "{ok}");
        }
        for bad in [
            "",
            "-a",
            "a-",
            "a/b",
            "../x",
            "a b",
            &"a".repeat(40),
            "a?x=1",
        ] {
            assert!(!is_login(bad), "{bad}");
        }
    }
}
