//! The bachata server: WebSocket endpoint, health, metrics, configuration
//! and graceful shutdown, around a [`bachata_core::MessagesCenter`].
//!
//! [`start`] binds and serves; the `bachata` binary is a thin wrapper that
//! parses the command line and waits for a signal. Tests start servers on
//! port 0 through the same function.

mod api;
mod app;
mod auth;
mod config;
mod hooks;
mod listener;
mod metrics;
mod origin;
mod route_hook;
mod state;
mod tls;
mod webhook;
mod websocket;
mod ws;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bachata_core::{CenterBuilder, DeliveryConfig, MemoryStore, MessagesCenter, Store};
use bachata_store_redb::RedbStore;
use bachata_store_redis::{RedisBus, RedisPresence, RedisStore, RedisStoreOptions};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use auth::KeyError;
pub use config::{
    Config, ConfigError, LogFormat, ServeArgs, StoreKind, configuration_page, example_toml,
    parse_duration,
};
pub use listener::{DRAIN_TIMEOUT, raise_open_file_limit};

use crate::metrics::Metrics;
use crate::state::AppState;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Auth(#[from] auth::KeyError),
    #[error("cannot open the embedded store: {0}")]
    Store(#[from] bachata_store_redb::OpenError),
    #[error("cannot connect to Redis: {0}")]
    Redis(#[from] bachata_store_redis::RedisStoreError),
    #[error("{0}")]
    Limits(String),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A server that is accepting connections.
#[derive(Debug)]
pub struct RunningServer {
    addr: SocketAddr,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
    state: Arc<AppState>,
    /// Every HTTP connection task (WebSockets are in the state's tracker).
    connections: TaskTracker,
}

impl RunningServer {
    /// The address it listens on (the real port when started on port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn center(&self) -> &Arc<MessagesCenter> {
        &self.state.center
    }

    /// A token that stops the server when cancelled.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Stops accepting, closes WebSockets with 1001, waits for them (at most
    /// [`DRAIN_TIMEOUT`]) and releases the store.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        self.wait().await;
    }

    /// Waits until the server stopped (after its token was cancelled):
    /// accepting stops at once, and open connections get [`DRAIN_TIMEOUT`]
    /// in all, whatever state they are in (a half-sent request included).
    pub async fn wait(self) {
        let _ = self.task.await;
        self.state.tracker.close();
        self.connections.close();
        let drained = async {
            self.state.tracker.wait().await;
            self.connections.wait().await;
        };
        if tokio::time::timeout(DRAIN_TIMEOUT, drained).await.is_err() {
            tracing::warn!("connections did not close in time; exiting anyway");
        }
        // Other nodes stop counting this one's connections now rather than
        // at the end of --presence-ttl (a rolling restart, say).
        let flushed = self.state.center.flush_presence();
        if tokio::time::timeout(Duration::from_secs(2), flushed)
            .await
            .is_err()
        {
            tracing::warn!("could not clear this node's connection counts in time");
        }
    }
}

async fn open_store(
    config: &Config,
    redis: Option<RedisStoreOptions>,
    metrics: &Metrics,
) -> Result<Arc<dyn Store>, StartError> {
    Ok(match config.store {
        StoreKind::Memory => Arc::new(MemoryStore::new()),
        StoreKind::Embedded => Arc::new(RedbStore::open(
            &config.data_dir,
            Some(Box::new(metrics.commit_observer())),
        )?),
        StoreKind::Redis => {
            let url = config.redis_url.as_deref().unwrap_or_default();
            let options = RedisStoreOptions {
                wait_replicas: config.redis_wait_replicas,
                wait_timeout: config.redis_wait_timeout,
                ..redis.unwrap_or_default()
            };
            Arc::new(RedisStore::connect_with(url, options).await?)
        }
    })
}

/// How every application hook is called.
fn hook_settings(config: &Config) -> hooks::HookSettings {
    hooks::HookSettings {
        timeout: config.hook_timeout,
        concurrency: config.hook_concurrency,
        api_key: config.api_key.clone(),
    }
}

/// The connection settings every Redis connection of the node shares.
fn redis_options(config: &Config) -> Result<RedisStoreOptions, StartError> {
    let ca_pem = match &config.redis_ca {
        Some(path) => Some(std::fs::read(path).map_err(|e| {
            ConfigError::Invalid(format!("cannot read --redis-ca {}: {e}", path.display()))
        })?),
        None => None,
    };
    Ok(RedisStoreOptions {
        ca_pem,
        ..RedisStoreOptions::default()
    })
}

/// What `serve` makes of its settings before it opens anything (the store,
/// a socket, a connection to Redis): the keys and files they name, the
/// hooks' clients, the connection limit against the open-file limit. Every
/// check a configuration can fail is made here, once, so that
/// `check-config` ([`check`]) fails exactly where `serve` would.
struct Prepared {
    auth: auth::Auth,
    max_connections: usize,
    max_retained_bytes: u64,
    origins: origin::OriginPolicy,
    tls: Option<Arc<tls::Tls>>,
    /// For the Redis store, bus and presence.
    redis: Option<RedisStoreOptions>,
    metrics: Metrics,
    route_hook: Option<hooks::HookClient>,
    connect_hook: Option<hooks::HookClient>,
    undelivered: Option<webhook::UndeliveredWebhook>,
}

impl Prepared {
    fn new(config: &Config) -> Result<Prepared, StartError> {
        config.validate()?;
        let auth = auth::Auth::new(
            config.jwt_secret.as_deref(),
            config.jwt_public_key.as_deref(),
            config.max_token_lifetime,
        )?;
        let max_connections =
            listener::max_connections(config.max_connections, listener::open_file_limit())
                .map_err(StartError::Limits)?;
        let origins = origin::OriginPolicy {
            allowed: match &config.allowed_origins {
                Some(list) => origin::AllowedOrigins::parse(list).map_err(ConfigError::Invalid)?,
                None => origin::AllowedOrigins::List(Vec::new()),
            },
            loopback_hosts_only: config.anonymous() && config.listen.ip().is_loopback(),
            tls: config.tls_cert.is_some(),
        };
        let redis = match config.store {
            StoreKind::Redis => Some(redis_options(config)?),
            StoreKind::Embedded | StoreKind::Memory => None,
        };
        let mut metrics = Metrics::new();
        let settings = hook_settings(config);
        let mut hook = |name, url: &Option<String>| {
            url.as_deref()
                .map(|url| hooks::HookClient::new(name, url, &settings, &mut metrics))
                .transpose()
                .map_err(|e| ConfigError::Invalid(e.to_string()))
        };
        let route_hook = hook("route", &config.route_hook)?;
        let connect_hook = hook("connect", &config.connect_hook)?;
        let undelivered = match &config.undelivered_webhook {
            Some(url) => Some(
                webhook::UndeliveredWebhook::new(
                    url,
                    config.undelivered_after,
                    config.api_key.as_deref(),
                    &metrics,
                )
                .map_err(|e| ConfigError::Invalid(e.to_string()))?,
            ),
            None => None,
        };
        Ok(Prepared {
            auth,
            max_connections,
            max_retained_bytes: config
                .max_retained_bytes
                .unwrap_or_else(config::default_max_retained_bytes),
            origins,
            tls: load_tls(config)?,
            redis,
            metrics,
            route_hook,
            connect_hook,
            undelivered,
        })
    }
}

/// Makes every check `serve` makes before it opens anything (see
/// [`Prepared`]). For `bachata check-config`, which should raise the
/// open-file limit first, as `serve` does
/// ([`raise_open_file_limit`]): `--max-connections` is checked against it.
pub fn check(config: &Config) -> Result<(), StartError> {
    Prepared::new(config).map(drop)
}

/// The settings in effect, one `key = value` line each (TOML), secrets
/// masked: for `bachata check-config`.
pub fn describe_settings(config: &Config) -> String {
    const SECRETS: [&str; 3] = ["jwt_secret", "api_key", "sign_key"];
    let fields = config::fields(config);
    let mut out = String::new();
    for (key, value) in fields {
        let shown = match (&value, key.as_str()) {
            (serde_json::Value::Null, _) => {
                out.push_str(&format!("# {key} is not set\n"));
                continue;
            }
            (_, k) if SECRETS.contains(&k) => "\"********\"".to_owned(),
            (serde_json::Value::String(url), "redis_url") => format!("{:?}", mask_password(url)),
            (serde_json::Value::String(s), _) => format!("{s:?}"),
            (other, _) => other.to_string(),
        };
        out.push_str(&format!("{key} = {shown}\n"));
    }
    out
}

/// `scheme://user:password@host...` with the password masked.
fn mask_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let Some((credentials, host)) = rest.rsplit_once('@') else {
        return url.to_owned();
    };
    let user = credentials.split_once(':').map_or(credentials, |(u, _)| u);
    format!("{scheme}://{user}:********@{host}")
}

