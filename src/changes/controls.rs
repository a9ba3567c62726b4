//! Incident controls, written like every other change (one guarded transaction with a version
//! record): `lockdown on|off|status` and `revocations gc` (deletes revocations whose
//! `expires_at` has passed; they already no longer apply).

use serde::Serialize;
use serde_json::{json, Value};

use super::apply::revocation_expired;
use super::commit::{Meta, Op, Outcome, Plan};
use super::record::VersionRecord;
use super::{ChangeError, Repo};
use crate::rules::digest::canonical_json;
use crate::rules::{Entry, EntryKind, Lockdown, ParseContext};

/// What `lockdown on` was asked to cover.
#[derive(Debug, Clone, Default)]
pub struct LockdownSpec {
    pub hosts: Vec<String>,
    pub methods: Vec<String>,
    pub routes: Vec<String>,
    pub bypass_scope: Option<String>,
    pub reason: String,
    pub expires_at: Option<i64>,
}

impl LockdownSpec {
    /// The `lockdown` value, validated as every replica will validate it.
    pub fn to_value(&self, now: i64) -> Result<Value, ChangeError> {
        let mut value = json!({"reason": self.reason, "started_at": now});
        let lists = [
            ("hosts", &self.hosts),
            ("methods", &self.methods),
            ("routes", &self.routes),
        ];
        for (name, list) in lists {
            if !list.is_empty() {
                value[name] = json!(list);
            }
        }
        if let Some(scope) = &self.bypass_scope {
            value["bypass_scope"] = json!(scope);
        }
        if let Some(at) = self.expires_at {
            value["expires_at"] = json!(at);
        }
        Entry::parse(
            EntryKind::Lockdown,
            "",
            &value,
            ParseContext { base_dir: None },
        )
        .map_err(|e| ChangeError::Invalid(vec![e]))?;
        Ok(value)
    }
}

/// `lockdown status`.
#[derive(Debug, Clone, Serialize)]
pub struct LockdownStatus {
    pub revision: i64,
    /// A lockdown key is set.
    pub on: bool,
    /// It is set, valid and not expired: replicas enforce it.
    pub in_force: bool,
    pub lockdown: Option<Value>,
    /// Why a set lockdown is not in force (invalid value, expired).
    pub problem: Option<String>,
    /// The revision it was set at, and the version record written with it.
    pub since_revision: Option<i64>,
    pub record: Option<VersionRecord>,
}

impl Repo {
    /// Sets (or replaces) the lockdown.
    pub async fn lockdown_on(&mut self, value: &Value, meta: Meta) -> Result<Outcome, ChangeError> {
        let mut plan = Plan::new(self.read(None).await?);
        let bytes = canonical_json(value).into_bytes();
        let key = EntryKind::Lockdown.key("");
        if plan.base.keys.get(&key).map(|s| &s.value) != Some(&bytes) {
            plan.ops.insert(key, Op::Put(bytes));
        }
        self.commit(plan, meta).await
    }

    /// Lifts the lockdown (nothing is written if none is set).
    pub async fn lockdown_off(&mut self, meta: Meta) -> Result<Outcome, ChangeError> {
        let mut plan = Plan::new(self.read(None).await?);
        let key = EntryKind::Lockdown.key("");
        if plan.base.keys.contains_key(&key) {
            plan.ops.insert(key, Op::Delete);
        }
        self.commit(plan, meta).await
    }

    /// The lockdown as every replica sees it now.
    pub async fn lockdown_status(&mut self, now: i64) -> Result<LockdownStatus, ChangeError> {
        let state = self.read(None).await?;
        let mut status = LockdownStatus {
            revision: state.revision,
            on: false,
            in_force: false,
            lockdown: None,
            problem: None,
            since_revision: None,
            record: None,
        };
        let Some(stored) = state.keys.get(&EntryKind::Lockdown.key("")) else {
            return Ok(status);
        };
        status.on = true;
        status.since_revision = Some(stored.mod_revision);
        let parsed = serde_json::from_slice::<Value>(&stored.value).map_err(|e| e.to_string());
        status.lockdown = parsed.as_ref().ok().cloned();
        match parsed.and_then(|v| Lockdown::from_json(&v)) {
            Ok(l) if l.in_force(now) => status.in_force = true,
            Ok(_) => status.problem = Some("expired (expires_at has passed)".into()),
            Err(e) => status.problem = Some(format!("invalid, so replicas ignore it: {e}")),
        }
        let records = self.records(None).await?;
        status.record = records
            .into_iter()
            .find(|r| r.create_revision == stored.mod_revision)
            .and_then(|r| r.record.ok());
        Ok(status)
    }

    /// Deletes revocations whose `expires_at` has passed (`dry_run`: only says which).
    pub async fn gc_revocations(
        &mut self,
        now: i64,
        dry_run: bool,
        meta: Meta,
    ) -> Result<Outcome, ChangeError> {
        let mut plan = Plan::new(self.read(None).await?);
        let expired: Vec<String> = plan
            .base
            .keys
            .iter()
            .filter(|(k, s)| k.starts_with("revoked/") && revocation_expired(&s.value, now))
            .map(|(k, _)| k.clone())
            .collect();
        plan.ops
            .extend(expired.into_iter().map(|k| (k, Op::Delete)));
        match dry_run {
            true => Ok(plan.preview()),
            false => self.commit(plan, meta).await,
        }
    }
}
