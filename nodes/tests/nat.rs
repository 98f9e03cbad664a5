//! Two teammates at home, each behind their own NAT router, meet through
//! STUN, or through a TURN relay when their NATs map every destination to
//! a new port; a real TURN server (coturn's `turnserver`) runs on the
//! "internet" between them.
//!
//! Each test builds its own networks from namespaces: an "internet" bridge
//! (in the test's namespace, where the TURN server listens), and for each
//! home a router namespace (its WAN on the bridge, `MASQUERADE` out, new
//! inbound connections dropped as home routers do) and a host namespace on
//! a private subnet behind it. The two private subnets have no route to
//! each other: a link can only go through the routers. Each node also has a
//! point-to-point link to the test's namespace for its HTTP API, which its
//! WebRTC transport does not use (`--bind` names the private address).
//!
//! Needs root, `iptables` and `turnserver` (`scripts/setup.sh` installs
//! them). Elsewhere the tests say why they skipped; under CI they fail.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use skygit_api::LinkPath;
use skygit_harness::{
    converged, post_round, skip_unless_required, wait_for, wait_members, NodeProc, NodeSpec,
};
use skygit_tests::git_server::git;

const SETTLE: Duration = Duration::from_secs(120);
const TURN_USER: &str = "team";
const TURN_PASSWORD: &str = "correct-horse";
const TURN_SECRET: &str = "rest-api-shared-secret";

fn run(args: &[&str]) -> Result<(), String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("cannot run {}: {e}", args[0]))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// How each home router maps its hosts' ports.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mapping {
    /// Linux's MASQUERADE: one public port per host port (a "cone").
    Cone,
    /// A new random public port for every destination ("symmetric"):
    /// STUN's answer is useless to the peer, only a relay works.
    Symmetric,
}

/// The networks of one test; removed on drop.
struct Homes {
    tag: String,
    /// Third octet of the internet bridge, second of the private subnets.
    s: u32,
    /// Second octet base of the API links.
    api_base: u32,
}

impl Homes {
    fn bridge(&self) -> String {
        format!("sk{}br", self.tag)
    }
    /// The TURN server's address on the internet.
    fn internet(&self) -> String {
        format!("198.18.{}.1", self.s)
    }
    fn router(&self, h: usize) -> String {
        format!("sk{}r{h}", self.tag)
    }
    fn host(&self, h: usize) -> String {
        format!("sk{}h{h}", self.tag)
    }
    fn wan(&self, h: usize) -> String {
        format!("sk{}w{h}", self.tag)
    }
    fn private_ip(&self, h: usize) -> String {
        format!("10.{}.{h}.2", self.s)
    }
    fn api_ip(&self, h: usize) -> String {
        format!("172.{}.{}.2", self.api_base + h as u32, self.s)
    }

    fn ns(&self, ns: &str, args: &[&str]) -> Result<(), String> {
        let mut all = vec!["ip", "netns", "exec", ns];
        all.extend_from_slice(args);
        run(&all)
    }

