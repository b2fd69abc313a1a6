//! Settings: flags > `BACHATA_*` environment > TOML file (`--config`) >
//! defaults (`spec.md` section 1). Merged by figment, so every setting has
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

/// The server's settings, after merging every source.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub store: StoreKind,
    pub redis_url: Option<String>,
    /// HS256 secret for JWTs.
    pub jwt_secret: Option<String>,
    /// PEM file with an RSA or EC public key for RS256 / ES256 JWTs.
    pub jwt_public_key: Option<PathBuf>,
    /// Key for the HTTP API (`Authorization: Bearer <key>`).
    pub api_key: Option<String>,
    /// Key from which each channel's signing secret is derived (spec 6).
    pub sign_key: Option<String>,
    /// Data messages per second per connection; `None` is no limit.
    pub rate_limit: Option<u32>,
    /// Burst above the rate limit; defaults to the rate limit itself.
    pub rate_burst: Option<u32>,
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
    pub insecure: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8000)),
            data_dir: PathBuf::from("./bachata-data"),
            store: StoreKind::Embedded,
            redis_url: None,
            jwt_secret: None,
            jwt_public_key: None,
            api_key: None,
            sign_key: None,
            rate_limit: None,
            rate_burst: None,
            undelivered_webhook: None,
            undelivered_after: Duration::from_secs(60),
            max_frame_bytes: 65536,
            max_json_depth: 32,
            queue_limit: 10_000,
            message_ttl: Duration::from_secs(7 * 24 * 3600),
            dedupe_window: Duration::from_secs(24 * 3600),
            inflight: 256,
            slow_consumer_timeout: Duration::from_secs(10),
            ping_interval: Duration::from_secs(30),
            insecure: false,
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
        Raw::Text(text) => humantime::parse_duration(text.trim()).map_err(|e| {
            serde::de::Error::custom(format!(
                "invalid duration {text:?} ({e}); write it like 30s, 15m, 24h, 7d"
            ))
        }),
        Raw::Seconds(s) => Ok(Duration::from_secs(s)),
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
    /// Allow anonymous channels on a non-loopback address.
    #[arg(long)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub insecure: bool,
}

/// A setting that could not be read or makes no sense.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}")]
    Parse(#[from] Box<figment::Error>),
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
            figment = figment.merge(Toml::file(file));
        }
        let config: Config = figment
            .merge(Env::prefixed("BACHATA_"))
            .merge(Serialized::defaults(args))
            .extract()
            .map_err(Box::new)?;
        config.validate()?;
        Ok(config)
    }

    /// True when clients connect with `?channel=` instead of a JWT.
    pub fn anonymous(&self) -> bool {
        self.jwt_secret.is_none() && self.jwt_public_key.is_none()
    }

    /// Checks what serde cannot: ranges and combinations.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: &str| Err(ConfigError::Invalid(m.to_owned()));
        if self.max_frame_bytes < 64 {
            return invalid("max_frame_bytes must be at least 64");
        }
        if self.max_json_depth == 0 {
            return invalid("max_json_depth must be at least 1");
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
        if self.undelivered_after.is_zero() {
            return invalid("undelivered_after must be longer than 0s");
        }
        if self.store == StoreKind::Redis && self.redis_url.is_none() {
            return invalid(
                "--store redis needs --redis-url redis://HOST:PORT (or redis+cluster://H1:P1,H2:P2)",
            );
        }
        // Safe default (spec 1): anonymous channels only on loopback.
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
