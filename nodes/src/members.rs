//! `skygit members add|remove|list --repo R`: the room's members and their
//! SSH public keys in `.messages/allowed_signers` (plain git remotes; a
//! GitHub room's keys are the ones GitHub lists for each user). A change is
//! one commit that keeps the head's watermark trailer, made only if the
//! branch did not move meanwhile.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use skygit_actors::layout;
use skygit_actors::members::{AllowedSigners, MemberKey, ALLOWED_SIGNERS_PATH};
use skygit_actors::ports::{CommitRequest, RepoRemote};
use skygit_actors::readback;
use skygit_consensus::model::{RoomId, UserId};

use crate::config::{default_data_dir, resolve_remote, RemoteOverrides};
use crate::repo::{open_remote, RemoteArgs};

/// Largest public key file read.
const MAX_KEY_FILE_BYTES: u64 = 16 * 1024;

#[derive(Args)]
pub struct MembersArgs {
    /// The room's repository (a path or a git URL).
    #[arg(long, env = "SKYGIT_REPO", global = true)]
    repo: Option<String>,
    /// Where the repository cache goes (default: the node's data directory).
    #[arg(long, env = "SKYGIT_DATA_DIR", global = true)]
    data_dir: Option<PathBuf>,
    #[command(flatten)]
    remote: RemoteArgs,
    #[command(subcommand)]
    command: MembersCommand,
}

#[derive(Subcommand)]
enum MembersCommand {
    /// Add USER with the OpenSSH public key in KEY_FILE (a `.pub` file).
    Add { user: String, key_file: PathBuf },
    /// Remove USER's keys (only the one with `--key FINGERPRINT`, if given).
    Remove {
        user: String,
        #[arg(long)]
        key: Option<String>,
    },
    /// List the members and their keys' fingerprints.
    List {
        #[arg(long)]
        json: bool,
    },
}

struct Opened {
    remote: std::sync::Arc<dyn RepoRemote>,
    head: Option<skygit_actors::ports::RepoHead>,
    members: AllowedSigners,
}

async fn open(a: &MembersArgs) -> anyhow::Result<Opened> {
    let repo = a
        .repo
        .as_deref()
        .context("no repository given: use --repo or SKYGIT_REPO")?;
    if skygit_remotes::parse_github_spec(repo).is_some() {
        bail!("a GitHub room's members are its collaborators, with the SSH keys GitHub lists for them: there is no members file to edit");
    }
    let room = RoomId::new(repo).context("invalid repository")?;
    let opts = resolve_remote(&RemoteOverrides::default(), a.remote.overrides())?;
    let data_dir = a.data_dir.clone().unwrap_or_else(default_data_dir);
    let remote = open_remote(&room, &opts, &data_dir, 0)?;
    let head = remote.head().await.context("cannot read the branch")?;
    let members = match &head {
        None => AllowedSigners::default(),
        Some(h) => match readback::members_at(remote.as_ref(), &h.commit_sha).await? {
            None => AllowedSigners::default(),
            Some(Ok(m)) => m,
            Some(Err(e)) => bail!("{e}; fix or remove the file with git first"),
        },
    };
    Ok(Opened {
        remote,
        head,
        members,
    })
}

/// Commits the new members file on top of the head read.
async fn save(o: &Opened, message: &str) -> anyhow::Result<String> {
    let watermark = match &o.head {
        Some(h) => readback::watermark_of(o.remote.as_ref(), h).await?,
        None => 0,
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let message = if o.head.is_none() {
        format!("{}\n{message}\n", layout::init_message())
    } else {
        // The head's group epoch carries over: a committer of an older
        // group must still see a newer group's founding behind it.
        let epoch = o
            .head
            .as_ref()
            .map_or(0, |h| layout::group_epoch(&h.message));
        layout::with_epoch(
            format!("skygit: {message}\n\nRaft-Last-Index: {watermark}\n"),
            epoch,
        )
    };
    o.remote
        .commit(CommitRequest {
            expected_head: o.head.as_ref().map(|h| h.commit_sha.clone()),
            files: vec![(ALLOWED_SIGNERS_PATH.to_owned(), o.members.render())],
            message,
            time_secs: now,
        })
        .await
        .context("cannot commit the members file (if the branch moved, run the command again)")
}

fn user(name: &str) -> anyhow::Result<UserId> {
    UserId::new(name).with_context(|| format!("invalid user name {name:?}"))
}

fn read_key_file(path: &std::path::Path) -> anyhow::Result<String> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(path)
        .with_context(|| format!("cannot open {}", path.display()))?
        .take(MAX_KEY_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .with_context(|| format!("cannot read {} as text", path.display()))?;
    if text.len() as u64 > MAX_KEY_FILE_BYTES {
        bail!(
            "{} is over {MAX_KEY_FILE_BYTES} bytes: not a public key",
            path.display()
        );
    }
    if text.contains("PRIVATE KEY") {
        bail!(
            "{} is a private key: give the public one (the .pub file)",
            path.display()
        );
    }
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    match lines.as_slice() {
        [one] => Ok((*one).to_owned()),
        _ => bail!("{} should hold one OpenSSH public key line", path.display()),
    }
}

pub async fn run(a: MembersArgs) -> anyhow::Result<()> {
    match &a.command {
        MembersCommand::Add {
            user: name,
            key_file,
        } => {
            let user = user(name)?;
            let key = MemberKey::new(user.clone(), &read_key_file(key_file)?)
                .with_context(|| format!("{}", key_file.display()))?;
            let fingerprint = key.fingerprint.clone();
            let mut o = open(&a).await?;
            o.members.push(key)?;
            let sha = save(&o, &format!("member {user} added ({fingerprint})")).await?;
            println!(
                "added {user} ({fingerprint}) to {} at {sha}",
                o.remote.describe()
            );
        }
        MembersCommand::Remove { user: name, key } => {
            let user = user(name)?;
            let mut o = open(&a).await?;
            let removed = o.members.remove(&user, key.as_deref());
            if removed == 0 {
                bail!("{user} has no such key in {ALLOWED_SIGNERS_PATH}");
            }
            let sha = save(&o, &format!("member {user}: {removed} key(s) removed")).await?;
            println!(
                "removed {removed} key(s) of {user} from {} at {sha}",
                o.remote.describe()
            );
        }
        MembersCommand::List { json } => {
            let o = open(&a).await?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&o.members.keys)?);
            } else if o.members.keys.is_empty() {
                println!("no members listed in {ALLOWED_SIGNERS_PATH}");
            } else {
                for k in &o.members.keys {
                    println!("{}\t{}\t{}", k.user, k.fingerprint, k.comment);
                }
            }
        }
    }
    Ok(())
}
