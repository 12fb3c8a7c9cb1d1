//! [`NbdClient`]: a small NBD client for the demo, so that its writes take
//! the same path as qemu's: TCP, the fixed newstyle handshake with
//! `NBD_OPT_GO`, then `NBD_CMD_WRITE` / `NBD_CMD_READ` with simple replies.
//!
//! Contract: one request at a time per client (the demo's queue depth is
//! its number of clients). An error *reply* ([`NbdClientError::Reply`])
//! leaves the connection usable; every other error leaves it in an unknown
//! state, so drop the client and connect again. Bytes from the server are
//! checked (magics, cookies, bounded lengths) and never panic.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, BufStream};
use tokio::net::TcpStream;

use crate::limits::{NBD_CLIENT_CONNECT_TIMEOUT_MS, OPTION_REPLIES_MAX, OPTION_REPLY_BYTES_MAX};
use crate::nbd::proto::{
    CLIENT_FLAG_FIXED_NEWSTYLE, CLIENT_FLAG_NO_ZEROES, CMD_DISC, CMD_READ, CMD_WRITE,
    FLAG_FIXED_NEWSTYLE, FLAG_NO_ZEROES, IHAVEOPT, INFO_EXPORT, NBD_MAGIC, OPT_GO,
    OPTION_REPLY_MAGIC, REP_ACK, REP_FLAG_ERROR, REP_INFO, RequestHeader, SIMPLE_REPLY_MAGIC,
};

/// Why an NBD operation failed.
#[derive(Debug, thiserror::Error)]
pub enum NbdClientError {
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("connecting timed out after {NBD_CLIENT_CONNECT_TIMEOUT_MS:?}")]
    Timeout,
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("the server refused export {export:?}: {message} (reply {kind:#x})")]
    Refused {
        export: String,
        kind: u32,
        message: String,
    },
    /// The server answered the request with an errno; the connection is fine.
    #[error("the server answered errno {0}")]
    Reply(u32),
}

impl NbdClientError {
    /// Whether the connection may be used again.
    pub fn connection_ok(&self) -> bool {
        matches!(self, Self::Reply(_))
    }
}

fn protocol(message: impl Into<String>) -> NbdClientError {
    NbdClientError::Protocol(message.into())
}

/// One NBD connection to one export.
#[derive(Debug)]
pub struct NbdClient {
    stream: BufStream<TcpStream>,
    addr: SocketAddr,
    size_bytes: u64,
    next_cookie: u64,
}

impl NbdClient {
    /// Connects to `addr` and opens `export` with `NBD_OPT_GO`.
    pub async fn connect(addr: SocketAddr, export: &str) -> Result<Self, NbdClientError> {
        tokio::time::timeout(
            Duration::from_millis(NBD_CLIENT_CONNECT_TIMEOUT_MS),
            Self::connect_now(addr, export),
        )
        .await
        .map_err(|_| NbdClientError::Timeout)?
    }

    async fn connect_now(addr: SocketAddr, export: &str) -> Result<Self, NbdClientError> {
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let mut stream = BufStream::new(tcp);
        if stream.read_u64().await? != NBD_MAGIC || stream.read_u64().await? != IHAVEOPT {
            return Err(protocol("not an NBD newstyle server"));
        }
        let server_flags = stream.read_u16().await?;
        if server_flags & FLAG_FIXED_NEWSTYLE == 0 {
            return Err(protocol("the server does not speak fixed newstyle"));
        }
        let mut flags = CLIENT_FLAG_FIXED_NEWSTYLE;
        if server_flags & FLAG_NO_ZEROES != 0 {
            flags |= CLIENT_FLAG_NO_ZEROES;
        }
        stream.write_u32(flags).await?;
        let name = export.as_bytes();
        stream.write_u64(IHAVEOPT).await?;
        stream.write_u32(OPT_GO).await?;
        stream.write_u32(4 + name.len() as u32 + 2).await?;
        stream.write_u32(name.len() as u32).await?;
        stream.write_all(name).await?;
        stream.write_u16(0).await?; // no information requests
        stream.flush().await?;
        let size_bytes = read_go_replies(&mut stream, export).await?;
        Ok(Self {
            stream,
            addr,
            size_bytes,
            next_cookie: 1,
        })
    }

