//! The messages an application sends and receives.

use bachata_proto::{DataMessage, MessageId};
use serde_json::Value;
use serde_json::value::RawValue;

use crate::error::ClientError;

/// A data message to send.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub message: DataMessage,
}

impl Outgoing {
    /// A `"direct"` message to channel `to`.
    pub fn direct(to: &str, data: Value) -> Self {
        Self::new("direct", to, data)
    }

    /// A `"group"` message to group `group`.
    pub fn group(group: &str, data: Value) -> Self {
        Self::new("group", group, data)
    }

    /// A message of any `type` with this `dest` and `data`.
    pub fn new(kind: &str, dest: &str, data: Value) -> Self {
        let mut message = DataMessage::new(kind);
        message.dest = Some(dest.to_owned());
        message.data = RawValue::from_string(data.to_string()).ok();
        Outgoing { message }
    }

    /// Sets the id (one is generated when absent).
    pub fn id(mut self, id: &str) -> Result<Self, ClientError> {
        self.message.id =
            Some(MessageId::new(id).map_err(|e| ClientError::Invalid(format!("id: {e}")))?);
        Ok(self)
    }
}

/// A received data message.
#[derive(Debug, Clone)]
pub struct Received {
    /// The message as JSON.
    pub message: Value,
    /// The exact text the server sent.
    pub raw: String,
}

impl Received {
    pub fn id(&self) -> Option<&str> {
        self.message["id"].as_str()
    }

    pub fn from(&self) -> Option<&str> {
        self.message["from"].as_str()
    }
}
