//! GitHub login: the OAuth device flow (what `gh auth login` does) and the
//! user a token belongs to.
//!
//! The device flow has two calls on the login host (`https://github.com`,
//! or a GitHub Enterprise host, or the test server): `POST
//! /login/device/code` gives a user code to enter at a URL, and `POST
//! /login/oauth/access_token` is polled, no faster than the interval the
//! host asks for, until the user approved, denied or the code expired.
//! GitHub answers the poll with 200 and an `error` field while it waits
//! (`authorization_pending`, `slow_down`) and when it gives up
//! (`expired_token`, `access_denied`); every answer is read here, none is
//! guessed. The token never appears in an error or a log line.

use std::time::Duration;

use http_body_util::BodyExt;
use serde::{Deserialize, Serialize};

/// Longest a login waits, whatever the host says (GitHub's codes live 15 minutes).
pub const MAX_LOGIN_WAIT: Duration = Duration::from_secs(30 * 60);
/// Bounds on the poll interval the host may ask for.
const MIN_INTERVAL: Duration = Duration::from_secs(1);
const MAX_INTERVAL: Duration = Duration::from_secs(120);
/// RFC 8628 §3.5: `slow_down` adds this to the interval, for good.
pub const SLOW_DOWN_STEP: Duration = Duration::from_secs(5);
/// Largest answer read from the login host.
const MAX_ANSWER_BYTES: usize = 64 * 1024;
/// Polls after which a login gives up even if the host keeps saying "pending".
const MAX_POLLS: u32 = 2_000;

/// Reads an answer's status and (bounded) body.
macro_rules! read_answer {
    ($resp:expr, $host:expr) => {{
        let resp = $resp;
        let status = resp.status().as_u16();
        http_body_util::Limited::new(resp.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await
            .map(|b| (status, b.to_bytes().to_vec()))
            .map_err(|e| LoginError::Unreachable(format!("{}: reading the answer: {e}", $host)))
    }};
}

/// Why a login did not produce a token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoginError {
    #[error("cannot reach {0}")]
    Unreachable(String),
    #[error("{host} answered {status}: {message}")]
    Refused {
        host: String,
        status: u16,
        message: String,
    },
    #[error("the login was denied in the browser")]
    Denied,
    #[error("the code expired before it was entered; run the login again")]
    Expired,
    #[error("the OAuth app refused the device flow ({0}); enable device flow in the app's settings and check its client id")]
    AppRefused(String),
    #[error("the login host's answer was not understood: {0}")]
    BadAnswer(String),
    #[error("invalid login host URL {0:?}")]
    BadUrl(String),
}

/// Step 1's answer: what the user types, and where.
#[derive(Debug, Clone, Deserialize)]
pub struct DeviceCode {
    pub device_code: String,
    pub user_code: String,
    pub verification_uri: String,
    /// Seconds the codes stay valid.
    pub expires_in: u64,
    /// Seconds to wait between polls.
    pub interval: u64,
}

impl DeviceCode {
    /// The poll interval, within sane bounds.
    pub fn poll_interval(&self) -> Duration {
        Duration::from_secs(self.interval).clamp(MIN_INTERVAL, MAX_INTERVAL)
    }

    /// How long to keep polling.
    pub fn lifetime(&self) -> Duration {
        Duration::from_secs(self.expires_in).min(MAX_LOGIN_WAIT)
    }
}

#[derive(Serialize)]
struct CodeRequest<'a> {
    client_id: &'a str,
    scope: &'a str,
}

#[derive(Serialize)]
struct TokenRequest<'a> {
    client_id: &'a str,
    device_code: &'a str,
    grant_type: &'a str,
}

/// A poll's answer: a token, or an error code (with GitHub's wording).
#[derive(Deserialize)]
struct TokenAnswer {
    access_token: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
    interval: Option<u64>,
}

/// What one poll said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Poll {
    Token(String),
    Pending,
    /// Poll less often: the new interval.
    SlowDown(Duration),
}

/// The device flow against one login host for one OAuth app.
pub struct DeviceFlow {
    client: octocrab::Octocrab,
    host: String,
    client_id: String,
}

impl DeviceFlow {
    /// `host` is the login host's base URL (`https://github.com`).
    pub fn new(host: &str, client_id: &str) -> Result<Self, LoginError> {
        let client = client(host, "application/json", None)?;
        Ok(Self {
            client,
            host: host.trim_end_matches('/').to_owned(),
            client_id: client_id.to_owned(),
        })
    }

    /// Step 1: asks for a user code.
    pub async fn start(&self, scope: &str) -> Result<DeviceCode, LoginError> {
        let body = CodeRequest {
            client_id: &self.client_id,
            scope,
        };
        let (status, bytes) = self.post("/login/device/code", &body).await?;
        if status != 200 {
            return Err(self.refused(status, &bytes));
        }
        // GitHub reports a bad client id or a disabled device flow with
        // 200 and an error field here too.
        if let Ok(TokenAnswer {
            error: Some(code),
            error_description,
            ..
        }) = serde_json::from_slice::<TokenAnswer>(&bytes)
        {
            return Err(LoginError::AppRefused(describe(&code, error_description)));
        }
        serde_json::from_slice(&bytes).map_err(|e| LoginError::BadAnswer(e.to_string()))
    }

