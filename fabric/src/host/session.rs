//! [`SessionWindow`]: a client's side of a session (see
//! `storage/sessions.rs`): which session it holds, the next request number,
//! and the requests still unanswered.
//!
//! Contract:
//! - A request number is handed out once ([`SessionWindow::begin`]) and
//!   every delivery of that request (the first and each retry, through any
//!   node) carries it, so the state machine applies it at most once.
//! - A number is handed out only while the oldest unanswered request and
//!   it are less than [`SESSION_WINDOW_REQUESTS`] apart: a request the
//!   client still waits for is always inside the state machine's window.
//!   `begin` returns `None` otherwise; the caller waits for an answer
//!   ([`SessionWindow::finish`]) and asks again.
//! - [`SessionWindow::expire`] forgets a session the state machine no
//!   longer knows; the client registers a new one
//!   ([`SessionWindow::renew`]) whose numbers start again at 1. The outcome
//!   of the old session's unanswered requests stays unknown.
//!
//! The window does no I/O and never waits: callers on any runtime wrap it
//! (the node's NBD backend and `MetroClient` with a tokio `Notify`, the
//! simulator's clients with their own pacing).

use std::collections::BTreeSet;

use crate::limits::SESSION_WINDOW_REQUESTS;

/// A client's session bookkeeping (see the module contract).
#[derive(Debug, Default)]
pub struct SessionWindow {
    /// The session (its registering log index), once registered.
    session: Option<u64>,
    /// The next request number to hand out (from 1).
    next: u64,
    /// Handed out and not yet finished.
    unanswered: BTreeSet<u64>,
}

/// One request's identity within a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct RequestId {
    pub session: u64,
    pub request: u64,
}

impl SessionWindow {
    /// A window holding no session yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The session held, if any.
    pub fn session(&self) -> Option<u64> {
        self.session
    }

    /// Starts using session `session` (a fresh registration): numbering
    /// starts again at 1 and earlier unanswered requests are forgotten.
    pub fn renew(&mut self, session: u64) {
        assert!(session > 0, "session ids are log indexes, from 1");
        self.session = Some(session);
        self.next = 1;
        self.unanswered.clear();
    }

    /// Forgets `session` if it is the one held (the state machine said it
    /// expired).
    pub fn expire(&mut self, session: u64) {
        if self.session == Some(session) {
            self.session = None;
            self.unanswered.clear();
        }
    }

    /// The next request's identity, or `None` when there is no session or
    /// the window is full (see the module contract).
    pub fn begin(&mut self) -> Option<RequestId> {
        let session = self.session?;
        let oldest = self.unanswered.first().copied().unwrap_or(self.next);
        if self.next - oldest >= SESSION_WINDOW_REQUESTS {
            return None;
        }
        let request = self.next;
        self.next += 1;
        self.unanswered.insert(request);
        assert!(
            self.unanswered.len() as u64 <= SESSION_WINDOW_REQUESTS,
            "unanswered requests fit the window"
        );
        Some(RequestId { session, request })
    }

    /// `id` is answered (or given up on): it no longer holds the window.
    pub fn finish(&mut self, id: RequestId) {
        if self.session == Some(id.session) {
            self.unanswered.remove(&id.request);
        }
    }

    /// Requests handed out and not finished.
    pub fn unanswered(&self) -> usize {
        self.unanswered.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_stay_within_one_window_of_the_oldest_unanswered() {
        let mut window = SessionWindow::new();
        assert_eq!(window.begin(), None, "no session yet");
        window.renew(7);
        let first = window.begin().unwrap();
        assert_eq!(
            first,
            RequestId {
                session: 7,
                request: 1
            }
        );
        for _ in 1..SESSION_WINDOW_REQUESTS {
            let id = window.begin().unwrap();
            window.finish(id);
        }
        // Request 1 is still unanswered: number 65 would leave it behind.
        assert_eq!(window.begin(), None);
        window.finish(first);
        assert_eq!(window.begin().unwrap().request, SESSION_WINDOW_REQUESTS + 1);
    }

    #[test]
    fn an_expired_session_hands_out_nothing_until_renewed() {
        let mut window = SessionWindow::new();
        window.renew(3);
        let id = window.begin().unwrap();
        window.expire(2);
        assert_eq!(window.session(), Some(3), "another session's expiry");
        window.expire(3);
        assert_eq!(window.begin(), None);
        window.finish(id);
        window.renew(9);
        assert_eq!(
            window.begin(),
            Some(RequestId {
                session: 9,
                request: 1
            })
        );
        assert_eq!(window.unanswered(), 1);
    }
}
