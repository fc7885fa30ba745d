//! Small wire helpers shared by the resource modules: tolerant id decoding, path building.

use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

/// Decodes an id that may arrive as a JSON string or a JSON number, keeping a number's exact
/// digits (session ids exceed 2^53, so they must never pass through `f64`). `null` gives `None`.
///
/// The raw value is owned (`Box`), not borrowed: a borrowed `&RawValue` only works with
/// `serde_json::from_str`/`from_slice`, so a stored `Session` could not be read back with
/// `from_reader` or `from_value`.
pub(crate) fn opt_id<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<String>, D::Error> {
    let raw: Option<Box<RawValue>> = Option::deserialize(deserializer)?;
    Ok(raw.and_then(|raw| id_from_raw(raw.get())))
}

/// Like [`opt_id`] for a required id.
pub(crate) fn id<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    let raw: Box<RawValue> = Deserialize::deserialize(deserializer)?;
    id_from_raw(raw.get())
        .ok_or_else(|| serde::de::Error::custom("expected an id (a string or a number)"))
}

pub(crate) fn id_from_raw(text: &str) -> Option<String> {
    let text = text.trim();
    if text.starts_with('"') {
        serde_json::from_str::<String>(text).ok()
    } else if !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'-' | b'+' | b'.' | b'e' | b'E'))
    {
        Some(text.to_string())
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct Holder {
        #[serde(default, deserialize_with = "opt_id")]
        id: Option<String>,
    }

    #[test]
    fn ids_keep_their_digits() {
        let big: Holder = serde_json::from_str(r#"{"id": 7301234567890123456789}"#).unwrap();
        assert_eq!(big.id.as_deref(), Some("7301234567890123456789"));
        let string: Holder = serde_json::from_str(r#"{"id": "7301234567890123456"}"#).unwrap();
        assert_eq!(string.id.as_deref(), Some("7301234567890123456"));
        let null: Holder = serde_json::from_str(r#"{"id": null}"#).unwrap();
        assert_eq!(null.id, None);
        let object: Holder = serde_json::from_str(r#"{"id": {"x":1}}"#).unwrap();
        assert_eq!(object.id, None);
    }
}
