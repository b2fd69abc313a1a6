//! The connection's state.

/// The connection's state, as seen by [`Client::state`](crate::Client::state).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Connecting,
    Open,
    /// Gave up reconnecting, or closed by the application.
    Closed,
}
