//! The demo's injected WAN delay, timed finely: [`DelayLine::sleep`] resolves
//! a little after its deadline and never before. One thread per line,
//! started on first use and stopped when the line is dropped, waits on a
//! condition variable until the earliest deadline. Production clusters set
//! no delay and never start the thread.

use std::collections::BTreeMap;
use std::sync::{Arc, Condvar, PoisonError};
use std::time::{Duration, Instant};

/// Sleeps for the injected delays with sub-millisecond precision: one
/// thread (started on first use) waits on a condition variable until the
/// earliest deadline and wakes its sleepers. tokio's timer would round each
/// sleep up to the next millisecond tick (a 2 ms delay took about 3 ms, a
/// 4 ms round trip 6.4 ms).
#[derive(Debug, Default)]
pub(crate) struct DelayLine {
    state: Arc<DelayState>,
}

#[derive(Debug, Default)]
struct DelayState {
    queue: std::sync::Mutex<DelayQueue>,
    wake: Condvar,
}

#[derive(Debug, Default)]
struct DelayQueue {
    /// Sleepers by (deadline, arrival).
    timers: BTreeMap<(Instant, u64), tokio::sync::oneshot::Sender<()>>,
    next: u64,
    started: bool,
    closed: bool,
}

impl DelayLine {
    /// Resolves `delay` from now (a little after; never before).
    pub(crate) async fn sleep(&self, delay: Duration) {
        let deadline = Instant::now() + delay;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let spawned = {
            let mut queue = self
                .state
                .queue
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let id = queue.next;
            queue.next += 1;
            let earliest = queue
                .timers
                .keys()
                .next()
                .is_none_or(|(t, _)| deadline < *t);
            queue.timers.insert((deadline, id), tx);
            if earliest {
                self.state.wake.notify_one();
            }
            if queue.started {
                Ok(())
            } else {
                queue.started = true;
                let state = Arc::clone(&self.state);
                std::thread::Builder::new()
                    .name("metro-quic-delay".into())
                    .spawn(move || state.run())
                    .map(drop)
            }
        };
        if spawned.is_err() || rx.await.is_err() {
            // No timer thread: fall back on tokio's (coarser) timer.
            tokio::time::sleep_until(deadline.into()).await;
        }
    }
}

impl Drop for DelayLine {
    fn drop(&mut self) {
        let mut queue = self
            .state
            .queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        queue.closed = true;
        queue.timers.clear();
        self.state.wake.notify_one();
    }
}

impl DelayState {
    fn run(&self) {
        let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        while !queue.closed {
            let now = Instant::now();
            while let Some(entry) = queue.timers.first_entry() {
                if entry.key().0 > now {
                    break;
                }
                let _ = entry.remove().send(());
            }
            queue = match queue.timers.keys().next().map(|(t, _)| *t - now) {
                Some(wait) => {
                    self.wake
                        .wait_timeout(queue, wait)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
                None => self
                    .wake
                    .wait(queue)
                    .unwrap_or_else(PoisonError::into_inner),
            };
        }
    }
}