/// The TLS listener's files, read (with both `--tls-cert` and `--tls-key`).
fn load_tls(config: &Config) -> Result<Option<Arc<tls::Tls>>, StartError> {
    match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => Ok(Some(Arc::new(tls::Tls::load(cert, key)?))),
        _ => Ok(None),
    }
}

/// Reads the TLS files again on each SIGHUP, until shutdown.
fn spawn_tls_reload(tls: Arc<tls::Tls>, shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangups = match signal(SignalKind::hangup()) {
        Ok(hangups) => hangups,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP: TLS files are not reloaded");
            return;
        }
    };
    tokio::spawn(async move {
        loop {
            tokio::select! {
                got = hangups.recv() => {
                    if got.is_none() {
                        break;
                    }
                    match tls.reload() {
                        Ok(()) => tracing::info!("TLS certificate reloaded"),
                        Err(e) => tracing::warn!(
                            error = %e,
                            "TLS certificate not reloaded; the one in use stays"
                        ),
                    }
                }
                () = shutdown.cancelled() => break,
            }
        }
    });
}

/// Starts a server with `config`; returns once it accepts connections.
pub async fn start(config: Config) -> Result<RunningServer, StartError> {
    start_with(config, |center| center).await
}

/// Starts a server whose messages center is customised by `customize`: add
/// routes (they run before the built-in group and direct routes) and
/// post-process hooks. This is how a Rust application extends bachata; see
/// `examples/custom-route`.
pub async fn start_with(
    config: Config,
    customize: impl FnOnce(CenterBuilder) -> CenterBuilder,
) -> Result<RunningServer, StartError> {
    let Prepared {
        auth,
        max_connections,
        max_retained_bytes,
        origins,
        tls,
        redis,
        mut metrics,
        route_hook,
        connect_hook,
        undelivered,
    } = Prepared::new(&config)?;
    let store = open_store(&config, redis.clone(), &metrics).await?;
    let mut builder = customize(MessagesCenter::builder(store.clone()));
    if let Some(client) = route_hook {
        let types = route_hook::HookTypes::parse(config.route_hook_types.as_deref());
        builder = builder.route_hook(Arc::new(route_hook::RouteHookClient::new(
            client,
            types,
            config.route_hook_batch,
            config.hook_concurrency,
        )));
    }
    if let (Some(options), Some(url)) = (redis, &config.redis_url) {
        // Other nodes share this Redis: hear about their messages.
        builder = builder.bus(Arc::new(RedisBus::connect_with(url, &options).await?));
        // ... and count their connections in the channel API.
        builder = builder.presence(Arc::new(
            RedisPresence::connect_with(url, config.presence_ttl, options).await?,
        ));
    }
    let center = builder
        .sign_key(config.sign_key.as_deref().map(str::as_bytes))
        .config(DeliveryConfig {
            message_ttl: config.message_ttl,
            dedupe_window: config.dedupe_window,
            queue_limit: config.queue_limit,
            inflight: config.inflight,
            max_retained_bytes,
            forget_after: config.forget_after,
            undelivered_after: undelivered.is_some().then_some(config.undelivered_after),
        })
        .build();
    metrics.watch(center.clone());
    let listener = bind(config.listen).map_err(|source| StartError::Bind {
        addr: config.listen,
        source,
    })?;
    let addr = listener.local_addr().map_err(|source| StartError::Bind {
        addr: config.listen,
        source,
    })?;
    let shutdown = CancellationToken::new();
    if let Some(webhook) = undelivered {
        webhook.spawn(store, shutdown.child_token());
    }
    if let Some(tls) = &tls {
        spawn_tls_reload(tls.clone(), shutdown.clone());
    }
    let header_timeout = config.header_timeout;
    let connect_hook = connect_hook.map(hooks::ConnectHook::new);
    let state = Arc::new(AppState {
        config,
        auth,
        connect_hook,
        center: center.clone(),
        metrics,
        tracker: TaskTracker::new(),
    });
    // Connections learn of the shutdown through their hub inboxes (see
    // `Hub::close_all`), not a wait of their own on the token.
    let hub = center.hub().clone();
    let closing = shutdown.clone();
    tokio::spawn(async move {
        closing.cancelled().await;
        hub.close_all();
    });
    spawn_expiry(center, shutdown.clone());
    let connections = TaskTracker::new();
    let listener = listener::Listener {
        tcp: listener,
        app: app::router(state.clone(), origins),
        overflow_app: app::overflow_router(state.clone()),
        max_connections,
        header_timeout,
        shutdown: shutdown.clone(),
        connections: connections.clone(),
        open: state.metrics.open_connections.clone(),
        refused: state.metrics.refused_connections.clone(),
        tls,
    };
    let tls_on = listener.tls.is_some();
    let task = tokio::spawn(listener.run());
    // What a newcomer needs to know is in effect (never a secret or a URL,
    // which may carry a password).
    let store = match state.config.store {
        StoreKind::Embedded => "embedded",
        StoreKind::Memory => "memory",
        StoreKind::Redis => "redis",
    };
    let auth = match (&state.auth, state.connect_hook.is_some()) {
        (auth::Auth::Anonymous, false) => "anonymous",
        (auth::Auth::Anonymous, true) => "connect-hook",
        (auth::Auth::Jwt { .. }, false) => "jwt",
        (auth::Auth::Jwt { .. }, true) => "jwt+connect-hook",
    };
    if state.config.store == StoreKind::Embedded {
        tracing::info!(
            %addr, max_connections, %store, data_dir = %state.config.data_dir.display(), %auth,
            tls = tls_on, "accepting connections"
        );
    } else {
        tracing::info!(%addr, max_connections, %store, %auth, tls = tls_on, "accepting connections");
    }
    Ok(RunningServer {
        addr,
        shutdown,
        task,
        state,
        connections,
    })
}

