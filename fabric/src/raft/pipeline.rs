//! [`AppendPipeline`]: the leader side of a pipelined `stream_append` to one
//! peer for one volume group.
//!
//! Model: openraft hands the replication task a stream of AppendEntries
//! requests (each starting where the previous one ended) and expects a
//! stream of results in the same order. Sending one request and waiting for
//! its answer before the next (openraft's default) costs a full round trip
//! plus the follower's fsync per request, and an entry-less request carrying
//! only the commit index delays the next write by as much. Here up to
//! [`APPEND_WINDOW_MAX`] requests are in flight at once, each its own
//! transport call; their results are yielded strictly in request order.
//!
//! Contract:
//! - Results come out in input order; the stream ends after the first
//!   result that stops replication (a transport error, a conflict, a higher
//!   vote, or a partial success short of the request's last entry), like
//!   openraft's sequential default. A conflict on any request but the
//!   stream's first is reported as a failed call: its predecessor was
//!   acknowledged up to its `prev_log_id`, so it was only seen out of order,
//!   and openraft would take a conflict there for the follower losing
//!   acknowledged entries. Requests still in flight then are
//!   dropped (their calls cancelled): openraft starts a new stream from what
//!   was acknowledged.
//! - The follower may receive the requests out of order (the transport
//!   gives no order between calls); [`super::router::GroupRouter`] restores
//!   it per (volume, leader) (with a bounded wait). Out-of-order delivery is
//!   safe in any case: Raft rejects an append whose previous entry is
//!   missing (answered here as a failed call, see above, and openraft
//!   resends), and entries of the same leader never truncate one another.
//! - Polling is deterministic: the input is polled (up to the window) before
//!   the in-flight calls, in a fixed order.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::stream::{FuturesOrdered, Stream, StreamExt};
use openraft::AsyncRuntime;
use openraft::error::RPCError;
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, StreamAppendResult};

use super::types::{LogId, TypeConfig};
use crate::limits::APPEND_WINDOW_MAX;

/// One in-flight call: the response, or why there is none.
pub type AppendCall<RT> = Pin<
    Box<
        dyn Future<Output = Result<AppendEntriesResponse<TypeConfig<RT>>, RPCError<TypeConfig<RT>>>>
            + Send,
    >,
>;

/// One item of the result stream.
pub type AppendItem<RT> = Result<StreamAppendResult<TypeConfig<RT>>, RPCError<TypeConfig<RT>>>;

/// The first and last log id of one request (`last == prev` if empty).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Range {
    prev: Option<LogId>,
    last: Option<LogId>,
}

impl Range {
    fn of<RT: AsyncRuntime>(rpc: &AppendEntriesRequest<TypeConfig<RT>>) -> Self {
        let last = rpc.entries.last().map(|e| e.log_id).or(rpc.prev_log_id);
        let first = rpc.prev_log_id.map_or(0, |p| p.index + 1);
        for (expected, entry) in (first..).zip(&rpc.entries) {
            assert_eq!(
                entry.log_id.index, expected,
                "a request's entries follow its prev log id"
            );
        }
        Self {
            prev: rpc.prev_log_id,
            last,
        }
    }
}

/// The result stream of one pipelined `stream_append`.
pub struct AppendPipeline<RT: AsyncRuntime, S, F> {
    /// The requests; `None` once exhausted.
    input: Option<S>,
    /// Starts the call of one request.
    send: F,
    /// The calls in flight, in request order.
    in_flight: FuturesOrdered<AppendCall<RT>>,
    /// The ranges of the calls in flight, in the same order.
    ranges: VecDeque<Range>,
    /// Set once a result ended the stream.
    done: bool,
    /// Whether a result was yielded yet.
    yielded: bool,
}

impl<RT: AsyncRuntime, S, F> std::fmt::Debug for AppendPipeline<RT, S, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppendPipeline")
            .field("in_flight", &self.in_flight.len())
            .field("ranges", &self.ranges)
            .field("input_open", &self.input.is_some())
            .field("done", &self.done)
            .finish()
    }
}

