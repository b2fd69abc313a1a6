//! Property tests: whatever message we serialize parses back to the same
//! message, and no input makes the parser panic.

use bachata_proto::{DataMessage, Inbound, Limits, MessageId, parse_frame};
use proptest::prelude::*;
use serde_json::value::RawValue;

fn json_value() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        Just("null".to_string()),
        any::<bool>().prop_map(|b| b.to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        ".{0,20}".prop_map(|s| serde_json::to_string(&s).expect("string")),
    ];
    leaf.prop_recursive(4, 32, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(|v| format!("[{}]", v.join(","))),
            // Distinct keys: a repeated key is refused (tests/structure.rs).
            prop::collection::btree_map("[a-z]{1,6}", inner, 0..4).prop_map(|v| {
                let fields: Vec<String> = v
                    .into_iter()
                    .map(|(k, val)| format!("{}:{}", serde_json::to_string(&k).expect("key"), val))
                    .collect();
                format!("{{{}}}", fields.join(","))
            }),
        ]
    })
}

fn raw(text: String) -> Box<RawValue> {
    RawValue::from_string(text).expect("generated JSON is valid")
}

prop_compose! {
    fn data_message()(
        id in proptest::option::of(".{1,30}"),
        kind in ".{0,20}",
        time in proptest::option::of(any::<i64>()),
        from in proptest::option::of(".{0,20}"),
        dest in proptest::option::of(".{0,20}"),
        sign in proptest::option::of("[0-9a-f]{0,64}"),
        data in proptest::option::of(json_value()),
        extra in prop::collection::btree_map("x[a-z]{0,5}", json_value(), 0..3),
    ) -> DataMessage {
        let mut m = DataMessage::new(kind);
        m.id = id.and_then(|i| MessageId::new(&i).ok());
        m.time = time;
        m.from = from;
        m.dest = dest;
        m.sign = sign;
        m.data = data.map(raw);
        for (k, v) in extra {
            m.extra.push(&k, &raw(v));
        }
        m
    }
}

proptest! {
    #[test]
    fn serialize_then_parse_is_identity(m in data_message()) {
        let text = m.to_json();
        let limits = Limits { max_depth: 64 };
        match parse_frame(&text, &limits) {
            Ok(Inbound::Data(back)) => prop_assert_eq!(back, m),
            other => prop_assert!(false, "{text} parsed as {other:?}"),
        }
    }

    #[test]
    fn parser_never_panics_on_text(text in ".{0,200}") {
        let _ = parse_frame(&text, &Limits::default());
    }

    #[test]
    fn parser_never_panics_on_near_json(text in r#"[{}\[\]":,0-9a-z\\ ]{0,120}"#) {
        let _ = parse_frame(&text, &Limits::default());
    }
}
