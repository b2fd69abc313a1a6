//! The delivery state of every channel, in memory, as a deterministic state
//! machine.
//!
//! [`MemoryStore`](crate::MemoryStore) is this state behind a lock. The
//! embedded durable store keeps the same state in memory and persists the
//! [`Change`]s each operation reports, in one transaction per group commit,
//! then rebuilds the state from disk with [`MemState::restore`] on open. So
//! both backends apply the rules of the `Store` trait through one piece of
//! code.
//!
//! # Invariants
//! - `ChannelState::next_seq` is one past the highest seq ever appended to
//!   the channel in this state's life (restored as max seq on disk + 1).
//! - `ChannelState::pending` counts the message entries in `log` that no
//!   device has acked.
//! - `by_id` maps exactly the ids of the message entries in `log`.

use std::collections::{BTreeMap, BTreeSet};

use foldhash::HashMap;

use bachata_proto::{Channel, GroupId, MessageId};
use bytes::Bytes;

use crate::store::{
    AckRequest, AckState, Acked, Device, Enqueued, Entry, EntryKind, Millis, NewMessage, Seq,
};

/// The key under which a device is stored: its name, or "" for the default
/// device (a named device is never empty).
pub fn device_key(device: &Device) -> &str {
    device.as_ref().map_or("", |d| d.as_str())
}

/// One retained entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEntry {
    pub kind: EntryKind,
    pub payload: Bytes,
    pub expires_at: Millis,
    /// Device keys that acked this entry.
    pub acked_by: Vec<String>,
}

#[derive(Debug)]
struct ChannelState {
    next_seq: Seq,
    log: BTreeMap<Seq, StoredEntry>,
    /// Known devices and when each was last seen.
    devices: BTreeMap<String, Millis>,
    by_id: HashMap<MessageId, Vec<Seq>>,
    pending: u64,
}

impl Default for ChannelState {
    fn default() -> Self {
        ChannelState {
            next_seq: 1,
            log: BTreeMap::new(),
            devices: BTreeMap::new(),
            by_id: HashMap::default(),
            pending: 0,
        }
    }
}

impl ChannelState {
    fn append(
        &mut self,
        kind: EntryKind,
        payload: Bytes,
        expires_at: Millis,
    ) -> (Seq, StoredEntry) {
        let seq = self.next_seq;
        self.next_seq += 1;
        if let EntryKind::Message { id, .. } = &kind {
            self.by_id.entry(id.clone()).or_default().push(seq);
            self.pending += 1;
        }
        let entry = StoredEntry {
            kind,
            payload,
            expires_at,
            acked_by: Vec::new(),
        };
        self.log.insert(seq, entry.clone());
        (seq, entry)
    }

    /// Removes an entry and its index records.
    fn remove(&mut self, seq: Seq) -> Option<StoredEntry> {
        let entry = self.log.remove(&seq)?;
        if let EntryKind::Message { id, .. } = &entry.kind {
            if let Some(seqs) = self.by_id.get_mut(id) {
                seqs.retain(|s| *s != seq);
                if seqs.is_empty() {
                    self.by_id.remove(id);
                }
            }
            if entry.acked_by.is_empty() {
                self.pending = self.pending.saturating_sub(1);
            }
        }
        Some(entry)
    }

    /// True when every known device acked the entry.
    fn fully_acked(devices: &BTreeMap<String, Millis>, entry: &StoredEntry) -> bool {
        !devices.is_empty() && devices.keys().all(|d| entry.acked_by.contains(d))
    }

    /// Pending messages that have not expired at `now`. `pending` still
    /// counts expired entries until the sweep removes them, so this scans the
    /// log; [`ChannelState::is_full`] only scans when the cheap count says
    /// the queue might be full.
    fn pending_at(&self, now: Millis) -> u64 {
        let expired = self
            .log
            .values()
            .filter(|e| {
                e.expires_at <= now
                    && e.acked_by.is_empty()
                    && matches!(e.kind, EntryKind::Message { .. })
            })
            .count() as u64;
        self.pending.saturating_sub(expired)
    }

