//! Bachata's embedded durable store, on [redb](https://docs.rs/redb).
//!
//! # How it works
//! The delivery state lives in memory as a [`MemState`] (the same state
//! machine as the memory store), and on disk in redb. One OS thread, the
//! writer, owns all mutations: callers send requests over a channel; the
//! writer takes every request that is waiting (up to [`MAX_BATCH`]), applies
//! them to the state in order, appends the [`Change`]s they report as **one**
//! checksummed record to the log file, syncs it (`fdatasync`), and only then
//! answers each caller. That is group commit: under load many enqueues
//! share one disk sync, and an answer still means "on disk".
//!
//! About once a second a checkpoint writes the folded effect of the log to
//! the tables below in one redb transaction, and deletes the log files it
//! covers (see the `wal` and `logfile` modules for why and how). Reads
//! (`read`, `pending_count`) are served from memory.
//!
//! On open, the log files the tables do not cover are folded into them,
//! then the state is rebuilt from the tables (recovery). A record is
//! complete and checksummed or ignored, and a redb commit is atomic, so
//! after a crash the state is exactly that of the last append that
//! returned: nothing answered is lost, nothing half-written is seen.
//!
//! # Files
//! - `bachata.redb`: the tables below
//! - `wal-<generation>.log`: the log since the last checkpoint
//!
//! # Tables
//! - `meta`: `"log_generation"` -> the first log file the tables do not
//!   cover
//! - `wal`: the log of earlier versions (batch number -> the encoded
//!   changes of one group commit), folded in and emptied on open
//! - `entries`: `(channel, seq)` -> encoded entry (see `codec`)
//! - `acks`: `(channel, seq, device)` -> `()`
//! - `devices`: `(channel, device)` -> last seen (ms)
//! - `dedupe_segments`: `(latest deadline, n)` -> the dedupe records
//!   `(sender, id, deadline)` of one checkpoint (the `dedupe` table of older
//!   versions, a row per record, is moved into a segment on open)
//! - `members`: `(group, channel)` -> `()`
//! - `channels`: `channel` -> next seq, so seqs never go back even after
//!   every entry of a channel was removed
//!
//! `""` is the default device and the system sender; real names are never
//! empty.

mod codec;
mod logfile;
mod wal;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bachata_core::memstate::{Change, MemState, Snapshot, StoredEntry};
use bachata_core::{
    AckRequest, AckState, Acked, Device, Enqueued, Entry, Forgotten, Millis, NewMessage, Seq,
    Store, StoreError,
};
use bachata_proto::{Channel, GroupId};
use parking_lot::Mutex;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::{mpsc, oneshot};

use crate::logfile::LogFile;

pub(crate) const ENTRIES: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("entries");
pub(crate) const ACKS: TableDefinition<(&str, u64, &str), ()> = TableDefinition::new("acks");
pub(crate) const DEVICES: TableDefinition<(&str, &str), u64> = TableDefinition::new("devices");
pub(crate) const DEDUPE: TableDefinition<(&str, &str), u64> = TableDefinition::new("dedupe");
pub(crate) const CHANNELS: TableDefinition<&str, u64> = TableDefinition::new("channels");
pub(crate) const MEMBERS: TableDefinition<(&str, &str), ()> = TableDefinition::new("members");

/// redb's page cache (its default is 1 GiB).
const CACHE_BYTES: usize = 32 * 1024 * 1024;

/// Most requests folded into one commit.
pub const MAX_BATCH: usize = 4096;
/// Requests that may wait for the writer before callers wait to send.
const QUEUE: usize = 16 * 1024;

/// Why the store could not open.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot create data directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot open database {path}: {source}")]
    Open {
        path: PathBuf,
        source: Box<redb::DatabaseError>,
    },
    #[error("cannot recover state from {path}: {reason}")]
    Recover { path: PathBuf, reason: String },
    #[error("cannot create the log file {path}: {source}")]
    Log {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start the writer thread: {0}")]
    Thread(std::io::Error),
}

/// Called after each commit with its duration and the number of requests it
/// carried (for metrics).
pub type CommitObserver = Box<dyn Fn(Duration, usize) + Send + Sync>;

