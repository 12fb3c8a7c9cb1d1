//! The demo's workload over real NBD connections: [`DEMO_QUEUE_DEPTH`] writers,
//! each with its own [`NbdClient`], write block `i` of the demo export with
//! its own 4 KiB pattern ([`pattern`]), once each, and record which writes
//! were acknowledged and how long they took. Writers talk to the current
//! *target* endpoint ([`Workload::set_target`]) and reconnect when it
//! changes or their connection breaks.
//!
//! The failover time is measured like an application sees it: from the
//! moment the domain was killed ([`Workload::mark_kill`]) to the first
//! acknowledgement of a write *issued* after it.
//!
//! [`read_back`] then checks every acknowledged block through NBD: an
//! acknowledged write must read back exactly (else it is lost), and a write
//! that was not acknowledged must read as either its pattern or zeroes
//! (never foreign data).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use metro_fabric::volume::{BLOCK_BYTES, BLOCK_BYTES_U64};
use parking_lot::Mutex;
use tokio::task::JoinHandle;

use super::EXPORT;
use super::nbd_client::NbdClient;
use crate::limits::{
    DEMO_LATENCY_MAX_US, DEMO_QUEUE_DEPTH, DEMO_READ_ATTEMPTS_MAX, DEMO_RECONNECT_PAUSE_MS,
};

/// Block `index`'s unique content: its index, then a stream seeded by it.
pub fn pattern(index: u64) -> Vec<u8> {
    let mut state = index.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0xd1b5_4a32_d192_ed03;
    let mut bytes = Vec::with_capacity(BLOCK_BYTES);
    bytes.extend_from_slice(&index.to_le_bytes());
    while bytes.len() < BLOCK_BYTES {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        bytes.extend_from_slice(&state.to_le_bytes());
    }
    bytes.truncate(BLOCK_BYTES);
    bytes
}

/// The writers' shared state. See the module docs.
#[derive(Debug)]
pub struct Workload {
    writes: u64,
    next: AtomicU64,
    acked_count: AtomicU64,
    acked: Mutex<Vec<u64>>,
    unacked: Mutex<Vec<u64>>,
    latencies_us: Mutex<Histogram<u64>>,
    target: Mutex<SocketAddr>,
    kill_at: Mutex<Option<Instant>>,
    first_after_kill: Mutex<Option<Instant>>,
    writers_done: AtomicU64,
    failover_writes: AtomicU64,
}

impl Workload {
    /// `writes` writes (blocks `0..writes`) through `target`.
    pub fn new(writes: u64, target: SocketAddr) -> anyhow::Result<Arc<Self>> {
        let histogram = Histogram::new_with_bounds(1, DEMO_LATENCY_MAX_US, 3)?;
        Ok(Arc::new(Self {
            writes,
            next: AtomicU64::new(0),
            acked_count: AtomicU64::new(0),
            acked: Mutex::new(Vec::new()),
            unacked: Mutex::new(Vec::new()),
            latencies_us: Mutex::new(histogram),
            target: Mutex::new(target),
            kill_at: Mutex::new(None),
            first_after_kill: Mutex::new(None),
            writers_done: AtomicU64::new(0),
            failover_writes: AtomicU64::new(0),
        }))
    }

    /// Starts the writers; they end when every write was tried.
    pub fn spawn_writers(self: &Arc<Self>) -> Vec<JoinHandle<()>> {
        (0..DEMO_QUEUE_DEPTH)
            .map(|_| tokio::spawn(writer(Arc::clone(self))))
            .collect()
    }

    /// Sends the following writes to `target`.
    pub fn set_target(&self, target: SocketAddr) {
        *self.target.lock() = target;
    }

    /// The endpoint writes go to.
    pub fn target(&self) -> SocketAddr {
        *self.target.lock()
    }

    /// Records the moment of the kill (now).
    pub fn mark_kill(&self) -> Instant {
        let now = Instant::now();
        *self.kill_at.lock() = Some(now);
        now
    }

    /// Acknowledged writes so far.
    pub fn acked_count(&self) -> u64 {
        self.acked_count.load(Ordering::Relaxed)
    }

    /// Writes tried so far (acknowledged or not).
    pub fn issued(&self) -> u64 {
        self.next.load(Ordering::Relaxed).min(self.writes)
    }

    /// Whether every writer has finished.
    pub fn writers_done(&self) -> bool {
        self.writers_done.load(Ordering::Acquire) == DEMO_QUEUE_DEPTH as u64
    }

    /// When the first write issued after the kill was acknowledged.
    pub fn first_after_kill(&self) -> Option<Instant> {
        *self.first_after_kill.lock()
    }

    /// The acknowledged blocks.
    pub fn acked(&self) -> Vec<u64> {
        self.acked.lock().clone()
    }

    /// The blocks whose write was not acknowledged.
    pub fn unacked(&self) -> Vec<u64> {
        self.unacked.lock().clone()
    }

    /// The write latency at `quantile` (0..=1) in µs, outside the
    /// failover window.
    pub fn latency_us(&self, quantile: f64) -> u64 {
        self.latencies_us.lock().value_at_quantile(quantile)
    }

