//! The CPU regression check of `pairs` (`--cpu-baseline`,
//! `--write-cpu-baseline`): the server's CPU seconds per 100k messages as a
//! ratio to the null relay's in the same round.
//!
//! # Why a ratio
//! CPU time per message moves with the machine and with whatever else runs
//! on it; the relay in the same round pays the same frames, syscalls and
//! scheduling, so the ratio keeps what bachata adds. It still moves between
//! runs, so the check takes the median of several rounds and allows a
//! tolerance (30% by default, issue 16).
//!
//! # Why the load is in the file
//! The ratio depends on the load (pairs, window, payload, store): a baseline
//! measured under another load would pass or fail for nothing. A mismatch is
//! an error that names both.

use std::fmt;
use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::Measured;

/// The load a ratio was measured under.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Load {
    pub store: String,
    pub pairs: usize,
    pub window: usize,
    pub payload: usize,
    pub duration_ms: u64,
    pub rounds: u32,
}

/// What `--write-cpu-baseline` writes and `--cpu-baseline` reads.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Baseline {
    /// What the file is, for whoever opens it.
    pub about: String,
    pub load: Load,
    /// The median of `rounds`.
    pub cpu_ratio: f64,
    pub rounds: Vec<f64>,
}

impl Baseline {
    pub(crate) fn new(load: Load, cpu_ratio: f64, rounds: Vec<f64>) -> Self {
        Baseline {
            about: "bachata-bench pairs --cpu-baseline: the server's CPU seconds per 100k \
                    messages divided by the null relay's in the same round (median over the \
                    rounds); written by --write-cpu-baseline (docs/performance.md, \
                    \"CPU regression check\")"
                .into(),
            load,
            cpu_ratio,
            rounds,
        }
    }

    pub(crate) fn read(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the CPU baseline {}", path.display()))?;
        serde_json::from_str(&text)
            .with_context(|| format!("parsing the CPU baseline {}", path.display()))
    }

    pub(crate) fn write(&self, path: &Path) -> anyhow::Result<()> {
        let text = serde_json::to_string_pretty(self)? + "\n";
        std::fs::write(path, text)
            .with_context(|| format!("writing the CPU baseline {}", path.display()))
    }

    /// Compares a run's median ratio with this baseline. A different load
    /// is an error, not a verdict.
    pub(crate) fn check(&self, load: &Load, ratio: f64, tolerance: f64) -> anyhow::Result<Verdict> {
        if *load != self.load {
            anyhow::bail!(
                "the CPU baseline was measured under {:?}, this run is {:?}: run with the \
                 baseline's load, or write a new baseline (--write-cpu-baseline)",
                self.load,
                load
            );
        }
        Ok(Verdict {
            ratio,
            baseline: self.cpu_ratio,
            limit: self.cpu_ratio * (1.0 + tolerance),
        })
    }
}

/// The outcome of [`Baseline::check`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Verdict {
    ratio: f64,
    baseline: f64,
    limit: f64,
}

impl Verdict {
    pub(crate) fn passed(&self) -> bool {
        self.ratio <= self.limit
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Verdict {
            ratio,
            baseline,
            limit,
        } = *self;
        if !self.passed() {
            return write!(
                f,
                "cpu check: FAILED: ratio {ratio:.2} is above {limit:.2} (baseline {baseline:.2}): \
                 the server spends more CPU per message than before"
            );
        }
        write!(
            f,
            "cpu check: ok: ratio {ratio:.2} within {limit:.2} (baseline {baseline:.2})"
        )?;
        if ratio < baseline * 0.7 {
            write!(
                f,
                "; well below the baseline: lower it (--write-cpu-baseline) to keep the gain"
            )?;
        }
        Ok(())
    }
}

/// One round's ratio: the server's CPU per 100k over the relay's, when
/// both were read.
pub(crate) fn ratio(null: &Measured, server: &Measured) -> Option<f64> {
    let relay = null.cpu_seconds_per_100k.filter(|c| *c > 0.0)?;
    Some(server.cpu_seconds_per_100k? / relay)
}

/// The median (the mean of the middle two for an even count).
pub(crate) fn median(values: &[f64]) -> Option<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(sorted[n / 2]),
        _ => Some((sorted[n / 2 - 1] + sorted[n / 2]) / 2.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load() -> Load {
        Load {
            store: "embedded".into(),
            pairs: 20,
            window: 32,
            payload: 100,
            duration_ms: 3000,
            rounds: 3,
        }
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
    }

    #[test]
    fn a_rise_past_the_tolerance_fails_and_one_within_passes() {
        let base = Baseline::new(load(), 4.0, vec![4.0]);
        let within = base.check(&load(), 5.19, 0.30).expect("same load");
        assert!(within.passed(), "{within}");
        let above = base.check(&load(), 5.21, 0.30).expect("same load");
        assert!(!above.passed(), "{above}");
        assert!(above.to_string().contains("FAILED"));
    }

    #[test]
    fn another_load_is_an_error_not_a_verdict() {
        let base = Baseline::new(load(), 4.0, vec![4.0]);
        let other = Load {
            window: 64,
            ..load()
        };
        let err = base.check(&other, 4.0, 0.30).expect_err("different load");
        assert!(err.to_string().contains("write a new baseline"), "{err}");
    }

    #[test]
    fn the_baseline_file_round_trips() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("b.json");
        Baseline::new(load(), 4.25, vec![4.0, 4.25, 4.5])
            .write(&path)
            .expect("write");
        let back = Baseline::read(&path).expect("read");
        assert_eq!(back.load, load());
        assert_eq!(back.cpu_ratio, 4.25);
    }
}
