//! Every limit of the `metro` node in one place: the QUIC transport, the
//! data-path client, NBD, the admin API, the daemon, the PKI, the CLI and
//! the demo. Relations are checked at compile time (the
//! `const _: () = assert!(..)` lines under each group), among these and
//! against fabric's limits ([`metro_fabric::limits`]) that they wrap.
//!
//! Rules (as in fabric):
//! - One definition per limit; format identifiers (wire versions, magics,
//!   NBD protocol numbers, close codes, file names, the client id range)
//!   stay with their codecs.
//! - `_MAX` / `_MIN` when the constant bounds something; the unit comes
//!   last: `_BYTES`, `_MS`, `_US`, `_S`, `_DAYS`.
//! - Times are integers with their unit last, milliseconds (`_MS`) for
//!   everything the node waits on, so relations are plain comparisons; a
//!   `Duration` is built where one is used. Certificate lifetimes are in
//!   days (`_DAYS`), configured timings in seconds (`_S`), as their users
//!   count them.

use metro_fabric::limits::{
    CONTROL_TIMEOUT_MS, ELECTION_TIMEOUT_MAX_MS, FORWARD_DEADLINE_MS, FORWARD_TIMEOUT_MS,
    FRAME_BYTES_MAX, KEEP_ALIVES_PER_TTL, LOG_FLOOR_TIMEOUT_MS, NODE_LEASE_TTL_MS, READ_BLOCKS_MAX,
    WRITE_BLOCKS_MAX,
};
use metro_fabric::volume::BLOCK_BYTES;

// ---------------------------------------------------------------------------
// QUIC transport (node to node, client to node)
// ---------------------------------------------------------------------------

/// Connections per peer unless configured otherwise.
pub const DEFAULT_CONNECTIONS_PER_PEER: usize = 2;
/// Upper bound on `connections_per_peer`.
pub const CONNECTIONS_PER_PEER_MAX: usize = 16;
/// Most connections one node accepts at a time; more are refused.
pub const QUIC_CONNECTIONS_MAX: usize = 1024;
/// Longest wait for a dialed connection to complete its handshake.
pub const QUIC_CONNECT_TIMEOUT_MS: u64 = 5_000;
/// Longest wait for an accepted connection to complete its handshake.
pub const QUIC_HANDSHAKE_TIMEOUT_MS: u64 = 5_000;
/// Longest a whole `call` may take, connection set-up included, unless
/// the caller sets the cap for that call (`Transport::call_within`).
pub const QUIC_REQUEST_TIMEOUT_MS: u64 = 10_000;
/// Longest the server waits for a complete request frame on a stream.
pub const FRAME_READ_TIMEOUT_MS: u64 = 60_000;
/// UDP socket receive and send buffer asked for (the kernel caps it at
/// `net.core.rmem_max` / `wmem_max`); see the transport's docs.
pub const SOCKET_BUFFER_BYTES: usize = 4 << 20;
/// Most concurrently open request streams a peer may have on one connection.
pub const CONCURRENT_STREAMS_MAX: u32 = 256;
/// A QUIC connection with no traffic for this long is closed.
pub const QUIC_IDLE_TIMEOUT_MS: u64 = 4_000;
/// QUIC keep-alive interval.
pub const QUIC_KEEP_ALIVE_INTERVAL_MS: u64 = 1_000;
/// Per-stream receive window (flow control).
pub const STREAM_RECEIVE_WINDOW_BYTES: u32 = 4 << 20;
/// Per-connection receive window (flow control).
pub const CONNECTION_RECEIVE_WINDOW_BYTES: u32 = 16 << 20;
/// Per-connection send buffer.
pub const SEND_WINDOW_BYTES: u64 = 16 << 20;
/// Requests one node serves at once (Raft between nodes not counted);
/// more are answered "busy".
pub const NODE_REQUESTS_IN_FLIGHT_MAX: usize = 4096;
/// Request frame bytes one node holds at once (1 GiB); past it, "busy".
pub const NODE_REQUEST_BYTES_IN_FLIGHT_MAX: usize = 1 << 30;

// The node-wide bounds admit at least one largest frame, and bind below
// what the per-connection limits alone would allow.
const _: () = assert!(NODE_REQUEST_BYTES_IN_FLIGHT_MAX >= FRAME_BYTES_MAX);
const _: () =
    assert!(NODE_REQUESTS_IN_FLIGHT_MAX < QUIC_CONNECTIONS_MAX * CONCURRENT_STREAMS_MAX as usize);
