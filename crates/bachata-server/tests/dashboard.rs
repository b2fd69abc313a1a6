//! docs/grafana-dashboard.json queries only metrics the server exports.

mod common;

use std::collections::BTreeSet;

#[tokio::test]
async fn every_metric_of_the_grafana_dashboard_is_exported() {
    let s = common::start_with(|c| {
        c.connect_hook = Some("http://127.0.0.1:9/connect".into());
        c.route_hook = Some("http://127.0.0.1:9/route".into());
        c.undelivered_webhook = Some("http://127.0.0.1:9/undelivered".into());
    })
    .await;
    let (status, exported) = bachata_testkit::http::get(s.addr(), "/metrics").await;
    assert_eq!(status, 200);
    let exported: BTreeSet<&str> = exported
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split([' ', '{']).next())
        .collect();
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../docs/grafana-dashboard.json"
        ))
        .expect("read the dashboard"),
    )
    .expect("the dashboard is JSON");
    let mut queried = BTreeSet::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            let mut rest = expr;
            while let Some(at) = rest.find("bachata_") {
                let name: String = rest[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                rest = &rest[at + name.len()..];
                queried.insert(name);
            }
        }
    }
    assert!(queried.len() > 15, "{queried:?}");
    let missing: Vec<&String> = queried
        .iter()
        .filter(|name| !exported.contains(name.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "not exported: {missing:?}\nexported: {exported:?}"
    );
}
