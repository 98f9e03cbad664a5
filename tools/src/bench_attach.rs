//! `skygit-tools bench attach`: how fast a file posted on one node is on
//! every node, and in the room's storage. Each store gets a fresh room of
//! three node processes over WebRTC on a bare repository: `lfs-local`
//! (git-lfs's standalone layout in the repository), `lfs` (a giftless Git
//! LFS server on loopback), `s3` (a moto S3 server on loopback); the last
//! two need `scripts/setup.sh`'s servers. A file of `--size` random bytes
//! is uploaded to the first node and posted; the other two download it at
//! once (fetched over the mesh) while a third client posts chat through
//! the last node every 50 ms. Printed per store: seconds to upload, to be
//! on every node (and MB/s per node), to be stored, and the chat's p50
//! and p99 latency during the transfer.
//!
//! It prints numbers; it asserts nothing.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use skygit_harness::media_servers::{giftless, media_env, moto};
use skygit_harness::{init_repo, wait_for, wait_members, ChatProbe, NodeProc, NodeSpec};

#[derive(Args)]
pub struct AttachBenchArgs {
    /// The file's size: bytes, or with KiB, MiB or GiB.
    #[arg(long, default_value = "50MiB", value_parser = parse_size)]
    size: u64,
    /// The stores to measure, each in a fresh room.
    #[arg(long, value_delimiter = ',', default_value = "lfs-local,lfs,s3")]
    stores: Vec<String>,
    /// Where the nodes keep their data (default: a temporary directory).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Print one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

const SETTLE: Duration = Duration::from_secs(120);

fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map_or((s, ""), |i| s.split_at(i));
    let n: u64 = num.parse().map_err(|_| format!("size {s:?}: no number"))?;
    let mult = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        u => return Err(format!("size unit {u:?}: use B, KiB, MiB or GiB")),
    };
    n.checked_mul(mult)
        .filter(|&b| b > 0 && b <= 4 << 30)
        .ok_or_else(|| format!("size {s:?} is not 1 B to 4 GiB"))
}

#[derive(serde::Serialize)]
struct StoreRun {
    store: String,
    upload_s: f64,
    on_every_node_s: f64,
    mesh_mb_per_s_per_node: f64,
    stored_s: f64,
    chat_posts: usize,
    chat_p50_ms: f64,
    chat_p99_ms: f64,
}