const _: () = assert!(
    (NODE_REQUEST_BYTES_IN_FLIGHT_MAX as u128)
        < (QUIC_CONNECTIONS_MAX as u128)
            * (CONCURRENT_STREAMS_MAX as u128)
            * (FRAME_BYTES_MAX as u128)
);

// The default per-call cap does not cut short any remote operation that
// runs under it: a forwarded hop, a replica-control call, a log-floor ask
// (a repair answers at once and runs as a job on the group's leader).
const _: () = assert!(QUIC_REQUEST_TIMEOUT_MS >= FORWARD_TIMEOUT_MS);
const _: () = assert!(QUIC_REQUEST_TIMEOUT_MS >= CONTROL_TIMEOUT_MS);
const _: () = assert!(QUIC_REQUEST_TIMEOUT_MS >= LOG_FLOOR_TIMEOUT_MS);
// A call may include dialing: connecting fits the call's cap.
const _: () = assert!(QUIC_CONNECT_TIMEOUT_MS < QUIC_REQUEST_TIMEOUT_MS);
// Keep-alives keep an idle connection open: two fit the idle timeout.
const _: () = assert!(QUIC_KEEP_ALIVE_INTERVAL_MS < QUIC_IDLE_TIMEOUT_MS / 2);
// One stream's window fits the connection's.
const _: () = assert!(STREAM_RECEIVE_WINDOW_BYTES <= CONNECTION_RECEIVE_WINDOW_BYTES);
const _: () = assert!(DEFAULT_CONNECTIONS_PER_PEER <= CONNECTIONS_PER_PEER_MAX);

// ---------------------------------------------------------------------------
// Data-path client (`MetroClient`)
// ---------------------------------------------------------------------------

/// Default bound on one attempt: longer than a node's whole forward of the
/// request ([`FORWARD_DEADLINE_MS`]), so the node answers before the
/// client gives up on it.
pub const CLIENT_ATTEMPT_TIMEOUT_MS: u64 = 4_000;
/// Default bound on one operation, retries included.
pub const CLIENT_RETRY_BUDGET_MS: u64 = 30_000;
/// Pause before retrying when no leader is known or a node failed.
pub const CLIENT_RETRY_PAUSE_MS: u64 = 50;
/// How long a node that timed out or was unreachable is avoided.
pub const CLIENT_SUSPECT_MS: u64 = 2_000;

// The client outlasts the node's whole forward (every hop, the local
// serve): a node still forwarding is never abandoned and the request sent
// again elsewhere (a second proposal of the same write).
const _: () = assert!(CLIENT_ATTEMPT_TIMEOUT_MS > FORWARD_DEADLINE_MS);
// An operation rides out a failover: an election and a whole attempt.
const _: () = assert!(CLIENT_RETRY_BUDGET_MS > ELECTION_TIMEOUT_MAX_MS + CLIENT_ATTEMPT_TIMEOUT_MS);
// Retry pauses are short next to an attempt.
const _: () = assert!(CLIENT_RETRY_PAUSE_MS < CLIENT_ATTEMPT_TIMEOUT_MS);

// ---------------------------------------------------------------------------
// NBD server and its host backend
// ---------------------------------------------------------------------------

