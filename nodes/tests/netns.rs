//! `skygit node` processes in separate network namespaces joined by a
//! bridge, as hosts on one LAN. One namespace is cut off from the bridge
//! while the others keep posting, then healed: the isolated node
//! reconnects over WebRTC and catches up. Five hosts split 2|3, the two
//! holding the voter majority: both sides keep taking posts, the three
//! re-form the group, and once healed every node is in one group with
//! every message once. The repository (a path every namespace sees) stays
//! reachable, as GitHub would from every host.
//!
//! Needs root (network namespaces). Elsewhere the test says why it
//! skipped; under CI, which runs as root, it fails instead.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use skygit_harness::{
    converged, leader_and_another_voter, link_phase, post_round, skip_unless_required, wait_epoch,
    wait_for, wait_leader, wait_members, NodeProc, NodeSpec,
};
use skygit_tests::git_server::{assert_repo_holds_each_once, git};

const SETTLE: Duration = Duration::from_secs(120);

/// One LAN at a time: the namespaces' names and addresses derive from the
/// process id.
static ONE_LAN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

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

    /// Hosts `side` and the others stop reaching each other (packets
    /// between their LAN addresses are dropped in every namespace); an
    /// empty `side` heals.
    fn split(&self, side: &[usize]) {
        for i in 1..=self.hosts {
            ip(&["netns", "exec", &self.ns(i), "iptables", "-F"]).expect("iptables -F");
        }
        for a in side {
            for b in (1..=self.hosts).filter(|b| !side.contains(b)) {
                for (me, other) in [(*a, b), (b, *a)] {
                    let ns = self.ns(me);
                    let addr = self.addr(other);
                    for (chain, dir) in [("INPUT", "-s"), ("OUTPUT", "-d")] {
                        ip(&[
                            "netns", "exec", &ns, "iptables", "-A", chain, dir, &addr, "-j", "DROP",
                        ])
                        .expect("iptables -A");
                    }
                }
            }
        }
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

/// A LAN of `hosts` namespaces, or `None` (and a skip, which fails under
/// CI) where this process may not build one.
fn lan(hosts: usize) -> Option<Lan> {
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
        return None;
    }
    match Lan::build(hosts) {
        Ok(l) => Some(l),
        Err(e) => {
            skip_unless_required(&format!("cannot build network namespaces here: {e}"));
            None
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_host_catches_up_after_the_partition_heals() {
    let _one = ONE_LAN.lock().await;
    let Some(lan) = lan(3) else { return };
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_two_three_split_re_forms_the_minority_of_voters_and_heals_into_one_group() {
    let _one = ONE_LAN.lock().await;
    let Some(lan) = lan(5) else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let repo = dir.path().join("room.git");
    git(&["init", "--quiet", "--bare", &repo.to_string_lossy()]);
    let users = ["ana", "bo", "cy", "dee", "eli"];
    let mut nodes = Vec::new();
    for (i, user) in users.iter().enumerate() {
        let host = i + 1;
        let spec = NodeSpec::in_netns(
            Path::new(env!("CARGO_BIN_EXE_skygit")),
            dir.path(),
            &repo,
            user,
            &lan.ns(host),
            &lan.addr(host),
            &lan.api(host),
            &["--reform-after-secs".to_owned(), "5".to_owned()],
        );
        nodes.push(
            NodeProc::start(spec)
                .await
                .expect("node starts in its namespace"),
        );
    }
    let all: Vec<&NodeProc> = nodes.iter().collect();
    wait_members(&all, 3, SETTLE)
        .await
        .expect("three voters, two learners");
    let mut sent = BTreeSet::new();
    post_round(&all, "together", 1, &mut sent)
        .await
        .expect("posted");
    converged(&all, &sent, SETTLE).await.expect("converged");

    // The leader and another voter on one side, the rest on the other.
    let (leader, partner) = leader_and_another_voter(&all, SETTLE)
        .await
        .expect("a leader and another voter");
    let hosts_a: Vec<usize> = (0..nodes.len())
        .filter(|i| [leader, partner].contains(&nodes[*i].node_id))
        .map(|i| i + 1)
        .collect();
    let side_a: Vec<&NodeProc> = hosts_a.iter().map(|h| &nodes[h - 1]).collect();
    let side_b: Vec<&NodeProc> = (1..=nodes.len())
        .filter(|h| !hosts_a.contains(h))
        .map(|h| &nodes[h - 1])
        .collect();
    lan.split(&hosts_a);

    // Both sides take posts: the voter majority commits at once, the
    // other side queues, then re-forms and commits.
    post_round(&side_a, "side a", 2, &mut sent)
        .await
        .expect("posted on side a");
    let mut round = 0;
    loop {
        round += 1;
        let answers = post_round(&side_b, &format!("side b {round}"), 1, &mut sent)
            .await
            .expect("posted on side b");
        if answers.iter().any(|(_, _, p)| p.index.is_some()) {
            break;
        }
        assert!(round < 240, "side b never committed");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    wait_epoch(&side_b, 1, SETTLE)
        .await
        .expect("side b re-formed");
    post_round(&side_a, "side a later", 1, &mut sent)
        .await
        .expect("side a still takes posts");

    // Healed: one group, the newest, and every message once everywhere.
    lan.split(&[]);
    wait_epoch(&all, 1, SETTLE).await.expect("joined");
    post_round(&all, "healed", 1, &mut sent)
        .await
        .expect("posted");
    converged(&all, &sent, SETTLE)
        .await
        .expect("every node holds every message once");
    assert_repo_holds_each_once(&repo, &dir.path().join("clone"), &sent, SETTLE).await;
    for n in &mut nodes {
        n.stop(Duration::from_secs(30)).await.expect("stops");
    }
}
