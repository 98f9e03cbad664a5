//! The real repository remotes behind the
//! [`RepoRemote`](skygit_ports::RepoRemote) port:
//!
//! - [`github::GithubRemote`]: `github:OWNER/NAME`, through GitHub's REST
//!   API (the Git Data API for commits);
//! - [`git::GitRemote`]: a local path or any git URL, through libgit2.
//!
//! [`open`] picks one from a room's repository spec.
//!
//! The presence channels behind
//! [`PresenceChannel`](skygit_ports::PresenceChannel) store per-node
//! refs `refs/skygit/presence/<id>` identically on either backend:
//! [`GitPresence`] and [`GithubPresence`].

pub mod git;
pub mod git_presence;
pub mod github;
pub mod github_presence;
pub mod media;

pub use git_presence::GitPresence;
pub use github_presence::GithubPresence;

use std::path::Path;
use std::sync::Arc;

use skygit_ports::{RepoError, RepoRemote};

/// The default log branch.
pub const DEFAULT_BRANCH: &str = "main";

/// How to reach a room's repository.
#[derive(Clone, Default)]
pub struct RemoteOptions {
    /// The log branch (default `main`).
    pub branch: Option<String>,
    /// GitHub API base URL (default `https://api.github.com`).
    pub github_api: Option<String>,
    /// GitHub token.
    pub token: Option<String>,
}

impl std::fmt::Debug for RemoteOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteOptions")
            .field("branch", &self.branch)
            .field("github_api", &self.github_api)
            .field("token", &self.token.as_ref().map(|_| "***"))
            .finish()
    }
}

/// `github:OWNER/NAME` split into owner and name, checked against GitHub's
/// naming rules.
pub fn parse_github_spec(spec: &str) -> Option<Result<(String, String), RepoError>> {
    let rest = spec.strip_prefix("github:")?;
    let ok = |s: &str| {
        !s.is_empty()
            && s.len() <= 100
            && s != "."
            && s != ".."
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    Some(match rest.split_once('/') {
        Some((o, n)) if ok(o) && ok(n) => Ok((o.to_owned(), n.to_owned())),
        _ => Err(RepoError::Invalid(format!(
            "{spec:?} is not of the form github:OWNER/NAME"
        ))),
    })
}

/// The remote for repository `spec`: `github:OWNER/NAME`, a git URL or a
/// local path. `cache_dir` is where a git remote keeps its cache
/// repository.
pub fn open(
    spec: &str,
    opts: &RemoteOptions,
    cache_dir: &Path,
) -> Result<Arc<dyn RepoRemote>, RepoError> {
    let branch = opts.branch.as_deref().unwrap_or(DEFAULT_BRANCH);
    match parse_github_spec(spec) {
        Some(parsed) => {
            let (owner, name) = parsed?;
            Ok(github_remote(&owner, &name, opts)?)
        }
        None => Ok(Arc::new(git::GitRemote::open(spec, branch, cache_dir)?)),
    }
}

/// The GitHub repository `owner/name` (its API as `opts` says).
pub fn github_remote(
    owner: &str,
    name: &str,
    opts: &RemoteOptions,
) -> Result<Arc<github::GithubRemote>, RepoError> {
    Ok(Arc::new(github::GithubRemote::new(github::GithubConfig {
        api: opts
            .github_api
            .clone()
            .unwrap_or_else(|| github::DEFAULT_API.to_owned())
            .trim_end_matches('/')
            .to_owned(),
        owner: owner.to_owned(),
        name: name.to_owned(),
        branch: opts.branch.as_deref().unwrap_or(DEFAULT_BRANCH).to_owned(),
        token: opts.token.clone(),
    })?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn github_specs_are_checked() {
        assert_eq!(
            parse_github_spec("github:acme/team-chat").unwrap().unwrap(),
            ("acme".into(), "team-chat".into())
        );
        assert!(parse_github_spec("github:acme").unwrap().is_err());
        assert!(parse_github_spec("github:acme/../x").unwrap().is_err());
        assert!(parse_github_spec("github:a/b?c").unwrap().is_err());
        assert!(parse_github_spec("./room.git").is_none());
    }
}
