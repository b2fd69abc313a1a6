//! Bachata's embedded durable store, on [redb](https://docs.rs/redb).
//!
//! # How it works
//! The delivery state lives in memory as a [`MemState`] (the same state
//! machine as the memory store), and on disk in redb. One OS thread, the
//! writer, owns all mutations: callers send requests over a channel; the
//! writer takes every request that is waiting (up to [`MAX_BATCH`]), applies
//! them to the state in order, appends the [`Change`](bachata_core::memstate::Change)s they report as **one**
//! checksummed record to the log file, syncs it (`fdatasync`), and only then
//! answers each caller. That is group commit: under load many enqueues
//! share one disk sync, and an answer still means "on disk".
//!
//! About once a second a checkpoint writes the folded effect of the log to
//! the tables below in one redb transaction, and deletes the log files it
//! covers (see the `wal` and `logfile` modules for why and how). Reads
//! (`read`, `pending_count`) are served from memory. The `writer` module is
//! the writer thread, step by step.
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
//!   cover; `"format_version"` -> the format of the tables and the log (see
//!   the policy in the `tables` module: a newer store is refused)
//! - `entries`: `(channel, seq)` -> encoded entry (see `codec`), with the
//!   undelivered webhook's due time when it was asked for: the due index
//!   is rebuilt from them at open
//! - `acks`: `(channel, seq, device)` -> `()`
//! - `devices`: `(channel, device)` -> last seen (ms)
//! - `dedupe_segments`: `(latest deadline, n)` -> the dedupe records
//!   `(sender, id, deadline)` of one checkpoint
//! - `members`: `(group, channel)` -> `()`
//! - `channels`: `channel` -> next seq, so seqs never go back even after
//!   every entry of a channel was removed (until the channel is forgotten)
//!
//! `""` is the default device and the system sender; real names are never
//! empty.

mod codec;
mod logfile;
mod tables;
mod wal;
mod writer;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use bachata_core::memstate::MemState;
use bachata_core::{
    AckRequest, AckState, Acked, Device, Enqueued, Entry, Forgotten, Millis, NewMessage, Seq,
    Store, StoreError, Undelivered,
};
use bachata_proto::{Channel, GroupId, MessageId};
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};

use crate::logfile::LogFile;
use crate::writer::{Files, Reply, Request, Writer};

pub use crate::writer::{CommitObserver, MAX_BATCH};

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
    #[error("cannot open {path}: {reason}")]
    Tables { path: PathBuf, reason: String },
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

/// A request's result, once the writer has answered.
type Answered<T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send>>;

fn answered<T: Send + 'static>(rx: oneshot::Receiver<Result<T, StoreError>>) -> Answered<T> {
    Box::pin(async move { rx.await.map_err(|_| StoreError::Closed)? })
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

