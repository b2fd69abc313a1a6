//! The write-ahead log in front of the tables, and the checkpoint that
//! folds it into them.
//!
//! # Why
//! A group commit used to write each [`Change`] into its table: an entry
//! insert here, an ack there, a dedupe record, a channel's next seq. With
//! many channels those land on many B-tree leaves, and redb copies each
//! touched page on write: a commit of 100 entries on 100 channels took
//! ~5.8 ms on the benchmark machine against ~0.4 ms for a commit of one
//! row (docs/performance.md). Most of that work was undone a few
//! milliseconds later: a message is delivered, acked and deleted, and its
//! 300 is written and deleted, well within a second.
//!
//! # How
//! Each group commit now appends **one** record to the log: the batch's
//! changes, encoded ([`codec::encode_changes`]), checksummed and synced
//! before anyone is answered, so durability is unchanged. The log is a
//! plain file (see [`crate::logfile`] for why it is not a redb table, its
//! format and its generations). The writer also folds every committed change
//! into an [`Overlay`] in memory: per key, the last write wins, and an entry
//! that was created and deleted since the last checkpoint (with its acks)
//! disappears altogether.
//!
//! Every [`CHECKPOINT_EVERY`] (or sooner when the log grows past
//! [`CHECKPOINT_BYTES`]), the writer starts a new log file and one redb
//! transaction writes what is left in the overlay to the tables, with the
//! generation of that new file (`meta` table); the older files are then
//! deleted. A crash between checkpoints loses nothing: on open, [`recover`]
//! folds the records of the files the tables do not cover into an overlay
//! the same way and checkpoints it before the tables are read.

use foldhash::{HashMap, HashSet};
use std::path::Path;
use std::time::Duration;

use bachata_core::memstate::{Change, StoredEntry};
use bachata_core::{Millis, Seq};
use bachata_proto::{Channel, GroupId, MessageId};
use redb::{Database, ReadableDatabase, ReadableTable};

use crate::tables::{
    ACKS, CHANNELS, DEDUPE_SEGMENTS, DEVICES, ENTRIES, LOG_GENERATION, MEMBERS, META,
};
use crate::{codec, logfile};

/// Longest time between checkpoints while commits happen.
pub(crate) const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);
/// Log bytes after which a checkpoint comes early.
pub(crate) const CHECKPOINT_BYTES: usize = 64 * 1024 * 1024;

/// An entry's fate since the last checkpoint.
enum EntryOp {
    /// Created since the last checkpoint (seqs are never reused, so the
    /// table does not have it). Its acks since then are in its `acked_by`,
    /// not in [`Overlay::acks`]: one map operation per ack instead of two
    /// with a string key, and nothing to undo when it is deleted.
    Put(StoredEntry),
    /// Deleted; the table has it.
    Del,
}

/// A channel's next seq since the last checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NextSeq {
    /// At least this: the table keeps its value when higher.
    Raise(Seq),
    /// Exactly this, or no row: the channel was forgotten since (and maybe
    /// started again), so the table's value no longer counts.
    Set(Option<Seq>),
}

/// The folded effect of the changes since the last checkpoint. See the
/// module docs.
#[derive(Default)]
pub(crate) struct Overlay {
    entries: HashMap<(Channel, Seq), EntryOp>,
    /// Acks of entries older than the last checkpoint. `true`: put;
    /// `false`: delete.
    acks: HashMap<(Channel, Seq, String), bool>,
    /// A device's last seen time; `None`: forgotten.
    devices: HashMap<(Channel, String), Option<Millis>>,
    /// Dedupe records created since the last checkpoint: the next segment.
    dedupe: Vec<(String, MessageId, Millis)>,
    /// The latest `now` of an expiry sweep: segments whose every deadline is
    /// at or before it are removed. The store's clock is its callers' (the
    /// `now` of each request), never the wall clock.
    pub expired_at: Millis,
    members: HashMap<(GroupId, Channel), bool>,
    next_seqs: HashMap<Channel, NextSeq>,
    /// Entries older than the last checkpoint whose undelivered webhook
    /// call was made: the checkpoint clears their `notify_at` in the table.
    notified: HashSet<(Channel, Seq)>,
    /// Bytes of log written since the last checkpoint.
    pub log_bytes: usize,
}