impl<RT, S, F> AppendPipeline<RT, S, F>
where
    RT: AsyncRuntime,
    S: Stream<Item = AppendEntriesRequest<TypeConfig<RT>>> + Unpin,
    F: FnMut(AppendEntriesRequest<TypeConfig<RT>>) -> AppendCall<RT>,
{
    /// Sends the requests of `input` with `send`, at most
    /// [`APPEND_WINDOW_MAX`] at a time.
    pub fn new(input: S, send: F) -> Self {
        Self {
            input: Some(input),
            send,
            in_flight: FuturesOrdered::new(),
            ranges: VecDeque::new(),
            done: false,
            yielded: false,
        }
    }

    /// Starts calls for the requests the input has ready, up to the window.
    fn fill(&mut self, cx: &mut Context<'_>) {
        while self.in_flight.len() < APPEND_WINDOW_MAX {
            let Some(input) = self.input.as_mut() else {
                return;
            };
            match input.poll_next_unpin(cx) {
                Poll::Ready(Some(rpc)) => {
                    self.ranges.push_back(Range::of::<RT>(&rpc));
                    let call = (self.send)(rpc);
                    self.in_flight.push_back(call);
                    assert!(
                        self.in_flight.len() <= APPEND_WINDOW_MAX,
                        "the append window stays bounded"
                    );
                    assert_eq!(
                        self.ranges.len(),
                        self.in_flight.len(),
                        "a range per call in flight"
                    );
                }
                Poll::Ready(None) => self.input = None,
                Poll::Pending => return,
            }
        }
    }
}

/// What one response means to openraft, and whether the stream goes on.
fn settle<RT: AsyncRuntime>(
    range: Range,
    first: bool,
    result: Result<AppendEntriesResponse<TypeConfig<RT>>, RPCError<TypeConfig<RT>>>,
) -> (AppendItem<RT>, bool) {
    match result {
        Ok(AppendEntriesResponse::PartialSuccess(matched)) => {
            // Short of the request's end: the rest must be resent.
            (Ok(Ok(matched)), matched == range.last)
        }
        Ok(AppendEntriesResponse::Conflict) if !first || range.prev.is_none() => {
            // Not the first request of the stream: the one before it was
            // acknowledged up to this one's `prev_log_id`, so the follower
            // has it and only saw this request too early (out of order).
            // Reported as a conflict, openraft would take it for the
            // follower losing acknowledged entries (log reversion, a
            // panic); as a failed call it resends from what was
            // acknowledged. (A conflict before the first entry cannot
            // happen at all; openraft's conversion would panic on it.)
            let err = openraft::error::NetworkError::new(&std::io::Error::other(
                "append seen out of order by the follower",
            ));
            (Err(RPCError::Network(err)), false)
        }
        Ok(response) => {
            let result = response.into_stream_result(range.prev, range.last);
            let go_on = result.is_ok();
            (Ok(result), go_on)
        }
        Err(err) => (Err(err), false),
    }
}

