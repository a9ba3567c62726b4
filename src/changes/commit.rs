//! The one way a change is written: a [`Plan`] (puts and deletes computed against the prefix as
//! read at its base revision) committed in ONE etcd transaction together with its version record.
//!
//! The transaction's guard (all must hold, or nothing is written):
//! - no key under the prefix has a mod revision after the base revision (nothing was created or
//!   modified since, version records included, so two concurrent applies cannot both win);
//! - every rule-set key that existed at the base revision still has the mod revision it had
//!   (nothing was deleted since: deletions leave no key for the range compare to see);
//! - the next record key does not exist yet.
//!
//! Revocations deleted since the base (leases expiring) do not fail the guard: they are not part
//! of the versioned rule set ([`crate::rules::digest`]).

use std::collections::BTreeMap;
use std::time::SystemTime;

use etcd_client::{Compare, CompareOp, Txn, TxnOp};
use serde::Serialize;

use super::record::{record_key, Action, KeyChange, RecordKind, VersionRecord};
use super::state::{digest_of, State};
use super::{ChangeError, Repo};
use crate::rules::digest::{in_rule_set, value_sha256};

/// What to do to one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Put(Vec<u8>),
    Delete,
}

/// A change to the prefix, computed against `base`.
#[derive(Debug, Clone)]
pub struct Plan {
    pub base: State,
    /// Key relative to the prefix → what to do to it.
    pub ops: BTreeMap<String, Op>,
}

/// Who makes the change, and why.
#[derive(Debug, Clone)]
pub struct Meta {
    pub kind: RecordKind,
    pub author: String,
    pub message: String,
    pub rollback_to: Option<i64>,
}

/// The result of a committed (or empty) plan.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    /// The revision written; `None` when there was nothing to change (nothing was written).
    pub revision: Option<i64>,
    pub base_revision: i64,
    /// The version record's sequence number.
    pub version: Option<u64>,
    pub added: Vec<String>,
    pub changed: Vec<String>,
    pub deleted: Vec<String>,
    /// The rule-set digest after the change.
    pub digest: String,
}

impl Plan {
    pub fn new(base: State) -> Plan {
        Plan {
            base,
            ops: BTreeMap::new(),
        }
    }

    /// The keys this plan changes, classified against the base, in key order.
    pub fn changes(&self) -> Vec<KeyChange> {
        self.ops
            .iter()
            .map(|(key, op)| match op {
                Op::Put(value) => KeyChange {
                    key: key.clone(),
                    action: match self.base.keys.contains_key(key) {
                        true => Action::Changed,
                        false => Action::Added,
                    },
                    value_sha256: Some(value_sha256(value)),
                },
                Op::Delete => KeyChange {
                    key: key.clone(),
                    action: Action::Deleted,
                    value_sha256: None,
                },
            })
            .collect()
    }

    /// The rule-set digest after the plan.
    pub fn digest_after(&self) -> String {
        let mut values: BTreeMap<&str, &[u8]> = self
            .base
            .keys
            .iter()
            .map(|(k, v)| (k.as_str(), v.value.as_slice()))
            .collect();
        for (key, op) in &self.ops {
            match op {
                Op::Put(value) => values.insert(key.as_str(), value.as_slice()),
                Op::Delete => values.remove(key.as_str()),
            };
        }
        digest_of(values.into_iter())
    }

    /// What committing the plan would report, without writing anything.
    pub fn preview(&self) -> Outcome {
        self.outcome(None, None)
    }

    fn outcome(&self, revision: Option<i64>, version: Option<u64>) -> Outcome {
        let changes = self.changes();
        let keys = |action| -> Vec<String> {
            changes
                .iter()
                .filter(|c| c.action == action)
                .map(|c| c.key.clone())
                .collect()
        };
        Outcome {
            revision,
            base_revision: self.base.revision,
            version,
            added: keys(Action::Added),
            changed: keys(Action::Changed),
            deleted: keys(Action::Deleted),
            digest: self.digest_after(),
        }
    }
}

impl Repo {
    /// Writes the plan and its version record in one guarded transaction. An empty plan writes
    /// nothing.
    pub async fn commit(&mut self, plan: Plan, meta: Meta) -> Result<Outcome, ChangeError> {
        if plan.ops.is_empty() {
            return Ok(plan.outcome(None, None));
        }
        let previous = self.latest_record(plan.base.revision).await?;
        let seq = previous.as_ref().map_or(1, |p| p.seq + 1);
        let record = VersionRecord {
            seq,
            kind: meta.kind,
            author: meta.author,
            etcd_user: self.etcd_user.clone(),
            message: meta.message,
            time: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
            base_revision: plan.base.revision,
            base_digest: plan.base.digest(),
            rollback_to: meta.rollback_to,
            changes: plan.changes(),
            digest: plan.digest_after(),
            prev: previous.as_ref().map(|p| p.hash()),
        };
        let record_bytes = serde_json::to_vec(&record)
            .map_err(|e| ChangeError::Refused(format!("cannot encode the record: {e}")))?;
        let txn = Txn::new()
            .when(self.guard(&plan, seq))
            .and_then(self.operations(&plan, seq, record_bytes));
        let response = self.client.txn(txn).await.map_err(|e| {
            let text = e.to_string();
            match text.contains("too many operations") {
                true => ChangeError::TooManyOps(text),
                false => ChangeError::Etcd(e),
            }
        })?;
        let revision = response.header().map_or(0, |h| h.revision());
        if !response.succeeded() {
            return Err(ChangeError::Conflict {
                base: plan.base.revision,
                current: revision,
            });
        }
        Ok(plan.outcome(Some(revision), Some(seq)))
    }

    fn guard(&self, plan: &Plan, seq: u64) -> Vec<Compare> {
        let base = plan.base.revision;
        let mut compares = vec![
            Compare::mod_revision(self.prefix.as_str(), CompareOp::Less, base + 1).with_prefix(),
            Compare::create_revision(self.full_key(&record_key(seq)), CompareOp::Equal, 0),
        ];
        compares.extend(
            plan.base
                .keys
                .iter()
                .filter(|(key, _)| in_rule_set(key))
                .map(|(key, stored)| {
                    Compare::mod_revision(self.full_key(key), CompareOp::Equal, stored.mod_revision)
                }),
        );
        compares
    }

    fn operations(&self, plan: &Plan, seq: u64, record: Vec<u8>) -> Vec<TxnOp> {
        let mut ops: Vec<TxnOp> = plan
            .ops
            .iter()
            .map(|(key, op)| match op {
                Op::Put(value) => TxnOp::put(self.full_key(key), value.clone(), None),
                Op::Delete => TxnOp::delete(self.full_key(key), None),
            })
            .collect();
        ops.push(TxnOp::put(self.full_key(&record_key(seq)), record, None));
        ops
    }
}
