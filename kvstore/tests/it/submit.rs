//! Async submission behind a full queue (`gate.rs`): it waits without
//! blocking the thread, in order, and nothing overtakes it.
//!
//! Each test runs its submitter on a thread of its own and gives it a
//! deadline: a submit that blocked its thread (the old behaviour) fails the
//! test instead of hanging it.
#![allow(clippy::disallowed_methods)] // a thread per submitter, to detect a blocked one

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::task::{Context, Wake, Waker};
use std::time::Duration;

use metro_kvstore::{
    Completion, FaultyDisk, Namespace, Options, Queued, SUBMIT_QUEUE_MAX, Store, StoreError,
    WriteBatch, Writer,
};

const NS: Namespace = Namespace::new(3, 1);
/// How long a submitter may take before it counts as blocked.
const DEADLINE: Duration = Duration::from_secs(20);

/// Counts its wakes.
#[derive(Default)]
struct CountingWaker(AtomicUsize);

impl Wake for CountingWaker {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// The completions seen so far, in the order they ran: (submission, result).
type Log = Arc<Mutex<Vec<(usize, Result<u64, StoreError>)>>>;

fn batch(i: usize) -> WriteBatch {
    let mut b = WriteBatch::new();
    b.put(NS, i as u64, (i as u64).to_le_bytes().to_vec());
    b
}

fn record(log: &Log, i: usize) -> Completion {
    let log = Arc::clone(log);
    Box::new(move |result| log.lock().unwrap().push((i, result)))
}

fn open() -> (Store, Writer) {
    Store::open(Arc::new(FaultyDisk::new(5)), Options::default()).unwrap()
}

/// Runs `f` on a thread of its own; panics if it does not finish in time.
fn within_deadline<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || drop(tx.send(f())));
    rx.recv_timeout(DEADLINE)
        .unwrap_or_else(|_| panic!("{what} did not finish: a submit blocked its thread"))
}

/// Submits `0..n` asynchronously while the writer is not driven.
fn submit_undriven(store: &Store, log: &Log, n: usize) -> Vec<Queued> {
    let (store, log) = (store.clone(), Arc::clone(log));
    within_deadline("submitting past a full queue", move || {
        (0..n)
            .map(|i| store.submit_async(batch(i), record(&log, i)))
            .collect()
    })
}

/// Checks that submissions `0..n` completed in order with consecutive
/// sequence numbers.
fn check_in_order(log: &Log, n: usize) {
    let log = log.lock().unwrap();
    assert_eq!(log.len(), n, "every submission completed");
    let first = *log[0].1.as_ref().expect("written");
    for (at, (i, result)) in log.iter().enumerate() {
        assert_eq!(*i, at, "completions run in submission order");
        let seq = *result.as_ref().expect("written");
        assert_eq!(
            seq,
            first + at as u64,
            "sequence numbers follow submission order"
        );
    }
}

#[test]
fn an_async_submission_behind_a_full_queue_waits_without_blocking_then_lands_in_order() {
    const EXTRA: usize = 5;
    let (store, mut writer) = open();
    let log: Log = Arc::default();
    let waker = Arc::new(CountingWaker::default());
    let (queued, ready) = {
        let (store, log, waker) = (store.clone(), Arc::clone(&log), Arc::clone(&waker));
        // The writer is not driven: the queue fills and stays full.
        within_deadline("submitting past a full queue", move || {
            let waker = Waker::from(waker);
            let mut cx = Context::from_waker(&waker);
            let mut queued: Vec<Queued> = (0..SUBMIT_QUEUE_MAX + EXTRA)
                .map(|i| store.submit_async(batch(i), record(&log, i)))
                .collect();
            let ready: Vec<bool> = queued
                .iter_mut()
                .map(|q| Pin::new(q).poll(&mut cx).is_ready())
                .collect();
            (queued, ready)
        })
    };
    assert!(
        ready[..SUBMIT_QUEUE_MAX].iter().all(|r| *r),
        "the queue took these"
    );
    assert!(
        ready[SUBMIT_QUEUE_MAX..].iter().all(|r| !*r),
        "these wait: Pending"
    );
    assert!(
        log.lock().unwrap().is_empty(),
        "nothing is written undriven"
    );
    assert_eq!(waker.0.load(Ordering::SeqCst), 0);
    // The first group empties part of the queue only: those in line still
    // wait (they go after everything queued before them).
    assert!(writer.step() > 0);
    assert!(queued[SUBMIT_QUEUE_MAX..].iter().all(|q| !q.is_queued()));
    while writer.step() > 0 {}
    assert_eq!(
        waker.0.load(Ordering::SeqCst),
        EXTRA,
        "each waiter is woken once"
    );
    assert!(queued.iter().all(Queued::is_queued));
    check_in_order(&log, SUBMIT_QUEUE_MAX + EXTRA);
}

