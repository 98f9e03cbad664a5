//! `skygit login`, `auth status` and `logout`, run as the binary against the
//! GitHub test server's scripted device flow: every answer GitHub gives
//! (approval after waiting, `slow_down`, expiry, denial, a wrong client id)
//! and `--with-token`. The token must land in an owner-only file and never
//! on the terminal.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use skygit_github_server::{DevicePoll, GithubServer, TEST_CLIENT_ID, USER_CODE};

const TOKEN: &str = "gho_test16C7e42F292c6912E7710c838347Ae178B4a";
const OWNER: &str = "alice";

struct Setup {
    _tmp: tempfile::TempDir,
    config: std::path::PathBuf,
    server: GithubServer,
}

fn setup(interval: u64, steps: &[DevicePoll]) -> Setup {
    let tmp = tempfile::tempdir().expect("tempdir");
    let server =
        GithubServer::start(&tmp.path().join("chat.git"), OWNER, "chat", TOKEN).expect("server");
    server.script_device_flow(interval, steps);
    Setup {
        config: tmp.path().join("config"),
        _tmp: tmp,
        server,
    }
}

impl Setup {
    fn skygit(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_skygit"));
        cmd.args(args)
            .arg("--api")
            .arg(self.server.url())
            .env("SKYGIT_CONFIG_DIR", &self.config)
            .env_remove("GITHUB_TOKEN")
            .env_remove("SKYGIT_OAUTH_CLIENT_ID")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("start skygit");
        {
            use std::io::Write;
            let mut input = child.stdin.take().expect("stdin");
            if let Some(text) = stdin {
                input.write_all(text.as_bytes()).expect("write stdin");
            }
        }
        let out = child.wait_with_output().expect("skygit ran");
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!all.contains(TOKEN), "the token was printed:\n{all}");
        out
    }

    fn login(&self, client_id: &str) -> Output {
        self.skygit(
            &[
                "login",
                "--login-host",
                &self.server.url(),
                "--client-id",
                client_id,
            ],
            None,
        )
    }

    fn hosts_file(&self) -> std::path::PathBuf {
        self.config.join("hosts.toml")
    }
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).expect("stat").permissions().mode() & 0o777
}

#[test]
fn device_flow_login_status_and_logout() {
    let s = setup(
        1,
        &[DevicePoll::Pending, DevicePoll::Pending, DevicePoll::Grant],
    );
    let out = s.login(TEST_CLIENT_ID);
    let said = text(&out);
    assert!(out.status.success(), "login failed:\n{said}");
    assert!(
        said.contains(USER_CODE),
        "the user code was not shown:\n{said}"
    );
    assert!(
        said.contains(&format!("{}/login/device", s.server.url())),
        "the verification URL was not shown:\n{said}"
    );
    assert!(said.contains(&format!("as {OWNER}")), "{said}");
    let polls = s
        .server
        .requests()
        .iter()
        .filter(|r| r.path.starts_with("/login/oauth/access_token"))
        .count();
    assert_eq!(polls, 3, "two pending answers, then the token");

    let file = s.hosts_file();
    assert_eq!(mode(&file), 0o600, "the logins file is not owner-only");
    assert_eq!(
        mode(&s.config),
        0o700,
        "the config directory is not owner-only"
    );
    let stored = std::fs::read_to_string(&file).expect("logins file");
    assert!(stored.contains(TOKEN) && stored.contains(OWNER), "{stored}");

    let out = s.skygit(&["auth", "status"], None);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("logged in as {OWNER}")),
        "{}",
        text(&out)
    );

    let out = s.skygit(&["logout"], None);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!std::fs::read_to_string(&file)
        .expect("file")
        .contains(TOKEN));
    let out = s.skygit(&["auth", "status"], None);
    assert!(!out.status.success(), "status after logout succeeded");
    assert!(text(&out).contains("not logged in"), "{}", text(&out));
}

#[test]
fn slow_down_makes_the_polls_slower_for_good() {
    let s = setup(
        1,
        &[DevicePoll::SlowDown, DevicePoll::Pending, DevicePoll::Grant],
    );
    let started = Instant::now();
    let out = s.login(TEST_CLIENT_ID);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("every 6 s"), "{}", text(&out));
    // One poll after 1 s, then two more at least 6 s apart each: a client
    // that ignored slow_down would finish in about 3 s.
    assert!(
        started.elapsed() >= Duration::from_secs(13),
        "slow_down was not honoured: done in {:?}",
        started.elapsed()
    );
}

#[test]
fn expiry_denial_and_a_wrong_client_id_store_nothing() {
    for (steps, client, expect) in [
        (
            &[DevicePoll::Pending, DevicePoll::Expired][..],
            TEST_CLIENT_ID,
            "expired",
        ),
        (&[DevicePoll::Denied][..], TEST_CLIENT_ID, "denied"),
        (&[][..], "not-our-app", "unauthorized_client"),
    ] {
        let s = setup(1, steps);
        let out = s.login(client);
        assert!(!out.status.success(), "{expect}: login succeeded");
        assert!(text(&out).contains(expect), "{expect}: {}", text(&out));
        assert!(
            !s.hosts_file().exists(),
            "{expect}: a logins file was written"
        );
    }
}

#[test]
fn with_token_reads_standard_input_and_checks_the_token() {
    let s = setup(1, &[]);
    let out = s.skygit(&["login", "--with-token"], Some("not-the-token\n"));
    assert!(!out.status.success(), "a wrong token was accepted");
    assert!(text(&out).contains("does not work"), "{}", text(&out));
    assert!(!s.hosts_file().exists());

    let out = s.skygit(&["login", "--with-token"], Some(&format!("{TOKEN}\n")));
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(mode(&s.hosts_file()), 0o600);
    let out = s.skygit(&["auth", "status"], None);
    assert!(out.status.success(), "{}", text(&out));

    let out = s.skygit(&["login", "--with-token"], Some(""));
    assert!(!out.status.success());
    assert!(text(&out).contains("no token"), "{}", text(&out));
}
