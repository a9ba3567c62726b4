//! `rules apply` and `rules rollback`: the desired content of the prefix, turned into a
//! [`Plan`] against what etcd holds and committed with a version record.
//!
//! Apply validates the file exactly as `rules validate` and the file source do, then turns each
//! entry into the value an etcd key holds (an issuer's `jwks_file` is inlined as `jwks`, since
//! servers read etcd values without a directory) and validates that again as the etcd source
//! would. Values are stored as canonical JSON; a key whose current value is the same JSON is
//! left alone, so an apply that changes nothing writes nothing.
//!
//! `--prune` deletes rule keys the file does not have, and revocations that have expired; it
//! never deletes the lockdown or a revocation still in force. Rollback restores every rule key
//! byte for byte as it was at the revision; revocations and the lockdown are incident controls
//! and stay as they are (a rollback never lifts a revocation or a lockdown).

use std::path::Path;

use serde_json::Value;

use super::commit::{Meta, Op, Outcome, Plan};
use super::state::State;
use super::{ChangeError, Repo};
use crate::rules::digest::{canonical_json, in_rule_set};
use crate::rules::document::{self, Entries};
use crate::rules::{Entry, EntryError, EntryKind, ParseContext};

/// How to apply a file.
#[derive(Debug, Clone, Default)]
pub struct ApplyOptions {
    pub prune: bool,
    /// Refuse if the prefix changed after this revision (default: the revision read now).
    pub expect_revision: Option<i64>,
}