impl<RT, S, F> Stream for AppendPipeline<RT, S, F>
where
    RT: AsyncRuntime,
    S: Stream<Item = AppendEntriesRequest<TypeConfig<RT>>> + Unpin,
    F: FnMut(AppendEntriesRequest<TypeConfig<RT>>) -> AppendCall<RT> + Unpin,
{
    type Item = AppendItem<RT>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        this.fill(cx);
        match this.in_flight.poll_next_unpin(cx) {
            Poll::Ready(Some(result)) => {
                let range = this.ranges.pop_front();
                assert!(range.is_some(), "a range per call in flight");
                let range = range.unwrap_or(Range {
                    prev: None,
                    last: None,
                });
                let (item, go_on) = settle::<RT>(range, !this.yielded, result);
                this.yielded = true;
                if !go_on {
                    this.done = true;
                    this.input = None;
                    this.in_flight = FuturesOrdered::new();
                    this.ranges.clear();
                }
                Poll::Ready(Some(item))
            }
            // Nothing in flight: wait for input (its waker is registered),
            // or end once it is exhausted.
            Poll::Ready(None) if this.input.is_none() => Poll::Ready(None),
            Poll::Ready(None) | Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use futures_util::stream;
    use openraft::impls::leader_id_adv;
    use openraft_rt_tokio::TokioRuntime;

    use super::*;
    use crate::raft::types::{Entry, EntryPayload, Vote};

    type Rt = TokioRuntime;
    type Request = AppendEntriesRequest<TypeConfig<Rt>>;

    fn log_id(index: u64) -> LogId {
        LogId::new(
            leader_id_adv::LeaderId {
                term: 1,
                node_id: 1,
            },
            index,
        )
    }

    fn request(prev: u64, last: u64) -> Request {
        let entries = (prev + 1..=last)
            .map(|i| Entry {
                log_id: log_id(i),
                payload: EntryPayload::Blank,
            })
            .collect();
        AppendEntriesRequest {
            vote: Vote::new_committed(1, 1),
            prev_log_id: Some(log_id(prev)),
            leader_commit: None,
            entries,
        }
    }

    /// Answers are released in reverse order of the requests; results still
    /// come out in request order, with up to the window in flight at once.
    #[tokio::test]
    async fn results_come_out_in_request_order_with_a_full_window() {
        let requests: Vec<Request> = (0..20).map(|i| request(i * 2, i * 2 + 2)).collect();
        let started = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&started);
        let gates: Vec<_> = (0..20)
            .map(|_| tokio::sync::oneshot::channel::<()>())
            .collect();
        let (senders, receivers): (Vec<_>, Vec<_>) = gates.into_iter().unzip();
        let mut receivers: VecDeque<_> = receivers.into();
        let send = move |rpc: Request| -> AppendCall<Rt> {
            log.lock().unwrap().push(rpc.prev_log_id.map(|l| l.index));
            let gate = receivers.pop_front().expect("a gate per request");
            Box::pin(async move {
                let _ = gate.await;
                Ok(AppendEntriesResponse::Success)
            })
        };
        let mut pipeline = AppendPipeline::<Rt, _, _>::new(stream::iter(requests), send);
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(Pin::new(&mut pipeline).poll_next(&mut cx).is_pending());
        assert_eq!(started.lock().unwrap().len(), APPEND_WINDOW_MAX);
        let mut senders: Vec<_> = senders.into_iter().map(Some).collect();
        for i in (0..APPEND_WINDOW_MAX).rev() {
            let _ = senders[i].take().map(|s| s.send(()));
        }
        for s in senders.iter_mut() {
            let _ = s.take().map(|s| s.send(()));
        }
        let results: Vec<_> = pipeline.collect().await;
        let matched: Vec<_> = results
            .into_iter()
            .map(|r| r.expect("call ok").expect("append ok").map(|l| l.index))
            .collect();
        let expected: Vec<_> = (0..20).map(|i| Some(i * 2 + 2)).collect();
        assert_eq!(matched, expected);
    }

    fn conflict_at(at: u64) -> impl FnMut(Request) -> AppendCall<Rt> {
        move |rpc: Request| -> AppendCall<Rt> {
            let prev = rpc.prev_log_id.map(|l| l.index);
            Box::pin(async move {
                Ok(if prev == Some(at) {
                    AppendEntriesResponse::Conflict
                } else {
                    AppendEntriesResponse::Success
                })
            })
        }
    }

    /// A conflict on the stream's first request is a conflict; on a later
    /// one (seen out of order by the follower) a failed call. Either ends
    /// the stream after its result.
    #[tokio::test]
    async fn the_stream_ends_at_the_first_conflict() {
        let requests = |from: u64| {
            (from..from + 6)
                .map(|i| request(i, i + 1))
                .collect::<Vec<_>>()
        };
        let results: Vec<_> =
            AppendPipeline::<Rt, _, _>::new(stream::iter(requests(0)), conflict_at(2))
                .collect()
                .await;
        assert_eq!(results.len(), 3);
        assert!(matches!(results[2], Err(RPCError::Network(_))));
        let results: Vec<_> =
            AppendPipeline::<Rt, _, _>::new(stream::iter(requests(2)), conflict_at(2))
                .collect()
                .await;
        assert_eq!(results.len(), 1);
        assert!(matches!(
            results[0],
            Ok(Err(openraft::raft::StreamAppendError::Conflict(id))) if id.index == 2
        ));
    }
}
