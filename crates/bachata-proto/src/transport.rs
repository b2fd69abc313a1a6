//! Transport message types (integer `type`), as in the seed protocol.

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
