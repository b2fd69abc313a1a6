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
//! - `MemState::retained` is the sum of the payload lengths of every entry
//!   of every log (restored by summing them).

use std::collections::{BTreeMap, BTreeSet};

use foldhash::HashMap;

use bachata_proto::{Channel, GroupId, MessageId};
use bytes::Bytes;

use crate::store::{
    AckRequest, AckState, Acked, Device, Enqueued, Entry, EntryKind, Forgotten, Millis, NewMessage,
    Seq, Undelivered,
};

/// The key under which a device is stored: its name, or "" for the default
/// device (a named device is never empty).
pub fn device_key(device: &Device) -> &str {
    device.as_ref().map_or("", |d| d.as_str())
}

/// The key under which a sender's dedupe records are stored: its channel,
/// or "" for the system (a channel is never empty).
fn sender_key(sender: Option<&Channel>) -> &str {
    sender.map_or("", |c| c.as_str())
}

/// A dedupe record's key: two `u64` halves rather than a `u128`, which
/// aligns to 16 bytes and made each record 32 bytes instead of 24.
type DedupeKey = (u64, u64);

/// The dedupe records: a 128-bit keyed hash of (sender key, id) -> the
/// deadline of the dedupe window.
///
/// Records live for the whole window (24 h by default), so at a steady
/// message rate this is the biggest table of the state. A record here is
/// 24 bytes instead of two strings, and a lookup compares integers instead
/// of following two pointers per probe (a profile showed the string-keyed
/// table at 3% of the embedded server's CPU). The strings themselves are
/// persisted ([`Change::PutDedupe`]) and hashed again when the state is
/// restored. The hash is two SipHash-1-3 with keys drawn at random per
/// process: ids that differ collide with probability about 2^-128, and no
/// client can aim a collision at another sender's id.
#[derive(Debug, Default)]
struct DedupeIndex {
    records: HashMap<DedupeKey, Millis>,
    keys: [std::hash::RandomState; 2],
}

impl DedupeIndex {
    fn key(&self, sender: &str, id: &MessageId) -> DedupeKey {
        use std::hash::{BuildHasher, Hash, Hasher};
        let half = |state: &std::hash::RandomState| {
            let mut hasher = state.build_hasher();
            // `str`'s Hash ends each string with a marker, so ("ab", "c")
            // and ("a", "bc") differ.
            sender.hash(&mut hasher);
            id.as_str().hash(&mut hasher);
            hasher.finish()
        };
        (half(&self.keys[0]), half(&self.keys[1]))
    }

    fn is_live(&self, key: DedupeKey, now: Millis) -> bool {
        self.records.get(&key).is_some_and(|until| *until > now)
    }

    fn insert(&mut self, sender: &str, id: &MessageId, until: Millis) {
        let deadline = self.records.entry(self.key(sender, id)).or_insert(until);
        *deadline = (*deadline).max(until);
    }
}

/// One retained entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEntry {
    pub kind: EntryKind,
    pub payload: Bytes,
    pub expires_at: Millis,
    /// Device keys that acked this entry.
    pub acked_by: Vec<String>,
    /// When the undelivered webhook is due for this copy if no device acked
    /// it ([`NewMessage::notify_at`]); `None` when not asked for, or once
    /// the call was made ([`MemState::finish_undelivered`]). In memory a
    /// claim moves it to the claim's lease; on disk it keeps the first.
    pub notify_at: Option<Millis>,
}

/// Whether two device keys are the same. Keys are short (at most 64
/// bytes) and most are `""`, the default device: comparing in line skips
/// the `memcmp` call that `==` makes even for two empty strings (0.9% of
/// the memory store's CPU under load, in `acked_by_all`,
/// docs/performance.md).
fn same_key(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).all(|(x, y)| x == y)
}

#[derive(Debug)]
struct ChannelState {
    next_seq: Seq,
    log: BTreeMap<Seq, StoredEntry>,
    /// Known devices and when each was last seen. A channel has a handful,
    /// and every connection's channel has at least one: a `Vec` costs 32
    /// bytes per device where a `BTreeMap` node cost ~370 per channel.
    devices: Vec<(String, Millis)>,
    by_id: HashMap<MessageId, Vec<Seq>>,
    pending: u64,
}

