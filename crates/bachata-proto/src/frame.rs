//! Parsing client frames into [`Inbound`] messages, with limits.

use std::borrow::Cow;
use std::fmt::{self, Write as _};

use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;

use crate::error::ProtoError;
use crate::ids::MessageId;
use crate::transport;

/// Limits applied while parsing a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Deepest accepted nesting of JSON objects and arrays (the message object
    /// itself is level 1).
    pub max_depth: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_depth: 32 }
    }
}

/// A frame from a client, once parsed and checked.
#[derive(Debug, Clone, PartialEq)]
pub enum Inbound {
    /// A data message (`type` is a string).
    Data(DataMessage),
    /// `{"type":200,"data":id}`: the receiver got message `id`.
    Ack(MessageId),
    /// `{"type":1001}`: answer with pong.
    Ping,
    /// `{"type":1002}`: nothing to do.
    Pong,
}

/// A frame that was refused, with the message id when one could be read, so
/// the 400 can name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub id: Option<MessageId>,
    pub error: ProtoError,
}

impl From<ProtoError> for Rejected {
    fn from(error: ProtoError) -> Self {
        Rejected { id: None, error }
    }
}

/// A data message (`spec.md` section 3).
///
/// `data` and unknown fields are kept as the exact JSON text the client sent.
#[derive(Debug, Clone)]
pub struct DataMessage {
    pub id: Option<MessageId>,
    /// The `type` field: routes pick messages by it.
    pub kind: String,
    /// Unix time in milliseconds.
    pub time: Option<i64>,
    pub from: Option<String>,
    pub dest: Option<String>,
    pub sign: Option<String>,
    pub data: Option<Box<RawValue>>,
    /// Other fields, in the order they came, forwarded untouched.
    pub extra: Vec<(String, Box<RawValue>)>,
}

impl PartialEq for DataMessage {
    fn eq(&self, other: &Self) -> bool {
        fn raw(v: &Option<Box<RawValue>>) -> Option<&str> {
            v.as_deref().map(RawValue::get)
        }
        self.id == other.id
            && self.kind == other.kind
            && self.time == other.time
            && self.from == other.from
            && self.dest == other.dest
            && self.sign == other.sign
            && raw(&self.data) == raw(&other.data)
            && self.extra.len() == other.extra.len()
            && self
                .extra
                .iter()
                .zip(&other.extra)
                .all(|((ka, va), (kb, vb))| ka == kb && va.get() == vb.get())
    }
}

impl DataMessage {
    /// A message of type `kind` with nothing else set.
    pub fn new(kind: impl Into<String>) -> Self {
        DataMessage {
            id: None,
            kind: kind.into(),
            time: None,
            from: None,
            dest: None,
            sign: None,
            data: None,
            extra: Vec::new(),
        }
    }

    /// The exact text of `data` as received, or "" when absent (what a
    /// signature covers).
    pub fn data_text(&self) -> &str {
        self.data.as_deref().map_or("", RawValue::get)
    }

    /// Serializes the message as one JSON object: known fields first, in a
    /// fixed order, then the unknown ones in their original order.
    pub fn to_json(&self) -> String {
        let mut out = String::with_capacity(64 + self.data_text().len());
        out.push('{');
        let mut first = true;
        let mut key = |out: &mut String, name: &str| {
            if !first {
                out.push(',');
            }
            first = false;
            push_json_str(out, name);
            out.push(':');
        };
        if let Some(id) = &self.id {
            key(&mut out, "id");
            push_json_str(&mut out, id.as_str());
        }
        key(&mut out, "type");
        push_json_str(&mut out, &self.kind);
        if let Some(time) = self.time {
            key(&mut out, "time");
            // Writing to a String cannot fail.
            let _ = write!(out, "{time}");
        }
        if let Some(from) = &self.from {
            key(&mut out, "from");
            push_json_str(&mut out, from);
        }
        if let Some(dest) = &self.dest {
            key(&mut out, "dest");
            push_json_str(&mut out, dest);
        }
        if let Some(data) = &self.data {
            key(&mut out, "data");
            out.push_str(data.get());
        }
        if let Some(sign) = &self.sign {
            key(&mut out, "sign");
            push_json_str(&mut out, sign);
        }
        for (name, value) in &self.extra {
            key(&mut out, name);
            out.push_str(value.get());
        }
        out.push('}');
        out
    }
}

