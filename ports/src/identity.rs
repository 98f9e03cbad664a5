//! Who a node is: its presence record signed with its user's SSH key, and
//! the check every peer makes before it links to the node.
//!
//! A node signs one *claim* per session: its raft id, its session, its
//! user and its DTLS certificate fingerprint
//! ([`presence_claim`]). The signature is an SSH signature (the format
//! `ssh-keygen -Y sign -n skygit` makes), armored, in the record's
//! `identity` field. A peer checks it against the keys the code host or the
//! room lists for that user (a [`KeyDirectory`]: GitHub's
//! `/users/{user}/keys`, or the room's allowed-signers file) before it
//! offers or answers a link; the transport then keeps the link only when
//! the remote end presents the signed fingerprint, which binds the link to
//! a verified user. Heartbeats and signals are not signed: they change
//! every few seconds and carry no identity.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::future::BoxFuture;
use ssh_key::{HashAlg, LineEnding, PrivateKey, PublicKey, SshSig};

use skygit_consensus::model::{Attachment, CallEntry, Change, ChangeKind, ChatRequest, Command};

use crate::members::SIGNATURE_NAMESPACE;
use crate::PresenceRecord;

mod agent;

/// Largest armored signature accepted from a peer (an RSA-4096 one is
/// about 1.2 KiB).
pub const MAX_SIGNATURE_BYTES: usize = 8 * 1024;
/// Largest private key file read.
const MAX_KEY_FILE_BYTES: u64 = 64 * 1024;

/// A problem with this node's own key.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read the SSH key {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("the SSH key {path} is protected by a passphrase: add it to ssh-agent (ssh-add {path}) and start the node with SSH_AUTH_SOCK set, or give an unencrypted key file")]
    Encrypted { path: String },
    #[error("{path} is a public key: its private half must be in ssh-agent, but SSH_AUTH_SOCK is not set")]
    NoAgent { path: String },
    #[error("the ssh-agent at {socket} does not hold the key {fingerprint} (ssh-add it)")]
    NotInAgent { fingerprint: String, socket: String },
    #[error(
        "the ssh-agent at {socket} holds {count} key(s), none of them one the room lists for this user"
    )]
    NoAgentKey { socket: String, count: usize },
    #[error("cannot use the ssh-agent at {socket}: {reason}")]
    Agent { socket: String, reason: String },
    #[error("cannot sign with the SSH key: {0}")]
    Sign(String),
}

/// Why a peer's presence was refused. The same verdict on every honest
/// node: it depends only on the record and the user's keys.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("its presence is not signed")]
    Unsigned,
    #[error("{user} is not a member of the room")]
    NotMember { user: String },
    #[error("it signed with key {fingerprint}, which is not one of {user}'s keys")]
    ForeignKey { user: String, fingerprint: String },
    #[error("its signature does not verify: {0}")]
    BadSignature(String),
}

/// The key directory could not answer (the host is down, rate-limited,
/// its answer malformed): the peer is checked again later, not refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot read the members' keys: {0}")]
pub struct DirectoryError(pub String);

/// Where the members' public keys come from.
pub trait KeyDirectory: Send + Sync {
    /// `user`'s keys; `None` when the user is not a member of the room.
    fn keys_of<'a>(
        &'a self,
        user: &'a str,
    ) -> BoxFuture<'a, Result<Option<Vec<PublicKey>>, DirectoryError>>;

    /// Names the directory for people (`github`, `allowed_signers`).
    fn name(&self) -> &'static str;
}

/// The bytes a presence signature covers: everything that says who the
/// node is, nothing that changes between heartbeats.
pub fn presence_claim(record: &PresenceRecord) -> Vec<u8> {
    format!(
        "skygit presence 1\nnode {}\nsession {}\nuser {}\nfingerprint {}\n",
        record.node_id, record.session_id, record.user, record.dtls_fingerprint
    )
    .into_bytes()
}

/// The bytes a founding commit's signature covers: the founder of the
/// room's raft group of `epoch`, as a member (a founding signed for one
/// epoch does not count for another). The first group's (epoch 0) is the
/// claim rooms were founded with before epochs, so their foundings still
/// verify.
pub fn founding_claim(epoch: u64, base: u64, node: u64, user: &str) -> Vec<u8> {
    if epoch == 0 {
        format!("skygit founding 1\nnode {node}\nuser {user}\n").into_bytes()
    } else {
        format!("skygit founding 2\nepoch {epoch}\nbase {base}\nnode {node}\nuser {user}\n")
            .into_bytes()
    }
}

