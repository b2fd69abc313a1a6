//! The `chaos` scenario: continuous reliable load (through `bachata-client`,
//! which reconnects and resends unconfirmed ids) while a server process is
//! SIGKILLed and restarted K times on the same data directory (or, with
//! several nodes on one Redis, each node in turn); then a drain. Every
//! message that got a 100 must arrive: the report's `lost` must be 0.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bachata_client::{Client, ClientConfig, Outgoing};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use serde::Serialize;
use tokio::time::Instant;

/// The outcome of a run.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Report {
    pub kills: usize,
    pub sent: u64,
    /// Messages that got their 100.
    pub stored: u64,
    /// Stored messages the receivers got (each counted once).
    pub received: u64,
    /// Stored messages that never arrived. Must be 0.
    pub lost: u64,
    pub seconds: f64,
}

fn config(addr: SocketAddr, channel: &str) -> ClientConfig {
    let mut c = ClientConfig::channel(&format!("ws://{addr}"), channel);
    c.timeout = Duration::from_secs(30);
    c.min_backoff = Duration::from_millis(50);
    c.max_backoff = Duration::from_millis(500);
    c.ping_interval = Duration::from_secs(2);
    c
}

/// The ids the senders saw stored and the receivers saw arrive, shared by
/// every task of a run.
#[derive(Default)]
struct Ledger {
    /// Ids that got their 100.
    stored: Mutex<HashSet<String>>,
    /// Ids a receiver got.
    received: Mutex<HashSet<String>>,
    /// Messages the senders handed to their client.
    sent: AtomicU64,
}

impl Ledger {
    /// Copies of the stored and the received ids (empty if a lock is
    /// poisoned), so set arithmetic runs without holding either lock.
    fn snapshot(&self) -> (HashSet<String>, HashSet<String>) {
        let stored = self.stored.lock().map(|s| s.clone()).unwrap_or_default();
        let received = self.received.lock().map(|r| r.clone()).unwrap_or_default();
        (stored, received)
    }
}

/// Runs `pairs` sender/receiver pairs for `duration`, the senders on
/// `senders_at` and the receivers on `receivers_at` (the same server, or
/// two nodes of one Redis), calling `kill_and_restart(k)` for the `k`-th of
/// `kills` kills at even intervals meanwhile.
pub(crate) async fn run<F, Fut>(
    senders_at: SocketAddr,
    receivers_at: SocketAddr,
    pairs: usize,
    window: usize,
    duration: Duration,
    kills: usize,
    mut kill_and_restart: F,
) -> anyhow::Result<Report>
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let started = Instant::now();
    let ledger: Arc<Ledger> = Arc::default();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut receivers = Vec::new();
    for i in 0..pairs {
        let client = Client::connect(config(receivers_at, &format!("chaos-r{i}"))).await?;
        receivers.push(tokio::spawn(receive_ids(
            client,
            ledger.clone(),
            stopped.clone(),
        )));
    }
    let deadline = started + duration;
    let mut senders = Vec::new();
    for i in 0..pairs {
        let client = Client::connect(config(senders_at, &format!("chaos-s{i}"))).await?;
        senders.push(tokio::spawn(send_until(
            client,
            i,
            window,
            deadline,
            ledger.clone(),
        )));
    }
    // The kills, evenly spread over the load.
    for k in 0..kills {
        let at = started + duration.mul_f64((k + 1) as f64 / (kills + 1) as f64);
        tokio::time::sleep_until(at).await;
        kill_and_restart(k).await?;
    }
    for s in senders {
        let _ = s.await;
    }
    wait_until_stored_arrived(&ledger).await;
    let _ = stop.send(true);
    for r in receivers {
        let _ = tokio::time::timeout(Duration::from_secs(10), r).await;
    }
    let (stored, received) = ledger.snapshot();
    let lost = stored.difference(&received).count() as u64;
    Ok(Report {
        kills,
        sent: ledger.sent.load(Ordering::Relaxed),
        stored: stored.len() as u64,
        received: stored.intersection(&received).count() as u64,
        lost,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// A receiver: records the id of every message until `stopped` turns true
/// (or the client ends), then closes.
async fn receive_ids(
    mut client: Client,
    ledger: Arc<Ledger>,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            m = client.recv() => {
                let Some(m) = m else { break };
                if let (Some(id), Ok(mut r)) = (m.id(), ledger.received.lock()) {
                    r.insert(id.to_owned());
                }
            }
            _ = stopped.wait_for(|s| *s) => break,
        }
    }
    client.close().await;
}

/// Sender `i`: keeps `window` messages to receiver `i` waiting for their
/// 100 until `deadline`, then waits for the rest. A message counts as
/// stored only once its 100 came; 60 s without a single 100 ends the sender.
async fn send_until(
    client: Client,
    i: usize,
    window: usize,
    deadline: Instant,
    ledger: Arc<Ledger>,
) {
    let mut waiting = FuturesUnordered::new();
    let mut n = 0u64;
    while Instant::now() < deadline || !waiting.is_empty() {
        while Instant::now() < deadline && waiting.len() < window {
            let id = format!("s{i}-{n}");
            n += 1;
            let out = Outgoing::direct(&format!("chaos-r{i}"), serde_json::json!(n));
            let Ok(out) = out.id(&id) else { continue };
            match client.send(out).await {
                Ok(mut handle) => {
                    ledger.sent.fetch_add(1, Ordering::Relaxed);
                    waiting.push(async move { (id, handle.stored().await) });
                }
                Err(_) => break,
            }
        }
        let next = tokio::time::timeout(Duration::from_secs(60), waiting.next()).await;
        match next {
            Ok(Some((id, Ok(())))) => {
                if let Ok(mut s) = ledger.stored.lock() {
                    s.insert(id);
                }
            }
            Ok(Some((_, Err(_)))) => {}
            Ok(None) => tokio::time::sleep(Duration::from_millis(5)).await,
            Err(_) => break,
        }
    }
    client.close().await;
}

/// The drain: waits (at most 60 s) until every stored message arrived.
async fn wait_until_stored_arrived(ledger: &Ledger) {
    let drain_until = Instant::now() + Duration::from_secs(60);
    loop {
        let missing = {
            let (stored, received) = ledger.snapshot();
            stored.difference(&received).count()
        };
        if missing == 0 || Instant::now() > drain_until {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