    fn is_full(&self, limit: u64, now: Millis) -> bool {
        self.pending >= limit && self.pending_at(now) >= limit
    }
}

/// A durable mutation, reported by every state-changing operation so that a
/// persistent backend can write exactly what changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    PutEntry {
        channel: Channel,
        seq: Seq,
        entry: StoredEntry,
    },
    /// Removes the entry and every ack recorded for it.
    DelEntry {
        channel: Channel,
        seq: Seq,
        acked_by: Vec<String>,
    },
    PutAck {
        channel: Channel,
        seq: Seq,
        device: String,
    },
    PutDevice {
        channel: Channel,
        device: String,
        last_seen: Millis,
    },
    PutDedupe {
        sender: String,
        id: MessageId,
        until: Millis,
    },
    DelDedupe {
        sender: String,
        id: MessageId,
    },
    PutMember {
        group: GroupId,
        member: Channel,
    },
    DelMember {
        group: GroupId,
        member: Channel,
    },
}

/// The whole delivery state. See the module docs.
#[derive(Debug, Default)]
pub struct MemState {
    channels: HashMap<Channel, ChannelState>,
    /// (sender key, id) -> dedupe deadline; sender key "" is the system.
    dedupe: HashMap<(String, MessageId), Millis>,
    groups: HashMap<GroupId, BTreeSet<Channel>>,
}

/// Everything a persistent backend loads to rebuild a [`MemState`].
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Each channel's next seq, as persisted (the high-water mark that
    /// survives its entries being removed).
    pub next_seqs: Vec<(Channel, Seq)>,
    pub entries: Vec<(Channel, Seq, StoredEntry)>,
    pub devices: Vec<(Channel, String, Millis)>,
    pub dedupe: Vec<(String, MessageId, Millis)>,
    pub members: Vec<(GroupId, Channel)>,
}

impl MemState {
    pub fn new() -> Self {
        Self::default()
    }

    /// Rebuilds the state from what a backend persisted. The acks of each
    /// entry are in `StoredEntry::acked_by`.
    pub fn restore(snapshot: Snapshot) -> Self {
        let mut state = MemState::new();
        for (channel, next_seq) in snapshot.next_seqs {
            let ch = state.channels.entry(channel).or_default();
            ch.next_seq = ch.next_seq.max(next_seq);
        }
        for (channel, seq, entry) in snapshot.entries {
            let ch = state.channels.entry(channel).or_default();
            ch.next_seq = ch.next_seq.max(seq + 1);
            if let EntryKind::Message { id, .. } = &entry.kind {
                ch.by_id.entry(id.clone()).or_default().push(seq);
                if entry.acked_by.is_empty() {
                    ch.pending += 1;
                }
            }
            ch.log.insert(seq, entry);
        }
        for ch in state.channels.values_mut() {
            for seqs in ch.by_id.values_mut() {
                seqs.sort_unstable();
            }
        }
        for (channel, device, last_seen) in snapshot.devices {
            state
                .channels
                .entry(channel)
                .or_default()
                .devices
                .insert(device, last_seen);
        }
        for (sender, id, until) in snapshot.dedupe {
            state.dedupe.insert((sender, id), until);
        }
        for (group, member) in snapshot.members {
            state.groups.entry(group).or_default().insert(member);
        }
        state
    }