const ARMOR_BEGIN: &str = "-----BEGIN SSH SIGNATURE-----";
const ARMOR_END: &str = "-----END SSH SIGNATURE-----";

/// An armored signature's base64 on one line (for a commit trailer).
pub fn unarmor(armored: &str) -> String {
    armored
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && *l != ARMOR_BEGIN && *l != ARMOR_END)
        .collect()
}

/// The armored form of a one-line base64 signature, wrapped as
/// `ssh-keygen` wraps it (70 columns).
pub fn armor(base64: &str) -> String {
    let body: Vec<&str> = base64
        .as_bytes()
        .chunks(70)
        .filter_map(|c| std::str::from_utf8(c).ok())
        .collect();
    format!("{ARMOR_BEGIN}\n{}\n{ARMOR_END}\n", body.join("\n"))
}

/// What an author signs for a post, edit, delete or conversation: a
/// compact JSON object of the change's fields as its batch-file line has
/// them, in this order, absent fields left out:
///
/// | line `kind` | fields |
/// | --- | --- |
/// | `post` | `kind`, `conversation`, `request`, `sender`, `at`, `content` |
/// | `edit` | `kind`, `message`, `request`, `sender`, `at`, `content` |
/// | `delete` | `kind`, `message`, `request`, `sender`, `at` |
/// | `conversation` | `kind`, `conversation`, `request`, `sender`, `at`, `title` |
/// | `call` | `kind`, `conversation`, `request`, `sender`, `at`, `call` |
///
/// so `jq -cj` can rebuild it from a line and `ssh-keygen -Y verify`
/// check it (the README shows how). The raft index and term are not in
/// it: they are assigned after the author signs.
#[derive(serde::Serialize)]
struct Statement<'a> {
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    conversation: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<String>,
    request: String,
    sender: &'a str,
    at: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    title: Option<&'a str>,
    /// A post's files (absent when it has none, so the statements of
    /// posts without files are what they were before attachments).
    #[serde(skip_serializing_if = "<[Attachment]>::is_empty")]
    attachments: &'a [Attachment],
    /// A call entry (absent on every other kind).
    #[serde(skip_serializing_if = "Option::is_none")]
    call: Option<&'a CallEntry>,
}

impl Statement<'_> {
    fn bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// The statement a request's author signs; `None` for the room's own
/// records (`Synced`, `Configure`), which nobody signs.
pub fn request_statement(req: &ChatRequest) -> Option<Vec<u8>> {
    let base = |kind| Statement {
        kind,
        conversation: None,
        message: None,
        request: req.id.to_string(),
        sender: req.sender.as_str(),
        at: req.at,
        content: None,
        title: None,
        attachments: &[],
        call: None,
    };
    let s = match &req.command {
        Command::Post {
            conversation,
            content,
            attachments,
        } => Statement {
            conversation: Some(conversation.as_str()),
            content: Some(content),
            attachments,
            ..base("post")
        },
        Command::Edit { message, content } => Statement {
            message: Some(message.to_string()),
            content: Some(content),
            ..base("edit")
        },
        Command::Delete { message } => Statement {
            message: Some(message.to_string()),
            ..base("delete")
        },
        Command::CreateConversation {
            conversation,
            title,
        } => Statement {
            conversation: Some(conversation.as_str()),
            title: Some(title),
            ..base("conversation")
        },
        Command::Call {
            conversation,
            entry,
        } => Statement {
            conversation: Some(conversation.as_str()),
            call: Some(entry),
            ..base("call")
        },
        Command::Synced { .. } | Command::Configure { .. } => return None,
    };
    Some(s.bytes())
}

/// The statement behind a change of the history (equal to its request's).
pub fn change_statement(c: &Change) -> Vec<u8> {
    let base = |kind| Statement {
        kind,
        conversation: None,
        message: None,
        request: c.request.to_string(),
        sender: c.sender.as_str(),
        at: c.at,
        content: None,
        title: None,
        attachments: &[],
        call: None,
    };
    match &c.kind {
        ChangeKind::Post {
            content,
            attachments,
            ..
        } => Statement {
            conversation: Some(c.conversation.as_str()),
            content: Some(content),
            attachments,
            ..base("post")
        },
        ChangeKind::Edit { message, content } => Statement {
            message: Some(message.to_string()),
            content: Some(content),
            ..base("edit")
        },
        ChangeKind::Delete { message } => Statement {
            message: Some(message.to_string()),
            ..base("delete")
        },
        ChangeKind::CreateConversation { title } => Statement {
            conversation: Some(c.conversation.as_str()),
            title: Some(title),
            ..base("conversation")
        },
        ChangeKind::Call { entry, .. } => Statement {
            conversation: Some(c.conversation.as_str()),
            call: Some(entry),
            ..base("call")
        },
    }
    .bytes()
}

