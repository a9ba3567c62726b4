//! Version records: `<prefix>changes/<seq>` (20-digit, zero-padded, so keys sort by sequence),
//! written in the same transaction as the change they describe, so the record's etcd revision is
//! the version's revision. Each holds who, why, when, what changed (with value digests), the
//! rule-set digest before and after, and `prev`: the SHA-256 of the previous record's stored
//! bytes. The records form a hash chain; a record is written once and never modified.

use etcd_client::KeyValue;
use serde::{Deserialize, Serialize};

use crate::rules::digest::value_sha256;
use crate::rules::CHANGES_PATH;

/// What kind of command wrote a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordKind {
    Apply,
    Rollback,
    Lockdown,
    RevocationsGc,
}

/// What happened to one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Added,
    Changed,
    Deleted,
}

impl Action {
    /// `+`, `~` or `-`, for human output.
    pub fn sign(self) -> char {
        match self {
            Action::Added => '+',
            Action::Changed => '~',
            Action::Deleted => '-',
        }
    }
}

/// One key a version changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyChange {
    pub key: String,
    pub action: Action,
    /// SHA-256 of the new value (absent for a delete).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_sha256: Option<String>,
}

/// A version record as stored (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionRecord {
    pub seq: u64,
    pub kind: RecordKind,
    pub author: String,
    /// The etcd user the change was written as, when etcd authentication is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etcd_user: Option<String>,
    pub message: String,
    /// RFC 3339, UTC.
    pub time: String,
    /// The revision the change was computed against.
    pub base_revision: i64,
    /// The rule-set digest at `base_revision`.
    pub base_digest: String,
    /// For a rollback: the revision restored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_to: Option<i64>,
    pub changes: Vec<KeyChange>,
    /// The rule-set digest after the change.
    pub digest: String,
    /// SHA-256 of the previous record's stored bytes (`None` for the first record).
    pub prev: Option<String>,
}

/// The key (relative to the prefix) of record `seq`.
pub fn record_key(seq: u64) -> String {
    format!("{CHANGES_PATH}{seq:020}")
}

/// The sequence number of a record key, if it is one.
pub fn parse_record_key(relative: &str) -> Option<u64> {
    let digits = relative.strip_prefix(CHANGES_PATH)?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

/// A record as etcd holds it: the raw bytes (what the chain hashes) and its revisions.
#[derive(Debug, Clone)]
pub struct StoredRecord {
    pub seq: u64,
    pub raw: Vec<u8>,
    pub create_revision: i64,
    pub mod_revision: i64,
    /// 1 for a record never modified since it was written.
    pub version: i64,
    pub record: Result<VersionRecord, String>,
}

impl StoredRecord {
    pub fn from_kv(relative: &str, kv: &KeyValue) -> Option<StoredRecord> {
        Some(StoredRecord {
            seq: parse_record_key(relative)?,
            raw: kv.value().to_vec(),
            create_revision: kv.create_revision(),
            mod_revision: kv.mod_revision(),
            version: kv.version(),
            record: serde_json::from_slice(kv.value()).map_err(|e| e.to_string()),
        })
    }

    /// What the next record's `prev` must be.
    pub fn hash(&self) -> String {
        value_sha256(&self.raw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_keys_sort_by_sequence() {
        assert_eq!(record_key(7), "changes/00000000000000000007");
        assert_eq!(parse_record_key(&record_key(42)), Some(42));
        assert!(record_key(9) < record_key(10));
        assert_eq!(parse_record_key("changes/head"), None);
        assert_eq!(parse_record_key("changes/0000000000000000001"), None);
    }
}
