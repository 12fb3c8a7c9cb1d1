//! The serving side of [`crate::transport`]: accepts connections,
//! learns each caller's [`NodeId`] from its verified certificate and runs one
//! task per request stream, dispatching to the [`RequestHandler`].
//!
//! Contract: nothing here panics on network bytes. Bad frames are logged,
//! counted and answered by closing the stream (truncated, late) or the whole
//! connection (protocol violations, see
//! [`FrameError::is_protocol_violation`]); other connections are unaffected.
//! Concurrency is bounded by [`QUIC_CONNECTIONS_MAX`] accepted connections and
//! [`crate::limits::CONCURRENT_STREAMS_MAX`] streams per connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use metro_fabric::env::{Lane, NodeId, RequestHandler};
use metro_fabric::limits::FRAME_BYTES_MAX;
use quinn::{Connection, ConnectionError, Endpoint, RecvStream, SendStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::timeout;

use crate::limits::{FRAME_READ_TIMEOUT_MS, QUIC_CONNECTIONS_MAX, QUIC_HANDSHAKE_TIMEOUT_MS};
use crate::pki::is_client_id;
use crate::transport::admission::Admitted;
use crate::transport::frame::{
    FrameError, Status, decode_request_header, read_header, read_payload, write_frame,
};
use crate::transport::tls::peer_node_id;
use crate::transport::{CLOSE_NOT_ALLOWED, CLOSE_PROTOCOL, RESET_BAD_FRAME, Shared, bump};

/// Accepts connections until the endpoint closes.
pub(crate) async fn accept_loop<H: RequestHandler>(
    endpoint: Endpoint,
    shared: Arc<Shared>,
    handler: Arc<H>,
) {
    let limit = Arc::new(Semaphore::new(QUIC_CONNECTIONS_MAX));
    while let Some(incoming) = endpoint.accept().await {
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            tracing::warn!(node = shared.node, remote = %incoming.remote_address(),
                "refusing connection: {QUIC_CONNECTIONS_MAX} connections open");
            bump(&shared.stats.rejected_connections);
            incoming.refuse();
            continue;
        };
        tokio::spawn(serve_connection(
            incoming,
            shared.clone(),
            handler.clone(),
            permit,
        ));
    }
    tracing::debug!(node = shared.node, "QUIC endpoint closed");
}

/// Completes the handshake, learns the caller's identity, then serves each
/// of its streams on its own task until the connection ends.
async fn serve_connection<H: RequestHandler>(
    incoming: quinn::Incoming,
    shared: Arc<Shared>,
    handler: Arc<H>,
    _permit: OwnedSemaphorePermit,
) {
    let remote = incoming.remote_address();
    let conn = match timeout(Duration::from_millis(QUIC_HANDSHAKE_TIMEOUT_MS), incoming).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => return refuse(&shared, remote, &format!("handshake failed: {e}")),
        Err(_) => return refuse(&shared, remote, "handshake timed out"),
    };
    let from = match peer_node_id(&conn, &shared.cluster) {
        Ok(from) => from,
        Err(e) => {
            conn.close(CLOSE_NOT_ALLOWED, b"no node identity");
            return refuse(&shared, remote, &e.to_string());
        }
    };
    tracing::debug!(node = shared.node, from, %remote, "accepted connection");
    loop {
        let (send, recv) = match conn.accept_bi().await {
            Ok(streams) => streams,
            Err(e) => {
                log_connection_end(&shared, from, &e);
                return;
            }
        };
        if !shared.allowed.contains(from) {
            tracing::warn!(
                node = shared.node,
                from,
                "closing connection: node no longer allowed"
            );
            conn.close(CLOSE_NOT_ALLOWED, b"node not allowed");
            return;
        }
        let task = serve_stream(
            conn.clone(),
            from,
            send,
            recv,
            shared.clone(),
            handler.clone(),
        );
        tokio::spawn(task);
    }
}

fn refuse(shared: &Shared, remote: SocketAddr, reason: &str) {
    tracing::warn!(node = shared.node, %remote, reason, "refused connection");
    bump(&shared.stats.rejected_connections);
}

fn log_connection_end(shared: &Shared, from: NodeId, e: &ConnectionError) {
    match e {
        ConnectionError::ApplicationClosed(_) | ConnectionError::LocallyClosed => {
            tracing::debug!(node = shared.node, from, "connection closed: {e}");
        }
        _ => tracing::info!(node = shared.node, from, "connection ended: {e}"),
    }
}