/// Checks a change of the history against its author's keys.
pub fn verify_change(keys: Option<&[PublicKey]>, c: &Change) -> Result<(), Refusal> {
    let armored = c.signature.as_deref().map(armor);
    verify(
        c.sender.as_str(),
        keys,
        &change_statement(c),
        armored.as_deref(),
    )
}

/// Checks a request against its author's keys (`Ok` for the room's own
/// records, which are not signed).
pub fn verify_request(keys: Option<&[PublicKey]>, req: &ChatRequest) -> Result<(), Refusal> {
    let Some(statement) = request_statement(req) else {
        return Ok(());
    };
    let armored = req.signature.as_deref().map(armor);
    verify(req.sender.as_str(), keys, &statement, armored.as_deref())
}

/// This node's SSH key: a private key file, or a key held by a running
/// ssh-agent (the private half never leaves the agent).
pub struct SigningKey {
    public: PublicKey,
    signer: Signer,
}

enum Signer {
    File(Box<PrivateKey>),
    /// The agent's socket (`SSH_AUTH_SOCK`).
    Agent(PathBuf),
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("fingerprint", &self.fingerprint())
            .field("agent", &matches!(self.signer, Signer::Agent(_)))
            .finish()
    }
}

impl SigningKey {
    /// Reads an OpenSSH key file (`~/.ssh/id_ed25519`). An unencrypted
    /// private key signs by itself; a passphrase-protected private key,
    /// or a public key file (`id_ed25519.pub`), signs through the ssh-agent
    /// at `agent`, which must hold that key.
    pub fn from_file(path: &Path, agent: Option<&Path>) -> Result<SigningKey, KeyError> {
        let shown = path.display().to_string();
        let read = |reason: String| KeyError::Read {
            path: shown.clone(),
            reason,
        };
        let len = std::fs::metadata(path)
            .map_err(|e| read(e.to_string()))?
            .len();
        if len > MAX_KEY_FILE_BYTES {
            return Err(read(format!("{len} bytes is too large for a key")));
        }
        let text = std::fs::read_to_string(path).map_err(|e| read(e.to_string()))?;
        let public = match PrivateKey::from_openssh(text.as_bytes()) {
            Ok(key) if !key.is_encrypted() => {
                return Ok(SigningKey {
                    public: key.public_key().clone(),
                    signer: Signer::File(Box::new(key)),
                })
            }
            Ok(_) if agent.is_none() => return Err(KeyError::Encrypted { path: shown }),
            Ok(key) => key.public_key().clone(),
            Err(private) => match PublicKey::from_openssh(text.trim()) {
                Ok(public) => public,
                Err(_) => {
                    return Err(read(format!(
                        "neither an OpenSSH private key ({private}) nor a public key"
                    )))
                }
            },
        };
        let Some(agent) = agent else {
            return Err(KeyError::NoAgent { path: shown });
        };
        SigningKey::from_agent(agent, public)
    }

    /// `public`'s key in the ssh-agent at `socket`.
    pub fn from_agent(socket: &Path, public: PublicKey) -> Result<SigningKey, KeyError> {
        let held = agent::identities(socket)?;
        if !held.iter().any(|k| k.key_data() == public.key_data()) {
            return Err(KeyError::NotInAgent {
                fingerprint: public.fingerprint(HashAlg::Sha256).to_string(),
                socket: socket.display().to_string(),
            });
        }
        Ok(SigningKey {
            public,
            signer: Signer::Agent(socket.to_path_buf()),
        })
    }

    /// The first key of the ssh-agent at `socket` that `wanted` accepts
    /// (one the room lists for this node's user).
    pub fn choose_from_agent(
        socket: &Path,
        wanted: impl Fn(&PublicKey) -> bool,
    ) -> Result<SigningKey, KeyError> {
        let held = agent::identities(socket)?;
        let count = held.len();
        match held.into_iter().find(|k| wanted(k)) {
            Some(public) => Ok(SigningKey {
                public,
                signer: Signer::Agent(socket.to_path_buf()),
            }),
            None => Err(KeyError::NoAgentKey {
                socket: socket.display().to_string(),
                count,
            }),
        }
    }

