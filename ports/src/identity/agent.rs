//! Signing through a running ssh-agent: the agent signs the SSH signature's
//! signed-data blob (as `ssh-keygen -Y sign` asks it to) and this side wraps
//! the answer into the SSH signature format. One short connection per
//! request, with timeouts, so a stuck agent cannot hold a node forever.

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use ssh_agent_client_rs::{Client, Identity};
use ssh_key::{HashAlg, PublicKey, SshSig};

use super::KeyError;
use crate::members::SIGNATURE_NAMESPACE;

/// How long one request to the agent may take.
const AGENT_TIMEOUT: Duration = Duration::from_secs(5);

fn failed(socket: &Path, reason: impl std::fmt::Display) -> KeyError {
    KeyError::Agent {
        socket: socket.display().to_string(),
        reason: reason.to_string(),
    }
}

fn connect(socket: &Path) -> Result<Client, KeyError> {
    let stream = UnixStream::connect(socket).map_err(|e| failed(socket, e))?;
    stream
        .set_read_timeout(Some(AGENT_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(AGENT_TIMEOUT)))
        .map_err(|e| failed(socket, e))?;
    Ok(Client::with_read_write(Box::new(stream)))
}

/// The plain public keys the agent holds (certificates are left out).
pub(super) fn identities(socket: &Path) -> Result<Vec<PublicKey>, KeyError> {
    let listed = connect(socket)?
        .list_all_identities()
        .map_err(|e| failed(socket, e))?;
    Ok(listed
        .into_iter()
        .filter_map(|i| match i {
            Identity::PublicKey(k) => Some(k.into_owned()),
            Identity::Certificate(_) => None,
        })
        .collect())
}

/// An SSH signature of `msg` by the agent's key `public`.
pub(super) fn sign(socket: &Path, public: &PublicKey, msg: &[u8]) -> Result<SshSig, KeyError> {
    let data = SshSig::signed_data(SIGNATURE_NAMESPACE, HashAlg::Sha512, msg)
        .map_err(|e| KeyError::Sign(e.to_string()))?;
    let signature = connect(socket)?
        .sign(public, &data)
        .map_err(|e| failed(socket, e))?;
    SshSig::new(
        public.key_data().clone(),
        SIGNATURE_NAMESPACE,
        HashAlg::Sha512,
        signature,
    )
    .map_err(|e| KeyError::Sign(e.to_string()))
}
