//! `parse_frame` must never panic, and a data message it accepts must come
//! back unchanged from its own `to_json()`.
#![no_main]

use bachata_proto::{Inbound, Limits, parse_frame};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    // The transport decodes UTF-8 before parsing; other bytes never get here.
    let Ok(text) = std::str::from_utf8(bytes) else {
        return;
    };
    let limits = Limits::default();
    let Ok(Inbound::Data(m)) = parse_frame(text, &limits) else {
        return;
    };
    let json = m.to_json();
    let again = Limits {
        max_depth: limits.max_depth + 1,
    };
    match parse_frame(&json, &again) {
        Ok(Inbound::Data(back)) => assert_eq!(
            back, m,
            "round trip changed the message\n input: {text:?}\n json:  {json:?}"
        ),
        other => panic!(
            "to_json() output does not parse back as data: {other:?}\n input: {text:?}\n json:  {json:?}"
        ),
    }
});
