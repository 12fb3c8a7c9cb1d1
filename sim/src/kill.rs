//! [`KillSwitch`]: ends every task of one node incarnation at once.
//!
//! A crashed process stops mid-step: the tasks a simulated node runs for
//! itself (its kvstore writer, its request handlers) wrap their work in
//! [`KillSwitch::guard`], which checks the switch before every poll of the
//! work. After [`KillSwitch::kill`] not another line of their work runs;
//! each task ends the next time it is woken (the switch keeps no list of
//! waiters, so nothing grows with the number of tasks).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

/// Shared by every task of one node incarnation.
#[derive(Clone, Debug, Default)]
pub struct KillSwitch {
    killed: Arc<AtomicBool>,
}

impl KillSwitch {
    /// A switch not yet thrown.
    pub fn new() -> Self {
        Self::default()
    }

    /// Ends every task guarded by this switch.
    pub fn kill(&self) {
        self.killed.store(true, Ordering::SeqCst);
    }

    /// Whether [`KillSwitch::kill`] ran.
    pub fn is_killed(&self) -> bool {
        self.killed.load(Ordering::SeqCst)
    }

    /// Runs `work` until it finishes (`Some`) or the switch is found thrown
    /// (`None`).
    pub async fn guard<F: Future>(&self, work: F) -> Option<F::Output> {
        Guarded {
            switch: self,
            work: std::pin::pin!(work),
        }
        .await
    }
}

struct Guarded<'a, F> {
    switch: &'a KillSwitch,
    work: Pin<&'a mut F>,
}

impl<F: Future> Future for Guarded<'_, F> {
    type Output = Option<F::Output>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if self.switch.is_killed() {
            return Poll::Ready(None);
        }
        self.work.as_mut().poll(cx).map(Some)
    }
}
