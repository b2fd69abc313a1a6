//! Settings: flags > `BACHATA_*` environment > TOML file (`--config`) >
//! defaults (protocol.md section 1). Merged by figment, so every setting has
//! the same name everywhere: `--queue-limit`, `BACHATA_QUEUE_LIMIT`,
//! `queue_limit = 5`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Deserializer, Serialize};

/// Which store keeps the delivery state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// Embedded, crash-safe, on disk under `--data-dir` (redb).
    Embedded,
    /// In memory only: lost on exit.
    Memory,
    /// Redis 7 at `--redis-url`, shared by any number of server nodes.
    Redis,
}

/// How log lines are written (stderr).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// For people: one line per event, fields as `key=value`.
    #[default]
    Text,
    /// For log pipelines: one JSON object per line (`timestamp`, `level`,
    /// `fields`, `target`).
    Json,
}

/// The server's settings, after merging every source.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub store: StoreKind,
    pub redis_url: Option<String>,
    /// Replicas that must confirm each batch of writes (`WAIT`) before its
    /// messages get their 100; 0 does not wait (standalone Redis).
    pub redis_wait_replicas: usize,
    /// How long a batch waits for `redis_wait_replicas`; past it, its
    /// messages get 400 `unavailable`.
    #[serde(deserialize_with = "duration", serialize_with = "show_duration")]
    pub redis_wait_timeout: Duration,
    /// For `rediss://`: the certificate authority (PEM file) that signed
    /// Redis's certificate, instead of the system's roots.
    pub redis_ca: Option<PathBuf>,
    /// How long another node counts this node's connections after their
    /// last write to Redis (`GET /api/channels/{c}`): a node that dies
    /// leaves the counts within it. Written again every third of it.
    #[serde(deserialize_with = "duration", serialize_with = "show_duration")]
    pub presence_ttl: Duration,
    /// HS256 secret for JWTs.
    pub jwt_secret: Option<String>,
    /// PEM file with an RSA or EC public key for RS256 / ES256 JWTs.
    pub jwt_public_key: Option<PathBuf>,
    /// Key for the HTTP API (`Authorization: Bearer <key>`).
    pub api_key: Option<String>,
    /// Key from which each channel's signing secret is derived (protocol.md section 6).
    pub sign_key: Option<String>,
    /// Data messages per second per connection; `None` is no limit.
    pub rate_limit: Option<u32>,
    /// Burst above the rate limit; defaults to the rate limit itself.
    pub rate_burst: Option<u32>,
    /// URL that decides who connects without a valid JWT (protocol.md
    /// section 10).
    pub connect_hook: Option<String>,
    /// URL asked where clients' data messages go, before the route chain.
    pub route_hook: Option<String>,
    /// The message types that go to the route hook: a comma list, `*` for
    /// all (the default).
    pub route_hook_types: Option<String>,
    /// Messages one route hook call carries at most: 1 asks about each
    /// message alone; more sends the messages waiting together in one call
    /// (`{"batch": [...]}`, docs/hooks.md).
    pub route_hook_batch: usize,
    /// Bound on one hook call, connection included.
    #[serde(deserialize_with = "duration", serialize_with = "show_duration")]
    pub hook_timeout: Duration,
    /// Calls in flight per hook; past it, callers are refused at once.
    pub hook_concurrency: usize,
    /// URL that gets a POST for each message not acked in time.
    pub undelivered_webhook: Option<String>,
    #[serde(deserialize_with = "duration", serialize_with = "show_duration")]
    pub undelivered_after: Duration,
    pub max_frame_bytes: usize,
    /// Deepest JSON nesting accepted in a frame.
    pub max_json_depth: usize,
    pub queue_limit: u64,
    #[serde(deserialize_with = "duration", serialize_with = "show_duration")]
    pub message_ttl: Duration,
    #[serde(deserialize_with = "duration", serialize_with = "show_duration")]
    pub dedupe_window: Duration,
    pub inflight: usize,
    /// How long a write to a client may block before the connection is
    /// closed as a slow consumer (4008).
    #[serde(deserialize_with = "duration", serialize_with = "show_duration")]
    pub slow_consumer_timeout: Duration,
    /// How often the server pings each connection (WebSocket ping); one
    /// that sends nothing, not even a pong, for three intervals is closed.
    #[serde(deserialize_with = "duration", serialize_with = "show_duration")]
    pub ping_interval: Duration,
    /// How long a client may take to send a request's headers; slower ones
    /// are closed (slowloris, protocol.md section 9).
    #[serde(deserialize_with = "duration", serialize_with = "show_duration")]
    pub header_timeout: Duration,
    /// Open TCP connections (HTTP and WebSocket) at most; `None` is the
    /// default: 10000, less a reserve, and never above the open-file limit
    /// (`listener.rs`).
    pub max_connections: Option<usize>,
    /// Browser origins allowed besides the server's own: a comma list of
    /// `scheme://host[:port]`, or `*` for all (`origin.rs`).
    pub allowed_origins: Option<String>,
    /// Payload bytes of pending messages the store keeps at most, over all
    /// channels; past it a send gets `store_full`. `None` is the default:
    /// a quarter of the machine's (or the container's) memory.
    #[serde(default, deserialize_with = "byte_size")]
    pub max_retained_bytes: Option<u64>,
    /// A JWT whose `exp` is further ahead than this is refused.
    #[serde(deserialize_with = "duration", serialize_with = "show_duration")]
    pub max_token_lifetime: Duration,
    /// A channel with no connection and nothing pending, whose devices were
    /// all last seen longer ago than this, is forgotten; so is a device not
    /// seen for this long.
    #[serde(deserialize_with = "duration", serialize_with = "show_duration")]
    pub forget_after: Duration,
    pub insecure: bool,
    pub log_format: LogFormat,
    /// PEM certificate chain of the TLS listener (with `tls_key`).
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`.
    pub tls_key: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8000)),
            data_dir: PathBuf::from("./bachata-data"),
            store: StoreKind::Embedded,
            redis_url: None,
            redis_wait_replicas: 0,
            redis_wait_timeout: Duration::from_secs(1),
            presence_ttl: Duration::from_secs(30),
            redis_ca: None,
            jwt_secret: None,
            jwt_public_key: None,
            api_key: None,
            sign_key: None,
            rate_limit: None,
            rate_burst: None,
            undelivered_webhook: None,
            undelivered_after: Duration::from_secs(60),
            connect_hook: None,
            route_hook: None,
            route_hook_types: None,
            hook_timeout: Duration::from_secs(2),
            hook_concurrency: 256,
            route_hook_batch: 1,
            max_frame_bytes: 65536,
            max_json_depth: 32,
            queue_limit: 10_000,
            message_ttl: Duration::from_secs(7 * 24 * 3600),
            dedupe_window: Duration::from_secs(24 * 3600),
            inflight: 256,
            slow_consumer_timeout: Duration::from_secs(10),
            ping_interval: Duration::from_secs(30),
            header_timeout: Duration::from_secs(10),
            max_connections: None,
            allowed_origins: None,
            max_retained_bytes: None,
            max_token_lifetime: Duration::from_secs(30 * 24 * 3600),
            forget_after: Duration::from_secs(30 * 24 * 3600),
            insecure: false,
            log_format: LogFormat::Text,
            tls_cert: None,
            tls_key: None,
        }
    }
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Text(String),
        Seconds(u64),
    }
    match Raw::deserialize(d)? {
        Raw::Text(text) => parse_duration(&text).map_err(serde::de::Error::custom),
        Raw::Seconds(s) => Ok(Duration::from_secs(s)),
    }
}

/// A duration: plain seconds (`5`) or with units (`30s`, `15m`, `24h`,
/// `7d`, `1h30m`, `250ms`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return text
            .parse()
            .map(Duration::from_secs)
            .map_err(|e| format!("invalid duration {text:?} ({e})"));
    }
    humantime::parse_duration(text).map_err(|e| {
        format!(
            "invalid duration {text:?} ({e}); write seconds (5) or with a unit: 30s, 15m, 24h, 7d"
        )
    })
}

/// A size in bytes: an integer, or text with a unit (`512MiB`, `2GB`,
/// `64k`: powers of 1024 with or without `i`, so `1MB` is 1 MiB).
pub(crate) fn parse_byte_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("invalid size {text:?}; write it like 536870912, 512MiB or 2GiB"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        other => {
            return Err(format!(
                "unknown size unit {other:?} in {text:?}; use KiB, MiB, GiB or TiB"
            ));
        }
    };
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("size {text:?} is too large"))
}

fn byte_size<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Text(String),
        Bytes(u64),
    }
    match Option::<Raw>::deserialize(d)? {
        None => Ok(None),
        Some(Raw::Bytes(n)) => Ok(Some(n)),
        Some(Raw::Text(text)) => parse_byte_size(&text)
            .map(Some)
            .map_err(serde::de::Error::custom),
    }
}

fn show_duration<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&humantime::format_duration(*d).to_string())
}

/// `bachata serve` flags. Every one is optional so that unset flags do not
/// hide the environment or the file.
#[derive(Debug, Clone, Default, Args, Serialize)]
pub struct ServeArgs {
    /// TOML file with settings (keys are the flag names in snake_case).
    #[arg(long, value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8000].
    #[arg(long, value_name = "ADDR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// Directory of the embedded store [default: ./bachata-data].
    #[arg(long, value_name = "DIR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    /// Where delivery state lives [default: embedded].
    #[arg(long, value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store: Option<StoreKind>,
    /// Redis URL for `--store redis`: `redis://HOST:PORT[/DB]`, or
    /// `redis+cluster://H1:P1,H2:P2` for Redis Cluster.
    #[arg(long, value_name = "URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_url: Option<String>,
    /// Send each 100 only after N Redis replicas confirmed its batch (WAIT) [default: 0].
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_wait_replicas: Option<usize>,
    /// How long a batch waits for --redis-wait-replicas before its messages get `unavailable` [default: 1s].
    #[arg(long, value_name = "DURATION")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_wait_timeout: Option<String>,
    /// With a rediss:// URL: the CA certificate (PEM) that signed Redis's certificate [default: the system's roots].
    #[arg(long, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_ca: Option<PathBuf>,
    /// With --store redis: how long other nodes count this node's connections after it stops writing them (a dead node's count goes within it) [default: 30s].
    #[arg(long, value_name = "DURATION")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub presence_ttl: Option<String>,
    /// Secret for HS256 JWTs; turns JWT auth on and anonymous channels off.
    #[arg(long, value_name = "SECRET")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwt_secret: Option<String>,
    /// PEM public key (RSA or EC) for RS256 / ES256 JWTs.
    #[arg(long, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwt_public_key: Option<PathBuf>,
    /// Key for the HTTP API, sent as `Authorization: Bearer <key>`.
    #[arg(long, value_name = "KEY")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_key: Option<String>,
    /// Turns message signatures on; channel secrets derive from this key.
    #[arg(long, value_name = "KEY")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sign_key: Option<String>,
    /// Data messages per second per connection (off by default).
    #[arg(long, value_name = "PER_SECOND")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<u32>,
    /// Burst allowed above --rate-limit [default: the rate limit].
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_burst: Option<u32>,
    /// POST who connects here when a /messages upgrade has no valid JWT; the answer names the channel (docs/hooks.md).
    #[arg(long, value_name = "URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connect_hook: Option<String>,
    /// POST clients' data messages here before the route chain; the answer names the channels, passes, or refuses (docs/hooks.md).
    #[arg(long, value_name = "URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route_hook: Option<String>,
    /// Message types that go to --route-hook: a comma list, or * for all [default: *].
    #[arg(long, value_name = "TYPES")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route_hook_types: Option<String>,
    /// Messages one --route-hook call carries at most; above 1, the messages waiting go together as {"batch": [...]} (docs/hooks.md) [default: 1].
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route_hook_batch: Option<usize>,
    /// Bound on one hook call [default: 2s].
    #[arg(long, value_name = "DURATION")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hook_timeout: Option<String>,
    /// Calls in flight per hook; past it, callers get 503 / unavailable at once [default: 256].
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hook_concurrency: Option<usize>,
    /// POST here when a message is not acked within --undelivered-after.
    #[arg(long, value_name = "URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub undelivered_webhook: Option<String>,
    /// How long a message may stay unacked before the webhook [default: 60s].
    #[arg(long, value_name = "DURATION")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub undelivered_after: Option<String>,
    /// Largest accepted frame; larger ones close with 1009 [default: 65536].
    #[arg(long, value_name = "BYTES")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_frame_bytes: Option<usize>,
    /// Deepest accepted JSON nesting [default: 32].
    #[arg(long, value_name = "LEVELS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_json_depth: Option<usize>,
    /// Pending messages a channel may hold [default: 10000].
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue_limit: Option<u64>,
    /// How long pending messages live [default: 7d].
    #[arg(long, value_name = "DURATION")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_ttl: Option<String>,
    /// How long a resent id is recognised [default: 24h].
    #[arg(long, value_name = "DURATION")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dedupe_window: Option<String>,
    /// Unacked messages outstanding per connection [default: 256].
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inflight: Option<usize>,
    /// Close a connection whose writes block this long (4008) [default: 10s].
    #[arg(long, value_name = "DURATION")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slow_consumer_timeout: Option<String>,
    /// WebSocket ping interval; silent connections close after 3 [default: 30s].
    #[arg(long, value_name = "DURATION")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ping_interval: Option<String>,
    /// Close HTTP connections that take longer to send a request's headers [default: 10s].
    #[arg(long, value_name = "DURATION")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub header_timeout: Option<String>,
    /// Open TCP connections at most; more are refused (503) [default: 10000, within the open-file limit].
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<usize>,
    /// Browser origins allowed besides the server's own: comma list like https://a.example,http://b.example:8080, or * [default: none].
    #[arg(long, value_name = "ORIGINS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allowed_origins: Option<String>,
    /// Pending payload bytes kept over all channels; more gets store_full [default: a quarter of memory].
    #[arg(long, value_name = "BYTES")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_retained_bytes: Option<String>,
    /// Refuse JWTs whose exp is further ahead than this [default: 30d].
    #[arg(long, value_name = "DURATION")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_token_lifetime: Option<String>,
    /// Forget channels and devices unseen for this long, with nothing pending [default: 30d].
    #[arg(long, value_name = "DURATION")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub forget_after: Option<String>,
    /// Allow anonymous channels on a non-loopback address.
    #[arg(long)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub insecure: bool,
    /// Log lines as text or one JSON object per line [default: text].
    #[arg(long, value_name = "FORMAT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_format: Option<LogFormat>,
    /// PEM certificate chain: serve HTTPS and wss:// (with --tls-key); SIGHUP reloads both files.
    #[arg(long, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
}

