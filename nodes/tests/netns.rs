//! Three `skygit node` processes in separate network namespaces joined by
//! a bridge, as three hosts on one LAN. One namespace is cut off from the
//! bridge while the others keep posting, then healed: the isolated node
//! reconnects over WebRTC and catches up. The repository (a path every
//! namespace sees) stays reachable, as GitHub would from every host.
//!
//! Needs root (network namespaces). Elsewhere the test says why it
//! skipped; under CI, which runs as root, it fails instead.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use skygit_harness::{
    converged, link_phase, post_round, skip_unless_required, wait_for, wait_leader, wait_members,
    NodeProc, NodeSpec,
};
use skygit_tests::git_server::git;

const SETTLE: Duration = Duration::from_secs(120);

fn ip(args: &[&str]) -> Result<(), String> {
    let mut all = vec!["ip"];
    all.extend_from_slice(args);
    skygit_harness::nat::run(&all)
}

/// Namespaces `sk<tag>n<i>`, veths `sk<tag>v<i>` (bridge side) and
/// `sk<tag>p<i>` (namespace side), bridge `sk<tag>br`; removed on drop.
struct Lan {
    tag: String,
    hosts: usize,
}

impl Lan {
    fn ns(&self, i: usize) -> String {
        format!("sk{}n{i}", self.tag)
    }
    fn veth(&self, i: usize) -> String {
        format!("sk{}v{i}", self.tag)
    }
    fn addr(&self, i: usize) -> String {
        format!("10.77.{}.{i}", self.subnet())
    }
    /// The API's address: on a separate point-to-point link to the test's
    /// namespace, so cutting the LAN leaves the API reachable.
    fn api(&self, i: usize) -> String {
        format!("172.{}.{}.2", 20 + i, self.subnet())
    }
    fn subnet(&self) -> u32 {
        std::process::id() % 200 + 20
    }
    fn bridge(&self) -> String {
        format!("sk{}br", self.tag)
    }

    fn build(hosts: usize) -> Result<Lan, String> {
        let lan = Lan {
            tag: format!("{:x}", std::process::id() % 0xffff),
            hosts,
        };
        let br = lan.bridge();
        ip(&["link", "add", &br, "type", "bridge"])?;
        ip(&[
            "addr",
            "add",
            &format!("10.77.{}.254/24", lan.subnet()),
            "dev",
            &br,
        ])?;
        ip(&["link", "set", &br, "up"])?;
        for i in 1..=hosts {
            let (ns, v, p) = (lan.ns(i), lan.veth(i), format!("sk{}p{i}", lan.tag));
            ip(&["netns", "add", &ns])?;
            ip(&["link", "add", &v, "type", "veth", "peer", "name", &p])?;
            ip(&["link", "set", &p, "netns", &ns])?;
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}/24", lan.addr(i)),
                "dev",
                &p,
            ])?;
            ip(&["-n", &ns, "link", "set", &p, "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            ip(&["link", "set", &v, "master", &br])?;
            ip(&["link", "set", &v, "up"])?;
            let (m, q) = (format!("sk{}m{i}", lan.tag), format!("sk{}q{i}", lan.tag));
            ip(&["link", "add", &m, "type", "veth", "peer", "name", &q])?;
            ip(&["link", "set", &q, "netns", &ns])?;
            ip(&[
                "addr",
                "add",
                &format!("172.{}.{}.1/24", 20 + i, lan.subnet()),
                "dev",
                &m,
            ])?;
            ip(&["link", "set", &m, "up"])?;
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}/24", lan.api(i)),
                "dev",
                &q,
            ])?;
            ip(&["-n", &ns, "link", "set", &q, "up"])?;
        }
        Ok(lan)
    }

    fn cut(&self, i: usize, off: bool) {
        ip(&[
            "link",
            "set",
            &self.veth(i),
            if off { "down" } else { "up" },
        ])
        .expect("link set");
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for i in 1..=self.hosts {
            let _ = ip(&["link", "del", &self.veth(i)]);
            let _ = ip(&["link", "del", &format!("sk{}m{i}", self.tag)]);
            let _ = ip(&["netns", "del", &self.ns(i)]);
        }
        let _ = ip(&["link", "del", &self.bridge()]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_host_catches_up_after_the_partition_heals() {
    // Only root may create namespaces.
    let uid = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    if uid != "0" {
        skip_unless_required(&format!(
            "network namespaces need root (running as uid {uid:?})"
        ));
        return;
    }
    let lan = match Lan::build(3) {
        Ok(l) => l,
        Err(e) => {
            skip_unless_required(&format!("cannot build network namespaces here: {e}"));
            return;
        }
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let repo = dir.path().join("room.git");
    git(&["init", "--quiet", "--bare", &repo.to_string_lossy()]);
    let mut nodes = Vec::new();
    for (i, user) in [(1, "ana"), (2, "bo"), (3, "cy")] {
        let spec = NodeSpec::in_netns(
            Path::new(env!("CARGO_BIN_EXE_skygit")),
            dir.path(),
            &repo,
            user,
            &lan.ns(i),
            &lan.addr(i),
            &lan.api(i),
            &[],
        );
        nodes.push(
            NodeProc::start(spec)
                .await
                .expect("node starts in its namespace"),
        );
    }
    let refs: Vec<&NodeProc> = nodes.iter().collect();
    wait_members(&refs, 3, SETTLE)
        .await
        .expect("a room of three hosts");
    let mut sent = BTreeSet::new();
    post_round(&refs, "together", 2, &mut sent)
        .await
        .expect("posted");
    converged(&refs, &sent, SETTLE).await.expect("converged");

    // Cut host 3 off; the other two keep the room going.
    lan.cut(3, true);
    let majority: Vec<&NodeProc> = nodes[..2].iter().collect();
    wait_leader(&majority, SETTLE)
        .await
        .expect("a leader on the majority side");
    post_round(&majority, "while cut", 5, &mut sent)
        .await
        .expect("posted on the majority side");
    converged(&majority, &sent, SETTLE)
        .await
        .expect("majority converged");
    // Keep the cut until the majority has given up its links to host 3,
    // so healing takes a real reconnect, not just retransmissions.
    let cut_off = nodes[2].node_id;
    wait_for(
        SETTLE,
        "the majority to see its links to host 3 fail",
        || async {
            for n in &majority {
                let s = n.status().await.ok()?;
                if link_phase(&s, cut_off) == "open" {
                    return None;
                }
            }
            Some(())
        },
    )
    .await
    .expect("links to the isolated host failed");
    let isolated = nodes[2].contents().await.expect("isolated node answers");
    assert!(
        isolated.len() < sent.len(),
        "the isolated node cannot have the majority's new messages"
    );

    // Heal: the isolated host reconnects and catches up.
    lan.cut(3, false);
    converged(&refs, &sent, SETTLE)
        .await
        .expect("the isolated node caught up");
    for n in &mut nodes {
        n.stop(Duration::from_secs(30)).await.expect("stops");
    }
}
