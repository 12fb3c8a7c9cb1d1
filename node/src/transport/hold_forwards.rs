//! [`HoldForwards`]: a fault for tests, never set in production: the node
//! holds every block command (write, trim, write-zeroes) another *node*
//! forwards to it (a client's write relayed towards its leader) for a fixed
//! time before serving it. Other commands (a session's registration) and
//! requests straight from clients are served at once.
//!
//! It reproduces the late delivery exactly-once sessions exist for: the
//! client gives up on the relaying node, retries directly at the leader,
//! is acknowledged, overwrites the block; then the held copy is served.
//! Enabled only by the environment variable [`HOLD_FORWARDED_ENV`]
//! (milliseconds, at most [`HOLD_FORWARDED_MAX_MS`](crate::limits::HOLD_FORWARDED_MAX_MS)),
//! which the node reads at start and logs loudly. Its companion
//! [`IGNORE_REQUEST_NUMBERS_ENV`] plants the bug sessions prevent (the
//! state machines apply duplicates again), so that a test shows the late
//! delivery really overwrites a newer write without sessions.

use std::sync::Arc;
use std::time::Duration;

use metro_fabric::env::{Lane, NodeId, RequestHandler};
use metro_fabric::wire::{ClientRequest, Message, decode};
use openraft_rt_tokio::TokioRuntime;

use crate::limits::HOLD_FORWARDED_MAX_MS;
use crate::pki::is_client_id;

/// The environment variable that enables the fault (milliseconds).
pub const HOLD_FORWARDED_ENV: &str = "METRO_TEST_HOLD_FORWARDED_MS";

/// The environment variable (`1`) that plants the no-dedup bug.
pub const IGNORE_REQUEST_NUMBERS_ENV: &str = "METRO_TEST_IGNORE_REQUEST_NUMBERS";

/// Whether the environment plants the no-dedup bug.
pub fn ignore_request_numbers_from_env() -> bool {
    std::env::var(IGNORE_REQUEST_NUMBERS_ENV).is_ok_and(|v| v.trim() == "1")
}

/// A handler that holds forwarded volume commands (see the module docs).
#[derive(Debug)]
pub struct HoldForwards<H> {
    inner: Arc<H>,
    hold: Duration,
}

impl<H> HoldForwards<H> {
    /// Wraps `inner`, holding forwarded commands for `hold`.
    pub fn new(inner: Arc<H>, hold: Duration) -> Self {
        Self { inner, hold }
    }
}

/// The hold the environment asks for: `None` when unset; an error for a
/// value that is not a number of milliseconds up to the limit.
pub fn hold_from_env() -> Result<Option<Duration>, String> {
    millis_from_env(HOLD_FORWARDED_ENV)
}

/// The environment variable that makes repairs run on this node wait
/// between their learner's catch-up and its promotion (milliseconds, at
/// most [`HOLD_FORWARDED_MAX_MS`]): `HostConfig::promotion_hold_ms`.
pub const HOLD_PROMOTION_ENV: &str = "METRO_TEST_HOLD_PROMOTION_MS";

/// The promotion hold the environment asks for (see [`HOLD_PROMOTION_ENV`]).
pub fn promotion_hold_from_env() -> Result<Option<Duration>, String> {
    millis_from_env(HOLD_PROMOTION_ENV)
}

fn millis_from_env(name: &str) -> Result<Option<Duration>, String> {
    let Ok(text) = std::env::var(name) else {
        return Ok(None);
    };
    match text.trim().parse::<u64>() {
        Ok(ms) if ms <= HOLD_FORWARDED_MAX_MS => Ok(Some(Duration::from_millis(ms))),
        _ => Err(format!(
            "{name}={text:?}: expected milliseconds, at most {HOLD_FORWARDED_MAX_MS}"
        )),
    }
}

/// Whether `request` is a block command.
fn is_block_command(request: &[u8]) -> bool {
    matches!(
        decode::<TokioRuntime>(request),
        Ok(frame) if matches!(
            &frame.message,
            Message::Client(ClientRequest::Command(command)) if command.block_range().is_some()
        )
    )
}

impl<H: RequestHandler> RequestHandler for HoldForwards<H> {
    async fn handle(&self, from: NodeId, lane: Lane, request: Vec<u8>) -> Result<Vec<u8>, String> {
        if lane != Lane::Client || is_client_id(from) || !is_block_command(&request) {
            return self.inner.handle(from, lane, request).await;
        }
        tracing::warn!(from, hold = ?self.hold, "test fault: holding a forwarded command");
        // On a task of its own, like a message delayed in the network: the
        // sender giving up (which cancels this handler) does not stop it.
        let (inner, hold) = (Arc::clone(&self.inner), self.hold);
        let delivery = tokio::spawn(async move {
            tokio::time::sleep(hold).await;
            inner.handle(from, lane, request).await
        });
        delivery
            .await
            .map_err(|err| format!("held command's task: {err}"))?
    }
}
