//! [`AppendOrder`]: the follower side of pipelined AppendEntries — hands a
//! leader's requests to the group in the order the leader sent them.
//!
//! Model: a leader keeps several AppendEntries in flight to each follower
//! ([`super::pipeline`]), each its own transport call, and the transport may
//! deliver (and the node may serve) them in any order. Each request of one
//! leader starts where the previous one ended (`prev_log_id` = the previous
//! request's last log id), so the order is in the requests themselves: per
//! (volume, leader node) the follower remembers the vote and the last log id
//! of the request it handed to the group last (the *cursor*). A request from
//! the same vote whose `prev_log_id` is beyond the cursor has a predecessor
//! still on its way: it waits until the cursor reaches its `prev_log_id`, at
//! most [`APPEND_ORDER_WAIT_MS`]. Every other request goes at once: the next
//! in order, a resend or probe (at or behind the cursor), or the first of a
//! new vote.
//!
//! "Handed to the group" means the request is queued in the group's API
//! channel, which happens on the first poll of `Raft::append_entries` (the
//! channel is far larger than the window); the caller polls it once, then
//! calls [`AppendOrder::handed`], then awaits the response (the follower's
//! fsync) without holding up the next request.
//!
//! Ordering is for speed only, never for safety: a request handed over out
//! of order is one Raft itself rejects (its previous entry is missing: a
//! conflict, which the leader's pipeline takes as a failed call, and
//! resends) or accepts harmlessly (entries of one
//! leader never truncate one another). So the wait is bounded and a lost
//! predecessor costs at most that wait. At most [`APPEND_ORDER_WAITERS_MAX`]
//! requests wait per (volume, leader); more go at once.

use std::collections::BTreeMap;
use std::task::{Poll, Waker};
use std::time::Duration;

use openraft::AsyncRuntime;
use parking_lot::Mutex;

use super::types::{LogId, Vote};
use crate::env::NodeId;
use crate::limits::{APPEND_ORDER_WAIT_MS, APPEND_ORDER_WAITERS_MAX};
use crate::volume::VolumeId;

/// What the follower last handed to a group from one leader node.
#[derive(Debug)]
struct Cursor {
    vote: Vote,
    last: Option<LogId>,
    /// Requests waiting for the cursor to move.
    waiters: Vec<Waker>,
}

/// The per-(volume, leader) cursors of one node.
#[derive(Debug, Default)]
pub struct AppendOrder {
    cursors: Mutex<BTreeMap<(VolumeId, NodeId), Cursor>>,
}

impl AppendOrder {
    /// Whether a request (`vote`, `prev`) from `from` may go now; if not,
    /// registers `waker` (unless too many wait: then it goes).
    fn ready(
        &self,
        key: (VolumeId, NodeId),
        vote: &Vote,
        prev: Option<LogId>,
        waker: &Waker,
    ) -> bool {
        let mut cursors = self.cursors.lock();
        let Some(cursor) = cursors.get_mut(&key) else {
            return true;
        };
        if cursor.vote != *vote || prev <= cursor.last {
            return true;
        }
        if cursor.waiters.iter().any(|w| w.will_wake(waker)) {
            return false;
        }
        if cursor.waiters.len() >= APPEND_ORDER_WAITERS_MAX {
            return true;
        }
        cursor.waiters.push(waker.clone());
        assert!(
            cursor.waiters.len() <= APPEND_ORDER_WAITERS_MAX,
            "waiters per leader stay bounded"
        );
        false
    }

    /// Waits until a request from `from` for `volume` with `vote` and
    /// `prev` is next in order, or [`APPEND_ORDER_WAIT_MS`] passed.
    pub async fn wait_turn<RT: AsyncRuntime>(
        &self,
        volume: VolumeId,
        from: NodeId,
        vote: &Vote,
        prev: Option<LogId>,
    ) {
        let key = (volume, from);
        let turn = std::future::poll_fn(|cx| {
            if self.ready(key, vote, prev, cx.waker()) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        });
        // Timing out is the bounded fallback: see the module docs.
        let _ = RT::timeout(Duration::from_millis(APPEND_ORDER_WAIT_MS), turn).await;
    }

