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
pub mod transport;

pub use error::{ErrorCode, ProtoError};
pub use frame::{DataMessage, Extra, Inbound, Limits, Rejected, check_depth, parse_frame};
pub use ids::{Channel, DeviceId, GroupId, IdError, MessageId};
pub use outbound::{delivered, pong, ready, received, rejected, rejected_as};