impl Overlay {
    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
            && self.acks.is_empty()
            && self.devices.is_empty()
            && self.dedupe.is_empty()
            && self.members.is_empty()
            && self.next_seqs.is_empty()
            && self.notified.is_empty()
    }

    /// Empties the overlay after a checkpoint, keeping the maps' memory:
    /// under a steady load the next second needs as much, and growing the
    /// maps from nothing each second rehashed every entry several times
    /// (allocation was 6% of the embedded store's CPU, docs/performance.md).
    /// A map that held less than a quarter of its room gives the rest back,
    /// so a burst does not keep its peak forever.
    pub(crate) fn reset(&mut self) {
        // Maps and sets alike (no common trait has `shrink_to`).
        macro_rules! empty {
            ($($table:expr),*) => {$(
                let used = $table.len();
                $table.clear();
                if used < $table.capacity() / 4 {
                    $table.shrink_to(used);
                }
            )*};
        }
        let Overlay {
            entries,
            acks,
            devices,
            dedupe,
            expired_at,
            members,
            next_seqs,
            notified,
            log_bytes,
        } = self;
        empty!(entries, acks, devices, members, next_seqs, notified);
        dedupe.clear();
        *expired_at = 0;
        *log_bytes = 0;
    }

    /// Folds one committed change in.
    pub(crate) fn fold(&mut self, change: Change) {
        match change {
            Change::PutEntry {
                channel,
                seq,
                entry,
            } => {
                let next = self
                    .next_seqs
                    .entry(channel.clone())
                    .or_insert(NextSeq::Raise(0));
                *next = match *next {
                    NextSeq::Raise(n) => NextSeq::Raise(n.max(seq + 1)),
                    NextSeq::Set(n) => NextSeq::Set(Some(n.unwrap_or(0).max(seq + 1))),
                };
                self.entries.insert((channel, seq), EntryOp::Put(entry));
            }
            Change::DelEntry {
                channel,
                seq,
                acked_by,
            } => {
                let key = (channel, seq);
                if let Some(EntryOp::Put(_)) = self.entries.remove(&key) {
                    // Born and gone since the last checkpoint: neither it
                    // nor its acks (kept inside it) are in the tables.
                } else {
                    let (channel, seq) = key;
                    for device in acked_by {
                        self.acks.insert((channel.clone(), seq, device), false);
                    }
                    self.entries.insert((channel, seq), EntryOp::Del);
                }
            }
            Change::PutAck {
                channel,
                seq,
                device,
            } => {
                let key = (channel, seq);
                match self.entries.get_mut(&key) {
                    Some(EntryOp::Put(entry)) => {
                        if !entry.acked_by.contains(&device) {
                            entry.acked_by.push(device);
                        }
                    }
                    _ => {
                        self.acks.insert((key.0, key.1, device), true);
                    }
                }
            }
            Change::PutDevice {
                channel,
                device,
                last_seen,
            } => {
                self.devices.insert((channel, device), Some(last_seen));
            }
            Change::DelDevice { channel, device } => {
                self.devices.insert((channel, device), None);
            }
            Change::DelChannel { channel } => {
                // Its entries and devices went before (a channel is
                // forgotten only when it has neither).
                self.next_seqs.insert(channel, NextSeq::Set(None));
            }
            Change::PutDedupe { sender, id, until } => {
                self.dedupe.push((sender, id, until));
            }
            Change::PutMember { group, member } => {
                self.members.insert((group, member), true);
            }
            Change::DelMember { group, member } => {
                self.members.insert((group, member), false);
            }
            Change::Notified { channel, seq } => {
                let key = (channel, seq);
                match self.entries.get_mut(&key) {
                    Some(EntryOp::Put(entry)) => entry.notify_at = None,
                    Some(EntryOp::Del) => {}
                    None => {
                        self.notified.insert(key);
                    }
                }
            }
        }
    }

    /// Writes the overlay to the tables and records that they now cover
    /// every log file before `next_generation`, in one transaction. The
    /// overlay is left as it was; clear it on success.
    pub(crate) fn checkpoint(
        &self,
        db: &Database,
        next_generation: u64,
    ) -> Result<(), redb::Error> {
        let txn = db.begin_write()?;
        {
            txn.open_table(META)?
                .insert(LOG_GENERATION, next_generation)?;
            // In key order, so consecutive B-tree writes share pages.
            let mut entries = txn.open_table(ENTRIES)?;
            let mut acks = txn.open_table(ACKS)?;
            for ((channel, seq), op) in sorted(&self.entries) {
                match op {
                    EntryOp::Put(entry) => {
                        entries
                            .insert((channel.as_str(), *seq), codec::encode(entry).as_slice())?;
                        for device in &entry.acked_by {
                            acks.insert((channel.as_str(), *seq, device.as_str()), ())?;
                        }
                    }
                    EntryOp::Del => {
                        entries.remove((channel.as_str(), *seq))?;
                    }
                }
            }
            for (channel, seq) in &self.notified {
                if self.entries.contains_key(&(channel.clone(), *seq)) {
                    continue; // deleted since: nothing to rewrite
                }
                let key = (channel.as_str(), *seq);
                let stored = entries.get(key)?.map(|v| codec::decode(v.value()));
                // An entry that does not decode is left for recovery to
                // report; clearing a due time never needs it.
                if let Some(Ok(mut entry)) = stored {
                    entry.notify_at = None;
                    entries.insert(key, codec::encode(&entry).as_slice())?;
                }
            }
            for ((channel, seq, device), put) in sorted(&self.acks) {
                let key = (channel.as_str(), *seq, device.as_str());
                if *put {
                    acks.insert(key, ())?;
                } else {
                    acks.remove(key)?;
                }
            }
            let mut devices = txn.open_table(DEVICES)?;
            for ((channel, device), last_seen) in &self.devices {
                let key = (channel.as_str(), device.as_str());
                match last_seen {
                    Some(last_seen) => devices.insert(key, *last_seen)?,
                    None => devices.remove(key)?,
                };
            }
            let mut segments = txn.open_table(DEDUPE_SEGMENTS)?;
            if let Some(latest) = self.dedupe.iter().map(|(_, _, until)| *until).max() {
                let mut n = 0;
                while segments.get((latest, n))?.is_some() {
                    n += 1;
                }
                segments.insert((latest, n), codec::encode_dedupe(&self.dedupe).as_slice())?;
            }
            // Segments whose every record is past its deadline.
            segments.retain_in((0, 0)..=(self.expired_at, u64::MAX), |_, _| false)?;
            let mut members = txn.open_table(MEMBERS)?;
            for ((group, member), put) in &self.members {
                let key = (group.as_str(), member.as_str());
                if *put {
                    members.insert(key, ())?;
                } else {
                    members.remove(key)?;
                }
            }
            let mut channels = txn.open_table(CHANNELS)?;
            for (channel, next) in &self.next_seqs {
                match *next {
                    NextSeq::Raise(next) => {
                        let stored = channels.get(channel.as_str())?.map(|v| v.value());
                        channels.insert(channel.as_str(), stored.unwrap_or(0).max(next))?;
                    }
                    NextSeq::Set(Some(next)) => {
                        channels.insert(channel.as_str(), next)?;
                    }
                    NextSeq::Set(None) => {
                        channels.remove(channel.as_str())?;
                    }
                }
            }
        }
        txn.commit()?;
        Ok(())
    }
}

