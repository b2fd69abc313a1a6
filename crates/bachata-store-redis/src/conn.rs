//! The connection to Redis: one standalone server or a Redis Cluster, the
//! `redis+cluster://` URL that selects the latter, the settings of the
//! connection and why opening it failed.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};

/// The scheme of a Redis Cluster URL: `redis+cluster://host:port[,host:port...]`.
pub const CLUSTER_SCHEME: &str = "redis+cluster://";

/// A connection to standalone Redis (reconnecting by itself) or to a Redis
/// Cluster (routing each command by its first key's slot, following
/// `MOVED`/`ASK`, reconnecting by itself). Cheap to clone: clones share the
/// connection.
#[derive(Clone)]
pub(crate) enum Conn {
    Standalone(ConnectionManager),
    Cluster(ClusterConnection),
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Conn::Standalone(_) => "Conn::Standalone",
            Conn::Cluster(_) => "Conn::Cluster",
        })
    }
}

impl Conn {
    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self, Conn::Cluster(_))
    }

    /// The cluster connection, in cluster mode.
    pub(crate) fn cluster(&self) -> Option<ClusterConnection> {
        match self {
            Conn::Cluster(c) => Some(c.clone()),
            Conn::Standalone(_) => None,
        }
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Standalone(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Standalone(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Standalone(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// Connection settings. On a cluster they apply to each node's connection;
/// `reconnect_retries` and `max_reconnect_delay` bound the cluster
/// connection's retries of a command (after `MOVED`, a lost connection, a
/// cluster that is down).
#[derive(Debug, Clone)]
pub struct RedisStoreOptions {
    /// Bound on one TCP connect (and handshake) attempt.
    pub connection_timeout: Duration,
    /// Bound on waiting for one reply.
    pub response_timeout: Duration,
    /// Reconnect attempts (exponential backoff from 100 ms, at most
    /// `max_reconnect_delay` apart) before a reconnect gives up; the next call
    /// starts a new one.
    pub reconnect_retries: usize,
    pub max_reconnect_delay: Duration,
    /// Bound on a whole store call, reconnecting included.
    pub call_timeout: Duration,
    /// Standalone Redis: replicas that must confirm each batch of writes
    /// (`WAIT`) before its enqueues succeed; 0 does not wait.
    pub wait_replicas: usize,
    /// How long a batch waits for `wait_replicas` (`WAIT`'s timeout).
    pub wait_timeout: Duration,
    /// For `rediss://`: the certificate authority (PEM) that signed Redis's
    /// certificate, instead of the system's roots.
    pub ca_pem: Option<Vec<u8>>,
}

impl Default for RedisStoreOptions {
    fn default() -> Self {
        RedisStoreOptions {
            connection_timeout: Duration::from_secs(2),
            response_timeout: Duration::from_secs(5),
            reconnect_retries: 3,
            max_reconnect_delay: Duration::from_secs(1),
            call_timeout: Duration::from_secs(8),
            wait_replicas: 0,
            wait_timeout: Duration::from_secs(1),
            ca_pem: None,
        }
    }
}

/// Why [`RedisStore::connect`](crate::RedisStore::connect) failed.
#[derive(Debug, thiserror::Error)]
pub enum RedisStoreError {
    #[error("invalid redis url: {0}")]
    Url(String),
    #[error("cannot connect to redis: {0}")]
    Connect(String),
    #[error("unsupported redis server: {0}")]
    Unsupported(String),
}

/// Opens the connection `url` asks for: a Redis Cluster for
/// `redis+cluster://`, else standalone Redis.
pub(crate) async fn connect_conn(
    url: &str,
    options: &RedisStoreOptions,
) -> Result<Conn, RedisStoreError> {
    let connect = async {
        if let Some(seeds) = cluster_seeds(url)? {
            let mut builder = ClusterClientBuilder::new(seeds);
            if let Some(certs) = tls_certificates(options) {
                builder = builder.certs(certs);
            }
            let client = builder
                .connection_timeout(options.connection_timeout)
                .response_timeout(options.response_timeout)
                .retries(u32::try_from(options.reconnect_retries).unwrap_or(u32::MAX))
                .max_retry_wait(
                    u64::try_from(options.max_reconnect_delay.as_millis()).unwrap_or(u64::MAX),
                )
                .build()
                .map_err(|e| RedisStoreError::Url(short(&e)))?;
            let conn = client
                .get_async_connection()
                .await
                .map_err(|e| RedisStoreError::Connect(short(&e)))?;
            Ok(Conn::Cluster(conn))
        } else {
            let client = client(url, options)?;
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(options.connection_timeout))
                .set_response_timeout(Some(options.response_timeout))
                .set_number_of_retries(options.reconnect_retries)
                .set_max_delay(options.max_reconnect_delay);
            let conn = ConnectionManager::new_with_config(client, config)
                .await
                .map_err(|e| RedisStoreError::Connect(short(&e)))?;
            Ok(Conn::Standalone(conn))
        }
    };
    match tokio::time::timeout(options.call_timeout, connect).await {
        Ok(result) => result,
        Err(_) => Err(RedisStoreError::Connect(format!(
            "timed out after {:?}",
            options.call_timeout
        ))),
    }
}

/// A client for one standalone server (or one seed of a cluster), with the
/// options' certificate authority for `rediss://`.
pub(crate) fn client(
    url: &str,
    options: &RedisStoreOptions,
) -> Result<redis::Client, RedisStoreError> {
    let client = match tls_certificates(options) {
        Some(certs) if url.starts_with("rediss://") => redis::Client::build_with_tls(url, certs),
        _ => redis::Client::open(url),
    };
    client.map_err(|e| RedisStoreError::Url(short(&e)))
}

fn tls_certificates(options: &RedisStoreOptions) -> Option<redis::TlsCertificates> {
    options.ca_pem.as_ref().map(|ca| redis::TlsCertificates {
        client_tls: None,
        root_cert: Some(ca.clone()),
    })
}

/// Names this process's store or bus among bachata nodes.
pub(crate) fn node_id() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{:x}{:08x}", nanos, std::process::id())
}

/// A short, single-line description of a Redis error.
fn short(e: &dyn std::fmt::Display) -> String {
    let text = e.to_string().replace(['\r', '\n'], " ");
    match text.char_indices().nth(200) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text,
    }
}

/// The seed nodes of a `redis+cluster://` URL as `redis://` URLs, or `None`
/// for any other URL. `redis+cluster://[user:password@]h1:p1,h2:p2/`: the
/// credentials, if any, apply to every node; a path (a database) is refused,
/// as Redis Cluster has only database 0.
pub(crate) fn cluster_seeds(url: &str) -> Result<Option<Vec<String>>, RedisStoreError> {
    let Some(rest) = url.strip_prefix(CLUSTER_SCHEME) else {
        return Ok(None);
    };
    let bad = |why: &str| RedisStoreError::Url(format!("{why}: {url:?}"));
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let (auth, hosts) = match rest.rsplit_once('@') {
        Some((auth, hosts)) => (format!("{auth}@"), hosts),
        None => (String::new(), rest),
    };
    if hosts.contains(['/', '?', '#']) {
        return Err(bad("a Redis Cluster URL takes no path or query"));
    }
    let seeds: Vec<String> = hosts
        .split(',')
        .map(|host| {
            if host.is_empty() || !host.contains(':') {
                Err(bad("every seed needs a host:port"))
            } else {
                Ok(format!("redis://{auth}{host}/"))
            }
        })
        .collect::<Result<_, _>>()?;
    Ok(Some(seeds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_urls_become_seed_urls() {
        assert_eq!(cluster_seeds("redis://h:1/").expect("plain"), None);
        assert_eq!(
            cluster_seeds("redis+cluster://a:1,b:2").expect("two"),
            Some(vec!["redis://a:1/".to_owned(), "redis://b:2/".to_owned()])
        );
        assert_eq!(
            cluster_seeds("redis+cluster://u:p@w@a:1,[::1]:2/").expect("auth"),
            Some(vec![
                "redis://u:p@w@a:1/".to_owned(),
                "redis://u:p@w@[::1]:2/".to_owned()
            ])
        );
        for bad in [
            "redis+cluster://",
            "redis+cluster://a:1,",
            "redis+cluster://a",
            "redis+cluster://a:1/0",
            "redis+cluster://a:1?x=y",
        ] {
            assert!(cluster_seeds(bad).is_err(), "{bad}");
        }
    }
}