    /// The server this client talks to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The export's size as the server announced it.
    pub fn size_bytes(&self) -> u64 {
        self.size_bytes
    }

    /// Writes `data` at `offset`; returns once the server acknowledged it.
    pub async fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), NbdClientError> {
        let length = u32::try_from(data.len()).map_err(|_| protocol("write too large"))?;
        let cookie = self.send(CMD_WRITE, offset, length).await?;
        self.stream.write_all(data).await?;
        self.stream.flush().await?;
        self.reply(cookie).await
    }

    /// Reads `len` bytes at `offset`.
    pub async fn read(&mut self, offset: u64, len: u32) -> Result<Vec<u8>, NbdClientError> {
        let cookie = self.send(CMD_READ, offset, len).await?;
        self.stream.flush().await?;
        self.reply(cookie).await?;
        let mut data = vec![0u8; len as usize];
        self.stream.read_exact(&mut data).await?;
        Ok(data)
    }

    /// Sends `NBD_CMD_DISC` and closes the connection.
    pub async fn disconnect(mut self) {
        if self.send(CMD_DISC, 0, 0).await.is_ok() {
            let _ = self.stream.flush().await;
        }
    }

    async fn send(&mut self, kind: u16, offset: u64, length: u32) -> Result<u64, NbdClientError> {
        let cookie = self.next_cookie;
        self.next_cookie += 1;
        let header = RequestHeader {
            flags: 0,
            kind,
            cookie,
            offset,
            length,
        };
        self.stream.write_all(&header.encode()).await?;
        Ok(cookie)
    }

    /// Reads the simple reply to `cookie` (one request at a time).
    async fn reply(&mut self, cookie: u64) -> Result<(), NbdClientError> {
        if self.stream.read_u32().await? != SIMPLE_REPLY_MAGIC {
            return Err(protocol("bad reply magic"));
        }
        let errno = self.stream.read_u32().await?;
        let echoed = self.stream.read_u64().await?;
        if echoed != cookie {
            return Err(protocol(format!("reply to {echoed}, expected {cookie}")));
        }
        match errno {
            0 => Ok(()),
            errno => Err(NbdClientError::Reply(errno)),
        }
    }
}

/// Reads `NBD_OPT_GO`'s replies up to `NBD_REP_ACK`; the export's size.
async fn read_go_replies(
    stream: &mut BufStream<TcpStream>,
    export: &str,
) -> Result<u64, NbdClientError> {
    let mut size_bytes = None;
    for _ in 0..OPTION_REPLIES_MAX {
        if stream.read_u64().await? != OPTION_REPLY_MAGIC {
            return Err(protocol("bad option reply magic"));
        }
        let option = stream.read_u32().await?;
        let kind = stream.read_u32().await?;
        let len = stream.read_u32().await?;
        if option != OPT_GO || len > OPTION_REPLY_BYTES_MAX {
            return Err(protocol(format!("unexpected reply to option {option}")));
        }
        let mut data = vec![0u8; len as usize];
        stream.read_exact(&mut data).await?;
        if kind & REP_FLAG_ERROR != 0 {
            return Err(NbdClientError::Refused {
                export: export.to_owned(),
                kind,
                message: String::from_utf8_lossy(&data).into_owned(),
            });
        }
        match kind {
            REP_ACK => return size_bytes.ok_or_else(|| protocol("GO without NBD_INFO_EXPORT")),
            REP_INFO => {
                if let Some(size) = export_size(&data) {
                    size_bytes = Some(size);
                }
            }
            _ => {}
        }
    }
    Err(protocol("too many option replies"))
}

/// The size in an `NBD_INFO_EXPORT` reply (type, size u64, flags u16).
fn export_size(data: &[u8]) -> Option<u64> {
    let kind = u16::from_be_bytes(data.get(0..2)?.try_into().ok()?);
    if kind != INFO_EXPORT {
        return None;
    }
    Some(u64::from_be_bytes(data.get(2..10)?.try_into().ok()?))
}
