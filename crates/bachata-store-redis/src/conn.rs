//! The connection to Redis: one standalone server or a Redis Cluster, and
//! the `redis+cluster://` URL that selects the latter.

use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};

use crate::RedisStoreError;

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
