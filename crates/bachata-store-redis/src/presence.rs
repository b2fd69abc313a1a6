//! [`RedisPresence`]: the connection counts of every node that shares one
//! Redis (see `bachata_core::Presence`).
//!
//! Each channel with connections has a hash `bachata:{<tag>}:online`: one
//! field per node, `"<deadline ms>\n<n> <hex device>\n..."` (the default
//! device's hex is empty). Deadlines are on Redis's clock (`TIME` in the
//! scripts), so the nodes' clocks need not agree. A node writes a
//! channel's field when its connections there change and every
//! `ttl / 3`; a field whose deadline passed is not counted, and goes at the
//! next write of the hash. The hash itself expires with its last live
//! field: a channel nobody is connected to leaves no key behind.

use std::time::Duration;

use async_trait::async_trait;
use bachata_core::{Device, DeviceCounts, Presence, StoreError, merge_counts};
use bachata_proto::{Channel, DeviceId};
use futures_util::future::join_all;
use redis::Script;

use crate::conn::{Conn, RedisStoreError, RedisStoreOptions, connect_conn, node_id};
use crate::keys;

/// See the module docs.
pub struct RedisPresence {
    conn: Conn,
    node: String,
    ttl: Duration,
    options: RedisStoreOptions,
    write: Script,
    read: Script,
}

impl std::fmt::Debug for RedisPresence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisPresence")
            .field("node", &self.node)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl RedisPresence {
    /// Connects to Redis at `url` (as for
    /// [`RedisStore::connect`](crate::RedisStore::connect)). A node's counts
    /// stop counting `ttl` after its last write: a dead node leaves every
    /// channel's count within `ttl`.
    pub async fn connect(url: &str, ttl: Duration) -> Result<RedisPresence, RedisStoreError> {
        RedisPresence::connect_with(url, ttl, RedisStoreOptions::default()).await
    }

    /// [`RedisPresence::connect`] with connection settings.
    pub async fn connect_with(
        url: &str,
        ttl: Duration,
        options: RedisStoreOptions,
    ) -> Result<RedisPresence, RedisStoreError> {
        let conn = connect_conn(url, &options).await?;
        Ok(RedisPresence {
            conn,
            node: node_id(),
            ttl: ttl.max(Duration::from_millis(3)),
            options,
            write: Script::new(concat!("#!lua\n", include_str!("lua/presence_write.lua"))),
            read: Script::new(concat!(
                "#!lua flags=no-writes\n",
                include_str!("lua/presence_read.lua")
            )),
        })
    }

    async fn call<T>(
        &self,
        fut: impl Future<Output = Result<T, redis::RedisError>>,
    ) -> Result<T, StoreError> {
        crate::codec::bounded("presence", self.options.call_timeout, fut).await
    }
}

#[async_trait]
impl Presence for RedisPresence {
    fn refresh_every(&self) -> Duration {
        self.ttl / 3
    }

    async fn report(&self, counts: Vec<(Channel, DeviceCounts)>) -> Result<(), StoreError> {
        let ttl_ms = u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX);
        // One call per channel (each its own slot on a cluster), all in
        // flight at once on the multiplexed connection.
        let calls = counts.iter().map(|(channel, devices)| {
            let mut conn = self.conn.clone();
            let mut invocation = self.write.prepare_invoke();
            invocation
                .key(keys::online(channel))
                .arg(&self.node)
                .arg(encode(devices))
                .arg(ttl_ms);
            async move { self.call(invocation.invoke_async::<i64>(&mut conn)).await }
        });
        for result in join_all(calls).await {
            result?;
        }
        Ok(())
    }

    async fn others(&self, channel: &Channel) -> Result<DeviceCounts, StoreError> {
        let mut conn = self.conn.clone();
        let mut invocation = self.read.prepare_invoke();
        invocation.key(keys::online(channel)).arg(&self.node);
        let fields: Vec<Vec<u8>> = self.call(invocation.invoke_async(&mut conn)).await?;
        let mut out: DeviceCounts = Vec::new();
        for field in fields {
            out = merge_counts(out, decode(&field)?);
        }
        Ok(out)
    }
}

/// `"<n> <hex device>"` per device, one per line.
fn encode(devices: &DeviceCounts) -> String {
    let mut out = String::new();
    for (device, n) in devices {
        if !out.is_empty() {
            out.push('\n');
        }
        out.push_str(&n.to_string());
        out.push(' ');
        out.push_str(&hex::encode(device.as_ref().map_or("", |d| d.as_str())));
    }
    out
}

/// A node's field: its deadline line, then what [`encode`] wrote.
fn decode(field: &[u8]) -> Result<DeviceCounts, StoreError> {
    let bad = || StoreError::corrupt("redis presence: malformed counts");
    let text = std::str::from_utf8(field).map_err(|_| bad())?;
    let mut lines = text.split('\n');
    lines.next().ok_or_else(bad)?;
    lines
        .filter(|line| !line.is_empty())
        .map(|line| {
            let (n, device) = line.split_once(' ').ok_or_else(bad)?;
            let n: usize = n.parse().map_err(|_| bad())?;
            let device: Device = if device.is_empty() {
                None
            } else {
                let name = hex::decode(device).map_err(|_| bad())?;
                let name = String::from_utf8(name).map_err(|_| bad())?;
                Some(DeviceId::new(&name).map_err(|_| bad())?)
            };
            Ok((device, n))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_read_back_as_written() {
        let devices: DeviceCounts = vec![
            (None, 2),
            (Some(DeviceId::new("phone").expect("device")), 1),
        ];
        let field = format!("123\n{}", encode(&devices));
        assert_eq!(decode(field.as_bytes()).expect("decode"), devices);
        assert_eq!(decode(b"123\n").expect("no line").len(), 0);
        assert!(decode(b"123\nx zz").is_err());
    }
}
