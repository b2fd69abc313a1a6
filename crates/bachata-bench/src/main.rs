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
//!
//! Other scenarios: `fanout` (one group of N members, S of them sending),
//! `reconnect` (R offline receivers with M pending messages each connect at
//! once, drain, ack and leave, for some rounds), `idle` (RSS per idle
//! connection) and `chaos` (SIGKILL and restart under load, lost = 0).

mod chaos;
mod cpu_check;
mod fanout;
mod fsync;
mod hook;
mod http;
mod idle;
mod pairs;
mod reconnect;
mod relay;
mod servers;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use serde::Serialize;
use tokio::process::Command;

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
    /// One group of N members; S of them send group messages with W in
    /// flight each (until every member's 300); all members ack.
    Fanout(FanoutArgs),
    /// R receivers offline while M messages are queued for each; then all
    /// connect at once, drain, ack and disconnect; repeated for some rounds.
    Reconnect(ReconnectArgs),
    /// Reliable load while the server is SIGKILLed and restarted K times;
    /// every message that got a 100 must arrive.
    Chaos {
        /// The `bachata` binary to spawn.
        #[arg(long)]
        spawn: PathBuf,
        /// `embedded` (one node, restarted on its data directory) or
        /// `redis` (one redis-server of the run's own, with AOF, that stays
        /// up while the nodes are killed).
        #[arg(long, default_value = "embedded")]
        store: String,
        /// The redis-server binary, for --store redis.
        #[arg(long, default_value = "redis-server")]
        redis_server: PathBuf,
        /// Nodes on one Redis (--store redis): senders on the first,
        /// receivers on the last, the kills going round them.
        #[arg(long, default_value_t = 1)]
        nodes: usize,
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
    /// The disk's limit: append + fdatasync latency in a directory.
    Fsync {
        /// Where to write (the data directory's file system).
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        #[arg(long, default_value_t = 2000)]
        count: usize,
        #[arg(long, default_value_t = 512)]
        bytes: usize,
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
        /// Fail (exit status 1) when the server's RSS per idle connection
        /// is above this many KB, or when fewer connections than asked
        /// could be opened (CI's idle memory check).
        #[arg(long)]
        max_kb_per_connection: Option<f64>,
    },
}

#[derive(Debug, clap::Args)]
struct PairsArgs {
    /// With `--spawn`, a null relay is spawned and measured too.
    #[command(flatten)]
    target: Target,
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
    /// After each store's run, run it again with a route hook (served by
    /// this process) that answers every message `{"pass": true}`.
    #[arg(long, requires = "spawn")]
    route_hook_pass: bool,
    /// How long the route hook of `--route-hook-pass` takes to answer each
    /// call (an application that queries its database, say).
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration, requires = "route_hook_pass")]
    route_hook_delay: Duration,
    /// `--route-hook-batch` of the spawned server for the hooked run: how
    /// many messages one hook call carries at most (the bench's hook
    /// answers batches too).
    #[arg(long, default_value_t = 1, requires = "route_hook_pass")]
    route_hook_batch: usize,
    /// Repeat the whole run (the null relay, then each store) this many
    /// times; the CPU check takes the median of the rounds' ratios.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=20))]
    rounds: u32,
    /// Fail when the first store's server CPU per 100k messages, as a ratio
    /// to the null relay's in the same round (the median over `--rounds`),
    /// is more than `--cpu-tolerance` above the ratio in this baseline file
    /// (written by `--write-cpu-baseline`; CI's regression check).
    #[arg(long, requires = "spawn")]
    cpu_baseline: Option<PathBuf>,
    /// How far above the baseline ratio `--cpu-baseline` lets a run go.
    #[arg(long, default_value_t = 0.30, requires = "cpu_baseline")]
    cpu_tolerance: f64,
    /// Write the measured CPU ratio (median over `--rounds`) to this file as
    /// the new baseline for `--cpu-baseline`.
    #[arg(long, requires = "spawn")]
    write_cpu_baseline: Option<PathBuf>,
}

