//! The transmission phase of one connection.
//!
//! One reader (this task) decodes requests; each valid request runs on its
//! own task, at most [`NBD_IN_FLIGHT_MAX`] at once and at most
//! [`NBD_IN_FLIGHT_BYTES_MAX`] of payload, and hands its reply to the single
//! writer task, so replies go out in completion order (clients match them by
//! cookie). Simple replies only.
//!
//! Per request: unknown commands and flags get `EINVAL`; reads past the end
//! or longer than [`NBD_PAYLOAD_BYTES_MAX`] get `EINVAL`; writes and
//! write-zeroes past the end get `ENOSPC`; trims past the end `EINVAL`;
//! zero-length requests succeed without touching the volume; backend
//! failures (and backend panics) get `EIO` (`ENOSPC` for
//! [`BackendError::NoSpace`]). `FUA` is honoured by flushing the volume after
//! the command. A wrong request magic or a write payload over
//! [`NBD_PAYLOAD_BYTES_MAX`] ends the connection. `NBD_CMD_DISC`, EOF or a socket
//! error stop the reader; outstanding requests still complete and are
//! answered before the socket closes.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use futures_util::FutureExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use super::aligned::AlignedIo;
use super::backend::BackendError;
use super::error::NbdError;
use super::proto::*;
use super::stats::NbdStats;
use crate::limits::{
    LINGER_BYTES_MAX, LINGER_MS, NBD_IN_FLIGHT_BYTES_MAX, NBD_IN_FLIGHT_MAX, NBD_PAYLOAD_BYTES_MAX,
    WRITE_BUFFER_BYTES,
};

/// A validated request, ready for the backend.
#[derive(Debug)]
enum Op {
    Read {
        offset: u64,
        len: u32,
    },
    Write {
        offset: u64,
        data: Vec<u8>,
        fua: bool,
    },
    WriteZeroes {
        offset: u64,
        len: u64,
        fua: bool,
    },
    Trim {
        offset: u64,
        len: u64,
        fua: bool,
    },
    Flush,
    Noop,
}

/// One simple reply.
struct Reply {
    cookie: u64,
    error: u32,
    data: Vec<u8>,
}

/// Per-connection state shared by the reader and the request tasks.
pub(crate) struct Transmission {
    io: Arc<AlignedIo>,
    size: u64,
    stats: Arc<NbdStats>,
    slots: Arc<Semaphore>,
    bytes: Arc<Semaphore>,
}

impl Transmission {
    pub(crate) fn new(io: AlignedIo, size: u64, stats: Arc<NbdStats>) -> Self {
        Self {
            io: Arc::new(io),
            size,
            stats,
            slots: Arc::new(Semaphore::new(NBD_IN_FLIGHT_MAX)),
            bytes: Arc::new(Semaphore::new(NBD_IN_FLIGHT_BYTES_MAX as usize)),
        }
    }

    /// Serves requests until the client disconnects; every accepted request
    /// is answered (if the socket still works) before this returns.
    pub(crate) async fn run(self, stream: TcpStream) -> Result<(), NbdError> {
        let (mut reader, writer) = stream.into_split();
        let (tx, rx) = mpsc::channel(NBD_IN_FLIGHT_MAX);
        let writer = tokio::spawn(write_replies(writer, rx));
        let result = self.read_requests(&mut reader, &tx).await;
        drop(tx);
        // The writer ends once every request task has sent its reply.
        match writer.await {
            Ok(Ok(())) => {
                if result.is_ok() {
                    linger(reader).await;
                }
            }
            Ok(Err(e)) => tracing::debug!("NBD reply writer: {e}"),
            Err(_) => {}
        }
        result
    }

    async fn read_requests(
        &self,
        reader: &mut OwnedReadHalf,
        tx: &mpsc::Sender<Reply>,
    ) -> Result<(), NbdError> {
        loop {
            let Ok(slot) = self.slots.clone().acquire_owned().await else {
                return Ok(());
            };
            let mut header = [0u8; REQUEST_HEADER_LEN];
            match reader.read_exact(&mut header).await {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
                Err(e) => return Err(e.into()),
            }
            let Some(req) = RequestHeader::decode(&header) else {
                let magic = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
                return Err(NbdError::BadMagic(u64::from(magic)));
            };
            if req.kind == CMD_DISC || tx.is_closed() {
                return Ok(());
            }
            self.stats.requests.fetch_add(1, Relaxed);
            let (payload, budget) = self.read_payload(reader, &req).await?;
            match validate(&req, payload, self.size) {
                Err(error) => {
                    self.stats.error_replies.fetch_add(1, Relaxed);
                    let reply = Reply {
                        cookie: req.cookie,
                        error,
                        data: Vec::new(),
                    };
                    if tx.send(reply).await.is_err() {
                        return Ok(());
                    }
                }
                Ok(op) => {
                    let budget = match budget {
                        Some(budget) => budget,
                        None => self.reserve(&op).await?,
                    };
                    self.spawn(op, req.cookie, tx.clone(), [slot, budget]);
                }
            }
        }
    }

