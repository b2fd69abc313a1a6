//! A JSON value as a tree, its text, and what `parse_frame` must answer for
//! a frame that carries it as `data`: the reference for the structure-aware
//! property test (`tests/structure.rs`) and fuzz target
//! (`fuzz/fuzz_targets/parse_structured.rs`, which includes this file).
#![allow(dead_code)] // reason: each includer uses its own part

use bachata_proto::{Inbound, Limits, ProtoError, parse_frame};

/// A JSON value; objects may repeat keys, which the parser must refuse.
#[derive(Debug, Clone)]
pub(crate) enum Json {
    Null,
    Bool(bool),
    Int(i64),
    Str(String),
    Arr(Vec<Json>),
    Obj(Vec<(Key, Json)>),
}

/// An object key; `escaped` writes its first character as a `\u` escape, so
/// `"a"` and `"\u0061"` are the same key in two spellings.
#[derive(Debug, Clone)]
pub(crate) struct Key {
    pub name: String,
    pub escaped: bool,
}

fn push_str(out: &mut String, s: &str, escape_first: bool) {
    out.push('"');
    for (i, c) in s.chars().enumerate() {
        match c {
            // (Outside the BMP an escape is a surrogate pair; plain is fine.)
            _ if i == 0 && escape_first && (c as u32) < 0x1_0000 => {
                out.push_str(&format!("\\u{:04x}", c as u32))
            }
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

impl Json {
    pub(crate) fn render(&self, out: &mut String) {
        match self {
            Json::Null => out.push_str("null"),
            Json::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Json::Int(n) => out.push_str(&n.to_string()),
            Json::Str(s) => push_str(out, s, false),
            Json::Arr(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    item.render(out);
                }
                out.push(']');
            }
            Json::Obj(fields) => {
                out.push('{');
                for (i, (key, value)) in fields.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    push_str(out, &key.name, key.escaped && !key.name.is_empty());
                    out.push(':');
                    value.render(out);
                }
                out.push('}');
            }
        }
    }

    /// Nesting depth: 0 for a scalar, 1 for `[]` or `{}`.
    pub(crate) fn depth(&self) -> usize {
        match self {
            Json::Arr(items) => 1 + items.iter().map(Json::depth).max().unwrap_or(0),
            Json::Obj(fields) => 1 + fields.iter().map(|(_, v)| v.depth()).max().unwrap_or(0),
            _ => 0,
        }
    }

    /// Whether some object in the tree repeats a key.
    pub(crate) fn repeats_a_key(&self) -> bool {
        match self {
            Json::Arr(items) => items.iter().any(Json::repeats_a_key),
            Json::Obj(fields) => {
                let mut names: Vec<&str> = fields.iter().map(|(k, _)| k.name.as_str()).collect();
                names.sort_unstable();
                let before = names.len();
                names.dedup();
                names.len() != before || fields.iter().any(|(_, v)| v.repeats_a_key())
            }
            _ => false,
        }
    }
}

/// A data message frame carrying `data`.
pub(crate) fn frame(data: &Json) -> String {
    let mut text = String::from(r#"{"type":"t","data":"#);
    data.render(&mut text);
    text.push('}');
    text
}

/// Parses the frame of `data` with `max_depth` and compares the answer with
/// the model: too deep is `invalid_json`, else a repeated key anywhere is
/// `DuplicateKey`, else the message comes back with `data` verbatim.
pub(crate) fn check(data: &Json, max_depth: usize) -> Result<(), String> {
    let text = frame(data);
    let answer = parse_frame(&text, &Limits { max_depth });
    // The message object itself is level 1.
    let too_deep = data.depth() + 1 > max_depth;
    match (&answer, too_deep, data.repeats_a_key()) {
        (Err(r), true, _) if matches!(r.error, ProtoError::TooDeep { .. }) => Ok(()),
        (Err(r), false, true) if matches!(r.error, ProtoError::DuplicateKey { .. }) => Ok(()),
        (Ok(Inbound::Data(m)), false, false) => {
            let mut expected = String::new();
            data.render(&mut expected);
            if m.data_text() == expected {
                Ok(())
            } else {
                Err(format!("data changed: {:?}", m.data_text()))
            }
        }
        _ => Err(format!(
            "{text} (max_depth {max_depth}, depth {}, repeats {}) answered {answer:?}",
            data.depth(),
            data.repeats_a_key()
        )),
    }
}
