//! The load generator's message bodies (the frames themselves are
//! `chatpipe_client::frames`).
//!
//! Message bodies written by the load generator carry the sender's send
//! time: `t<unix µs> q<token> <padding>`, so any worker process can compute
//! send → deliver latency, and `q<token>` is a unique word to search for.

/// A message body: send time, a unique search token, padding up to `bytes`.
pub fn message_body(sent_unix_us: u64, token: &str, bytes: usize) -> String {
    let mut body = format!("t{sent_unix_us} q{token} lg");
    const FILLER: &str = " the quick brown fox jumps over the lazy dog";
    while body.len() < bytes {
        let missing = bytes - body.len();
        body.push_str(&FILLER[..missing.min(FILLER.len())]);
    }
    body
}

/// The send time written by [`message_body`] (or by a baseline sender at
/// the start of a payload), if any.
pub fn sent_time_us(body: &str) -> Option<u64> {
    let rest = body.strip_prefix('t')?;
    let end = rest
        .find(|character: char| !character.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// The search token written by [`message_body`] (without its `q`).
pub fn search_token(body: &str) -> Option<&str> {
    body.split(' ').find_map(|word| word.strip_prefix('q'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_carry_their_send_time_and_search_token() {
        let body = message_body(1_700_000_000_123_456, "abc12", 100);
        assert_eq!(body.len(), 100);
        assert_eq!(sent_time_us(&body), Some(1_700_000_000_123_456));
        assert_eq!(search_token(&body), Some("abc12"));
        assert_eq!(sent_time_us("no time"), None);
    }
}