/// Largest read or write payload a client may send (advertised as the
/// maximum block size); larger reads get `EINVAL`, larger writes end the
/// connection.
pub const NBD_PAYLOAD_BYTES_MAX: u32 = 32 * 1024 * 1024;
/// Largest read or write the server passes to a `Volume` in one call (the
/// volume host's per-command limit); bigger requests are split.
pub const VOLUME_IO_BYTES_MAX: u64 = 16 << 20;
/// Requests of one connection being served at once; the reader stops
/// reading while this many await their replies.
pub const NBD_IN_FLIGHT_MAX: usize = 32;
/// Read and write payload bytes of one connection being served at once.
pub const NBD_IN_FLIGHT_BYTES_MAX: u32 = 64 * 1024 * 1024;
/// Open NBD connections per server; further connections are closed at once.
pub const NBD_CONNECTIONS_MAX: usize = 1024;
/// Time an NBD client has to finish the handshake.
pub const NBD_HANDSHAKE_TIMEOUT_MS: u64 = 30_000;
/// Longest option data accepted in the handshake (an export name of at
/// most [`EXPORT_NAME_BYTES_MAX`] bytes plus info requests fits easily).
pub const OPTION_DATA_BYTES_MAX: u32 = 8 * 1024;
/// Longest export name (the protocol's limit for strings).
pub const EXPORT_NAME_BYTES_MAX: usize = 4096;
/// Options one handshake may send before the server gives up on it.
pub const OPTIONS_MAX: usize = 64;
/// Pause after a failed NBD `accept` (e.g. out of file descriptors).
pub const NBD_ACCEPT_RETRY_MS: u64 = 100;
/// Bytes the NBD writer buffers before a flush (replies are also flushed
/// whenever no further reply is ready).
pub const WRITE_BUFFER_BYTES: usize = 256 * 1024;
/// Longest wait for the NBD client to close after the server finished.
pub const LINGER_MS: u64 = 2_000;
/// Most bytes discarded while lingering.
pub const LINGER_BYTES_MAX: usize = 1024 * 1024;
/// How long one NBD request keeps retrying transient host errors.
pub const IO_RETRY_BUDGET_MS: u64 = 20_000;
/// First pause between retries; doubles up to [`IO_RETRY_BACKOFF_MAX_MS`].
pub const IO_RETRY_BACKOFF_MIN_MS: u64 = 20;
/// Longest pause between retries.
pub const IO_RETRY_BACKOFF_MAX_MS: u64 = 400;
/// Sessions one request registers, at most, before it gives up (each one
/// evicted again before the request was applied: more clients on the
/// volume than it keeps sessions for).
pub const SESSION_RENEWALS_MAX: u32 = 3;
/// Most registered export names.
pub const EXPORTS_MAX: usize = 4_096;

// One volume call is one write command and one read of the volume host.
const _: () = assert!(VOLUME_IO_BYTES_MAX <= WRITE_BLOCKS_MAX as u64 * BLOCK_BYTES as u64);
const _: () = assert!(VOLUME_IO_BYTES_MAX <= READ_BLOCKS_MAX as u64 * BLOCK_BYTES as u64);
const _: () = assert!(VOLUME_IO_BYTES_MAX.is_multiple_of(BLOCK_BYTES as u64));
// The largest NBD request is split into volume calls, and is admitted
// whole by the in-flight bound.
const _: () = assert!(VOLUME_IO_BYTES_MAX <= NBD_PAYLOAD_BYTES_MAX as u64);
const _: () = assert!(NBD_PAYLOAD_BYTES_MAX <= NBD_IN_FLIGHT_BYTES_MAX);
// The NBD backend rides out a failover like the library client does: an
// election, then a whole forward, with room for backoff.
const _: () = assert!(IO_RETRY_BUDGET_MS > ELECTION_TIMEOUT_MAX_MS + FORWARD_DEADLINE_MS);
// ... and gives up no later than the library client would: both frontends
// report an outage within the same bound.
const _: () = assert!(IO_RETRY_BUDGET_MS <= CLIENT_RETRY_BUDGET_MS);
// A backoff pause is shorter than one whole forward.
const _: () = assert!(IO_RETRY_BACKOFF_MIN_MS < IO_RETRY_BACKOFF_MAX_MS);
const _: () = assert!(IO_RETRY_BACKOFF_MAX_MS < FORWARD_DEADLINE_MS);
const _: () = assert!(EXPORT_NAME_BYTES_MAX <= OPTION_DATA_BYTES_MAX as usize);

// ---------------------------------------------------------------------------
// Admin API (server side) and its operations
// ---------------------------------------------------------------------------

/// Most admin connections open at once.
pub const ADMIN_CONNECTIONS_MAX: usize = 64;
/// An admin connection idle this long is closed.
pub const ADMIN_IDLE_TIMEOUT_MS: u64 = 120_000;
/// Pause after a failed admin accept (out of file descriptors, ...).
pub const ADMIN_ACCEPT_RETRY_MS: u64 = 50;
/// The largest volume the admin API creates.
pub const VOLUME_BYTES_MAX: u64 = 1 << 50;
/// The longest volume, snapshot or domain name.
pub const NAME_BYTES_MAX: usize = 63;
/// How often a create re-reads the volume id counter after a conflict.
pub const ID_CAS_ATTEMPTS_MAX: usize = 16;
/// Clone jobs a node remembers (running ones and the latest finished).
pub const CLONE_JOBS_MAX: usize = 32;
/// How long a clone waits for its new volume's group to accept writes.
pub const CLONE_CREATE_WAIT_MS: u64 = 120_000;
/// How long one snapshot step (a page read, a write) is retried on
/// transient errors.
pub const STEP_RETRY_WAIT_MS: u64 = 60_000;
/// Pause between two tries of a snapshot step.
pub const STEP_RETRY_PAUSE_MS: u64 = 200;
/// How often the admin server samples leaders between scrapes.
pub const LEADER_SAMPLE_MS: u64 = 100;
/// The largest admin response the admin HTTP client reads (64 MiB).
pub const ADMIN_RESPONSE_BYTES_MAX: usize = 64 << 20;
/// The admin HTTP client's default deadline for one request.
pub const ADMIN_REQUEST_TIMEOUT_MS: u64 = 120_000;

