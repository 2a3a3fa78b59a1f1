//! The listener: TCP (optionally TLS) connections served as HTTP/1.1 and
//! HTTP/2 by the shared listener machinery (`esb-net`: header, body, idle,
//! write and handshake timeouts, the connection limit, early answers),
//! draining in-flight requests on shutdown.

use std::future::Future;

use crate::context::ConnInfo;
use crate::pipeline::handle;
use crate::tls::TlsConfig;
use crate::{GatewayError, GatewayState};

/// Serves the gateway on `listener` until `shutdown` resolves, then stops
/// accepting, lets in-flight requests finish (bounded by
/// `settings.drain_timeout`) and waits the same bound for background
/// (`Event`) invocations.
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: Option<TlsConfig>,
    state: GatewayState,
    shutdown: impl Future<Output = ()>,
) -> Result<(), GatewayError> {
    let local = listener.local_addr()?;
    let settings = state.settings();
    let options = esb_net::Options {
        name: "gateway",
        limits: settings.listener,
        http: esb_net::HttpLimits {
            max_headers: Some(settings.max_headers),
            // The exact limit is checked per request (`crate::edge`); this
            // hard cap only bounds what hyper buffers before that.
            max_head_bytes: Some(settings.max_head_bytes.saturating_mul(2)),
            max_streams: Some(100),
        },
        tls: tls.map(|t| t.acceptor()),
        drain: Some(settings.drain_timeout),
        // `crate::edge` refuses repeated or conflicting framing headers.
        head_facts: true,
    };
    tracing::info!(%local, tls = options.tls.is_some(), "gateway listening");
    let serving = state.clone();
    esb_net::serve_with(listener, options, shutdown, move |mut req| {
        // The latest routes (hot reload swaps them between requests).
        let state = serving.current();
        async move {
            let peer = req.extensions().get::<esb_net::Peer>().copied();
            let peer_addr = peer.map_or(local, |p| p.addr);
            req.extensions_mut().insert(ConnInfo {
                local,
                tls: peer.is_some_and(|p| p.tls),
            });
            let log = state.request_observer().map(|_| {
                (
                    req.method().clone(),
                    req.uri().path().to_string(),
                    std::time::Instant::now(),
                )
            });
            let response = handle(&state, req, peer_addr).await;
            if let (Some(observe), Some((method, path, started))) = (state.request_observer(), log)
            {
                observe(
                    &method,
                    &path,
                    response.status().as_u16(),
                    started.elapsed(),
                );
            }
            response
        }
    })
    .await;
    if let Some(q) = state.event_queue() {
        // Running Event invocations finish and are recorded; the rest stays on disk.
        q.shutdown();
    }
    Ok(())
}