impl Default for ChannelState {
    fn default() -> Self {
        ChannelState {
            next_seq: 1,
            log: BTreeMap::new(),
            devices: Vec::new(),
            by_id: HashMap::default(),
            pending: 0,
        }
    }
}

impl ChannelState {
    /// A device not known yet. The first gets room for itself alone: most
    /// channels never have a second, and a `Vec`'s first push makes room
    /// for four (96 bytes more in every idle connection's channel).
    fn add_device(&mut self, key: String, last_seen: Millis) {
        if self.devices.is_empty() {
            self.devices.reserve_exact(1);
        }
        self.devices.push((key, last_seen));
    }

    /// Appends an entry to `channel`'s log (this state) and reports it.
    fn append(
        &mut self,
        channel: &Channel,
        kind: EntryKind,
        payload: Bytes,
        expires_at: Millis,
        notify_at: Option<Millis>,
        changes: &mut impl ChangeSink,
    ) -> Seq {
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
            notify_at,
        };
        changes.record(|| Change::PutEntry {
            channel: channel.clone(),
            seq,
            entry: entry.clone(),
        });
        self.log.insert(seq, entry);
        seq
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
    fn fully_acked(devices: &[(String, Millis)], entry: &StoredEntry) -> bool {
        Self::acked_by_all(devices, entry, None)
    }

    /// Whether every known device acked `entry`, counting `also` as one
    /// that did (an ack being recorded).
    fn acked_by_all(devices: &[(String, Millis)], entry: &StoredEntry, also: Option<&str>) -> bool {
        !devices.is_empty()
            && devices.iter().all(|(d, _)| {
                also.is_some_and(|also| same_key(also, d))
                    || entry.acked_by.iter().any(|a| same_key(a, d))
            })
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
    /// A device forgotten (`--forget-after`).
    DelDevice {
        channel: Channel,
        device: String,
    },
    /// A channel forgotten: no device and no entry left. Its next seq goes
    /// too; a later entry starts it again at 1.
    DelChannel {
        channel: Channel,
    },
    /// A dedupe record (sender key "" for the system). There is no
    /// removal: a record expires by its deadline, and a persistent backend
    /// drops records by deadline (see [`MemState::expire`]).
    PutDedupe {
        sender: String,
        id: MessageId,
        until: Millis,
    },
    PutMember {
        group: GroupId,
        member: Channel,
    },
    /// The undelivered webhook's call for this entry was made: its
    /// `notify_at` is cleared, so it is never due again.
    Notified {
        channel: Channel,
        seq: Seq,
    },
    DelMember {
        group: GroupId,
        member: Channel,
    },
}

/// Where state operations report their [`Change`]s.
///
/// The embedded store persists every change and passes a `Vec<Change>`; the
/// memory store has nothing to persist and passes [`Discard`], so that the
/// changes (clones of keys, entries and device names) are never built.
pub trait ChangeSink {
    fn record(&mut self, change: impl FnOnce() -> Change);
}

impl ChangeSink for Vec<Change> {
    fn record(&mut self, change: impl FnOnce() -> Change) {
        self.push(change());
    }
}

/// A [`ChangeSink`] that builds nothing: for state that is never persisted.
#[derive(Debug, Clone, Copy, Default)]
pub struct Discard;

impl ChangeSink for Discard {
    fn record(&mut self, _change: impl FnOnce() -> Change) {}
}

/// The whole delivery state. See the module docs.
#[derive(Debug, Default)]
pub struct MemState {
    channels: HashMap<Channel, ChannelState>,
    dedupe: DedupeIndex,
    groups: HashMap<GroupId, BTreeSet<Channel>>,
    /// Payload bytes of every retained entry (see the module invariants).
    retained: u64,
    /// The undelivered webhook's due index: `(notify_at, channel, seq)` of
    /// every message entry with a `notify_at` that no device acked.
    undelivered: BTreeSet<(Millis, Channel, Seq)>,
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