    /// A key made from `seed` (tests and the simulator).
    pub fn from_ed25519_seed(seed: [u8; 32]) -> SigningKey {
        let pair = ssh_key::private::Ed25519Keypair::from_seed(&seed);
        let key = PrivateKey::from(pair);
        SigningKey {
            public: key.public_key().clone(),
            signer: Signer::File(Box::new(key)),
        }
    }

    pub fn public(&self) -> PublicKey {
        self.public.clone()
    }

    /// `SHA256:...`, as `ssh-keygen -l` prints it.
    pub fn fingerprint(&self) -> String {
        self.public.fingerprint(HashAlg::Sha256).to_string()
    }

    /// Whether the key is held by an ssh-agent.
    pub fn in_agent(&self) -> bool {
        matches!(self.signer, Signer::Agent(_))
    }

    /// An armored SSH signature of `msg` in the room's namespace.
    pub fn sign(&self, msg: &[u8]) -> Result<String, KeyError> {
        let sig = match &self.signer {
            Signer::File(key) => key
                .sign(SIGNATURE_NAMESPACE, HashAlg::Sha512, msg)
                .map_err(|e| KeyError::Sign(e.to_string()))?,
            Signer::Agent(socket) => agent::sign(socket, &self.public, msg)?,
        };
        sig.to_pem(LineEnding::LF)
            .map_err(|e| KeyError::Sign(e.to_string()))
    }

    /// Signs a post, edit, delete or conversation into `req.signature`
    /// (the room's own records are left unsigned).
    pub fn sign_request(&self, req: &mut ChatRequest) -> Result<(), KeyError> {
        if let Some(statement) = request_statement(req) {
            req.signature = Some(unarmor(&self.sign(&statement)?));
        }
        Ok(())
    }

    /// Signs this node's presence claim into `record.identity`.
    pub fn sign_presence(&self, record: &mut PresenceRecord) -> Result<(), KeyError> {
        record.identity = Some(self.sign(&presence_claim(record))?);
        Ok(())
    }
}

/// Checks an armored signature of `msg` by `user`, whose keys are `keys`
/// (`None`: not a member).
pub fn verify(
    user: &str,
    keys: Option<&[PublicKey]>,
    msg: &[u8],
    armored: Option<&str>,
) -> Result<(), Refusal> {
    let Some(keys) = keys else {
        return Err(Refusal::NotMember {
            user: user.to_owned(),
        });
    };
    let Some(armored) = armored else {
        return Err(Refusal::Unsigned);
    };
    if armored.len() > MAX_SIGNATURE_BYTES {
        return Err(Refusal::BadSignature(format!(
            "{} bytes, over {MAX_SIGNATURE_BYTES}",
            armored.len()
        )));
    }
    let sig = SshSig::from_pem(armored).map_err(|e| Refusal::BadSignature(e.to_string()))?;
    if sig.namespace() != SIGNATURE_NAMESPACE {
        return Err(Refusal::BadSignature(format!(
            "namespace {:?}, not {SIGNATURE_NAMESPACE:?}",
            sig.namespace()
        )));
    }
    let Some(key) = keys.iter().find(|k| k.key_data() == sig.public_key()) else {
        return Err(Refusal::ForeignKey {
            user: user.to_owned(),
            fingerprint: sig.public_key().fingerprint(HashAlg::Sha256).to_string(),
        });
    };
    key.verify(SIGNATURE_NAMESPACE, msg, &sig)
        .map_err(|e| Refusal::BadSignature(e.to_string()))
}

/// Checks a peer's presence record against its user's keys in `dir`.
pub async fn check_presence(
    dir: &dyn KeyDirectory,
    record: &PresenceRecord,
) -> Result<Result<(), Refusal>, DirectoryError> {
    let Some(armored) = record.identity.as_deref() else {
        return Ok(Err(Refusal::Unsigned));
    };
    let keys = dir.keys_of(&record.user).await?;
    Ok(verify(
        &record.user,
        keys.as_deref(),
        &presence_claim(record),
        Some(armored),
    ))
}

/// The keys of a room's allowed-signers file, as a directory.
pub fn keys_in(signers: &crate::members::AllowedSigners, user: &str) -> Option<Vec<PublicKey>> {
    let keys: Vec<PublicKey> = signers
        .keys
        .iter()
        .filter(|k| k.user.as_str() == user)
        .filter_map(|k| PublicKey::from_openssh(&k.key).ok())
        .collect();
    (!keys.is_empty()).then_some(keys)
}

