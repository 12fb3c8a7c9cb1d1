//! The safety checks of a run, and [`Violations`], where every check
//! reports.
//!
//! - Per-block linearizability ([`check_history`]): every block is a
//!   register. A read of block `b` that saw write `w` (id 0: zeroes, the
//!   initial value) is correct only if `w` was issued to `b` and may have
//!   taken effect (acknowledged or unknown, never a write known not to be
//!   proposed), `w` was invoked before the read completed, and `w` is not
//!   older than the newest write to `b` acknowledged before the read began
//!   (no write `x` acknowledged before the read began was invoked after `w`
//!   was acknowledged). Writes in flight concurrently may be seen or not.
//!   This is a necessary condition of linearizability per register (it
//!   misses some read-read inversions), cheap enough for every run.
//! - No stale overwrite: the same check, named apart for session writes
//!   (the retrying-clients workload, `retrying.rs`). A read that saw an
//!   acknowledged session write `w` although a write `x` to the block,
//!   invoked after `w` was acknowledged, was acknowledged before the read
//!   began, reports [`ViolationKind::StaleOverwrite`]: `w` was retried and
//!   its deliveries may reach the leader late, so its data coming back
//!   over `x` means a delivery was applied twice. (Any other read that
//!   breaks the register rules stays `Linearizability`.)
//! - No acknowledged write lost: the run reads every block through the
//!   leader after every restart and at the end, and reads every replica's
//!   own copy at the end; all those reads are checked as above, so an
//!   acknowledged write that vanished shows as a stale read.
//! - Commit agreement ([`RaftObserver`]): two nodes never apply different
//!   entries (log ids) at the same index, and two acknowledged writes never
//!   share a log index — i.e. no two leaders ever acknowledge conflicting
//!   commits. (Leaders per term are counted, not judged: openraft's advanced
//!   leader ids let two candidates lead one term in turn, by design.)
//! - Replicas byte-identical once caught up: see `run.rs`.

use std::collections::{BTreeMap, BTreeSet};

use metro_fabric::env::NodeId;
use metro_fabric::raft::types::LeaderId;
use parking_lot::Mutex;

use crate::history::{Op, OpKind, Outcome};

/// Violation messages kept (all are counted).
pub const VIOLATIONS_KEPT_MAX: usize = 64;

/// What kind of check a violation failed: tests match on it, never on
/// message text.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ViolationKind {
    /// A read saw what the per-block register model forbids: a stale read,
    /// a phantom, or an acknowledged write that was lost.
    Linearizability,
    /// A read saw an acknowledged session write after a newer write to the
    /// block was acknowledged: an old delivery was applied again.
    StaleOverwrite,
    /// Two entries applied at one log index, or two acknowledged writes at
    /// one index.
    CommitAgreement,
    /// Caught-up replicas (or their status digests) differ, or a witness
    /// holds blocks.
    Divergence,
    /// A node's store could not recover from its own disk.
    Recovery,
    /// At the end, a group's voters are not those its store record places
    /// (a stale group change was applied, or a repair was never recorded).
    MembershipDiverged,
    /// Once every fault healed, the cluster did not converge in its budget.
    Liveness,
    /// A control-plane check (registrations, coordinators, outage windows).
    Control,
    /// A task panicked (openraft's own assertions among them).
    Panic,
    /// The run did not finish within its virtual time, or its scenario
    /// task failed.
    Hang,
    /// Anything else: an unexpected answer, an undecodable read, a failed
    /// status call, a DR snapshot check.
    Other,
}

impl ViolationKind {
    /// The kind of a message reported without one ([`Violations::report`]),
    /// by its leading label (`"control: ..."`, `"recovery: ..."`).
    fn of_label(what: &str) -> Self {
        let label = what.split_once(": ").map_or("", |(label, _)| label);
        match label {
            "linearizability" => Self::Linearizability,
            "commit agreement" => Self::CommitAgreement,
            "recovery" => Self::Recovery,
            "liveness" => Self::Liveness,
            "control" => Self::Control,
            _ => Self::Other,
        }
    }
}

/// Violations counted by kind.
pub type KindCounts = BTreeMap<ViolationKind, u64>;

#[derive(Debug, Default)]
struct Recorded {
    count: u64,
    kept: Vec<String>,
    by_kind: KindCounts,
}