/// Appends `s` as a JSON string literal.
pub(crate) fn push_json_str(out: &mut String, s: &str) {
    // Ids, channels and types almost never need escapes: one scan that the
    // compiler vectorizes, then a single copy.
    if !s.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\') {
        out.reserve(s.len() + 2);
        out.push('"');
        out.push_str(s);
        out.push('"');
        return;
    }
    out.push('"');
    let mut start = 0;
    for (i, b) in s.bytes().enumerate() {
        let escape: Option<&str> = match b {
            b'"' => Some("\\\""),
            b'\\' => Some("\\\\"),
            b'\n' => Some("\\n"),
            b'\r' => Some("\\r"),
            b'\t' => Some("\\t"),
            0..=0x1f => None,
            _ => continue,
        };
        out.push_str(&s[start..i]);
        match escape {
            Some(e) => out.push_str(e),
            None => out.push_str(&format!("\\u{b:04x}")),
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

/// Checks that objects and arrays nest at most `max` deep, in one pass
/// without recursion, so that a hostile frame (100000 `[`) costs a linear
/// scan and nothing more.
pub fn check_depth(text: &str, max: usize) -> Result<(), ProtoError> {
    // Nesting can never be deeper than the number of `{` and `[` bytes (those
    // inside strings included), and a vectorized count of them is several
    // times cheaper than the exact scan below, which only frames with many
    // brackets need.
    if text.bytes().filter(|&b| b == b'{' || b == b'[').count() <= max {
        return Ok(());
    }
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in text.as_bytes() {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                if depth > max {
                    return Err(ProtoError::TooDeep { max });
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// The top-level object as (key, raw value) pairs in order, borrowed from the
/// frame text.
struct RawObject<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de: 'a, 'a> Deserialize<'de> for RawObject<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ObjectVisitor;
        impl<'de> Visitor<'de> for ObjectVisitor {
            type Value = RawObject<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut fields = Vec::with_capacity(map.size_hint().unwrap_or(8).min(16));
                while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
                    let value: &'de RawValue = map.next_value()?;
                    fields.push((key, value));
                }
                Ok(RawObject(fields))
            }
        }
        deserializer.deserialize_map(ObjectVisitor)
    }
}

/// An object key, borrowed from the frame unless it has escapes. (serde's own
/// `Cow<str>` always copies, which cost an allocation per field.)
struct Key<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Key<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string key")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

/// The text of a JSON string value, borrowed when it has no escapes, or
/// says which field had the wrong type.
fn str_field<'a>(raw: &'a RawValue, field: &'static str) -> Result<Cow<'a, str>, ProtoError> {
    let text = raw.get();
    if !text.starts_with('"') {
        return Err(ProtoError::FieldType {
            field,
            expected: "a string",
        });
    }
    // `raw` is valid JSON already: a string without escapes is exactly the
    // text between its quotes.
    if !text.contains('\\') && text.len() >= 2 {
        return Ok(Cow::Borrowed(&text[1..text.len() - 1]));
    }
    serde_json::from_str::<String>(text)
        .map(Cow::Owned)
        .map_err(|e| ProtoError::Syntax(e.to_string()))
}

/// Reads a JSON string value, or says which field had the wrong type.
fn string_field(raw: &RawValue, field: &'static str) -> Result<String, ProtoError> {
    str_field(raw, field).map(Cow::into_owned)
}

fn id_field(raw: &RawValue, field: &'static str) -> Result<MessageId, ProtoError> {
    let text = str_field(raw, field)?;
    MessageId::new(&text).map_err(|e| ProtoError::FieldLength {
        field,
        min: e.min,
        max: e.max,
    })
}

/// Parses an integer written without fraction or exponent.
fn integer(raw: &RawValue) -> Option<i64> {
    let text = raw.get();
    if text.bytes().all(|b| b.is_ascii_digit() || b == b'-') {
        text.parse().ok()
    } else {
        None
    }
}

/// Parses one client frame.
///
/// The caller has already checked the frame size and decoded UTF-8. The error
/// carries the message id when it could be read, for the 400's `data`.
pub fn parse_frame(text: &str, limits: &Limits) -> Result<Inbound, Rejected> {
    check_depth(text, limits.max_depth)?;
    let object = match serde_json::from_str::<RawObject<'_>>(text) {
        Ok(object) => object,
        Err(e) => {
            // Valid JSON of another shape is a message error, not a JSON one.
            return Err(if serde_json::from_str::<IgnoredAny>(text).is_ok() {
                ProtoError::NotAnObject
            } else {
                ProtoError::Syntax(e.to_string())
            }
            .into());
        }
    };

    let mut fields = object.0;
    // Duplicate keys would let a signature and a route see different values.
    for (i, (key, _)) in fields.iter().enumerate() {
        if fields[..i].iter().any(|(k, _)| k == key) {
            return Err(ProtoError::DuplicateField(key.to_string()).into());
        }
    }

    let kind = take(&mut fields, "type").ok_or(ProtoError::BadType)?;
    if kind.get().starts_with('"') {
        parse_data(fields, kind)
    } else if let Some(kind) = integer(kind) {
        parse_transport(kind, take(&mut fields, "data"))
    } else {
        Err(ProtoError::BadType.into())
    }
}