    /// Each channel's next seq. A persistent backend that rebuilds its state
    /// from disk after a failed write keeps them ([`MemState::raise_next_seqs`]).
    pub fn next_seqs(&self) -> Vec<(Channel, Seq)> {
        self.channels
            .iter()
            .map(|(channel, ch)| (channel.clone(), ch.next_seq))
            .collect()
    }

    /// Raises each channel's next seq to at least the given one: after a
    /// rebuild from disk, the seqs that the state handed out before (and a
    /// reader may have seen, the state running ahead of the disk) are never
    /// handed out again to other entries. The gap is harmless: a reader
    /// told of a later seq reads the store from its cursor.
    pub fn raise_next_seqs(&mut self, seqs: Vec<(Channel, Seq)>) {
        for (channel, next_seq) in seqs {
            let ch = self.channels.entry(channel).or_default();
            ch.next_seq = ch.next_seq.max(next_seq);
        }
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
            if let (Some(at), true) = (entry.notify_at, entry.acked_by.is_empty()) {
                state.undelivered.insert((at, channel.clone(), seq));
            }
            let ch = state.channels.entry(channel).or_default();
            ch.next_seq = ch.next_seq.max(seq + 1);
            if let EntryKind::Message { id, .. } = &entry.kind {
                ch.by_id.entry(id.clone()).or_default().push(seq);
                if entry.acked_by.is_empty() {
                    ch.pending += 1;
                }
            }
            state.retained += entry.payload.len() as u64;
            ch.log.insert(seq, entry);
        }
        for ch in state.channels.values_mut() {
            for seqs in ch.by_id.values_mut() {
                seqs.sort_unstable();
            }
        }
        for (channel, device, last_seen) in snapshot.devices {
            let ch = state.channels.entry(channel).or_default();
            match ch.devices.iter_mut().find(|(d, _)| *d == device) {
                Some((_, seen)) => *seen = (*seen).max(last_seen),
                None => ch.add_device(device, last_seen),
            }
        }
        for (sender, id, until) in snapshot.dedupe {
            // Persisted under the sender key, "" for the system.
            state.dedupe.insert(&sender, &id, until);
        }
        for (group, member) in snapshot.members {
            state.groups.entry(group).or_default().insert(member);
        }
        state
    }

    /// Whether `(sender, id)` has a live dedupe record at `now`.
    pub fn is_duplicate(&self, sender: Option<&Channel>, id: &MessageId, now: Millis) -> bool {
        self.dedupe
            .is_live(self.dedupe.key(sender_key(sender), id), now)
    }