// A synchronous snapshot call (one step, retried, its last try a whole
// forward) answers before the admin connection idles out and before the
// admin client gives up on the request.
const _: () = assert!(ADMIN_IDLE_TIMEOUT_MS > STEP_RETRY_WAIT_MS + FORWARD_DEADLINE_MS);
const _: () = assert!(ADMIN_REQUEST_TIMEOUT_MS > STEP_RETRY_WAIT_MS + FORWARD_DEADLINE_MS);
// A step is retried a few times, each try a whole forward.
const _: () = assert!(STEP_RETRY_WAIT_MS > FORWARD_DEADLINE_MS);
const _: () = assert!(STEP_RETRY_PAUSE_MS < STEP_RETRY_WAIT_MS);
// The new volume's group forms within an election after placement.
const _: () = assert!(CLONE_CREATE_WAIT_MS > ELECTION_TIMEOUT_MAX_MS + CONTROL_TIMEOUT_MS);

// ---------------------------------------------------------------------------
// Daemon: control plane, etcd, configuration
// ---------------------------------------------------------------------------

/// How long stopping a node waits for the store to drop its registration
/// before leaving it to lease expiry.
pub const DEREGISTER_TIMEOUT_MS: u64 = 2_000;
/// How often a node re-reads its domain's state.
pub const DOMAIN_POLL_INTERVAL_MS: u64 = 1_000;
/// How often the NBD exports are brought in line with the store's volumes.
pub const EXPORT_SYNC_INTERVAL_MS: u64 = 1_000;
/// Default bound on one etcd request, connection set-up included.
pub const ETCD_REQUEST_TIMEOUT_MS: u64 = 5_000;
/// Default bound on establishing a TCP connection to an etcd endpoint.
pub const ETCD_CONNECT_TIMEOUT_MS: u64 = 2_000;
/// HTTP/2 keep-alive ping interval to etcd: notices a dead etcd on an idle
/// connection (an open watch, a pending campaign).
pub const ETCD_KEEP_ALIVE_INTERVAL_MS: u64 = 2_000;
/// How long an etcd keep-alive ping may go unanswered.
pub const ETCD_KEEP_ALIVE_TIMEOUT_MS: u64 = 2_000;
/// The longest configurable lease or repair delay.
pub const TIMING_MAX_S: u64 = 86_400;
/// The most peers one node may list.
pub const PEERS_MAX: usize = 64;
/// The largest injectable one-way delay.
pub const DELAY_MAX_MS: u64 = 60_000;
/// The longest hold of the test fault `METRO_TEST_HOLD_FORWARDED_MS`.
pub const HOLD_FORWARDED_MAX_MS: u64 = 60_000;

// A lease keep-alive that times out leaves time for another before the
// node's lease lapses.
const _: () = assert!(
    ETCD_REQUEST_TIMEOUT_MS + NODE_LEASE_TTL_MS / (KEEP_ALIVES_PER_TTL as u64) < NODE_LEASE_TTL_MS
);
const _: () = assert!(ETCD_CONNECT_TIMEOUT_MS <= ETCD_REQUEST_TIMEOUT_MS);
// A dead etcd is noticed within one lease TTL.
const _: () = assert!(ETCD_KEEP_ALIVE_INTERVAL_MS + ETCD_KEEP_ALIVE_TIMEOUT_MS < NODE_LEASE_TTL_MS);
// Deregistering never waits longer than the lease would take to lapse.
const _: () = assert!(DEREGISTER_TIMEOUT_MS < NODE_LEASE_TTL_MS);
// Every node but this one is a peer of the wire membership.
const _: () = assert!(PEERS_MAX <= metro_fabric::limits::MEMBERS_MAX as usize);

// ---------------------------------------------------------------------------
// PKI
// ---------------------------------------------------------------------------

