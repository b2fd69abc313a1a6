//! Dev-only helpers for bachata's tests.
//!
//! - [`conformance`]: the `Store` conformance suite that every backend runs,
//!   usually through [`store_conformance_tests!`].
//! - [`client`]: a WebSocket test client over tokio-tungstenite (connect as
//!   a channel, send, expect 100/300, sync with a ping), and `refused` for
//!   handshakes that must fail.
//! - [`raw`]: a WebSocket client over a bare socket, for what no library
//!   would do (pings never read, close codes that are not allowed).
//! - [`http`]: HTTP/1.1 requests over a bare socket (`get`, and `send` for
//!   requests with headers of the test's choosing).
//! - [`redis`] and [`redis_cluster`]: a real `redis-server` (or a cluster of
//!   them) on free loopback ports, stopped on drop.
//! - [`tls`]: a throw-away certificate authority and server certificate.

pub mod client;
pub mod conformance;
pub mod http;
pub mod raw;
pub mod redis;
pub mod redis_cluster;
pub mod tls;
