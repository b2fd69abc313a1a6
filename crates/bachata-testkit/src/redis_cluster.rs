//! A real Redis Cluster for tests: `redis-server` processes with
//! `--cluster-enabled yes` on free loopback ports, all of them masters, the
//! 16384 slots split evenly between them. Killed on drop.
//!
//! ```ignore
//! let cluster = bachata_testkit::redis_cluster::RedisCluster::start(3);
//! let store = RedisStore::connect(&cluster.url()).await?; // redis+cluster://...
//! ```
//!
//! The cluster is built without `redis-cli`, over plain sockets: each node
//! gets its own config epoch, every pair of nodes meets (`CLUSTER MEET`, with
//! the explicit bus port), each node gets its slot range (`CLUSTER
//! ADDSLOTSRANGE`), and the launcher polls `CLUSTER INFO` until every node
//! knows every node, has all slots assigned and says `cluster_state:ok`.
//! Each node runs like [`RedisServer`]: its own temporary directory (its
//! `nodes.conf` and `redis.log` there), no persistence, the binary from
//! `PATH` or `BACHATA_REDIS_SERVER`.
//!
//! A new master refuses to serve for its first two seconds (Redis's
//! `CLUSTER_WRITABLE_DELAY`), so a cluster takes about 2 s to start. Tests
//! that each want an empty cluster can share one with
//! [`RedisCluster::lease`]: one test at a time, every master flushed before
//! each, the cluster killed once no test holds or waits for it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::ops::Deref;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};

use crate::redis::{RedisServer, free_port};

/// How long the nodes may take to agree on the cluster.
const CLUSTER_TIMEOUT: Duration = Duration::from_secs(20);
/// How often `CLUSTER INFO` is polled.
const POLL: Duration = Duration::from_millis(20);
/// Attempts to start one node (a port chosen for it may be taken meanwhile).
const NODE_ATTEMPTS: usize = 5;
/// Redis Cluster's number of hash slots.
pub const SLOTS: u16 = 16384;