fn sorted<K: Ord, V>(map: &HashMap<K, V>) -> Vec<(&K, &V)> {
    let mut items: Vec<(&K, &V)> = map.iter().collect();
    items.sort_unstable_by(|a, b| a.0.cmp(b.0));
    items
}

/// Folds the log left by a crash (or by a checkpoint that failed) into the
/// tables, and deletes the log files they then cover. Call before reading
/// the tables. Returns the generation of the next log file to write.
pub(crate) fn recover(db: &Database, dir: &Path) -> Result<u64, RecoverError> {
    let mut overlay = Overlay::default();
    let covered = {
        let txn = db.begin_read()?;
        txn.open_table(META)?
            .get(LOG_GENERATION)?
            .map_or(0, |v| v.value())
    };
    let generations = logfile::generations(dir).map_err(RecoverError::Io)?;
    let mut next = covered;
    for generation in generations.iter().copied().filter(|g| *g >= covered) {
        let path = logfile::path(dir, generation);
        logfile::read(&path, |record| {
            codec::decode_changes(record, |change| overlay.fold(change))
        })
        .map_err(|reason| RecoverError::Corrupt {
            log: path.display().to_string(),
            reason,
        })?;
        next = generation + 1;
    }
    if !overlay.is_empty() || next != covered {
        overlay.checkpoint(db, next)?;
    }
    remove_covered(dir, next);
    Ok(next)
}

