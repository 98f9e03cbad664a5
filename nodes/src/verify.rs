//! `skygit verify --repo R [--json]`: checks every line of a room's
//! history (posts, edits, deletes, conversations in the batch files at the
//! branch head) against its author's SSH keys: the keys GitHub lists for
//! the user on a GitHub room, the room's members file (at the head) on a
//! plain git remote. Names every line that fails, with its file and line;
//! exits non-zero when any does.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::Args;
use serde::{Deserialize, Serialize};
use skygit_actors::ports::identity::{self, KeyDirectory, RepoMembers};
use skygit_actors::ports::RepoRemote;
use skygit_actors::readback::{self, ReadbackLimits};
use skygit_consensus::model::RoomId;

use crate::config::{default_data_dir, resolve_remote, RemoteOverrides};
use crate::repo::{open_remote, RemoteArgs};

/// Lines named in a report at most (the counts are always complete).
const MAX_NAMED_FAILURES: usize = 1000;

#[derive(Args)]
pub struct VerifyArgs {
    /// The room's repository (a path, a git URL or `github:OWNER/NAME`).
    #[arg(long, env = "SKYGIT_REPO")]
    repo: String,
    /// Where the repository cache goes (default: the node's data directory).
    #[arg(long, env = "SKYGIT_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    remote: RemoteArgs,
}

/// What `skygit verify` found (its `--json` output).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Report {
    /// The commit checked.
    pub head: Option<String>,
    /// Where the keys came from: `github` or `allowed_signers`.
    pub keys_from: String,
    /// Lines checked, and how many verified.
    pub lines: u64,
    pub verified: u64,
    /// Lines that did not verify (the first 1000).
    pub failed: Vec<Failure>,
    /// How many lines failed in all.
    pub failed_total: u64,
    pub elapsed_ms: u64,
}

/// One line that did not verify.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Failure {
    pub file: String,
    pub line: usize,
    pub index: u64,
    pub sender: String,
    pub reason: String,
}

pub async fn run(a: VerifyArgs) -> anyhow::Result<()> {
    let report = check(&a).await?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for f in &report.failed {
            println!(
                "{}:{}: index {} by {}: {}",
                f.file, f.line, f.index, f.sender, f.reason
            );
        }
        println!(
            "{} of {} lines verified against {} keys at {} ({} ms)",
            report.verified,
            report.lines,
            report.keys_from,
            report.head.as_deref().unwrap_or("an empty branch"),
            report.elapsed_ms
        );
    }
    if report.failed_total > 0 {
        bail!("{} line(s) did not verify", report.failed_total);
    }
    Ok(())
}

async fn check(a: &VerifyArgs) -> anyhow::Result<Report> {
    let started = Instant::now();
    let room = RoomId::new(a.repo.as_str()).context("invalid repository")?;
    let opts = resolve_remote(&RemoteOverrides::default(), a.remote.overrides())?;
    let (remote, directory): (Arc<dyn RepoRemote>, Arc<dyn KeyDirectory>) =
        match skygit_remotes::parse_github_spec(&a.repo) {
            Some(parsed) => {
                let (owner, name) = parsed.map_err(|e| anyhow::anyhow!("{}: {e}", a.repo))?;
                let gh = skygit_remotes::github_remote(&owner, &name, &opts)?;
                (
                    gh.clone(),
                    Arc::new(skygit_remotes::github::keys::GithubKeys::keys_only(gh)),
                )
            }
            None => {
                let data_dir = a.data_dir.clone().unwrap_or_else(default_data_dir);
                let remote = open_remote(&room, &opts, &data_dir, 0)?;
                (remote.clone(), Arc::new(RepoMembers::new(remote)))
            }
        };
    let history = readback::load(remote.as_ref(), ReadbackLimits::default())
        .await
        .context("cannot read the room's history")?;
    let mut keys = BTreeMap::new();
    let mut report = Report {
        head: history.head.clone(),
        keys_from: directory.name().to_owned(),
        lines: 0,
        verified: 0,
        failed: Vec::new(),
        failed_total: 0,
        elapsed_ms: 0,
    };
    for (change, _) in &history.changes {
        report.lines += 1;
        let sender = change.sender.as_str();
        if !keys.contains_key(sender) {
            let k = directory
                .keys_of(sender)
                .await
                .with_context(|| format!("cannot read {sender}'s keys"))?;
            keys.insert(sender.to_owned(), k);
        }
        let user_keys = keys.get(sender).and_then(|k| k.as_deref());
        match identity::verify_change(user_keys, change) {
            Ok(()) => report.verified += 1,
            Err(e) => {
                report.failed_total += 1;
                if report.failed.len() < MAX_NAMED_FAILURES {
                    let (file, line) = history
                        .lines
                        .get(&change.index)
                        .cloned()
                        .unwrap_or_default();
                    report.failed.push(Failure {
                        file,
                        line,
                        index: change.index,
                        sender: sender.to_owned(),
                        reason: e.to_string(),
                    });
                }
            }
        }
    }
    report.elapsed_ms = started.elapsed().as_millis() as u64;
    Ok(report)
}
