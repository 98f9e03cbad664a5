//! GitHub's OAuth device flow, scripted: `POST /login/device/code` hands
//! out a code, and each `POST /login/oauth/access_token` takes the next
//! scripted outcome (`authorization_pending` once the script is used up).
//! Answers follow GitHub's documented JSON: 200 with either a token or an
//! `error` field. The token granted is the server's own, so it works
//! against the rest of the API, and `GET /user` names its owner.

use serde_json::{json, Value};

use crate::server::{Reply, Shared};
use crate::util::lock;

/// The OAuth app's client id the server accepts.
pub const TEST_CLIENT_ID: &str = "skygit-test-client";
/// The device code it hands out.
const DEVICE_CODE: &str = "test-device-code-3584d83530557fdd1f46af8289938c8ef79f9dc5";
/// The user code shown to the user.
pub const USER_CODE: &str = "WDJB-MJHT";

/// What one poll of the token endpoint answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DevicePoll {
    /// `authorization_pending`: the user has not answered yet.
    Pending,
    /// `slow_down`, with the interval raised by 5 seconds.
    SlowDown,
    /// `expired_token`.
    Expired,
    /// `access_denied`.
    Denied,
    /// The user approved: the token.
    Grant,
}

/// The device-flow state: the script and the interval asked for.
#[derive(Debug)]
pub(crate) struct DeviceFlow {
    pub script: std::collections::VecDeque<DevicePoll>,
    pub interval: u64,
    pub expires_in: u64,
}

impl Default for DeviceFlow {
    fn default() -> Self {
        DeviceFlow {
            script: Default::default(),
            interval: 1,
            expires_in: 900,
        }
    }
}

/// A form (`a=b&c=d`) or JSON body's fields.
fn field(body: &[u8], name: &str) -> Option<String> {
    if let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(body) {
        return map.get(name).and_then(Value::as_str).map(str::to_owned);
    }
    std::str::from_utf8(body).ok()?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == name).then(|| v.replace("%3A", ":").replace('+', " "))
    })
}

fn error(code: &str, description: &str) -> Reply {
    Reply::json(
        200,
        json!({
            "error": code,
            "error_description": description,
            "error_uri": "https://docs.github.com/developers/apps/authorizing-oauth-apps#error-codes-for-the-device-flow",
        }),
    )
}

/// Answers `/login/...`; `None` for any other path.
pub(crate) fn answer(shared: &Shared, method: &str, path: &str, body: &[u8]) -> Option<Reply> {
    let path = path.split('?').next().unwrap_or(path);
    if !path.starts_with("/login/") {
        return None;
    }
    if method != "POST" {
        return Some(Reply::message(404, "Not Found"));
    }
    let client_ok = field(body, "client_id").as_deref() == Some(TEST_CLIENT_ID);
    let mut flow = lock(&shared.device);
    Some(match path {
        "/login/device/code" => {
            if !client_ok {
                return Some(error("unauthorized_client", "The client_id is not valid."));
            }
            Reply::json(
                200,
                json!({
                    "device_code": DEVICE_CODE,
                    "user_code": USER_CODE,
                    "verification_uri": format!("{}/login/device", shared.base_url),
                    "expires_in": flow.expires_in,
                    "interval": flow.interval,
                }),
            )
        }
        "/login/oauth/access_token" => {
            if !client_ok {
                return Some(error(
                    "incorrect_client_credentials",
                    "The client_id and/or client_secret passed are incorrect.",
                ));
            }
            if field(body, "grant_type").as_deref()
                != Some("urn:ietf:params:oauth:grant-type:device_code")
            {
                return Some(error(
                    "unsupported_grant_type",
                    "The grant type is not supported.",
                ));
            }
            if field(body, "device_code").as_deref() != Some(DEVICE_CODE) {
                return Some(error(
                    "incorrect_device_code",
                    "The device_code provided is not valid.",
                ));
            }
            match flow.script.pop_front().unwrap_or(DevicePoll::Pending) {
                DevicePoll::Pending => error(
                    "authorization_pending",
                    "The authorization request is still pending.",
                ),
                DevicePoll::SlowDown => {
                    flow.interval += 5;
                    let mut reply = error(
                        "slow_down",
                        "Too many requests have been made in the same timeframe.",
                    );
                    if let Some(Value::Object(map)) = reply.body.as_mut() {
                        map.insert("interval".into(), json!(flow.interval));
                    }
                    reply
                }
                DevicePoll::Expired => error("expired_token", "The device_code has expired."),
                DevicePoll::Denied => {
                    error("access_denied", "The authorization request was denied.")
                }
                DevicePoll::Grant => Reply::json(
                    200,
                    json!({
                        "access_token": shared.token,
                        "token_type": "bearer",
                        "scope": "repo",
                    }),
                ),
            }
        }
        _ => Reply::message(404, "Not Found"),
    })
}
