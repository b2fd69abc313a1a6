//! `bachata-bench`: load for bachata, with the machine's limit beside it.
//!
//! ```sh
//! cargo build --release
//! target/release/bachata-bench pairs --spawn target/release/bachata --pairs 50 --window 64 --duration 10s
//! ```
//! runs the same `pairs` load against a null relay (a bare WebSocket relay,
//! in its own process) and against a `bachata serve` it starts on a fresh
//! data directory, then prints messages/s, latencies, server CPU seconds per
//! 100k messages and RSS for both, and the ratio. Loopback only; bounded in
//! time and count. Exits non-zero if any message was lost, duplicated or
//! reordered.

mod chaos;
mod idle;
mod pairs;
mod relay;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

#[derive(Debug, Parser)]
#[command(name = "bachata-bench", about)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run the bare relay that marks the machine's limit.
    NullRelay {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
    },
    /// P sender/receiver pairs with W messages in flight each.
    Pairs(PairsArgs),
    /// Reliable load while the server is SIGKILLed and restarted K times;
    /// every message that got a 100 must arrive.
    Chaos {
        /// The `bachata` binary to spawn (embedded store).
        #[arg(long)]
        spawn: PathBuf,
        #[arg(long, default_value_t = 5)]
        kills: usize,
        #[arg(long, default_value_t = 10)]
        pairs: usize,
        #[arg(long, default_value_t = 16)]
        window: usize,
        #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
        duration: Duration,
        #[arg(long)]
        json: bool,
    },
    /// N idle connections; the server's RSS growth per connection.
    Idle {
        /// The `bachata` binary to spawn (memory store).
        #[arg(long)]
        spawn: PathBuf,
        #[arg(long, default_value_t = 10_000)]
        connections: usize,
        /// Loopback source addresses to spread connections over.
        #[arg(long, default_value_t = 4)]
        sources: u8,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, clap::Args)]
struct PairsArgs {
    /// Run against this server (`ws://127.0.0.1:8000`) instead of spawning.
    #[arg(long, conflicts_with = "spawn")]
    url: Option<String>,
    /// Spawn this `bachata` binary (and a null relay) and measure both.
    #[arg(long)]
    spawn: Option<PathBuf>,
    /// Store for the spawned server.
    #[arg(long, default_value = "embedded")]
    store: String,
    #[arg(long, default_value_t = 50)]
    pairs: usize,
    #[arg(long, default_value_t = 64)]
    window: usize,
    /// Approximate payload bytes per message.
    #[arg(long, default_value_t = 100)]
    payload: usize,
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Upper bound on messages per pair.
    #[arg(long, default_value_t = 1_000_000)]
    max_per_pair: u64,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
struct Measured {
    target: String,
    report: pairs::Report,
    cpu_seconds: Option<f64>,
    cpu_seconds_per_100k: Option<f64>,
    rss_kb: Option<u64>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("runtime")?;
    match cli.command {
        Cmd::NullRelay { listen } => runtime.block_on(relay::serve(listen)),
        Cmd::Chaos {
            spawn: bachata,
            kills,
            pairs,
            window,
            duration,
            json,
        } => {
            let ok = runtime.block_on(chaos_cmd(bachata, kills, pairs, window, duration, json))?;
            if !ok {
                std::process::exit(1);
            }
            Ok(())
        }
        Cmd::Idle {
            spawn: bachata,
            connections,
            sources,
            json,
        } => runtime.block_on(idle_cmd(bachata, connections, sources, json)),
        Cmd::Pairs(args) => {
            let ok = runtime.block_on(pairs_cmd(args))?;
            if !ok {
                std::process::exit(1);
            }
            Ok(())
        }
    }
}

/// Utime + stime of a process, in seconds (Linux, clock ticks of 100 Hz).
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

fn rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Spawns a process and waits for the line that carries its address.
async fn spawn(
    mut cmd: Command,
    marker: &str,
    from_stderr: bool,
) -> anyhow::Result<(Child, String)> {
    cmd.kill_on_drop(true).stdin(Stdio::null());
    if from_stderr {
        cmd.stderr(Stdio::piped()).stdout(Stdio::null());
    } else {
        cmd.stdout(Stdio::piped()).stderr(Stdio::null());
    }
    let mut child = cmd.spawn().context("spawn")?;
    let lines: Box<dyn tokio::io::AsyncRead + Unpin + Send> = if from_stderr {
        Box::new(child.stderr.take().context("stderr")?)
    } else {
        Box::new(child.stdout.take().context("stdout")?)
    };
    let mut lines = BufReader::new(lines).lines();
    let addr = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(line) = lines.next_line().await? {
            if let Some(pos) = line.find(marker) {
                let rest = &line[pos + marker.len()..];
                return Ok(rest
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_owned());
            }
        }
        anyhow::bail!("exited before printing its address")
    })
    .await
    .context("start timed out")??;
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok((child, addr))
}

async fn measure(
    target: &str,
    url: &str,
    pid: Option<u32>,
    args: &PairsArgs,
) -> anyhow::Result<Measured> {
    let opts = pairs::Options {
        url: url.to_owned(),
        pairs: args.pairs,
        window: args.window,
        payload: args.payload,
        duration: args.duration,
        max_per_pair: args.max_per_pair,
        prefix: format!("{target}-"),
    };
    let before = pid.and_then(cpu_seconds);
    let report = pairs::run(&opts).await?;
    let after = pid.and_then(cpu_seconds);
    let cpu = before.zip(after).map(|(b, a)| a - b);
    Ok(Measured {
        target: target.to_owned(),
        cpu_seconds_per_100k: cpu.map(|c| c / (report.delivered.max(1) as f64) * 100_000.0),
        cpu_seconds: cpu,
        rss_kb: pid.and_then(rss_kb),
        report,
    })
}

