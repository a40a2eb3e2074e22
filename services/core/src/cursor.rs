//! The opaque cursor codec every paginated route shares (search, the
//! inbox): a cursor is a small JSON document in unpadded base64url, so it
//! travels in a query string as is, and clients treat it as opaque. Each
//! route puts its own versioned fields in the document; this module only
//! encodes, bounds and decodes. Pure.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Encodes `wire` (a route's cursor document) as an opaque cursor.
pub fn encode_cursor<T: Serialize>(wire: &T) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(wire).expect("a cursor document serializes"))
}

/// Decodes a cursor made by [`encode_cursor`]: `None` for anything longer
/// than `max_bytes`, not base64url (padding is tolerated) or not a `T`.
pub fn decode_cursor<T: DeserializeOwned>(raw: &str, max_bytes: usize) -> Option<T> {
    if raw.len() > max_bytes {
        return None;
    }
    let bytes = URL_SAFE_NO_PAD.decode(raw.trim_end_matches('=')).ok()?;
    serde_json::from_slice(&bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Wire {
        v: u32,
        a: u64,
    }

    #[test]
    fn cursors_round_trip_and_garbage_is_none() {
        let wire = Wire { v: 1, a: 42 };
        let encoded = encode_cursor(&wire);
        assert!(
            encoded
                .bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_')
        );
        assert_eq!(decode_cursor::<Wire>(&encoded, 512), Some(wire));
        assert_eq!(
            decode_cursor::<Wire>(&format!("{encoded}=="), 512).map(|w| w.a),
            Some(42)
        );
        assert_eq!(decode_cursor::<Wire>(&encoded, 4), None, "too long");
        assert_eq!(decode_cursor::<Wire>("not a cursor!", 512), None);
        assert_eq!(decode_cursor::<Wire>(&encode_cursor(&"text"), 512), None);
    }
}
