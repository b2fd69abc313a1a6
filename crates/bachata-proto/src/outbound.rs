//! Frames the server sends. Each is built as text once and sent as is.

use crate::error::ErrorCode;
use crate::frame::push_json_str;

/// `{"type":1000,"data":{"channel":..,"device":..,"secret":..}}`
pub fn ready(channel: &str, device: Option<&str>, secret: Option<&str>) -> String {
    let mut out = String::from(r#"{"type":1000,"data":{"channel":"#);
    push_json_str(&mut out, channel);
    if let Some(device) = device {
        out.push_str(r#","device":"#);
        push_json_str(&mut out, device);
    }
    if let Some(secret) = secret {
        out.push_str(r#","secret":"#);
        push_json_str(&mut out, secret);
    }
    out.push_str("}}");
    out
}

/// `{"type":100,"data":id}`: stored for delivery.
pub fn received(id: &str) -> String {
    let mut out = String::with_capacity(24 + id.len());
    out.push_str(r#"{"type":100,"data":"#);
    push_json_str(&mut out, id);
    out.push('}');
    out
}

/// `{"type":300,"data":id,"from":receiver}`: delivered to `receiver`.
pub fn delivered(id: &str, receiver: &str) -> String {
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
pub fn rejected(id: Option<&str>, code: ErrorCode, reason: &str) -> String {
    let mut out = String::from(r#"{"type":400,"data":"#);
    match id {
        Some(id) => push_json_str(&mut out, id),
        None => out.push_str("null"),
    }
    out.push_str(r#","error":"#);
    push_json_str(&mut out, code.as_str());
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

    #[test]
    fn outbound_frames_are_valid_json() {
        assert_eq!(
            v(&ready("al\"ice", Some("phone"), None)),
            json!({"type":1000,"data":{"channel":"al\"ice","device":"phone"}})
        );
        assert_eq!(v(&received("m1")), json!({"type":100,"data":"m1"}));
        assert_eq!(
            v(&delivered("m1", "bob")),
            json!({"type":300,"data":"m1","from":"bob"})
        );
        assert_eq!(v(pong()), json!({"type":1002}));
        assert_eq!(
            v(&rejected(None, ErrorCode::InvalidJson, "bad")),
            json!({"type":400,"data":null,"error":"invalid_json","reason":"bad"})
        );
        assert_eq!(
            v(&rejected(Some("x"), ErrorCode::QueueFull, "full")),
            json!({"type":400,"data":"x","error":"queue_full","reason":"full"})
        );
    }
}