/// `--max-retained-bytes` when unset: a quarter of the memory this process
/// may use (the machine's, or its container's cgroup limit when lower), or
/// 1 GiB when neither can be read.
pub(crate) fn default_max_retained_bytes() -> u64 {
    memory_limit().map_or(1 << 30, |bytes| bytes / 4)
}

/// The memory this process may use: `MemTotal`, lowered by a cgroup (v2 or
/// v1) memory limit.
fn memory_limit() -> Option<u64> {
    let total = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|kb| kb.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .map(|kb| kb * 1024)
        });
    let cgroup = [
        "/sys/fs/cgroup/memory.max",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
    ]
    .iter()
    .filter_map(|path| std::fs::read_to_string(path).ok())
    .find_map(|text| text.trim().parse::<u64>().ok());
    match (total, cgroup) {
        (Some(total), Some(limit)) => Some(total.min(limit)),
        (total, limit) => total.or(limit),
    }
}

/// Deepest `max_json_depth`: serde_json's own nesting limit, which the
/// duplicate-key walk of nested values runs under.
pub(crate) const MAX_JSON_DEPTH: usize = 128;

/// Shortest HS256 secret accepted without `--insecure` (RFC 7518 section
/// 3.2: a key of at least the hash's size, 256 bits).
pub(crate) const MIN_JWT_SECRET_BYTES: usize = 32;