/// Serves the echo mode of the WebSocket layer on `/messages` (every text
/// or binary message comes back), with the same accept loop, limits and
/// close handling as the server: what the Autobahn conformance suite runs
/// against (`scripts/autobahn.sh`). Not for production.
#[doc(hidden)]
pub async fn start_echo(
    listen: SocketAddr,
    max_frame_bytes: usize,
    shutdown: CancellationToken,
) -> Result<(SocketAddr, JoinHandle<()>), StartError> {
    let bind_error = |source| StartError::Bind {
        addr: listen,
        source,
    };
    let tcp = bind(listen).map_err(bind_error)?;
    let addr = tcp.local_addr().map_err(bind_error)?;
    let app = axum::Router::new().route(
        "/messages",
        axum::routing::get(move |ws: websocket::Upgrade| async move {
            ws.on_upgrade(ws::socket_limits(max_frame_bytes), ws::echo)
        }),
    );
    let metrics = Metrics::new();
    let listener = listener::Listener {
        tcp,
        overflow_app: axum::Router::new().fallback(listener::at_capacity),
        app,
        max_connections: listener::max_connections(None, listener::open_file_limit())
            .map_err(StartError::Limits)?,
        header_timeout: Config::default().header_timeout,
        shutdown,
        connections: TaskTracker::new(),
        open: metrics.open_connections.clone(),
        refused: metrics.refused_connections.clone(),
        tls: None,
    };
    Ok((addr, tokio::spawn(listener.run())))
}