enum Op {
    Enqueue(NewMessage),
    Ack(AckRequest),
    AckSeqs(Channel, Device, Vec<Seq>),
    Touch(Channel, Device, Millis),
    /// The live connections' devices, seen now (lazy: losing it only
    /// delays forgetting).
    Refresh(Vec<(Channel, Device)>, Millis),
    Expire(Millis),
    /// Forget what was last seen at or before this time (lazy: a forget
    /// lost in a crash is done again).
    Forget(Millis),
    AddMember(GroupId, Channel),
    RemoveMember(GroupId, Channel),
}

enum Reply {
    Enqueued(Enqueued),
    Acked(Acked),
    Done,
    Expired(u64),
    Forgotten(Forgotten),
    Changed(bool),
}

struct Request {
    op: Op,
    reply: oneshot::Sender<Result<Reply, StoreError>>,
}

/// See the crate docs.
pub struct RedbStore {
    state: Arc<Mutex<MemState>>,
    /// Set to make the writer stop like a crash: no checkpoint at the end.
    crash_on_close: Arc<AtomicBool>,
    tx: Option<mpsc::Sender<Request>>,
    writer: Option<std::thread::JoinHandle<()>>,
    path: PathBuf,
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

impl RedbStore {
    /// Opens (or creates) the store in `dir` and recovers its state.
    pub fn open(dir: &Path, on_commit: Option<CommitObserver>) -> Result<Self, OpenError> {
        std::fs::create_dir_all(dir).map_err(|source| OpenError::CreateDir {
            path: dir.to_owned(),
            source,
        })?;
        let path = dir.join(DB_FILE);
        let db = open_database(dir).map_err(|source| OpenError::Open {
            path: path.clone(),
            source: Box::new(source),
        })?;
        let recover = |reason: String| OpenError::Recover {
            path: path.clone(),
            reason,
        };
        create_tables(&db).map_err(|e| recover(e.to_string()))?;
        let generation = wal::recover(&db, dir).map_err(|e| recover(e.to_string()))?;
        let log = LogFile::create(dir, generation).map_err(|source| OpenError::Log {
            path: logfile::path(dir, generation),
            source,
        })?;
        let state = MemState::restore(load(&db).map_err(|e| recover(e.to_string()))?);
        let state = Arc::new(Mutex::new(state));
        let (tx, rx) = mpsc::channel(QUEUE);
        let writer_state = state.clone();
        let crash_on_close = Arc::new(AtomicBool::new(false));
        let crash = crash_on_close.clone();
        let files = Files {
            db: Some(db),
            dir: dir.to_owned(),
            log,
        };
        let writer = std::thread::Builder::new()
            .name("bachata-redb-writer".into())
            .spawn(move || writer_loop(files, writer_state, rx, on_commit, crash))
            .map_err(OpenError::Thread)?;
        Ok(RedbStore {
            state,
            crash_on_close,
            tx: Some(tx),
            writer: Some(writer),
            path,
        })
    }

    /// Makes the store close as a crash would after its last commit: the
    /// log is left for the next open to fold in (see the `wal` module). For
    /// tests of recovery.
    #[doc(hidden)]
    pub fn close_as_if_crashed(&self) {
        self.crash_on_close.store(true, Ordering::SeqCst);
    }