    pub fn enqueue(&mut self, msg: &NewMessage, changes: &mut Vec<Change>) -> Enqueued {
        let sender_key = msg.sender.as_ref().map_or("", |c| c.as_str()).to_owned();
        let dedupe_key = (sender_key, msg.id.clone());
        if self
            .dedupe
            .get(&dedupe_key)
            .is_some_and(|until| *until > msg.now)
        {
            return Enqueued::Duplicate;
        }
        for dest in &msg.destinations {
            if self
                .channels
                .get(dest)
                .is_some_and(|c| c.is_full(msg.queue_limit, msg.now))
            {
                return Enqueued::QueueFull(dest.clone());
            }
        }
        let mut seqs = Vec::with_capacity(msg.destinations.len());
        for dest in &msg.destinations {
            let ch = self.channels.entry(dest.clone()).or_default();
            let kind = EntryKind::Message {
                sender: msg.sender.clone(),
                id: msg.id.clone(),
            };
            let (seq, entry) = ch.append(kind, msg.payload.clone(), msg.expires_at);
            changes.push(Change::PutEntry {
                channel: dest.clone(),
                seq,
                entry,
            });
            seqs.push((dest.clone(), seq));
        }
        changes.push(Change::PutDedupe {
            sender: dedupe_key.0.clone(),
            id: dedupe_key.1.clone(),
            until: msg.dedupe_until,
        });
        self.dedupe.insert(dedupe_key, msg.dedupe_until);
        Enqueued::Stored(seqs)
    }

    pub fn read(
        &self,
        channel: &Channel,
        device: &Device,
        after: Seq,
        limit: usize,
        now: Millis,
    ) -> Vec<Entry> {
        let Some(ch) = self.channels.get(channel) else {
            return Vec::new();
        };
        let key = device_key(device);
        ch.log
            .range(after.saturating_add(1)..)
            .filter(|(_, e)| e.expires_at > now && !e.acked_by.iter().any(|d| d == key))
            .take(limit)
            .map(|(seq, e)| Entry {
                seq: *seq,
                kind: e.kind.clone(),
                payload: e.payload.clone(),
            })
            .collect()
    }

    /// Records `device`'s ack of `seq`; returns whether it was the first ack
    /// of that entry by any device, and the entry's kind.
    fn ack_seq(
        &mut self,
        channel: &Channel,
        device: &str,
        seq: Seq,
        changes: &mut Vec<Change>,
    ) -> Option<(bool, EntryKind)> {
        let ch = self.channels.get_mut(channel)?;
        let entry = ch.log.get_mut(&seq)?;
        if entry.acked_by.iter().any(|d| d == device) {
            return None;
        }
        let first = entry.acked_by.is_empty();
        entry.acked_by.push(device.to_owned());
        let kind = entry.kind.clone();
        if first && matches!(kind, EntryKind::Message { .. }) {
            ch.pending = ch.pending.saturating_sub(1);
        }
        let done = ChannelState::fully_acked(&ch.devices, entry);
        changes.push(Change::PutAck {
            channel: channel.clone(),
            seq,
            device: device.to_owned(),
        });
        if let Some(entry) = done.then(|| ch.remove(seq)).flatten() {
            changes.push(Change::DelEntry {
                channel: channel.clone(),
                seq,
                acked_by: entry.acked_by,
            });
        }
        Some((first, kind))
    }

    pub fn ack(&mut self, ack: &AckRequest, changes: &mut Vec<Change>) -> Acked {
        let key = device_key(&ack.device);
        let Some(ch) = self.channels.get(&ack.channel) else {
            return Acked::default();
        };
        let Some(seq) = ch.by_id.get(&ack.id).and_then(|seqs| {
            seqs.iter().copied().find(|seq| {
                ch.log
                    .get(seq)
                    .is_some_and(|e| e.expires_at > ack.now && !e.acked_by.iter().any(|d| d == key))
            })
        }) else {
            return Acked::default();
        };
        let Some((first, kind)) = self.ack_seq(&ack.channel, key, seq, changes) else {
            return Acked::default();
        };
        let mut acked = Acked {
            seq: Some(seq),
            receipt: None,
        };
        if let (
            true,
            EntryKind::Message {
                sender: Some(sender),
                ..
            },
        ) = (first, kind)
        {
            let ch = self.channels.entry(sender.clone()).or_default();
            let (rseq, entry) = ch.append(
                EntryKind::Receipt,
                ack.receipt.clone(),
                ack.receipt_expires_at,
            );
            changes.push(Change::PutEntry {
                channel: sender.clone(),
                seq: rseq,
                entry,
            });
            acked.receipt = Some((sender, rseq));
        }
        acked
    }