#[test]
fn a_burst_past_the_queue_from_one_task_is_written_in_submission_order() {
    const BURST: usize = 3 * SUBMIT_QUEUE_MAX + 7;
    let (store, mut writer) = open();
    let log: Log = Arc::default();
    let task_log = Arc::clone(&log);
    // One task submitting a burst, awaiting each place in the queue, and
    // the writer stepped between polls on the same thread (the simulator's
    // way): a blocking submit would deadlock here.
    let (pending_polls, wakes) = within_deadline("a burst of async submissions", move || {
        let mut task = Box::pin(async move {
            for i in 0..BURST {
                store.submit_async(batch(i), record(&task_log, i)).await;
            }
        });
        let counter = Arc::new(CountingWaker::default());
        let waker = Waker::from(Arc::clone(&counter));
        let mut cx = Context::from_waker(&waker);
        let mut pending_polls = 0;
        while task.as_mut().poll(&mut cx).is_pending() {
            pending_polls += 1;
            writer.step();
        }
        while writer.step() > 0 {}
        (pending_polls, counter.0.load(Ordering::SeqCst))
    });
    assert!(pending_polls > 0, "the task waited behind the full queue");
    assert!(wakes > 0, "the writer woke it as it took its batches");
    check_in_order(&log, BURST);
}

#[test]
fn dropping_the_writer_refuses_the_batches_in_line() {
    let (store, writer) = open();
    let log: Log = Arc::default();
    let queued = submit_undriven(&store, &log, SUBMIT_QUEUE_MAX + 2);
    assert!(!queued[SUBMIT_QUEUE_MAX].is_queued());
    drop(writer);
    let log = log.lock().unwrap();
    let refused: Vec<usize> = log.iter().map(|(i, _)| *i).collect();
    assert_eq!(refused, [SUBMIT_QUEUE_MAX, SUBMIT_QUEUE_MAX + 1]);
    assert!(
        log.iter()
            .all(|(_, r)| matches!(r, Err(StoreError::Closed)))
    );
    assert!(queued.iter().all(Queued::is_queued), "no waiter is left");
    drop(log);
    let after = Arc::new(Mutex::new(None));
    let slot = Arc::clone(&after);
    let late = store.submit_async(batch(0), Box::new(move |r| *slot.lock().unwrap() = Some(r)));
    assert!(late.is_queued());
    assert!(matches!(
        *after.lock().unwrap(),
        Some(Err(StoreError::Closed))
    ));
}

#[test]
fn a_blocking_submit_queues_behind_the_async_ones_waiting() {
    let (store, mut writer) = open();
    let log: Log = Arc::default();
    let queued = submit_undriven(&store, &log, SUBMIT_QUEUE_MAX + 3);
    let (store2, log2) = (store.clone(), Arc::clone(&log));
    let blocked = std::thread::spawn(move || {
        let i = SUBMIT_QUEUE_MAX + 3;
        store2.submit(batch(i), record(&log2, i));
    });
    // Drive the writer until the blocking submitter got through.
    within_deadline("the writer draining the line", move || {
        while !blocked.is_finished() || writer.step() > 0 {
            writer.step();
            std::thread::yield_now();
        }
        blocked.join().unwrap();
    });
    assert!(queued.iter().all(Queued::is_queued));
    check_in_order(&log, SUBMIT_QUEUE_MAX + 4);
}
