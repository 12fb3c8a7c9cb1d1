//! The fixed newstyle handshake: greeting, client flags, then options until
//! the client selects an export (`NBD_OPT_GO`, `NBD_OPT_EXPORT_NAME`) or
//! gives up (`NBD_OPT_ABORT`, EOF).
//!
//! Supported options: `EXPORT_NAME`, `ABORT`, `LIST`, `INFO`, `GO`. Every
//! other option (`STARTTLS`, `STRUCTURED_REPLY`, metadata contexts, ...) is
//! answered with `NBD_REP_ERR_UNSUP`, so clients fall back to simple replies.
//! `INFO`/`GO` always report `NBD_INFO_EXPORT` and `NBD_INFO_BLOCK_SIZE`
//! (the protocol lets a server send block sizes unasked), and
//! `NBD_INFO_NAME` when asked. Malformed option data gets
//! `NBD_REP_ERR_INVALID`; a wrong magic, unknown client flags, oversized
//! option data or too many options end the connection.

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::BLOCK_SIZE;
use super::backend::{BlockBackend, Volume};
use super::error::NbdError;
use super::proto::*;
use crate::limits::{
    EXPORT_NAME_BYTES_MAX, NBD_PAYLOAD_BYTES_MAX, OPTION_DATA_BYTES_MAX, OPTIONS_MAX,
};

/// Bytes of zero padding after the `NBD_OPT_EXPORT_NAME` reply unless the
/// client negotiated `NO_ZEROES`.
const EXPORT_NAME_PADDING: usize = 124;

/// The export a client selected: the transmission phase serves it.
pub(crate) struct Negotiated {
    /// The export's name, for logs.
    pub name: String,
    /// The opened volume.
    pub volume: Arc<dyn Volume>,
    /// The advertised size (whole blocks).
    pub size: u64,
}

/// What to do after one option.
enum Step {
    Continue,
    Abort,
    Go(Negotiated),
}

/// Runs the handshake; `Ok(None)` if the client aborted cleanly.
pub(crate) async fn negotiate<S>(
    io: &mut S,
    backend: &dyn BlockBackend,
) -> Result<Option<Negotiated>, NbdError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let mut greeting = [0u8; 18];
    greeting[0..8].copy_from_slice(&NBD_MAGIC.to_be_bytes());
    greeting[8..16].copy_from_slice(&IHAVEOPT.to_be_bytes());
    greeting[16..18].copy_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    io.write_all(&greeting).await?;
    let client_flags = io.read_u32().await?;
    if client_flags & !CLIENT_FLAGS_KNOWN != 0 {
        return Err(NbdError::ClientFlags(client_flags));
    }
    let no_zeroes = client_flags & CLIENT_FLAG_NO_ZEROES != 0;
    for _ in 0..OPTIONS_MAX {
        let (option, data) = read_option(io).await?;
        match handle_option(io, backend, option, &data, no_zeroes).await? {
            Step::Continue => {}
            Step::Abort => return Ok(None),
            Step::Go(negotiated) => return Ok(Some(negotiated)),
        }
    }
    Err(NbdError::TooManyOptions)
}

/// Reads one option header and its data.
async fn read_option<S: AsyncRead + Unpin>(io: &mut S) -> Result<(u32, Vec<u8>), NbdError> {
    let magic = io.read_u64().await?;
    if magic != IHAVEOPT {
        return Err(NbdError::BadMagic(magic));
    }
    let option = io.read_u32().await?;
    let len = io.read_u32().await?;
    if len > OPTION_DATA_BYTES_MAX {
        return Err(NbdError::OptionTooLong(len));
    }
    let mut data = vec![0u8; len as usize];
    io.read_exact(&mut data).await?;
    Ok((option, data))
}

async fn handle_option<S>(
    io: &mut S,
    backend: &dyn BlockBackend,
    option: u32,
    data: &[u8],
    no_zeroes: bool,
) -> Result<Step, NbdError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    match option {
        OPT_EXPORT_NAME => export_name(io, backend, data, no_zeroes).await,
        OPT_ABORT => {
            // The client may already have closed; the ACK is best effort.
            let _ = send_reply(io, option, REP_ACK, &[]).await;
            Ok(Step::Abort)
        }
        OPT_LIST => {
            list(io, backend, data).await?;
            Ok(Step::Continue)
        }
        OPT_INFO | OPT_GO => info_or_go(io, backend, option, data).await,
        _ => {
            send_reply(io, option, REP_ERR_UNSUP, b"option not supported").await?;
            Ok(Step::Continue)
        }
    }
}

/// `NBD_OPT_EXPORT_NAME`: no error reply exists, so an unknown name ends
/// the connection.
async fn export_name<S>(
    io: &mut S,
    backend: &dyn BlockBackend,
    data: &[u8],
    no_zeroes: bool,
) -> Result<Step, NbdError>
where
    S: AsyncWrite + Unpin + Send,
{
    let name = String::from_utf8_lossy(data).into_owned();
    let Some(volume) = open(backend, data).await else {
        return Err(NbdError::UnknownExport(name));
    };
    let size = export_size(volume.as_ref());
    let mut reply = Vec::with_capacity(10 + EXPORT_NAME_PADDING);
    reply.extend_from_slice(&size.to_be_bytes());
    reply.extend_from_slice(&TRANSMISSION_FLAGS.to_be_bytes());
    if !no_zeroes {
        reply.resize(reply.len() + EXPORT_NAME_PADDING, 0);
    }
    io.write_all(&reply).await?;
    Ok(Step::Go(Negotiated { name, volume, size }))
}

