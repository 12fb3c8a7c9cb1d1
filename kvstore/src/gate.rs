//! [`Gate`]: how a submission reaches the writer without blocking an async
//! caller, and [`Queued`], the future that waits for it.
//!
//! Contract:
//! - The writer's queue is a bounded channel of
//!   [`SUBMIT_QUEUE_MAX`]
//!   submissions. When it is full, a submission waits in the gate's *line*,
//!   an ordered overflow list of at most [`SUBMIT_OVERFLOW_MAX`]
//!   submissions, instead of blocking its caller's thread.
//! - Order: submissions reach the writer in the order their submit calls
//!   took the gate's lock, so batches one caller submits in sequence are
//!   written in that order. While anyone waits in the line, every later
//!   submission joins the line's back (none overtakes a waiting one), and a
//!   submission enters the channel only while the line is empty. Hence every
//!   submission in the channel is older than every one in the line, and the
//!   writer takes from the channel first and from the line's front when the
//!   channel is empty ([`Gate::take`]).
//! - A waiting submission is owned by the line, not by its caller: it moves
//!   on when the writer takes it, whether or not anyone polls its
//!   [`Queued`]; dropping a [`Queued`] gives up only the wait.
//! - [`Queued`] resolves once its submission has left the line (the writer
//!   took it), or at once when it never waited. Its waker is woken by the
//!   writer when it takes the submission, or when the writer goes away.
//! - A full line refuses ([`Entered::Full`]): the async submit completes the
//!   batch with [`StoreError::Overloaded`], the blocking one waits for the
//!   line's back to be taken and tries again. Callers that await their
//!   [`Queued`] before submitting again never fill it (fabric keeps a few
//!   submissions per volume unqueued at most; see its limits).
//! - When the writer is dropped the gate closes: waiting submissions are
//!   handed back (their completions run with [`StoreError::Closed`]) and
//!   every later submission is refused the same way.
//!
//! No thread and no clock: the line moves only when the writer takes from it,
//! so the simulator's stepped writer drives it deterministically.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use crossbeam_channel::{Sender, TrySendError};
use parking_lot::Mutex;

use crate::error::StoreError;
use crate::limits::{SUBMIT_OVERFLOW_MAX, SUBMIT_QUEUE_MAX};
use crate::shared::Shared;
use crate::writer::Submission;

/// One submission waiting in the line, with the waker of its [`Queued`].
struct Waiting {
    submission: Submission,
    waker: Option<Waker>,
}

/// The line's state. Submissions are numbered in the order they enter the
/// line: the one numbered `n` is at `waiting[n - taken]` until taken.
#[derive(Default)]
struct Line {
    waiting: VecDeque<Waiting>,
    /// Submissions that ever entered the line.
    entered: u64,
    /// Submissions that ever left it (taken by the writer or handed back).
    taken: u64,
    /// The writer is gone: nothing enters any more.
    closed: bool,
}

impl Line {
    fn check(&self) {
        assert_eq!(
            self.entered - self.taken,
            self.waiting.len() as u64,
            "the line holds every entered submission not yet taken"
        );
        assert!(
            self.waiting.len() <= SUBMIT_OVERFLOW_MAX,
            "the line stays within its bound"
        );
    }
}

/// The way into the writer's queue (see the module docs).
#[derive(Default)]
pub(crate) struct Gate {
    line: Mutex<Line>,
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let line = self.line.lock();
        f.debug_struct("Gate")
            .field("waiting", &line.waiting.len())
            .field("closed", &line.closed)
            .finish()
    }
}

/// What became of a submission offered to the gate.
pub(crate) enum Entered {
    /// In the writer's queue.
    Queued,
    /// Waiting in the line with this number.
    Waiting(u64),
    /// Refused: the line is full; its back has this number.
    Full(Submission, u64),
    /// Refused for good (the writer is gone).
    Refused(Submission, StoreError),
}