    /// One poll of step 2.
    pub async fn poll(&self, code: &DeviceCode, interval: Duration) -> Result<Poll, LoginError> {
        let body = TokenRequest {
            client_id: &self.client_id,
            device_code: &code.device_code,
            grant_type: "urn:ietf:params:oauth:grant-type:device_code",
        };
        let (status, bytes) = self.post("/login/oauth/access_token", &body).await?;
        if status != 200 {
            return Err(self.refused(status, &bytes));
        }
        let answer: TokenAnswer =
            serde_json::from_slice(&bytes).map_err(|e| LoginError::BadAnswer(e.to_string()))?;
        match (answer.access_token, answer.error.as_deref()) {
            (Some(token), None) if !token.is_empty() => Ok(Poll::Token(token)),
            (_, Some("authorization_pending")) => Ok(Poll::Pending),
            (_, Some("slow_down")) => {
                let asked = answer.interval.map(Duration::from_secs);
                let slower = (interval + SLOW_DOWN_STEP).max(asked.unwrap_or_default());
                Ok(Poll::SlowDown(slower.min(MAX_INTERVAL)))
            }
            (_, Some("expired_token")) => Err(LoginError::Expired),
            (_, Some("access_denied")) => Err(LoginError::Denied),
            (_, Some(code)) => Err(LoginError::AppRefused(describe(
                code,
                answer.error_description,
            ))),
            _ => Err(LoginError::BadAnswer(
                "neither a token nor an error".to_owned(),
            )),
        }
    }

    /// Step 2: polls until the user approves (the token), denies, or the
    /// code expires. `waiting` hears each new interval (after `slow_down`).
    pub async fn wait_for_token(
        &self,
        code: &DeviceCode,
        mut waiting: impl FnMut(Duration),
    ) -> Result<String, LoginError> {
        let deadline = tokio::time::Instant::now() + code.lifetime();
        let mut interval = code.poll_interval();
        for _ in 0..MAX_POLLS {
            tokio::time::sleep(interval).await;
            if tokio::time::Instant::now() >= deadline {
                return Err(LoginError::Expired);
            }
            match self.poll(code, interval).await? {
                Poll::Token(t) => return Ok(t),
                Poll::Pending => {}
                Poll::SlowDown(slower) => {
                    interval = slower;
                    waiting(interval);
                }
            }
        }
        Err(LoginError::Expired)
    }

    async fn post(&self, path: &str, body: &impl Serialize) -> Result<(u16, Vec<u8>), LoginError> {
        let resp = self
            .client
            ._post(path, Some(body))
            .await
            .map_err(|e| LoginError::Unreachable(format!("{}{path}: {e}", self.host)))?;
        read_answer!(resp, &self.host)
    }

    fn refused(&self, status: u16, bytes: &[u8]) -> LoginError {
        LoginError::Refused {
            host: self.host.clone(),
            status,
            message: message_of(bytes),
        }
    }
}

/// GitHub's error code with its description, if it gave one.
fn describe(code: &str, description: Option<String>) -> String {
    match description {
        Some(d) if !d.is_empty() => format!("{code}: {d}"),
        _ => code.to_owned(),
    }
}

/// The `message` of a GitHub error answer, or a short excerpt.
fn message_of(bytes: &[u8]) -> String {
    #[derive(Deserialize)]
    struct Message {
        message: String,
    }
    serde_json::from_slice::<Message>(bytes)
        .map(|m| m.message)
        .unwrap_or_else(|_| String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned())
}

/// A client for `base` that accepts `accept`, with `token` if given.
fn client(base: &str, accept: &str, token: Option<&str>) -> Result<octocrab::Octocrab, LoginError> {
    let mut builder = octocrab::Octocrab::builder()
        .base_uri(base)
        .map_err(|_| LoginError::BadUrl(base.to_owned()))?
        .set_connect_timeout(Some(Duration::from_secs(10)))
        .set_read_timeout(Some(Duration::from_secs(30)))
        .add_header(http::header::ACCEPT, accept.to_owned());
    if let Some(t) = token {
        builder = builder.personal_token(t.to_owned());
    }
    builder
        .build()
        .map_err(|e| LoginError::BadUrl(format!("{base}: {e}")))
}

/// The login of the user `token` belongs to (`GET /user` on the API).
pub async fn user_of(api: &str, token: &str) -> Result<String, LoginError> {
    #[derive(Deserialize)]
    struct User {
        login: String,
    }
    let client = client(api, "application/vnd.github+json", Some(token))?;
    let resp = client
        ._get("/user")
        .await
        .map_err(|e| LoginError::Unreachable(format!("{api}/user: {e}")))?;
    let (status, bytes) = read_answer!(resp, api)?;
    if status != 200 {
        return Err(LoginError::Refused {
            host: api.trim_end_matches('/').to_owned(),
            status,
            message: message_of(&bytes),
        });
    }
    let user: User =
        serde_json::from_slice(&bytes).map_err(|e| LoginError::BadAnswer(e.to_string()))?;
    if user.login.is_empty() || user.login.len() > 100 {
        return Err(LoginError::BadAnswer(format!(
            "implausible login {:?}",
            user.login
        )));
    }
    Ok(user.login)
}