    async fn call(&self, op: Op) -> Result<Reply, StoreError> {
        let (reply, rx) = oneshot::channel();
        let tx = self.tx.as_ref().ok_or(StoreError::Closed)?;
        tx.send(Request { op, reply })
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }
}

impl Drop for RedbStore {
    fn drop(&mut self) {
        // Closing the channel ends the writer after the batch in hand; wait
        // for it so the file lock is released when this returns.
        self.tx.take();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

fn create_tables(db: &Database) -> Result<(), redb::Error> {
    let txn = db.begin_write()?;
    txn.open_table(ENTRIES)?;
    txn.open_table(ACKS)?;
    txn.open_table(DEVICES)?;
    txn.open_table(DEDUPE)?;
    txn.open_table(CHANNELS)?;
    txn.open_table(MEMBERS)?;
    txn.open_table(wal::WAL)?;
    txn.open_table(wal::META)?;
    txn.open_table(wal::DEDUPE_SEGMENTS)?;
    txn.commit()?;
    Ok(())
}

/// Calls `f` with every row of `table`.
fn scan<K: redb::Key + 'static, V: redb::Value + 'static>(
    txn: &redb::ReadTransaction,
    table: TableDefinition<K, V>,
    mut f: impl FnMut(K::SelfType<'_>, V::SelfType<'_>) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    for row in txn
        .open_table(table)
        .map_err(backend)?
        .iter()
        .map_err(backend)?
    {
        let (key, value) = row.map_err(backend)?;
        f(key.value(), value.value())?;
    }
    Ok(())
}

fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

fn load(db: &Database) -> Result<Snapshot, StoreError> {
    let txn = db.begin_read().map_err(backend)?;
    let mut entries: HashMap<(String, u64), (Channel, StoredEntry)> = HashMap::new();
    scan(&txn, ENTRIES, |(channel, seq), value| {
        let entry = codec::decode(value).map_err(StoreError::Corrupt)?;
        let id = Channel::new(channel).map_err(corrupt)?;
        entries.insert((channel.to_owned(), seq), (id, entry));
        Ok(())
    })?;
    scan(&txn, ACKS, |(channel, seq, device), ()| {
        if let Some((_, entry)) = entries.get_mut(&(channel.to_owned(), seq)) {
            entry.acked_by.push(device.to_owned());
        }
        Ok(())
    })?;
    let mut snapshot = Snapshot {
        entries: entries
            .into_iter()
            .map(|((_, seq), (channel, entry))| (channel, seq, entry))
            .collect(),
        ..Snapshot::default()
    };
    scan(&txn, CHANNELS, |channel, next| {
        let channel = Channel::new(channel).map_err(corrupt)?;
        snapshot.next_seqs.push((channel, next));
        Ok(())
    })?;
    scan(&txn, DEVICES, |(channel, device), last_seen| {
        let channel = Channel::new(channel).map_err(corrupt)?;
        snapshot
            .devices
            .push((channel, device.to_owned(), last_seen));
        Ok(())
    })?;
    scan(&txn, wal::DEDUPE_SEGMENTS, |_, segment| {
        codec::decode_dedupe(segment, |sender, id, until| {
            snapshot.dedupe.push((sender.to_owned(), id, until));
        })
        .map_err(StoreError::Corrupt)
    })?;
    scan(&txn, MEMBERS, |(group, member), ()| {
        let group = GroupId::new(group).map_err(corrupt)?;
        let member = Channel::new(member).map_err(corrupt)?;
        snapshot.members.push((group, member));
        Ok(())
    })?;
    Ok(snapshot)
}

fn apply(state: &mut MemState, op: Op, changes: &mut Vec<Change>) -> Reply {
    match op {
        Op::Enqueue(msg) => Reply::Enqueued(state.enqueue(&msg, changes)),
        Op::Ack(ack) => Reply::Acked(state.ack(&ack, changes)),
        Op::AckSeqs(channel, device, seqs) => {
            state.ack_seqs(&channel, &device, &seqs, changes);
            Reply::Done
        }
        Op::Touch(channel, device, now) => {
            state.touch_device(&channel, &device, now, changes);
            Reply::Done
        }
        Op::Refresh(devices, now) => {
            for (channel, device) in &devices {
                state.touch_device(channel, device, now, changes);
            }
            Reply::Done
        }
        Op::Expire(now) => Reply::Expired(state.expire(now, changes)),
        Op::Forget(seen_before) => Reply::Forgotten(state.forget(seen_before, changes)),
        Op::AddMember(group, member) => Reply::Changed(state.add_member(&group, &member, changes)),
        Op::RemoveMember(group, member) => {
            Reply::Changed(state.remove_member(&group, &member, changes))
        }
    }
}

/// Operations whose loss in a crash costs a repeat, not a loss, so they
/// need no disk sync of their own: they are answered as soon as they are
/// applied, and their changes go to disk with the next synced log record
/// (the next batch that has a caller waiting for the disk) or the next
/// checkpoint, whichever comes first. Only the record that receipts (300s)
/// were written to a connection is: after a crash a receipt whose record
/// was lost is sent again (delivery is at least once; clients dedupe by
/// id). That saves one synced commit per message at low load, where every
/// commit is on some message's path.
///
/// A 200 is not lazy, though it could be without losing a message (the ack
/// and the 300 it queues are atomic): the contract says the 300 is queued
/// durably, and a lost ack would deliver the message again. Measured, lazy
/// 200s cut the `pairs` W=1 send->300 p50 from 2.2 to 1.5 ms
/// (docs/performance.md).
fn is_lazy(op: &Op) -> bool {
    matches!(op, Op::AckSeqs(..) | Op::Refresh(..) | Op::Forget(..))
}

/// The tables' file in the data directory.
const DB_FILE: &str = "bachata.redb";

/// A database file smaller than this is never compacted.
const COMPACT_ABOVE_BYTES: u64 = 256 * 1024;

/// Batches after a forget sweep in which the writer looks whether the file
/// is mostly free (see `Files::compact_if_mostly_free`): the pages that
/// the sweep and the expiry of what it left (dedupe records) free are
/// released over the next few commits.
const COMPACT_LOOKS: u8 = 20;

/// The writer also looks this often, whatever freed the pages.
const COMPACT_LOOK_EVERY: Duration = Duration::from_secs(60);

fn open_database(dir: &Path) -> Result<Database, redb::DatabaseError> {
    // Reads are served from memory; redb's cache only serves the writer
    // (checkpoints and recovery), so it need not be large.
    Database::builder()
        .set_cache_size(CACHE_BYTES)
        .create(dir.join(DB_FILE))
}

/// What the writer writes to: the tables, and the log file in `dir`.
struct Files {
    /// `None` after an error: redb refuses every transaction after an I/O
    /// error until the database is opened again, which [`Files::db`] does.
    db: Option<Database>,
    dir: PathBuf,
    log: LogFile,
}

impl Files {
    /// The database, opened again if an error closed it.
    fn db(&mut self) -> Result<&Database, String> {
        if self.db.is_none() {
            let db = open_database(&self.dir).map_err(|e| e.to_string())?;
            create_tables(&db).map_err(|e| e.to_string())?;
            self.db = Some(db);
        }
        self.db
            .as_ref()
            .ok_or_else(|| "the database is not open".to_owned())
    }

    /// Writes the overlay to the tables; on failure keeps it (the log
    /// files still hold everything) so that the next checkpoint tries
    /// again. Returns whether the tables now have everything applied.
    fn checkpoint(&mut self, overlay: &mut wal::Overlay) -> bool {
        if overlay.is_empty() {
            return true;
        }
        // What is appended from now on goes to a new file, which this
        // checkpoint does not cover.
        let next = self.log.generation() + 1;
        match LogFile::create(&self.dir, next) {
            Ok(log) => self.log = log,
            Err(e) => {
                tracing::warn!(error = %e, "cannot start a new log file; checkpoint postponed");
                return false;
            }
        }
        let written = self
            .db()
            .and_then(|db| overlay.checkpoint(db, next).map_err(|e| e.to_string()));
        match written {
            Ok(()) => {
                *overlay = wal::Overlay::default();
                wal::remove_covered(&self.dir, next);
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "checkpoint failed; the log keeps the changes");
                // Opened again before the next use (see `db`).
                self.db = None;
                false
            }
        }
    }

    /// Gives the file's free pages back to the file system once most of it
    /// is free (after many channels were forgotten, say): redb reuses freed
    /// pages but never shrinks its file by itself. Small files are left
    /// alone; compaction blocks the writer for its duration, which is short
    /// when most of the file is free. Returns false when the file is large
    /// and not mostly free yet (pages freed by the last commits are
    /// released by later ones: worth another look after the next batch).
    fn compact_if_mostly_free(&mut self) -> bool {
        let size = std::fs::metadata(self.dir.join(DB_FILE)).map_or(0, |m| m.len());
        if size < COMPACT_ABOVE_BYTES {
            return true;
        }
        let Ok(db) = self.db() else {
            return true;
        };
        // An empty commit first: it releases the pages that earlier commits
        // freed, which `stats` would otherwise count as in use.
        let used = (|| -> Result<u64, redb::Error> {
            db.begin_write()?.commit()?;
            let txn = db.begin_write()?;
            let stats = txn.stats()?;
            txn.abort()?;
            Ok(stats.allocated_pages() * stats.page_size() as u64)
        })();
        let used = match used {
            Ok(used) => used,
            Err(e) => {
                tracing::debug!(error = %e, "cannot read the database's size");
                return true;
            }
        };
        if size < 2 * used {
            return false;
        }
        let Some(db) = self.db.as_mut() else {
            return true;
        };
        let started = Instant::now();
        match db.compact() {
            Ok(_) => {
                let after = std::fs::metadata(self.dir.join(DB_FILE)).map_or(0, |m| m.len());
                tracing::info!(before = size, after, took = ?started.elapsed(), "database compacted");
            }
            Err(e) => tracing::warn!(error = %e, "compaction failed; the file keeps its size"),
        }
        true
    }

    /// After a failed append: folds every log file into the tables, starts
    /// a new file and returns the state as of the last successful append.
    fn reload(&mut self) -> Result<MemState, String> {
        // Opened again: the error that got us here may have left redb
        // refusing transactions.
        self.db = None;
        let reloaded = self.rebuild();
        if reloaded.is_err() {
            self.db = None;
        }
        reloaded
    }

    fn rebuild(&mut self) -> Result<MemState, String> {
        let dir = self.dir.clone();
        let db = self.db()?;
        let generation = wal::recover(db, &dir).map_err(|e| e.to_string())?;
        let snapshot = load(db).map_err(|e| e.to_string())?;
        self.log = LogFile::create(&dir, generation).map_err(|e| e.to_string())?;
        Ok(MemState::restore(snapshot))
    }
}

/// Rebuilds the memory state (and empties the overlay) from disk, after an
/// append failed and the state ran ahead of what is stored.
fn reload_state(
    files: &mut Files,
    state: &Mutex<MemState>,
    overlay: &mut wal::Overlay,
) -> Result<(), String> {
    let reloaded = files.reload()?;
    *state.lock() = reloaded;
    *overlay = wal::Overlay::default();
    Ok(())
}

fn writer_loop(
    mut files: Files,
    state: Arc<Mutex<MemState>>,
    mut rx: mpsc::Receiver<Request>,
    on_commit: Option<CommitObserver>,
    crash_on_close: Arc<AtomicBool>,
) {
    // The changes applied since the last synced record: those of batches
    // with only lazy operations (`carried`, already folded into the
    // overlay), then the current batch's.
    let mut changes = Vec::new();
    let mut carried = 0;
    let mut encoded = Vec::new();
    let mut batch: Vec<Request> = Vec::new();
    let mut overlay = wal::Overlay::default();
    let mut last_checkpoint = Instant::now();
    // Set when an append failed and the state could not be rebuilt from
    // disk: the memory state may then hold what is not stored, so nothing
    // is applied (and nobody gets a 100 from it) until a rebuild succeeds.
    let mut poisoned = false;
    // Set by a forget sweep that forgot something: once the tables have
    // everything (the overlay is empty), the writer looks whether the file
    // is mostly free, after this many batches at most.
    let mut compact_looks = 0u8;
    let mut last_compact_look = Instant::now();
    // A file left mostly free by an earlier run (forgotten channels whose
    // compaction did not happen before it stopped).
    let _ = files.compact_if_mostly_free();
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(request) => batch.push(request),
                Err(_) => break,
            }
        }
        if poisoned {
            // (Nothing was applied since the failed append: `changes` is
            // empty.)
            match reload_state(&mut files, &state, &mut overlay) {
                Ok(()) => {
                    tracing::info!("state reloaded from disk; writes resume");
                    poisoned = false;
                }
                Err(e) => {
                    let error = format!("storage failed and cannot be reloaded: {e}");
                    for request in batch.drain(..) {
                        let _ = request.reply.send(Err(StoreError::Backend(error.clone())));
                    }
                    continue;
                }
            }
        }
        let mut replies = Vec::with_capacity(batch.len());
        let mut swept_at = 0;
        {
            let mut state = state.lock();
            for request in batch.drain(..) {
                if let Op::Expire(now) = &request.op {
                    swept_at = swept_at.max(*now);
                }
                let lazy = is_lazy(&request.op);
                let reply = apply(&mut state, request.op, &mut changes);
                if let Reply::Forgotten(f) = &reply
                    && f.channels + f.devices > 0
                {
                    compact_looks = COMPACT_LOOKS;
                }
                if lazy {
                    let _ = request.reply.send(Ok(reply));
                } else {
                    replies.push((request.reply, reply));
                }
            }
        }
        let waited = !replies.is_empty();
        if !waited {
            // Nobody waits for the disk: no sync. The changes are folded
            // now (a checkpoint writes them) and carried into the next
            // record.
            for change in &changes[carried..] {
                overlay.fold(change.clone());
            }
            carried = changes.len();
        }
        let result = if !waited || changes.is_empty() {
            Ok(())
        } else {
            let started = Instant::now();
            encoded.clear();
            codec::encode_changes(&changes, &mut encoded);
            let result = files.log.append(&encoded);
            if let Some(observe) = &on_commit {
                observe(started.elapsed(), replies.len());
            }
            result
        };
        match result {
            Ok(()) => {
                for (reply, value) in replies {
                    let _ = reply.send(Ok(value));
                }
                overlay.expired_at = overlay.expired_at.max(swept_at);
                // (Without a record the changes stay carried, see above.)
                if waited {
                    overlay.log_bytes += encoded.len();
                    for change in changes.drain(..).skip(carried) {
                        overlay.fold(change);
                    }
                    carried = 0;
                }
            }
            Err(e) => {
                changes.clear();
                carried = 0;
                tracing::error!(error = %e, "commit failed; reloading state from disk");
                // The memory state ran ahead of the disk: rebuild it from
                // the last commit so it never claims what is not stored.
                if let Err(e) = reload_state(&mut files, &state, &mut overlay) {
                    tracing::error!(error = %e, "reload after failed commit failed; refusing writes until it succeeds");
                    poisoned = true;
                }
                for (reply, _) in replies {
                    let _ = reply.send(Err(backend(&e)));
                }
            }
        }
        if !overlay.is_empty()
            && (last_checkpoint.elapsed() >= wal::CHECKPOINT_EVERY
                || overlay.log_bytes >= wal::CHECKPOINT_BYTES)
        {
            if files.checkpoint(&mut overlay) {
                // The tables have the carried changes now.
                changes.clear();
                carried = 0;
            }
            last_checkpoint = Instant::now();
        }
        if overlay.is_empty()
            && (compact_looks > 0 || last_compact_look.elapsed() >= COMPACT_LOOK_EVERY)
        {
            compact_looks = compact_looks.saturating_sub(1);
            last_compact_look = Instant::now();
            if files.compact_if_mostly_free() {
                compact_looks = 0;
            }
        }
    }
    // Leave the tables complete, so the next open has little log to fold.
    if !crash_on_close.load(Ordering::SeqCst) {
        files.checkpoint(&mut overlay);
    }
    // A crash-like close keeps what a crash would: the synced records.
}

