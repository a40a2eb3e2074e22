//! Reading Prometheus text from the services' `/metrics`.

use std::time::Duration;

/// Sum of every sample of `name` (all label sets), if present.
pub fn sum_of(text: &str, name: &str) -> Option<f64> {
    let mut found = None;
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        if !(rest.starts_with(' ') || rest.starts_with('{')) {
            continue;
        }
        let value = rest
            .rsplit(' ')
            .next()
            .and_then(|value| value.parse::<f64>().ok());
        if let Some(value) = value {
            *found.get_or_insert(0.0) += value;
        }
    }
    found
}

/// Every sample whose name starts with `prefix` and ends with `suffix`,
/// summed per metric name (e.g. `chatpipe_*_consumer_lag_records`).
pub fn matching(text: &str, prefix: &str, suffix: &str) -> Vec<(String, f64)> {
    let mut sums: Vec<(String, f64)> = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') || !line.starts_with(prefix) {
            continue;
        }
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let name = &line[..name_end];
        if !name.ends_with(suffix) {
            continue;
        }
        let Some(value) = line
            .rsplit(' ')
            .next()
            .and_then(|value| value.parse::<f64>().ok())
        else {
            continue;
        };
        match sums.iter_mut().find(|(known, _)| known == name) {
            Some(entry) => entry.1 += value,
            None => sums.push((name.to_owned(), value)),
        }
    }
    sums
}

/// Fetches a `/metrics` page (None when the service does not answer).
pub async fn scrape(client: &reqwest::Client, url: &str) -> Option<String> {
    let response = client
        .get(url)
        .timeout(Duration::from_secs(3))
        .send()
        .await
        .ok()?;
    if !response.status().is_success() {
        return None;
    }
    response.text().await.ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_samples() {
        let text = "# HELP x\nchatpipe_fanout_consumer_lag_records 12\nchatpipe_fanout_route_table_users 3\nchatpipe_edge_frames_rejected_total{reason=\"a\"} 2\nchatpipe_edge_frames_rejected_total{reason=\"b\"} 3\n";
        assert_eq!(
            sum_of(text, "chatpipe_fanout_consumer_lag_records"),
            Some(12.0)
        );
        assert_eq!(
            sum_of(text, "chatpipe_edge_frames_rejected_total"),
            Some(5.0)
        );
        assert_eq!(sum_of(text, "chatpipe_fanout_route_table"), None);
        assert_eq!(
            matching(text, "chatpipe_", "_consumer_lag_records"),
            vec![("chatpipe_fanout_consumer_lag_records".to_owned(), 12.0)]
        );
    }
}
