//! The audit trail every replica writes: one line per applied revision on the tracing target
//! `scopegate::audit` (separate from the decision log), with the keys changed (action and value
//! digest), the digest of the rule set now in force ([`crate::rules::digest`]) and, when the
//! revision carries a version record (`changes/<seq>`, written by `scopegate rules apply`), its
//! author, message and the digest it claims. Joined with the decision log by revision, it
//! answers "which rule set decided request X, and who wrote it".

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::rules::digest::{rule_set_digest, value_sha256};
use crate::rules::is_change_record;

/// The tracing target of audit lines.
pub const AUDIT_TARGET: &str = "scopegate::audit";

/// One key changed by a revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyChange {
    pub key: String,
    pub action: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value_sha256: Option<String>,
}

/// What the audit line repeats from a version record (read leniently: a malformed record still
/// gets its revision logged).
#[derive(Debug, Clone, Default, Deserialize)]
struct RecordSummary {
    #[serde(default)]
    seq: Option<u64>,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    author: Option<String>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    digest: Option<String>,
}

/// The value digests in force at the source, and what the revision being applied changed.
#[derive(Debug, Default)]
pub struct AuditBook {
    /// Key relative to the prefix → SHA-256 of its value as stored (valid or not).
    values: BTreeMap<String, String>,
    pending: Vec<KeyChange>,
    record: Option<RecordSummary>,
    /// During a whole-prefix (re)load: the values before it, to report what changed across it.
    before_load: Option<BTreeMap<String, String>>,
}

impl AuditBook {
    /// A whole-prefix read starts: every key will be `put` again.
    pub fn begin_load(&mut self) {
        self.before_load = Some(std::mem::take(&mut self.values));
        self.pending.clear();
        self.record = None;
    }

    /// `relative_key` now holds `value` (a version record is noted, not counted as a rule).
    pub fn put(&mut self, relative_key: &str, value: &[u8]) {
        if is_change_record(relative_key) {
            let summary = serde_json::from_slice::<RecordSummary>(value).unwrap_or_default();
            // During a load every record is read: the newest one describes the state.
            if self.record.as_ref().is_none_or(|r| r.seq <= summary.seq) {
                self.record = Some(summary);
            }
            return;
        }
        let digest = value_sha256(value);
        self.values.insert(relative_key.to_string(), digest.clone());
        self.pending.push(KeyChange {
            key: relative_key.to_string(),
            action: "put",
            value_sha256: Some(digest),
        });
    }

    /// `relative_key` was deleted.
    pub fn delete(&mut self, relative_key: &str) {
        if is_change_record(relative_key) {
            tracing::warn!(target: AUDIT_TARGET, key = relative_key, "version record deleted");
            return;
        }
        self.values.remove(relative_key);
        self.pending.push(KeyChange {
            key: relative_key.to_string(),
            action: "delete",
            value_sha256: None,
        });
    }

    /// The digest of the rule set in force.
    pub fn digest(&self) -> String {
        rule_set_digest(self.values.iter().map(|(k, v)| (k.as_str(), v.as_str())))
    }

    /// Writes the audit line for `revision` (just published) and starts the next one.
    pub fn emit(&mut self, revision: i64) {
        let (event, changes) = match self.before_load.take() {
            Some(before) => ("load", diff(&before, &self.values)),
            None => ("watch", std::mem::take(&mut self.pending)),
        };
        self.pending.clear();
        let record = self.record.take().unwrap_or_default();
        let digest = self.digest();
        let matches = record.digest.as_ref().map(|d| *d == digest);
        tracing::info!(
            target: AUDIT_TARGET,
            revision,
            event,
            changed = changes.len(),
            changes = %serde_json::to_string(&changes).unwrap_or_default(),
            rule_set_digest = %digest,
            version = record.seq,
            version_kind = record.kind.as_deref(),
            version_author = record.author.as_deref(),
            version_message = record.message.as_deref(),
            version_digest = record.digest.as_deref(),
            version_digest_matches = matches,
            "rules applied"
        );
        if matches == Some(false) && event == "watch" {
            tracing::warn!(target: AUDIT_TARGET, revision, "the version record's digest does not match the rule set applied");
        }
    }
}

/// What changed between two sets of value digests, in key order.
fn diff(before: &BTreeMap<String, String>, after: &BTreeMap<String, String>) -> Vec<KeyChange> {
    let deleted = before
        .keys()
        .filter(|k| !after.contains_key(*k))
        .map(|key| KeyChange {
            key: key.clone(),
            action: "delete",
            value_sha256: None,
        });
    let put = after
        .iter()
        .filter(|(k, v)| before.get(*k) != Some(*v))
        .map(|(key, v)| KeyChange {
            key: key.clone(),
            action: "put",
            value_sha256: Some(v.clone()),
        });
    let mut changes: Vec<KeyChange> = deleted.chain(put).collect();
    changes.sort_by(|a, b| a.key.cmp(&b.key));
    changes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reload_reports_what_changed_across_it() {
        let mut book = AuditBook::default();
        book.put("routes/a", b"1");
        book.put("routes/b", b"2");
        book.emit(1);
        let before = book.digest();
        book.begin_load();
        book.put("routes/a", b"1");
        book.put("routes/c", b"3");
        book.put("changes/00000000000000000002", br#"{"seq":2,"author":"x"}"#);
        book.put("changes/00000000000000000001", br#"{"seq":1,"author":"y"}"#);
        let changes = diff(book.before_load.as_ref().unwrap(), &book.values);
        let keys: Vec<_> = changes.iter().map(|c| (c.key.as_str(), c.action)).collect();
        assert_eq!(keys, [("routes/b", "delete"), ("routes/c", "put")]);
        assert_eq!(
            book.record.as_ref().unwrap().seq,
            Some(2),
            "the newest record"
        );
        book.emit(5);
        assert_ne!(book.digest(), before);
        assert!(book.pending.is_empty() && book.before_load.is_none());
    }
}
