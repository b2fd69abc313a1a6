//! The writer: the one thread that changes the store.
//!
//! Callers send a [`Request`] (each operation with a reply channel of its
//! own result type, so that no reply of the wrong kind can be written). The
//! writer takes every request waiting (up to [`MAX_BATCH`]) and, in turn:
//! applies them to the memory state, in order ([`Writer::apply`]); appends
//! the changes they report as one checksummed record to the log and syncs
//! it ([`Writer::commit`]), then answers; every second or so writes the
//! log's folded effect to the tables ([`Writer::checkpoint`]); and, after
//! forgetting, gives the file's free space back ([`Writer::compact`]).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bachata_core::memstate::{Change, MemState};
use bachata_core::{
    AckRequest, Acked, Device, Enqueued, Forgotten, Millis, NewMessage, Seq, StoreError,
};
use bachata_proto::{Channel, GroupId};
use parking_lot::Mutex;
use redb::Database;
use tokio::sync::{mpsc, oneshot};

use crate::logfile::LogFile;
use crate::tables::{self, DB_FILE, TablesError};
use crate::{codec, wal};

/// Called after each commit with its duration and the number of requests it
/// carried (for metrics).
pub type CommitObserver = Box<dyn Fn(Duration, usize) + Send + Sync>;

/// Most requests folded into one commit.
pub const MAX_BATCH: usize = 4096;

/// A database file smaller than this is never compacted.
const COMPACT_ABOVE_BYTES: u64 = 256 * 1024;

/// Batches after a forget sweep in which the writer looks whether the file
/// is mostly free: the pages that the sweep and the expiry of what it left
/// (dedupe records) free are released over the next few commits.
const COMPACT_LOOKS: u8 = 20;

/// The writer also looks this often, whatever freed the pages.
const COMPACT_LOOK_EVERY: Duration = Duration::from_secs(60);

/// Where an operation's result goes.
pub(crate) type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

/// An operation for the writer, with where its result goes.
pub(crate) enum Request {
    Enqueue(NewMessage, Reply<Enqueued>),
    Ack(AckRequest, Reply<Acked>),
    AckSeqs(Channel, Device, Vec<Seq>, Reply<()>),
    Touch(Channel, Device, Millis, Reply<()>),
    /// The live connections' devices, seen at this time.
    Refresh(Vec<(Channel, Device)>, Millis, Reply<()>),
    Expire(Millis, Reply<u64>),
    /// Forget what was last seen at or before this time.
    Forget(Millis, Reply<Forgotten>),
    AddMember(GroupId, Channel, Reply<bool>),
    RemoveMember(GroupId, Channel, Reply<bool>),
    /// The undelivered webhook's calls made for these entries.
    Notified(Vec<(Channel, Seq)>, Reply<()>),
}

/// An applied operation's result and where it goes, sent once the changes
/// it made are durable (or refused if they could not be made so).
enum Answer {
    Enqueued(Reply<Enqueued>, Enqueued),
    Acked(Reply<Acked>, Acked),
    Done(Reply<()>),
    Expired(Reply<u64>, u64),
    Forgotten(Reply<Forgotten>, Forgotten),
    Changed(Reply<bool>, bool),
}

impl Answer {
    /// Sends the result, or `failed` instead of it.
    fn send(self, failed: Option<&dyn Fn() -> StoreError>) {
        fn send<T>(reply: Reply<T>, value: T, failed: Option<&dyn Fn() -> StoreError>) {
            let _ = reply.send(match failed {
                None => Ok(value),
                Some(error) => Err(error()),
            });
        }
        match self {
            Answer::Enqueued(reply, value) => send(reply, value, failed),
            Answer::Acked(reply, value) => send(reply, value, failed),
            Answer::Done(reply) => send(reply, (), failed),
            Answer::Expired(reply, value) => send(reply, value, failed),
            Answer::Forgotten(reply, value) => send(reply, value, failed),
            Answer::Changed(reply, value) => send(reply, value, failed),
        }
    }
}

impl Request {
    /// Whether the operation's loss in a crash costs a repeat, not a loss,
    /// so that it needs no disk sync of its own: it is answered as soon as
    /// it is applied, and its changes go to disk with the next synced log
    /// record (the next batch that has a caller waiting for the disk) or
    /// the next checkpoint, whichever comes first:
    /// - the record that receipts (300s) were written to a connection:
    ///   after a crash a receipt whose record was lost is sent again
    ///   (delivery is at least once; clients dedupe by id), which saves one
    ///   synced commit per message at low load, where every commit is on
    ///   some message's path;
    /// - refreshing live devices and forgetting: lost, they are done again.
    ///
    /// A 200 is not lazy, though it could be without losing a message (the
    /// ack and the 300 it queues are atomic): the contract says the 300 is
    /// queued durably, and a lost ack would deliver the message again.
    /// Measured, lazy 200s cut the `pairs` W=1 send->300 p50 from 2.2 to
    /// 1.5 ms (docs/performance.md).
    fn is_lazy(&self) -> bool {
        matches!(
            self,
            Request::AckSeqs(..) | Request::Refresh(..) | Request::Forget(..)
        )
    }

