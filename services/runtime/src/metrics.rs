//! Prometheus metrics, one registry per service instance.
//!
//! Naming scheme: `chatpipe_<role>_<what>[_<unit>]`, counters end in `_total`
//! (added by the encoder), durations in seconds. Consumer groups label their
//! metrics with `group`; rejections and errors with `reason` or `code`.

use std::sync::Arc;

use prometheus_client::encoding::text::encode;
use prometheus_client::registry::Registry;

pub use prometheus_client::encoding::EncodeLabelSet;
pub use prometheus_client::metrics::counter::Counter;
pub use prometheus_client::metrics::family::Family;
pub use prometheus_client::metrics::gauge::Gauge;
pub use prometheus_client::metrics::histogram::Histogram;

/// Latency buckets from 0.5 ms to 10 s, for request and write latencies.
pub fn latency_histogram() -> Histogram {
    Histogram::new([
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ])
}

/// Size buckets (1 … 16384), for batch sizes.
pub fn size_histogram() -> Histogram {
    Histogram::new((0..15).map(|power| f64::from(1u32 << power)))
}

/// A family of counters labelled by one `reason` string.
pub type CounterByReason = Family<ReasonLabel, Counter>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

impl ReasonLabel {
    pub fn new(reason: &str) -> Self {
        Self {
            reason: reason.to_owned(),
        }
    }
}

/// Reads the current value of one labelled counter (for tests and logs).
pub fn reason_count(family: &CounterByReason, reason: &str) -> u64 {
    family.get_or_create(&ReasonLabel::new(reason)).get()
}

/// A finished registry, shared with the `/metrics` handler.
#[derive(Clone)]
pub struct MetricsRegistry(Arc<Registry>);

impl std::fmt::Debug for MetricsRegistry {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("MetricsRegistry")
    }
}

impl MetricsRegistry {
    pub fn new(registry: Registry) -> Self {
        Self(Arc::new(registry))
    }

    /// The registry in the Prometheus/OpenMetrics text format.
    pub fn render(&self) -> String {
        let mut text = String::new();
        encode(&mut text, &self.0).expect("writing to a String cannot fail");
        text
    }
}
