//! The Bachata wire protocol: message types, a JSON codec with limits, and the
//! error codes of the contract (protocol.md section 3).
//!
//! This crate does no I/O. The server, the client and the benchmark share it so
//! that a frame means the same thing everywhere.
//!
//! Parsing never panics, whatever the input: the frame size is checked by the
//! transport, the nesting depth by a linear pre-scan ([`check_depth`]) before
//! serde sees the text, and every field type by [`parse_frame`].
//! `data` is kept as raw JSON text ([`serde_json::value::RawValue`]) so that a
//! forwarded message and a signature see exactly what the client wrote.

mod error;
mod frame;
mod ids;
mod outbound;
pub mod sign;

pub use error::{ErrorCode, ProtoError};
pub use frame::{DataMessage, Extra, Inbound, Limits, Rejected, check_depth, parse_frame};
pub use ids::{Channel, DeviceId, GroupId, IdError, MessageId};
pub use outbound::{delivered, pong, ready, received, rejected};

/// Transport message types (integer `type`), as in the seed protocol.
pub mod transport {
    /// server -> sender: the message is stored for delivery.
    pub const RECEIVED: i64 = 100;
    /// receiver -> server: the receiver got the message.
    pub const ACK: i64 = 200;
    /// server -> sender: the message was delivered.
    pub const DELIVERED: i64 = 300;
    /// server -> sender: the message was rejected (extension).
    pub const REJECTED: i64 = 400;
    /// server -> client: the connection is registered.
    pub const READY: i64 = 1000;
    /// either way: ping, answered by pong.
    pub const PING: i64 = 1001;
    /// either way: the answer to ping.
    pub const PONG: i64 = 1002;
}