/// Where the `pairs`, `fanout` and `reconnect` scenarios run.
#[derive(Debug, clap::Args)]
struct Target {
    /// Run against this server (`ws://127.0.0.1:8000`) instead of spawning.
    #[arg(long, conflicts_with = "spawn")]
    url: Option<String>,
    /// The API key of the server at `--url` (none: loopback anonymous mode).
    #[arg(long, requires = "url")]
    api_key: Option<String>,
    /// Spawn this `bachata` binary on a fresh data directory.
    #[arg(long)]
    spawn: Option<PathBuf>,
    /// Store for the spawned server: `embedded`, `memory` or `redis` (a
    /// `redis-server` of its own, AOF with `appendfsync everysec`). `pairs`
    /// takes a comma list and measures each in turn.
    #[arg(long, default_value = "embedded")]
    store: String,
    /// Spawned bachata nodes (more than one need `--store redis`): senders
    /// connect to the first, receivers to the last.
    #[arg(long, default_value_t = 1)]
    nodes: usize,
    /// The `redis-server` binary for `--store redis`.
    #[arg(long, default_value = "redis-server")]
    redis_server: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
struct FanoutArgs {
    #[command(flatten)]
    target: Target,
    /// Members of the group (each one connection).
    #[arg(long, default_value_t = 100)]
    members: usize,
    /// How many of the members send.
    #[arg(long, default_value_t = 1)]
    senders: usize,
    /// Messages each sender keeps in flight (until every member's 300).
    #[arg(long, default_value_t = 16)]
    window: usize,
    /// Approximate payload bytes per message.
    #[arg(long, default_value_t = 100)]
    payload: usize,
    /// How long the senders send (then a drain of at most 30 s).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Upper bound on messages per sender.
    #[arg(long, default_value_t = 1_000_000)]
    max_per_sender: u64,
}

#[derive(Debug, clap::Args)]
struct ReconnectArgs {
    #[command(flatten)]
    target: Target,
    /// Receiver channels (each reconnects once per round).
    #[arg(long, default_value_t = 200)]
    receivers: usize,
    /// Sender connections queueing the messages (online throughout).
    #[arg(long, default_value_t = 4)]
    senders: usize,
    /// Pending messages per receiver and round.
    #[arg(long, default_value_t = 10)]
    messages: usize,
    /// Rounds of queueing, then the storm.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// No round starts after this.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Receivers connecting or connected at once.
    #[arg(long, default_value_t = 200)]
    concurrency: usize,
    /// 100s each sender awaits at once while queueing.
    #[arg(long, default_value_t = 64)]
    window: usize,
    /// Approximate payload bytes per message.
    #[arg(long, default_value_t = 100)]
    payload: usize,
}

#[derive(Debug, Serialize)]
struct Measured {
    target: String,
    /// bachata nodes (1 unless `--nodes`).
    nodes: usize,
    report: pairs::Report,
    /// Of every bachata node together (of the relay, for `null`).
    cpu_seconds: Option<f64>,
    cpu_seconds_per_100k: Option<f64>,
    /// Of the `redis-server`, with `--store redis`.
    redis_cpu_seconds: Option<f64>,
    redis_cpu_seconds_per_100k: Option<f64>,
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
            store,
            redis_server,
            nodes,
            kills,
            pairs,
            window,
            duration,
            json,
        } => {
            let spawn = servers::Spawn {
                bachata,
                store,
                redis_server,
                extra_args: Vec::new(),
            };
            let load = ChaosLoad {
                kills,
                pairs,
                window,
                duration,
            };
            let ok = runtime.block_on(chaos_cmd(spawn, nodes, load, json))?;
            if !ok {
                std::process::exit(1);
            }
            Ok(())
        }
        Cmd::Fsync {
            dir,
            count,
            bytes,
            json,
        } => {
            let report = fsync::run(&dir, count.clamp(1, 1_000_000), bytes)?;
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                println!(
                    "fsync: {} appends of {} B + fdatasync in {}: p50 {} us, p99 {} us, p999 {} us, max {} us",
                    report.syncs,
                    report.bytes_per_append,
                    dir.display(),
                    report.p50_us,
                    report.p99_us,
                    report.p999_us,
                    report.max_us
                );
            }
            Ok(())
        }
        Cmd::Idle {
            spawn: bachata,
            connections,
            sources,
            json,
            max_kb_per_connection,
        } => {
            let report = runtime.block_on(idle_cmd(bachata, connections, sources, json))?;
            if let Some(max) = max_kb_per_connection {
                let verdict = idle::check(&report, max);
                println!("{verdict}");
                if !verdict.passed {
                    std::process::exit(1);
                }
            }
            Ok(())
        }
        Cmd::Pairs(args) => {
            let ok = runtime.block_on(pairs_cmd(args))?;
            if !ok {
                std::process::exit(1);
            }
            Ok(())
        }
        Cmd::Fanout(args) => {
            let ok = runtime.block_on(fanout_cmd(args))?;
            if !ok {
                std::process::exit(1);
            }
            Ok(())
        }
        Cmd::Reconnect(args) => {
            let ok = runtime.block_on(reconnect_cmd(args))?;
            if !ok {
                std::process::exit(1);
            }
            Ok(())
        }
    }
}