    /// Reads a write's payload (reserving its bytes first); nothing for
    /// other commands.
    async fn read_payload(
        &self,
        reader: &mut OwnedReadHalf,
        req: &RequestHeader,
    ) -> Result<(Vec<u8>, Option<OwnedSemaphorePermit>), NbdError> {
        if req.kind != CMD_WRITE {
            return Ok((Vec::new(), None));
        }
        if req.length > NBD_PAYLOAD_BYTES_MAX {
            return Err(NbdError::PayloadTooLarge(req.length));
        }
        let budget = self.acquire_bytes(req.length).await?;
        let mut payload = vec![0u8; req.length as usize];
        reader.read_exact(&mut payload).await?;
        Ok((payload, Some(budget)))
    }

    /// Reserves the reply bytes of a read (nothing for other commands).
    async fn reserve(&self, op: &Op) -> Result<OwnedSemaphorePermit, NbdError> {
        let len = match op {
            Op::Read { len, .. } => *len,
            _ => 0,
        };
        self.acquire_bytes(len).await
    }

    async fn acquire_bytes(&self, len: u32) -> Result<OwnedSemaphorePermit, NbdError> {
        // Never closed; a closed semaphore would mean shutdown.
        self.bytes
            .clone()
            .acquire_many_owned(len)
            .await
            .map_err(|_| NbdError::Io(std::io::ErrorKind::BrokenPipe.into()))
    }

    /// Runs `op` on its own task; the permits are released with its reply.
    fn spawn(
        &self,
        op: Op,
        cookie: u64,
        tx: mpsc::Sender<Reply>,
        permits: [OwnedSemaphorePermit; 2],
    ) {
        let io = self.io.clone();
        let stats = self.stats.clone();
        tokio::spawn(async move {
            let result = AssertUnwindSafe(execute(op, &io)).catch_unwind().await;
            let (error, data) = match result {
                Ok(Ok(data)) => (0, data),
                Ok(Err(e)) => {
                    tracing::debug!("NBD request failed: {e}");
                    (errno(&e), Vec::new())
                }
                Err(_) => {
                    tracing::error!("NBD backend panicked; answering EIO");
                    (EIO, Vec::new())
                }
            };
            if error != 0 {
                stats.error_replies.fetch_add(1, Relaxed);
            }
            // The writer is gone only if the socket failed: nothing to do.
            let _ = tx
                .send(Reply {
                    cookie,
                    error,
                    data,
                })
                .await;
            drop(permits);
        });
    }
}

