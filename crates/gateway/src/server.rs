//! The listener: accepts TCP (optionally TLS) connections and serves HTTP/1.1
//! and HTTP/2 on them with hyper, draining in-flight requests on shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

use crate::context::ConnInfo;
use crate::pipeline::handle;
use crate::tls::TlsConfig;
use crate::{GatewayError, GatewayState};

/// Time a client gets to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a client gets to send a request's headers (slowloris).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves the gateway on `listener` until `shutdown` resolves, then stops
/// accepting, lets in-flight requests finish (bounded by
/// `settings.drain_timeout`) and waits the same bound for background
/// (`Event`) invocations.
pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsConfig>,
    state: GatewayState,
    shutdown: impl Future<Output = ()>,
) -> Result<(), GatewayError> {
    let local = listener.local_addr()?;
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .keep_alive(true)
        .max_headers(100);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(100)
        .keep_alive_interval(Some(Duration::from_secs(30)));
    let builder = Arc::new(builder);
    let acceptor = tls.map(|t| t.acceptor());
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    tracing::info!(%local, tls = acceptor.is_some(), "gateway listening");

    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let info = ConnInfo {
            local,
            tls: acceptor.is_some(),
        };
        let state = state.clone();
        let builder = Arc::clone(&builder);
        let watcher = graceful.watcher();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let Some(acceptor) = acceptor else {
                serve_io(&builder, watcher, TokioIo::new(stream), state, peer, info).await;
                return;
            };
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls_stream)) => {
                    let io = TokioIo::new(tls_stream);
                    serve_io(&builder, watcher, io, state, peer, info).await;
                }
                Ok(Err(e)) => tracing::debug!(%peer, "TLS handshake failed: {e}"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        });
    }

    drop(listener);
    let drain = state.settings().drain_timeout;
    tracing::info!("gateway draining connections (up to {drain:?})");
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("gateway drain timed out; closing remaining connections");
    }
    if let Some(q) = state.event_queue() {
        // Running Event invocations finish and are recorded; the rest stays on disk.
        q.shutdown();
    }
    Ok(())
}

async fn serve_io<I>(
    builder: &Builder<TokioExecutor>,
    watcher: hyper_util::server::graceful::Watcher,
    io: TokioIo<I>,
    state: GatewayState,
    peer: SocketAddr,
    info: ConnInfo,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |mut req: hyper::Request<Incoming>| {
        // The latest routes (hot reload swaps them between requests).
        let state = state.current();
        req.extensions_mut().insert(info);
        let log = state.request_observer().map(|_| {
            (
                req.method().clone(),
                req.uri().path().to_string(),
                std::time::Instant::now(),
            )
        });
        async move {
            let response = handle(&state, req, peer).await;
            if let (Some(observe), Some((method, path, started))) = (state.request_observer(), log)
            {
                observe(
                    &method,
                    &path,
                    response.status().as_u16(),
                    started.elapsed(),
                );
            }
            Ok::<_, Infallible>(response)
        }
    });
    let conn = builder.serve_connection(io, service);
    if let Err(e) = watcher.watch(conn).await {
        tracing::debug!(%peer, "connection ended with error: {e}");
    }
}