/// `BACHATA_*` variables that are not `serve` settings: the log filter
/// and the client commands' server and token.
const OTHER_VARIABLES: [&str; 3] = ["BACHATA_LOG", "BACHATA_URL", "BACHATA_TOKEN"];

/// Every setting's name (a TOML key; upper-cased after `BACHATA_`, a
/// variable; with dashes after `--`, a flag).
fn setting_names() -> Vec<String> {
    fields(&Config::default()).keys().cloned().collect()
}

/// Every setting of `config` by its key (what the TOML file, the
/// reference and `check-config` name): `Config` serializes to one object.
pub(crate) fn fields(config: &Config) -> serde_json::Map<String, serde_json::Value> {
    match serde_json::to_value(config) {
        Ok(serde_json::Value::Object(fields)) => fields,
        _ => serde_json::Map::new(),
    }
}

/// The known name closest to `unknown`, if one is close enough to be a typo.
fn closest<'a>(unknown: &str, known: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    known
        .into_iter()
        .map(|k| (strsim::jaro_winkler(unknown, k), k))
        .filter(|(score, _)| *score > 0.85)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, k)| k)
}

fn did_you_mean(suggestion: Option<&str>) -> String {
    suggestion.map_or_else(String::new, |s| format!("; did you mean {s}?"))
}

