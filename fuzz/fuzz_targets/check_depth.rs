//! `check_depth` must never panic, must be monotonic in its limit, and on
//! valid JSON must agree with the nesting depth of the parsed value.
#![no_main]

use bachata_proto::check_depth;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

/// Nesting depth of objects and arrays: a scalar is 0, `[]` and `{}` are 1.
fn depth(v: &Value) -> usize {
    match v {
        Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        Value::Object(map) => 1 + map.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

fuzz_target!(|bytes: &[u8]| {
    let Some((&first, rest)) = bytes.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    // A limit around the interesting range (the default is 32).
    let n = usize::from(first % 64);

    let ok_default = check_depth(text, 32).is_ok();
    let ok_n = check_depth(text, n).is_ok();
    if ok_n {
        assert!(check_depth(text, n + 1).is_ok(), "Ok at {n} but not at {}", n + 1);
    }
    if n == 32 {
        assert_eq!(ok_n, ok_default);
    }
    assert!(check_depth(text, usize::MAX).is_ok());

    // On valid JSON the scan must see exactly the value's depth. (serde_json
    // refuses nesting past 128, so only shallower values get here.)
    if let Ok(value) = serde_json::from_str::<Value>(text) {
        let d = depth(&value);
        assert_eq!(ok_n, d <= n, "depth {d}, limit {n}, text {text:?}");
        assert_eq!(ok_default, d <= 32, "depth {d}, limit 32, text {text:?}");
        assert!(check_depth(text, d).is_ok());
        if d > 0 {
            assert!(check_depth(text, d - 1).is_err());
        }
    }
});
