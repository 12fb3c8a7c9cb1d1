//! Submitting a batch to kvstore from async code: [`submit`] queues it and
//! returns a [`Durable`] future that resolves once the batch is durable
//! (its completion ran with the fdatasync's result). Runtime-agnostic: the
//! completion wakes the task from the writer's thread (or, under the
//! simulator, from the stepped writer), so no runtime type is needed.
//!
//! Never blocks: behind kvstore's full submission queue the batch waits in
//! kvstore's line (`Store::submit_async`), still in call order. A caller
//! that does not await the [`Durable`] awaits [`Durable::queued`] instead
//! before going on, so a full queue holds it back and kvstore's line stays
//! within its bound: each volume's tasks keep at most
//! [`UNQUEUED_SUBMITS_PER_VOLUME_MAX`](crate::limits::UNQUEUED_SUBMITS_PER_VOLUME_MAX)
//! submissions unqueued.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use metro_kvstore::{Queued, Store, StoreError, WriteBatch};
use parking_lot::Mutex;

#[derive(Default)]
struct Slot {
    result: Option<Result<u64, StoreError>>,
    waker: Option<Waker>,
}

/// Resolves to the batch's sequence number once it is durable.
#[derive(Clone)]
pub(crate) struct Durable {
    slot: Arc<Mutex<Slot>>,
    queued: Queued,
}

impl std::fmt::Debug for Durable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Durable(done: {})", self.is_done())
    }
}

impl Durable {
    /// Whether the completion has run (the future would be ready).
    pub(crate) fn is_done(&self) -> bool {
        let slot = self.slot.lock();
        slot.result.is_some()
    }

    /// Resolves once the batch has reached kvstore's writer (it no longer
    /// waits in line behind a full queue); the batch is written whether or
    /// not this is awaited.
    pub(crate) fn queued(&self) -> Queued {
        self.queued.clone()
    }
}

impl Future for Durable {
    type Output = Result<u64, StoreError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut slot = self.slot.lock();
        match slot.result.take() {
            Some(result) => Poll::Ready(result),
            None => {
                slot.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

/// Queues `batch`; the returned future resolves when it is durable.
pub(crate) fn submit(store: &Store, batch: WriteBatch) -> Durable {
    submit_then(store, batch, |_| {})
}

/// Like [`submit`], running `hook` with the result on the completing thread
/// before the future is woken (so state the hook updates is current when the
/// awaiting task resumes). The hook may run inside this call (a rejected
/// batch): callers must not hold locks the hook takes.
pub(crate) fn submit_then(
    store: &Store,
    batch: WriteBatch,
    hook: impl FnOnce(&Result<u64, StoreError>) + Send + 'static,
) -> Durable {
    let slot: Arc<Mutex<Slot>> = Arc::default();
    let filler = Arc::clone(&slot);
    let queued = store.submit_async(
        batch,
        Box::new(move |result| {
            hook(&result);
            let waker = {
                let mut slot = filler.lock();
                slot.result = Some(result);
                slot.waker.take()
            };
            if let Some(waker) = waker {
                waker.wake();
            }
        }),
    );
    Durable { slot, queued }
}
