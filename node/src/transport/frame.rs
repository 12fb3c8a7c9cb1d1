//! The wire format of [`crate::transport`]: one request and one response
//! per bidirectional QUIC stream.
//!
//! ```text
//! request  = [version u8 = 1][lane u8][len u32 LE][payload: len bytes] FIN
//! response = [version u8 = 1][status u8][len u32 LE][payload: len bytes] FIN
//! ```
//!
//! `status` is 0 (ok: payload is the handler's response) or 1 (handler
//! error: payload is its UTF-8 message). `len` never exceeds
//! [`FRAME_BYTES_MAX`]; a frame that is shorter than its `len`, or longer, is
//! malformed. Decoding never panics on any input.

use metro_fabric::env::Lane;
use metro_fabric::limits::FRAME_BYTES_MAX;
use quinn::{ReadError, ReadExactError, ReadToEndError, RecvStream, SendStream, WriteError};

/// The only frame version this build speaks.
pub const FRAME_VERSION: u8 = 1;
/// Bytes of a request or response header.
pub const HEADER_LEN: usize = 6;

/// Outcome carried by a response frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Status {
    /// The handler returned a response.
    Ok = 0,
    /// The handler returned an error; the payload is its message.
    HandlerError = 1,
}

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("unsupported frame version {0}")]
    UnknownVersion(u8),
    #[error("unknown lane {0}")]
    UnknownLane(u8),
    #[error("unknown response status {0}")]
    UnknownStatus(u8),
    #[error("frame length {0} exceeds the {FRAME_BYTES_MAX}-byte limit")]
    TooLarge(u64),
    #[error("truncated frame: {got} of {expected} bytes")]
    Truncated { expected: usize, got: usize },
    #[error("frame longer than its declared {0} bytes")]
    Trailing(usize),
    #[error("frame not received within the time limit")]
    Timeout,
    /// The peer reset or stopped the stream.
    #[error("stream failed: {0}")]
    Stream(String),
    /// The connection failed underneath (closed, timed out, lost).
    #[error("connection lost: {0}")]
    ConnectionLost(String),
}

impl FrameError {
    /// True when the peer sent bytes that no correct peer sends (as opposed
    /// to a stream that was cut short or failed underneath).
    pub fn is_protocol_violation(&self) -> bool {
        matches!(
            self,
            Self::UnknownVersion(_)
                | Self::UnknownLane(_)
                | Self::UnknownStatus(_)
                | Self::TooLarge(_)
                | Self::Trailing(_)
        )
    }

    /// True when the stream or connection failed underneath: nothing the
    /// peer sent was wrong, it just went away.
    pub fn is_abandoned(&self) -> bool {
        matches!(self, Self::Stream(_) | Self::ConnectionLost(_))
    }
}

/// Maps a lane's wire byte back to the lane.
pub fn lane_from_u8(byte: u8) -> Option<Lane> {
    match byte {
        0 => Some(Lane::Raft),
        1 => Some(Lane::Client),
        2 => Some(Lane::Bulk),
        _ => None,
    }
}

fn status_from_u8(byte: u8) -> Option<Status> {
    match byte {
        0 => Some(Status::Ok),
        1 => Some(Status::HandlerError),
        _ => None,
    }
}

/// Encodes a header; `len` must already be checked against [`FRAME_BYTES_MAX`].
pub fn encode_header(second: u8, len: usize) -> [u8; HEADER_LEN] {
    let len = u32::try_from(len).unwrap_or(u32::MAX).to_le_bytes();
    [FRAME_VERSION, second, len[0], len[1], len[2], len[3]]
}

/// Splits a header into its second byte and a checked length.
fn decode_header(header: &[u8; HEADER_LEN]) -> Result<(u8, usize), FrameError> {
    let [version, second, l0, l1, l2, l3] = *header;
    if version != FRAME_VERSION {
        return Err(FrameError::UnknownVersion(version));
    }
    let len = u32::from_le_bytes([l0, l1, l2, l3]);
    let len = usize::try_from(len).map_err(|_| FrameError::TooLarge(u64::from(len)))?;
    if len > FRAME_BYTES_MAX {
        return Err(FrameError::TooLarge(len as u64));
    }
    Ok((second, len))
}

/// Validates a request header.
pub fn decode_request_header(header: &[u8; HEADER_LEN]) -> Result<(Lane, usize), FrameError> {
    let (lane, len) = decode_header(header)?;
    let lane = lane_from_u8(lane).ok_or(FrameError::UnknownLane(lane))?;
    Ok((lane, len))
}

/// Validates a response header.
pub fn decode_response_header(header: &[u8; HEADER_LEN]) -> Result<(Status, usize), FrameError> {
    let (status, len) = decode_header(header)?;
    let status = status_from_u8(status).ok_or(FrameError::UnknownStatus(status))?;
    Ok((status, len))
}

/// Reads a header; a stream that ends before it is complete is truncated.
pub async fn read_header(recv: &mut RecvStream) -> Result<[u8; HEADER_LEN], FrameError> {
    let mut header = [0u8; HEADER_LEN];
    match recv.read_exact(&mut header).await {
        Ok(()) => Ok(header),
        Err(ReadExactError::FinishedEarly(got)) => Err(FrameError::Truncated {
            expected: HEADER_LEN,
            got,
        }),
        Err(ReadExactError::ReadError(e)) => Err(read_error(e)),
    }
}

/// Reads exactly `len` payload bytes followed by the end of the stream.
/// Memory grows with the bytes received, not with the declared length.
pub async fn read_payload(recv: &mut RecvStream, len: usize) -> Result<Vec<u8>, FrameError> {
    match recv.read_to_end(len).await {
        Ok(payload) if payload.len() == len => Ok(payload),
        Ok(payload) => Err(FrameError::Truncated {
            expected: len,
            got: payload.len(),
        }),
        Err(ReadToEndError::TooLong) => Err(FrameError::Trailing(len)),
        Err(ReadToEndError::Read(e)) => Err(read_error(e)),
    }
}

fn read_error(e: ReadError) -> FrameError {
    match e {
        ReadError::ConnectionLost(e) => FrameError::ConnectionLost(e.to_string()),
        other => FrameError::Stream(other.to_string()),
    }
}

/// Writes header, payload and FIN.
pub async fn write_frame(
    send: &mut SendStream,
    second: u8,
    payload: &[u8],
) -> Result<(), WriteError> {
    send.write_all(&encode_header(second, payload.len()))
        .await?;
    send.write_all(payload).await?;
    send.finish().map_err(|_| WriteError::ClosedStream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip_and_reject_garbage() {
        let h = encode_header(Lane::Bulk as u8, 1 << 20);
        assert_eq!(
            decode_request_header(&h).expect("ok"),
            (Lane::Bulk, 1 << 20)
        );
        assert!(matches!(
            decode_request_header(&[2, 0, 0, 0, 0, 0]),
            Err(FrameError::UnknownVersion(2))
        ));
        assert!(matches!(
            decode_request_header(&[1, 9, 0, 0, 0, 0]),
            Err(FrameError::UnknownLane(9))
        ));
        assert!(matches!(
            decode_request_header(&[1, 0, 0xff, 0xff, 0xff, 0xff]),
            Err(FrameError::TooLarge(_))
        ));
        assert!(matches!(
            decode_response_header(&[1, 2, 0, 0, 0, 0]),
            Err(FrameError::UnknownStatus(2))
        ));
        let r = encode_header(Status::HandlerError as u8, 3);
        assert_eq!(
            decode_response_header(&r).expect("ok"),
            (Status::HandlerError, 3)
        );
    }
}