    pub fn ack_seqs(
        &mut self,
        channel: &Channel,
        device: &Device,
        seqs: &[Seq],
        changes: &mut Vec<Change>,
    ) {
        let key = device_key(device);
        for seq in seqs {
            self.ack_seq(channel, key, *seq, changes);
        }
    }

    pub fn touch_device(
        &mut self,
        channel: &Channel,
        device: &Device,
        now: Millis,
        changes: &mut Vec<Change>,
    ) {
        let ch = self.channels.entry(channel.clone()).or_default();
        let key = device_key(device).to_owned();
        ch.devices.insert(key.clone(), now);
        changes.push(Change::PutDevice {
            channel: channel.clone(),
            device: key,
            last_seen: now,
        });
    }

    pub fn pending_count(&self, channel: &Channel, now: Millis) -> u64 {
        self.channels.get(channel).map_or(0, |c| c.pending_at(now))
    }

    pub fn ack_state(&self, channel: &Channel, seq: Seq) -> AckState {
        match self.channels.get(channel).and_then(|c| c.log.get(&seq)) {
            None => AckState::Gone,
            Some(e) if e.acked_by.is_empty() => AckState::Pending,
            Some(_) => AckState::Acked,
        }
    }

    pub fn add_member(
        &mut self,
        group: &GroupId,
        member: &Channel,
        changes: &mut Vec<Change>,
    ) -> bool {
        let added = self
            .groups
            .entry(group.clone())
            .or_default()
            .insert(member.clone());
        if added {
            changes.push(Change::PutMember {
                group: group.clone(),
                member: member.clone(),
            });
        }
        added
    }

    pub fn remove_member(
        &mut self,
        group: &GroupId,
        member: &Channel,
        changes: &mut Vec<Change>,
    ) -> bool {
        let Some(members) = self.groups.get_mut(group) else {
            return false;
        };
        let removed = members.remove(member);
        if members.is_empty() {
            self.groups.remove(group);
        }
        if removed {
            changes.push(Change::DelMember {
                group: group.clone(),
                member: member.clone(),
            });
        }
        removed
    }

    pub fn members(&self, group: &GroupId) -> Vec<Channel> {
        self.groups
            .get(group)
            .map(|m| m.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Messages not acked by any device, over all channels (expired ones
    /// included until the next sweep).
    pub fn pending_total(&self) -> u64 {
        self.channels.values().map(|c| c.pending).sum()
    }

    pub fn expire(&mut self, now: Millis, changes: &mut Vec<Change>) -> u64 {
        let mut dropped = 0;
        for (channel, ch) in &mut self.channels {
            // TTL is one setting for all messages, so expired entries are
            // usually at the front of the log; receipts and restarts with a
            // new TTL can interleave, so check every entry.
            let expired: Vec<Seq> = ch
                .log
                .iter()
                .filter(|(_, e)| e.expires_at <= now)
                .map(|(s, _)| *s)
                .collect();
            for seq in expired {
                if let Some(entry) = ch.remove(seq) {
                    dropped += 1;
                    changes.push(Change::DelEntry {
                        channel: channel.clone(),
                        seq,
                        acked_by: entry.acked_by,
                    });
                }
            }
        }
        // Channels stay, even when empty: their `next_seq` must never go
        // back, or a reader holding a cursor would skip new entries.
        self.dedupe.retain(|(sender, id), until| {
            let keep = *until > now;
            if !keep {
                changes.push(Change::DelDedupe {
                    sender: sender.clone(),
                    id: id.clone(),
                });
            }
            keep
        });
        dropped
    }
}
