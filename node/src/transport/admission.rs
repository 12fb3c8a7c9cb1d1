//! [`Admission`]: the node-wide bound on requests being served and on the
//! bytes of their request frames, so that no client certificate (1 024
//! connections × 256 streams × 64 MiB frames) can push a node out of
//! memory.
//!
//! Contract:
//! - A request is admitted after its frame header is read (its length is
//!   known) and before its payload is read; it holds its place (one
//!   request, its payload bytes) until its handler answered or was
//!   cancelled ([`Admitted`] releases on drop).
//! - Past either bound the request is answered at once with a handler
//!   error starting "busy" (callers retry with backoff, as for any failed
//!   call) and counted in `TransportStats::rejected_busy`.
//! - Raft traffic between nodes is never refused: it is bounded per group
//!   by openraft's replication window, and refusing heartbeats would cost
//!   elections, not memory.

use std::sync::Arc;

use metro_fabric::env::Lane;
use parking_lot::Mutex;

/// The two bounds and what is in use (see the module contract).
#[derive(Debug)]
pub(crate) struct Admission {
    requests_max: usize,
    bytes_max: usize,
    in_use: Mutex<InUse>,
}

#[derive(Debug, Default)]
struct InUse {
    requests: usize,
    bytes: usize,
}

/// One admitted request's place; released when dropped.
#[derive(Debug)]
pub(crate) struct Admitted {
    admission: Option<Arc<Admission>>,
    bytes: usize,
}

impl Admission {
    pub(crate) fn new(requests_max: usize, bytes_max: usize) -> Arc<Self> {
        assert!(
            requests_max > 0 && bytes_max > 0,
            "admission bounds are positive"
        );
        Arc::new(Self {
            requests_max,
            bytes_max,
            in_use: Mutex::default(),
        })
    }

    /// A place for a request of `bytes` on `lane` (`exempt`: Raft between
    /// nodes), or `None` when the node is busy.
    pub(crate) fn try_admit(
        self: &Arc<Self>,
        lane: Lane,
        exempt: bool,
        bytes: usize,
    ) -> Option<Admitted> {
        if exempt && lane == Lane::Raft {
            return Some(Admitted {
                admission: None,
                bytes: 0,
            });
        }
        let mut in_use = self.in_use.lock();
        if in_use.requests >= self.requests_max || in_use.bytes + bytes > self.bytes_max {
            return None;
        }
        in_use.requests += 1;
        in_use.bytes += bytes;
        Some(Admitted {
            admission: Some(Arc::clone(self)),
            bytes,
        })
    }

    /// Requests admitted and not yet released.
    pub(crate) fn requests_in_use(&self) -> usize {
        self.in_use.lock().requests
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        if let Some(admission) = &self.admission {
            let mut in_use = admission.in_use.lock();
            assert!(
                in_use.requests > 0 && in_use.bytes >= self.bytes,
                "a release matches an admission"
            );
            in_use.requests -= 1;
            in_use.bytes -= self.bytes;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_bounds_refuse_and_release_on_drop() {
        let admission = Admission::new(2, 100);
        let a = admission.try_admit(Lane::Client, false, 60).unwrap();
        assert!(
            admission.try_admit(Lane::Client, false, 41).is_none(),
            "bytes"
        );
        let b = admission.try_admit(Lane::Bulk, false, 40).unwrap();
        assert!(
            admission.try_admit(Lane::Client, false, 0).is_none(),
            "requests"
        );
        // Raft between nodes is never refused; from a client it counts.
        assert!(admission.try_admit(Lane::Raft, true, 1 << 20).is_some());
        assert!(admission.try_admit(Lane::Raft, false, 0).is_none());
        drop(a);
        assert_eq!(admission.requests_in_use(), 1);
        let _c = admission.try_admit(Lane::Client, false, 60).unwrap();
        drop(b);
        assert_eq!(admission.requests_in_use(), 1);
    }
}