/// `NBD_OPT_LIST`: one `NBD_REP_SERVER` per export, then `NBD_REP_ACK`.
async fn list<S>(io: &mut S, backend: &dyn BlockBackend, data: &[u8]) -> Result<(), NbdError>
where
    S: AsyncWrite + Unpin + Send,
{
    if !data.is_empty() {
        return send_reply(io, OPT_LIST, REP_ERR_INVALID, b"LIST takes no data").await;
    }
    for export in backend.exports().await {
        let name = export.name.as_bytes();
        let mut item = Vec::with_capacity(4 + name.len());
        item.extend_from_slice(&(name.len() as u32).to_be_bytes());
        item.extend_from_slice(name);
        send_reply(io, OPT_LIST, REP_SERVER, &item).await?;
    }
    send_reply(io, OPT_LIST, REP_ACK, &[]).await
}

/// `NBD_OPT_INFO` and `NBD_OPT_GO`: describe the export; GO also selects it.
async fn info_or_go<S>(
    io: &mut S,
    backend: &dyn BlockBackend,
    option: u32,
    data: &[u8],
) -> Result<Step, NbdError>
where
    S: AsyncWrite + Unpin + Send,
{
    let Some((name, requests)) = parse_info_request(data) else {
        send_reply(io, option, REP_ERR_INVALID, b"malformed INFO/GO request").await?;
        return Ok(Step::Continue);
    };
    let Some(volume) = open(backend, name).await else {
        send_reply(io, option, REP_ERR_UNKNOWN, b"no such export").await?;
        return Ok(Step::Continue);
    };
    let size = export_size(volume.as_ref());
    let mut export = INFO_EXPORT.to_be_bytes().to_vec();
    export.extend_from_slice(&size.to_be_bytes());
    export.extend_from_slice(&TRANSMISSION_FLAGS.to_be_bytes());
    send_reply(io, option, REP_INFO, &export).await?;
    if requests.contains(&INFO_NAME) {
        let mut item = INFO_NAME.to_be_bytes().to_vec();
        item.extend_from_slice(name);
        send_reply(io, option, REP_INFO, &item).await?;
    }
    let mut sizes = INFO_BLOCK_SIZE.to_be_bytes().to_vec();
    for value in [BLOCK_SIZE as u32, BLOCK_SIZE as u32, NBD_PAYLOAD_BYTES_MAX] {
        sizes.extend_from_slice(&value.to_be_bytes());
    }
    send_reply(io, option, REP_INFO, &sizes).await?;
    send_reply(io, option, REP_ACK, &[]).await?;
    if option == OPT_INFO {
        return Ok(Step::Continue);
    }
    let name = String::from_utf8_lossy(name).into_owned();
    Ok(Step::Go(Negotiated { name, volume, size }))
}

/// Splits INFO/GO data into the export name and the requested info types;
/// `None` if the lengths inside do not add up.
fn parse_info_request(data: &[u8]) -> Option<(&[u8], Vec<u16>)> {
    let (name_len, rest) = data.split_first_chunk::<4>()?;
    let name_len = u32::from_be_bytes(*name_len) as usize;
    if name_len > rest.len() || name_len > EXPORT_NAME_BYTES_MAX {
        return None;
    }
    let (name, rest) = rest.split_at(name_len);
    let (count, rest) = rest.split_first_chunk::<2>()?;
    let count = usize::from(u16::from_be_bytes(*count));
    if rest.len() != count * 2 {
        return None;
    }
    let requests = rest
        .chunks_exact(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]))
        .collect();
    Some((name, requests))
}

/// Opens an export by its raw name; invalid UTF-8 names do not exist.
async fn open(backend: &dyn BlockBackend, name: &[u8]) -> Option<Arc<dyn Volume>> {
    if name.len() > EXPORT_NAME_BYTES_MAX {
        return None;
    }
    let name = std::str::from_utf8(name).ok()?;
    backend.open(name).await
}

/// The advertised size: the volume's size in whole blocks.
fn export_size(volume: &dyn Volume) -> u64 {
    volume.size_bytes() / BLOCK_SIZE * BLOCK_SIZE
}

/// Sends one option reply.
async fn send_reply<S>(io: &mut S, option: u32, kind: u32, data: &[u8]) -> Result<(), NbdError>
where
    S: AsyncWrite + Unpin + Send,
{
    let mut reply = Vec::with_capacity(20 + data.len());
    reply.extend_from_slice(&OPTION_REPLY_MAGIC.to_be_bytes());
    reply.extend_from_slice(&option.to_be_bytes());
    reply.extend_from_slice(&kind.to_be_bytes());
    reply.extend_from_slice(&(data.len() as u32).to_be_bytes());
    reply.extend_from_slice(data);
    io.write_all(&reply).await?;
    Ok(())
}
