//! The undelivered webhook's due index on Redis (see
//! [`Store::take_undelivered`](bachata_core::Store::take_undelivered)).
//!
//! A sorted set of message copies, `"<channel tag> <seq>"` scored by when
//! the webhook is due for them: `bachata:undelivered` on standalone Redis,
//! 16 shards `bachata:undelivered:{<n>}` on a cluster (`n` as for the
//! expiry index). Every node reads the same index, so the call survives the
//! node that stored the message, and a claim (`lua/undelivered_take.lua`:
//! the due members are scored again with the claimer's lease, atomically)
//! gives each due copy to one node at a time.
//!
//! - Standalone: the batch script adds each copy with its append, and the
//!   first ack of a message takes it out (once this node put copies there;
//!   see the writer's `notifies`).
//! - Cluster: the node adds the copies once the enqueue is stored (a node
//!   that dies in between loses those copies' calls), and acked copies
//!   leave when their time comes and a claim finds them acked.
//!
//! Either way a claim checks each copy (`ack_state`, then the entry
//! itself) and drops those acked, gone or expired from the index.

use std::collections::BTreeMap;

use bachata_core::{AckState, EntryKind, Millis, Seq, Store, StoreError, Undelivered};
use bachata_proto::Channel;
use redis::Value;

use crate::keys::{self, UNDELIVERED};
use crate::{RedisStore, codec};

/// One claimed member of a due index.
struct Claimed {
    index: String,
    member: Vec<u8>,
    channel: Channel,
    seq: Seq,
}

impl RedisStore {
    /// The due index that holds `channel`'s copies.
    fn undelivered_index(&self, tag: &str) -> String {
        if self.is_cluster() {
            keys::undelivered_shard(tag)
        } else {
            UNDELIVERED.to_owned()
        }
    }

    /// Cluster mode: puts stored copies into their due index shards.
    pub(crate) async fn index_undelivered(
        &self,
        stored: &[(Channel, Seq)],
        notify_at: Millis,
    ) -> Result<(), StoreError> {
        let mut shards: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (channel, seq) in stored {
            let tag = hex::encode(channel.as_str());
            shards
                .entry(self.undelivered_index(&tag))
                .or_default()
                .push(format!("{tag} {seq}"));
        }
        for (index, members) in shards {
            let mut cmd = redis::cmd("ZADD");
            cmd.arg(index);
            for member in members {
                cmd.arg(notify_at).arg(member);
            }
            let _: Value = self.query("undelivered index", cmd).await?;
        }
        Ok(())
    }

    pub(crate) async fn take_undelivered_redis(
        &self,
        now: Millis,
        lease_until: Millis,
        limit: usize,
    ) -> Result<Vec<Undelivered>, StoreError> {
        let indexes: Vec<String> = if self.is_cluster() {
            keys::undelivered_shards().collect()
        } else {
            vec![UNDELIVERED.to_owned()]
        };
        let mut claimed = Vec::new();
        for index in indexes {
            if claimed.len() >= limit {
                break;
            }
            let mut inv = self.scripts.undelivered_take.prepare_invoke();
            inv.key(&index)
                .arg(now)
                .arg(lease_until)
                .arg(limit - claimed.len());
            let reply: Value = self.invoke("undelivered take", inv).await?;
            for member in codec::array(reply, "undelivered take")? {
                let member = codec::bytes(member, "undelivered take")?;
                let (channel, seq) = parse_member(&member)?;
                claimed.push(Claimed {
                    index: index.clone(),
                    member,
                    channel,
                    seq,
                });
            }
        }
        let mut taken = Vec::with_capacity(claimed.len());
        let mut dropped = Vec::new();
        for copy in claimed {
            match self.pending_copy(&copy.channel, copy.seq, now).await? {
                Some(entry) => taken.push(entry),
                None => dropped.push((copy.index, copy.member)),
            }
        }
        self.remove_members(dropped).await?;
        Ok(taken)
    }

    /// The copy at `seq` when no device acked it and it has not expired.
    async fn pending_copy(
        &self,
        channel: &Channel,
        seq: Seq,
        now: Millis,
    ) -> Result<Option<Undelivered>, StoreError> {
        if self.ack_state(channel, seq).await? != AckState::Pending {
            return Ok(None);
        }
        let read = self
            .read(channel, &None, seq.saturating_sub(1), 1, now)
            .await?;
        Ok(read.into_iter().find(|e| e.seq == seq).and_then(|e| {
            let EntryKind::Message { sender, id } = e.kind else {
                return None;
            };
            Some(Undelivered {
                channel: channel.clone(),
                seq,
                sender,
                id,
                payload: e.payload,
            })
        }))
    }

    pub(crate) async fn finish_undelivered_redis(
        &self,
        done: &[(Channel, Seq)],
    ) -> Result<(), StoreError> {
        let members = done
            .iter()
            .map(|(channel, seq)| {
                let tag = hex::encode(channel.as_str());
                (
                    self.undelivered_index(&tag),
                    format!("{tag} {seq}").into_bytes(),
                )
            })
            .collect();
        self.remove_members(members).await
    }

    /// `ZREM`s members, one command per index.
    async fn remove_members(&self, members: Vec<(String, Vec<u8>)>) -> Result<(), StoreError> {
        let mut by_index: BTreeMap<String, Vec<Vec<u8>>> = BTreeMap::new();
        for (index, member) in members {
            by_index.entry(index).or_default().push(member);
        }
        for (index, members) in by_index {
            let mut cmd = redis::cmd("ZREM");
            cmd.arg(index).arg(members);
            let _: Value = self.query("undelivered finish", cmd).await?;
        }
        Ok(())
    }
}

/// `"<hex tag> <seq>"` back into the channel and seq.
fn parse_member(member: &[u8]) -> Result<(Channel, Seq), StoreError> {
    let bad = || StoreError::corrupt("redis undelivered index: bad member");
    let text = std::str::from_utf8(member).map_err(|_| bad())?;
    let (tag, seq) = text.split_once(' ').ok_or_else(bad)?;
    let name = hex::decode(tag).map_err(|_| bad())?;
    let name = String::from_utf8(name).map_err(|_| bad())?;
    let channel = Channel::new(&name).map_err(|_| bad())?;
    Ok((channel, seq.parse().map_err(|_| bad())?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_parse_back_and_garbage_is_corrupt() {
        let (channel, seq) = parse_member(b"626f62 42").expect("parses");
        assert_eq!((channel.as_str(), seq), ("bob", 42));
        for bad in [&b"626f62"[..], b"zz 1", b"626f62 x", b" 1", b"\xff 1"] {
            assert!(parse_member(bad).is_err(), "{bad:?}");
        }
    }
}