/// Deletes the log files before `next` (the tables cover them). A file
/// that cannot be deleted now is ignored by recovery and tried again at the
/// next checkpoint.
pub(crate) fn remove_covered(dir: &Path, next: u64) {
    let Ok(generations) = logfile::generations(dir) else {
        return;
    };
    for generation in generations.into_iter().filter(|g| *g < next) {
        let path = logfile::path(dir, generation);
        if let Err(e) = std::fs::remove_file(&path) {
            tracing::warn!(path = %path.display(), error = %e, "cannot delete a checkpointed log file");
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum RecoverError {
    #[error(transparent)]
    Redb(#[from] redb::Error),
    #[error("{log} is corrupt: {reason}")]
    Corrupt { log: String, reason: String },
    #[error("cannot list the log files: {0}")]
    Io(std::io::Error),
}

crate::tables::from_redb_errors!(RecoverError);

#[cfg(test)]
mod tests {
    use super::*;
    use bachata_core::EntryKind;
    use bytes::Bytes;

    fn channel(name: &str) -> Channel {
        Channel::new(name).expect("valid")
    }

    fn entry() -> StoredEntry {
        StoredEntry {
            kind: EntryKind::Receipt,
            payload: Bytes::from_static(b"{}"),
            expires_at: 9,
            acked_by: Vec::new(),
            notify_at: None,
        }
    }

    #[test]
    fn reset_empties_everything_and_keeps_the_room_in_use() {
        let mut overlay = Overlay::default();
        for seq in 0..1000 {
            overlay.fold(Change::PutEntry {
                channel: channel("a"),
                seq,
                entry: entry(),
            });
        }
        overlay.fold(Change::PutDevice {
            channel: channel("a"),
            device: "d".into(),
            last_seen: 1,
        });
        overlay.fold(Change::PutDedupe {
            sender: "a".into(),
            id: MessageId::new("m").expect("valid"),
            until: 5,
        });
        overlay.expired_at = 7;
        overlay.log_bytes = 99;
        let room = overlay.entries.capacity();
        overlay.reset();
        assert!(overlay.is_empty());
        assert_eq!((overlay.expired_at, overlay.log_bytes), (0, 0));
        assert_eq!(
            overlay.entries.capacity(),
            room,
            "a full map keeps its room"
        );
        // A second that used little gives the room back.
        overlay.fold(Change::PutEntry {
            channel: channel("a"),
            seq: 1,
            entry: entry(),
        });
        overlay.reset();
        assert!(overlay.entries.capacity() < room / 4);
    }

    #[test]
    fn an_entry_born_and_gone_between_checkpoints_leaves_only_its_seq() {
        let mut overlay = Overlay::default();
        overlay.fold(Change::PutEntry {
            channel: channel("bob"),
            seq: 4,
            entry: entry(),
        });
        overlay.fold(Change::PutAck {
            channel: channel("bob"),
            seq: 4,
            device: "phone".into(),
        });
        overlay.fold(Change::DelEntry {
            channel: channel("bob"),
            seq: 4,
            acked_by: vec!["phone".into()],
        });
        assert!(overlay.entries.is_empty());
        assert!(overlay.acks.is_empty());
        // The seq stays used.
        assert_eq!(
            overlay.next_seqs.get(&channel("bob")),
            Some(&NextSeq::Raise(5))
        );
    }

    #[test]
    fn an_older_entry_is_deleted_with_its_acks() {
        let mut overlay = Overlay::default();
        overlay.fold(Change::PutAck {
            channel: channel("bob"),
            seq: 2,
            device: "phone".into(),
        });
        overlay.fold(Change::DelEntry {
            channel: channel("bob"),
            seq: 2,
            acked_by: vec!["phone".into(), "laptop".into()],
        });
        assert!(matches!(
            overlay.entries.get(&(channel("bob"), 2)),
            Some(EntryOp::Del)
        ));
        assert_eq!(overlay.acks.len(), 2);
        assert!(overlay.acks.values().all(|put| !put));
    }

    #[test]
    fn checkpoint_writes_the_folded_state_and_empties_the_log() {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = open_with_tables(dir.path());
        let changes = vec![
            Change::PutEntry {
                channel: channel("bob"),
                seq: 1,
                entry: entry(),
            },
            Change::PutEntry {
                channel: channel("bob"),
                seq: 2,
                entry: entry(),
            },
            Change::DelEntry {
                channel: channel("bob"),
                seq: 1,
                acked_by: Vec::new(),
            },
            // Acks of an entry born since the last checkpoint travel in it.
            Change::PutAck {
                channel: channel("bob"),
                seq: 2,
                device: "phone".into(),
            },
        ];
        let mut encoded = Vec::new();
        codec::encode_changes(&changes, &mut encoded);
        // Two records in the file of generation 0.
        let (older, newer) = changes.split_at(2);
        let mut file = logfile::LogFile::create(dir.path(), 0).expect("log");
        for part in [older, newer] {
            encoded.clear();
            codec::encode_changes(part, &mut encoded);
            file.append(&encoded).expect("append");
        }
        drop(file);
        assert_eq!(recover(&db, dir.path()).expect("recover"), 1);
        assert!(
            logfile::generations(dir.path()).expect("list").is_empty(),
            "the checkpointed file is deleted"
        );
        let txn = db.begin_read().expect("read");
        assert_eq!(
            txn.open_table(META)
                .expect("meta")
                .get(LOG_GENERATION)
                .expect("get")
                .map(|v| v.value()),
            Some(1)
        );
        let entries = txn.open_table(ENTRIES).expect("entries");
        assert!(entries.get(("bob", 1)).expect("get").is_none());
        assert!(entries.get(("bob", 2)).expect("get").is_some());
        let acks = txn.open_table(ACKS).expect("acks");
        assert!(acks.get(("bob", 2, "phone")).expect("get").is_some());
        let channels = txn.open_table(CHANNELS).expect("channels");
        assert_eq!(
            channels.get("bob").expect("get").map(|v| v.value()),
            Some(3)
        );
    }

    #[test]
    fn files_the_tables_cover_are_ignored_and_deleted() {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = open_with_tables(dir.path());
        // A checkpoint covered generations 0..5, and a crash came before
        // file 3 was deleted; file 5 is the one written since.
        Overlay::default().checkpoint(&db, 5).expect("checkpoint");
        for (generation, seq) in [(3, 1), (5, 2)] {
            let mut encoded = Vec::new();
            codec::encode_changes(
                &[Change::PutEntry {
                    channel: channel("bob"),
                    seq,
                    entry: entry(),
                }],
                &mut encoded,
            );
            let mut file = logfile::LogFile::create(dir.path(), generation).expect("log");
            file.append(&encoded).expect("append");
        }
        assert_eq!(recover(&db, dir.path()).expect("recover"), 6);
        assert!(logfile::generations(dir.path()).expect("list").is_empty());
        let txn = db.begin_read().expect("read");
        let entries = txn.open_table(ENTRIES).expect("entries");
        assert!(entries.get(("bob", 1)).expect("get").is_none(), "covered");
        assert!(entries.get(("bob", 2)).expect("get").is_some(), "replayed");
    }

    fn open_with_tables(dir: &std::path::Path) -> Database {
        let db = Database::create(dir.join("t.redb")).expect("create");
        crate::tables::create(&db).expect("tables");
        db
    }

    fn segments(db: &Database) -> Vec<(u64, u64)> {
        let txn = db.begin_read().expect("read");
        let table = txn.open_table(DEDUPE_SEGMENTS).expect("segments");
        table
            .iter()
            .expect("iter")
            .map(|row| row.expect("row").0.value())
            .collect()
    }

    #[test]
    fn a_notified_entry_older_than_the_checkpoint_is_rewritten_without_its_due_time() {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = open_with_tables(dir.path());
        let message = |seq: Seq| Change::PutEntry {
            channel: channel("bob"),
            seq,
            entry: StoredEntry {
                kind: EntryKind::Message {
                    sender: None,
                    id: MessageId::new("m").expect("valid"),
                },
                notify_at: Some(77),
                ..entry()
            },
        };
        let mut first = Overlay::default();
        first.fold(message(1));
        first.fold(message(2));
        first.checkpoint(&db, 1).expect("checkpoint");
        // In the next overlay: 1 notified; 2 notified, then deleted; 3
        // born and notified there.
        let mut next = Overlay::default();
        for seq in [1, 2] {
            next.fold(Change::Notified {
                channel: channel("bob"),
                seq,
            });
        }
        next.fold(Change::DelEntry {
            channel: channel("bob"),
            seq: 2,
            acked_by: Vec::new(),
        });
        next.fold(message(3));
        next.fold(Change::Notified {
            channel: channel("bob"),
            seq: 3,
        });
        next.checkpoint(&db, 2).expect("checkpoint");
        let snapshot = crate::tables::load(&db).expect("load");
        let mut due: Vec<(Seq, Option<Millis>)> = snapshot
            .entries
            .iter()
            .map(|(_, seq, e)| (*seq, e.notify_at))
            .collect();
        due.sort_unstable();
        assert_eq!(due, vec![(1, None), (3, None)]);
    }

    #[test]
    fn a_dedupe_segment_expires_after_its_latest_deadline() {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = open_with_tables(dir.path());
        let mut overlay = Overlay::default();
        for (id, until) in [("m1", 50), ("m2", 60)] {
            overlay.fold(Change::PutDedupe {
                sender: "alice".into(),
                id: MessageId::new(id).expect("valid"),
                until,
            });
        }
        overlay.expired_at = 10;
        overlay.checkpoint(&db, 0).expect("checkpoint");
        assert_eq!(segments(&db), vec![(60, 0)]);
        // Past the first deadline only: the segment stays.
        let mut later = Overlay {
            expired_at: 55,
            ..Overlay::default()
        };
        later.checkpoint(&db, 0).expect("checkpoint");
        assert_eq!(segments(&db), vec![(60, 0)]);
        later.expired_at = 60;
        later.checkpoint(&db, 0).expect("checkpoint");
        assert!(segments(&db).is_empty());
    }
}