/// Where every check reports.
#[derive(Debug, Default)]
pub struct Violations {
    inner: Mutex<Recorded>,
}

impl Violations {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records one violation, its kind read from the message's leading
    /// label (for checks that do not name their kind yet; see
    /// [`Violations::report_as`]).
    pub fn report(&self, what: String) {
        self.report_as(ViolationKind::of_label(&what), what);
    }

    /// Records one violation of `kind`.
    pub fn report_as(&self, kind: ViolationKind, what: String) {
        let mut inner = self.inner.lock();
        inner.count += 1;
        *inner.by_kind.entry(kind).or_default() += 1;
        if inner.kept.len() < VIOLATIONS_KEPT_MAX {
            inner.kept.push(what);
        }
    }

    /// How many violations were reported.
    pub fn count(&self) -> u64 {
        self.inner.lock().count
    }

    /// How many violations of each kind were reported.
    pub fn by_kind(&self) -> KindCounts {
        let inner = self.inner.lock();
        inner.by_kind.clone()
    }

    /// The first [`VIOLATIONS_KEPT_MAX`] messages.
    pub fn messages(&self) -> Vec<String> {
        let inner = self.inner.lock();
        inner.kept.clone()
    }
}

/// One write as a register operation on one block.
#[derive(Clone, Copy, Debug)]
struct RegWrite {
    invoke_ns: u64,
    /// `u64::MAX` unless acknowledged.
    ack_ns: u64,
    /// Ran as a session request (see the module docs).
    session: bool,
}

/// One block's writes: every write that may have taken effect, and the
/// acknowledged ones sorted by acknowledgement with a running maximum of
/// their invocation times.
#[derive(Debug, Default)]
struct BlockWrites {
    writes: BTreeMap<u64, RegWrite>,
    acked: Vec<(u64, u64, u64)>,
}

impl BlockWrites {
    /// The newest invocation time of a write acknowledged before `t_ns`,
    /// with its write id.
    fn latest_before(&self, t_ns: u64) -> Option<(u64, u64)> {
        let n = self.acked.partition_point(|(ack, _, _)| *ack < t_ns);
        n.checked_sub(1).map(|i| (self.acked[i].1, self.acked[i].2))
    }
}

fn index_writes(ops: &[Op]) -> BTreeMap<u64, BlockWrites> {
    let mut blocks: BTreeMap<u64, BlockWrites> = BTreeMap::new();
    for op in ops {
        let OpKind::Write {
            first_block,
            blocks: n,
            write_id,
        } = op.kind
        else {
            continue;
        };
        let ack_ns = match op.outcome {
            Outcome::NotApplied => continue,
            Outcome::Acked { .. } => op.complete_ns.unwrap_or(u64::MAX),
            Outcome::Pending | Outcome::Unknown => u64::MAX,
        };
        for block in first_block..first_block + n {
            let entry = blocks.entry(block).or_default();
            let write = RegWrite {
                invoke_ns: op.invoke_ns,
                ack_ns,
                session: op.request.is_some(),
            };
            entry.writes.insert(write_id, write);
            if ack_ns != u64::MAX {
                entry.acked.push((ack_ns, op.invoke_ns, write_id));
            }
        }
    }
    for entry in blocks.values_mut() {
        entry.acked.sort_unstable();
        let mut newest = (0, 0);
        for slot in entry.acked.iter_mut() {
            if slot.1 >= newest.0 {
                newest = (slot.1, slot.2);
            }
            (slot.1, slot.2) = newest;
        }
    }
    blocks
}

/// Checks one read of `block` that saw `seen` (see the module docs): the
/// kind and message of the rule it breaks, if any.
fn check_read(
    block: u64,
    seen: u64,
    op: &Op,
    writes: Option<&BlockWrites>,
) -> Option<(ViolationKind, String)> {
    let stale = |v: String| {
        (
            ViolationKind::Linearizability,
            format!("linearizability: {v}"),
        )
    };
    broken_rule(block, seen, op, writes).map(|(overwrite, v)| match overwrite {
        true => (
            ViolationKind::StaleOverwrite,
            format!("stale overwrite: {v}"),
        ),
        false => stale(v),
    })
}

