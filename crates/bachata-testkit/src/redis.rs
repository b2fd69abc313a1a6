//! A real `redis-server` for tests, on a free loopback port, killed on drop.
//!
//! ```ignore
//! let server = bachata_testkit::redis::RedisServer::start();
//! let store = RedisStore::connect(&server.url()).await?;
//! ```
//!
//! Each server gets its own temporary directory (removed on drop) and, by
//! default, no persistence at all (`--save "" --appendonly no`): a test that
//! wants AOF passes its own arguments to [`RedisServer::start_with_args`]
//! (later ones win, as on redis-server's command line) and can
//! [`kill`](RedisServer::kill) and [`restart`](RedisServer::restart) the
//! server on the same port and directory to see what survived.
//!
//! For a Redis Cluster, see [`redis_cluster`](crate::redis_cluster).
//!
//! The binary is `redis-server` from `PATH`, or the path in the environment
//! variable `BACHATA_REDIS_SERVER`. Tests need no Redis client for this: the
//! readiness check sends the inline `INFO server` command over a plain
//! socket and checks that the answering process is the one it started.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long a server may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How often readiness is polled (redis-server gives no readiness event).
const POLL: Duration = Duration::from_millis(20);
/// Fresh ports tried before giving up (another process may take the port
/// between our probe and redis-server's bind).
const PORT_ATTEMPTS: usize = 5;

static NEXT_DIR: AtomicU64 = AtomicU64::new(0);

/// A running `redis-server` on `127.0.0.1`. Killed (SIGKILL) on drop.
#[derive(Debug)]
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    args: Vec<String>,
}

impl RedisServer {
    /// Starts a server without persistence on a free port and waits until it
    /// is ready. Panics when that fails (with the server's log), and with
    /// an install hint when `redis-server` is missing.
    pub fn start() -> RedisServer {
        Self::start_with_args(&[])
    }

    /// Like [`RedisServer::start`], with extra `redis-server` arguments after
    /// the defaults (e.g. `["--appendonly", "yes", "--appendfsync",
    /// "always"]`).
    pub fn start_with_args(args: &[&str]) -> RedisServer {
        let mut last_failure = String::new();
        for _ in 0..PORT_ATTEMPTS {
            match Self::try_start_with_args(args) {
                Ok(server) => return server,
                Err(failure) => last_failure = failure,
            }
        }
        panic!("redis-server did not start after {PORT_ATTEMPTS} attempts: {last_failure}");
    }

    /// One attempt of [`RedisServer::start_with_args`] on one fresh port (in
    /// a fresh directory, removed again on failure): the error has the
    /// server's log. For launchers that choose more ports than the one of
    /// the server (a cluster's bus port) and retry with new ones.
    pub(crate) fn try_start_with_args(args: &[&str]) -> Result<RedisServer, String> {
        let mut server = RedisServer {
            child: None,
            port: free_port(),
            dir: new_dir(),
            args: args.iter().map(|a| (*a).to_owned()).collect(),
        };
        // On failure `server` is dropped, which removes its directory.
        server.spawn_and_wait().map(|()| server)
    }

    /// Like [`RedisServer::start`], also serving TLS with `ca`'s server
    /// certificate on a second port (see [`RedisServer::tls_url`]); clients
    /// need no certificate of their own. The plain port stays for the
    /// readiness check.
    pub fn start_tls(ca: &crate::tls::TestCa) -> RedisServer {
        let tls_port = free_port().to_string();
        let (cert, key, ca_file) = (
            ca.cert_file().display().to_string(),
            ca.key_file().display().to_string(),
            ca.ca_file().display().to_string(),
        );
        Self::start_with_args(&[
            "--tls-port",
            &tls_port,
            "--tls-cert-file",
            &cert,
            "--tls-key-file",
            &key,
            "--tls-ca-cert-file",
            &ca_file,
            "--tls-auth-clients",
            "no",
        ])
    }

