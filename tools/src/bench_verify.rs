//! `skygit-tools bench verify`: the time `skygit verify` takes on a room of
//! many signed messages. Builds the room first (not measured): a bare
//! repository with members added by `skygit members add`, and batch files
//! of posts signed by those members' keys, committed as the committer
//! would (10,000 lines a commit); then runs `skygit verify --json` on it
//! `--runs` times and reports the wall time of each run.

use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::Args;
use skygit_actors::layout;
use skygit_actors::ports::identity::{change_statement, unarmor, SigningKey};
use skygit_actors::ports::{CommitRequest, RepoRemote};
use skygit_consensus::model::{Change, ChangeKind, ConversationId, UserId};
use skygit_remotes::git::GitRemote;

#[derive(Args)]
pub struct VerifyBenchArgs {
    /// Signed messages in the room.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    messages: u64,
    /// Bytes of text per message.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=16_384))]
    size: u64,
    /// Members posting (each with a key of their own).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=100))]
    members: u64,
    /// Runs of `skygit verify` measured.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=20))]
    runs: u64,
    /// Print one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

/// Lines per commit while building the room.
const PER_COMMIT: usize = 10_000;

pub async fn verify(args: VerifyBenchArgs) -> anyhow::Result<()> {
    let bin = crate::skygit_binary()?;
    let work = tempfile::tempdir()?;
    let repo = work.path().join("room.git");
    let data = work.path().join("data");
    let run = |cmd: &mut Command| -> anyhow::Result<std::process::Output> {
        let out = cmd.output().with_context(|| format!("{cmd:?}"))?;
        if !out.status.success() {
            bail!(
                "{cmd:?} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(out)
    };
    let skygit = |args: &[&str]| {
        let mut c = Command::new(&bin);
        c.args(args)
            .arg("--repo")
            .arg(&repo)
            .arg("--data-dir")
            .arg(&data);
        c
    };
    run(&mut skygit(&["init"]))?;
    let mut members = Vec::new();
    for m in 0..args.members {
        let mut seed = [0x42; 32];
        seed[..8].copy_from_slice(&m.to_be_bytes());
        let key = SigningKey::from_ed25519_seed(seed);
        let user = UserId::new(format!("member{m}"))?;
        let public = work.path().join(format!("{user}.pub"));
        std::fs::write(&public, key.public().to_openssh()?)?;
        run(&mut skygit(&[
            "members",
            "add",
            user.as_str(),
            &public.to_string_lossy(),
        ]))?;
        members.push((user, key));
    }

    let built = Instant::now();
    let remote: Arc<dyn RepoRemote> = Arc::new(GitRemote::open(
        &repo.to_string_lossy(),
        "main",
        &work.path().join("cache"),
    )?);
    let mut head = remote
        .head()
        .await?
        .context("the room has no commit after init")?
        .commit_sha;
    let text = "x".repeat(args.size as usize);
    let base_at: i64 = 1_765_000_000_000;
    let mut chunk = Vec::with_capacity(PER_COMMIT);
    for i in 1..=args.messages {
        let (user, key) = &members[(i % args.members) as usize];
        let at = base_at + i as i64 * 10;
        let request = ulid::Ulid::from_parts(at as u64, u128::from(i));
        let mut change = Change {
            index: i,
            term: 1,
            request,
            sender: user.clone(),
            at,
            conversation: ConversationId::general(),
            kind: ChangeKind::Post {
                message: request,
                content: format!("{i} {text}"),
                attachments: Vec::new(),
            },
            signature: None,
        };
        change.signature = Some(unarmor(&key.sign(&change_statement(&change))?));
        chunk.push(change);
        if chunk.len() == PER_COMMIT || i == args.messages {
            let batch = layout::render(&chunk).context("nothing to render")?;
            head = remote
                .commit(CommitRequest {
                    expected_head: Some(head),
                    files: batch.files,
                    message: batch.message,
                    time_secs: batch.time_secs,
                })
                .await?;
            chunk.clear();
        }
    }
    eprintln!(
        "built a room of {} signed messages by {} members in {:.1} s",
        args.messages,
        args.members,
        built.elapsed().as_secs_f64()
    );

    let mut seconds = Vec::new();
    for _ in 0..args.runs {
        let t = Instant::now();
        let out = run(&mut skygit(&["verify", "--json"]))?;
        seconds.push(t.elapsed().as_secs_f64());
        let report: skygit::verify::Report =
            serde_json::from_slice(&out.stdout).context("verify --json")?;
        if report.verified != args.messages || report.failed_total != 0 {
            bail!(
                "verify checked {report:?}, not {} good lines",
                args.messages
            );
        }
    }
    let mut sorted = seconds.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    eprintln!(
        "verify bench: {} signed messages verified in {:.2} s (median of {}; runs {:?}), {:.0} lines/s",
        args.messages,
        median,
        args.runs,
        seconds.iter().map(|s| format!("{s:.2}")).collect::<Vec<_>>(),
        args.messages as f64 / median
    );
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "bench": "verify",
                "messages": args.messages,
                "members": args.members,
                "message_bytes": args.size,
                "runs_s": seconds,
                "median_s": median,
                "lines_per_sec": args.messages as f64 / median,
            })
        );
    }
    Ok(())
}