/// The rule a read of `block` that saw `seen` breaks, if any, and whether
/// it is a stale overwrite (see the module docs).
fn broken_rule(
    block: u64,
    seen: u64,
    op: &Op,
    writes: Option<&BlockWrites>,
) -> Option<(bool, String)> {
    let empty = BlockWrites::default();
    let writes = writes.unwrap_or(&empty);
    let read_end = op.complete_ns.unwrap_or(u64::MAX);
    let who = format!(
        "read by {} of block {block} during [{}, {}] ns saw write {seen}",
        op.client, op.invoke_ns, read_end
    );
    let latest = writes.latest_before(op.invoke_ns);
    if seen == 0 {
        return latest.map(|(_, id)| {
            let v = format!("{who} (zeroes) though write {id} was acked before");
            (false, v)
        });
    }
    let Some(w) = writes.writes.get(&seen) else {
        return Some((
            false,
            format!("{who}, which never may have written that block"),
        ));
    };
    if w.invoke_ns > read_end {
        return Some((false, format!("{who}, invoked only after the read ended")));
    }
    match latest {
        Some((invoke_ns, id)) if id != seen && w.ack_ns < invoke_ns => Some((
            w.session,
            format!(
                "{who}, acked at {} ns, older than write {id} invoked at {invoke_ns} ns and acked before the read",
                w.ack_ns
            ),
        )),
        _ => None,
    }
}

/// Runs the per-block register check and the log-index uniqueness of
/// acknowledged writes over `ops`; reports to `violations`.
pub fn check_history(ops: &[Op], violations: &Violations) {
    let blocks = index_writes(ops);
    for op in ops {
        let OpKind::Read { first_block, seen } = &op.kind else {
            continue;
        };
        if !matches!(op.outcome, Outcome::Acked { .. }) {
            continue;
        }
        for (i, seen) in seen.iter().enumerate() {
            let block = first_block + i as u64;
            if let Some((kind, what)) = check_read(block, *seen, op, blocks.get(&block)) {
                violations.report_as(kind, what);
            }
        }
    }
    let mut indexes: BTreeMap<u64, u64> = BTreeMap::new();
    for op in ops {
        if let (
            OpKind::Write { write_id, .. },
            Outcome::Acked {
                log_index: Some(index),
            },
        ) = (&op.kind, &op.outcome)
            && let Some(other) = indexes.insert(*index, *write_id)
        {
            violations.report_as(
                ViolationKind::CommitAgreement,
                format!(
                    "commit agreement: writes {other} and {write_id} both acked at log index {index}"
                ),
            );
        }
    }
}

/// What the metrics of every node showed: applied log ids and leaders.
#[derive(Debug, Default)]
pub struct RaftObserver {
    inner: Mutex<ObserverState>,
}

#[derive(Debug, Default)]
struct ObserverState {
    /// Log index -> the leader id of the entry some node applied there.
    applied: BTreeMap<u64, (LeaderId, NodeId)>,
    /// Term -> nodes seen leading in it.
    leaders: BTreeMap<u64, BTreeSet<NodeId>>,
}

impl RaftObserver {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that `node` applied the entry `(leader, index)`.
    pub fn applied(&self, node: NodeId, leader: LeaderId, index: u64, violations: &Violations) {
        let mut state = self.inner.lock();
        match state.applied.get(&index) {
            Some((other, by)) if *other != leader => violations.report_as(
                ViolationKind::CommitAgreement,
                format!(
                    "commit agreement: node {node} applied {leader} at index {index}, node {by} applied {other}"
                ),
            ),
            Some(_) => {}
            None => {
                state.applied.insert(index, (leader, node));
            }
        }
    }

    /// Records that `node` led in `term`.
    pub fn leader(&self, node: NodeId, term: u64) {
        self.inner
            .lock()
            .leaders
            .entry(term)
            .or_default()
            .insert(node);
    }

    /// The terms in which a node `is` says yes to led (a term counts once
    /// however many such nodes led in it).
    pub fn terms_led_by(&self, is: impl Fn(NodeId) -> bool) -> u64 {
        let state = self.inner.lock();
        let led = |nodes: &&BTreeSet<NodeId>| nodes.iter().any(|id| is(*id));
        state.leaders.values().filter(led).count() as u64
    }

