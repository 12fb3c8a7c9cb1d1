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

use std::future::Future;

use metro_fabric::host::{RequestId, SessionWindow};
use parking_lot::Mutex;
use tokio::sync::Notify;

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
}