/// The closing lines of a report: the ratio to the null relay of the same
/// invocation (when there was one) and the exactness verdict.
fn print_verdict(ratio: Option<f64>, unit: &str, ok: bool, what: &str) {
    if let Some(ratio) = ratio {
        println!("ratio: {ratio:.2}x the null relay's {unit}");
    }
    if ok {
        println!("exactness: ok ({what})");
    } else {
        println!("exactness: FAILED");
    }
}

/// Where one `pairs` run goes and what it measures besides the load.
struct PairsTarget<'a> {
    name: String,
    /// Senders connect here.
    url: String,
    /// Receivers connect here (another node, or the same).
    receiver_url: String,
    nodes: usize,
    /// CPU so far of the processes serving the run.
    cpu: Box<dyn Fn() -> servers::Cpu + 'a>,
    rss_kb: Box<dyn Fn() -> Option<u64> + 'a>,
}

async fn measure(target: PairsTarget<'_>, args: &PairsArgs) -> anyhow::Result<Measured> {
    let opts = pairs::Options {
        url: target.url.clone(),
        receiver_url: target.receiver_url.clone(),
        pairs: args.pairs,
        window: args.window,
        payload: args.payload,
        duration: args.duration,
        max_per_pair: args.max_per_pair,
        // A server at --url may have seen this bench before: ids it still
        // remembers (dedupe window) would get a 100 and no delivery.
        prefix: if args.target.url.is_some() {
            fresh_prefix(&target.name)
        } else {
            format!("{}-", target.name)
        },
    };
    let before = (target.cpu)();
    let report = pairs::run(&opts).await?;
    let used = before.until((target.cpu)());
    let per_100k = |c: f64| c / (report.delivered.max(1) as f64) * 100_000.0;
    Ok(Measured {
        target: target.name,
        nodes: target.nodes,
        cpu_seconds_per_100k: used.nodes.map(per_100k),
        cpu_seconds: used.nodes,
        redis_cpu_seconds_per_100k: used.redis.map(per_100k),
        redis_cpu_seconds: used.redis,
        rss_kb: (target.rss_kb)(),
        report,
    })
}

/// A process's CPU as a [`servers::Cpu`] (no Redis).
fn process_cpu(pid: Option<u32>) -> servers::Cpu {
    servers::Cpu {
        nodes: pid.and_then(servers::cpu_seconds),
        redis: None,
    }
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
    if let Some(c) = m.redis_cpu_seconds_per_100k {
        println!("{:<10} redis-server cpu/100k {c:.2}s", "");
    }
    for e in r.exactness_errors.iter().take(20) {
        println!("  EXACTNESS: {e}");
    }
}

