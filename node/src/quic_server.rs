//! The serving side of [`crate::quic_transport`]: accepts connections,
//! learns each caller's [`NodeId`] from its verified certificate and runs one
//! task per request stream, dispatching to the [`RequestHandler`].
//!
//! Contract: nothing here panics on network bytes. Bad frames are logged,
//! counted and answered by closing the stream (truncated, late) or the whole
//! connection (protocol violations, see
//! [`FrameError::is_protocol_violation`]); other connections are unaffected.
//! Concurrency is bounded by [`MAX_CONNECTIONS`] accepted connections and
//! [`crate::quic_tls::MAX_CONCURRENT_STREAMS`] streams per connection.

use std::net::SocketAddr;
use std::sync::Arc;

use metro_fabric::env::{FRAME_BYTES_MAX, Lane, NodeId, RequestHandler};
use quinn::{Connection, ConnectionError, Endpoint, RecvStream, SendStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::timeout;

use crate::quic_frame::{
    FrameError, Status, decode_request_header, read_header, read_payload, write_frame,
};
use crate::quic_tls::peer_node_id;
use crate::quic_transport::{
    CLOSE_NOT_ALLOWED, CLOSE_PROTOCOL, FRAME_READ_TIMEOUT, HANDSHAKE_TIMEOUT, MAX_CONNECTIONS,
    RESET_BAD_FRAME, Shared, bump,
};

/// Accepts connections until the endpoint closes.
pub(crate) async fn accept_loop<H: RequestHandler>(
    endpoint: Endpoint,
    shared: Arc<Shared>,
    handler: Arc<H>,
) {
    let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    while let Some(incoming) = endpoint.accept().await {
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            tracing::warn!(node = shared.node, remote = %incoming.remote_address(),
                "refusing connection: {MAX_CONNECTIONS} connections open");
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
    let conn = match timeout(HANDSHAKE_TIMEOUT, incoming).await {
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
    let (lane, request) = match timeout(FRAME_READ_TIMEOUT, read_request(&mut recv)).await {
        Ok(Ok(request)) => request,
        Ok(Err(e)) => return reject_frame(&conn, &mut send, &mut recv, from, &shared, e),
        Err(_) => {
            let e = FrameError::Timeout;
            return reject_frame(&conn, &mut send, &mut recv, from, &shared, e);
        }
    };
    let (status, body) = match handler.handle(from, lane, request).await {
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

async fn read_request(recv: &mut RecvStream) -> Result<(Lane, Vec<u8>), FrameError> {
    let header = read_header(recv).await?;
    let (lane, len) = decode_request_header(&header)?;
    let payload = read_payload(recv, len).await?;
    Ok((lane, payload))
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
