//! The WebSocket layer of `/messages` in echo mode: the same accept loop,
//! limits, buffers and close handling, with every text or binary message
//! sent back. What the Autobahn conformance suite runs against
//! (`scripts/websocket-conformance.sh`); not for production.
//!
//! ```sh
//! cargo run -p bachata-server --example ws_echo -- --listen 127.0.0.1:9001 --max-frame-bytes 16777216
//! ```

use std::net::SocketAddr;

use tokio_util::sync::CancellationToken;

fn usage() -> ! {
    eprintln!("usage: ws_echo [--listen ADDR] [--max-frame-bytes N]");
    std::process::exit(2)
}

#[tokio::main]
async fn main() {
    let mut listen: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 9001));
    let mut max_frame_bytes = 65_536;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = args.next().unwrap_or_else(|| usage());
        match arg.as_str() {
            "--listen" => listen = value.parse().unwrap_or_else(|_| usage()),
            "--max-frame-bytes" => max_frame_bytes = value.parse().unwrap_or_else(|_| usage()),
            _ => usage(),
        }
    }
    let shutdown = CancellationToken::new();
    let (addr, task) =
        match bachata_server::start_echo(listen, max_frame_bytes, shutdown.clone()).await {
            Ok(started) => started,
            Err(e) => {
                eprintln!("ws_echo: {e}");
                std::process::exit(1);
            }
        };
    eprintln!("ws_echo: echoing on ws://{addr}/messages (frames up to {max_frame_bytes} bytes)");
    let _ = tokio::signal::ctrl_c().await;
    shutdown.cancel();
    let _ = task.await;
}