async fn pairs_cmd(args: PairsArgs) -> anyhow::Result<bool> {
    let mut results = Vec::new();
    let mut ratios = Vec::new();
    let target = &args.target;
    if let Some(url) = &target.url {
        let server = PairsTarget {
            name: "server".into(),
            url: url.clone(),
            receiver_url: url.clone(),
            nodes: 1,
            cpu: Box::new(|| process_cpu(None)),
            rss_kb: Box::new(|| None),
        };
        results.push(measure(server, &args).await?);
    } else {
        for _ in 0..args.rounds {
            let null = measure_null(&args).await?;
            let round_start = results.len();
            for store in target.store.split(',') {
                results.push(measure_nodes(&args, store, None).await?);
                if args.route_hook_pass {
                    let hook = hook::PassHook::start(args.route_hook_delay).await?;
                    results.push(measure_nodes(&args, store, Some(&hook)).await?);
                    if hook.calls() == 0 {
                        anyhow::bail!("the route hook was never called");
                    }
                }
            }
            if let Some(ratio) = cpu_check::ratio(&null, &results[round_start]) {
                ratios.push(ratio);
            }
            results.insert(round_start, null);
        }
    }
    let ok = results.iter().all(|m| m.report.exactness_errors.is_empty());
    if target.json {
        println!("{}", serde_json::to_string_pretty(&results)?);
    } else {
        for m in &results {
            print(m);
        }
        let ratio = match results.as_slice() {
            [null, server, ..] => {
                Some(server.report.msgs_per_sec / null.report.msgs_per_sec.max(1.0))
            }
            _ => None,
        };
        print_verdict(ratio, "msgs/s", ok, "no loss, duplicate or reorder");
    }
    let load = cpu_check::Load {
        store: target
            .store
            .split(',')
            .next()
            .unwrap_or_default()
            .to_owned(),
        pairs: args.pairs,
        window: args.window,
        payload: args.payload,
        duration_ms: u64::try_from(args.duration.as_millis()).unwrap_or(u64::MAX),
        rounds: args.rounds,
    };
    let mut cpu_ok = true;
    if args.cpu_baseline.is_some() || args.write_cpu_baseline.is_some() {
        let median = cpu_check::median(&ratios).context(
            "no CPU ratio was measured (the server's or the relay's CPU time is unreadable)",
        )?;
        println!(
            "cpu ratio: {median:.2} (server CPU-s per 100k / the null relay's, median of {:?})",
            ratios.iter().map(|r| format!("{r:.2}")).collect::<Vec<_>>()
        );
        if let Some(path) = &args.write_cpu_baseline {
            cpu_check::Baseline::new(load.clone(), median, ratios.clone()).write(path)?;
            println!("cpu baseline written to {}", path.display());
        }
        if let Some(path) = &args.cpu_baseline {
            let verdict =
                cpu_check::Baseline::read(path)?.check(&load, median, args.cpu_tolerance)?;
            println!("{verdict}");
            cpu_ok = verdict.passed();
        }
    }
    Ok(ok && cpu_ok)
}

/// `pairs` against the null relay, the machine's limit.
async fn measure_null(args: &PairsArgs) -> anyhow::Result<Measured> {
    let mut relay_cmd = Command::new(std::env::current_exe()?);
    relay_cmd.arg("null-relay");
    let (relay, relay_addr) = servers::spawn(relay_cmd, "listening ", false).await?;
    let url = format!("ws://{relay_addr}");
    let null = PairsTarget {
        name: "null".into(),
        url: url.clone(),
        receiver_url: url,
        nodes: 1,
        cpu: Box::new(|| process_cpu(relay.id())),
        rss_kb: Box::new(|| relay.id().and_then(servers::rss_kb)),
    };
    measure(null, args).await
}

