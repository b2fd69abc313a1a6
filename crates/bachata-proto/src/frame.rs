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

/// A data message (protocol.md section 3).
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
    pub extra: Extra,
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
            && self.extra == other.extra
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
            extra: Extra::default(),
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
        if !self.extra.is_empty() {
            // (`type` always came before: the comma is never first.)
            out.push(',');
            out.push_str(&self.extra.text);
        }
        out.push('}');
        out
    }
}

/// The fields of a data message that the protocol does not know, in the
/// order they came, forwarded untouched.
///
/// Kept as one JSON text (`"k":v,"k2":v2`: each key as a JSON string, each
/// value exactly as received) with the position of each field, so that a
/// message of thousands of fields costs two allocations instead of two per
/// field (protocol.md section 9: a frame's cost is linear in its size).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Extra {
    text: String,
    /// Where each field's key literal and value start, and where it ends.
    fields: Vec<(u32, u32, u32)>,
}

impl Extra {
    /// Appends field `key` with `value` (its JSON text).
    pub fn push(&mut self, key: &str, value: &RawValue) {
        if !self.text.is_empty() {
            self.text.push(',');
        }
        let start = self.text.len();
        push_json_str(&mut self.text, key);
        self.text.push(':');
        let value_start = self.text.len();
        self.text.push_str(value.get());
        // A frame is far smaller than 4 GiB (`--max-frame-bytes`).
        let at = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        self.fields
            .push((at(start), at(value_start), at(self.text.len())));
    }

    pub fn len(&self) -> usize {
        self.fields.len()
    }

    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    /// Each field's key and the JSON text of its value, in order.
    pub fn iter(&self) -> impl Iterator<Item = (Cow<'_, str>, &str)> {
        self.fields.iter().map(|&(key, value, end)| {
            let literal = self
                .text
                .get(key as usize..value as usize - 1)
                .unwrap_or("\"\"");
            let key = match literal.strip_prefix('"').and_then(|k| k.strip_suffix('"')) {
                Some(plain) if !plain.contains('\\') => Cow::Borrowed(plain),
                _ => Cow::Owned(serde_json::from_str::<String>(literal).unwrap_or_default()),
            };
            (
                key,
                self.text
                    .get(value as usize..end as usize)
                    .unwrap_or("null"),
            )
        })
    }

    /// The JSON text of field `key`'s value.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.iter().find(|(k, _)| k == key).map(|(_, v)| v)
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

/// The top-level object, borrowed from the frame text: the fields the
/// protocol knows, each in its slot, and the others in their order. One
/// pass sorts them, so a frame of many fields costs no scan per field.
#[derive(Default)]
struct Fields<'a> {
    kind: Option<&'a RawValue>,
    id: Option<&'a RawValue>,
    time: Option<&'a RawValue>,
    from: Option<&'a RawValue>,
    dest: Option<&'a RawValue>,
    sign: Option<&'a RawValue>,
    data: Option<&'a RawValue>,
    extra: Vec<(Cow<'a, str>, &'a RawValue)>,
    /// The first known field that came twice.
    repeated: Option<Cow<'a, str>>,
}

impl<'a> Fields<'a> {
    fn slot(&mut self, key: &str) -> Option<&mut Option<&'a RawValue>> {
        Some(match key {
            "type" => &mut self.kind,
            "id" => &mut self.id,
            "time" => &mut self.time,
            "from" => &mut self.from,
            "dest" => &mut self.dest,
            "sign" => &mut self.sign,
            "data" => &mut self.data,
            _ => return None,
        })
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Fields<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ObjectVisitor;
        impl<'de> Visitor<'de> for ObjectVisitor {
            type Value = Fields<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut fields = Fields::default();
                while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
                    let value: &'de RawValue = map.next_value()?;
                    match fields.slot(&key) {
                        Some(slot) => {
                            if slot.replace(value).is_some() && fields.repeated.is_none() {
                                fields.repeated = Some(key);
                            }
                        }
                        None => fields.extra.push((key, value)),
                    }
                }
                Ok(fields)
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
    let fields = match serde_json::from_str::<Fields<'_>>(text) {
        Ok(fields) => fields,
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
    // Duplicate keys would let a signature and a route see different values.
    // (Known fields cannot repeat among the others: they went to slots.)
    let repeated = fields
        .repeated
        .as_deref()
        .or_else(|| repeated_key(&fields.extra, |(k, _)| k.as_ref()));
    if let Some(key) = repeated {
        return Err(ProtoError::DuplicateField(key.to_owned()).into());
    }

    let kind = fields.kind.ok_or(ProtoError::BadType)?;
    if kind.get().starts_with('"') {
        parse_data(fields, kind)
    } else if let Some(kind) = integer(kind) {
        parse_transport(kind, fields.data)
    } else {
        Err(ProtoError::BadType.into())
    }
}

