//! Home networks behind NAT routers, built from network namespaces, and a
//! TURN server between them: the fixture of the NAT tests
//! (`nodes/tests/nat.rs`) and of `skygit-tools bench nat`.
//!
//! An "internet" bridge in the caller's namespace (where `turnserver`
//! listens), and for each of two homes a router namespace (its WAN on the
//! bridge, `MASQUERADE` out, new inbound connections dropped as home
//! routers do) and a host namespace on a private subnet behind it. The two
//! private subnets have no route to each other. Each host also has a
//! point-to-point link to the caller's namespace for its HTTP API, which
//! carries no UDP. Needs root, `iptables` and `turnserver`.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{NodeProc, NodeSpec};

/// The TURN server's static user and password, and its REST secret.
pub const TURN_USER: &str = "team";
pub const TURN_PASSWORD: &str = "correct-horse";
pub const TURN_SECRET: &str = "rest-api-shared-secret";

/// Runs a command (`args[0]` with the rest); its standard error becomes the error.
pub fn run(args: &[&str]) -> Result<(), String> {
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
pub enum Mapping {
    /// Linux's MASQUERADE: one public port per host port (a "cone").
    Cone,
    /// A new random public port for every destination ("symmetric"):
    /// STUN's answer is useless to the peer, only a relay works.
    Symmetric,
}

/// The networks of one test; removed on drop.
pub struct Homes {
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
    pub fn internet(&self) -> String {
        format!("198.18.{}.1", self.s)
    }
    pub fn router(&self, h: usize) -> String {
        format!("sk{}r{h}", self.tag)
    }
    pub fn host(&self, h: usize) -> String {
        format!("sk{}h{h}", self.tag)
    }
    fn wan(&self, h: usize) -> String {
        format!("sk{}w{h}", self.tag)
    }
    pub fn private_ip(&self, h: usize) -> String {
        format!("10.{}.{h}.2", self.s)
    }
    pub fn api_ip(&self, h: usize) -> String {
        format!("172.{}.{}.2", self.api_base + h as u32, self.s)
    }

    fn ns(&self, ns: &str, args: &[&str]) -> Result<(), String> {
        let mut all = vec!["ip", "netns", "exec", ns];
        all.extend_from_slice(args);
        run(&all)
    }

    /// Builds the internet and two homes; `k` keeps parallel tests apart.
    pub fn build(k: u32, mapping: Mapping) -> Result<Homes, String> {
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
            // The API is TCP: no WebRTC path through the test's namespace.
            homes.ns(
                &host,
                &[
                    "iptables", "-A", "INPUT", "-i", &api_q, "-p", "udp", "-j", "DROP",
                ],
            )?;
            homes.ns(
                &host,
                &[
                    "iptables", "-A", "OUTPUT", "-o", &api_q, "-p", "udp", "-j", "DROP",
                ],
            )?;
        }
        Ok(homes)
    }

    /// Moves home `h`'s host to another private subnet (as a laptop that
    /// joins another network): its address and default route change.
    pub fn move_host(&self, h: usize, subnet: u32) -> Result<String, String> {
        let (r, host) = (self.router(h), self.host(h));
        let (lan_r, lan_h) = (format!("sk{}l{h}", self.tag), format!("sk{}e{h}", self.tag));
        let s = self.s;
        let (gw, ip) = (format!("10.{s}.{subnet}.1"), format!("10.{s}.{subnet}.2"));
        self.ns(
            &r,
            &["ip", "addr", "add", &format!("{gw}/24"), "dev", &lan_r],
        )?;
        self.ns(&host, &["ip", "addr", "flush", "dev", &lan_h])?;
        self.ns(
            &host,
            &["ip", "addr", "add", &format!("{ip}/24"), "dev", &lan_h],
        )?;
        self.ns(&host, &["ip", "route", "replace", "default", "via", &gw])?;
        Ok(ip)
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
pub struct Turn {
    child: Child,
    log: std::path::PathBuf,
}

impl Turn {
    /// Static long-term credentials, or the REST API's shared secret.
    pub fn start(homes: &Homes, rest: bool, dir: &Path) -> Result<Turn, String> {
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

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts one node per home with `ice` flags; each gathers on its private
/// address, or with `any` on every interface (the default).
pub async fn start_nodes(
    bin: &Path,
    homes: &Homes,
    repo: &Path,
    dir: &Path,
    ice: &[String],
    any: bool,
) -> anyhow::Result<Vec<NodeProc>> {
    let mut nodes = Vec::new();
    for (h, user) in [(1, "ana"), (2, "bo")] {
        let bind = if any {
            "0.0.0.0".to_owned()
        } else {
            homes.private_ip(h)
        };
        let spec = NodeSpec::in_netns(
            bin,
            dir,
            repo,
            user,
            &homes.host(h),
            &bind,
            &homes.api_ip(h),
            ice,
        );
        nodes.push(
            NodeProc::start(spec)
                .await
                .map_err(|e| anyhow::anyhow!("{user} starts in its home: {e:#}"))?,
        );
    }
    Ok(nodes)
}

/// Root, `iptables` and `turnserver`, or the reason the test cannot run.
pub fn can_run() -> Result<(), String> {
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