/// `pairs` against `--nodes` spawned bachata nodes on `store`.
async fn measure_nodes(
    args: &PairsArgs,
    store: &str,
    hook: Option<&hook::PassHook>,
) -> anyhow::Result<Measured> {
    let t = &args.target;
    let spawn = servers::Spawn {
        bachata: t.spawn.clone().context("give --url or --spawn")?,
        store: store.to_owned(),
        redis_server: t.redis_server.clone(),
        extra_args: hook.map_or_else(Vec::new, |h| {
            vec![
                "--route-hook".into(),
                h.url.clone(),
                "--route-hook-batch".into(),
                args.route_hook_batch.to_string(),
            ]
        }),
    };
    let nodes = servers::Nodes::start(&spawn, t.nodes).await?;
    let mut name = match t.nodes {
        1 => format!("bachata-{store}"),
        n => format!("bachata-{store}-x{n}"),
    };
    if hook.is_some() {
        // Not `+`: the name prefixes channel names, and a `+` in a query
        // is a space.
        name.push_str("-hook");
    }
    let target = PairsTarget {
        name,
        url: format!("ws://{}", nodes.first().addr),
        receiver_url: format!("ws://{}", nodes.last().addr),
        nodes: t.nodes,
        cpu: Box::new(|| nodes.cpu()),
        rss_kb: Box::new(|| nodes.rss_kb()),
    };
    measure(target, args).await
}

async fn idle_cmd(
    bachata: PathBuf,
    n: usize,
    sources: u8,
    json: bool,
) -> anyhow::Result<idle::Report> {
    // Both ends of every connection are this host's: this process and the
    // server (which inherits the limit) need a descriptor each.
    let open_file_limit = idle::raise_open_file_limit();
    let dir = tempfile::tempdir()?;
    let mut cmd = Command::new(bachata);
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--store", "memory"])
        .arg("--data-dir")
        .arg(dir.path())
        .env("BACHATA_LOG", "warn,bachata_server=info");
    if n > 10_000 {
        // Past the server's default; it refuses to start, saying why, when
        // the open-file limit has no room for this many.
        cmd.args(["--max-connections", &n.to_string()]);
    }
    let (server, addr) = servers::spawn(cmd, "addr=", true).await?;
    let pid = server.id().context("server pid")?;
    let report = idle::run(
        addr.parse()?,
        n,
        sources,
        || servers::rss_kb(pid),
        open_file_limit,
    )
    .await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "idle: {} connections, server RSS {} KB -> {} KB: {:.1} KB per idle connection",
            report.connections, report.rss_before_kb, report.rss_after_kb, report.kb_per_connection
        );
        if let (Some(b), Some(a)) = (report.kernel_tcp_kb_before, report.kernel_tcp_kb_after) {
            println!("kernel TCP buffers {b} KB -> {a} KB (both ends of each loopback connection)");
        }
        if let (Some(b), Some(a)) = (report.kernel_slab_kb_before, report.kernel_slab_kb_after) {
            println!(
                "kernel slab {b} KB -> {a} KB: {:.1} KB per connection for both ends (machine-wide)",
                a.saturating_sub(b) as f64 / report.connections.max(1) as f64
            );
        }
        println!(
            "open-file limit of each process: {}",
            report
                .open_file_limit
                .map_or("unknown".into(), |l| l.to_string())
        );
        if let Some(limit) = &report.limit_hit {
            println!(
                "stopped at {} of {}: {limit}",
                report.connections, report.asked
            );
        }
    }
    drop(server);
    Ok(report)
}

/// The load and the kills of a `chaos` run.
struct ChaosLoad {
    kills: usize,
    pairs: usize,
    window: usize,
    duration: Duration,
}