fn print(m: &Measured) {
    let r = &m.report;
    println!(
        "{:<10} {:>10.0} msg/s  delivered {:>9}  100 p50/p99 {:>6}/{:>6} us  recv p50/p99 {:>6}/{:>6} us  300 p50/p99 {:>6}/{:>6} us  cpu/100k {}  rss {}",
        m.target,
        r.msgs_per_sec,
        r.delivered,
        r.send_to_100.p50_us,
        r.send_to_100.p99_us,
        r.send_to_receive.p50_us,
        r.send_to_receive.p99_us,
        r.send_to_300.p50_us,
        r.send_to_300.p99_us,
        m.cpu_seconds_per_100k
            .map_or("-".into(), |c| format!("{c:.2}s")),
        m.rss_kb.map_or("-".into(), |k| format!("{k} KB")),
    );
    for e in r.exactness_errors.iter().take(20) {
        println!("  EXACTNESS: {e}");
    }
}

async fn pairs_cmd(args: PairsArgs) -> anyhow::Result<bool> {
    let mut results = Vec::new();
    if let Some(url) = &args.url {
        results.push(measure("server", url, None, &args).await?);
    } else {
        let bachata = args.spawn.clone().context("give --url or --spawn")?;
        let mut relay_cmd = Command::new(std::env::current_exe()?);
        relay_cmd.arg("null-relay");
        let (relay, relay_addr) = spawn(relay_cmd, "listening ", false).await?;
        results.push(measure("null", &format!("ws://{relay_addr}"), relay.id(), &args).await?);
        drop(relay);
        let dir = tempfile::tempdir()?;
        let mut server_cmd = Command::new(bachata);
        server_cmd
            .args(["serve", "--listen", "127.0.0.1:0", "--store", &args.store])
            .arg("--data-dir")
            .arg(dir.path())
            .env("BACHATA_LOG", "warn,bachata_server=info");
        let (server, addr) = spawn(server_cmd, "addr=", true).await?;
        results.push(
            measure(
                &format!("bachata-{}", args.store),
                &format!("ws://{addr}"),
                server.id(),
                &args,
            )
            .await?,
        );
        drop(server);
    }
    let ok = results.iter().all(|m| m.report.exactness_errors.is_empty());
    if args.json {
        println!("{}", serde_json::to_string_pretty(&results)?);
    } else {
        for m in &results {
            print(m);
        }
        if let [null, server] = results.as_slice() {
            println!(
                "ratio: {:.2}x the null relay's msgs/s",
                server.report.msgs_per_sec / null.report.msgs_per_sec.max(1.0)
            );
        }
        println!(
            "exactness: {}",
            if ok {
                "ok (no loss, duplicate or reorder)"
            } else {
                "FAILED"
            }
        );
    }
    Ok(ok)
}

async fn idle_cmd(bachata: PathBuf, n: usize, sources: u8, json: bool) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut cmd = Command::new(bachata);
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--store", "memory"])
        .arg("--data-dir")
        .arg(dir.path())
        .env("BACHATA_LOG", "warn,bachata_server=info");
    let (server, addr) = spawn(cmd, "addr=", true).await?;
    let pid = server.id().context("server pid")?;
    let report = idle::run(addr.parse()?, n, sources, || rss_kb(pid)).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "idle: {} connections, server RSS {} KB -> {} KB: {:.1} KB per idle connection",
            report.connections, report.rss_before_kb, report.rss_after_kb, report.kb_per_connection
        );
    }
    drop(server);
    Ok(())
}

async fn chaos_cmd(
    bachata: PathBuf,
    kills: usize,
    pairs: usize,
    window: usize,
    duration: Duration,
    json: bool,
) -> anyhow::Result<bool> {
    let dir = tempfile::tempdir()?;
    // A fixed port, so clients reconnect to the restarted server.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let listen = format!("127.0.0.1:{port}");
    let start = || {
        let mut cmd = Command::new(&bachata);
        cmd.args(["serve", "--listen", &listen, "--store", "embedded"])
            .arg("--data-dir")
            .arg(dir.path())
            .env("BACHATA_LOG", "warn,bachata_server=info");
        spawn(cmd, "addr=", true)
    };
    let (server, addr) = start().await?;
    let server = Arc::new(tokio::sync::Mutex::new(server));
    let handle = server.clone();
    let report = chaos::run(addr.parse()?, pairs, window, duration, kills, || {
        let handle = handle.clone();
        let start = &start;
        async move {
            let mut child = handle.lock().await;
            child.start_kill()?;
            child.wait().await?;
            let (new, _) = start().await?;
            *child = new;
            Ok(())
        }
    })
    .await?;
    let ok = report.lost == 0 && report.stored > 0;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "chaos: {} kills in {:.1}s; sent {}, stored (100) {}, received {}, lost = {}",
            report.kills, report.seconds, report.sent, report.stored, report.received, report.lost
        );
        println!(
            "{}",
            if ok {
                "lost = 0"
            } else {
                "FAILED: messages with a 100 were lost"
            }
        );
    }
    Ok(ok)
}
