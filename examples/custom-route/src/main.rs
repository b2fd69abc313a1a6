//! A bachata server with a custom route and hook:
//!
//! ```sh
//! cargo run -p bachata-example-custom-route -- agent1 agent2
//! ```
//!
//! then connect as a user and send `{"id":"q1","type":"support","data":"help"}`:
//! every agent gets it, on the embedded store, with all of bachata's
//! guarantees.

use anyhow::Context;
use bachata_example_custom_route::{CountingHook, SupportRoute};
use bachata_proto::Channel;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    let agents = std::env::args()
        .skip(1)
        .map(|a| Channel::new(&a).with_context(|| format!("agent {a:?}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    anyhow::ensure!(!agents.is_empty(), "usage: custom-route AGENT...");
    let config = bachata_server::Config::default();
    let server = bachata_server::start_with(config, |center| {
        center
            .route(SupportRoute::new(agents))
            .hook(CountingHook::default())
    })
    .await
    .context("cannot start the server")?;
    let token = server.shutdown_token();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        token.cancel();
    });
    server.wait().await;
    Ok(())
}