/// Objects with at most this many keys are checked for repeats pairwise
/// (no allocation); larger ones are sorted, so a frame of thousands of keys
/// costs `n log n` comparisons instead of `n^2` (protocol.md section 9: a
/// 64 KiB frame of ~9,000 two-character keys took ~120 ms pairwise).
const PAIRWISE_KEYS: usize = 16;

/// A key that appears twice among `items` (whose key `key` reads), if any.
fn repeated_key<'a, T, K>(items: &'a [T], key: impl Fn(&'a T) -> &'a K) -> Option<&'a K>
where
    K: Ord + ?Sized,
{
    if items.len() <= PAIRWISE_KEYS {
        for (i, item) in items.iter().enumerate() {
            let name = key(item);
            if items[..i].iter().any(|other| key(other) == name) {
                return Some(name);
            }
        }
        return None;
    }
    let mut sorted: Vec<&K> = items.iter().map(key).collect();
    sorted.sort_unstable();
    sorted.windows(2).find(|w| w[0] == w[1]).map(|w| w[0])
}

/// Refuses a repeated key in any object nested in `raw`, the value of the
/// top-level field `field`.
fn check_nested_keys(field: &str, raw: &RawValue) -> Result<(), ProtoError> {
    let text = raw.get();
    // Only an object of two keys can repeat one, and every key is followed
    // by a `:`; most `data` values have one key or none (a `:` inside a
    // string counts too, which only costs a walk that finds nothing).
    if !text.starts_with(['{', '[']) || text.bytes().filter(|&b| b == b':').take(2).count() < 2 {
        return Ok(());
    }
    match repeated_nested_key(text) {
        None => Ok(()),
        Some(key) => Err(ProtoError::DuplicateKey {
            field: field.to_owned(),
            key,
        }),
    }
}

/// The open containers and the keys of the open objects of a walk, kept
/// per thread so that checking a message allocates nothing once warm.
#[derive(Default)]
struct Scratch {
    /// Per open container: `ARRAY`, or where its keys start in `keys`.
    open: Vec<u32>,
    /// The keys of the open objects, as byte ranges of the text (between
    /// the quotes, as written).
    keys: Vec<(u32, u32)>,
}

const ARRAY: u32 = u32::MAX;

/// The bytes the walk stops at.
const STRUCTURAL: [bool; 256] = {
    let mut table = [false; 256];
    let mut i = 0;
    let special = *b"\"{}[],";
    while i < special.len() {
        table[special[i] as usize] = true;
        i += 1;
    }
    table
};

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::default();
}

/// Walks the text of a JSON value, already known to be valid, in one pass
/// over its bytes, and returns a key that one object repeats (unescaped).
/// Cheaper than a serde walk: no number is read and no string is copied.
fn repeated_nested_key(text: &str) -> Option<String> {
    SCRATCH.with(|scratch| {
        let mut scratch = scratch.borrow_mut();
        let Scratch { open, keys } = &mut *scratch;
        open.clear();
        keys.clear();
        let bytes = text.as_bytes();
        let mut expect_key = false;
        let mut i = 0;
        while i < bytes.len() {
            // Numbers, literals and white space mean nothing here.
            if !STRUCTURAL[usize::from(bytes[i])] {
                i += 1;
                continue;
            }
            match bytes[i] {
                b'"' => {
                    let start = i + 1;
                    let mut j = start;
                    // To the closing quote, escape by escape.
                    while let Some(at) = bytes
                        .get(j..)
                        .and_then(|rest| memchr::memchr2(b'"', b'\\', rest))
                    {
                        j += at;
                        if bytes[j] == b'"' {
                            break;
                        }
                        j += 2;
                    }
                    let j = j.min(bytes.len());
                    if expect_key {
                        // A frame is far smaller than 4 GiB.
                        keys.push((start as u32, j as u32));
                        expect_key = false;
                    }
                    i = j;
                }
                b'{' => {
                    open.push(keys.len() as u32);
                    expect_key = true;
                }
                b'[' => open.push(ARRAY),
                b',' => expect_key = open.last().is_some_and(|&o| o != ARRAY),
                b'}' => {
                    let from = open.pop().unwrap_or(0) as usize;
                    if let Some(key) = object_repeats(text, &keys[from.min(keys.len())..]) {
                        return Some(key);
                    }
                    keys.truncate(from);
                }
                b']' => {
                    open.pop();
                }
                _ => {}
            }
            i += 1;
        }
        None
    })
}

