//! The disk's limit: how long an append plus `fdatasync` takes in a
//! directory, the floor under every durable commit (a 100 needs one, the
//! 300 after the receiver's 200 another). Reported beside the W=1 latency
//! figures so they can be read against what the disk allows.

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use serde::Serialize;

#[derive(Debug, Serialize)]
pub(crate) struct Report {
    pub syncs: usize,
    pub bytes_per_append: usize,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

/// Appends `bytes` and syncs, `count` times, in a fresh file under `dir`
/// (removed afterwards).
pub(crate) fn run(dir: &Path, count: usize, bytes: usize) -> anyhow::Result<Report> {
    let scratch = tempfile::tempdir_in(dir)?;
    let mut file = std::fs::File::create(scratch.path().join("probe"))?;
    let block = vec![0x5au8; bytes];
    let mut took = Vec::with_capacity(count);
    for _ in 0..count {
        let started = Instant::now();
        file.write_all(&block)?;
        file.sync_data()?;
        took.push(started.elapsed().as_micros() as u64);
    }
    took.sort_unstable();
    let at = |q: f64| {
        took.get(((took.len() as f64 - 1.0) * q) as usize)
            .copied()
            .unwrap_or(0)
    };
    Ok(Report {
        syncs: count,
        bytes_per_append: bytes,
        p50_us: at(0.5),
        p99_us: at(0.99),
        p999_us: at(0.999),
        max_us: took.last().copied().unwrap_or(0),
    })
}
