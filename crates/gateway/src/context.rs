//! What every step of a request reads: the connection facts and the
//! request's parts, id and peer. A leaf module (imports nothing of the
//! gateway's but the state), so the steps never import each other for it.

use std::net::SocketAddr;

use http::request::Parts;

use crate::GatewayState;

/// Facts about the connection a request came in on, put into the request
/// extensions by [`crate::serve`]. Without it, `http` and the Host port are
/// assumed.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    /// The listener's local address.
    pub local: SocketAddr,
    /// Whether the connection is TLS.
    pub tls: bool,
}

/// One request as every step sees it.
pub(crate) struct Ctx<'a> {
    pub state: &'a GatewayState,
    pub parts: &'a Parts,
    pub peer: SocketAddr,
    pub request_id: &'a str,
}

impl Ctx<'_> {
    /// A header's value when it is visible ASCII.
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.parts.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Whether the connection is TLS.
    pub(crate) fn tls(&self) -> bool {
        self.parts
            .extensions
            .get::<ConnInfo>()
            .is_some_and(|c| c.tls)
    }
}