/// A running Redis Cluster of masters on `127.0.0.1`. See the module docs.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts `masters` (at least 1) cluster-enabled servers, splits the
    /// slots between them and waits until the cluster is ready. Panics when
    /// that fails, with the nodes' logs.
    pub fn start(masters: usize) -> RedisCluster {
        assert!(masters >= 1, "a cluster needs at least one master");
        let mut nodes = Vec::with_capacity(masters);
        let mut bus_ports = Vec::with_capacity(masters);
        for _ in 0..masters {
            let (node, bus_port) = start_node();
            nodes.push(node);
            bus_ports.push(bus_port);
        }
        let cluster = RedisCluster { nodes };
        if let Err(failure) = cluster.form(&bus_ports) {
            panic!(
                "redis cluster of {masters} did not form: {failure}\n{}",
                cluster.logs()
            );
        }
        cluster
    }

    /// `redis+cluster://127.0.0.1:<p1>,127.0.0.1:<p2>,...`: every node as a
    /// seed.
    pub fn url(&self) -> String {
        let seeds: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port()))
            .collect();
        format!("redis+cluster://{}", seeds.join(","))
    }

    /// The nodes, in the order of their slot ranges (node 0 has the first
    /// range). A test may kill and restart one.
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    pub fn nodes_mut(&mut self) -> &mut [RedisServer] {
        &mut self.nodes
    }

    /// `redis://127.0.0.1:<port>/` of each node, for direct connections.
    pub fn node_urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// The slots node `i` serves: `[start, end]`, inclusive.
    pub fn slot_range(&self, i: usize) -> (u16, u16) {
        slot_range(i, self.nodes.len())
    }

    /// A cluster of `masters` shared with the other tests of this process
    /// that lease one: waits until no other lease is held, then flushes every
    /// master (`FLUSHALL SYNC`) and hands it out. The cluster is started by
    /// the first lease and killed when the last lease in use or waiting is
    /// dropped. Leases are taken one at a time whatever their size, so
    /// tests that lease run one after another.
    pub fn lease(masters: usize) -> ClusterLease {
        let cluster = {
            let mut shared = relock(SHARED.lock());
            let found = shared
                .iter()
                .filter(|(n, _)| *n == masters)
                .find_map(|(_, weak)| weak.upgrade());
            match found {
                Some(cluster) => cluster,
                None => {
                    let cluster = Arc::new(RedisCluster::start(masters));
                    shared.retain(|(_, weak)| weak.strong_count() > 0);
                    shared.push((masters, Arc::downgrade(&cluster)));
                    cluster
                }
            }
        };
        // Holding `cluster` while waiting keeps it alive for this test.
        let turn = Turn::take();
        cluster.flush_all();
        ClusterLease {
            cluster,
            _turn: turn,
        }
    }

    /// Deletes every key on every node (`FLUSHALL SYNC`). Panics on failure.
    pub fn flush_all(&self) {
        for node in &self.nodes {
            if let Err(e) = expect_ok(node.addr(), &["FLUSHALL", "SYNC"]) {
                panic!("flush the cluster: {e}");
            }
        }
    }

    fn form(&self, bus_ports: &[u16]) -> Result<(), String> {
        let n = self.nodes.len();
        // Distinct config epochs while each node knows only itself (as
        // `redis-cli --cluster create` does), so that no epoch collision has
        // to be resolved over gossip first.
        for (i, node) in self.nodes.iter().enumerate() {
            expect_ok(
                node.addr(),
                &["CLUSTER", "SET-CONFIG-EPOCH", &(i + 1).to_string()],
            )?;
        }
        // Meet first, then assign slots: a node that owns slots before it
        // knows the others counts itself in a minority meanwhile and then
        // waits its rejoin delay before it says ok. Every pair meets
        // directly: learning of a node through gossip alone takes seconds.
        for (i, from) in self.nodes.iter().enumerate() {
            for (node, bus_port) in self.nodes.iter().zip(bus_ports).skip(i + 1) {
                expect_ok(
                    from.addr(),
                    &[
                        "CLUSTER",
                        "MEET",
                        "127.0.0.1",
                        &node.port().to_string(),
                        &bus_port.to_string(),
                    ],
                )?;
            }
        }
        let known = format!("cluster_known_nodes:{n}");
        self.wait_for(|info| info.lines().any(|l| l.trim() == known))?;
        for (i, node) in self.nodes.iter().enumerate() {
            let (start, end) = slot_range(i, n);
            expect_ok(
                node.addr(),
                &[
                    "CLUSTER",
                    "ADDSLOTSRANGE",
                    &start.to_string(),
                    &end.to_string(),
                ],
            )?;
        }
        self.wait_for(|info| {
            info.lines().any(|l| l.trim() == "cluster_state:ok")
                && info
                    .lines()
                    .any(|l| l.trim() == "cluster_slots_assigned:16384")
        })
    }

    /// Polls `CLUSTER INFO` on every node until `ready` holds for all.
    fn wait_for(&self, ready: impl Fn(&str) -> bool) -> Result<(), String> {
        let deadline = Instant::now() + CLUSTER_TIMEOUT;
        loop {
            let mut waiting = None;
            for node in &self.nodes {
                let info = command(node.addr(), &["CLUSTER", "INFO"])?;
                if !ready(&info) {
                    waiting = Some(format!("node {}: {info}", node.port()));
                    break;
                }
            }
            let Some(waiting) = waiting else {
                return Ok(());
            };
            if Instant::now() >= deadline {
                return Err(format!("not ready within {CLUSTER_TIMEOUT:?}; {waiting}"));
            }
            std::thread::sleep(POLL);
        }
    }

    fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| {
                let log = std::fs::read_to_string(n.dir().join("redis.log"))
                    .unwrap_or_else(|e| format!("(no log: {e})"));
                format!("--- node {} ---\n{log}", n.port())
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// A [`RedisCluster`] leased by one test: see [`RedisCluster::lease`].
#[derive(Debug)]
pub struct ClusterLease {
    cluster: Arc<RedisCluster>,
    _turn: Turn,
}

impl Deref for ClusterLease {
    type Target = RedisCluster;

    fn deref(&self) -> &RedisCluster {
        &self.cluster
    }
}

/// The clusters handed out by [`RedisCluster::lease`], by size.
static SHARED: Mutex<Vec<(usize, Weak<RedisCluster>)>> = Mutex::new(Vec::new());
/// Whether a lease is held, and the tests waiting for it.
static TURN: (Mutex<bool>, Condvar) = (Mutex::new(false), Condvar::new());

/// The right to use the shared clusters, released on drop (also when the
/// test panics).
#[derive(Debug)]
struct Turn;

impl Turn {
    fn take() -> Turn {
        let (held, freed) = &TURN;
        let mut held = relock(held.lock());
        while *held {
            held = relock(freed.wait(held));
        }
        *held = true;
        Turn
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        let (held, freed) = &TURN;
        *relock(held.lock()) = false;
        freed.notify_one();
    }
}

/// A panicking test must not poison the lease for every other test.
fn relock<'a, T>(
    result: Result<MutexGuard<'a, T>, PoisonError<MutexGuard<'a, T>>>,
) -> MutexGuard<'a, T> {
    result.unwrap_or_else(PoisonError::into_inner)
}