    /// Refuses the request unapplied.
    fn refuse(self, error: StoreError) {
        fn refuse<T>(reply: Reply<T>, error: StoreError) {
            let _ = reply.send(Err(error));
        }
        match self {
            Request::Enqueue(_, reply) => refuse(reply, error),
            Request::Ack(_, reply) => refuse(reply, error),
            Request::AckSeqs(.., reply)
            | Request::Touch(.., reply)
            | Request::Refresh(.., reply)
            | Request::Notified(.., reply) => refuse(reply, error),
            Request::Expire(_, reply) => refuse(reply, error),
            Request::Forget(_, reply) => refuse(reply, error),
            Request::AddMember(.., reply) | Request::RemoveMember(.., reply) => {
                refuse(reply, error)
            }
        }
    }

    /// Applies the operation to the state; returns what to answer.
    fn apply(self, state: &mut MemState, changes: &mut Vec<Change>) -> Answer {
        match self {
            Request::Enqueue(msg, reply) => Answer::Enqueued(reply, state.enqueue(&msg, changes)),
            Request::Ack(ack, reply) => Answer::Acked(reply, state.ack(&ack, changes)),
            Request::AckSeqs(channel, device, seqs, reply) => {
                state.ack_seqs(&channel, &device, &seqs, changes);
                Answer::Done(reply)
            }
            Request::Touch(channel, device, now, reply) => {
                state.touch_device(&channel, &device, now, changes);
                Answer::Done(reply)
            }
            Request::Refresh(devices, now, reply) => {
                for (channel, device) in &devices {
                    state.touch_device(channel, device, now, changes);
                }
                Answer::Done(reply)
            }
            Request::Expire(now, reply) => Answer::Expired(reply, state.expire(now, changes)),
            Request::Forget(seen_before, reply) => {
                Answer::Forgotten(reply, state.forget(seen_before, changes))
            }
            Request::AddMember(group, member, reply) => {
                Answer::Changed(reply, state.add_member(&group, &member, changes))
            }
            Request::RemoveMember(group, member, reply) => {
                Answer::Changed(reply, state.remove_member(&group, &member, changes))
            }
            Request::Notified(done, reply) => {
                state.finish_undelivered(&done, changes);
                Answer::Done(reply)
            }
        }
    }
}

