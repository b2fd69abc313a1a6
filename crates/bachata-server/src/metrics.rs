//! `GET /metrics` in the Prometheus text format.
//!
//! We use `prometheus-client` with a registry per server instance instead of
//! a process-global recorder: tests (and embedders) run several servers in
//! one process, and each must report only its own numbers. Counters that the
//! center keeps as atomics are read at scrape time by a collector.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bachata_core::MessagesCenter;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Metrics of one server.
#[derive(Debug)]
pub(crate) struct Metrics {
    registry: Registry,
    /// Durable commits of the store, in seconds.
    pub commit_seconds: Histogram,
    /// Connections closed as slow consumers.
    pub slow_consumers: Counter,
    /// Connections closed for a bad frame (1007, 1009) or too many frames
    /// that could not be read (1008).
    pub closed_bad_frames: Counter,
    /// Undelivered-message webhook POSTs answered with a 2xx.
    pub webhook_sent: Counter,
    /// Undelivered-message webhook POSTs given up (see `webhook.rs`).
    pub webhook_failed: Counter,
    /// Open TCP connections (HTTP and WebSocket), each holding a slot of
    /// `--max-connections`.
    pub open_connections: Gauge,
    /// Connections that found every slot taken (503 or closed).
    pub refused_connections: Counter,
}

/// Metrics of one application hook (`Metrics::hook`; used by `hooks.rs`).
#[derive(Debug, Clone)]
pub(crate) struct HookMetrics {
    pub(crate) calls: Counter,
    pub(crate) failures: Counter,
    pub(crate) busy: Counter,
    pub(crate) seconds: Histogram,
}

#[derive(Debug)]
struct CenterCollector(Arc<MessagesCenter>);

fn counter(encoder: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> std::fmt::Result {
    let c = ConstCounter::new(v);
    c.encode(encoder.encode_descriptor(name, help, None, c.metric_type())?)
}

fn gauge(encoder: &mut DescriptorEncoder, name: &str, help: &str, v: i64) -> std::fmt::Result {
    let g = ConstGauge::new(v);
    g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)
}

impl Collector for CenterCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let center = &self.0;
        let stats = center.stats();
        let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        gauge(
            &mut encoder,
            "bachata_connections",
            "Open WebSocket connections",
            center.hub().connections() as i64,
        )?;
        counter(
            &mut encoder,
            "bachata_messages_received",
            "Data messages accepted (stored, or sent live when without id)",
            load(&stats.received),
        )?;
        counter(
            &mut encoder,
            "bachata_messages_rejected",
            "Data messages refused with a 400",
            load(&stats.rejected),
        )?;
        counter(
            &mut encoder,
            "bachata_messages_delivered",
            "Log entries (messages and 300 receipts) written to connections",
            load(&stats.delivered),
        )?;
        counter(
            &mut encoder,
            "bachata_messages_acked",
            "200s that acked a pending message",
            load(&stats.acked),
        )?;
        counter(
            &mut encoder,
            "bachata_session_restarts",
            "Connections that started over from the head of their log: a new epoch, or a \
             Redis that restarted and may have lost writes",
            load(&stats.restarts),
        )?;
        counter(
            &mut encoder,
            "bachata_live_messages_dropped",
            "Messages without id dropped because a connection's queue was full",
            load(&center.hub().live_dropped),
        )?;
        if let Some(bytes) = center.store().retained_bytes() {
            gauge(
                &mut encoder,
                "bachata_retained_bytes",
                "Payload bytes of pending messages and receipts the store keeps (bounded by \
                 --max-retained-bytes; on Redis as of the last expiry sweep)",
                i64::try_from(bytes).unwrap_or(i64::MAX),
            )?;
        }
        if let Some(channels) = center.store().channel_count() {
            gauge(
                &mut encoder,
                "bachata_channels",
                "Channels the store keeps state for (entries, devices or a seq counter); \
                 forgotten after --forget-after without use",
                i64::try_from(channels).unwrap_or(i64::MAX),
            )?;
        }
        if let Some(pending) = center.store().pending_total() {
            gauge(
                &mut encoder,
                "bachata_pending_messages",
                "Messages not yet acked by any device of their channel",
                pending as i64,
            )?;
        }
        Ok(())
    }
}

impl Metrics {
    pub(crate) fn new() -> Self {
        let mut registry = Registry::default();
        let commit_seconds = Histogram::new(exponential_buckets(0.000_05, 2.0, 16));
        registry.register(
            "bachata_store_commit_seconds",
            "Duration of the store's durable commits",
            commit_seconds.clone(),
        );
        let slow_consumers = Counter::default();
        registry.register(
            "bachata_slow_consumers",
            "Connections closed with 4008 because their writes stayed blocked",
            slow_consumers.clone(),
        );
        let closed_bad_frames = Counter::default();
        registry.register(
            "bachata_bad_frame_closes",
            "Connections closed with 1007 or 1009 for a bad frame, or 1008 for too many unreadable ones",
            closed_bad_frames.clone(),
        );
        let webhook_sent = Counter::default();
        registry.register(
            "bachata_webhook_sent",
            "Undelivered-message webhook POSTs answered with a 2xx",
            webhook_sent.clone(),
        );
        let webhook_failed = Counter::default();
        registry.register(
            "bachata_webhook_failed",
            "Undelivered-message webhook POSTs given up: refused (4xx), retries exhausted, \
             or dropped because the webhook queue was full",
            webhook_failed.clone(),
        );
        let open_connections = Gauge::default();
        registry.register(
            "bachata_tcp_connections",
            "Open TCP connections (HTTP and WebSocket), each holding a slot of --max-connections",
            open_connections.clone(),
        );
        let refused_connections = Counter::default();
        registry.register(
            "bachata_connections_refused",
            "TCP connections that found every slot of --max-connections taken (503 or closed)",
            refused_connections.clone(),
        );
        Metrics {
            open_connections,
            refused_connections,
            registry,
            commit_seconds,
            slow_consumers,
            closed_bad_frames,
            webhook_sent,
            webhook_failed,
        }
    }

    /// The metrics of the application hook `name` (`connect`, `route`),
    /// registered as `bachata_hook_<name>_...`.
    pub(crate) fn hook(&mut self, name: &str) -> HookMetrics {
        let metrics = HookMetrics {
            calls: Counter::default(),
            failures: Counter::default(),
            busy: Counter::default(),
            seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 14)),
        };
        self.registry.register(
            format!("bachata_hook_{name}_calls"),
            format!("Calls of the {name} hook"),
            metrics.calls.clone(),
        );
        self.registry.register(
            format!("bachata_hook_{name}_failures"),
            format!("Calls of the {name} hook that got no answer (timeout, connection)"),
            metrics.failures.clone(),
        );
        self.registry.register(
            format!("bachata_hook_{name}_busy"),
            format!("Calls of the {name} hook refused because --hook-concurrency were in flight"),
            metrics.busy.clone(),
        );
        self.registry.register(
            format!("bachata_hook_{name}_seconds"),
            format!("Time the {name} hook took to answer, in seconds"),
            metrics.seconds.clone(),
        );
        metrics
    }

    /// Adds the center's counters; called once the center exists.
    pub(crate) fn watch(&mut self, center: Arc<MessagesCenter>) {
        self.registry
            .register_collector(Box::new(CenterCollector(center)));
    }

    /// A callback for the store to report each commit.
    pub(crate) fn commit_observer(&self) -> impl Fn(Duration, usize) + Send + Sync + 'static {
        let histogram = self.commit_seconds.clone();
        move |took, _requests| histogram.observe(took.as_secs_f64())
    }

    pub(crate) fn render(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
