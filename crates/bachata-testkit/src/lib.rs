//! Dev-only helpers for bachata's tests.
//!
//! - [`conformance`]: the `Store` conformance suite that every backend runs,
//!   usually through [`store_conformance_tests!`].

pub mod client;
pub mod conformance;
pub mod http;
pub mod raw;
pub mod redis;
pub mod redis_cluster;
