//! The write-ahead log's files: append-only, checksummed records, each
//! append synced with one `fdatasync`.
//!
//! # Why not a redb table
//! The log used to be a redb table, a row per group commit. A redb commit
//! costs about 0.55 ms here (page writes, a header update, its sync) where
//! an append and `fdatasync` cost 0.15 ms (`bachata-bench fsync`), and at
//! low load every commit is on some message's path: two of them sit
//! between a send and its 300. The tables still get everything, at each
//! checkpoint, in one redb transaction.
//!
//! # Format
//! A file `wal-<generation>.log` is a sequence of records:
//! `u32 LE length`, `u32 LE CRC-32 of the payload`, the payload (one group
//! commit's changes, see `codec::encode_changes`). A record is appended
//! only after the previous one was synced, so a crash can only leave the
//! *last* record incomplete; reading stops at the first record that is
//! short or fails its checksum, and that record was never acknowledged.
//!
//! # Generations
//! Each checkpoint starts a new file; the checkpoint's redb transaction
//! records the first generation it does not cover (`meta` table, see
//! `wal`), and older files are deleted after it commits. Recovery replays
//! the files from that generation on and ignores (then deletes) older ones,
//! so a crash at any step of a checkpoint loses nothing and replays nothing
//! twice that matters (every change is idempotent when folded again).

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

const HEADER: usize = 8;

/// The largest record accepted when reading: a group commit of 4096
/// requests is far below it, and a corrupt length must not make recovery
/// allocate gigabytes.
const MAX_RECORD: usize = 1 << 30;

/// The file of generation `generation` in `dir`.
pub(crate) fn path(dir: &Path, generation: u64) -> PathBuf {
    dir.join(format!("wal-{generation:016x}.log"))
}

/// The generations of the log files in `dir`, in order.
pub(crate) fn generations(dir: &Path) -> io::Result<Vec<u64>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(hex) = name
            .strip_prefix("wal-")
            .and_then(|rest| rest.strip_suffix(".log"))
            && let Ok(generation) = u64::from_str_radix(hex, 16)
        {
            found.push(generation);
        }
    }
    found.sort_unstable();
    Ok(found)
}

/// A log file open for appending.
#[derive(Debug)]
pub(crate) struct LogFile {
    file: File,
    generation: u64,
    /// Bytes of complete, synced records.
    len: u64,
    buf: Vec<u8>,
}

impl LogFile {
    /// Creates the (empty) file of `generation` and makes its name durable,
    /// so that records synced to it survive a crash.
    pub(crate) fn create(dir: &Path, generation: u64) -> io::Result<Self> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(path(dir, generation))?;
        sync_dir(dir)?;
        Ok(LogFile {
            file,
            generation,
            len: 0,
            buf: Vec::new(),
        })
    }

    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }

    /// Appends one record and syncs it. On error the file is cut back to
    /// its last complete record (a half-written record in the middle would
    /// hide the ones after it from recovery).
    pub(crate) fn append(&mut self, payload: &[u8]) -> io::Result<()> {
        let len = u32::try_from(payload.len())
            .ok()
            .filter(|len| *len as usize <= MAX_RECORD)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "log record too large"))?;
        self.buf.clear();
        self.buf.extend_from_slice(&len.to_le_bytes());
        self.buf
            .extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
        self.buf.extend_from_slice(payload);
        let written = self
            .file
            .write_all(&self.buf)
            .and_then(|()| self.file.sync_data());
        match written {
            Ok(()) => {
                self.len += self.buf.len() as u64;
                Ok(())
            }
            Err(e) => {
                // Best effort: if this fails too, recovery still stops at
                // the broken record, and the caller reloads from disk and
                // starts a new file.
                let _ = self.file.set_len(self.len);
                Err(e)
            }
        }
    }
}

/// Calls `f` with each complete record of the file, in order. Returns the
/// number of records read; a torn or corrupt tail ends the reading.
pub(crate) fn read(
    path: &Path,
    mut f: impl FnMut(&[u8]) -> Result<(), String>,
) -> Result<u64, String> {
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|mut file| file.read_to_end(&mut bytes))
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut rest = bytes.as_slice();
    let mut records = 0;
    while rest.len() >= HEADER {
        let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let crc = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]);
        let Some(payload) = rest.get(HEADER..HEADER + len) else {
            break;
        };
        if len > MAX_RECORD || crc32fast::hash(payload) != crc {
            break;
        }
        f(payload)?;
        records += 1;
        rest = &rest[HEADER + len..];
    }
    Ok(records)
}

/// Makes the creation (or removal) of files in `dir` durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(path: &Path) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        read(path, |r| {
            out.push(r.to_vec());
            Ok(())
        })
        .expect("read");
        out
    }

    #[test]
    fn records_come_back_in_order() {
        let dir = tempfile::tempdir().expect("dir");
        let mut log = LogFile::create(dir.path(), 7).expect("create");
        log.append(b"one").expect("append");
        log.append(b"").expect("append");
        log.append(b"three").expect("append");
        assert_eq!(
            records(&path(dir.path(), 7)),
            vec![b"one".to_vec(), Vec::new(), b"three".to_vec()]
        );
        assert_eq!(generations(dir.path()).expect("list"), vec![7]);
    }

    #[test]
    fn a_torn_or_corrupt_tail_ends_the_log() {
        let dir = tempfile::tempdir().expect("dir");
        let mut log = LogFile::create(dir.path(), 1).expect("create");
        log.append(b"kept").expect("append");
        log.append(b"last record").expect("append");
        drop(log);
        let file = path(dir.path(), 1);
        let full = std::fs::read(&file).expect("bytes");
        // Every cut inside the last record leaves only the first.
        let first = HEADER + 4;
        for cut in first..full.len() {
            std::fs::write(&file, &full[..cut]).expect("write");
            assert_eq!(records(&file), vec![b"kept".to_vec()], "cut at {cut}");
        }
        // A flipped payload byte fails the checksum.
        let mut flipped = full.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        std::fs::write(&file, &flipped).expect("write");
        assert_eq!(records(&file), vec![b"kept".to_vec()]);
        // A huge length does not allocate; it ends the log.
        let mut huge = full[..first].to_vec();
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        huge.extend_from_slice(&[0; 4]);
        std::fs::write(&file, &huge).expect("write");
        assert_eq!(records(&file), vec![b"kept".to_vec()]);
    }

    #[test]
    fn generations_ignore_other_files() {
        let dir = tempfile::tempdir().expect("dir");
        LogFile::create(dir.path(), 3).expect("create");
        LogFile::create(dir.path(), 0x10).expect("create");
        std::fs::write(dir.path().join("wal-zz.log"), b"").expect("write");
        std::fs::write(dir.path().join("bachata.redb"), b"").expect("write");
        assert_eq!(generations(dir.path()).expect("list"), vec![3, 0x10]);
    }
}