/// Why the files cannot be used (the database closed after an error and
/// could not be opened again, a log file cannot be created, recovery
/// failed).
#[derive(Debug, thiserror::Error)]
pub(crate) enum FilesError {
    #[error("cannot open the database: {0}")]
    Open(#[from] redb::DatabaseError),
    #[error(transparent)]
    Tables(#[from] TablesError),
    #[error("cannot recover the log: {0}")]
    Recover(#[from] wal::RecoverError),
    #[error("cannot read the tables: {0}")]
    Load(#[from] StoreError),
    #[error("cannot create a log file: {0}")]
    Log(#[from] std::io::Error),
    #[error(transparent)]
    Redb(#[from] redb::Error),
}

/// What the writer writes to: the tables, and the log file in `dir`.
pub(crate) struct Files {
    /// `None` after an error: redb refuses every transaction after an I/O
    /// error until the database is opened again, which [`Files::db`] does.
    pub(crate) db: Option<Database>,
    pub(crate) dir: PathBuf,
    pub(crate) log: LogFile,
}

impl Files {
    /// The database, opened again if an error closed it.
    fn db(&mut self) -> Result<&mut Database, FilesError> {
        let db = match self.db.take() {
            Some(db) => db,
            None => {
                let db = tables::open(&self.dir)?;
                tables::create(&db)?;
                db
            }
        };
        Ok(self.db.insert(db))
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
        let written = self.db().and_then(|db| Ok(overlay.checkpoint(db, next)?));
        match written {
            Ok(()) => {
                overlay.reset();
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
        let file = self.dir.join(DB_FILE);
        let size = std::fs::metadata(&file).map_or(0, |m| m.len());
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
        let started = Instant::now();
        match db.compact() {
            Ok(_) => {
                let after = std::fs::metadata(&file).map_or(0, |m| m.len());
                tracing::info!(before = size, after, took = ?started.elapsed(), "database compacted");
            }
            Err(e) => tracing::warn!(error = %e, "compaction failed; the file keeps its size"),
        }
        true
    }

    /// After a failed append: folds every log file into the tables, starts
    /// a new file and returns the state as of the last successful append.
    fn reload(&mut self) -> Result<MemState, FilesError> {
        // Opened again: the error that got us here may have left redb
        // refusing transactions.
        self.db = None;
        let reloaded = self.rebuild();
        if reloaded.is_err() {
            self.db = None;
        }
        reloaded
    }

    fn rebuild(&mut self) -> Result<MemState, FilesError> {
        let dir = self.dir.clone();
        let db = self.db()?;
        let generation = wal::recover(db, &dir)?;
        let snapshot = tables::load(db)?;
        self.log = LogFile::create(&dir, generation)?;
        Ok(MemState::restore(snapshot))
    }
}

/// The writer thread's state. See the module docs.
pub(crate) struct Writer {
    files: Files,
    state: Arc<Mutex<MemState>>,
    on_commit: Option<CommitObserver>,
    /// Set to make the writer stop like a crash: no checkpoint at the end.
    crash_on_close: Arc<AtomicBool>,
    /// The changes applied since the last synced record: those of batches
    /// with only lazy operations (the first `carried`, already folded into
    /// the overlay), then the current batch's.
    changes: Vec<Change>,
    carried: usize,
    /// The encoding of the record being appended (kept for its capacity).
    encoded: Vec<u8>,
    overlay: wal::Overlay,
    last_checkpoint: Instant,
    /// Set when an append failed and the state could not be rebuilt from
    /// disk: the memory state may then hold what is not stored, so nothing
    /// is applied (and nobody gets a 100 from it) until a rebuild succeeds.
    poisoned: bool,
    /// Set by a forget sweep that forgot something: once the tables have
    /// everything (the overlay is empty), the writer looks whether the file
    /// is mostly free, after this many batches at most.
    compact_looks: u8,
    last_compact_look: Instant,
}

impl Writer {
    pub(crate) fn new(
        files: Files,
        state: Arc<Mutex<MemState>>,
        on_commit: Option<CommitObserver>,
        crash_on_close: Arc<AtomicBool>,
    ) -> Self {
        Writer {
            files,
            state,
            on_commit,
            crash_on_close,
            changes: Vec::new(),
            carried: 0,
            encoded: Vec::new(),
            overlay: wal::Overlay::default(),
            last_checkpoint: Instant::now(),
            poisoned: false,
            compact_looks: 0,
            last_compact_look: Instant::now(),
        }
    }

    /// Serves requests until every sender is gone.
    pub(crate) fn run(mut self, mut rx: mpsc::Receiver<Request>) {
        // A file left mostly free by an earlier run (forgotten channels whose
        // compaction did not happen before it stopped).
        let _ = self.files.compact_if_mostly_free();
        let mut batch = Vec::new();
        while let Some(first) = rx.blocking_recv() {
            batch.push(first);
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(request) => batch.push(request),
                    Err(_) => break,
                }
            }
            if !self.writable(&mut batch) {
                continue;
            }
            let (answers, swept_at) = self.apply(&mut batch);
            self.commit(answers, swept_at);
            self.checkpoint();
            self.compact();
        }
        self.close();
    }

    /// Whether the batch may be applied: after a failed append whose
    /// rebuild also failed, only once a rebuild succeeds; else the batch is
    /// refused unapplied.
    fn writable(&mut self, batch: &mut Vec<Request>) -> bool {
        if !self.poisoned {
            return true;
        }
        // (Nothing was applied since the failed append: `changes` is
        // empty.)
        match self.reload_state() {
            Ok(()) => {
                tracing::info!("state reloaded from disk; writes resume");
                self.poisoned = false;
                true
            }
            Err(e) => {
                let what = format!("storage failed and cannot be reloaded: {e}");
                for request in batch.drain(..) {
                    request.refuse(StoreError::backend(what.clone()));
                }
                false
            }
        }
    }

    /// Applies the batch to the state in order; answers the lazy requests
    /// at once and returns the others' answers, with the latest `now` of an
    /// expiry sweep among them.
    fn apply(&mut self, batch: &mut Vec<Request>) -> (Vec<Answer>, Millis) {
        let mut answers = Vec::with_capacity(batch.len());
        let mut swept_at = 0;
        let mut state = self.state.lock();
        for request in batch.drain(..) {
            if let Request::Expire(now, _) = &request {
                swept_at = swept_at.max(*now);
            }
            let lazy = request.is_lazy();
            let answer = request.apply(&mut state, &mut self.changes);
            if let Answer::Forgotten(_, f) = &answer
                && f.channels + f.devices > 0
            {
                self.compact_looks = COMPACT_LOOKS;
            }
            if lazy {
                answer.send(None);
            } else {
                answers.push(answer);
            }
        }
        (answers, swept_at)
    }

    /// Makes the batch's changes durable (one record, one sync) and answers
    /// its callers; with nobody waiting, carries the changes to the next
    /// record instead. After a failed append, rebuilds the state from disk
    /// and refuses the batch.
    fn commit(&mut self, answers: Vec<Answer>, swept_at: Millis) {
        let waited = !answers.is_empty();
        if !waited {
            // Nobody waits for the disk: no sync. The changes are folded
            // now (a checkpoint writes them) and carried into the next
            // record.
            for change in &self.changes[self.carried..] {
                self.overlay.fold(change.clone());
            }
            self.carried = self.changes.len();
        }
        let appended = if !waited || self.changes.is_empty() {
            Ok(())
        } else {
            let started = Instant::now();
            self.encoded.clear();
            codec::encode_changes(&self.changes, &mut self.encoded);
            let appended = self.files.log.append(&self.encoded);
            if let Some(observe) = &self.on_commit {
                observe(started.elapsed(), answers.len());
            }
            appended
        };
        match appended {
            Ok(()) => {
                for answer in answers {
                    answer.send(None);
                }
                self.overlay.expired_at = self.overlay.expired_at.max(swept_at);
                // (Without a record the changes stay carried, see above.)
                if waited {
                    self.overlay.log_bytes += self.encoded.len();
                    for change in self.changes.drain(..).skip(self.carried) {
                        self.overlay.fold(change);
                    }
                    self.carried = 0;
                }
            }
            Err(e) => {
                self.changes.clear();
                self.carried = 0;
                tracing::error!(error = %e, "commit failed; reloading state from disk");
                // The memory state ran ahead of the disk: rebuild it from
                // the last commit so it never claims what is not stored.
                if let Err(e) = self.reload_state() {
                    tracing::error!(error = %e, "reload after failed commit failed; refusing writes until it succeeds");
                    self.poisoned = true;
                }
                let failed = || StoreError::backend_because("appending to the log", clone_io(&e));
                for answer in answers {
                    answer.send(Some(&failed));
                }
            }
        }
    }

    /// Rebuilds the memory state (and empties the overlay) from disk, after
    /// an append failed and the state ran ahead of what is stored.
    fn reload_state(&mut self) -> Result<(), FilesError> {
        // The seqs handed out before stay handed out: a reader may have
        // seen an entry that was never stored.
        let handed_out = self.state.lock().next_seqs();
        let mut reloaded = self.files.reload()?;
        reloaded.raise_next_seqs(handed_out);
        *self.state.lock() = reloaded;
        self.overlay = wal::Overlay::default();
        Ok(())
    }

    /// Writes the overlay to the tables when a second has passed, or the
    /// log grew large.
    fn checkpoint(&mut self) {
        let due = self.last_checkpoint.elapsed() >= wal::CHECKPOINT_EVERY
            || self.overlay.log_bytes >= wal::CHECKPOINT_BYTES;
        if self.overlay.is_empty() || !due {
            return;
        }
        if self.files.checkpoint(&mut self.overlay) {
            // The tables have the carried changes now.
            self.changes.clear();
            self.carried = 0;
        }
        self.last_checkpoint = Instant::now();
    }

    /// Looks whether the file is mostly free (after forgetting, and every
    /// minute), once the tables have everything.
    fn compact(&mut self) {
        let due = self.compact_looks > 0 || self.last_compact_look.elapsed() >= COMPACT_LOOK_EVERY;
        if !self.overlay.is_empty() || !due {
            return;
        }
        self.compact_looks = self.compact_looks.saturating_sub(1);
        self.last_compact_look = Instant::now();
        if self.files.compact_if_mostly_free() {
            self.compact_looks = 0;
        }
    }

    /// Leaves the tables complete, so the next open has little log to fold;
    /// a crash-like close keeps what a crash would: the synced records.
    fn close(mut self) {
        if !self.crash_on_close.load(Ordering::SeqCst) {
            self.files.checkpoint(&mut self.overlay);
        }
    }
}

/// An I/O error again, for each caller of a failed batch (`io::Error` is
/// not `Clone`).
fn clone_io(e: &std::io::Error) -> std::io::Error {
    std::io::Error::new(e.kind(), e.to_string())
}
