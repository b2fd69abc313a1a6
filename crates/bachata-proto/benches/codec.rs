//! The codec on the per-message path: parsing a client frame (a ~100-byte
//! data message, a 200) and building the frames the server sends (the
//! stamped message, 100, 300).
//!
//! `cargo bench -p bachata-proto` (a few seconds per benchmark).

#![allow(clippy::unwrap_used)] // reason: benchmark setup on constant input

use std::hint::black_box;
use std::time::Duration;

use bachata_proto::{DataMessage, Inbound, Limits, delivered, parse_frame, received};
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
        b.iter(|| received(black_box("s12/104857")))
    });
    g.bench_function("delivered_300", |b| {
        b.iter(|| delivered(black_box("s12/104857"), black_box("r12")))
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
    targets = codec
}
criterion_main!(benches);