    /// Records that a request from `from` for `volume` with `vote`, ending
    /// at `last`, was handed to the group; wakes the waiting requests.
    pub fn handed(&self, volume: VolumeId, from: NodeId, vote: &Vote, last: Option<LogId>) {
        let mut cursors = self.cursors.lock();
        let cursor = cursors.entry((volume, from)).or_insert_with(|| Cursor {
            vote: *vote,
            last,
            waiters: Vec::new(),
        });
        // A request of an older vote (late, stale) does not move the cursor
        // of a newer one; within one vote it only moves forward: a
        // heartbeat or resend behind it (a heartbeat carries the last
        // acknowledged log id) must not make the requests after it wait for
        // predecessors that were handed over long ago.
        if *vote < cursor.vote {
            return;
        }
        if *vote == cursor.vote {
            let before = cursor.last;
            cursor.last = cursor.last.max(last);
            assert!(
                before <= cursor.last,
                "a cursor moves only forward within a vote"
            );
        } else {
            assert!(*vote > cursor.vote, "a cursor's vote only grows");
            cursor.vote = *vote;
            cursor.last = last;
        }
        let waiters = std::mem::take(&mut cursor.waiters);
        drop(cursors);
        for waker in waiters {
            waker.wake();
        }
    }

    /// Forgets `volume`'s cursors (its group left this node).
    pub fn forget(&self, volume: VolumeId) {
        let mut cursors = self.cursors.lock();
        let waiters: Vec<Waker> = cursors
            .iter_mut()
            .filter(|((v, _), _)| *v == volume)
            .flat_map(|(_, cursor)| std::mem::take(&mut cursor.waiters))
            .collect();
        cursors.retain(|(v, _), _| *v != volume);
        drop(cursors);
        for waker in waiters {
            waker.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::pin::pin;
    use std::sync::Arc;
    use std::task::Context;

    use openraft::impls::leader_id_adv;
    use openraft_rt_tokio::TokioRuntime;

    use super::*;

    const VOLUME: VolumeId = VolumeId(7);

    fn log_id(index: u64) -> Option<LogId> {
        Some(LogId::new(
            leader_id_adv::LeaderId {
                term: 1,
                node_id: 1,
            },
            index,
        ))
    }

    fn vote(term: u64) -> Vote {
        Vote::new_committed(term, 1)
    }

    /// A request whose predecessor has not been handed over waits for it;
    /// the next in order, a resend and a new vote go at once.
    #[tokio::test]
    async fn a_request_waits_for_its_predecessor_only() {
        let order = Arc::new(AppendOrder::default());
        order.handed(VOLUME, 1, &vote(1), log_id(10));
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        // Next in order, a resend, another leader node, a new vote: at once.
        for (from, v, prev) in [
            (1, 1, log_id(10)),
            (1, 1, log_id(5)),
            (2, 1, log_id(20)),
            (1, 2, log_id(20)),
        ] {
            let v = vote(v);
            let turn = order.wait_turn::<TokioRuntime>(VOLUME, from, &v, prev);
            assert!(pin!(turn).poll(&mut cx).is_ready());
        }
        // Beyond the cursor: waits until the predecessor is handed over.
        let waiting = {
            let order = Arc::clone(&order);
            tokio::spawn(async move {
                order
                    .wait_turn::<TokioRuntime>(VOLUME, 1, &vote(1), log_id(12))
                    .await;
            })
        };
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        order.handed(VOLUME, 1, &vote(1), log_id(12));
        tokio::time::timeout(Duration::from_millis(APPEND_ORDER_WAIT_MS / 2), waiting)
            .await
            .expect("woken before the bound")
            .expect("no panic");
    }

    /// A heartbeat or resend behind the cursor does not move it back: the
    /// request after the newest one handed over still goes at once.
    #[tokio::test]
    async fn the_cursor_only_moves_forward_within_a_vote() {
        let order = AppendOrder::default();
        order.handed(VOLUME, 1, &vote(1), log_id(10));
        order.handed(VOLUME, 1, &vote(1), log_id(4));
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let v = vote(1);
        let turn = order.wait_turn::<TokioRuntime>(VOLUME, 1, &v, log_id(10));
        assert!(pin!(turn).poll(&mut cx).is_ready());
        // A new vote starts over.
        order.handed(VOLUME, 1, &vote(2), log_id(3));
        let v = vote(2);
        let turn = order.wait_turn::<TokioRuntime>(VOLUME, 1, &v, log_id(10));
        assert!(pin!(turn).poll(&mut cx).is_pending());
    }

    /// A predecessor that never comes costs at most the bound.
    #[tokio::test]
    async fn a_lost_predecessor_costs_at_most_the_bound() {
        let order = AppendOrder::default();
        order.handed(VOLUME, 1, &vote(1), log_id(10));
        let started = tokio::time::Instant::now();
        order
            .wait_turn::<TokioRuntime>(VOLUME, 1, &vote(1), log_id(30))
            .await;
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(APPEND_ORDER_WAIT_MS));
        assert!(waited < Duration::from_secs(2));
    }
}
