//! What a request is, decided once before anything else runs: one of ESB's
//! own endpoints, an Invoke API call, a routed API request, or nothing.
//!
//! A route the template declares explicitly always wins; ESB's own
//! endpoints and the Invoke API only hide a greedy (`{proxy+}`) or
//! `$default` route.

use std::net::SocketAddr;

use http::Method;
use http::request::Parts;

use crate::GatewayState;
use crate::config::ApiKind;
use crate::invoke_api::{self, ApiCall};
use crate::own::{self, OwnEndpoint};
use crate::router::{RequestPath, RouteMatch};

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

/// The typed request.
pub(crate) enum Classified<'r, 'p> {
    /// `/_esb/*`, JWKS, OpenID configuration, login.
    Own(OwnEndpoint),
    /// `/2015-03-31/functions/...`.
    Invoke(ApiCall),
    /// A route of an API.
    Route(RouteMatch<'r, 'p>),
    /// Nothing answers; `kind` says whose "no route" answer to give.
    NoRoute(ApiKind),
}

/// Sorts a request whose path parsed into one of the [`Classified`] kinds.
pub(crate) fn classify<'r, 'p>(
    state: &'r GatewayState,
    method: &Method,
    path: &RequestPath<'p>,
) -> Classified<'r, 'p> {
    let found = state.inner.router.find(Some(method), path);
    if !matches!(&found, Ok(m) if m.is_explicit()) {
        if let Some(endpoint) = own::recognise(state, method, path.raw) {
            return Classified::Own(endpoint);
        }
        if let Some(call) = invoke_api::parse(method, path.raw) {
            return Classified::Invoke(call);
        }
    }
    match found {
        Ok(m) => Classified::Route(m),
        Err(no) => Classified::NoRoute(no.kind),
    }
}
