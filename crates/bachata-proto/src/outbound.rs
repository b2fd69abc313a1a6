//! Frames the server sends. Each is built as text once and sent as is.

//!
//! The arguments are the checked identifier types, so that a message id and
//! a channel cannot be swapped by mistake.

use crate::error::ErrorCode;
use crate::frame::push_json_str;
use crate::ids::{Channel, DeviceId, MessageId};

/// `{"type":1000,"data":{"channel":..,"device":..,"secret":..}}`
pub fn ready(channel: &Channel, device: Option<&DeviceId>, secret: Option<&str>) -> String {
    let mut out = String::from(r#"{"type":1000,"data":{"channel":"#);
    push_json_str(&mut out, channel.as_str());
    if let Some(device) = device {
        out.push_str(r#","device":"#);
        push_json_str(&mut out, device.as_str());
    }
    if let Some(secret) = secret {
        out.push_str(r#","secret":"#);
        push_json_str(&mut out, secret);
    }
    out.push_str("}}");
    out
}

/// `{"type":100,"data":id}`: stored for delivery.
pub fn received(id: &MessageId) -> String {
    let id = id.as_str();
    let mut out = String::with_capacity(24 + id.len());
    out.push_str(r#"{"type":100,"data":"#);
    push_json_str(&mut out, id);
    out.push('}');
    out
}

/// `{"type":300,"data":id,"from":receiver}`: delivered to `receiver`.
pub fn delivered(id: &MessageId, receiver: &Channel) -> String {
    let (id, receiver) = (id.as_str(), receiver.as_str());
    let mut out = String::with_capacity(40 + id.len() + receiver.len());
    out.push_str(r#"{"type":300,"data":"#);
    push_json_str(&mut out, id);
    out.push_str(r#","from":"#);
    push_json_str(&mut out, receiver);
    out.push('}');
    out
}

/// `{"type":1002}`
pub fn pong() -> &'static str {
    r#"{"type":1002}"#
}

/// `{"type":400,"data":id|null,"error":code,"reason":text}`
pub fn rejected(id: Option<&MessageId>, code: ErrorCode, reason: &str) -> String {
    rejected_as(id, code.as_str(), reason)
}

/// [`rejected`] with a code of the application's own (`app_*`, from a
/// route hook: protocol.md section 10) as the `error`.
pub fn rejected_as(id: Option<&MessageId>, code: &str, reason: &str) -> String {
    let mut out = String::from(r#"{"type":400,"data":"#);
    match id {
        Some(id) => push_json_str(&mut out, id.as_str()),
        None => out.push_str("null"),
    }
    out.push_str(r#","error":"#);
    push_json_str(&mut out, code);
    out.push_str(r#","reason":"#);
    push_json_str(&mut out, reason);
    out.push('}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn v(text: &str) -> Value {
        serde_json::from_str(text).expect("valid JSON")
    }

    fn id(text: &str) -> MessageId {
        MessageId::new(text).expect("id")
    }

    fn ch(text: &str) -> Channel {
        Channel::new(text).expect("channel")
    }

    #[test]
    fn outbound_frames_are_valid_json() {
        assert_eq!(
            v(&ready(
                &ch("al\"ice"),
                Some(&DeviceId::new("phone").expect("device")),
                None
            )),
            json!({"type":1000,"data":{"channel":"al\"ice","device":"phone"}})
        );
        assert_eq!(v(&received(&id("m1"))), json!({"type":100,"data":"m1"}));
        assert_eq!(
            v(&delivered(&id("m1"), &ch("bob"))),
            json!({"type":300,"data":"m1","from":"bob"})
        );
        assert_eq!(v(pong()), json!({"type":1002}));
        assert_eq!(
            v(&rejected(None, ErrorCode::InvalidJson, "bad")),
            json!({"type":400,"data":null,"error":"invalid_json","reason":"bad"})
        );
        assert_eq!(
            v(&rejected(Some(&id("x")), ErrorCode::QueueFull, "full")),
            json!({"type":400,"data":"x","error":"queue_full","reason":"full"})
        );
    }
}
