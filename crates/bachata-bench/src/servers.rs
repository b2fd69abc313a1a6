//! The processes a scenario runs against: `bachata serve` nodes on fresh
//! data directories and ports, and for `--store redis` a `redis-server` of
//! their own; how much CPU and memory they used.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Spawns a process and waits for the line that carries `marker`; returns
/// the word after it (an address, for the servers).
pub(crate) async fn spawn(
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
        // What it said before it exited, for the error.
        let mut said = Vec::new();
        while let Some(line) = lines.next_line().await? {
            if said.len() < 5 {
                said.push(line.clone());
            }
            if let Some(pos) = line.find(marker) {
                let rest = &line[pos + marker.len()..];
                return Ok(rest
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_owned());
            }
        }
        anyhow::bail!(
            "exited before printing its address; it said: {}",
            if said.is_empty() {
                "nothing".into()
            } else {
                said.join(" | ")
            }
        )
    })
    .await
    .context("start timed out")??;
    // The rest of its output is dropped, or passed on with
    // BACHATA_BENCH_SERVER_LOG=1 (to see why a run failed).
    let show = std::env::var_os("BACHATA_BENCH_SERVER_LOG").is_some();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            if show {
                eprintln!("server: {line}");
            }
        }
    });
    Ok((child, addr))
}

/// Utime + stime of a process, in seconds (Linux, clock ticks of 100 Hz).
pub(crate) fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

pub(crate) fn rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// A `redis-server` on a free loopback port and a fresh directory, with
/// AOF on and `appendfsync everysec` (Redis's default once AOF is on; what
/// docs/scaling.md recommends at the least) and no RDB snapshots.
pub(crate) struct RedisProcess {
    child: Child,
    pub(crate) url: String,
    _dir: tempfile::TempDir,
}

impl RedisProcess {
    pub(crate) async fn start(binary: &Path) -> anyhow::Result<RedisProcess> {
        let dir = tempfile::tempdir()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let mut cmd = Command::new(binary);
        cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "yes"])
            .args(["--appendfsync", "everysec", "--logfile", ""])
            .arg("--dir")
            .arg(dir.path());
        let (child, _) = spawn(cmd, "Ready to accept connections", false)
            .await
            .with_context(|| format!("start {}", binary.display()))?;
        Ok(RedisProcess {
            child,
            url: format!("redis://127.0.0.1:{port}"),
            _dir: dir,
        })
    }

    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.id()
    }
}

/// A `bachata serve` on a fresh data directory and port, with an API key.
pub(crate) struct Server {
    pub(crate) child: Child,
    /// `host:port`
    pub(crate) addr: String,
    pub(crate) api_key: String,
    _dir: tempfile::TempDir,
}

/// What to spawn: the binaries and the store.
#[derive(Debug, Clone)]
pub(crate) struct Spawn {
    pub(crate) bachata: PathBuf,
    /// `embedded`, `memory` or `redis`.
    pub(crate) store: String,
    pub(crate) redis_server: PathBuf,
    /// More `serve` arguments for every node (`--route-hook URL`, say).
    pub(crate) extra_args: Vec<String>,
}

/// One or more bachata nodes, and the Redis they share (`--store redis`).
pub(crate) struct Nodes {
    pub(crate) servers: Vec<Server>,
    pub(crate) redis: Option<RedisProcess>,
}

impl Nodes {
    /// Starts `count` nodes; more than one need the Redis store.
    pub(crate) async fn start(spawn: &Spawn, count: usize) -> anyhow::Result<Nodes> {
        if count > 1 && spawn.store != "redis" {
            anyhow::bail!("several nodes share state only on --store redis");
        }
        let redis = match spawn.store.as_str() {
            "redis" => Some(RedisProcess::start(&spawn.redis_server).await?),
            _ => None,
        };
        let mut servers = Vec::with_capacity(count);
        for _ in 0..count.max(1) {
            let url = redis.as_ref().map(|r| r.url.as_str());
            servers.push(start_server(spawn, url).await?);
        }
        Ok(Nodes { servers, redis })
    }

    /// The first node, where senders connect.
    pub(crate) fn first(&self) -> &Server {
        &self.servers[0]
    }

    /// The last node, where receivers connect (the first when alone).
    pub(crate) fn last(&self) -> &Server {
        &self.servers[self.servers.len() - 1]
    }

    /// CPU seconds of every bachata node and of Redis, so far.
    pub(crate) fn cpu(&self) -> Cpu {
        Cpu {
            nodes: self
                .servers
                .iter()
                .map(|s| s.child.id().and_then(cpu_seconds))
                .sum(),
            redis: self
                .redis
                .as_ref()
                .and_then(|r| r.pid().and_then(cpu_seconds)),
        }
    }

    /// RSS of the bachata nodes together.
    pub(crate) fn rss_kb(&self) -> Option<u64> {
        self.servers
            .iter()
            .map(|s| s.child.id().and_then(rss_kb))
            .sum()
    }
}

/// CPU seconds used so far.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Cpu {
    /// Every bachata node together.
    pub(crate) nodes: Option<f64>,
    pub(crate) redis: Option<f64>,
}

impl Cpu {
    /// What was used between `self` and `later`.
    pub(crate) fn until(self, later: Cpu) -> Cpu {
        Cpu {
            nodes: self.nodes.zip(later.nodes).map(|(a, b)| b - a),
            redis: self.redis.zip(later.redis).map(|(a, b)| b - a),
        }
    }
}

async fn start_server(what: &Spawn, redis_url: Option<&str>) -> anyhow::Result<Server> {
    let dir = tempfile::tempdir()?;
    let api_key = format!("bench-{}", std::process::id());
    let mut cmd = Command::new(&what.bachata);
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--store", &what.store])
        .args(&what.extra_args)
        .arg("--data-dir")
        .arg(dir.path())
        .env("BACHATA_API_KEY", &api_key)
        .env("BACHATA_LOG", "warn,bachata_server=info")
        // The bench's own switch: the server refuses unknown BACHATA_*.
        .env_remove("BACHATA_BENCH_SERVER_LOG");
    if let Some(url) = redis_url {
        cmd.args(["--redis-url", url]);
    }
    let (child, addr) = spawn(cmd, "addr=", true).await?;
    Ok(Server {
        child,
        addr,
        api_key,
        _dir: dir,
    })
}

/// One `bachata serve` (see [`Nodes::start`] for the Redis store).
pub(crate) async fn spawn_server(spawn: &Spawn) -> anyhow::Result<(Server, Option<RedisProcess>)> {
    let mut nodes = Nodes::start(spawn, 1).await?;
    let server = nodes.servers.remove(0);
    Ok((server, nodes.redis))
}