fn unexpected() -> StoreError {
    StoreError::Backend("writer answered with the wrong reply".into())
}

#[async_trait]
impl Store for RedbStore {
    async fn enqueue(&self, msg: NewMessage) -> Result<Enqueued, StoreError> {
        match self.call(Op::Enqueue(msg)).await? {
            Reply::Enqueued(e) => Ok(e),
            _ => Err(unexpected()),
        }
    }

    fn start_enqueue(&self, msg: NewMessage) -> Result<bachata_core::PendingEnqueue, NewMessage> {
        let Some(tx) = self.tx.as_ref() else {
            return Err(msg);
        };
        // The writer's queue is the order: a full queue gives the message
        // back, and the caller waits its turn behind what it already queued.
        let Ok(permit) = tx.try_reserve() else {
            return Err(msg);
        };
        let (reply, rx) = oneshot::channel();
        permit.send(Request {
            op: Op::Enqueue(msg),
            reply,
        });
        Ok(Box::pin(async move {
            match rx.await.map_err(|_| StoreError::Closed)?? {
                Reply::Enqueued(e) => Ok(e),
                _ => Err(unexpected()),
            }
        }))
    }

    fn start_ack(&self, ack: AckRequest) -> Result<bachata_core::PendingAck, AckRequest> {
        let Some(tx) = self.tx.as_ref() else {
            return Err(ack);
        };
        let Ok(permit) = tx.try_reserve() else {
            return Err(ack);
        };
        let (reply, rx) = oneshot::channel();
        permit.send(Request {
            op: Op::Ack(ack),
            reply,
        });
        Ok(Box::pin(async move {
            match rx.await.map_err(|_| StoreError::Closed)?? {
                Reply::Acked(a) => Ok(a),
                _ => Err(unexpected()),
            }
        }))
    }

