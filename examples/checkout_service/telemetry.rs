//! `/metrics` with `prometheus-client` (one registry per service instance, no global
//! recorder, so several instances can run in one process), and request logs through
//! `tower-http`'s `TraceLayer` and `tracing`.

use std::borrow::Cow;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};
use stockledger::StoreStats;

/// The content type of the OpenMetrics text format (Prometheus reads it).
pub(crate) const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The service's latency histograms, in seconds.
#[derive(Debug, Clone)]
pub(crate) struct Metrics {
    /// `POST /reservations` without `wait_ms`: the store's answer (hold or refusal).
    pub(crate) reserve: Histogram,
    /// `POST /reservations/{id}/commit`.
    pub(crate) commit: Histogram,
    /// `POST /reservations` with `wait_ms`: time until a hold, a refusal or the timeout.
    pub(crate) waiting: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        // 50 us to about 26 s, doubling; waits from 1 ms to about 65 s.
        Self {
            reserve: Histogram::new(exponential_buckets(0.000_05, 2.0, 20)),
            commit: Histogram::new(exponential_buckets(0.000_05, 2.0, 20)),
            waiting: Histogram::new(exponential_buckets(0.001, 2.0, 17)),
        }
    }
}

impl Metrics {
    /// The OpenMetrics text of the histograms and of the store's statistics (`None`: the
    /// store could not be read; the histograms are still shown), each series labelled
    /// `store="<strategy or redis>"`.
    pub(crate) fn render(&self, store: &'static str, stats: Option<&StoreStats>) -> String {
        let labels = [(Cow::Borrowed("store"), Cow::Borrowed(store))];
        let mut registry = Registry::with_prefix_and_labels("stockledger", labels.into_iter());
        let histograms = [
            (
                "reserve",
                "Latency of holds that do not wait",
                &self.reserve,
            ),
            ("commit", "Latency of commits", &self.commit),
            (
                "waiting",
                "Latency of holds that wait for stock (wait_ms)",
                &self.waiting,
            ),
        ];
        for (name, help, histogram) in histograms {
            registry.register_with_unit(name, help, Unit::Seconds, histogram.clone());
        }
        if let Some(stats) = stats {
            let counters = [
                ("reserves", "Holds opened", stats.reserves),
                ("commits", "Holds committed", stats.commits),
                ("releases", "Holds released", stats.releases),
                ("expirations", "Holds expired", stats.expirations),
                ("extensions", "Holds extended", stats.extensions),
                (
                    "replays",
                    "Holds answered from the store's idempotency table",
                    stats.replays,
                ),
                (
                    "refusals",
                    "Requests refused by a SKU's counts",
                    stats.refusals,
                ),
                (
                    "cas_retries",
                    "Compare-and-swap attempts lost",
                    stats.cas_retries,
                ),
                (
                    "contended",
                    "SKU updates that found the SKU busy",
                    stats.contended,
                ),
                ("waits", "Waiting lines that had to queue", stats.waits),
                (
                    "timeouts",
                    "Blocking waits that ran out of time",
                    stats.timeouts,
                ),
            ];
            for (name, help, value) in counters {
                registry.register(name, help, ConstCounter::new(value));
            }
        }
        let mut text = String::new();
        encode(&mut text, &registry).expect("writing to a String cannot fail");
        text
    }
}

/// Logs to stderr through `tracing-subscriber`: `RUST_LOG` when set, else `info` (one line
/// per request from the `TraceLayer`).
pub(crate) fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_histograms_and_the_store_counters_are_rendered() {
        let metrics = Metrics::default();
        metrics.reserve.observe(0.000_2);
        metrics.commit.observe(0.000_3);
        let mut stats = StoreStats::default();
        stats.expirations = 5;
        let text = metrics.render("monitor", Some(&stats));
        for series in [
            "stockledger_reserve_seconds_count{store=\"monitor\"} 1",
            "stockledger_commit_seconds_count{store=\"monitor\"} 1",
            "stockledger_waiting_seconds_count{store=\"monitor\"} 0",
            "stockledger_expirations_total{store=\"monitor\"} 5",
        ] {
            assert!(text.contains(series), "{series} not in\n{text}");
        }
        assert!(text.ends_with("# EOF\n"));
        // Without the store's statistics, the histograms alone.
        assert!(!metrics.render("redis", None).contains("expirations"));
    }
}