/// `len` random bytes (xorshift; incompressible).
fn noise(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

async fn one(
    store: &str,
    dir: &Path,
    bin: &Path,
    bytes: &[u8],
    env: Option<&Path>,
) -> anyhow::Result<StoreRun> {
    let repo = dir.join("room.git");
    let max = (bytes.len() as u64).max(1 << 20).to_string();
    let mut args: Vec<String> = ["--commit-interval", "1", "--media-max-bytes", &max]
        .map(String::from)
        .to_vec();
    let mut servers = Vec::new();
    let mut node_env = Vec::new();
    match store {
        "lfs-local" => {}
        "lfs" => {
            let env = env.context("the lfs store needs giftless (bash scripts/setup.sh)")?;
            let s = giftless(env, &dir.join("giftless")).await?;
            args.extend([
                "--lfs-url".into(),
                format!("{}/skygit/room.git/info/lfs", s.url),
            ]);
            servers.push(s);
        }
        "s3" => {
            let env = env.context("the s3 store needs moto (bash scripts/setup.sh)")?;
            let s = moto(env, &dir.join("moto")).await?;
            let r = reqwest::Client::new()
                .put(format!("{}/bench", s.url))
                .send()
                .await?;
            anyhow::ensure!(r.status().is_success(), "bucket: {}", r.status());
            args.extend([
                "--media-storage".into(),
                "external".into(),
                "--s3-endpoint".into(),
                s.url.clone(),
                "--s3-bucket".into(),
                "bench".into(),
            ]);
            node_env.push(("AWS_ACCESS_KEY_ID".to_owned(), "bench".to_owned()));
            node_env.push(("AWS_SECRET_ACCESS_KEY".to_owned(), "bench".to_owned()));
            servers.push(s);
        }
        other => bail!("unknown store {other:?}: lfs-local, lfs or s3"),
    }
    let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
    init_repo(bin, &repo, &dir.join("init"), &arg_refs)?;
    let mut nodes = Vec::new();
    for user in ["ana", "bo", "cy"] {
        let mut spec = NodeSpec::new(bin, &repo, user, &dir.join(user));
        spec.env.extend(node_env.iter().cloned());
        nodes.push(NodeProc::start(spec).await?);
    }
    let refs: Vec<&NodeProc> = nodes.iter().collect();
    wait_members(&refs, 3, SETTLE).await?;

    let t = Instant::now();
    let a = nodes[0]
        .upload(bytes.to_vec(), "bench.bin", "application/octet-stream")
        .await?;
    let upload_s = t.elapsed().as_secs_f64();
    let posted = nodes[0].post_files("bench file", vec![a.clone()]).await?;
    let posted_at = Instant::now();
    let chat = ChatProbe::start(&nodes[2]);
    let t = Instant::now();
    let (b, c) = tokio::join!(
        nodes[1].download(&a.sha256, None),
        nodes[2].download(&a.sha256, None)
    );
    let on_every_node_s = t.elapsed().as_secs_f64();
    let chat = chat.finish().await?;
    for got in [b?, c?] {
        anyhow::ensure!(
            got.0 == 200 && got.1.len() == bytes.len(),
            "a node served {} bytes with status {}",
            got.1.len(),
            got.0
        );
    }
    let id = posted.message_id.clone();
    let node = &nodes[0];
    wait_for(SETTLE, "the file stored", || async {
        let m: skygit_api::Message = node.get(&format!("/messages/{id}")).await.ok()?;
        m.attachments.iter().all(|a| a.stored).then_some(())
    })
    .await?;
    let stored_s = posted_at.elapsed().as_secs_f64();
    for mut n in nodes {
        n.kill().await?;
    }
    drop(servers);
    Ok(StoreRun {
        store: store.to_owned(),
        upload_s,
        on_every_node_s,
        mesh_mb_per_s_per_node: bytes.len() as f64 / 1e6 / on_every_node_s,
        stored_s,
        chat_posts: chat.took_ms.len(),
        chat_p50_ms: chat.quantile(0.5),
        chat_p99_ms: chat.quantile(0.99),
    })
}

pub async fn attach(a: AttachBenchArgs) -> anyhow::Result<()> {
    let bin = crate::skygit_binary()?;
    let tmp = tempfile::tempdir()?;
    let base = a.data_dir.clone().unwrap_or_else(|| tmp.path().to_owned());
    let bytes = noise(usize::try_from(a.size)?);
    let env = media_env();
    let mut runs = Vec::new();
    for store in &a.stores {
        let dir = base.join(store);
        std::fs::create_dir_all(&dir)?;
        let r = one(store, &dir, &bin, &bytes, env.as_deref())
            .await
            .with_context(|| format!("store {store}"))?;
        if !a.json {
            println!(
                "{:<9} {} MiB: upload {:.2} s; on every node {:.2} s ({:.1} MB/s per node); stored {:.2} s after the post; chat during the transfer: {} posts, p50 {:.1} ms, p99 {:.1} ms",
                r.store,
                a.size >> 20,
                r.upload_s,
                r.on_every_node_s,
                r.mesh_mb_per_s_per_node,
                r.stored_s,
                r.chat_posts,
                r.chat_p50_ms,
                r.chat_p99_ms
            );
        }
        runs.push(r);
    }
    if a.json {
        println!(
            "{}",
            serde_json::json!({ "bench": "attach", "size_bytes": a.size, "runs": runs })
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_read_with_units() {
        assert_eq!(parse_size("50MiB"), Ok(50 << 20));
        assert_eq!(parse_size("7"), Ok(7));
        assert_eq!(parse_size("2 KiB"), Ok(2048));
        assert!(parse_size("0").is_err());
        assert!(parse_size("5GiB").is_err());
        assert!(parse_size("5MB").is_err());
        assert!(parse_size("MiB").is_err());
    }
}
