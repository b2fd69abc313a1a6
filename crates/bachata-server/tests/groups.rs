//! The group route through a real server (protocol.md section 4): fan-out to every member
//! but the sender, per-member acks and 300s, forbidden non-members.

mod common;

use bachata_proto::{Channel, GroupId};
use bachata_testkit::client::TestClient;
use common::{TestServer, start, start_embedded};
use serde_json::json;

async fn join(s: &TestServer, group: &str, members: &[&str]) {
    let store = s.server.center().store();
    for m in members {
        store
            .add_member(
                &GroupId::new(group).expect("group"),
                &Channel::new(m).expect("channel"),
            )
            .await
            .expect("add member");
    }
}

fn group_msg(id: &str, group: &str) -> serde_json::Value {
    json!({"id": id, "type": "group", "dest": group, "data": {"text": "hi all"}})
}

#[tokio::test]
async fn a_group_message_reaches_every_member_but_the_sender() {
    let s = start_embedded().await;
    join(&s, "team", &["alice", "bob", "carol"]).await;
    let mut alice = TestClient::connect(s.addr(), "alice").await;
    let mut bob = TestClient::connect(s.addr(), "bob").await;
    alice.send(group_msg("g1", "team")).await;
    alice.expect(100, "g1").await;
    let m = bob.recv().await;
    assert_eq!(
        (m["id"].as_str(), m["from"].as_str()),
        (Some("g1"), Some("alice"))
    );
    assert_eq!(m["dest"], "team");
    // Carol was offline: she gets it on connect.
    let mut carol = TestClient::connect(s.addr(), "carol").await;
    assert_eq!(carol.recv().await["id"], "g1");
    // One 300 per member, each naming the member.
    bob.ack("g1").await;
    assert_eq!(
        alice.recv().await,
        json!({"type": 300, "data": "g1", "from": "bob"})
    );
    carol.ack("g1").await;
    assert_eq!(
        alice.recv().await,
        json!({"type": 300, "data": "g1", "from": "carol"})
    );
    assert!(
        alice.sync().await.is_empty(),
        "no 300 for the sender itself"
    );
    // Each member acks on its own: bob's ack did not ack carol's copy, and a
    // second connection of bob gets nothing more.
    let mut bob2 = TestClient::connect(s.addr(), "bob").await;
    assert!(bob2.sync().await.is_empty());
}

#[tokio::test]
async fn non_members_get_forbidden() {
    let s = start().await;
    join(&s, "team", &["alice", "bob"]).await;
    let mut mallory = TestClient::connect(s.addr(), "mallory").await;
    mallory.send(group_msg("g1", "team")).await;
    let v = mallory.recv().await;
    assert_eq!(v["type"], 400);
    assert_eq!(v["error"], "forbidden");
    assert_eq!(v["data"], "g1");
    // An unknown group is forbidden too (nobody is a member).
    mallory.send(group_msg("g2", "nope")).await;
    assert_eq!(mallory.recv().await["error"], "forbidden");
    // Bad group messages are invalid.
    mallory
        .send(json!({"id": "g3", "type": "group", "data": 1}))
        .await;
    assert_eq!(mallory.recv().await["error"], "invalid_message");
    let mut bob = TestClient::connect(s.addr(), "bob").await;
    assert!(bob.sync().await.is_empty(), "nothing reached the members");
}

#[tokio::test]
async fn membership_changes_apply_to_later_messages() {
    let s = start().await;
    join(&s, "team", &["alice", "bob"]).await;
    let mut alice = TestClient::connect(s.addr(), "alice").await;
    alice.send(group_msg("g1", "team")).await;
    alice.expect(100, "g1").await;
    join(&s, "team", &["dave"]).await;
    s.server
        .center()
        .store()
        .remove_member(
            &GroupId::new("team").expect("group"),
            &Channel::new("bob").expect("channel"),
        )
        .await
        .expect("remove");
    alice.send(group_msg("g2", "team")).await;
    alice.expect(100, "g2").await;
    let mut bob = TestClient::connect(s.addr(), "bob").await;
    assert_eq!(bob.recv().await["id"], "g1");
    assert!(bob.sync().await.is_empty(), "bob left before g2");
    let mut dave = TestClient::connect(s.addr(), "dave").await;
    assert_eq!(dave.recv().await["id"], "g2");
    assert!(dave.sync().await.is_empty(), "dave joined after g1");
}
