//! Structure-aware: the fuzzer's bytes pick a JSON tree (many keys, keys
//! repeated in two spellings, deep nesting), and `parse_frame` must answer
//! what the model in `crates/bachata-proto/tests/model` says: too deep is
//! refused, a repeated key at any level is refused, anything else comes
//! back verbatim. The same model runs as a property test in CI
//! (`crates/bachata-proto/tests/structure.rs`).
#![no_main]

#[path = "../../crates/bachata-proto/tests/model/mod.rs"]
mod model;

use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use model::{Json, Key};

/// Nesting the fuzzer may build; past the largest limit it picks, so both
/// sides of the depth check are reached.
const MAX_NESTING: usize = 140;

fn json(u: &mut Unstructured<'_>, depth: usize) -> Result<Json> {
    let kind = if depth >= MAX_NESTING { 0 } else { u.int_in_range(0u8..=5)? };
    Ok(match kind {
        0 => Json::Null,
        1 => Json::Bool(u.arbitrary()?),
        2 => Json::Int(u.arbitrary()?),
        3 => Json::Str(u.arbitrary()?),
        4 => {
            let n = u.int_in_range(0usize..=8)?;
            Json::Arr((0..n).map(|_| json(u, depth + 1)).collect::<Result<_>>()?)
        }
        _ => {
            // Up to a few thousand keys from a small alphabet: repeats are
            // common, and large objects take the sorted path.
            let n = if u.ratio(1u8, 8)? {
                u.int_in_range(0usize..=4000)?
            } else {
                u.int_in_range(0usize..=20)?
            };
            let mut fields = Vec::with_capacity(n);
            for _ in 0..n {
                let name = match u.int_in_range(0u8..=3)? {
                    0 => String::from(char::from(b'a' + u.int_in_range(0u8..=3)?)),
                    1 => format!("k{}", u.int_in_range(0u16..=2000)?),
                    _ => u.arbitrary()?,
                };
                let key = Key {
                    name,
                    escaped: u.arbitrary()?,
                };
                fields.push((key, json(u, depth + 1)?));
            }
            Json::Obj(fields)
        }
    })
}

fuzz_target!(|bytes: &[u8]| {
    let mut u = Unstructured::new(bytes);
    let Ok(max_depth) = u.int_in_range(1usize..=128) else {
        return;
    };
    let Ok(data) = json(&mut u, 0) else {
        return;
    };
    if let Err(e) = model::check(&data, max_depth) {
        panic!("{e}");
    }
});
