//! GitHub's record of who may write the room's repository and who holds
//! which SSH key, as the key directory of a GitHub room: a member is a user
//! with write access to the repository
//! (`GET /repos/{o}/{r}/collaborators/{user}/permission` answers `admin`,
//! `maintain` or `write`), and a member's keys are the keys their GitHub
//! account lists (`GET /users/{user}/keys`). Reads are conditional (a 304
//! costs no quota) and remembered for a few seconds per user (served while
//! a refresh runs), so a user whose access is removed is refused at the
//! second re-check of their claim at the latest.

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
    /// Whether only users with write access are members.
    members_write: bool,
}

#[derive(Deserialize)]
struct Key {
    key: String,
}

#[derive(Deserialize)]
struct Permission {
    permission: String,
}

/// Largest permission answer read.
const MAX_PERMISSION_ANSWER_BYTES: usize = 64 * 1024;

/// `GET path` as JSON; `None` for a 404 (nobody GitHub knows).
async fn read<T: serde::de::DeserializeOwned>(
    remote: &GithubRemote,
    path: &str,
    max_bytes: usize,
    what: &str,
) -> Result<Option<T>, DirectoryError> {
    let answer = remote
        .get(path, max_bytes)
        .await
        .map_err(|e| DirectoryError(e.to_string()))?;
    match answer.status {
        StatusCode::OK => answer
            .json(what)
            .map(Some)
            .map_err(|e| DirectoryError(e.to_string())),
        StatusCode::NOT_FOUND => Ok(None),
        s => Err(DirectoryError(format!(
            "GET {path}: {s} {}",
            answer.message()
        ))),
    }
}

/// Whether `user` may write the room's repository (reading another
/// user's permission needs a token with write access).
async fn may_write(remote: &GithubRemote, user: &str) -> Result<bool, DirectoryError> {
    let path = format!("{}/collaborators/{user}/permission", remote.repo_path());
    let p: Option<Permission> = read(
        remote,
        &path,
        MAX_PERMISSION_ANSWER_BYTES,
        "the user's permission",
    )
    .await?;
    Ok(p.is_some_and(|p| matches!(p.permission.as_str(), "admin" | "maintain" | "write")))
}

impl GithubKeys {
    /// The directory of a live room: members are the users who may
    /// write its repository.
    pub fn new(remote: Arc<GithubRemote>) -> GithubKeys {
        GithubKeys {
            remote,
            cache: Arc::new(TtlCache::new(USERS_CACHED)),
            members_write: true,
        }
    }

    /// Every GitHub user's keys, whatever their access now (checking a
    /// room's history: a line written by someone whose access was removed
    /// since is still theirs).
    pub fn keys_only(remote: Arc<GithubRemote>) -> GithubKeys {
        GithubKeys {
            members_write: false,
            ..GithubKeys::new(remote)
        }
    }
}

/// `user`'s keys as GitHub lists them now.
async fn fetch(
    remote: Arc<GithubRemote>,
    user: String,
    members_write: bool,
) -> Result<Option<Vec<PublicKey>>, DirectoryError> {
    // A name GitHub could not have is nobody's (and never reaches a URL).
    if !is_login(&user) {
        return Ok(None);
    }
    if members_write && !may_write(&remote, &user).await? {
        return Ok(None);
    }
    let path = format!("/users/{user}/keys?per_page=100");
    let Some(keys): Option<Vec<Key>> =
        read(&remote, &path, MAX_KEYS_ANSWER_BYTES, "the user's keys").await?
    else {
        return Ok(None);
    };
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
            let (remote, name, write) = (self.remote.clone(), user.to_owned(), self.members_write);
            cached(&self.cache, user.to_owned(), move || {
                Box::pin(fetch(remote, name, write))
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
