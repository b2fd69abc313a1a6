//! The route chain as the server builds it (group, then direct) resolving
//! a message's destinations: a direct message, and group messages whose
//! members live in a `MemoryStore`.
//!
//! `cargo bench -p bachata-core --bench route`

#![allow(clippy::unwrap_used, clippy::expect_used)] // reason: benchmark setup

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bachata_core::{
    DirectRoute, GroupRoute, MemoryStore, Route, RouteContext, Routed, Store, run_chain,
};
use bachata_proto::{Channel, DataMessage, GroupId};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime")
}

fn message(kind: &str, dest: &str, from: &str) -> DataMessage {
    let mut msg = DataMessage::new(kind);
    msg.id = Some("s0/104857".parse().unwrap());
    msg.dest = Some(dest.to_owned());
    msg.from = Some(from.to_owned());
    msg.time = Some(1_732_630_000_123);
    msg
}

fn route(c: &mut Criterion) {
    let rt = runtime();
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let routes: Vec<Arc<dyn Route>> = vec![
        Arc::new(GroupRoute::new(store.clone())),
        Arc::new(DirectRoute),
    ];
    let sender = Channel::new("m0").unwrap();
    let mut g = c.benchmark_group("route_chain");

    let direct = message("direct", "r12", "m0");
    g.bench_function("direct", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let ctx = RouteContext {
                    sender: Some(&sender),
                };
                let start = Instant::now();
                for _ in 0..iters {
                    black_box(run_chain(&routes, &ctx, black_box(&direct)).await);
                }
                start.elapsed()
            })
        })
    });

    for members in [10usize, 100, 1000] {
        let group = format!("g{members}");
        let id = GroupId::new(&group).unwrap();
        rt.block_on(async {
            for i in 0..members {
                let member = Channel::new(&format!("m{i}")).unwrap();
                store.add_member(&id, &member).await.unwrap();
            }
        });
        let msg = message("group", &group, "m0");
        // The chain really resolves every member but the sender.
        let routed = rt.block_on(run_chain(
            &routes,
            &RouteContext {
                sender: Some(&sender),
            },
            &msg,
        ));
        assert!(matches!(&routed, Routed::To(to) if to.len() == members - 1));
        g.bench_with_input(BenchmarkId::new("group", members), &msg, |b, msg| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let ctx = RouteContext {
                        sender: Some(&sender),
                    };
                    let start = Instant::now();
                    for _ in 0..iters {
                        black_box(run_chain(&routes, &ctx, black_box(msg)).await);
                    }
                    start.elapsed()
                })
            })
        });
        // The group route alone, without the chain's merging of
        // destinations: the difference is the chain's cost.
        let group_route = routes[0].clone();
        g.bench_with_input(
            BenchmarkId::new("group_route_alone", members),
            &msg,
            |b, msg| {
                b.iter_custom(|iters| {
                    rt.block_on(async {
                        let ctx = RouteContext {
                            sender: Some(&sender),
                        };
                        let start = Instant::now();
                        for _ in 0..iters {
                            black_box(group_route.route(&ctx, black_box(msg)).await);
                        }
                        start.elapsed()
                    })
                })
            },
        );
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = route
}
criterion_main!(benches);