/// How many client identities a cluster may issue.
pub const CLIENTS_MAX: u64 = 64;
/// How long a freshly generated CA certificate is valid.
pub const CA_VALIDITY_DAYS: i64 = 3650;
/// How long a freshly issued node certificate is valid.
pub const NODE_VALIDITY_DAYS: i64 = 1825;
/// Backdating of `not_before`, to tolerate clock skew between nodes.
pub const CLOCK_SKEW_ALLOWANCE_MS: i64 = 3_600_000;
/// Longest cluster name (one DNS label).
pub const CLUSTER_NAME_BYTES_MAX: usize = 63;

// A node certificate expires before the CA that signed it.
const _: () = assert!(NODE_VALIDITY_DAYS < CA_VALIDITY_DAYS);

// ---------------------------------------------------------------------------
// CLI
// ---------------------------------------------------------------------------

/// How long `volume clone` waits for the copy (a clone of a large volume
/// takes a while; progress shows meanwhile).
pub const CLONE_TIMEOUT_MS: u64 = 24 * 3_600_000;
/// How often `volume clone` polls the progress.
pub const CLONE_POLL_MS: u64 = 1_000;

const _: () = assert!(CLONE_POLL_MS < CLONE_TIMEOUT_MS);

// ---------------------------------------------------------------------------
// Demo (`metro demo`)
// ---------------------------------------------------------------------------

/// Most data domains (one replica each).
pub const DEMO_DOMAINS_MAX: usize = 9;
/// Most nodes per data domain.
pub const DEMO_NODES_PER_DOMAIN_MAX: usize = 8;
/// Largest demo volume.
pub const DEMO_VOLUME_MAX_MIB: u64 = 4096;
/// Largest injected round trip between domains.
pub const DEMO_RTT_MAX_MS: u64 = 2 * DELAY_MAX_MS;
/// How long the volume may go without a leader.
pub const DEMO_LEADER_TIMEOUT_MS: u64 = 30_000;
/// How long the failover may take before the tour gives up.
pub const DEMO_FAILOVER_TIMEOUT_MS: u64 = 60_000;
/// How long the writes may go without one completing (beyond the NBD
/// backend's own retry budget).
pub const DEMO_STALL_TIMEOUT_MS: u64 = 45_000;
/// How long the restarted replicas may take to catch up.
pub const DEMO_CONVERGE_TIMEOUT_MS: u64 = 60_000;
/// Interval of the tour's progress lines.
pub const DEMO_PROGRESS_INTERVAL_MS: u64 = 1_000;
/// How often the tour checks the workload.
pub const DEMO_POLL_MS: u64 = 20;
/// How often the tour reads the volume's status.
pub const DEMO_STATUS_POLL_MS: u64 = 200;
/// How long a stopped demo node's host may stay referenced (draining tasks).
pub const DEMO_RELEASE_TIMEOUT_MS: u64 = 10_000;
/// How long a restarted demo node may wait for its old UDP port to be free.
pub const DEMO_REBIND_TIMEOUT_MS: u64 = 10_000;
/// How often the demo cluster checks a release or a rebind.
pub const DEMO_CLUSTER_POLL_MS: u64 = 50;
/// Concurrent demo writers (and readers), each with one NBD connection.
pub const DEMO_QUEUE_DEPTH: usize = 16;
/// Pause after a failed demo connection before trying again.
pub const DEMO_RECONNECT_PAUSE_MS: u64 = 100;
/// Highest latency the demo's histogram tracks.
pub const DEMO_LATENCY_MAX_US: u64 = 120_000_000;
/// Attempts to read one block back before it counts as unreadable.
pub const DEMO_READ_ATTEMPTS_MAX: usize = 3;
/// Longest option reply the demo's NBD client accepts in the handshake.
pub const OPTION_REPLY_BYTES_MAX: u32 = 64 * 1024;
/// Option replies the demo's NBD client accepts before `NBD_REP_ACK`.
pub const OPTION_REPLIES_MAX: usize = 16;
/// How long the demo's NBD client may take to connect and shake hands.
pub const NBD_CLIENT_CONNECT_TIMEOUT_MS: u64 = 5_000;

// The histogram holds the slowest NBD request the backend can produce.
const _: () = assert!(DEMO_LATENCY_MAX_US >= IO_RETRY_BUDGET_MS * 1_000);
// A stall is only reported past the NBD backend's own retry budget.
const _: () = assert!(DEMO_STALL_TIMEOUT_MS > IO_RETRY_BUDGET_MS);
