//! The canonical digest of a rule set, shared by the writer of version records
//! (`scopegate rules apply`) and every replica's audit line, so the two can be compared.
//!
//! The rule set is every key under the prefix except version records (`changes/`) and
//! revocations (`revoked/`): routes, scopes, issuers, `settings`, `lockdown` and anything
//! unknown. Revocations are left out on purpose: they are written with plain `etcdctl`, expire
//! through leases, and are never undone by a rollback, so they are not part of a version.
//!
//! Digest = SHA-256 over, for each key in byte order: the key's length (u32, big-endian), the
//! key (relative to the prefix) and the SHA-256 of the value's bytes as stored. Hex-encoded.

use serde_json::Value;

use crate::sha256::{sha256, Sha256};

/// Whether a key (relative to the prefix) belongs to the versioned rule set.
pub fn in_rule_set(relative_key: &str) -> bool {
    !super::is_change_record(relative_key) && !relative_key.starts_with("revoked/")
}

/// Lower-case hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// The SHA-256 of a value's bytes, hex.
pub fn value_sha256(value: &[u8]) -> String {
    hex(&sha256(value))
}

/// The digest of a rule set given as (relative key, hex SHA-256 of its value), in any order;
/// keys outside the rule set ([`in_rule_set`]) are skipped.
pub fn rule_set_digest<'a, I>(entries: I) -> String
where
    I: IntoIterator<Item = (&'a str, &'a str)>,
{
    let mut entries: Vec<(&str, &str)> = entries
        .into_iter()
        .filter(|(key, _)| in_rule_set(key))
        .collect();
    entries.sort_unstable();
    let mut hasher = Sha256::new();
    for (key, value_hex) in entries {
        hasher.update((key.len() as u32).to_be_bytes());
        hasher.update(key.as_bytes());
        hasher.update(unhex(value_hex));
    }
    hex(&hasher.finish())
}

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len() / 2)
        .filter_map(|i| u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok())
        .collect()
}

/// Compact JSON with object keys sorted at every level: the bytes `rules apply` stores, so the
/// same rule written twice is byte-identical (and its digest too).
pub fn canonical_json(value: &Value) -> String {
    let mut out = String::new();
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                write_canonical(&map[key], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn digest_is_order_independent_and_skips_records_and_revocations() {
        let a = value_sha256(b"{}");
        let b = value_sha256(b"[]");
        let one = rule_set_digest([("routes/a", a.as_str()), ("scopes/b", b.as_str())]);
        let two = rule_set_digest([
            ("scopes/b", b.as_str()),
            ("changes/00000000000000000001", a.as_str()),
            ("revoked/jti/x", a.as_str()),
            ("routes/a", a.as_str()),
        ]);
        assert_eq!(one, two);
        assert_ne!(one, rule_set_digest([("routes/a", a.as_str())]));
        // Empty: SHA-256 of nothing.
        assert_eq!(
            rule_set_digest([]),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn canonical_json_sorts_keys_at_every_level() {
        let v = json!({"b": 1, "a": {"d": [true, null], "c": "x\"y"}});
        assert_eq!(
            canonical_json(&v),
            r#"{"a":{"c":"x\"y","d":[true,null]},"b":1}"#
        );
    }
}
