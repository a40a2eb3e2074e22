//! Wall-clock helpers. The only place in the crate that reads a clock, kept
//! tiny so that everything else stays pure and testable with explicit times.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch, as used in every record's `ts`.
pub fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as u64)
        .unwrap_or(0)
}
