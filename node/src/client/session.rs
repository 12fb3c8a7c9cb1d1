//! [`SessionSlot`]: one client's exactly-once session on one volume, for
//! the node's clients on tokio (the NBD backend, `MetroClient`, the clone
//! copier).
//!
//! Contract (the fabric side is `metro_fabric::host::SessionWindow` and
//! `storage/sessions.rs`):
//! - [`SessionSlot::begin`] hands out the next request id, registering a
//!   session first when none is held (one registration at a time) and
//!   waiting while the session's window is full. Every delivery of the
//!   request carries that id, so the volume applies it at most once.
//! - [`SessionSlot::finish`] frees the id once answered or given up on;
//!   callers finish every id they began.
//! - [`SessionSlot::expire`] drops a session the volume no longer knows
//!   (`SessionExpired`); the next `begin` registers a new one. A request
//!   refused that way was not applied by that delivery; it is sent again
//!   under the new session before it is answered, which keeps it
//!   linearizable (its stale copies under the old session stay refused).
//! - [`SessionSlot::run`] is the whole of it for one request: begin, send,
//!   finish, and on `SessionExpired` expire and send again, at most
//!   [`SESSION_RENEWALS_MAX`] times in a row.

use std::future::Future;

use metro_fabric::host::{RequestId, SessionWindow};
use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::limits::SESSION_RENEWALS_MAX;

/// How one delivery of a session request was answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sent<T> {
    /// Answered (applied, or refused for a reason of its own): `T`.
    Done(T),
    /// The volume no longer knows this session: not applied.
    Expired { session: u64 },
}

/// A client's session on one volume (see the module contract).
#[derive(Debug, Default)]
pub struct SessionSlot {
    window: Mutex<SessionWindow>,
    /// Woken when an id is freed or a session is registered.
    changed: Notify,
    /// Held while registering, so that concurrent requests share one.
    registering: tokio::sync::Mutex<()>,
}

impl SessionSlot {
    /// A slot holding no session yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The next request id; `register` opens a session (its id) when none
    /// is held. Waits while the window is full.
    pub async fn begin<E, F, Fut>(&self, register: F) -> Result<RequestId, E>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<u64, E>>,
    {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            // Registered for a wake-up before looking, so none is missed.
            changed.as_mut().enable();
            let held = {
                let mut window = self.window.lock();
                if let Some(id) = window.begin() {
                    return Ok(id);
                }
                window.session().is_some()
            };
            if held {
                changed.await;
                continue;
            }
            let _registering = self.registering.lock().await;
            if self.window.lock().session().is_some() {
                continue;
            }
            let session = register().await?;
            self.window.lock().renew(session);
            self.changed.notify_waiters();
        }
    }

    /// `id` is answered or given up on.
    pub fn finish(&self, id: RequestId) {
        self.window.lock().finish(id);
        self.changed.notify_waiters();
    }

    /// The volume no longer knows `session`: forget it.
    pub fn expire(&self, session: u64) {
        self.window.lock().expire(session);
        self.changed.notify_waiters();
    }

    /// Runs one request exactly once (see the module contract): `send`
    /// delivers it under an id (retrying as its caller does); `renewed_too_often`
    /// builds the error once the session expired
    /// [`SESSION_RENEWALS_MAX`] times in a row (the session, the count).
    pub async fn run<T, E, R, RFut, S, SFut>(
        &self,
        register: R,
        send: S,
        renewed_too_often: impl FnOnce(u64, u32) -> E,
    ) -> Result<T, E>
    where
        R: Fn() -> RFut,
        RFut: Future<Output = Result<u64, E>>,
        S: Fn(RequestId) -> SFut,
        SFut: Future<Output = Result<Sent<T>, E>>,
    {
        let mut renewals = 0;
        loop {
            let id = self.begin(&register).await?;
            let outcome = send(id).await;
            self.finish(id);
            match outcome? {
                Sent::Done(value) => return Ok(value),
                Sent::Expired { session } if renewals < SESSION_RENEWALS_MAX => {
                    tracing::debug!(session, "session expired: renewing");
                    self.expire(session);
                    renewals += 1;
                }
                Sent::Expired { session } => return Err(renewed_too_often(session, renewals)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    use metro_fabric::limits::SESSION_WINDOW_REQUESTS;

    use super::*;

    #[tokio::test]
    async fn concurrent_requests_share_one_registration_and_wait_for_the_window() {
        let slot = Arc::new(SessionSlot::new());
        let registrations = Arc::new(AtomicU64::new(0));
        let register = {
            let registrations = Arc::clone(&registrations);
            move || {
                let registrations = Arc::clone(&registrations);
                async move {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    Ok::<_, ()>(10 + registrations.fetch_add(1, Ordering::SeqCst))
                }
            }
        };
        let mut ids = Vec::new();
        for _ in 0..SESSION_WINDOW_REQUESTS {
            ids.push(slot.begin(register.clone()).await.unwrap());
        }
        assert_eq!(registrations.load(Ordering::SeqCst), 1);
        assert!(ids.iter().all(|id| id.session == 10));
        // The window is full: the next one waits until the oldest is freed.
        let waiter = {
            let slot = Arc::clone(&slot);
            let register = register.clone();
            tokio::spawn(async move { slot.begin(register).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "a full window makes begin wait");
        slot.finish(ids[0]);
        let next = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("freed in time")
            .unwrap()
            .unwrap();
        assert_eq!(next.request, SESSION_WINDOW_REQUESTS + 1);
        // An expired session is replaced by a new registration.
        slot.expire(10);
        let renewed = slot.begin(register).await.unwrap();
        assert_eq!((renewed.session, renewed.request), (11, 1));
    }

    /// `run` sends again under a new session while the volume says the
    /// session expired, up to the bound, and frees every id it began.
    #[tokio::test]
    async fn run_renews_an_expired_session_up_to_the_bound() {
        let slot = SessionSlot::new();
        let registrations = AtomicU64::new(0);
        let register =
            || async { Ok::<_, String>(registrations.fetch_add(1, Ordering::SeqCst) + 1) };
        let expiring = AtomicU64::new(2);
        let send = |id: RequestId| {
            let expire = expiring
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
            async move {
                match expire {
                    true => Ok(Sent::Expired {
                        session: id.session,
                    }),
                    false => Ok(Sent::Done(id.session)),
                }
            }
        };
        let too_often = |session, renewals| format!("{session} x{renewals}");
        assert_eq!(slot.run(register, send, too_often).await, Ok(3));
        assert_eq!(registrations.load(Ordering::SeqCst), 3);

        expiring.store(u64::MAX, Ordering::SeqCst);
        let failed = slot.run(register, send, too_often).await;
        // Session 3, still held, expires first; then each renewal expires.
        let last = 3 + u64::from(SESSION_RENEWALS_MAX);
        assert_eq!(failed, Err(format!("{last} x{SESSION_RENEWALS_MAX}")));
        // Every id was freed: a whole window can begin at once.
        expiring.store(0, Ordering::SeqCst);
        for _ in 0..SESSION_WINDOW_REQUESTS {
            let id = tokio::time::timeout(Duration::from_secs(5), slot.begin(register))
                .await
                .expect("no id left held");
            assert!(id.is_ok());
        }
    }
}
