//! The example's route and hook inside a real server, with real clients.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use bachata_example_custom_route::{CountingHook, SupportRoute};
use bachata_proto::Channel;
use bachata_server::{Config, StoreKind};
use bachata_testkit::client::TestClient;
use serde_json::json;

#[tokio::test]
async fn support_messages_reach_every_agent_and_hooks_see_them() {
    let hook = CountingHook::default();
    let config = Config {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        store: StoreKind::Memory,
        ..Config::default()
    };
    let agents = vec![
        Channel::new("agent1").expect("channel"),
        Channel::new("agent2").expect("channel"),
    ];
    let h = hook.clone();
    let server = bachata_server::start_with(config, move |center| {
        center.route(SupportRoute::new(agents)).hook(h)
    })
    .await
    .expect("server starts");
    let addr = server.addr();
    let mut user = TestClient::connect(addr, "user").await;
    let mut agent1 = TestClient::connect(addr, "agent1").await;
    let mut agent2 = TestClient::connect(addr, "agent2").await;
    user.send(json!({"id": "q1", "type": "support", "data": "help"}))
        .await;
    user.expect(100, "q1").await;
    assert_eq!(agent1.recv().await["from"], "user");
    assert_eq!(agent2.recv().await["id"], "q1");
    agent1.ack("q1").await;
    user.expect(300, "q1").await;
    assert_eq!(hook.queued.load(Ordering::Relaxed), 1);
    assert_eq!(hook.first_acks.load(Ordering::Relaxed), 1);
    // The route's own rule: agents may not write to the rota.
    agent2
        .send(json!({"id": "q2", "type": "support", "data": "?"}))
        .await;
    assert_eq!(agent2.recv().await["error"], "forbidden");
    // Built-in routes still work behind it.
    user.send_direct("d1", "agent2", json!("thanks")).await;
    user.expect(100, "d1").await;
    server.shutdown().await;
}