async fn chaos_cmd(
    spawn: servers::Spawn,
    nodes: usize,
    load: ChaosLoad,
    json: bool,
) -> anyhow::Result<bool> {
    let nodes = nodes.max(1);
    if nodes > 1 && spawn.store != "redis" {
        anyhow::bail!("several nodes share state only on --store redis");
    }
    let redis = match spawn.store.as_str() {
        "redis" => Some(servers::RedisProcess::start(&spawn.redis_server).await?),
        "embedded" => None,
        other => anyhow::bail!("--store {other}: chaos runs on embedded or redis"),
    };
    // Per node a data directory and a fixed port, so that clients
    // reconnect to the restarted node.
    let mut places = Vec::with_capacity(nodes);
    for _ in 0..nodes {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        places.push((tempfile::tempdir()?, format!("127.0.0.1:{port}")));
    }
    let start = |node: usize| {
        let (dir, listen) = &places[node];
        let mut cmd = Command::new(&spawn.bachata);
        cmd.args(["serve", "--listen", listen, "--store", &spawn.store])
            .arg("--data-dir")
            .arg(dir.path())
            .env("BACHATA_LOG", "warn,bachata_server=info");
        if let Some(redis) = &redis {
            cmd.args(["--redis-url", &redis.url]);
        }
        servers::spawn(cmd, "addr=", true)
    };
    let mut children = Vec::with_capacity(nodes);
    let mut addrs = Vec::with_capacity(nodes);
    for node in 0..nodes {
        let (child, addr) = start(node).await?;
        children.push(child);
        addrs.push(addr.parse::<std::net::SocketAddr>()?);
    }
    let children = Arc::new(tokio::sync::Mutex::new(children));
    let handle = children.clone();
    let ChaosLoad {
        kills,
        pairs,
        window,
        duration,
    } = load;
    let report = chaos::run(
        addrs[0],
        addrs[nodes - 1],
        pairs,
        window,
        duration,
        kills,
        |k| {
            let handle = handle.clone();
            let start = &start;
            async move {
                let node = k % nodes;
                let mut children = handle.lock().await;
                let child = &mut children[node];
                child.start_kill()?;
                child.wait().await?;
                let (new, _) = start(node).await?;
                *child = new;
                Ok(())
            }
        },
    )
    .await?;
    let ok = report.lost == 0 && report.stored > 0;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "chaos ({} store, {nodes} node(s)): {} kills in {:.1}s; sent {}, stored (100) {}, \
             received {}, lost = {}",
            spawn.store,
            report.kills,
            report.seconds,
            report.sent,
            report.stored,
            report.received,
            report.lost
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

/// `host:port` of a `ws://host:port[/...]` URL.
fn host_port(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.split('/').next().unwrap_or(rest)
}

/// What `--spawn`, `--store` and `--redis-server` ask to start.
fn spawn_of(t: &Target, bachata: PathBuf) -> servers::Spawn {
    servers::Spawn {
        bachata,
        store: t.store.clone(),
        redis_server: t.redis_server.clone(),
        extra_args: Vec::new(),
    }
}

/// A prefix no earlier run against the same server used.
fn fresh_prefix(name: &str) -> String {
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    format!("{name}{millis}-")
}

#[derive(Debug, Serialize)]
struct FanoutMeasured {
    target: String,
    report: fanout::Report,
    cpu_seconds: Option<f64>,
    cpu_seconds_per_100k_deliveries: Option<f64>,
    rss_kb: Option<u64>,
}

async fn measure_fanout(
    target: &str,
    opts: fanout::Options,
    pid: Option<u32>,
) -> anyhow::Result<FanoutMeasured> {
    let before = pid.and_then(servers::cpu_seconds);
    let report = fanout::run(&opts).await?;
    let after = pid.and_then(servers::cpu_seconds);
    let cpu = before.zip(after).map(|(b, a)| a - b);
    Ok(FanoutMeasured {
        target: target.to_owned(),
        cpu_seconds_per_100k_deliveries: cpu
            .map(|c| c / (report.deliveries.max(1) as f64) * 100_000.0),
        cpu_seconds: cpu,
        rss_kb: pid.and_then(servers::rss_kb),
        report,
    })
}

fn us(l: &pairs::Latency) -> String {
    format!("{}/{}/{}/{}", l.p50_us, l.p99_us, l.p999_us, l.max_us)
}

async fn fanout_cmd(args: FanoutArgs) -> anyhow::Result<bool> {
    let results = measure_fanout_targets(&args).await?;
    let ok = results.iter().all(|m| m.report.exactness_errors.is_empty());
    if args.target.json {
        println!("{}", serde_json::to_string_pretty(&results)?);
        return Ok(ok);
    }
    print_fanout(&args, &results, ok);
    Ok(ok)
}

fn fanout_options(args: &FanoutArgs, url: String, group: String) -> fanout::Options {
    fanout::Options {
        url,
        group,
        members: args.members,
        senders: args.senders,
        window: args.window,
        payload: args.payload,
        duration: args.duration,
        max_per_sender: args.max_per_sender,
    }
}

/// The server at `--url` alone (in a fresh group), or else the null relay
/// then a spawned server, one after the other.
async fn measure_fanout_targets(args: &FanoutArgs) -> anyhow::Result<Vec<FanoutMeasured>> {
    let t = &args.target;
    let mut results = Vec::new();
    if let Some(url) = &t.url {
        let group = format!("{}g", fresh_prefix("fanout"));
        fanout::create_group(host_port(url), t.api_key.as_deref(), &group, args.members).await?;
        let opts = fanout_options(args, url.clone(), group);
        results.push(measure_fanout("server", opts, None).await?);
    } else {
        let bachata = t.spawn.clone().context("give --url or --spawn")?;
        // The null relay takes the members of group `g` to be the
        // connected channels `g.*`.
        let mut relay_cmd = Command::new(std::env::current_exe()?);
        relay_cmd.arg("null-relay");
        let (relay, relay_addr) = servers::spawn(relay_cmd, "listening ", false).await?;
        let opts = fanout_options(args, format!("ws://{relay_addr}"), "null-g".into());
        results.push(measure_fanout("null", opts, relay.id()).await?);
        drop(relay);
        let (server, _redis) = servers::spawn_server(&spawn_of(t, bachata)).await?;
        let group = "bachata-g";
        fanout::create_group(&server.addr, Some(&server.api_key), group, args.members).await?;
        let opts = fanout_options(args, format!("ws://{}", server.addr), group.into());
        let target = format!("bachata-{}", t.store);
        results.push(measure_fanout(&target, opts, server.child.id()).await?);
        drop(server);
    }
    Ok(results)
}

/// The text report of `fanout`.
fn print_fanout(args: &FanoutArgs, results: &[FanoutMeasured], ok: bool) {
    println!(
        "fanout: a group of {} members, {} sending with {} in flight each; every message goes to {} members",
        args.members,
        args.senders,
        args.window,
        args.members.saturating_sub(1)
    );
    for m in results {
        let r = &m.report;
        println!(
            "{:<16} {:>9.0} deliveries/s {:>8.0} msg/s  deliveries {:>9}  cpu/100k deliveries {}  rss {}",
            m.target,
            r.deliveries_per_sec,
            r.msgs_per_sec,
            r.deliveries,
            m.cpu_seconds_per_100k_deliveries
                .map_or("-".into(), |c| format!("{c:.2}s")),
            m.rss_kb.map_or("-".into(), |k| format!("{k} KB")),
        );
        println!(
            "{:<16} p50/p99/p999/max us: send->100 {}  send->receive {}  send->300 {}",
            "",
            us(&r.send_to_100),
            us(&r.send_to_receive),
            us(&r.send_to_300),
        );
        for e in r.exactness_errors.iter().take(20) {
            println!("  EXACTNESS: {e}");
        }
    }
    let ratio = match results {
        [null, server] => {
            Some(server.report.deliveries_per_sec / null.report.deliveries_per_sec.max(1.0))
        }
        _ => None,
    };
    print_verdict(
        ratio,
        "deliveries/s",
        ok,
        "every member got every message once, in order; one 300 per member",
    );
}

#[derive(Debug, Serialize)]
struct ReconnectMeasured {
    target: String,
    /// Why there is no null relay figure.
    null_baseline: &'static str,
    report: reconnect::Report,
    storm_cpu_seconds_per_1k_reconnects: Option<f64>,
    rss_kb: Option<u64>,
}

async fn reconnect_cmd(args: ReconnectArgs) -> anyhow::Result<bool> {
    let m = measure_reconnect(&args).await?;
    let ok = m.report.exactness_errors.is_empty() && m.report.reconnects > 0;
    if args.target.json {
        println!("{}", serde_json::to_string_pretty(&m)?);
        return Ok(ok);
    }
    print_reconnect(&m, ok);
    Ok(ok)
}

fn reconnect_options(
    args: &ReconnectArgs,
    url: String,
    api: Option<(String, Option<String>)>,
    prefix: String,
) -> reconnect::Options {
    reconnect::Options {
        url,
        api,
        receivers: args.receivers,
        senders: args.senders,
        messages: args.messages,
        rounds: args.rounds,
        duration: args.duration,
        concurrency: args.concurrency,
        window: args.window,
        payload: args.payload,
        prefix,
    }
}

/// The server at `--url` (with fresh channel names), or else a spawned
/// server, whose storm CPU and RSS are measured too.
async fn measure_reconnect(args: &ReconnectArgs) -> anyhow::Result<ReconnectMeasured> {
    let t = &args.target;
    let (target, report, rss) = if let Some(url) = &t.url {
        let api = Some((host_port(url).to_owned(), t.api_key.clone()));
        let opts = reconnect_options(args, url.clone(), api, fresh_prefix("rc"));
        (
            "server".to_owned(),
            reconnect::run(&opts, || None).await?,
            None,
        )
    } else {
        let bachata = t.spawn.clone().context("give --url or --spawn")?;
        let (server, _redis) = servers::spawn_server(&spawn_of(t, bachata)).await?;
        let api = Some((server.addr.clone(), Some(server.api_key.clone())));
        let opts = reconnect_options(args, format!("ws://{}", server.addr), api, "rc-".into());
        let pid = server.child.id();
        let report = reconnect::run(&opts, || pid.and_then(servers::cpu_seconds)).await?;
        let rss = pid.and_then(servers::rss_kb);
        drop(server);
        (format!("bachata-{}", t.store), report, rss)
    };
    Ok(ReconnectMeasured {
        target,
        null_baseline: "none: the null relay stores nothing, so it has no pending messages to drain",
        storm_cpu_seconds_per_1k_reconnects: report
            .storm_cpu_seconds
            .map(|c| c / (report.reconnects.max(1) as f64) * 1000.0),
        rss_kb: rss,
        report,
    })
}

/// The text report of `reconnect`.
fn print_reconnect(m: &ReconnectMeasured, ok: bool) {
    let r = &m.report;
    println!(
        "reconnect ({}): {} rounds of {} receivers x {} pending messages (no null baseline: the relay stores nothing)",
        m.target, r.rounds, r.receivers, r.messages_per_receiver
    );
    println!(
        "  {:.0} reconnects/s ({} in {:.2}s of storms)  time-to-drain p50/p99/max {}/{}/{} us  time-to-ready p50/p99/max {}/{}/{} us",
        r.reconnects_per_sec,
        r.reconnects,
        r.storm_seconds,
        r.time_to_drain.p50_us,
        r.time_to_drain.p99_us,
        r.time_to_drain.max_us,
        r.time_to_ready.p50_us,
        r.time_to_ready.p99_us,
        r.time_to_ready.max_us,
    );
    println!(
        "  queued {} messages at {:.0}/s, 300s {}  storm cpu/1k reconnects {}  rss {}",
        r.queued,
        r.queued_per_sec,
        r.receipts,
        m.storm_cpu_seconds_per_1k_reconnects
            .map_or("-".into(), |c| format!("{c:.2}s")),
        m.rss_kb.map_or("-".into(), |k| format!("{k} KB")),
    );
    for e in r.exactness_errors.iter().take(20) {
        println!("  EXACTNESS: {e}");
    }
    print_verdict(
        None,
        "",
        ok,
        "each receiver got exactly its pending messages, in order; every 300; nothing left pending",
    );
}
