//! The Grafana dashboard in `topology/grafana/` queries only metrics that
//! chatpipe's services really register (so a renamed metric cannot leave a
//! silently empty panel behind).

use std::collections::BTreeSet;

use chatpipe_runtime::metrics::{MetricsRegistry, ReasonLabel};
use prometheus_client::registry::Registry;

/// Every metric name the services expose, as rendered on `/metrics`.
fn served_metric_names() -> BTreeSet<String> {
    let mut registry = Registry::default();
    let edge = chatpipe_edge::EdgeMetrics::new();
    edge.register(&mut registry);
    let fanout = chatpipe_fanout::FanoutMetrics::new();
    fanout.register(&mut registry);
    let persist = chatpipe_persist::PersistMetrics::new();
    persist.register(registry.sub_registry_with_prefix("chatpipe_persist"));
    let index = chatpipe_index::IndexMetrics::new();
    index.register(&mut registry);
    let search = chatpipe_search::SearchMetrics::default();
    search.register(registry.sub_registry_with_prefix("chatpipe_api"));
    // Labelled families render only once they hold a series.
    for family in [
        &edge.connections_rejected,
        &edge.auth_failures,
        &edge.frames_rejected,
    ] {
        family.get_or_create(&ReasonLabel::new("example")).inc();
    }
    fanout
        .pushes
        .get_or_create(&chatpipe_fanout::metrics::OutcomeLabel {
            outcome: "ok".into(),
        })
        .inc();
    let text = MetricsRegistry::new(registry).render();
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .filter_map(|line| line.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

#[test]
fn every_dashboard_query_names_a_served_metric() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../topology/grafana/chatpipe-dashboard.json"
    );
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let served = served_metric_names();
    let mut queried = BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap();
            for word in expr
                .split(|character: char| !(character.is_ascii_alphanumeric() || character == '_'))
            {
                if word.starts_with("chatpipe_") {
                    queried.insert(word.to_owned());
                }
            }
        }
    }
    assert!(
        queried.len() >= 20,
        "the dashboard queries {} metrics",
        queried.len()
    );
    let missing: Vec<&String> = queried
        .iter()
        .filter(|name| !served.contains(*name))
        .collect();
    assert!(
        missing.is_empty(),
        "queried but not served: {missing:?}\nserved: {served:?}"
    );
}