impl Gate {
    /// Offers `submission`: into the channel `tx` if nobody waits and it has
    /// room, else to the line's back if the line has room.
    pub(crate) fn enter(&self, tx: &Sender<Submission>, submission: Submission) -> Entered {
        let mut line = self.line.lock();
        line.check();
        if line.closed {
            return Entered::Refused(submission, StoreError::Closed);
        }
        let submission = if line.waiting.is_empty() {
            match tx.try_send(submission) {
                Ok(()) => return Entered::Queued,
                Err(TrySendError::Disconnected(s)) => {
                    return Entered::Refused(s, StoreError::Closed);
                }
                Err(TrySendError::Full(s)) => s,
            }
        } else {
            submission
        };
        if line.waiting.len() == SUBMIT_OVERFLOW_MAX {
            let back = line.entered - 1;
            return Entered::Full(submission, back);
        }
        let number = line.entered;
        line.entered += 1;
        line.waiting.push_back(Waiting {
            submission,
            waker: None,
        });
        line.check();
        Entered::Waiting(number)
    }

    /// The writer takes the line's front, if any, and wakes its waiter.
    /// Called only when the channel is empty (see the module docs).
    pub(crate) fn take(&self) -> Option<Submission> {
        let (submission, waker) = {
            let mut line = self.line.lock();
            let front = line.waiting.pop_front()?;
            line.taken += 1;
            if line.waiting.is_empty() && line.waiting.capacity() > SUBMIT_QUEUE_MAX {
                // A burst's worth of room is not kept once it has passed.
                line.waiting.shrink_to(SUBMIT_QUEUE_MAX);
            }
            line.check();
            (front.submission, front.waker)
        };
        if let Some(waker) = waker {
            waker.wake();
        }
        Some(submission)
    }

    /// Whether any submission waits in the line.
    pub(crate) fn has_waiting(&self) -> bool {
        !self.line.lock().waiting.is_empty()
    }

    /// Closes the gate (the writer is gone): hands back every waiting
    /// submission, in order, and wakes their waiters.
    pub(crate) fn close(&self) -> Vec<Submission> {
        let waiting = {
            let mut line = self.line.lock();
            line.closed = true;
            line.taken = line.entered;
            let waiting = std::mem::take(&mut line.waiting);
            line.check();
            waiting
        };
        let mut handed_back = Vec::with_capacity(waiting.len());
        for Waiting { submission, waker } in waiting {
            if let Some(waker) = waker {
                waker.wake();
            }
            handed_back.push(submission);
        }
        handed_back
    }

    /// Ready once submission `number` has left the line; else registers
    /// the waker to be woken when it does.
    fn poll_taken(&self, number: u64, cx: &mut Context<'_>) -> Poll<()> {
        let mut line = self.line.lock();
        assert!(
            number < line.entered,
            "only entered submissions are awaited"
        );
        if number < line.taken {
            return Poll::Ready(());
        }
        let at = (number - line.taken) as usize;
        assert!(at < line.waiting.len(), "a submission not taken is in line");
        let slot = &mut line.waiting[at].waker;
        if !slot.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            *slot = Some(cx.waker().clone());
        }
        Poll::Pending
    }
}

/// Resolves once a submission has reached the writer (see the module docs).
/// Cheap to clone; dropping it does not withdraw the submission.
#[derive(Clone, Debug)]
pub struct Queued {
    /// The store and the submission's number in its line; `None` when it
    /// never waited (or was refused and has completed).
    waiting: Option<(Arc<Shared>, u64)>,
}

impl Queued {
    pub(crate) fn done() -> Self {
        Queued { waiting: None }
    }

    pub(crate) fn waiting(shared: Arc<Shared>, number: u64) -> Self {
        Queued {
            waiting: Some((shared, number)),
        }
    }

    /// Whether the submission has reached the writer (the future is ready).
    pub fn is_queued(&self) -> bool {
        match &self.waiting {
            None => true,
            Some((shared, number)) => *number < shared.gate.line.lock().taken,
        }
    }

    /// Parks this thread until the submission has reached the writer (the
    /// blocking [`crate::Store::submit`]'s wait; never used by async code).
    pub(crate) fn wait_blocking(mut self) {
        let waker = Waker::from(Arc::new(ThreadWaker(std::thread::current())));
        let mut cx = Context::from_waker(&waker);
        while Pin::new(&mut self).poll(&mut cx).is_pending() {
            std::thread::park();
        }
    }
}

impl Future for Queued {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        match &self.waiting {
            None => Poll::Ready(()),
            Some((shared, number)) => shared.gate.poll_taken(*number, cx),
        }
    }
}

/// Wakes a thread parked in [`Queued::wait_blocking`].
struct ThreadWaker(std::thread::Thread);

impl std::task::Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}