/// A key that the keys of one object (byte ranges of `text`) repeat.
fn object_repeats(text: &str, keys: &[(u32, u32)]) -> Option<String> {
    if keys.len() < 2 {
        return None;
    }
    // Compared as bytes: equal keys are equal bytes, and no UTF-8 boundary
    // is checked per comparison.
    let bytes = text.as_bytes();
    let raw = |&(from, to): &(u32, u32)| bytes.get(from as usize..to as usize).unwrap_or(&[]);
    if keys.iter().any(|k| raw(k).contains(&b'\\')) {
        // Rare: `"a"` and `"\u0061"` are one key; compare them unescaped.
        let names: Vec<String> = keys
            .iter()
            .map(|k| {
                let literal = [b"\"", raw(k), b"\""].concat();
                serde_json::from_slice(&literal).unwrap_or_default()
            })
            .collect();
        return repeated_key(&names, String::as_str).map(str::to_owned);
    }
    repeated_key(keys, raw).map(|key| String::from_utf8_lossy(key).into_owned())
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

fn parse_data(fields: Fields<'_>, kind: &RawValue) -> Result<Inbound, Rejected> {
    let id = match fields.id {
        Some(raw) => Some(id_field(raw, "id")?),
        None => None,
    };
    let with_id = |error: ProtoError| Rejected {
        id: id.clone(),
        error,
    };
    let kind = string_field(kind, "type").map_err(with_id)?;
    let time = match fields.time {
        Some(raw) => Some(integer(raw).ok_or_else(|| {
            with_id(ProtoError::FieldType {
                field: "time",
                expected: "an integer (Unix time in milliseconds)",
            })
        })?),
        None => None,
    };
    let text = |raw: Option<&RawValue>, name: &'static str| -> Result<Option<String>, Rejected> {
        raw.map(|raw| string_field(raw, name))
            .transpose()
            .map_err(with_id)
    };
    let from = text(fields.from, "from")?;
    let dest = text(fields.dest, "dest")?;
    let sign = text(fields.sign, "sign")?;
    let nested = fields.data.iter().map(|raw| ("data", *raw));
    let nested = nested.chain(fields.extra.iter().map(|(k, raw)| (k.as_ref(), *raw)));
    for (field, raw) in nested {
        check_nested_keys(field, raw).map_err(with_id)?;
    }
    let data = fields.data.map(RawValue::to_owned);
    let mut extra = Extra::default();
    for (key, value) in &fields.extra {
        extra.push(key, value);
    }
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
        assert_eq!(m.extra.get("x"), Some("[1, 2]"));
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
    fn repeated_keys_are_refused_at_every_level() {
        let top = parse(r#"{"type":"x","dest":"a","dest":"b"}"#).expect_err("top");
        assert_eq!(top.error, ProtoError::DuplicateField("dest".into()));
        for (text, field, key) in [
            (r#"{"id":"m","type":"x","data":{"a":1,"a":2}}"#, "data", "a"),
            (
                r#"{"id":"m","type":"x","data":[{"b":1},{"a":1,"b":2,"a":3}]}"#,
                "data",
                "a",
            ),
            (
                r#"{"id":"m","type":"x","data":{"o":{"k":1,"\u006b":2}}}"#,
                "data",
                "k",
            ),
            (
                r#"{"id":"m","type":"x","meta":{"z":[],"z":{}}}"#,
                "meta",
                "z",
            ),
        ] {
            let r = parse(text).expect_err(text);
            assert_eq!(r.error.code(), ErrorCode::InvalidMessage, "{text}");
            assert_eq!(r.id.as_ref().map(MessageId::as_str), Some("m"), "{text}");
            assert_eq!(
                r.error,
                ProtoError::DuplicateKey {
                    field: field.into(),
                    key: key.into()
                },
                "{text}"
            );
        }
        // The same key in different objects, or once per object, is fine.
        let ok = r#"{"type":"x","data":[{"a":1,"b":2},{"a":1,"b":2}],"x":{"a":{"a":1}}}"#;
        assert!(parse(ok).is_ok());
        // A `:` inside a string is not a key.
        assert!(parse(r#"{"type":"x","data":{"a":"1:2:3"}}"#).is_ok());
    }

    #[test]
    fn many_keys_are_checked_by_sorting() {
        // An object of `n` distinct keys, and one more that repeats one.
        let object = |n: usize, repeat: bool| {
            let mut text = String::from("{");
            for i in 0..n {
                text.push_str(&format!(r#""k{i}":1,"#));
            }
            if repeat {
                text.push_str(r#""k7":2,"#);
            }
            text.push_str(r#""type":"x"}"#);
            text
        };
        assert!(parse(&object(5000, false)).is_ok());
        assert_eq!(
            parse(&object(5000, true)).expect_err("repeat").error,
            ProtoError::DuplicateField("k7".into())
        );
        let nested = |repeat| format!(r#"{{"type":"x","data":{}}}"#, object(5000, repeat));
        assert!(parse(&nested(false)).is_ok());
        assert_eq!(
            parse(&nested(true)).expect_err("nested repeat").error,
            ProtoError::DuplicateKey {
                field: "data".into(),
                key: "k7".into()
            }
        );
    }

    #[test]
    fn id_reasons_state_the_rule_that_applies() {
        let e = MessageId::new("").expect_err("empty");
        assert_eq!(e.to_string(), "id must be 1..=128 bytes");
        let e = crate::Channel::new("").expect_err("empty");
        assert_eq!(
            e.to_string(),
            "channel must be 1..=128 bytes without control characters"
        );
        let r = parse(r#"{"type":200,"data":""}"#).expect_err("empty id");
        assert_eq!(r.error.to_string(), "field `data` must be 1..=128 bytes");
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
