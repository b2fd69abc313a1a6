//! The redb tables, the format version, and reading the tables back into a
//! [`Snapshot`] (recovery). See the crate docs for what each table holds.

use std::collections::HashMap;
use std::path::Path;

use bachata_core::StoreError;
use bachata_core::memstate::{Snapshot, StoredEntry};
use bachata_proto::{Channel, GroupId};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, TableHandle};

use crate::codec;

pub(crate) const ENTRIES: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("entries");
pub(crate) const ACKS: TableDefinition<(&str, u64, &str), ()> = TableDefinition::new("acks");
pub(crate) const DEVICES: TableDefinition<(&str, &str), u64> = TableDefinition::new("devices");
pub(crate) const CHANNELS: TableDefinition<&str, u64> = TableDefinition::new("channels");
pub(crate) const MEMBERS: TableDefinition<(&str, &str), ()> = TableDefinition::new("members");

/// `(latest deadline, n)` -> the dedupe records of one checkpoint, encoded
/// ([`codec::encode_dedupe`]). A record per row made every message cost a
/// B-tree insert at the checkpoint and another at its expiry a day later,
/// in a table of a day's messages; a segment per checkpoint costs one
/// insert, and expires whole once its latest deadline has passed (a record
/// may so outlive its deadline on disk by the width of one checkpoint; the
/// memory state still drops it on time).
pub(crate) const DEDUPE_SEGMENTS: TableDefinition<(u64, u64), &[u8]> =
    TableDefinition::new("dedupe_segments");

/// Store-wide values: [`LOG_GENERATION`] and [`FORMAT`].
pub(crate) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// The first log file generation that the tables do not cover.
pub(crate) const LOG_GENERATION: &str = "log_generation";
/// The format version of the tables and the log.
const FORMAT: &str = "format_version";

/// The format this build reads and writes.
///
/// # Policy
/// A change to a table's layout or to the log's encoding raises this
/// number. A store whose version is newer than the binary's is refused at
/// open (a downgrade cannot be read safely); an older one is migrated at
/// open by a step for each version in between, each tested from a store of
/// that version checked in as a fixture. Version 1 is the first: stores
/// made before the version was written count as 1, except those that still
/// hold rows in the tables of the development versions before it
/// ([`LEGACY_LOG`], [`LEGACY_DEDUPE`]), which are refused.
///
/// Version 2 added the undelivered webhook's due time to an entry (entry
/// encoding 2) and its `Notified` log change. Migrating 1 -> 2 rewrites
/// nothing: every version-1 entry reads as never asked for the webhook.
pub(crate) const FORMAT_VERSION: u64 = 2;

/// Tables of development versions before format 1 (a log kept in a table,
/// a dedupe record per row): a store that still has rows in them was never
/// opened by a build that folds them in.
const LEGACY_LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("wal");
const LEGACY_DEDUPE: TableDefinition<(&str, &str), u64> = TableDefinition::new("dedupe");

/// The tables' file in the data directory.
pub(crate) const DB_FILE: &str = "bachata.redb";

/// redb's page cache (its default is 1 GiB). Reads are served from memory;
/// the cache only serves the writer (checkpoints and recovery), so it need
/// not be large.
const CACHE_BYTES: usize = 32 * 1024 * 1024;

/// Why the tables cannot be used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TablesError {
    #[error(transparent)]
    Redb(#[from] redb::Error),
    #[error(
        "the store is format version {found}, newer than this build's {FORMAT_VERSION}: use a \
         newer bachata (a store cannot be opened by an older one)"
    )]
    TooNew { found: u64 },
    #[error(
        "the store holds rows in the table `{0}` of a development version before format 1; \
         it cannot be read by this build (start with an empty --data-dir)"
    )]
    Legacy(String),
}