/// The store's housekeeping, until shutdown: sweeps expired messages every
/// few seconds (reads already skip them; the sweep frees their space), and
/// forgets what nobody used for `--forget-after` (protocol.md section 9),
/// after marking the devices of this node's live connections as seen.
fn spawn_expiry(center: Arc<MessagesCenter>, shutdown: CancellationToken) {
    let config = center.config();
    // The sweep drops expired messages and dedupe records.
    let every = (config.message_ttl.min(config.dedupe_window) / 10)
        .clamp(Duration::from_secs(1), Duration::from_secs(60));
    // Several times per `forget_after`, so that a live device is always
    // seen more recently than that.
    let refresh_every =
        (config.forget_after / 4).clamp(Duration::from_millis(250), Duration::from_secs(3600));
    let forget_every =
        (config.forget_after / 4).clamp(Duration::from_millis(250), Duration::from_secs(60));
    tokio::spawn(async move {
        let mut expiry = tokio::time::interval(every);
        let mut refresh = tokio::time::interval(refresh_every);
        let mut forget = tokio::time::interval(forget_every);
        for tick in [&mut expiry, &mut refresh, &mut forget] {
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        }
        loop {
            tokio::select! {
                _ = expiry.tick() => {
                    match center.expire().await {
                        Ok(0) => {}
                        Ok(n) => tracing::debug!(dropped = n, "expired messages"),
                        Err(e) => tracing::warn!(error = %e, "expiry sweep failed"),
                    }
                }
                _ = refresh.tick() => {
                    if let Err(e) = center.refresh_live_devices().await {
                        tracing::warn!(error = %e, "cannot mark live devices as seen");
                    }
                }
                _ = forget.tick() => {
                    match center.forget().await {
                        Ok(f) if f.channels + f.devices == 0 => {}
                        Ok(f) => tracing::debug!(channels = f.channels, devices = f.devices, "forgot unused state"),
                        Err(e) => tracing::warn!(error = %e, "forget sweep failed"),
                    }
                }
                () = shutdown.cancelled() => break,
            }
        }
    });
}