/// The slots of node `i` of `n`: an even split, the last node taking the
/// remainder.
fn slot_range(i: usize, n: usize) -> (u16, u16) {
    let per = usize::from(SLOTS) / n;
    let start = i * per;
    let end = if i + 1 == n {
        usize::from(SLOTS) - 1
    } else {
        start + per - 1
    };
    (
        u16::try_from(start).expect("slot"),
        u16::try_from(end).expect("slot"),
    )
}

/// Starts one cluster-enabled node with its own bus port (not the default
/// port + 10000, which may be above 65535 or taken).
fn start_node() -> (RedisServer, u16) {
    let mut last_failure = String::new();
    for _ in 0..NODE_ATTEMPTS {
        let bus_port = free_port().to_string();
        let args = [
            "--cluster-enabled",
            "yes",
            // Relative to the node's own --dir.
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-port",
            &bus_port,
            // Bounds the delay before a master that saw itself in a
            // minority says ok again (at least 500 ms, at most this).
            "--cluster-node-timeout",
            "3000",
        ];
        match RedisServer::try_start_with_args(&args) {
            Ok(server) => {
                let bus_port = bus_port.parse().expect("port");
                return (server, bus_port);
            }
            Err(failure) => last_failure = failure,
        }
    }
    panic!("a redis cluster node did not start after {NODE_ATTEMPTS} attempts: {last_failure}");
}

fn expect_ok(addr: SocketAddr, args: &[&str]) -> Result<(), String> {
    let reply = command(addr, args)?;
    if reply == "OK" {
        Ok(())
    } else {
        Err(format!("{args:?} on {addr}: {reply}"))
    }
}

/// Sends one command (as a RESP array) and returns the reply as text: a
/// simple or bulk string, an integer, or an error as `Err`.
fn command(addr: SocketAddr, args: &[&str]) -> Result<String, String> {
    let fail = |e: std::io::Error| format!("{args:?} on {addr}: {e}");
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(fail)?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(fail)?;
    let mut request = format!("*{}\r\n", args.len());
    for arg in args {
        request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
    }
    stream.write_all(request.as_bytes()).map_err(fail)?;
    let mut reader = BufReader::new(stream);
    let mut header = String::new();
    reader.read_line(&mut header).map_err(fail)?;
    let header = header.trim_end();
    match header.split_at_checked(1) {
        Some(("+" | ":", rest)) => Ok(rest.to_owned()),
        Some(("-", rest)) => Err(format!("{args:?} on {addr}: {rest}")),
        Some(("$", len)) => {
            let len: usize = len
                .parse()
                .map_err(|_| format!("{args:?} on {addr}: bad reply {header:?}"))?;
            let mut body = vec![0; len + 2];
            reader.read_exact(&mut body).map_err(fail)?;
            body.truncate(len);
            Ok(String::from_utf8_lossy(&body).into_owned())
        }
        _ => Err(format!("{args:?} on {addr}: unexpected reply {header:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_ranges_cover_every_slot_once() {
        for n in 1..=5 {
            let mut next = 0u32;
            for i in 0..n {
                let (start, end) = slot_range(i, n);
                assert_eq!(u32::from(start), next, "{n} nodes, node {i}");
                assert!(end >= start);
                next = u32::from(end) + 1;
            }
            assert_eq!(next, u32::from(SLOTS));
        }
        assert_eq!(slot_range(0, 3), (0, 5460));
        assert_eq!(slot_range(2, 3), (10922, 16383));
    }
}