    /// Records an acknowledgement. Latencies count only writes outside the
    /// failover window (in flight at the kill, or issued before the first
    /// acknowledgement after it); [`Self::failover_writes`] counts the rest.
    fn ack(&self, index: u64, issued: Instant) {
        let now = Instant::now();
        self.acked.lock().push(index);
        self.acked_count.fetch_add(1, Ordering::Relaxed);
        let killed = *self.kill_at.lock();
        let mut first = self.first_after_kill.lock();
        if killed.is_some_and(|kill| issued >= kill) {
            first.get_or_insert(now);
        }
        let in_window = killed.is_some_and(|kill| now >= kill && first.is_none_or(|f| issued < f));
        drop(first);
        if in_window {
            self.failover_writes.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let us = now.duration_since(issued).as_micros() as u64;
        let _ = self
            .latencies_us
            .lock()
            .record(us.clamp(1, DEMO_LATENCY_MAX_US));
    }

    /// Acknowledged writes that overlapped the failover window.
    pub fn failover_writes(&self) -> u64 {
        self.failover_writes.load(Ordering::Relaxed)
    }
}

/// One writer: takes the next block, writes it, records the outcome.
async fn writer(work: Arc<Workload>) {
    let mut conn: Option<NbdClient> = None;
    loop {
        let index = work.next.fetch_add(1, Ordering::Relaxed);
        if index >= work.writes {
            break;
        }
        let target = work.target();
        if conn.as_ref().is_some_and(|c| c.addr() != target) {
            conn = None;
        }
        if conn.is_none() {
            match NbdClient::connect(target, EXPORT).await {
                Ok(client) => conn = Some(client),
                Err(err) => {
                    tracing::debug!(%target, "demo writer cannot connect: {err}");
                    work.unacked.lock().push(index);
                    tokio::time::sleep(Duration::from_millis(DEMO_RECONNECT_PAUSE_MS)).await;
                    continue;
                }
            }
        }
        let Some(client) = conn.as_mut() else {
            continue;
        };
        let issued = Instant::now();
        match client.write(index * BLOCK_BYTES_U64, &pattern(index)).await {
            Ok(()) => work.ack(index, issued),
            Err(err) => {
                tracing::debug!(index, "demo write failed: {err}");
                work.unacked.lock().push(index);
                if !err.connection_ok() {
                    conn = None;
                }
            }
        }
    }
    if let Some(client) = conn {
        client.disconnect().await;
    }
    work.writers_done.fetch_add(1, Ordering::Release);
}

/// What reading back found.
#[derive(Debug, Default)]
pub struct ReadBack {
    /// Acknowledged blocks that did not read back exactly (or not at all).
    pub lost: Vec<u64>,
    /// Unacknowledged blocks holding neither their pattern nor zeroes.
    pub foreign: Vec<u64>,
}

/// Reads `acked` and `unacked` blocks back through `addr` at
/// [`DEMO_QUEUE_DEPTH`] and compares them with their patterns.
pub async fn read_back(addr: SocketAddr, acked: Vec<u64>, unacked: Vec<u64>) -> ReadBack {
    let queue: Vec<(u64, bool)> = acked
        .into_iter()
        .map(|i| (i, true))
        .chain(unacked.into_iter().map(|i| (i, false)))
        .collect();
    let queue = Arc::new(Mutex::new(queue));
    let readers: Vec<JoinHandle<ReadBack>> = (0..DEMO_QUEUE_DEPTH)
        .map(|_| tokio::spawn(reader(addr, Arc::clone(&queue))))
        .collect();
    let mut total = ReadBack::default();
    for reader in readers {
        match reader.await {
            Ok(found) => {
                total.lost.extend(found.lost);
                total.foreign.extend(found.foreign);
            }
            Err(err) => tracing::error!("demo reader task failed: {err}"),
        }
    }
    // Whatever a failed reader left unchecked cannot be vouched for.
    total
        .lost
        .extend(queue.lock().drain(..).filter(|(_, a)| *a).map(|(i, _)| i));
    total.lost.sort_unstable();
    total.foreign.sort_unstable();
    total
}

async fn reader(addr: SocketAddr, queue: Arc<Mutex<Vec<(u64, bool)>>>) -> ReadBack {
    let mut found = ReadBack::default();
    let mut conn: Option<NbdClient> = None;
    loop {
        let Some((index, acked)) = queue.lock().pop() else {
            break;
        };
        let data = read_block(addr, &mut conn, index).await;
        let expected = pattern(index);
        let ok = match &data {
            Some(data) if acked => *data == expected,
            Some(data) => *data == expected || data.iter().all(|b| *b == 0),
            None => !acked,
        };
        match (ok, acked) {
            (true, _) => {}
            (false, true) => found.lost.push(index),
            (false, false) => found.foreign.push(index),
        }
    }
    if let Some(client) = conn {
        client.disconnect().await;
    }
    found
}

/// Reads block `index`, reconnecting as needed; `None` if it cannot.
async fn read_block(addr: SocketAddr, conn: &mut Option<NbdClient>, index: u64) -> Option<Vec<u8>> {
    for _ in 0..DEMO_READ_ATTEMPTS_MAX {
        if conn.is_none() {
            match NbdClient::connect(addr, EXPORT).await {
                Ok(client) => *conn = Some(client),
                Err(err) => {
                    tracing::warn!(%addr, "demo reader cannot connect: {err}");
                    tokio::time::sleep(Duration::from_millis(DEMO_RECONNECT_PAUSE_MS)).await;
                    continue;
                }
            }
        }
        let client = conn.as_mut()?;
        match client
            .read(index * BLOCK_BYTES_U64, BLOCK_BYTES as u32)
            .await
        {
            Ok(data) => return Some(data),
            Err(err) => {
                tracing::warn!(index, "demo read failed: {err}");
                if !err.connection_ok() {
                    *conn = None;
                }
            }
        }
    }
    None
}