/// Connections the kernel queues before `accept`. tokio's
/// `TcpListener::bind` uses 128: a storm of 200 reconnecting clients
/// overflowed it and the refused ones waited a 1 s SYN retry
/// (`bachata-bench reconnect`, docs/performance.md). The kernel caps it at
/// `net.core.somaxconn`.
const LISTEN_BACKLOG: u32 = 4096;

fn bind(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // As `TcpListener::bind` does: a restarted server can bind at once.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    /// A storm of connects that nobody accepts yet all complete at once:
    /// the accept queue holds them. With tokio's default backlog of 128
    /// the rest would wait for a SYN retry, a second later.
    #[tokio::test]
    async fn the_listen_backlog_absorbs_a_connect_storm() {
        // The kernel caps the backlog at `net.core.somaxconn`.
        let somaxconn: usize = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(4096);
        let storm = somaxconn.min(300);
        let listener = super::bind("127.0.0.1:0".parse().expect("address")).expect("bind");
        let addr = listener.local_addr().expect("local address");
        let connects = (0..storm).map(|_| tokio::net::TcpStream::connect(addr));
        let streams = tokio::time::timeout(
            Duration::from_millis(900),
            futures_util::future::join_all(connects),
        )
        .await
        .expect("every connect completes before a SYN retry (1 s)");
        assert!(streams.iter().all(Result::is_ok), "{storm} connects");
    }
}