    async fn read(
        &self,
        channel: &Channel,
        device: &Device,
        after: Seq,
        limit: usize,
        now: Millis,
    ) -> Result<Vec<Entry>, StoreError> {
        Ok(self.state.lock().read(channel, device, after, limit, now))
    }

    async fn ack(&self, ack: AckRequest) -> Result<Acked, StoreError> {
        match self.call(Op::Ack(ack)).await? {
            Reply::Acked(a) => Ok(a),
            _ => Err(unexpected()),
        }
    }

    async fn ack_seqs(
        &self,
        channel: &Channel,
        device: &Device,
        seqs: &[Seq],
    ) -> Result<(), StoreError> {
        self.call(Op::AckSeqs(channel.clone(), device.clone(), seqs.to_vec()))
            .await
            .map(|_| ())
    }

    async fn touch_device(
        &self,
        channel: &Channel,
        device: &Device,
        now: Millis,
        _forget_after: Millis,
    ) -> Result<(), StoreError> {
        self.call(Op::Touch(channel.clone(), device.clone(), now))
            .await
            .map(|_| ())
    }

    async fn touch_devices(
        &self,
        devices: &[(Channel, Device)],
        now: Millis,
        _forget_after: Millis,
    ) -> Result<(), StoreError> {
        self.call(Op::Refresh(devices.to_vec(), now))
            .await
            .map(|_| ())
    }