/// A key of the file that is no setting is a typo or a setting of another
/// version: refused, named, with the closest setting.
fn refuse_unknown_keys(
    toml: &figment::providers::Data<Toml>,
    file: &std::path::Path,
) -> Result<(), ConfigError> {
    use figment::Provider;
    let data = toml.data().map_err(|e| {
        ConfigError::Parse(format!("cannot read config file {}: {e}", file.display()))
    })?;
    let known = setting_names();
    for dict in data.values() {
        for key in dict.keys() {
            if !known.iter().any(|k| k == key) {
                return Err(ConfigError::Invalid(format!(
                    "unknown key {key} in {}{}",
                    file.display(),
                    did_you_mean(closest(key, known.iter().map(String::as_str)))
                )));
            }
        }
    }
    Ok(())
}

/// A `BACHATA_*` variable that is no setting is refused the same way.
fn refuse_unknown_variables(
    names: impl Iterator<Item = std::ffi::OsString>,
) -> Result<(), ConfigError> {
    let known: Vec<String> = setting_names()
        .iter()
        .map(|k| format!("BACHATA_{}", k.to_ascii_uppercase()))
        .chain(OTHER_VARIABLES.iter().map(|v| (*v).to_owned()))
        .collect();
    for name in names {
        let Some(name) = name.to_str().filter(|n| n.starts_with("BACHATA_")) else {
            continue;
        };
        if !known.iter().any(|k| k == name) {
            return Err(ConfigError::Invalid(format!(
                "unknown environment variable {name}{}",
                did_you_mean(closest(name, known.iter().map(String::as_str)))
            )));
        }
    }
    Ok(())
}

/// A figment error, in the words of what the user wrote: the flag, the
/// `BACHATA_*` variable or the file's key, and what is wrong with it.
fn describe(errors: figment::Error) -> String {
    let lines: Vec<String> = errors
        .into_iter()
        .map(|e| {
            let key = e.path.last().cloned().unwrap_or_default();
            let source = e
                .metadata
                .as_ref()
                .map(|m| m.name.to_string())
                .unwrap_or_default();
            let what = if key.is_empty() {
                "a setting".to_owned()
            } else if source.contains("environment") {
                format!("BACHATA_{}", key.to_ascii_uppercase())
            } else if source.contains("TOML") {
                let file = e
                    .metadata
                    .as_ref()
                    .and_then(|m| m.source.as_ref())
                    .map(|s| format!(" in {s}"))
                    .unwrap_or_default();
                format!("key {key}{file}")
            } else {
                format!("--{}", key.replace('_', "-"))
            };
            format!("invalid {what}: {}", e.kind)
        })
        .collect();
    lines.join("; ")
}

/// Which stores a setting applies to, for the reference.
fn applies_to(key: &str) -> &'static str {
    match key {
        "data_dir" => "embedded",
        k if k.starts_with("redis_") || k == "presence_ttl" => "redis",
        _ => "all",
    }
}

/// One `serve` setting as the reference shows it.
struct Reference {
    key: String,
    flag: String,
    default: String,
    meaning: String,
}

/// Every `serve` setting, from the flags' definitions (their help and
/// defaults) and [`Config::default`]: what `docs/configuration.md` and
/// `bachata.example.toml` are generated from, so that they cannot disagree
/// with `bachata serve --help` (a test compares them).
fn reference() -> Vec<Reference> {
    use clap::Args as _;
    let command = ServeArgs::augment_args(clap::Command::new("serve"));
    let defaults = fields(&Config::default());
    command
        .get_arguments()
        .filter(|arg| arg.get_id().as_str() != "config")
        .map(|arg| {
            let key = arg.get_id().as_str().to_owned();
            let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
            let (meaning, stated) = match help.split_once(" [default: ") {
                Some((meaning, rest)) => (
                    meaning.to_owned(),
                    rest.strip_suffix(']').map(str::to_owned),
                ),
                None => (help.clone(), None),
            };
            let default = stated.unwrap_or_else(|| match defaults.get(&key) {
                None | Some(serde_json::Value::Null) => "none".to_owned(),
                Some(serde_json::Value::String(s)) => s.clone(),
                Some(other) => other.to_string(),
            });
            let long = arg.get_long().unwrap_or(&key).to_owned();
            let flag = match arg.get_value_names() {
                Some(names) if arg.get_num_args().is_none_or(|n| n.takes_values()) => {
                    format!("--{long} <{}>", names.join(" "))
                }
                _ => format!("--{long}"),
            };
            Reference {
                key,
                flag,
                default,
                meaning: meaning.trim_end_matches('.').to_owned(),
            }
        })
        .collect()
}

/// `docs/configuration.md`, generated (see [`reference`]).
pub fn configuration_page() -> String {
    let mut out = String::from(
        "# Configuration\n\n\
         <!-- Generated from the code by `bachata config-reference`; \
         `tests/cli.rs` fails when this page and `bachata serve --help` disagree. -->\n\n\
         Every setting of `bachata serve` is a flag, a `BACHATA_*` environment variable \
         and a key of the TOML file given with `--config FILE` \
         ([bachata.example.toml](../bachata.example.toml) has every key). Flags win over \
         the environment, which wins over the file. Durations are written `30s`, `15m`, \
         `24h`, `7d` or as plain seconds; sizes as bytes or `512MiB`. An unknown key or \
         `BACHATA_*` variable stops the server with the closest setting named; \
         `BACHATA_LOG` (the log filter), `BACHATA_URL` and `BACHATA_TOKEN` (the client \
         commands) are not settings. `bachata check-config` prints the settings in \
         effect, secrets masked, and fails with the errors `serve` would give.\n\n\
         | flag | environment | TOML key | default | store | meaning |\n\
         |---|---|---|---|---|---|\n",
    );
    for r in reference() {
        out.push_str(&format!(
            "| `{}` | `BACHATA_{}` | `{}` | {} | {} | {} |\n",
            r.flag,
            r.key.to_ascii_uppercase(),
            r.key,
            r.default.replace('|', "\\|"),
            applies_to(&r.key),
            r.meaning.replace('|', "\\|"),
        ));
    }
    out
}

