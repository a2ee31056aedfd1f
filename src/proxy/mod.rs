//! Every client request, from the accepted connection to the answer.
//!
//! - [`connection`]: the keep-alive loop; reads each head under the head deadline, has it
//!   judged by [`request`] (the one validator), and serves it or hands it to pingora, the
//!   socket wrapped in a [`passthrough::Passthrough`] (one request's bytes, or a replayed
//!   h2c preface).
//! - [`router`]: the route and what the request is on it ([`router::Dispatch`]), the one
//!   decision both paths act on; [`handshake`] tells genuine WebSocket handshakes.
//! - [`poll`]: the poll core; hit, `304`, hold, cursor array, fallback or refusal, decided
//!   once as an [`answer::Answer`].
//! - Writers, which decide nothing: [`wire`] on pollgate's own connections, [`session`]
//!   through a pingora session.
//! - [`forward`]: bodiless requests forwarded from the connection loop, answers read by
//!   [`response`], connections from [`upstream`] (which also serves poll fallbacks and
//!   [`access`], `auth_request`, through pingora's HTTP/1 client). [`headers`]: the hop-by-hop
//!   and `X-Forwarded-*` rules of both paths.
//! - [`tunnel`]: WebSocket tunnels: their slots under `max_websockets`, their metrics, and the
//!   relay of both sockets after the `101` the forward path relayed.
//! - [`gateway`]: the `ProxyHttp` implementation for what pingora proxies (bodies, handshakes
//!   with a body, everything with `fast_paths: false`).
//! - [`state`]: the shared [`GatewayState`]; [`log`]: counting and the access log.

pub mod access;
pub mod answer;
pub mod connection;
pub mod cors;
pub mod fallback;
pub mod forward;
pub mod gateway;
pub mod h2;
pub mod handshake;
pub mod headers;
pub mod log;
pub mod passthrough;
pub mod poll;
pub mod request;
pub mod response;
pub mod router;
pub mod session;
pub mod shadow;
pub mod slots;
pub mod state;
pub mod tunnel;
pub mod upstream;
pub mod wire;

pub use gateway::Gateway;
pub use state::GatewayState;