/// After a clean end (replies sent, FIN sent), discards whatever the client
/// still sends until it closes, for at most [`LINGER_MS`] and [`LINGER_BYTES_MAX`]:
/// closing a socket with unread input would reset the connection and could
/// destroy replies the client has not read yet.
async fn linger(mut reader: OwnedReadHalf) {
    let drain = async {
        let mut sink = vec![0u8; 64 * 1024];
        let mut total = 0;
        while total < LINGER_BYTES_MAX {
            match reader.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_millis(LINGER_MS), drain).await;
}

/// Checks flags and range; the errno to answer with if the request is bad.
fn validate(req: &RequestHeader, payload: Vec<u8>, size: u64) -> Result<Op, u32> {
    let allowed = match req.kind {
        CMD_READ | CMD_FLUSH => 0,
        CMD_WRITE | CMD_TRIM => CMD_FLAG_FUA,
        CMD_WRITE_ZEROES => CMD_FLAG_FUA | CMD_FLAG_NO_HOLE,
        _ => return Err(EINVAL),
    };
    if req.flags & !allowed != 0 {
        return Err(EINVAL);
    }
    let fua = req.flags & CMD_FLAG_FUA != 0;
    let (offset, len) = (req.offset, u64::from(req.length));
    if req.kind == CMD_FLUSH {
        return Ok(Op::Flush);
    }
    let past_end = offset.checked_add(len).is_none_or(|end| end > size);
    let beyond = if matches!(req.kind, CMD_WRITE | CMD_WRITE_ZEROES) {
        ENOSPC
    } else {
        EINVAL
    };
    if past_end || (req.kind == CMD_READ && req.length > NBD_PAYLOAD_BYTES_MAX) {
        return Err(if past_end { beyond } else { EINVAL });
    }
    if len == 0 {
        return Ok(Op::Noop);
    }
    Ok(match req.kind {
        CMD_READ => Op::Read {
            offset,
            len: req.length,
        },
        CMD_WRITE => Op::Write {
            offset,
            data: payload,
            fua,
        },
        CMD_WRITE_ZEROES => Op::WriteZeroes { offset, len, fua },
        _ => Op::Trim { offset, len, fua },
    })
}

/// Runs one request against the volume; the read data, if any.
async fn execute(op: Op, io: &AlignedIo) -> Result<Vec<u8>, BackendError> {
    let fua = match op {
        Op::Read { offset, len } => return io.read(offset, len).await,
        Op::Write {
            offset,
            ref data,
            fua,
        } => {
            io.write(offset, data).await?;
            fua
        }
        Op::WriteZeroes { offset, len, fua } => {
            io.write_zeroes(offset, len).await?;
            fua
        }
        Op::Trim { offset, len, fua } => {
            io.trim(offset, len).await?;
            fua
        }
        Op::Flush => true,
        Op::Noop => false,
    };
    if fua {
        io.volume().flush().await?;
    }
    Ok(Vec::new())
}

/// The NBD error for a backend failure.
fn errno(error: &BackendError) -> u32 {
    match error {
        BackendError::NoSpace => ENOSPC,
        _ => EIO,
    }
}

/// The single writer of a connection: sends replies as they arrive,
/// batching whatever is ready into one flush.
async fn write_replies(
    writer: OwnedWriteHalf,
    mut rx: mpsc::Receiver<Reply>,
) -> std::io::Result<()> {
    let mut out = BufWriter::with_capacity(WRITE_BUFFER_BYTES, writer);
    while let Some(reply) = rx.recv().await {
        write_reply(&mut out, &reply).await?;
        while let Ok(reply) = rx.try_recv() {
            write_reply(&mut out, &reply).await?;
        }
        out.flush().await?;
    }
    out.shutdown().await
}

async fn write_reply(out: &mut BufWriter<OwnedWriteHalf>, reply: &Reply) -> std::io::Result<()> {
    out.write_all(&simple_reply(reply.error, reply.cookie))
        .await?;
    if reply.error == 0 && !reply.data.is_empty() {
        out.write_all(&reply.data).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(kind: u16, flags: u16, offset: u64, length: u32) -> RequestHeader {
        RequestHeader {
            flags,
            kind,
            cookie: 7,
            offset,
            length,
        }
    }

    #[test]
    fn validate_ranges_and_flags() {
        let size = 1 << 20;
        let ok = |r| validate(&r, Vec::new(), size).is_ok();
        let err = |r| validate(&r, Vec::new(), size).err();
        assert!(ok(req(CMD_READ, 0, 0, 4096)));
        assert_eq!(err(req(CMD_READ, 0, size, 1)), Some(EINVAL));
        assert_eq!(err(req(CMD_READ, 0, u64::MAX, 2)), Some(EINVAL));
        assert_eq!(err(req(CMD_WRITE, 0, size - 1, 2)), Some(ENOSPC));
        assert_eq!(err(req(CMD_WRITE_ZEROES, 0, size, 1)), Some(ENOSPC));
        assert_eq!(err(req(CMD_TRIM, 0, size, 1)), Some(EINVAL));
        assert_eq!(err(req(CMD_READ, CMD_FLAG_FUA, 0, 1)), Some(EINVAL));
        assert_eq!(err(req(99, 0, 0, 1)), Some(EINVAL));
        assert!(ok(req(
            CMD_WRITE_ZEROES,
            CMD_FLAG_FUA | CMD_FLAG_NO_HOLE,
            0,
            1
        )));
        assert!(matches!(
            validate(&req(CMD_READ, 0, 0, 0), Vec::new(), size),
            Ok(Op::Noop)
        ));
        let huge = validate(&req(CMD_READ, 0, 0, u32::MAX), Vec::new(), u64::MAX);
        assert_eq!(huge.err(), Some(EINVAL));
    }
}