    async fn forget(&self, now: Millis, forget_after: Millis) -> Result<Forgotten, StoreError> {
        match self
            .call(Op::Forget(now.saturating_sub(forget_after)))
            .await?
        {
            Reply::Forgotten(f) => Ok(f),
            _ => Err(unexpected()),
        }
    }

    fn retained_bytes(&self) -> Option<u64> {
        Some(self.state.lock().retained_bytes())
    }

    fn channel_count(&self) -> Option<u64> {
        Some(self.state.lock().channel_count())
    }

    async fn pending_count(&self, channel: &Channel, now: Millis) -> Result<u64, StoreError> {
        Ok(self.state.lock().pending_count(channel, now))
    }

    async fn ack_state(&self, channel: &Channel, seq: Seq) -> Result<AckState, StoreError> {
        Ok(self.state.lock().ack_state(channel, seq))
    }

    async fn add_member(&self, group: &GroupId, member: &Channel) -> Result<bool, StoreError> {
        match self
            .call(Op::AddMember(group.clone(), member.clone()))
            .await?
        {
            Reply::Changed(c) => Ok(c),
            _ => Err(unexpected()),
        }
    }

    async fn remove_member(&self, group: &GroupId, member: &Channel) -> Result<bool, StoreError> {
        match self
            .call(Op::RemoveMember(group.clone(), member.clone()))
            .await?
        {
            Reply::Changed(c) => Ok(c),
            _ => Err(unexpected()),
        }
    }

    async fn members(&self, group: &GroupId) -> Result<Vec<Channel>, StoreError> {
        Ok(self.state.lock().members(group))
    }

    fn pending_total(&self) -> Option<u64> {
        Some(self.state.lock().pending_total())
    }

    async fn expire(&self, now: Millis) -> Result<u64, StoreError> {
        match self.call(Op::Expire(now)).await? {
            Reply::Expired(n) => Ok(n),
            _ => Err(unexpected()),
        }
    }
}