/// Reads and validates a rules file into the values etcd will hold (canonical JSON bytes).
pub fn load_file(path: &Path) -> Result<Entries, ChangeError> {
    let text = std::fs::read_to_string(path).map_err(|source| ChangeError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let entries = document::read_entries(&text, path)?;
    document::validate(&entries, path)?;
    let mut errors = Vec::new();
    let mut values = Entries::new();
    for (key, value) in entries {
        match for_etcd(&key, value, path.parent()) {
            Ok(value) => {
                values.insert(key, value);
            }
            Err(e) => errors.push(e),
        }
    }
    match errors.is_empty() {
        true => Ok(values),
        false => Err(ChangeError::Invalid(errors)),
    }
}

/// The value as an etcd key holds it, validated the way the etcd source validates it.
fn for_etcd(key: &str, mut value: Value, base_dir: Option<&Path>) -> Result<Value, EntryError> {
    let Some((kind, id)) = EntryKind::parse_key(key) else {
        return Err(EntryError::new(EntryKind::Route, key, "not a rules key"));
    };
    if kind == EntryKind::Issuer {
        inline_keys(kind, id, &mut value, base_dir)?;
    }
    Entry::parse(kind, id, &value, ParseContext { base_dir: None })?;
    Ok(value)
}

/// Replaces an issuer's `jwks_file` (relative to the rules file) by its content as `jwks`.
fn inline_keys(
    kind: EntryKind,
    id: &str,
    value: &mut Value,
    base_dir: Option<&Path>,
) -> Result<(), EntryError> {
    let Some(object) = value.as_object_mut() else {
        return Ok(());
    };
    if let Some(Value::String(file)) = object.get("hmac_secret_file") {
        if Path::new(file).is_relative() {
            return Err(EntryError::new(
                kind,
                id,
                "hmac_secret_file must be an absolute path on the servers when applied to etcd",
            ));
        }
    }
    let Some(Value::String(file)) = object.remove("jwks_file") else {
        return Ok(());
    };
    let path = match base_dir {
        Some(dir) if Path::new(&file).is_relative() => dir.join(&file),
        _ => file.into(),
    };
    let jwks = std::fs::read_to_string(&path)
        .map_err(|e| e.to_string())
        .and_then(|text| serde_json::from_str::<Value>(&text).map_err(|e| e.to_string()))
        .map_err(|e| EntryError::new(kind, id, format!("jwks_file {}: {e}", path.display())))?;
    object.insert("jwks".into(), jwks);
    Ok(())
}

/// Whether `--prune` may delete a key the file does not have.
fn prunable(key: &str, stored_value: &[u8], now: i64) -> bool {
    if key == EntryKind::Lockdown.key("") {
        return false;
    }
    if in_rule_set(key) {
        return true;
    }
    key.starts_with("revoked/") && revocation_expired(stored_value, now)
}

/// Whether a stored revocation value has an `expires_at` that has passed.
pub fn revocation_expired(value: &[u8], now: i64) -> bool {
    serde_json::from_slice::<Value>(value)
        .ok()
        .and_then(|v| v.get("expires_at")?.as_i64())
        .is_some_and(|at| !crate::rules::in_force(Some(at), now))
}

/// The plan that makes the prefix hold `desired` (and, with `prune`, nothing else that may go).
pub fn plan_apply(base: State, desired: &Entries, prune: bool, now: i64) -> Plan {
    let mut plan = Plan::new(base);
    for (key, value) in desired {
        let current = plan.base.keys.get(key);
        let same = current
            .and_then(|s| serde_json::from_slice::<Value>(&s.value).ok())
            .is_some_and(|v| v == *value);
        if !same {
            plan.ops
                .insert(key.clone(), Op::Put(canonical_json(value).into_bytes()));
        }
    }
    if prune {
        let gone: Vec<String> = plan
            .base
            .keys
            .iter()
            .filter(|(key, stored)| {
                !desired.contains_key(*key) && prunable(key, &stored.value, now)
            })
            .map(|(key, _)| key.clone())
            .collect();
        plan.ops
            .extend(gone.into_iter().map(|key| (key, Op::Delete)));
    }
    plan
}

/// Whether rollback restores a key (everything but revocations and the lockdown).
fn restorable(key: &str) -> bool {
    in_rule_set(key) && key != EntryKind::Lockdown.key("")
}

/// The plan that restores every restorable key of `now` to what `target` held, byte for byte.
pub fn plan_rollback(now: State, target: &State) -> Plan {
    let mut plan = Plan::new(now);
    for (key, stored) in target.keys.iter().filter(|(k, _)| restorable(k)) {
        if plan.base.keys.get(key).map(|s| &s.value) != Some(&stored.value) {
            plan.ops.insert(key.clone(), Op::Put(stored.value.clone()));
        }
    }
    let created: Vec<String> = plan
        .base
        .keys
        .keys()
        .filter(|k| restorable(k) && !target.keys.contains_key(*k))
        .cloned()
        .collect();
    plan.ops
        .extend(created.into_iter().map(|key| (key, Op::Delete)));
    plan
}

/// Refuses a rollback target whose rule keys would be rejected by the servers.
fn validate_state(state: &State) -> Result<(), ChangeError> {
    let mut errors = Vec::new();
    for (key, stored) in state.keys.iter().filter(|(k, _)| restorable(k)) {
        let checked = match EntryKind::parse_key(key) {
            None => Err(EntryError::new(EntryKind::Route, key, "unknown key")),
            Some((kind, id)) => serde_json::from_slice::<Value>(&stored.value)
                .map_err(|e| EntryError::new(kind, id, format!("not JSON: {e}")))
                .and_then(|v| Entry::parse(kind, id, &v, ParseContext { base_dir: None })),
        };
        if let Err(e) = checked {
            errors.push(e);
        }
    }
    match errors.is_empty() {
        true => Ok(()),
        false => Err(ChangeError::Invalid(errors)),
    }
}

impl Repo {
    /// `rules apply`: the whole file as one transaction with its version record.
    pub async fn apply(
        &mut self,
        desired: &Entries,
        options: &ApplyOptions,
        meta: Meta,
    ) -> Result<Outcome, ChangeError> {
        let base = self.read(options.expect_revision).await?;
        let plan = plan_apply(base, desired, options.prune, super::now());
        self.commit(plan, meta).await
    }

    /// `rules rollback`: the rule keys exactly as they were at `revision`.
    pub async fn rollback(&mut self, revision: i64, meta: Meta) -> Result<Outcome, ChangeError> {
        let target = self.read(Some(revision)).await?;
        validate_state(&target)?;
        let now = self.read(None).await?;
        let plan = plan_rollback(now, &target);
        self.commit(
            plan,
            Meta {
                rollback_to: Some(revision),
                ..meta
            },
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::changes::state::Stored;
    use serde_json::json;

    fn state(keys: &[(&str, &str)]) -> State {
        State {
            revision: 10,
            keys: keys
                .iter()
                .map(|(k, v)| {
                    let stored = Stored {
                        value: v.as_bytes().to_vec(),
                        mod_revision: 5,
                        create_revision: 5,
                        lease: 0,
                    };
                    (k.to_string(), stored)
                })
                .collect(),
        }
    }

    #[test]
    fn apply_writes_only_what_differs_and_prune_spares_incident_controls() {
        let base = state(&[
            ("routes/same", r#"{"b":1, "a":2}"#),
            ("routes/old", "{}"),
            ("lockdown", r#"{"reason":"x"}"#),
            ("revoked/jti/live", r#"{"expires_at":100}"#),
            ("revoked/jti/dead", r#"{"expires_at":10}"#),
        ]);
        let mut desired = Entries::new();
        desired.insert("routes/same".into(), json!({"a": 2, "b": 1}));
        desired.insert("routes/new".into(), json!({"z": 1, "y": [1]}));
        let plan = plan_apply(base.clone(), &desired, false, 50);
        assert_eq!(plan.ops.len(), 1);
        assert_eq!(
            plan.ops["routes/new"],
            Op::Put(br#"{"y":[1],"z":1}"#.to_vec())
        );
        let pruned = plan_apply(base, &desired, true, 50);
        let deleted: Vec<&str> = pruned
            .ops
            .iter()
            .filter(|(_, op)| **op == Op::Delete)
            .map(|(k, _)| k.as_str())
            .collect();
        assert_eq!(deleted, ["revoked/jti/dead", "routes/old"]);
    }

    #[test]
    fn rollback_restores_rules_but_not_revocations_or_lockdown() {
        let now = state(&[
            ("routes/a", "2"),
            ("routes/new", "1"),
            ("lockdown", "{}"),
            ("revoked/jti/x", "{}"),
        ]);
        let target = state(&[("routes/a", "1"), ("routes/gone", "3"), ("settings", "{}")]);
        let plan = plan_rollback(now, &target);
        let ops: Vec<(&str, &Op)> = plan.ops.iter().map(|(k, v)| (k.as_str(), v)).collect();
        assert_eq!(
            ops,
            [
                ("routes/a", &Op::Put(b"1".to_vec())),
                ("routes/gone", &Op::Put(b"3".to_vec())),
                ("routes/new", &Op::Delete),
                ("settings", &Op::Put(b"{}".to_vec())),
            ]
        );
    }
}
