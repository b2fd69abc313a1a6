//! Structure-aware property tests of `parse_frame` (protocol.md section 9):
//! arbitrary JSON trees with many keys, repeated keys in any object (in two
//! spellings), and deep nesting, checked against the model in `model/`.
//! The fuzz target `parse_structured` runs the same model on fuzzer input.

mod model;

use model::{Json, Key, check};
use proptest::prelude::*;

fn leaf() -> impl Strategy<Value = Json> {
    prop_oneof![
        Just(Json::Null),
        any::<bool>().prop_map(Json::Bool),
        any::<i64>().prop_map(Json::Int),
        "[a-z:{}\\[\\]\"\\\\ ]{0,8}".prop_map(Json::Str),
    ]
}

/// Keys from a tiny alphabet, so repeats are common; some written escaped.
fn key() -> impl Strategy<Value = Key> {
    ("[a-c]{1,2}", any::<bool>()).prop_map(|(name, escaped)| Key { name, escaped })
}

/// Wide trees: objects of up to 40 keys (past the pairwise check's 16).
fn wide() -> impl Strategy<Value = Json> {
    leaf().prop_recursive(5, 400, 40, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Json::Arr),
            prop::collection::vec((key(), inner), 0..40).prop_map(Json::Obj),
        ]
    })
}

/// Deep chains: up to 80 levels of arrays and single-key objects.
fn deep() -> impl Strategy<Value = Json> {
    (prop::collection::vec(any::<bool>(), 0..80), leaf()).prop_map(|(levels, leaf)| {
        levels.into_iter().fold(leaf, |inner, array| {
            if array {
                Json::Arr(vec![inner])
            } else {
                Json::Obj(vec![(
                    Key {
                        name: "d".into(),
                        escaped: false,
                    },
                    inner,
                )])
            }
        })
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn wide_trees_match_the_model(data in wide(), max_depth in 1usize..12) {
        if let Err(e) = check(&data, max_depth) {
            prop_assert!(false, "{}", e);
        }
    }

    #[test]
    fn deep_trees_match_the_model(data in deep(), max_depth in 1usize..100) {
        if let Err(e) = check(&data, max_depth) {
            prop_assert!(false, "{}", e);
        }
    }
}