/// How long a directory trusts the keys it read without asking again.
pub const KEYS_TTL: std::time::Duration = std::time::Duration::from_secs(10);
/// Keys older than [`KEYS_TTL`] but younger than this are still answered
/// at once while they are read again in the background: a verification on
/// the message path never waits for the repository or GitHub once the
/// keys were read.
pub const KEYS_MAX_STALE: std::time::Duration = std::time::Duration::from_secs(300);

/// The room's members file (`.messages/allowed_signers`) at the branch
/// head, as a key directory: read again when it is older than
/// [`KEYS_TTL`], so a key added with `skygit members add` counts within
/// seconds. Without the file nobody is a member.
pub struct RepoMembers {
    remote: Arc<dyn crate::RepoRemote>,
    cache: Arc<TtlCache<(), crate::members::AllowedSigners>>,
}

impl RepoMembers {
    pub fn new(remote: Arc<dyn crate::RepoRemote>) -> RepoMembers {
        RepoMembers {
            remote,
            cache: Arc::new(TtlCache::new(1)),
        }
    }

    /// The members file at the head, read now.
    pub async fn read(&self) -> Result<crate::members::AllowedSigners, DirectoryError> {
        read_members(self.remote.clone()).await
    }
}

async fn read_members(
    remote: Arc<dyn crate::RepoRemote>,
) -> Result<crate::members::AllowedSigners, DirectoryError> {
    let head = remote
        .head()
        .await
        .map_err(|e| DirectoryError(e.to_string()))?;
    let Some(head) = head else {
        return Ok(Default::default());
    };
    match crate::readback::members_at(remote.as_ref(), &head.commit_sha).await {
        Ok(None) => Ok(Default::default()),
        Ok(Some(Ok(m))) => Ok(m),
        Ok(Some(Err(e))) => Err(DirectoryError(e)),
        Err(e) => Err(DirectoryError(e.to_string())),
    }
}

impl KeyDirectory for RepoMembers {
    fn keys_of<'a>(
        &'a self,
        user: &'a str,
    ) -> BoxFuture<'a, Result<Option<Vec<PublicKey>>, DirectoryError>> {
        Box::pin(async move {
            let remote = self.remote.clone();
            let signers = cached(&self.cache, (), move || Box::pin(read_members(remote))).await?;
            Ok(keys_in(&signers, user))
        })
    }

    fn name(&self) -> &'static str {
        "allowed_signers"
    }
}

/// A fixed set of members and keys (an in-process room, tests).
#[derive(Debug, Clone, Default)]
pub struct StaticKeys(pub std::collections::BTreeMap<String, Vec<PublicKey>>);

impl KeyDirectory for StaticKeys {
    fn keys_of<'a>(
        &'a self,
        user: &'a str,
    ) -> BoxFuture<'a, Result<Option<Vec<PublicKey>>, DirectoryError>> {
        let keys = self.0.get(user).cloned();
        Box::pin(async move { Ok(keys) })
    }

    fn name(&self) -> &'static str {
        "static"
    }
}

/// A fetch of one cached value.
pub type Fetch<V> = BoxFuture<'static, Result<V, DirectoryError>>;

/// The value for `key`: fresh from the cache; stale (within
/// [`KEYS_MAX_STALE`]) from the cache while `fetch` refreshes it in the
/// background (on a Tokio runtime; elsewhere it is fetched now); or
/// fetched now.
pub async fn cached<K, V>(
    cache: &Arc<TtlCache<K, V>>,
    key: K,
    fetch: impl FnOnce() -> Fetch<V>,
) -> Result<V, DirectoryError>
where
    K: Ord + Clone + Send + 'static,
    V: Clone + Send + 'static,
{
    match cache.lookup(&key) {
        Lookup::Fresh(v) => Ok(v),
        Lookup::Stale(v) => {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                if cache.start_refresh(&key) {
                    let (cache, key, f) = (cache.clone(), key, fetch());
                    rt.spawn(async move {
                        match f.await {
                            Ok(v) => cache.put(key, v),
                            Err(e) => {
                                cache.end_refresh(&key);
                                tracing::warn!(error = %e, "cannot refresh the members' keys; using the ones read before");
                            }
                        }
                    });
                }
                return Ok(v);
            }
            let v = fetch().await?;
            cache.put(key, v.clone());
            Ok(v)
        }
        Lookup::Missing => {
            let v = fetch().await?;
            cache.put(key, v.clone());
            Ok(v)
        }
    }
}