impl RedbStore {
    /// Opens (or creates) the store in `dir` and recovers its state.
    pub fn open(dir: &Path, on_commit: Option<CommitObserver>) -> Result<Self, OpenError> {
        std::fs::create_dir_all(dir).map_err(|source| OpenError::CreateDir {
            path: dir.to_owned(),
            source,
        })?;
        let path = dir.join(tables::DB_FILE);
        let db = tables::open(dir).map_err(|source| OpenError::Open {
            path: path.clone(),
            source: Box::new(source),
        })?;
        tables::create(&db).map_err(|e| OpenError::Tables {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let recover = |reason: String| OpenError::Recover {
            path: path.clone(),
            reason,
        };
        let generation = wal::recover(&db, dir).map_err(|e| recover(e.to_string()))?;
        let log = LogFile::create(dir, generation).map_err(|source| OpenError::Log {
            path: logfile::path(dir, generation),
            source,
        })?;
        let state = MemState::restore(tables::load(&db).map_err(|e| recover(e.to_string()))?);
        let state = Arc::new(Mutex::new(state));
        let (tx, rx) = mpsc::channel(QUEUE);
        let crash_on_close = Arc::new(AtomicBool::new(false));
        let files = Files {
            db: Some(db),
            dir: dir.to_owned(),
            log,
        };
        let writer = Writer::new(files, state.clone(), on_commit, crash_on_close.clone());
        let writer = std::thread::Builder::new()
            .name("bachata-redb-writer".into())
            .spawn(move || writer.run(rx))
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

    /// Sends a request and waits for its answer (and for room in the
    /// writer's queue, if it is full).
    async fn call<T: Send + 'static>(
        &self,
        request: impl FnOnce(Reply<T>) -> Request,
    ) -> Result<T, StoreError> {
        let (reply, rx) = oneshot::channel();
        let tx = self.tx.as_ref().ok_or(StoreError::Closed)?;
        tx.send(request(reply))
            .await
            .map_err(|_| StoreError::Closed)?;
        answered(rx).await
    }

    /// Puts a request in the writer's queue now, so that it keeps its place
    /// in the store's order, and returns its answer to come; gives the
    /// operation back when the queue is full (the caller then waits its
    /// turn behind what it already queued).
    fn start<T: Send + 'static, O>(
        &self,
        operation: O,
        request: fn(O, Reply<T>) -> Request,
    ) -> Result<Answered<T>, O> {
        let Some(tx) = self.tx.as_ref() else {
            return Err(operation);
        };
        let Ok(permit) = tx.try_reserve() else {
            return Err(operation);
        };
        let (reply, rx) = oneshot::channel();
        permit.send(request(operation, reply));
        Ok(answered(rx))
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

#[async_trait]
impl Store for RedbStore {
    async fn enqueue(&self, msg: NewMessage) -> Result<Enqueued, StoreError> {
        self.call(|reply| Request::Enqueue(msg, reply)).await
    }

    fn start_enqueue(&self, msg: NewMessage) -> Result<bachata_core::PendingEnqueue, NewMessage> {
        self.start(msg, Request::Enqueue)
    }

    fn start_ack(&self, ack: AckRequest) -> Result<bachata_core::PendingAck, AckRequest> {
        self.start(ack, Request::Ack)
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
        self.call(|reply| Request::Ack(ack, reply)).await
    }

    async fn ack_seqs(
        &self,
        channel: &Channel,
        device: &Device,
        seqs: &[Seq],
    ) -> Result<(), StoreError> {
        let (channel, device, seqs) = (channel.clone(), device.clone(), seqs.to_vec());
        self.call(|reply| Request::AckSeqs(channel, device, seqs, reply))
            .await
    }

    async fn touch_device(
        &self,
        channel: &Channel,
        device: &Device,
        now: Millis,
        _forget_after: Millis,
    ) -> Result<(), StoreError> {
        let (channel, device) = (channel.clone(), device.clone());
        self.call(|reply| Request::Touch(channel, device, now, reply))
            .await
    }

    async fn touch_devices(
        &self,
        devices: &[(Channel, Device)],
        now: Millis,
        _forget_after: Millis,
    ) -> Result<(), StoreError> {
        let devices = devices.to_vec();
        self.call(|reply| Request::Refresh(devices, now, reply))
            .await
    }

    async fn forget(&self, now: Millis, forget_after: Millis) -> Result<Forgotten, StoreError> {
        let seen_before = now.saturating_sub(forget_after);
        self.call(|reply| Request::Forget(seen_before, reply)).await
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

    /// From the memory state, which may run ahead of the disk by the
    /// commit in progress: a resend racing its original's commit counts as
    /// a duplicate.
    async fn is_duplicate(
        &self,
        sender: Option<&Channel>,
        id: &MessageId,
        now: Millis,
    ) -> Result<bool, StoreError> {
        Ok(self.state.lock().is_duplicate(sender, id, now))
    }

    /// From the memory state; the claim lives there only (a restart makes
    /// every copy not finished due again at its first `notify_at`).
    async fn take_undelivered(
        &self,
        now: Millis,
        lease_until: Millis,
        limit: usize,
    ) -> Result<Vec<Undelivered>, StoreError> {
        Ok(self.state.lock().take_undelivered(now, lease_until, limit))
    }

    async fn finish_undelivered(&self, done: &[(Channel, Seq)]) -> Result<(), StoreError> {
        let done = done.to_vec();
        self.call(|reply| Request::Notified(done, reply)).await
    }

    async fn add_member(&self, group: &GroupId, member: &Channel) -> Result<bool, StoreError> {
        let (group, member) = (group.clone(), member.clone());
        self.call(|reply| Request::AddMember(group, member, reply))
            .await
    }

    async fn remove_member(&self, group: &GroupId, member: &Channel) -> Result<bool, StoreError> {
        let (group, member) = (group.clone(), member.clone());
        self.call(|reply| Request::RemoveMember(group, member, reply))
            .await
    }

    async fn members(&self, group: &GroupId) -> Result<Vec<Channel>, StoreError> {
        Ok(self.state.lock().members(group))
    }

    fn pending_total(&self) -> Option<u64> {
        Some(self.state.lock().pending_total())
    }

    async fn expire(&self, now: Millis) -> Result<u64, StoreError> {
        self.call(|reply| Request::Expire(now, reply)).await
    }
}
