//! Limits of the agent's gRPC port (robustness H10): at most
//! [`MAX_CONNECTIONS`] open connections (more are closed at accept), and
//! the HTTP/2 settings in [`server_builder`] (concurrent streams and calls
//! per connection, keep-alive pings that drop dead peers after 30 + 60 s,
//! a per-call time limit). Together with the token check ([`esb_agent_client::auth`]) a
//! stranger can neither call the agent nor hold it open.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tonic::transport::server::{Connected, TcpConnectInfo};

/// Most open connections to the agent port (clients hold one each).
pub const MAX_CONNECTIONS: usize = 64;
/// Most calls in flight on one connection.
pub const MAX_CALLS_PER_CONNECTION: usize = 64;
/// Longest call (a base image build takes minutes; `WatchEvents` answers
/// at once and then streams).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(20 * 60);

/// The tonic server with the agent's limits.
pub fn server_builder() -> tonic::transport::Server {
    tonic::transport::Server::builder()
        .timeout(CALL_TIMEOUT)
        .concurrency_limit_per_connection(MAX_CALLS_PER_CONNECTION)
        .max_concurrent_streams(Some(u32::try_from(MAX_CALLS_PER_CONNECTION).unwrap_or(64)))
        // Lenient: a loaded host (a base image build, many containers
        // starting) must not read as a dead peer.
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(60)))
}

/// An accepted connection counted against [`MAX_CONNECTIONS`] until dropped.
pub struct Counted {
    stream: TcpStream,
    open: Arc<AtomicUsize>,
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Connected for Counted {
    type ConnectInfo = TcpConnectInfo;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Accepted connections of `listener`, at most `max` open at once: one
/// more is closed right away (and logged once per burst).
pub fn limited_incoming(
    listener: TcpListener,
    max: usize,
) -> impl Stream<Item = io::Result<Counted>> {
    let open = Arc::new(AtomicUsize::new(0));
    futures_util::stream::unfold((listener, open), move |(listener, open)| async move {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    // EMFILE and the like: wait instead of spinning.
                    tracing::warn!("agent accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            if open.fetch_add(1, Ordering::AcqRel) >= max {
                open.fetch_sub(1, Ordering::AcqRel);
                tracing::warn!("agent: refused a connection from {peer}: {max} already open");
                drop(stream);
                continue;
            }
            let _ = stream.set_nodelay(true);
            let counted = Counted {
                stream,
                open: open.clone(),
            };
            return Some((Ok(counted), (listener, open)));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    #[tokio::test]
    async fn connections_over_the_limit_are_closed() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let incoming = limited_incoming(listener, 2);
        tokio::pin!(incoming);
        let _a = TcpStream::connect(addr).await.unwrap();
        let _b = TcpStream::connect(addr).await.unwrap();
        let first = incoming.next().await.unwrap().unwrap();
        let _second = incoming.next().await.unwrap().unwrap();
        // A third is closed at accept while two are open...
        let mut c = TcpStream::connect(addr).await.unwrap();
        let next = tokio::time::timeout(Duration::from_millis(300), incoming.next()).await;
        assert!(next.is_err(), "the third connection must not be handed out");
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(
            Duration::from_secs(2),
            tokio::io::AsyncReadExt::read(&mut c, &mut byte),
        )
        .await
        .unwrap();
        assert!(matches!(read, Ok(0) | Err(_)), "closed by the agent");
        // ...and accepted again once one closes.
        drop(first);
        let _d = TcpStream::connect(addr).await.unwrap();
        let fourth = tokio::time::timeout(Duration::from_secs(2), incoming.next()).await;
        assert!(fourth.is_ok());
    }
}