/// `From` each of redb's error types for an error enum with a
/// `Redb(redb::Error)` variant, so that `?` works on every redb call.
macro_rules! from_redb_errors {
    ($target:ident) => {
        $crate::tables::from_redb_errors!(
            $target: redb::TransactionError,
            redb::TableError,
            redb::StorageError,
            redb::CommitError
        );
    };
    ($target:ident: $($t:ty),*) => {$(
        impl From<$t> for $target {
            fn from(e: $t) -> Self {
                $target::Redb(e.into())
            }
        }
    )*};
}
pub(crate) use from_redb_errors;

from_redb_errors!(TablesError);

/// Opens (or creates) the database file in `dir`.
pub(crate) fn open(dir: &Path) -> Result<Database, redb::DatabaseError> {
    Database::builder()
        .set_cache_size(CACHE_BYTES)
        .create(dir.join(DB_FILE))
}

/// Whether `table` exists and holds a row.
fn has_rows<K: redb::Key + 'static, V: redb::Value + 'static>(
    txn: &redb::ReadTransaction,
    table: TableDefinition<K, V>,
) -> Result<bool, TablesError> {
    match txn.open_table(table) {
        Ok(table) => Ok(table.iter()?.next().is_some()),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Creates the tables that do not exist yet, and checks and records the
/// format version.
pub(crate) fn create(db: &Database) -> Result<(), TablesError> {
    {
        let txn = db.begin_read()?;
        if has_rows(&txn, LEGACY_LOG)? {
            return Err(TablesError::Legacy(LEGACY_LOG.name().to_owned()));
        }
        if has_rows(&txn, LEGACY_DEDUPE)? {
            return Err(TablesError::Legacy(LEGACY_DEDUPE.name().to_owned()));
        }
    }
    let txn = db.begin_write()?;
    {
        txn.open_table(ENTRIES)?;
        txn.open_table(ACKS)?;
        txn.open_table(DEVICES)?;
        txn.open_table(CHANNELS)?;
        txn.open_table(MEMBERS)?;
        txn.open_table(DEDUPE_SEGMENTS)?;
        let mut meta = txn.open_table(META)?;
        let found = meta.get(FORMAT)?.map(|v| v.value());
        match found {
            Some(found) if found > FORMAT_VERSION => return Err(TablesError::TooNew { found }),
            Some(FORMAT_VERSION) => {}
            // 1 -> 2: nothing to rewrite (see FORMAT_VERSION). Once this
            // build wrote to the store, an older one must refuse it.
            Some(_) | None => {
                meta.insert(FORMAT, FORMAT_VERSION)?;
            }
        }
    }
    txn.commit()?;
    Ok(())
}

/// Calls `f` with every row of `table`.
fn scan<K: redb::Key + 'static, V: redb::Value + 'static>(
    txn: &redb::ReadTransaction,
    table: TableDefinition<K, V>,
    mut f: impl FnMut(K::SelfType<'_>, V::SelfType<'_>) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let failed = |e: redb::Error| StoreError::backend_because("reading the tables", e);
    let table = txn.open_table(table).map_err(|e| failed(e.into()))?;
    for row in table.iter().map_err(|e| failed(e.into()))? {
        let (key, value) = row.map_err(|e| failed(e.into()))?;
        f(key.value(), value.value())?;
    }
    Ok(())
}

fn corrupt(what: &str) -> impl Fn(bachata_proto::IdError) -> StoreError + '_ {
    move |e| StoreError::corrupt_because(format!("a {what} in the tables"), e)
}

/// Reads every table back into the state they hold.
pub(crate) fn load(db: &Database) -> Result<Snapshot, StoreError> {
    let txn = db
        .begin_read()
        .map_err(|e| StoreError::backend_because("reading the tables", e))?;
    let mut entries: HashMap<(String, u64), (Channel, StoredEntry)> = HashMap::new();
    scan(&txn, ENTRIES, |(channel, seq), value| {
        let entry = codec::decode(value).map_err(StoreError::corrupt)?;
        let id = Channel::new(channel).map_err(corrupt("channel"))?;
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
        let channel = Channel::new(channel).map_err(corrupt("channel"))?;
        snapshot.next_seqs.push((channel, next));
        Ok(())
    })?;
    scan(&txn, DEVICES, |(channel, device), last_seen| {
        let channel = Channel::new(channel).map_err(corrupt("channel"))?;
        snapshot
            .devices
            .push((channel, device.to_owned(), last_seen));
        Ok(())
    })?;
    scan(&txn, DEDUPE_SEGMENTS, |_, segment| {
        codec::decode_dedupe(segment, |sender, id, until| {
            snapshot.dedupe.push((sender.to_owned(), id, until));
        })
        .map_err(StoreError::corrupt)
    })?;
    scan(&txn, MEMBERS, |(group, member), ()| {
        let group = GroupId::new(group).map_err(corrupt("group"))?;
        let member = Channel::new(member).map_err(corrupt("group member"))?;
        snapshot.members.push((group, member));
        Ok(())
    })?;
    Ok(snapshot)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_format_version_is_written_and_a_newer_one_refused() {
        let dir = tempfile::tempdir().expect("dir");
        let db = open(dir.path()).expect("open");
        create(&db).expect("tables");
        let version = |db: &Database| {
            db.begin_read()
                .expect("read")
                .open_table(META)
                .expect("meta")
                .get(FORMAT)
                .expect("get")
                .map(|v| v.value())
        };
        assert_eq!(version(&db), Some(FORMAT_VERSION));
        create(&db).expect("opened again");
        let txn = db.begin_write().expect("txn");
        txn.open_table(META)
            .expect("meta")
            .insert(FORMAT, FORMAT_VERSION + 1)
            .expect("insert");
        txn.commit().expect("commit");
        let e = create(&db).expect_err("newer");
        assert!(e.to_string().contains("newer bachata"), "{e}");
    }

    #[test]
    fn a_format_1_store_opens_as_format_2_with_its_entries_never_due() {
        let dir = tempfile::tempdir().expect("dir");
        let db = open(dir.path()).expect("open");
        // A format-1 store as that version wrote it: the entry's bytes
        // spelled out (version 1, a message by "al", id "m1", expires 9).
        let v1_entry: &[u8] = &[
            1, 0, 9, 0, 0, 0, 0, 0, 0, 0, 1, 2, 0, b'a', b'l', 2, 0, b'm', b'1', b'{', b'}',
        ];
        let txn = db.begin_write().expect("txn");
        txn.open_table(META)
            .expect("meta")
            .insert(FORMAT, 1)
            .expect("version");
        txn.open_table(ENTRIES)
            .expect("entries")
            .insert(("bob", 3), v1_entry)
            .expect("entry");
        txn.commit().expect("commit");
        create(&db).expect("migrates");
        let version = db
            .begin_read()
            .expect("read")
            .open_table(META)
            .expect("meta")
            .get(FORMAT)
            .expect("get")
            .map(|v| v.value());
        assert_eq!(version, Some(2));
        let snapshot = load(&db).expect("loads");
        let [(channel, 3, entry)] = snapshot.entries.as_slice() else {
            panic!("one entry: {:?}", snapshot.entries);
        };
        assert_eq!(channel.as_str(), "bob");
        assert_eq!(entry.expires_at, 9);
        assert_eq!(entry.notify_at, None);
        assert_eq!(&entry.payload[..], b"{}");
    }

    #[test]
    fn rows_in_the_tables_of_development_versions_are_refused() {
        const WAL: TableDefinition<u64, &[u8]> = LEGACY_LOG;
        let dir = tempfile::tempdir().expect("dir");
        let db = open(dir.path()).expect("open");
        let txn = db.begin_write().expect("txn");
        txn.open_table(WAL).expect("wal");
        txn.commit().expect("commit");
        create(&db).expect("an empty legacy table is fine");
        let txn = db.begin_write().expect("txn");
        txn.open_table(WAL)
            .expect("wal")
            .insert(0, b"x".as_slice())
            .expect("insert");
        txn.commit().expect("commit");
        let e = create(&db).expect_err("legacy rows");
        assert!(e.to_string().contains("`wal`"), "{e}");
    }
}
