//! [`BoundedListener`]: the admin endpoint's TCP listener with a bound on
//! open connections ([`ADMIN_CONNECTIONS_MAX`](crate::limits::ADMIN_CONNECTIONS_MAX); further clients wait in the
//! kernel's accept backlog) and an idle timeout ([`ADMIN_IDLE_TIMEOUT_MS`](crate::limits::ADMIN_IDLE_TIMEOUT_MS)): a
//! connection on which nothing is read or written for that long fails, so
//! idle or stalled clients cannot hold every slot. (axum's server has
//! neither by itself.)

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use crate::limits::ADMIN_ACCEPT_RETRY_MS;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

/// See the module docs.
#[derive(Debug)]
pub struct BoundedListener {
    inner: TcpListener,
    slots: Arc<Semaphore>,
    idle: Duration,
}

impl BoundedListener {
    pub fn new(inner: TcpListener, connections_max: usize, idle: Duration) -> Self {
        assert!(connections_max > 0, "at least one connection");
        Self {
            inner,
            slots: Arc::new(Semaphore::new(connections_max)),
            idle,
        }
    }
}

/// One accepted connection, holding its slot until dropped.
#[derive(Debug)]
pub struct BoundedStream {
    stream: TcpStream,
    idle: Duration,
    deadline: Pin<Box<Sleep>>,
    _slot: OwnedSemaphorePermit,
}

impl BoundedStream {
    fn touch(&mut self) {
        self.deadline.as_mut().reset(Instant::now() + self.idle);
    }

    /// On `Pending`, whether the idle deadline has passed.
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        self.deadline.as_mut().poll(cx).is_ready()
    }
}

fn timed_out() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "admin connection idle")
}

impl AsyncRead for BoundedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(result) => {
                this.touch();
                Poll::Ready(result)
            }
            Poll::Pending if this.expired(cx) => Poll::Ready(Err(timed_out())),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncWrite for BoundedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        match Pin::new(&mut this.stream).poll_write(cx, buf) {
            Poll::Ready(result) => {
                this.touch();
                Poll::Ready(result)
            }
            Poll::Pending if this.expired(cx) => Poll::Ready(Err(timed_out())),
            Poll::Pending => Poll::Pending,
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

impl axum::serve::Listener for BoundedListener {
    type Io = BoundedStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (BoundedStream, SocketAddr) {
        let slot = Arc::clone(&self.slots)
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        loop {
            match self.inner.accept().await {
                Ok((stream, addr)) => {
                    let _ = stream.set_nodelay(true);
                    let deadline = Box::pin(tokio::time::sleep(self.idle));
                    let stream = BoundedStream {
                        stream,
                        idle: self.idle,
                        deadline,
                        _slot: slot,
                    };
                    return (stream, addr);
                }
                Err(error) => {
                    tracing::debug!(%error, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(ADMIN_ACCEPT_RETRY_MS)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::serve::Listener as _;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn slots_are_bounded_and_idle_connections_time_out() {
        let inner = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = inner.local_addr().unwrap();
        let mut listener = BoundedListener::new(inner, 1, Duration::from_millis(200));
        let mut a = TcpStream::connect(addr).await.unwrap();
        let _b = TcpStream::connect(addr).await.unwrap();
        let (mut first, _) = listener.accept().await;
        // The second waits for the first's slot.
        let second = tokio::time::timeout(Duration::from_millis(100), listener.accept()).await;
        assert!(second.is_err(), "a second slot was handed out");
        a.write_all(b"hi").await.unwrap();
        let mut buf = [0u8; 2];
        first.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"hi");
        let error = first.read(&mut buf).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        drop(first);
        let accepted = tokio::time::timeout(Duration::from_secs(2), listener.accept()).await;
        assert!(accepted.is_ok(), "the freed slot was not reused");
    }
}