/// What a [`TtlCache`] holds for a key.
pub enum Lookup<V> {
    Fresh(V),
    Stale(V),
    Missing,
}

/// Answers remembered for [`KEYS_TTL`] (and usable for
/// [`KEYS_MAX_STALE`]), at most `max` of them (the oldest goes first).
pub struct TtlCache<K, V> {
    max: usize,
    slots: std::sync::Mutex<std::collections::BTreeMap<K, (std::time::Instant, V)>>,
    refreshing: std::sync::Mutex<std::collections::BTreeSet<K>>,
}

impl<K: Ord + Clone, V: Clone> TtlCache<K, V> {
    pub fn new(max: usize) -> Self {
        TtlCache {
            max: max.max(1),
            slots: Default::default(),
            refreshing: Default::default(),
        }
    }

    pub fn lookup(&self, key: &K) -> Lookup<V> {
        let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        match slots.get(key) {
            Some((at, v)) if at.elapsed() < KEYS_TTL => Lookup::Fresh(v.clone()),
            Some((at, v)) if at.elapsed() < KEYS_MAX_STALE => Lookup::Stale(v.clone()),
            _ => Lookup::Missing,
        }
    }

    /// Marks `key` as being refreshed; `false` when it already is.
    fn start_refresh(&self, key: &K) -> bool {
        self.refreshing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.clone())
    }

    fn end_refresh(&self, key: &K) {
        self.refreshing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }

    pub fn put(&self, key: K, value: V) {
        self.end_refresh(&key);
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        if slots.len() >= self.max && !slots.contains_key(&key) {
            let oldest = slots
                .iter()
                .min_by_key(|(_, (at, _))| *at)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                slots.remove(&k);
            }
        }
        slots.insert(key, (std::time::Instant::now(), value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(user: &str) -> PresenceRecord {
        PresenceRecord {
            version: crate::PRESENCE_VERSION,
            user: user.into(),
            node_id: 7,
            session_id: "7-1".into(),
            last_seen: 1,
            dtls_fingerprint: "sha-256 AB:CD".into(),
            in_group: false,
            signals: vec![],
            identity: None,
        }
    }

    struct Dir(Vec<(String, PublicKey)>);

    impl KeyDirectory for Dir {
        fn keys_of<'a>(
            &'a self,
            user: &'a str,
        ) -> BoxFuture<'a, Result<Option<Vec<PublicKey>>, DirectoryError>> {
            let keys: Vec<PublicKey> = self
                .0
                .iter()
                .filter(|(u, _)| u == user)
                .map(|(_, k)| k.clone())
                .collect();
            Box::pin(async move { Ok((!keys.is_empty()).then_some(keys)) })
        }
        fn name(&self) -> &'static str {
            "test"
        }
    }

    fn check(dir: &Dir, r: &PresenceRecord) -> Result<(), Refusal> {
        futures::executor::block_on(check_presence(dir, r)).expect("directory answers")
    }

    #[test]
    fn a_signed_record_verifies_and_every_false_claim_is_refused() {
        let alice = SigningKey::from_ed25519_seed([1; 32]);
        let mallory = SigningKey::from_ed25519_seed([2; 32]);
        let dir = Dir(vec![("alice".into(), alice.public())]);

        let mut r = record("alice");
        assert_eq!(check(&dir, &r), Err(Refusal::Unsigned));
        alice.sign_presence(&mut r).expect("signs");
        assert_eq!(check(&dir, &r), Ok(()));

        // The record's heartbeat and signals are not covered.
        let mut later = r.clone();
        later.last_seen = 99;
        assert_eq!(check(&dir, &later), Ok(()));

        // Every field of the claim is.
        for change in [
            |r: &mut PresenceRecord| r.node_id = 8,
            |r: &mut PresenceRecord| r.session_id = "7-2".into(),
            |r: &mut PresenceRecord| r.dtls_fingerprint = "sha-256 EF".into(),
        ] {
            let mut bad = r.clone();
            change(&mut bad);
            assert!(matches!(check(&dir, &bad), Err(Refusal::BadSignature(_))));
        }
        // Mallory claiming to be alice, with her own key.
        let mut forged = record("alice");
        mallory.sign_presence(&mut forged).expect("signs");
        assert_eq!(
            check(&dir, &forged),
            Err(Refusal::ForeignKey {
                user: "alice".into(),
                fingerprint: mallory.fingerprint()
            })
        );
        // Mallory as herself: not a member.
        let mut own = record("mallory");
        mallory.sign_presence(&mut own).expect("signs");
        assert_eq!(
            check(&dir, &own),
            Err(Refusal::NotMember {
                user: "mallory".into()
            })
        );
        // Garbage in the signature field.
        let mut junk = r.clone();
        junk.identity =
            Some("-----BEGIN SSH SIGNATURE-----\nAAAA\n-----END SSH SIGNATURE-----\n".into());
        assert!(matches!(check(&dir, &junk), Err(Refusal::BadSignature(_))));
        junk.identity = Some("x".repeat(MAX_SIGNATURE_BYTES + 1));
        assert!(matches!(check(&dir, &junk), Err(Refusal::BadSignature(_))));
    }

    #[test]
    fn a_signature_survives_a_commit_trailer() {
        let alice = SigningKey::from_ed25519_seed([1; 32]);
        let claim = founding_claim(2, 9, 5, "alice");
        let armored = alice.sign(&claim).expect("signs");
        let message = crate::layout::signed_founding_message(5, 2, 9, 40, "alice", &armored);
        assert_eq!(crate::layout::founder(&message), Some(5));
        assert_eq!(crate::layout::group_epoch(&message), 2);
        assert_eq!(crate::layout::watermark(&message), Some(40));
        assert_eq!(crate::layout::group_base(&message), 9);
        let (user, sig) = crate::layout::founder_signature(&message).expect("signed");
        assert_eq!(user, "alice");
        assert_eq!(sig, armored);
        let keys = [alice.public()];
        assert_eq!(verify("alice", Some(&keys), &claim, Some(&sig)), Ok(()));
        assert!(verify(
            "alice",
            Some(&keys),
            &founding_claim(2, 9, 6, "alice"),
            Some(&sig)
        )
        .is_err());
        // Signed for one base, it does not start another.
        assert!(verify(
            "alice",
            Some(&keys),
            &founding_claim(2, 10, 5, "alice"),
            Some(&sig)
        )
        .is_err());
        // Signed for one epoch, it does not found another.
        for other in [0, 3] {
            assert!(verify(
                "alice",
                Some(&keys),
                &founding_claim(other, 9, 5, "alice"),
                Some(&sig)
            )
            .is_err());
        }
        // Epoch 0 signs what foundings signed before epochs.
        assert_eq!(
            founding_claim(0, 0, 5, "alice"),
            b"skygit founding 1\nnode 5\nuser alice\n"
        );
        // Junk in the trailer is a bad signature, not a panic.
        assert!(matches!(
            verify("alice", Some(&keys), &claim, Some(&armor("@@not base64@@"))),
            Err(Refusal::BadSignature(_))
        ));
    }

    #[test]
    fn a_signed_change_verifies_from_its_batch_file_line_and_a_changed_one_does_not() {
        use skygit_consensus::model::{ConversationId, UserId};
        let alice = SigningKey::from_ed25519_seed([1; 32]);
        let keys = [alice.public()];
        let general = ConversationId::new("general").expect("name");
        let target = ulid::Ulid::from_parts(1, 1);
        let commands = [
            Command::Post {
                conversation: general.clone(),
                content: "héllo \"world\"\n\tbye".into(),
                attachments: Vec::new(),
            },
            Command::Edit {
                message: target,
                content: "edited".into(),
            },
            Command::Delete { message: target },
            Command::CreateConversation {
                conversation: ConversationId::new("ops").expect("name"),
                title: "Ops & <friends>".into(),
            },
            Command::Post {
                conversation: general.clone(),
                content: "a file".into(),
                attachments: vec![skygit_consensus::model::Attachment {
                    sha256: skygit_consensus::model::ContentHash::from_digest([9; 32]),
                    size: 5,
                    name: "log.txt".into(),
                    media_type: "text/plain".into(),
                }],
            },
            Command::Call {
                conversation: general.clone(),
                entry: CallEntry {
                    call: target,
                    event: skygit_consensus::model::CallEvent::Ended,
                    participants: vec![UserId::new("alice").expect("user")],
                    duration_ms: 4_000,
                },
            },
        ];
        for (i, command) in commands.into_iter().enumerate() {
            let mut req = ChatRequest {
                id: ulid::Ulid::from_parts(1_700_000_000_000 + i as u64, 7),
                sender: UserId::new("alice").expect("user"),
                at: 1_700_000_000_000 + i as i64,
                command: command.clone(),
                signature: None,
            };
            alice.sign_request(&mut req).expect("signs");
            assert_eq!(verify_request(Some(&keys), &req), Ok(()));
            // The change the state machine journals for it (as chat::apply
            // makes it), through a batch file and back.
            let kind = match command.clone() {
                Command::Post {
                    content,
                    attachments,
                    ..
                } => ChangeKind::Post {
                    message: req.id,
                    content,
                    attachments,
                },
                Command::Edit { message, content } => ChangeKind::Edit { message, content },
                Command::Delete { message } => ChangeKind::Delete { message },
                Command::CreateConversation { title, .. } => {
                    ChangeKind::CreateConversation { title }
                }
                Command::Call { entry, .. } => ChangeKind::Call {
                    message: req.id,
                    entry,
                },
                other => panic!("only user commands here, not {other:?}"),
            };
            let conversation = match &req.command {
                Command::CreateConversation { conversation, .. } => conversation.clone(),
                _ => general.clone(),
            };
            let change = Change {
                index: 10 + i as u64,
                term: 2,
                request: req.id,
                sender: req.sender.clone(),
                at: req.at,
                conversation,
                kind,
                signature: req.signature.clone(),
            };
            let batch = crate::layout::render(std::slice::from_ref(&change)).expect("renders");
            let (path, bytes) = &batch.files[0];
            let read = crate::layout::parse_batch(path, bytes).expect("parses");
            assert_eq!(read, vec![change.clone()]);
            assert_eq!(verify_change(Some(&keys), &read[0]), Ok(()), "{command:?}");
            // Another text, sender or time: refused.
            let mut bad = read[0].clone();
            bad.at += 1;
            assert!(matches!(
                verify_change(Some(&keys), &bad),
                Err(Refusal::BadSignature(_))
            ));
            // Another file under the same text: refused.
            if let ChangeKind::Post { attachments, .. } = &read[0].kind {
                if let Some(first) = attachments.first() {
                    let mut swapped = read[0].clone();
                    if let ChangeKind::Post { attachments, .. } = &mut swapped.kind {
                        attachments[0].sha256 =
                            skygit_consensus::model::ContentHash::from_digest([8; 32]);
                        assert_ne!(attachments[0], *first);
                    }
                    assert!(matches!(
                        verify_change(Some(&keys), &swapped),
                        Err(Refusal::BadSignature(_))
                    ));
                }
            }
            let mut unsigned = read[0].clone();
            unsigned.signature = None;
            assert_eq!(
                verify_change(Some(&keys), &unsigned),
                Err(Refusal::Unsigned)
            );
        }
    }

    #[test]
    fn a_signature_in_another_namespace_is_refused() {
        let alice = SigningKey::from_ed25519_seed([1; 32]);
        let r = record("alice");
        let Signer::File(private) = &alice.signer else {
            unreachable!("a seed key is a file key")
        };
        let sig = private
            .sign("git", HashAlg::Sha512, &presence_claim(&r))
            .and_then(|s| s.to_pem(LineEnding::LF))
            .expect("signs");
        let keys = [alice.public()];
        assert!(matches!(
            verify("alice", Some(&keys), &presence_claim(&r), Some(&sig)),
            Err(Refusal::BadSignature(m)) if m.contains("namespace")
        ));
    }

    #[test]
    fn an_encrypted_or_missing_key_file_is_a_clear_error() {
        let dir = std::env::temp_dir().join(format!("skygit-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let missing = dir.join("none");
        assert!(matches!(
            SigningKey::from_file(&missing, None),
            Err(KeyError::Read { .. })
        ));
        let junk = dir.join("junk");
        std::fs::write(&junk, "not a key").expect("write");
        let e = SigningKey::from_file(&junk, None).expect_err("junk");
        assert!(e.to_string().contains("junk"), "{e}");
        // A public key signs only through an agent.
        let public = dir.join("id.pub");
        let key = SigningKey::from_ed25519_seed([7; 32]);
        std::fs::write(&public, key.public().to_openssh().expect("openssh")).expect("write");
        let e = SigningKey::from_file(&public, None).expect_err("no agent");
        assert!(matches!(e, KeyError::NoAgent { .. }), "{e}");
        // An agent that is not there is a clear error, not a hang.
        let e = SigningKey::from_file(&public, Some(&dir.join("no-agent.sock")))
            .expect_err("no such agent");
        assert!(matches!(e, KeyError::Agent { .. }), "{e}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
