//! The codec on the per-message path: parsing a client frame (a ~100-byte
//! data message, a 200) and building the frames the server sends (the
//! stamped message, 100, 300).
//!
//! `cargo bench -p bachata-proto` (a few seconds per benchmark).

#![allow(clippy::unwrap_used)] // reason: benchmark setup on constant input

use std::hint::black_box;
use std::time::Duration;

use bachata_proto::{
    Channel, DataMessage, Inbound, Limits, MessageId, delivered, parse_frame, received,
};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

/// A typical client data message: 100 bytes.
const MESSAGE: &str = r#"{"id":"s12/104857","type":"direct","dest":"r12","data":{"t":1732630000123,"p":"xxxxxxxxxxxxxxxxxx"}}"#;
/// A receiver's ack.
const ACK: &str = r#"{"type":200,"data":"s12/104857"}"#;

fn stamped() -> DataMessage {
    let Inbound::Data(mut msg) = parse_frame(MESSAGE, &Limits::default()).unwrap() else {
        unreachable!("MESSAGE is a data message")
    };
    msg.from = Some("s12".into());
    msg.time = Some(1_732_630_000_123);
    msg
}

/// The largest frame the server takes by default (`--max-frame-bytes`).
const FRAME_BYTES: usize = 65_536;

/// A 64 KiB frame of ~8,600 distinct two-character top-level keys: the
/// frame that took ~120 ms with a pairwise duplicate check (contract
/// section 9).
fn many_keys() -> String {
    // Printable ASCII without `"` and `\`: no escapes, 93 * 93 keys.
    let alphabet: Vec<char> = (0x20u8..0x7f)
        .filter(|b| *b != b'"' && *b != b'\\')
        .map(char::from)
        .collect();
    let mut text = String::from(r#"{"type":"direct","dest":"bob""#);
    'fill: for a in &alphabet {
        for b in &alphabet {
            if text.len() + 8 > FRAME_BYTES {
                break 'fill;
            }
            if (*a, *b) == ('i', 'd') {
                continue; // a known field, whose value must be a string
            }
            text.push_str(&format!(r#","{a}{b}":1"#));
        }
    }
    text.push('}');
    text
}

/// A 64 KiB chat message as an application would send it: text, and a
/// list of small objects (attachments, mentions).
fn plain_chat() -> String {
    let mut text =
        String::from(r#"{"id":"m1","type":"direct","dest":"bob","data":{"text":"hello","items":["#);
    let mut n = 0;
    while text.len() + 120 < FRAME_BYTES {
        if n > 0 {
            text.push(',');
        }
        text.push_str(&format!(
            r#"{{"kind":"link","url":"https://example.com/{n}","title":"A title","size":{n}}}"#
        ));
        n += 1;
    }
    text.push_str("]}}");
    text
}

/// A 64 KiB message whose `data` is one long string.
fn plain_text() -> String {
    let head = r#"{"id":"m1","type":"direct","dest":"bob","data":""#;
    format!("{head}{}\"}}", "x".repeat(FRAME_BYTES - head.len() - 2))
}

fn large_frames(c: &mut Criterion) {
    let limits = Limits::default();
    let mut g = c.benchmark_group("parse_frame_64KiB");
    for (name, frame) in [
        ("many_keys", many_keys()),
        ("plain_chat", plain_chat()),
        ("plain_text", plain_text()),
    ] {
        assert!(frame.len() <= FRAME_BYTES, "{name}: {}", frame.len());
        parse_frame(&frame, &limits).unwrap();
        g.throughput(Throughput::Bytes(frame.len() as u64));
        g.bench_function(name, |b| b.iter(|| parse_frame(black_box(&frame), &limits)));
    }
    g.finish();
}

fn codec(c: &mut Criterion) {
    let limits = Limits::default();
    let mut g = c.benchmark_group("parse_frame");
    g.throughput(Throughput::Bytes(MESSAGE.len() as u64));
    g.bench_function("message_100B", |b| {
        b.iter(|| parse_frame(black_box(MESSAGE), &limits))
    });
    g.throughput(Throughput::Bytes(ACK.len() as u64));
    g.bench_function("ack_200", |b| {
        b.iter(|| parse_frame(black_box(ACK), &limits))
    });
    g.finish();

    let msg = stamped();
    let mut g = c.benchmark_group("serialize");
    g.bench_function("stamped_message_to_json", |b| {
        b.iter(|| black_box(&msg).to_json())
    });
    g.bench_function("received_100", |b| {
        let id = MessageId::new("s12/104857").unwrap();
        b.iter(|| received(black_box(&id)))
    });
    g.bench_function("delivered_300", |b| {
        let (id, receiver) = (
            MessageId::new("s12/104857").unwrap(),
            Channel::new("r12").unwrap(),
        );
        b.iter(|| delivered(black_box(&id), black_box(&receiver)))
    });
    g.finish();
}

criterion_group! {
    name = benches;
    // Short: the whole crate runs in well under a minute on 2 shared cores.
    config = Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = codec, large_frames
}
criterion_main!(benches);
