//! The one publication step both sources use: build a snapshot from a validated rule set, swap
//! it in, and keep the book of what is rejected *now* (key or file → error), so `/status`,
//! `scopegate_rule_errors_total` and the logs mean the same thing for a rules file and for etcd.
//! A rejection stays listed until its key gets a good value or is deleted (or the file loads).

use std::collections::BTreeMap;
use std::sync::Arc;

use super::{Snapshot, SnapshotStore};
use crate::rules::RuleSet;
use crate::telemetry::Metrics;

/// Why one key (or a whole rules file) is not in force, and since which revision.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Rejection {
    pub revision: i64,
    pub error: String,
}

/// What is rejected now, by key (etcd) or by file path.
pub type Rejections = BTreeMap<String, Rejection>;

/// Publishes snapshots and keeps the rejection book for one source.
#[derive(Debug)]
pub struct Publisher {
    store: Arc<SnapshotStore>,
    metrics: Arc<Metrics>,
    rejected: Rejections,
}

impl Publisher {
    pub fn new(store: Arc<SnapshotStore>, metrics: Arc<Metrics>) -> Publisher {
        Publisher {
            store,
            metrics,
            rejected: Rejections::new(),
        }
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The source confirmed that the snapshot in force is current.
    pub fn confirm(&self) {
        self.store.confirm();
    }

    /// Swaps in the snapshot built from `rules` at `revision` (the very next check reads it).
    pub fn publish(&mut self, rules: RuleSet, revision: i64) {
        let previous = self.store.current();
        let fetcher = self.store.key_fetcher();
        let snapshot = Snapshot::build_with_keys(rules, revision, previous.as_deref(), fetcher);
        self.store.publish(snapshot);
        self.metrics.source.snapshot_revision.set(revision);
        self.metrics.source.record_reload(true);
    }

    /// `key` was rejected at `revision`: counted, logged, listed; its last good version (or, for
    /// a file, the previous snapshot) stays in force.
    pub fn reject(&mut self, key: &str, revision: i64, error: String) {
        self.metrics.source.rule_errors.inc();
        tracing::error!(
            key,
            revision,
            error = %error,
            "rules rejected; the last good version stays in force"
        );
        self.rejected
            .insert(key.to_string(), Rejection { revision, error });
        self.store.set_rejections(self.rejected.clone());
    }

    /// `key` has a good value now, or is gone.
    pub fn accept(&mut self, key: &str) {
        if self.rejected.remove(key).is_some() {
            self.store.set_rejections(self.rejected.clone());
        }
    }

    /// Forgets every rejection (a whole new rule set was read and accepted).
    pub fn accept_all(&mut self) {
        if !self.rejected.is_empty() {
            self.rejected.clear();
            self.store.set_rejections(Rejections::new());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rejection_is_listed_until_its_key_is_fixed() {
        let store = SnapshotStore::new();
        let metrics = Metrics::new();
        let mut book = Publisher::new(store.clone(), metrics.clone());
        book.reject("/p/routes/a", 5, "bad".into());
        book.reject("/p/routes/b", 6, "worse".into());
        assert_eq!(store.rejections().len(), 2);
        assert_eq!(
            store.last_error().as_deref(),
            Some("/p/routes/b @ revision 6: worse")
        );
        book.accept("/p/routes/b");
        assert_eq!(
            store.last_error().as_deref(),
            Some("/p/routes/a @ revision 5: bad")
        );
        book.accept("/p/routes/a");
        assert_eq!(store.last_error(), None);
        assert!(metrics.encode().contains("scopegate_rule_errors_total 2"));
        book.reject("f.yaml", 7, "broken".into());
        book.accept_all();
        assert!(store.rejections().is_empty());
    }
}