/// `bachata.example.toml`, generated (see [`reference`]): every key,
/// commented out, with its default and meaning.
pub fn example_toml() -> String {
    let mut out = String::from(
        "# bachata serve --config bachata.example.toml\n\
         # Every setting, commented out at its default. Generated by\n\
         # `bachata config-reference --toml`; docs/configuration.md explains each.\n",
    );
    for r in reference() {
        out.push_str(&format!("\n# {} ({})\n", r.meaning, applies_to(&r.key)));
        out.push_str(&format!("# {} = {}\n", r.key, toml_value(&r.default)));
    }
    out
}

/// A default as a TOML value: numbers and booleans as they are, `none` as
/// an empty string to fill in, anything else quoted.
fn toml_value(default: &str) -> String {
    if default == "none" || default.starts_with("the ") {
        return "\"\"".to_owned();
    }
    if default.parse::<f64>().is_ok() || default == "true" || default == "false" {
        return default.to_owned();
    }
    format!("{default:?}")
}

/// The most messages one route hook call may carry (`route_hook_batch`).
pub(crate) const MAX_ROUTE_HOOK_BATCH: usize = 1024;

/// A setting that could not be read or makes no sense.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A value that cannot be read, named as the user wrote it (the flag,
    /// the variable or the file's key); the text says it all, so it has no
    /// source to print a second time.
    #[error("{0}")]
    Parse(String),
    #[error("{0}")]
    Invalid(String),
}