    /// `rediss://127.0.0.1:<tls port>/` of a server started with
    /// [`RedisServer::start_tls`].
    pub fn tls_url(&self) -> Option<String> {
        let at = self.args.iter().position(|a| a == "--tls-port")?;
        let port = self.args.get(at + 1)?;
        Some(format!("rediss://127.0.0.1:{port}/"))
    }

    /// `redis://127.0.0.1:<port>/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// The server's working directory (its RDB/AOF files and `redis.log`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether the process is running (it may have been killed).
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Kills the server with SIGKILL (no shutdown, no save) and waits for the
    /// process to end. The port and directory stay reserved for
    /// [`RedisServer::restart`]. Does nothing if it is not running.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port, directory and arguments
    /// (killing it first if it still runs), and waits until it is ready.
    /// Panics if it does not come up.
    pub fn restart(&mut self) {
        self.kill();
        // The old listener is gone with the process; redis-server binds with
        // SO_REUSEADDR, but another process may grab the port meanwhile, so
        // retry a little before giving up.
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            match self.spawn_and_wait() {
                Ok(()) => return,
                Err(failure) if Instant::now() >= deadline => {
                    panic!(
                        "redis-server did not restart on port {}: {failure}",
                        self.port
                    )
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    fn spawn_and_wait(&mut self) -> Result<(), String> {
        let log = self.dir.join("redis.log");
        let bin = std::env::var_os("BACHATA_REDIS_SERVER")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("redis-server"));
        let mut cmd = Command::new(&bin);
        cmd.arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .arg("--logfile")
            .arg(&log)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut child = match cmd.spawn() {
            Ok(child) => child,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
                "`{}` not found: install redis-server: apt-get install redis-server \
                 (or set BACHATA_REDIS_SERVER to its path)",
                bin.display()
            ),
            Err(e) => panic!("cannot run `{}`: {e}", bin.display()),
        };
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!(
                    "redis-server on port {} exited with {status}; log:\n{}",
                    self.port,
                    read_log(&log)
                ));
            }
            if server_pid(self.addr()) == Some(child.id()) {
                self.child = Some(child);
                return Ok(());
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "redis-server on port {} was not ready within {READY_TIMEOUT:?}; log:\n{}",
                    self.port,
                    read_log(&log)
                ));
            }
            std::thread::sleep(POLL);
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        if !self.dir.as_os_str().is_empty() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A port that was free a moment ago (bound to port 0, then released).
pub(crate) fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0 to find a free port")
}

fn new_dir() -> PathBuf {
    let n = NEXT_DIR.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!(
        "bachata-redis-{}-{n}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    ));
    std::fs::create_dir_all(&dir)
        .unwrap_or_else(|e| panic!("create redis dir {}: {e}", dir.display()));
    dir
}

/// The `process_id` of the server answering at `addr`, once it is ready:
/// it answers `INFO server`, and `PING` with `+PONG` (not `-LOADING`, as
/// while it loads its AOF or RDB file). Checking the pid, not just a PONG,
/// makes sure the server is ours and not another test's that won a race for
/// the same port.
fn server_pid(addr: SocketAddr) -> Option<u32> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_millis(500)))
        .ok()?;
    stream
        .set_write_timeout(Some(Duration::from_millis(500)))
        .ok()?;
    stream.write_all(b"INFO server\r\nPING\r\n").ok()?;
    let mut reader = BufReader::new(stream);
    let mut header = String::new();
    reader.read_line(&mut header).ok()?;
    let len: usize = header.strip_prefix('$')?.trim().parse().ok()?;
    let mut body = vec![0; len + 2];
    reader.read_exact(&mut body).ok()?;
    let mut pong = String::new();
    reader.read_line(&mut pong).ok()?;
    if !pong.starts_with("+PONG") {
        return None;
    }
    String::from_utf8_lossy(&body)
        .lines()
        .find_map(|l| l.strip_prefix("process_id:"))
        .and_then(|pid| pid.trim().parse().ok())
}

fn read_log(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| format!("(no log: {e})"))
}