    /// Builds the internet and two homes; `k` keeps parallel tests apart.
    fn build(k: u32, mapping: Mapping) -> Result<Homes, String> {
        let pid = std::process::id();
        let homes = Homes {
            tag: format!("{:x}{k}", pid % 0xfff),
            s: (pid % 60) * 4 + k,
            api_base: 40 + 2 * k,
        };
        let br = homes.bridge();
        run(&["ip", "link", "add", &br, "type", "bridge"])?;
        run(&[
            "ip",
            "addr",
            "add",
            &format!("{}/24", homes.internet()),
            "dev",
            &br,
        ])?;
        run(&["ip", "link", "set", &br, "up"])?;
        for h in 1..=2usize {
            let (r, host, wan) = (homes.router(h), homes.host(h), homes.wan(h));
            let (lan_r, lan_h) = (
                format!("sk{}l{h}", homes.tag),
                format!("sk{}e{h}", homes.tag),
            );
            let (api_m, api_q) = (
                format!("sk{}m{h}", homes.tag),
                format!("sk{}q{h}", homes.tag),
            );
            let s = homes.s;
            run(&["ip", "netns", "add", &r])?;
            run(&["ip", "netns", "add", &host])?;
            // The router's WAN on the internet bridge.
            let wan_peer = format!("sk{}v{h}", homes.tag);
            run(&[
                "ip", "link", "add", &wan_peer, "type", "veth", "peer", "name", &wan,
            ])?;
            run(&["ip", "link", "set", &wan, "netns", &r])?;
            run(&["ip", "link", "set", &wan_peer, "master", &br])?;
            run(&["ip", "link", "set", &wan_peer, "up"])?;
            let wan_ip = format!("198.18.{s}.{}/24", 10 * h);
            homes.ns(&r, &["ip", "addr", "add", &wan_ip, "dev", &wan])?;
            homes.ns(&r, &["ip", "link", "set", &wan, "up"])?;
            homes.ns(&r, &["ip", "link", "set", "lo", "up"])?;
            // The home LAN between router and host.
            run(&[
                "ip", "link", "add", &lan_r, "type", "veth", "peer", "name", &lan_h,
            ])?;
            run(&["ip", "link", "set", &lan_r, "netns", &r])?;
            run(&["ip", "link", "set", &lan_h, "netns", &host])?;
            let gw = format!("10.{s}.{h}.1");
            homes.ns(
                &r,
                &["ip", "addr", "add", &format!("{gw}/24"), "dev", &lan_r],
            )?;
            homes.ns(&r, &["ip", "link", "set", &lan_r, "up"])?;
            let ip = format!("{}/24", homes.private_ip(h));
            homes.ns(&host, &["ip", "addr", "add", &ip, "dev", &lan_h])?;
            homes.ns(&host, &["ip", "link", "set", &lan_h, "up"])?;
            homes.ns(&host, &["ip", "link", "set", "lo", "up"])?;
            homes.ns(&host, &["ip", "route", "add", "default", "via", &gw])?;
            // NAT: masquerade out of the WAN; drop what nobody asked for.
            homes.ns(&r, &["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
            let mut masq = vec![
                "iptables",
                "-t",
                "nat",
                "-A",
                "POSTROUTING",
                "-o",
                &wan,
                "-j",
                "MASQUERADE",
            ];
            if mapping == Mapping::Symmetric {
                masq.push("--random-fully");
            }
            homes.ns(&r, &masq)?;
            homes.ns(
                &r,
                &[
                    "iptables",
                    "-A",
                    "INPUT",
                    "-i",
                    &wan,
                    "-m",
                    "conntrack",
                    "--ctstate",
                    "NEW",
                    "-j",
                    "DROP",
                ],
            )?;
            // The API link to the test's namespace.
            run(&[
                "ip", "link", "add", &api_m, "type", "veth", "peer", "name", &api_q,
            ])?;
            run(&["ip", "link", "set", &api_q, "netns", &host])?;
            let near = format!("172.{}.{s}.1/24", homes.api_base + h as u32);
            run(&["ip", "addr", "add", &near, "dev", &api_m])?;
            run(&["ip", "link", "set", &api_m, "up"])?;
            let far = format!("{}/24", homes.api_ip(h));
            homes.ns(&host, &["ip", "addr", "add", &far, "dev", &api_q])?;
            homes.ns(&host, &["ip", "link", "set", &api_q, "up"])?;
        }
        Ok(homes)
    }
}

impl Drop for Homes {
    fn drop(&mut self) {
        for h in 1..=2 {
            let _ = run(&["ip", "link", "del", &format!("sk{}v{h}", self.tag)]);
            let _ = run(&["ip", "link", "del", &format!("sk{}m{h}", self.tag)]);
            let _ = run(&["ip", "netns", "del", &self.router(h)]);
            let _ = run(&["ip", "netns", "del", &self.host(h)]);
        }
        let _ = run(&["ip", "link", "del", &self.bridge()]);
    }
}

/// A `turnserver` on the internet; killed on drop.
struct Turn {
    child: Child,
    log: std::path::PathBuf,
}

impl Turn {
    /// Static long-term credentials, or the REST API's shared secret.
    fn start(homes: &Homes, rest: bool, dir: &Path) -> Result<Turn, String> {
        let ip = homes.internet();
        let log = dir.join("turnserver.log");
        let out = std::fs::File::create(&log).map_err(|e| e.to_string())?;
        let mut cmd = Command::new("turnserver");
        cmd.args([
            "-n",
            "--log-file=stdout",
            "--simple-log",
            "--no-cli",
            "--no-tls",
            "--no-dtls",
        ])
        .arg(format!("--listening-ip={ip}"))
        .arg(format!("--relay-ip={ip}"))
        .args([
            "--listening-port=3478",
            "--min-port=49160",
            "--max-port=49400",
        ])
        .args(["--fingerprint", "--realm=skygit.test"]);
        if rest {
            cmd.args(["--use-auth-secret"])
                .arg(format!("--static-auth-secret={TURN_SECRET}"));
        } else {
            cmd.arg("--lt-cred-mech")
                .arg(format!("--user={TURN_USER}:{TURN_PASSWORD}"));
        }
        let child = cmd
            .stdout(Stdio::from(out.try_clone().map_err(|e| e.to_string())?))
            .stderr(Stdio::from(out))
            .spawn()
            .map_err(|e| format!("cannot start turnserver: {e}"))?;
        // It listens within a moment.
        std::thread::sleep(Duration::from_millis(500));
        Ok(Turn { child, log })
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The current link attempt of `n` to `other` (0 before the first).
async fn tries(n: &NodeProc, other: u64) -> u64 {
    n.status()
        .await
        .ok()
        .and_then(|s| s.peers.into_iter().find(|p| p.node_id == other))
        .map_or(0, |p| p.attempt)
}

/// Root, `iptables` and `turnserver`, or the reason the test cannot run.
fn can_run() -> Result<(), String> {
    let uid = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    if uid != "0" {
        return Err(format!("network namespaces need root (uid {uid:?})"));
    }
    for tool in ["iptables", "turnserver"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            return Err(format!("{tool} is not installed (bash scripts/setup.sh)"));
        }
    }
    Ok(())
}

/// Starts one node per home with `ice` flags (each `{host}` in them
/// replaced by nothing: they are the same for both).
async fn start_nodes(homes: &Homes, repo: &Path, dir: &Path, ice: &[String]) -> Vec<NodeProc> {
    let mut nodes = Vec::new();
    for (h, user) in [(1, "ana"), (2, "bo")] {
        let mut spec = NodeSpec::new(
            Path::new(env!("CARGO_BIN_EXE_skygit")),
            repo,
            user,
            &dir.join(user),
        );
        spec.wrapper = ["ip", "netns", "exec", &homes.host(h)]
            .map(String::from)
            .to_vec();
        let mut args: Vec<String> = [
            "--bind",
            &homes.private_ip(h),
            "--api",
            &format!("{}:0", homes.api_ip(h)),
            "--fast-poll-ms",
            "300",
            "--slow-poll-secs",
            "5",
            "--commit-interval",
            "1",
        ]
        .map(String::from)
        .to_vec();
        args.extend(ice.iter().cloned());
        spec.args = args;
        nodes.push(
            NodeProc::start(spec)
                .await
                .unwrap_or_else(|e| panic!("{user} starts in its home: {e:#}")),
        );
    }
    nodes
}

/// Both nodes link, the link takes `path` on both sides, posts from both
/// replicate, and the room commits them to its repository.
async fn meet_through(nodes: &mut [NodeProc], repo: &Path, path: LinkPath) {
    let refs: Vec<&NodeProc> = nodes.iter().collect();
    wait_members(&refs, 2, SETTLE)
        .await
        .expect("a room of two homes");
    for (n, other) in [(&nodes[0], &nodes[1]), (&nodes[1], &nodes[0])] {
        let seen = wait_for(SETTLE, "the link's path to be known", || async {
            let s = n.status().await.ok()?;
            s.peers
                .iter()
                .find(|p| p.node_id == other.node_id)
                .and_then(|p| p.path)
        })
        .await
        .expect("a path");
        assert_eq!(seen, path, "{}'s link to {}", n.spec.user, other.spec.user);
        let ice = n.status().await.expect("status").ice.expect("ice status");
        assert!(ice.problem.is_none(), "{}: {:?}", n.spec.user, ice.problem);
    }
    let mut sent = BTreeSet::new();
    post_round(&refs, "from home", 3, &mut sent)
        .await
        .expect("posted");
    converged(&refs, &sent, SETTLE).await.expect("replicated");
    let r = nodes[0]
        .http()
        .post(format!("{}/push", nodes[0].api))
        .send()
        .await
        .expect("push");
    assert!(r.status().is_success(), "push: {}", r.status());
    let log = git(&["--git-dir", &repo.to_string_lossy(), "log", "-p", "main"]);
    for text in &sent {
        assert!(
            log.contains(text.as_str()),
            "{text:?} is not in the repository"
        );
    }
    for n in nodes.iter_mut() {
        n.stop(Duration::from_secs(30)).await.expect("stops");
    }
}

fn room(dir: &Path) -> std::path::PathBuf {
    let repo = dir.join("room.git");
    git(&["init", "--quiet", "--bare", &repo.to_string_lossy()]);
    repo
}

/// Builds the homes or says why the test cannot run.
fn homes_or_skip(k: u32, mapping: Mapping) -> Option<Homes> {
    if let Err(why) = can_run() {
        skip_unless_required(&why);
        return None;
    }
    match Homes::build(k, mapping) {
        Ok(h) => Some(h),
        Err(e) => {
            skip_unless_required(&format!("cannot build the home networks: {e}"));
            None
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_homes_behind_nat_meet_through_stun() {
    let Some(homes) = homes_or_skip(0, Mapping::Cone) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let _turn = Turn::start(&homes, false, dir.path()).expect("turnserver");
    let repo = room(dir.path());
    let stun = format!("--ice-server=stun:{}:3478", homes.internet());
    let mut nodes = start_nodes(&homes, &repo, dir.path(), &[stun]).await;
    meet_through(&mut nodes, &repo, LinkPath::Srflx).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn symmetric_nats_meet_through_the_turn_relay() {
    let Some(homes) = homes_or_skip(1, Mapping::Symmetric) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let _turn = Turn::start(&homes, false, dir.path()).expect("turnserver");
    let repo = room(dir.path());
    let ip = homes.internet();
    let ice = [
        format!("--ice-server=stun:{ip}:3478,turn:{ip}:3478?transport=udp"),
        format!("--turn-username={TURN_USER}"),
        format!("--turn-credential={TURN_PASSWORD}"),
    ];
    let mut nodes = start_nodes(&homes, &repo, dir.path(), &ice).await;
    meet_through(&mut nodes, &repo, LinkPath::Relay).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turn_rest_api_credentials_are_made_from_the_shared_secret() {
    let Some(homes) = homes_or_skip(2, Mapping::Symmetric) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let _turn = Turn::start(&homes, true, dir.path()).expect("turnserver");
    let repo = room(dir.path());
    let ip = homes.internet();
    let ice = [
        format!("--ice-server=stun:{ip}:3478,turn:{ip}:3478?transport=udp"),
        format!("--turn-secret={TURN_SECRET}"),
    ];
    let mut nodes = start_nodes(&homes, &repo, dir.path(), &ice).await;
    meet_through(&mut nodes, &repo, LinkPath::Relay).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_turn_credentials_are_reported_and_the_node_keeps_trying() {
    let Some(homes) = homes_or_skip(3, Mapping::Symmetric) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let turn = Turn::start(&homes, false, dir.path()).expect("turnserver");
    let repo = room(dir.path());
    let ip = homes.internet();
    let ice = [
        format!("--ice-server=stun:{ip}:3478,turn:{ip}:3478?transport=udp"),
        format!("--turn-username={TURN_USER}"),
        "--turn-credential=wrong-password".to_owned(),
    ];
    let mut nodes = start_nodes(&homes, &repo, dir.path(), &ice).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    // Each node says why it has no relay, and keeps trying to link.
    for n in [a, b] {
        let problem = wait_for(SETTLE, "the status to report the TURN problem", || async {
            n.status().await.ok()?.ice?.problem
        })
        .await
        .expect("a reported problem");
        assert!(problem.contains("TURN"), "{problem}");
    }
    let first = tries(a, b.node_id).await;
    wait_for(SETTLE, "another link attempt", || async {
        (tries(a, b.node_id).await > first).then_some(())
    })
    .await
    .expect("the node keeps trying");
    for n in [a, b] {
        let s = n.status().await.expect("the node still answers");
        let other = if n.node_id == a.node_id { b } else { a };
        let p = s.peers.iter().find(|p| p.node_id == other.node_id);
        assert!(
            p.is_none_or(|p| p.path.is_none()),
            "no link can open through symmetric NATs without a relay: {p:?}"
        );
        let log = std::fs::read_to_string(&n.spec.log).unwrap_or_default();
        assert!(
            log.contains("no relay candidate from the TURN server"),
            "{}'s log says why",
            n.spec.user
        );
        assert!(
            !log.contains("wrong-password") && !log.contains(TURN_PASSWORD),
            "a credential in {}'s log",
            n.spec.user
        );
    }
    assert!(
        turn.log().contains("credentials are incorrect"),
        "the TURN server refused the credentials: {}",
        turn.log()
    );
    for n in &mut nodes {
        n.stop(Duration::from_secs(30)).await.expect("stops");
    }
}