impl Config {
    /// Merges defaults, the TOML file, `BACHATA_*` and the flags.
    pub fn load(args: &ServeArgs) -> Result<Config, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = &args.config {
            if !file.exists() {
                return Err(ConfigError::Invalid(format!(
                    "config file {} does not exist",
                    file.display()
                )));
            }
            let toml = Toml::file(file);
            refuse_unknown_keys(&toml, file)?;
            figment = figment.merge(toml);
        }
        refuse_unknown_variables(std::env::vars_os().map(|(k, _)| k))?;
        let config: Config = figment
            .merge(Env::prefixed("BACHATA_"))
            .merge(Serialized::defaults(args))
            .extract()
            .map_err(|e| ConfigError::Parse(describe(e)))?;
        config.validate()?;
        Ok(config)
    }

    /// True when clients connect with `?channel=` instead of a JWT.
    pub fn anonymous(&self) -> bool {
        self.jwt_secret.is_none() && self.jwt_public_key.is_none() && self.connect_hook.is_none()
    }

    /// Checks what serde cannot: ranges and combinations.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: &str| Err(ConfigError::Invalid(m.to_owned()));
        if self.max_frame_bytes < 64 {
            return invalid("max_frame_bytes must be at least 64");
        }
        if self.max_json_depth == 0 || self.max_json_depth > MAX_JSON_DEPTH {
            return Err(ConfigError::Invalid(format!(
                "max_json_depth must be 1..={MAX_JSON_DEPTH}"
            )));
        }
        if self.header_timeout.is_zero() {
            return invalid("header_timeout must be longer than 0s");
        }
        if self.max_connections == Some(0) {
            return invalid("max_connections must be at least 1");
        }
        if self.max_retained_bytes == Some(0) {
            return invalid("max_retained_bytes must be at least 1 byte");
        }
        if self.max_token_lifetime.is_zero() {
            return invalid("max_token_lifetime must be longer than 0s");
        }
        if self.forget_after < Duration::from_secs(1) {
            return invalid("forget_after must be at least 1s");
        }
        if let Some(origins) = &self.allowed_origins {
            crate::origin::AllowedOrigins::parse(origins).map_err(ConfigError::Invalid)?;
        }
        if let Some(secret) = &self.jwt_secret
            && secret.len() < MIN_JWT_SECRET_BYTES
            && !self.insecure
        {
            return Err(ConfigError::Invalid(format!(
                "jwt_secret is {} bytes; an HS256 secret needs at least {MIN_JWT_SECRET_BYTES} \
                 (a short one can be guessed offline from any token). Use a random value, e.g. \
                 `openssl rand -hex 32`, or pass --insecure for a test setup",
                secret.len()
            )));
        }
        if self.inflight == 0 {
            return invalid("inflight must be at least 1");
        }
        if self.queue_limit == 0 {
            return invalid("queue_limit must be at least 1");
        }
        if self.message_ttl.is_zero() {
            return invalid("message_ttl must be longer than 0s");
        }
        if self.ping_interval < Duration::from_millis(10) {
            return invalid("ping_interval must be at least 10ms");
        }
        if self.slow_consumer_timeout.is_zero() {
            return invalid("slow_consumer_timeout must be longer than 0s");
        }
        for (name, value) in [
            ("jwt_secret", &self.jwt_secret),
            ("api_key", &self.api_key),
            ("sign_key", &self.sign_key),
        ] {
            if value.as_deref().is_some_and(str::is_empty) {
                return Err(ConfigError::Invalid(format!("{name} must not be empty")));
            }
        }
        if self.jwt_secret.is_some() && self.jwt_public_key.is_some() {
            return invalid(
                "set either jwt_secret (HS256) or jwt_public_key (RS256/ES256), not both",
            );
        }
        if self.rate_limit == Some(0) || self.rate_burst == Some(0) {
            return invalid("rate_limit and rate_burst must be at least 1");
        }
        if self.rate_burst.is_some() && self.rate_limit.is_none() {
            return invalid("rate_burst needs rate_limit");
        }
        if let Some(url) = &self.undelivered_webhook
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return invalid("undelivered_webhook must be an http:// or https:// URL");
        }
        if self.undelivered_webhook.is_some() && self.undelivered_after >= self.message_ttl {
            return invalid(
                "undelivered_after must be shorter than message_ttl: an expired message \
                 can no longer be reported",
            );
        }
        if self.hook_timeout.is_zero() {
            return invalid("hook_timeout must be longer than 0s");
        }
        if !(1..=MAX_ROUTE_HOOK_BATCH).contains(&self.route_hook_batch) {
            return invalid(&format!(
                "route_hook_batch must be between 1 and {MAX_ROUTE_HOOK_BATCH}"
            ));
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return invalid("tls_cert and tls_key go together: give both or neither");
        }
        if self.hook_concurrency == 0 {
            return invalid("hook_concurrency must be at least 1");
        }
        if self.undelivered_after.is_zero() {
            return invalid("undelivered_after must be longer than 0s");
        }
        if self.store == StoreKind::Redis && self.redis_url.is_none() {
            return invalid(
                "--store redis needs --redis-url redis://HOST:PORT (or redis+cluster://H1:P1,H2:P2)",
            );
        }
        if self.redis_wait_replicas > 0 {
            let cluster = self
                .redis_url
                .as_deref()
                .is_some_and(|u| u.starts_with(bachata_store_redis::CLUSTER_SCHEME));
            if self.store != StoreKind::Redis || cluster {
                return invalid(
                    "redis_wait_replicas needs --store redis on standalone Redis (a Redis \
                     Cluster URL is not supported yet)",
                );
            }
            if self.redis_wait_timeout.is_zero() {
                return invalid("redis_wait_timeout must be longer than 0s");
            }
        }
        if self.redis_ca.is_some() && self.store != StoreKind::Redis {
            return invalid("redis_ca needs --store redis with a rediss:// URL");
        }
        if self.presence_ttl < Duration::from_secs(1) {
            return invalid("presence_ttl must be at least 1s");
        }
        // Safe default (protocol.md section 1): anonymous channels only on loopback.
        if self.anonymous() && !self.listen.ip().is_loopback() && !self.insecure {
            return Err(ConfigError::Invalid(format!(
                "refusing to listen on {} without authentication: anyone could connect as any \
                 channel. Set --jwt-secret, listen on a loopback address such as \
                 127.0.0.1:8000, or pass --insecure if this is really what you want",
                self.listen
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // reason: figment::Jail's closure type, not ours
mod tests {
    use super::*;

    // Every test runs in a figment Jail: it serialises tests that read
    // BACHATA_* so one test's variables never leak into another.

    #[test]
    fn defaults_are_the_spec_defaults() {
        figment::Jail::expect_with(|_| {
            let c = Config::load(&ServeArgs::default()).expect("defaults are valid");
            assert_eq!(c.listen.to_string(), "127.0.0.1:8000");
            assert_eq!(c.data_dir, PathBuf::from("./bachata-data"));
            assert_eq!(c.store, StoreKind::Embedded);
            assert_eq!(c.max_frame_bytes, 65536);
            assert_eq!(c.queue_limit, 10_000);
            assert_eq!(c.message_ttl, Duration::from_secs(7 * 86400));
            assert_eq!(c.dedupe_window, Duration::from_secs(86400));
            assert_eq!(c.inflight, 256);
            Ok(())
        });
    }

    #[test]
    fn precedence_flags_env_file() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "b.toml",
                "queue_limit = 5\ninflight = 7\nmessage_ttl = \"15m\"\nmax_frame_bytes = 1000",
            )?;
            jail.set_env("BACHATA_INFLIGHT", "8");
            jail.set_env("BACHATA_MAX_FRAME_BYTES", "2000");
            let args = ServeArgs {
                config: Some("b.toml".into()),
                max_frame_bytes: Some(3000),
                ..ServeArgs::default()
            };
            let c = Config::load(&args).map_err(|e| e.to_string())?;
            assert_eq!(c.queue_limit, 5, "from the file");
            assert_eq!(c.inflight, 8, "env beats the file");
            assert_eq!(c.max_frame_bytes, 3000, "flags beat env");
            assert_eq!(c.message_ttl, Duration::from_secs(900));
            Ok(())
        });
    }

    #[test]
    fn unknown_keys_and_variables_are_refused_with_the_closest_setting() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("c.toml", "queue_limt = 5")?;
            let args = ServeArgs {
                config: Some("c.toml".into()),
                ..ServeArgs::default()
            };
            let e = Config::load(&args).expect_err("unknown key").to_string();
            assert_eq!(
                e,
                "unknown key queue_limt in c.toml; did you mean queue_limit?"
            );
            jail.create_file("c.toml", "queue_limit = 5")?;
            jail.set_env("BACHATA_QUEUE_LIMT", "5");
            let e = Config::load(&args)
                .expect_err("unknown variable")
                .to_string();
            assert_eq!(
                e,
                "unknown environment variable BACHATA_QUEUE_LIMT; did you mean BACHATA_QUEUE_LIMIT?"
            );
            Ok(())
        });
        // Nothing close: no suggestion. The client's and the log's own
        // variables are not settings, and not refused.
        let refused = refuse_unknown_variables(["BACHATA_ZZZZZZZZZZZZ".into()].into_iter())
            .expect_err("unknown");
        assert_eq!(
            refused.to_string(),
            "unknown environment variable BACHATA_ZZZZZZZZZZZZ"
        );
        refuse_unknown_variables(
            [
                "BACHATA_LOG",
                "BACHATA_URL",
                "BACHATA_TOKEN",
                "PATH",
                "BACHATA_INFLIGHT",
            ]
            .into_iter()
            .map(Into::into),
        )
        .expect("known");
    }

    /// The defaults the flags' help states are the defaults the server
    /// uses (the reference and `--help` show the stated ones).
    #[test]
    fn stated_defaults_are_the_real_ones() {
        use clap::Args as _;
        let command = ServeArgs::augment_args(clap::Command::new("serve"));
        let real = fields(&Config::default());
        assert!(!real.is_empty(), "Config serializes to an object");
        let mut compared = 0;
        for arg in command.get_arguments() {
            let id = arg.get_id().as_str();
            let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
            let Some(stated) = help
                .split_once(" [default: ")
                .and_then(|(_, rest)| rest.strip_suffix(']'))
            else {
                continue;
            };
            let Some(value) = real.get(id).filter(|v| !v.is_null()) else {
                continue; // "the system's roots", "the rate limit": no value
            };
            let real_text = match value {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            let same = stated == real_text
                || matches!((parse_duration(stated), parse_duration(&real_text)), (Ok(a), Ok(b)) if a == b)
                || matches!((parse_byte_size(stated), parse_byte_size(&real_text)), (Ok(a), Ok(b)) if a == b);
            assert!(
                same,
                "--{id}: help says {stated}, the default is {real_text}"
            );
            compared += 1;
        }
        assert!(compared > 20, "{compared}");
    }

    #[test]
    fn every_flag_of_serve_is_a_setting() {
        use clap::Args as _;
        let command = ServeArgs::augment_args(clap::Command::new("serve"));
        let known = setting_names();
        for arg in command.get_arguments() {
            let id = arg.get_id().as_str();
            assert!(
                id == "config" || known.iter().any(|k| k == id),
                "--{id} has no key in Config (nor BACHATA_ variable)"
            );
        }
        assert!(known.len() > 30);
    }

    #[test]
    fn bad_values_are_named_as_the_user_wrote_them_once() {
        figment::Jail::expect_with(|jail| {
            let flag = ServeArgs {
                message_ttl: Some("soon".into()),
                ..ServeArgs::default()
            };
            let e = Config::load(&flag).expect_err("bad flag");
            let text = e.to_string();
            assert!(
                text.starts_with("invalid --message-ttl: invalid duration \"soon\""),
                "{text}"
            );
            assert!(
                std::error::Error::source(&e).is_none(),
                "the cause is in the text, once"
            );
            assert!(
                !text.contains("config.rs") && !text.contains("default."),
                "{text}"
            );
            jail.set_env("BACHATA_QUEUE_LIMIT", "many");
            let e = Config::load(&ServeArgs::default())
                .expect_err("bad variable")
                .to_string();
            assert!(e.starts_with("invalid BACHATA_QUEUE_LIMIT: "), "{e}");
            jail.clear_env();
            jail.create_file("d.toml", "queue_limit = \"many\"")?;
            let file = ServeArgs {
                config: Some("d.toml".into()),
                ..ServeArgs::default()
            };
            let e = Config::load(&file).expect_err("bad key").to_string();
            assert!(e.starts_with("invalid key queue_limit in "), "{e}");
            assert!(e.contains("d.toml"), "{e}");
            Ok(())
        });
    }

    #[test]
    fn durations_and_errors() {
        figment::Jail::expect_with(|_| {
            let args = ServeArgs {
                dedupe_window: Some("2d".into()),
                ..ServeArgs::default()
            };
            let c = Config::load(&args).expect("valid");
            assert_eq!(c.dedupe_window, Duration::from_secs(2 * 86400));
            let bad = ServeArgs {
                message_ttl: Some("soon".into()),
                ..ServeArgs::default()
            };
            let e = Config::load(&bad)
                .expect_err("invalid duration")
                .to_string();
            assert!(e.contains("30s, 15m"), "{e}");
            // Plain seconds, as a flag or an environment variable gives them.
            let plain = ServeArgs {
                hook_timeout: Some("5".into()),
                ..ServeArgs::default()
            };
            let c = Config::load(&plain).expect("plain seconds");
            assert_eq!(c.hook_timeout, Duration::from_secs(5));
            assert_eq!(parse_duration(" 250ms "), Ok(Duration::from_millis(250)));
            assert!(parse_duration("").is_err());
            assert!(parse_duration("99999999999999999999").is_err(), "overflow");
            Ok(())
        });
    }

    #[test]
    fn hardening_settings_from_flags_env_and_file() {
        figment::Jail::expect_with(|jail| {
            let defaults = Config::load(&ServeArgs::default()).map_err(|e| e.to_string())?;
            assert_eq!(defaults.header_timeout, Duration::from_secs(10));
            assert_eq!(defaults.max_token_lifetime, Duration::from_secs(30 * 86400));
            assert_eq!(defaults.forget_after, Duration::from_secs(30 * 86400));
            assert_eq!(defaults.max_retained_bytes, None, "a quarter of memory");
            jail.create_file(
                "b.toml",
                "header_timeout = \"3s\"\nmax_connections = 500\n\
                 allowed_origins = \"https://a.example\"\nmax_retained_bytes = \"64MiB\"\n\
                 max_token_lifetime = \"1h\"\nforget_after = \"7d\"",
            )?;
            let file = ServeArgs {
                config: Some("b.toml".into()),
                ..ServeArgs::default()
            };
            let c = Config::load(&file).map_err(|e| e.to_string())?;
            assert_eq!(c.header_timeout, Duration::from_secs(3));
            assert_eq!(c.max_connections, Some(500));
            assert_eq!(c.allowed_origins.as_deref(), Some("https://a.example"));
            assert_eq!(c.max_retained_bytes, Some(64 << 20));
            assert_eq!(c.max_token_lifetime, Duration::from_secs(3600));
            assert_eq!(c.forget_after, Duration::from_secs(7 * 86400));
            jail.set_env("BACHATA_MAX_RETAINED_BYTES", "1000");
            jail.set_env("BACHATA_FORGET_AFTER", "1h");
            let c = Config::load(&file).map_err(|e| e.to_string())?;
            assert_eq!(c.max_retained_bytes, Some(1000), "env beats the file");
            assert_eq!(c.forget_after, Duration::from_secs(3600));
            let flags = ServeArgs {
                max_retained_bytes: Some("2GiB".into()),
                header_timeout: Some("1s".into()),
                max_connections: Some(7),
                ..file
            };
            let c = Config::load(&flags).map_err(|e| e.to_string())?;
            assert_eq!(c.max_retained_bytes, Some(2 << 30), "flags beat env");
            assert_eq!(c.header_timeout, Duration::from_secs(1));
            assert_eq!(c.max_connections, Some(7));
            Ok(())
        });
    }

    #[test]
    fn byte_sizes() {
        assert_eq!(parse_byte_size("512"), Ok(512));
        assert_eq!(parse_byte_size("64k"), Ok(64 << 10));
        assert_eq!(parse_byte_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_byte_size(" 2 GB "), Ok(2 << 30));
        assert!(parse_byte_size("2XB").is_err());
        assert!(parse_byte_size("many").is_err());
        assert!(parse_byte_size("99999999999TiB").is_err());
        assert!(default_max_retained_bytes() > 0);
    }

    #[test]
    fn hardening_settings_are_checked() {
        figment::Jail::expect_with(|_| {
            let refused = |args: ServeArgs, needle: &str| {
                let e = Config::load(&args).expect_err(needle).to_string();
                assert!(e.contains(needle), "{e}");
            };
            refused(
                ServeArgs {
                    jwt_secret: Some("too-short".into()),
                    ..ServeArgs::default()
                },
                "at least 32",
            );
            refused(
                ServeArgs {
                    allowed_origins: Some("chat.example.com".into()),
                    ..ServeArgs::default()
                },
                "invalid origin",
            );
            refused(
                ServeArgs {
                    max_json_depth: Some(129),
                    ..ServeArgs::default()
                },
                "1..=128",
            );
            refused(
                ServeArgs {
                    max_connections: Some(0),
                    ..ServeArgs::default()
                },
                "max_connections",
            );
            refused(
                ServeArgs {
                    forget_after: Some("0s".into()),
                    ..ServeArgs::default()
                },
                "forget_after",
            );
            refused(
                ServeArgs {
                    redis_wait_replicas: Some(1),
                    ..ServeArgs::default()
                },
                "redis_wait_replicas needs --store redis",
            );
            refused(
                ServeArgs {
                    hook_concurrency: Some(0),
                    ..ServeArgs::default()
                },
                "hook_concurrency must be at least 1",
            );
            refused(
                ServeArgs {
                    hook_timeout: Some("0s".into()),
                    ..ServeArgs::default()
                },
                "hook_timeout must be longer than 0s",
            );
            for batch in [0, MAX_ROUTE_HOOK_BATCH + 1] {
                refused(
                    ServeArgs {
                        route_hook_batch: Some(batch),
                        ..ServeArgs::default()
                    },
                    "route_hook_batch must be between 1 and 1024",
                );
            }
            // A connect hook authenticates: a public address is allowed.
            let hooked = ServeArgs {
                listen: Some("0.0.0.0:8000".parse().expect("addr")),
                connect_hook: Some("http://127.0.0.1:9/connect".into()),
                ..ServeArgs::default()
            };
            let c = Config::load(&hooked).expect("valid");
            assert!(!c.anonymous());
            assert_eq!(c.hook_timeout, Duration::from_secs(2));
            assert_eq!(c.hook_concurrency, 256);
            refused(
                ServeArgs {
                    presence_ttl: Some("500ms".into()),
                    ..ServeArgs::default()
                },
                "presence_ttl must be at least 1s",
            );
            refused(
                ServeArgs {
                    store: Some(StoreKind::Redis),
                    redis_url: Some("redis+cluster://127.0.0.1:7000".into()),
                    redis_wait_replicas: Some(1),
                    ..ServeArgs::default()
                },
                "not supported yet",
            );
            let waits = ServeArgs {
                store: Some(StoreKind::Redis),
                redis_url: Some("redis://127.0.0.1:6379".into()),
                redis_wait_replicas: Some(2),
                presence_ttl: Some("5s".into()),
                redis_wait_timeout: Some("250ms".into()),
                ..ServeArgs::default()
            };
            let c = Config::load(&waits).expect("valid");
            assert_eq!(c.redis_wait_replicas, 2);
            assert_eq!(c.redis_wait_timeout, Duration::from_millis(250));
            assert_eq!(c.presence_ttl, Duration::from_secs(5));
            let insecure = ServeArgs {
                jwt_secret: Some("too-short".into()),
                insecure: true,
                ..ServeArgs::default()
            };
            assert!(Config::load(&insecure).is_ok());
            Ok(())
        });
    }

    #[test]
    fn refuses_public_address_without_auth() {
        figment::Jail::expect_with(|_| {
            let args = ServeArgs {
                listen: Some("0.0.0.0:8000".parse().expect("addr")),
                ..ServeArgs::default()
            };
            let e = Config::load(&args).expect_err("refused").to_string();
            assert!(e.contains("--insecure"), "{e}");
            let args = ServeArgs {
                insecure: true,
                ..args
            };
            assert!(Config::load(&args).is_ok());
            Ok(())
        });
    }
}