    /// The most leaders seen in one term.
    pub fn leaders_per_term_max(&self) -> usize {
        let state = self.inner.lock();
        state.leaders.values().map(BTreeSet::len).max().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(id: u64, block: u64, invoke: u64, done: u64, outcome: Outcome) -> Op {
        Op {
            client: "c".into(),
            kind: OpKind::Write {
                first_block: block,
                blocks: 1,
                write_id: id,
            },
            invoke_ns: invoke,
            complete_ns: Some(done),
            outcome,
            request: None,
            deliveries: 1,
        }
    }

    fn read(block: u64, seen: u64, invoke: u64, done: u64) -> Op {
        Op {
            client: "r".into(),
            kind: OpKind::Read {
                first_block: block,
                seen: vec![seen],
            },
            invoke_ns: invoke,
            complete_ns: Some(done),
            outcome: Outcome::Acked { log_index: None },
            request: None,
            deliveries: 1,
        }
    }

    fn count(ops: &[Op]) -> u64 {
        let v = Violations::new();
        check_history(ops, &v);
        v.count()
    }

    #[test]
    fn register_rules() {
        let acked = |index| Outcome::Acked {
            log_index: Some(index),
        };
        let w1 = write(1, 0, 10, 20, acked(1));
        let w2 = write(2, 0, 30, 40, acked(2));
        // Fresh, concurrent and initial reads pass.
        assert_eq!(count(&[w1.clone(), w2.clone(), read(0, 2, 50, 60)]), 0);
        assert_eq!(count(&[w1.clone(), w2.clone(), read(0, 1, 35, 60)]), 0);
        assert_eq!(count(&[w1.clone(), read(0, 0, 5, 15)]), 0);
        // Stale, lost, future and phantom reads fail.
        assert_eq!(count(&[w1.clone(), w2.clone(), read(0, 1, 50, 60)]), 1);
        assert_eq!(count(&[w1.clone(), read(0, 0, 25, 30)]), 1);
        assert_eq!(count(&[w1.clone(), read(0, 1, 1, 5)]), 1);
        let failed = write(3, 0, 10, 20, Outcome::NotApplied);
        assert_eq!(count(&[failed, read(0, 3, 30, 40)]), 1);
        // An unknown write may take effect any time after its invocation.
        let unknown = write(4, 0, 10, 20, Outcome::Unknown);
        assert_eq!(count(&[w2.clone(), unknown, read(0, 4, 50, 60)]), 0);
        // Two acked writes at one index.
        assert_eq!(count(&[w1, write(5, 1, 10, 20, acked(1))]), 1);
    }

    #[test]
    fn a_session_write_seen_over_a_newer_acked_write_is_a_stale_overwrite() {
        let acked = |index| Outcome::Acked {
            log_index: Some(index),
        };
        let mut w1 = write(1, 0, 10, 20, acked(1));
        w1.request = Some(metro_fabric::host::RequestId {
            session: 1,
            request: 1,
        });
        w1.deliveries = 2;
        let w2 = write(2, 0, 30, 40, acked(2));
        let v = Violations::new();
        check_history(&[w1.clone(), w2.clone(), read(0, 1, 50, 60)], &v);
        assert_eq!(
            v.by_kind(),
            KindCounts::from([(ViolationKind::StaleOverwrite, 1)])
        );
        // Concurrent with the newer write, or of unknown outcome: allowed.
        assert_eq!(count(&[w1.clone(), w2.clone(), read(0, 1, 35, 60)]), 0);
        w1.outcome = Outcome::Unknown;
        assert_eq!(count(&[w1, w2, read(0, 1, 50, 60)]), 0);
    }

    #[test]
    fn violations_carry_their_kind() {
        let acked = Outcome::Acked { log_index: Some(1) };
        let v = Violations::new();
        check_history(&[write(1, 0, 10, 20, acked), read(0, 0, 25, 30)], &v);
        v.report("control: a label names the kind".into());
        v.report("vol-1 read by 3: no label".into());
        let expected = KindCounts::from([
            (ViolationKind::Linearizability, 1),
            (ViolationKind::Control, 1),
            (ViolationKind::Other, 1),
        ]);
        assert_eq!(v.by_kind(), expected);
        assert_eq!(v.count(), 3);
    }
}
