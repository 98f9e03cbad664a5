//! The browser harness (`skygit_harness::browser`) with this build's
//! `skygit` binary.

#![allow(dead_code)]

use std::path::Path;

use fantoccini::Client;
pub use skygit_harness::browser::*;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_skygit"))
}

type Body<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<()>> + 'a>>;

/// A room of ana and bo with `sessions` browsers around `body`; fails the
/// test with what went wrong.
pub async fn with_room_and_browsers<F>(name: &str, sessions: usize, body: F)
where
    F: for<'a> FnOnce(&'a mut Room, &'a [Client]) -> Body<'a>,
{
    with_room(&["ana", "bo"], &[], name, sessions, body).await
}

/// [`with_room_and_browsers`] with a room of `users`, their nodes started
/// with `extra` arguments.
pub async fn with_room<F>(users: &[&str], extra: &[&str], name: &str, sessions: usize, body: F)
where
    F: for<'a> FnOnce(&'a mut Room, &'a [Client]) -> Body<'a>,
{
    if let Err(e) = run_room(bin(), users, extra, name, sessions, body).await {
        panic!("{name}: {e:#}");
    }
}
