//! What a request is, decided once before anything else runs: one of ESB's
//! own endpoints, an Invoke API call, a routed API request, or nothing.
//!
//! A route the template declares explicitly always wins; ESB's own
//! endpoints and the Invoke API only hide a greedy (`{proxy+}`) or
//! `$default` route.

use http::Method;

use crate::GatewayState;
use crate::config::ApiKind;
use crate::invoke_api::{self, ApiCall};
use crate::own::{self, OwnEndpoint};
use crate::router::{RequestPath, RouteMatch};

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