/// Removes field `name` and returns its raw value.
fn take<'a>(fields: &mut Vec<(Cow<'a, str>, &'a RawValue)>, name: &str) -> Option<&'a RawValue> {
    let i = fields.iter().position(|(k, _)| k == name)?;
    Some(fields.remove(i).1)
}

fn parse_transport(kind: i64, data: Option<&RawValue>) -> Result<Inbound, Rejected> {
    match kind {
        transport::ACK => {
            let data = data.ok_or(ProtoError::FieldType {
                field: "data",
                expected: "the id of the received message",
            })?;
            Ok(Inbound::Ack(id_field(data, "data")?))
        }
        transport::PING => Ok(Inbound::Ping),
        transport::PONG => Ok(Inbound::Pong),
        other => Err(ProtoError::UnexpectedTransport(other).into()),
    }
}

fn parse_data<'a>(
    mut fields: Vec<(Cow<'a, str>, &'a RawValue)>,
    kind: &RawValue,
) -> Result<Inbound, Rejected> {
    let id = match take(&mut fields, "id") {
        Some(raw) => Some(id_field(raw, "id")?),
        None => None,
    };
    let with_id = |error: ProtoError| Rejected {
        id: id.clone(),
        error,
    };
    let kind = string_field(kind, "type").map_err(with_id)?;
    let time = match take(&mut fields, "time") {
        Some(raw) => Some(integer(raw).ok_or_else(|| {
            with_id(ProtoError::FieldType {
                field: "time",
                expected: "an integer (Unix time in milliseconds)",
            })
        })?),
        None => None,
    };
    let mut text = |name: &'static str| -> Result<Option<String>, Rejected> {
        take(&mut fields, name)
            .map(|raw| string_field(raw, name))
            .transpose()
            .map_err(with_id)
    };
    let from = text("from")?;
    let dest = text("dest")?;
    let sign = text("sign")?;
    let data = take(&mut fields, "data").map(RawValue::to_owned);
    let extra = fields
        .into_iter()
        .map(|(k, v)| (k.into_owned(), v.to_owned()))
        .collect();
    Ok(Inbound::Data(DataMessage {
        id,
        kind,
        time,
        from,
        dest,
        sign,
        data,
        extra,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;

    fn parse(text: &str) -> Result<Inbound, Rejected> {
        parse_frame(text, &Limits::default())
    }

    fn code(text: &str) -> ErrorCode {
        parse(text).expect_err("should be refused").error.code()
    }

    #[test]
    fn data_message_keeps_raw_data_and_extras() {
        let text = r#"{"id":"1","type":"direct","dest":"bob","data":{"text": "hi" },"x":[1, 2]}"#;
        let Ok(Inbound::Data(m)) = parse(text) else {
            panic!("not data")
        };
        assert_eq!(m.id.as_ref().map(MessageId::as_str), Some("1"));
        assert_eq!(m.kind, "direct");
        assert_eq!(m.dest.as_deref(), Some("bob"));
        assert_eq!(m.data_text(), r#"{"text": "hi" }"#);
        assert_eq!(m.extra.len(), 1);
        assert_eq!(m.extra[0].1.get(), "[1, 2]");
        assert_eq!(
            m.to_json(),
            r#"{"id":"1","type":"direct","dest":"bob","data":{"text": "hi" },"x":[1, 2]}"#
        );
    }

    #[test]
    fn strings_with_and_without_escapes_and_spaces() {
        let text = r#"{ "id" : "a1" , "type" : "dir\u0065ct", "dest":"b\"ob" , "from": "" }"#;
        let Ok(Inbound::Data(m)) = parse(text) else {
            panic!("not data")
        };
        assert_eq!(m.id.as_ref().map(MessageId::as_str), Some("a1"));
        assert_eq!(m.kind, "direct");
        assert_eq!(m.dest.as_deref(), Some("b\"ob"));
        assert_eq!(m.from.as_deref(), Some(""));
    }

    #[test]
    fn transport_messages() {
        assert_eq!(parse(r#"{"type":1001}"#), Ok(Inbound::Ping));
        assert_eq!(parse(r#"{"type":1002}"#), Ok(Inbound::Pong));
        assert_eq!(
            parse(r#"{"type":200,"data":"m1"}"#),
            Ok(Inbound::Ack(MessageId::new("m1").expect("valid")))
        );
        assert_eq!(code(r#"{"type":200}"#), ErrorCode::InvalidMessage);
        assert_eq!(code(r#"{"type":200,"data":5}"#), ErrorCode::InvalidMessage);
        for t in [100, 300, 400, 1000, 7, -1] {
            assert_eq!(
                code(&format!(r#"{{"type":{t},"data":"x"}}"#)),
                ErrorCode::InvalidMessage
            );
        }
    }

    #[test]
    fn invalid_json_and_shapes() {
        assert_eq!(code("{"), ErrorCode::InvalidJson);
        assert_eq!(code("not json"), ErrorCode::InvalidJson);
        assert_eq!(code(""), ErrorCode::InvalidJson);
        assert_eq!(code("[1,2]"), ErrorCode::InvalidMessage);
        assert_eq!(code("\"text\""), ErrorCode::InvalidMessage);
        assert_eq!(code("{}"), ErrorCode::InvalidMessage);
        assert_eq!(code(r#"{"type":null}"#), ErrorCode::InvalidMessage);
        assert_eq!(code(r#"{"type":1.5}"#), ErrorCode::InvalidMessage);
        assert_eq!(code(r#"{"type":1e3}"#), ErrorCode::InvalidMessage);
        assert_eq!(
            code(r#"{"type":"a","type":"b"}"#),
            ErrorCode::InvalidMessage
        );
    }

    #[test]
    fn field_types_are_checked_and_name_the_id() {
        let r = parse(r#"{"id":"m","type":"direct","time":"now"}"#).expect_err("bad time");
        assert_eq!(r.error.code(), ErrorCode::InvalidMessage);
        assert_eq!(r.id.as_ref().map(MessageId::as_str), Some("m"));
        assert!(parse(r#"{"id":"m","type":"direct","time":1.5}"#).is_err());
        assert!(parse(r#"{"id":"m","type":"direct","time":1700000000000}"#).is_ok());
        assert!(parse(r#"{"id":5,"type":"direct"}"#).is_err());
        assert!(parse(r#"{"id":"","type":"direct"}"#).is_err());
        assert!(parse(r#"{"type":"direct","dest":7}"#).is_err());
        assert!(parse(r#"{"type":"direct","from":{}}"#).is_err());
        assert!(parse(r#"{"type":"direct","sign":false}"#).is_err());
        let long = "i".repeat(129);
        assert!(parse(&format!(r#"{{"id":"{long}","type":"direct"}}"#)).is_err());
    }

    #[test]
    fn deep_nesting_is_refused_without_recursion() {
        let deep = "[".repeat(100_000) + &"]".repeat(100_000);
        assert_eq!(code(&deep), ErrorCode::InvalidJson);
        let inside = format!(r#"{{"type":"x","data":{}}}"#, "[".repeat(100_000));
        assert_eq!(code(&inside), ErrorCode::InvalidJson);
        // Brackets inside strings do not count.
        let text = format!(r#"{{"type":"x","data":"{}"}}"#, "[".repeat(1000));
        assert!(parse(&text).is_ok());
        let ok = format!(
            r#"{{"type":"x","data":{}{}}}"#,
            "[".repeat(31),
            "]".repeat(31)
        );
        assert!(parse(&ok).is_ok());
        // One level more than the limit, just past the cheap bracket count.
        let too_deep = format!(
            r#"{{"type":"x","data":{}{}}}"#,
            "[".repeat(32),
            "]".repeat(32)
        );
        assert_eq!(code(&too_deep), ErrorCode::InvalidJson);
        // Many brackets, shallow nesting: the exact scan accepts it.
        let wide = format!(r#"{{"type":"x","data":[{}[]]}}"#, "[],".repeat(100));
        assert!(parse(&wide).is_ok());
    }

    #[test]
    fn escaped_keys_are_understood() {
        let Ok(Inbound::Data(m)) = parse(r#"{"\u0074ype":"direct","d\u0065st":"bob"}"#) else {
            panic!("not data")
        };
        assert_eq!(m.dest.as_deref(), Some("bob"));
    }

    #[test]
    fn json_strings_are_escaped() {
        let mut out = String::new();
        push_json_str(&mut out, "a\"b\\c\n\u{1}é");
        assert_eq!(out, "\"a\\\"b\\\\c\\n\\u0001é\"");
        let mut plain = String::from("x");
        push_json_str(&mut plain, "alice-42");
        assert_eq!(plain, "x\"alice-42\"");
        assert_eq!(
            serde_json::from_str::<String>(&out).expect("valid"),
            "a\"b\\c\n\u{1}é"
        );
    }
}