/// Reads one request, runs the handler, writes the response.
async fn serve_stream<H: RequestHandler>(
    conn: Connection,
    from: NodeId,
    mut send: SendStream,
    mut recv: RecvStream,
    shared: Arc<Shared>,
    handler: Arc<H>,
) {
    let read = read_request(&mut recv, from, &shared);
    let (lane, request, _admitted) =
        match timeout(Duration::from_millis(FRAME_READ_TIMEOUT_MS), read).await {
            Ok(Ok(Some(request))) => request,
            Ok(Ok(None)) => {
                bump(&shared.stats.rejected_busy);
                let busy = b"busy: the node serves its most requests already; retry later";
                if let Err(e) = write_frame(&mut send, Status::HandlerError as u8, busy).await {
                    tracing::debug!(node = shared.node, from, "busy answer not delivered: {e}");
                }
                // Keep reading open until the answer is acknowledged, so a
                // caller still sending its (unread) request gets the answer,
                // not a stopped stream.
                let _ = timeout(Duration::from_millis(FRAME_READ_TIMEOUT_MS), send.stopped()).await;
                return;
            }
            Ok(Err(e)) => return reject_frame(&conn, &mut send, &mut recv, from, &shared, e),
            Err(_) => {
                let e = FrameError::Timeout;
                return reject_frame(&conn, &mut send, &mut recv, from, &shared, e);
            }
        };
    // A caller that stops the stream or loses the connection is gone: the
    // handler is cancelled (a relaying node stops relaying for it).
    let stopped = send.stopped();
    let gone = async move {
        // `None`: finished by us and acknowledged, which cannot happen
        // before the handler answers; wait on.
        if let Ok(None) = stopped.await {
            std::future::pending::<()>().await;
        }
    };
    let outcome = tokio::select! {
        outcome = handler.handle(from, lane, request) => outcome,
        () = gone => {
            tracing::debug!(node = shared.node, from, ?lane, "caller went away: handler cancelled");
            bump(&shared.stats.handlers_cancelled);
            return;
        }
    };
    let (status, body) = match outcome {
        Ok(body) if body.len() <= FRAME_BYTES_MAX => (Status::Ok, body),
        Ok(body) => {
            let msg = format!("response of {} bytes exceeds the frame limit", body.len());
            tracing::warn!(node = shared.node, from, ?lane, "{msg}");
            (Status::HandlerError, msg.into_bytes())
        }
        Err(msg) => {
            tracing::warn!(node = shared.node, from, ?lane, error = %msg, "handler failed");
            let mut bytes = msg.into_bytes();
            bytes.truncate(FRAME_BYTES_MAX);
            (Status::HandlerError, bytes)
        }
    };
    shared.delay(from).await;
    match write_frame(&mut send, status as u8, &body).await {
        Ok(()) => bump(&shared.stats.requests_served),
        Err(e) => tracing::debug!(node = shared.node, from, "response not delivered: {e}"),
    }
}

/// Reads one request frame, admitting it (see `admission`) between its
/// header and its payload; `None` when the node is busy.
async fn read_request(
    recv: &mut RecvStream,
    from: NodeId,
    shared: &Shared,
) -> Result<Option<(Lane, Vec<u8>, Admitted)>, FrameError> {
    let header = read_header(recv).await?;
    let (lane, len) = decode_request_header(&header)?;
    let Some(admitted) = shared.admission.try_admit(lane, !is_client_id(from), len) else {
        return Ok(None);
    };
    let payload = read_payload(recv, len).await?;
    Ok(Some((lane, payload, admitted)))
}

/// Logs and counts a bad request frame, then closes the connection (protocol
/// violation) or just the stream (truncated, late).
fn reject_frame(
    conn: &Connection,
    send: &mut SendStream,
    recv: &mut RecvStream,
    from: NodeId,
    shared: &Shared,
    error: FrameError,
) {
    let node = shared.node;
    if error.is_abandoned() {
        tracing::debug!(node, from, "request abandoned: {error}");
        return;
    }
    bump(&shared.stats.rejected_frames);
    if error.is_protocol_violation() {
        tracing::warn!(node, from, %error, "closing connection: protocol violation");
        conn.close(CLOSE_PROTOCOL, error.to_string().as_bytes());
    } else {
        tracing::warn!(node, from, %error, "resetting stream: bad request frame");
        let _ = send.reset(RESET_BAD_FRAME);
        let _ = recv.stop(RESET_BAD_FRAME);
    }
}