    pub fn enqueue(&mut self, msg: &NewMessage, changes: &mut impl ChangeSink) -> Enqueued {
        let sender = sender_key(msg.sender.as_ref());
        let dedupe_key = self.dedupe.key(sender, &msg.id);
        if self.dedupe.is_live(dedupe_key, msg.now) {
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
        let adding = (msg.payload.len() as u64).saturating_mul(msg.destinations.len() as u64);
        if self.retained.saturating_add(adding) > msg.retained_limit {
            return Enqueued::StoreFull;
        }
        self.retained += adding;
        let mut seqs = Vec::with_capacity(msg.destinations.len());
        for dest in &msg.destinations {
            let ch = self.channels.entry(dest.clone()).or_default();
            let kind = EntryKind::Message {
                sender: msg.sender.clone(),
                id: msg.id.clone(),
            };
            let seq = ch.append(
                dest,
                kind,
                msg.payload.clone(),
                msg.expires_at,
                msg.notify_at,
                changes,
            );
            if let Some(at) = msg.notify_at {
                self.undelivered.insert((at, dest.clone(), seq));
            }
            seqs.push((dest.clone(), seq));
        }
        changes.record(|| Change::PutDedupe {
            sender: sender.to_owned(),
            id: msg.id.clone(),
            until: msg.dedupe_until,
        });
        self.dedupe.records.insert(dedupe_key, msg.dedupe_until);
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
            .filter(|(_, e)| e.expires_at > now && !e.acked_by.iter().any(|d| same_key(d, key)))
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
        changes: &mut impl ChangeSink,
    ) -> Option<(bool, EntryKind)> {
        let ch = self.channels.get_mut(channel)?;
        let entry = ch.log.get_mut(&seq)?;
        if entry.acked_by.iter().any(|d| same_key(d, device)) {
            return None;
        }
        let first = entry.acked_by.is_empty();
        // Whether this ack completes the entry: then it is deleted at once,
        // and the device is not added to its `acked_by` (two allocations
        // per delivered copy that would be freed right away).
        let done = ChannelState::acked_by_all(&ch.devices, entry, Some(device));
        if !done {
            entry.acked_by.push(device.to_owned());
        }
        let kind = entry.kind.clone();
        if first && matches!(kind, EntryKind::Message { .. }) {
            if !done {
                // When done, `remove` below counts it (`acked_by` is empty).
                ch.pending = ch.pending.saturating_sub(1);
            }
            if let Some(at) = entry.notify_at {
                self.undelivered.remove(&(at, channel.clone(), seq));
            }
        }
        match done.then(|| ch.remove(seq)).flatten() {
            // The last ack deletes the entry: its `DelEntry` removes every
            // ack with it, so the ack itself is not recorded (one change
            // less to log and fold per delivered copy).
            Some(entry) => {
                self.retained = self.retained.saturating_sub(entry.payload.len() as u64);
                changes.record(|| Change::DelEntry {
                    channel: channel.clone(),
                    seq,
                    acked_by: entry.acked_by,
                });
            }
            None => changes.record(|| Change::PutAck {
                channel: channel.clone(),
                seq,
                device: device.to_owned(),
            }),
        }
        Some((first, kind))
    }

    pub fn ack(&mut self, ack: &AckRequest, changes: &mut impl ChangeSink) -> Acked {
        let key = device_key(&ack.device);
        let Some(ch) = self.channels.get(&ack.channel) else {
            return Acked::default();
        };
        let Some(seq) = ch.by_id.get(&ack.id).and_then(|seqs| {
            seqs.iter().copied().find(|seq| {
                ch.log.get(seq).is_some_and(|e| {
                    e.expires_at > ack.now && !e.acked_by.iter().any(|d| same_key(d, key))
                })
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
            self.retained += ack.receipt.len() as u64;
            let rseq = ch.append(
                &sender,
                EntryKind::Receipt,
                ack.receipt.clone(),
                ack.receipt_expires_at,
                None,
                changes,
            );
            acked.receipt = Some((sender, rseq));
        }
        acked
    }

    pub fn ack_seqs(
        &mut self,
        channel: &Channel,
        device: &Device,
        seqs: &[Seq],
        changes: &mut impl ChangeSink,
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
        changes: &mut impl ChangeSink,
    ) {
        let ch = self.channels.entry(channel.clone()).or_default();
        let key = device_key(device);
        match ch.devices.iter_mut().find(|(d, _)| d == key) {
            Some((_, last_seen)) => *last_seen = now,
            None => ch.add_device(key.to_owned(), now),
        }
        changes.record(|| Change::PutDevice {
            channel: channel.clone(),
            device: key.to_owned(),
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
        changes: &mut impl ChangeSink,
    ) -> bool {
        let added = self
            .groups
            .entry(group.clone())
            .or_default()
            .insert(member.clone());
        if added {
            changes.record(|| Change::PutMember {
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
        changes: &mut impl ChangeSink,
    ) -> bool {
        let Some(members) = self.groups.get_mut(group) else {
            return false;
        };
        let removed = members.remove(member);
        if members.is_empty() {
            self.groups.remove(group);
        }
        if removed {
            changes.record(|| Change::DelMember {
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

    pub fn expire(&mut self, now: Millis, changes: &mut impl ChangeSink) -> u64 {
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
                    unindex(&mut self.undelivered, channel, seq, &entry);
                    self.retained = self.retained.saturating_sub(entry.payload.len() as u64);
                    changes.record(|| Change::DelEntry {
                        channel: channel.clone(),
                        seq,
                        acked_by: entry.acked_by,
                    });
                }
            }
        }
        // Channels stay, even when empty: their `next_seq` must not go back
        // while a reader may hold a cursor; `forget` removes them once no
        // device of theirs was seen for long.
        // Dedupe records need no change: a persistent backend expires
        // them by their deadline.
        self.dedupe.records.retain(|_, until| *until > now);
        shrink(&mut self.dedupe.records);
        dropped
    }

    /// See [`Store::take_undelivered`](crate::Store::take_undelivered).
    /// The claim lives in memory only: after a restart every copy not
    /// finished is due again at its first `notify_at`.
    pub fn take_undelivered(
        &mut self,
        now: Millis,
        lease_until: Millis,
        limit: usize,
    ) -> Vec<Undelivered> {
        let mut taken = Vec::new();
        while taken.len() < limit {
            let Some((at, channel, seq)) = self.undelivered.first().cloned() else {
                break;
            };
            if at > now {
                break;
            }
            self.undelivered.pop_first();
            let Some(entry) = self
                .channels
                .get_mut(&channel)
                .and_then(|ch| ch.log.get_mut(&seq))
            else {
                continue;
            };
            let EntryKind::Message { sender, id } = &entry.kind else {
                continue;
            };
            if !entry.acked_by.is_empty() || entry.expires_at <= now {
                // Acked (already unindexed) or expired: nobody is told; the
                // sweep removes the entry.
                entry.notify_at = None;
                continue;
            }
            entry.notify_at = Some(lease_until);
            taken.push(Undelivered {
                channel: channel.clone(),
                seq,
                sender: sender.clone(),
                id: id.clone(),
                payload: entry.payload.clone(),
            });
        }
        for copy in &taken {
            self.undelivered
                .insert((lease_until, copy.channel.clone(), copy.seq));
        }
        taken
    }

    /// See [`Store::finish_undelivered`](crate::Store::finish_undelivered).
    pub fn finish_undelivered(&mut self, done: &[(Channel, Seq)], changes: &mut impl ChangeSink) {
        for (channel, seq) in done {
            let Some(entry) = self
                .channels
                .get_mut(channel)
                .and_then(|ch| ch.log.get_mut(seq))
            else {
                continue;
            };
            let Some(at) = entry.notify_at.take() else {
                continue;
            };
            self.undelivered.remove(&(at, channel.clone(), *seq));
            changes.record(|| Change::Notified {
                channel: channel.clone(),
                seq: *seq,
            });
        }
    }

    /// Payload bytes of every retained entry.
    pub fn retained_bytes(&self) -> u64 {
        self.retained
    }

    /// Channels with any state (entries, devices or a seq counter).
    pub fn channel_count(&self) -> u64 {
        self.channels.len() as u64
    }

    /// Forgets the devices last seen at or before `seen_before`, the
    /// entries that only they still needed, and then the channels left with
    /// no device and no entry (see `Store::forget`).
    pub fn forget(&mut self, seen_before: Millis, changes: &mut impl ChangeSink) -> Forgotten {
        let mut forgotten = Forgotten::default();
        let mut gone = Vec::new();
        for (channel, ch) in &mut self.channels {
            let known = ch.devices.len();
            ch.devices.retain(|(device, last_seen)| {
                let stale = *last_seen <= seen_before;
                if stale {
                    changes.record(|| Change::DelDevice {
                        channel: channel.clone(),
                        device: device.clone(),
                    });
                }
                !stale
            });
            let dropped = known - ch.devices.len();
            forgotten.devices += dropped as u64;
            if dropped > 0 && !ch.devices.is_empty() {
                // Entries that only the forgotten devices had left to ack.
                let done: Vec<Seq> = ch
                    .log
                    .iter()
                    .filter(|(_, e)| ChannelState::fully_acked(&ch.devices, e))
                    .map(|(seq, _)| *seq)
                    .collect();
                for seq in done {
                    if let Some(entry) = ch.remove(seq) {
                        unindex(&mut self.undelivered, channel, seq, &entry);
                        self.retained = self.retained.saturating_sub(entry.payload.len() as u64);
                        changes.record(|| Change::DelEntry {
                            channel: channel.clone(),
                            seq,
                            acked_by: entry.acked_by,
                        });
                    }
                }
            }
            if ch.devices.is_empty() && ch.log.is_empty() {
                gone.push(channel.clone());
            }
        }
        for channel in gone {
            self.channels.remove(&channel);
            forgotten.channels += 1;
            changes.record(|| Change::DelChannel { channel });
        }
        shrink(&mut self.channels);
        forgotten
    }
}

/// Drops a removed entry from the undelivered webhook's due index.
fn unindex(
    undelivered: &mut BTreeSet<(Millis, Channel, Seq)>,
    channel: &Channel,
    seq: Seq,
    entry: &StoredEntry,
) {
    if let (Some(at), true) = (entry.notify_at, entry.acked_by.is_empty()) {
        undelivered.remove(&(at, channel.clone(), seq));
    }
}

/// Gives memory back after a table shrank to under a quarter of its room: a
/// hash table keeps its largest size otherwise, so a burst of names (say,
/// connections under ever new channel names) would stay resident after
/// they were forgotten.
fn shrink<K: std::hash::Hash + Eq, V>(map: &mut HashMap<K, V>) {
    if map.capacity() > 64 && map.len() < map.capacity() / 4 {
        map.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(text: &str) -> MessageId {
        MessageId::new(text).expect("valid id")
    }

    #[test]
    fn device_keys_compare_as_strings() {
        for (a, b) in [("", ""), ("phone", "phone"), ("é", "é")] {
            assert!(same_key(a, b), "{a:?} {b:?}");
        }
        for (a, b) in [
            ("", "x"),
            ("phone", "phonf"),
            ("phone", "phon"),
            ("ab", "ba"),
        ] {
            assert!(!same_key(a, b), "{a:?} {b:?}");
            assert!(!same_key(b, a), "{b:?} {a:?}");
        }
    }

    #[test]
    fn dedupe_keys_keep_sender_and_id_apart() {
        let mut index = DedupeIndex::default();
        index.insert("ab", &id("c"), 100);
        assert!(index.is_live(index.key("ab", &id("c")), 99));
        assert!(!index.is_live(index.key("ab", &id("c")), 100), "deadline");
        assert!(!index.is_live(index.key("a", &id("bc")), 0), "other split");
        assert!(!index.is_live(index.key("", &id("abc")), 0), "the system");
        // A record restored twice keeps the later deadline.
        index.insert("ab", &id("c"), 50);
        assert!(index.is_live(index.key("ab", &id("c")), 99));
    }

    fn channel(name: &str) -> Channel {
        Channel::new(name).expect("valid channel")
    }

    #[test]
    fn forgetting_takes_stale_devices_their_entries_and_empty_channels() {
        let mut state = MemState::new();
        let (bob, phone, laptop) = (
            channel("bob"),
            Some(bachata_proto::DeviceId::new("phone").expect("device")),
            Some(bachata_proto::DeviceId::new("laptop").expect("device")),
        );
        state.touch_device(&bob, &phone, 10, &mut Discard);
        state.touch_device(&bob, &laptop, 100, &mut Discard);
        state.touch_device(&channel("idle"), &None, 10, &mut Discard);
        let message = NewMessage {
            sender: None,
            id: id("m1"),
            destinations: vec![bob.clone()],
            payload: Bytes::from_static(b"0123456789"),
            now: 100,
            expires_at: 1_000,
            dedupe_until: 0,
            queue_limit: 10,
            retained_limit: u64::MAX,
            forget_after: 50,
            notify_at: None,
        };
        assert!(matches!(
            state.enqueue(&message, &mut Discard),
            Enqueued::Stored(_)
        ));
        let ack = AckRequest {
            channel: bob.clone(),
            device: laptop.clone(),
            id: id("m1"),
            now: 100,
            receipt: Bytes::new(),
            receipt_expires_at: 1_000,
            forget_after: 50,
        };
        state.ack(&ack, &mut Discard);
        assert_eq!(state.retained_bytes(), 10, "kept for the phone");
        let mut changes = Vec::new();
        let forgotten = state.forget(50, &mut changes);
        assert_eq!((forgotten.channels, forgotten.devices), (1, 2));
        assert_eq!(state.retained_bytes(), 0, "only the phone needed m1");
        assert_eq!(state.channel_count(), 1, "bob stays: the laptop is recent");
        assert!(changes.contains(&Change::DelChannel {
            channel: channel("idle")
        }));
        assert!(changes.contains(&Change::DelDevice {
            channel: bob.clone(),
            device: "phone".into()
        }));
        assert!(
            changes
                .iter()
                .any(|c| matches!(c, Change::DelEntry { seq: 1, .. }))
        );
        // The laptop goes too; bob's seqs start over when he comes back.
        assert_eq!(state.forget(200, &mut Discard).channels, 1);
        let back = NewMessage {
            id: id("m2"),
            ..message
        };
        assert_eq!(
            state.enqueue(&back, &mut Discard),
            Enqueued::Stored(vec![(bob, 1)])
        );
    }

    #[test]
    fn the_completing_ack_deletes_without_a_change_of_its_own_and_counts_once() {
        let mut state = MemState::new();
        let bob = channel("bob");
        let device = |name: &str| Some(bachata_proto::DeviceId::new(name).expect("device"));
        let message = |text: &str| NewMessage {
            sender: None,
            id: id(text),
            destinations: vec![bob.clone()],
            payload: Bytes::from_static(b"{}"),
            now: 1,
            expires_at: 1_000,
            dedupe_until: 0,
            queue_limit: 2,
            retained_limit: u64::MAX,
            forget_after: 1_000,
            notify_at: None,
        };
        let ack = |by: &Device, text: &str| AckRequest {
            channel: bob.clone(),
            device: by.clone(),
            id: id(text),
            now: 2,
            receipt: Bytes::new(),
            receipt_expires_at: 1_000,
            forget_after: 1_000,
        };
        let stored = |e: Enqueued| matches!(e, Enqueued::Stored(_));
        let (phone, laptop) = (device("phone"), device("laptop"));
        state.touch_device(&bob, &phone, 1, &mut Discard);
        assert!(stored(state.enqueue(&message("m1"), &mut Discard)));
        assert!(stored(state.enqueue(&message("m2"), &mut Discard)));
        assert_eq!(
            state.enqueue(&message("m3"), &mut Discard),
            Enqueued::QueueFull(bob.clone())
        );
        // One device: its ack deletes m1, recorded as the deletion alone.
        let mut changes = Vec::new();
        assert!(state.ack(&ack(&phone, "m1"), &mut changes).seq.is_some());
        assert!(
            matches!(changes.as_slice(), [Change::DelEntry { seq: 1, acked_by, .. }] if acked_by.is_empty()),
            "{changes:?}"
        );
        // Room for exactly one more: the pending count fell by one, not two.
        assert!(stored(state.enqueue(&message("m3"), &mut Discard)));
        assert_eq!(
            state.enqueue(&message("m4"), &mut Discard),
            Enqueued::QueueFull(bob.clone())
        );
        // Two devices: the first ack is recorded and frees the room, the
        // second deletes and frees nothing more.
        state.touch_device(&bob, &laptop, 3, &mut Discard);
        let mut changes = Vec::new();
        state.ack(&ack(&phone, "m2"), &mut changes);
        assert!(
            matches!(changes.as_slice(), [Change::PutAck { seq: 2, .. }]),
            "{changes:?}"
        );
        let mut changes = Vec::new();
        state.ack(&ack(&laptop, "m2"), &mut changes);
        assert!(
            matches!(changes.as_slice(), [Change::DelEntry { seq: 2, acked_by, .. }] if acked_by == &["phone".to_owned()]),
            "{changes:?}"
        );
        assert!(stored(state.enqueue(&message("m4"), &mut Discard)));
        assert_eq!(
            state.enqueue(&message("m5"), &mut Discard),
            Enqueued::QueueFull(bob.clone())
        );
    }

    #[test]
    fn a_dedupe_record_is_24_bytes() {
        // docs/performance.md sizes the dedupe window's memory with this.
        // (A hash table stores a record as the pair of its key and value.)
        assert_eq!(std::mem::size_of::<(DedupeKey, Millis)>(), 24);
    }

    #[test]
    fn dedupe_keys_differ_between_processes() {
        // Random keys per state: a collision found against one process
        // tells nothing about another.
        let (a, b) = (DedupeIndex::default(), DedupeIndex::default());
        assert_ne!(a.key("alice", &id("m1")), b.key("alice", &id("m1")));
    }
}
