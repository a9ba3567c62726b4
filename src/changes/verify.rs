//! `audit verify`: checks the version records and etcd's history against each other.
//!
//! Without history (always): records are numbered 1, 2, … with none missing, never modified
//! (etcd version 1), each `prev` is the SHA-256 of the previous record's bytes, each
//! `base_digest` is the previous record's `digest`, and the rule set now has the newest record's
//! digest. While etcd still has a record's revision: the rule set at that revision has the
//! record's digest, the record lists exactly the keys that revision changed, and no rule-set
//! key changed at a revision without a record. Revocations written with plain `etcdctl` are
//! reported as notes (they are outside the versioned rule set) unless `--strict`.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::history::Event;
use super::record::{parse_record_key, Action, StoredRecord, VersionRecord};
use super::state::State;
use super::{ChangeError, Repo};
use crate::rules::digest::{in_rule_set, value_sha256};

/// One thing that is wrong, at the revision where it happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    pub revision: i64,
    /// The record that is broken, if the problem is one record's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub record: Option<u64>,
    pub message: String,
}

/// `audit verify`.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    pub ok: bool,
    pub revision: i64,
    pub oldest_revision: i64,
    pub records: usize,
    /// Records whose digest was checked against the rule set at their revision.
    pub digests_checked: usize,
    /// Oldest first; the first one is where the trail breaks.
    pub problems: Vec<Problem>,
    pub notes: Vec<String>,
}

#[derive(Default)]
struct Findings {
    problems: Vec<Problem>,
    notes: Vec<String>,
}

impl Findings {
    fn problem(&mut self, revision: i64, record: Option<u64>, message: String) {
        self.problems.push(Problem {
            revision,
            record,
            message,
        });
    }
}

impl Repo {
    /// Walks the version records and etcd's history.
    pub async fn verify(&mut self, strict: bool) -> Result<VerifyReport, ChangeError> {
        let now = self.read(None).await?;
        let records = self.records(Some(now.revision)).await?;
        let (oldest_revision, events) = self.available_events(now.revision).await?;
        let mut findings = Findings::default();
        let deleted = deleted_records(&events, &records, &mut findings);
        check_chain(&records, &deleted, &mut findings);
        let mut digests_checked = 0;
        for stored in records
            .iter()
            .filter(|r| r.create_revision >= oldest_revision)
        {
            let Ok(record) = &stored.record else { continue };
            let state = self.read(Some(stored.create_revision)).await?;
            check_at_revision(stored.seq, record, &state, &events, &mut findings);
            digests_checked += 1;
        }
        let unrecorded = check_unrecorded(&records, &events, strict, &mut findings);
        check_continuity(&records, &now, &unrecorded, &mut findings);
        findings.problems.sort_by_key(|p| p.revision);
        Ok(VerifyReport {
            ok: findings.problems.is_empty(),
            revision: now.revision,
            oldest_revision,
            records: records.len(),
            digests_checked,
            problems: findings.problems,
            notes: findings.notes,
        })
    }
}

/// Records deleted (their key's delete is in the history); reported here.
fn deleted_records(events: &[Event], records: &[StoredRecord], f: &mut Findings) -> BTreeSet<u64> {
    let present: BTreeSet<u64> = records.iter().map(|r| r.seq).collect();
    let mut deleted = BTreeSet::new();
    for event in events.iter().filter(|e| e.action == Action::Deleted) {
        if let Some(seq) = parse_record_key(&event.key).filter(|s| !present.contains(s)) {
            let message = format!("record {seq} was deleted at revision {}", event.revision);
            f.problem(event.revision, Some(seq), message);
            deleted.insert(seq);
        }
    }
    deleted
}

/// Numbering, immutability, the hash chain.
fn check_chain(records: &[StoredRecord], deleted: &BTreeSet<u64>, f: &mut Findings) {
    let mut expected = 1;
    let mut previous: Option<&StoredRecord> = None;
    for stored in records {
        let at = stored.create_revision;
        let missing: Vec<u64> = (expected..stored.seq)
            .filter(|s| !deleted.contains(s))
            .collect();
        if let Some(first) = missing.first() {
            f.problem(at, Some(*first), format!("record {first} is missing"));
        }
        if stored.version != 1 {
            let message = format!(
                "record {} was modified at revision {} after it was written at revision {at}",
                stored.seq, stored.mod_revision
            );
            f.problem(at, Some(stored.seq), message);
        }
        match &stored.record {
            Err(e) => f.problem(
                at,
                Some(stored.seq),
                format!("record {} is not a version record: {e}", stored.seq),
            ),
            Ok(record) => check_link(stored, record, previous, f),
        }
        previous = Some(stored);
        expected = stored.seq + 1;
    }
}

fn check_link(
    stored: &StoredRecord,
    record: &VersionRecord,
    previous: Option<&StoredRecord>,
    f: &mut Findings,
) {
    let (seq, at) = (stored.seq, stored.create_revision);
    if record.seq != seq {
        f.problem(
            at,
            Some(seq),
            format!("record {seq} says it is record {}", record.seq),
        );
    }
    let expected_prev = previous
        .filter(|p| p.seq + 1 == seq)
        .map(StoredRecord::hash);
    let chained = match (&record.prev, &expected_prev) {
        (None, None) => seq == 1,
        (Some(prev), Some(expected)) => prev == expected,
        _ => false,
    };
    if !chained && (seq == 1 || expected_prev.is_some()) {
        let message = format!(
            "record {seq} does not chain to record {}: its prev is {}, that record hashes to {}",
            seq.saturating_sub(1),
            record.prev.as_deref().unwrap_or("none"),
            expected_prev.as_deref().unwrap_or("nothing")
        );
        f.problem(at, Some(seq), message);
    }
}

/// The rule set at the record's revision has its digest; the record lists that revision's keys.
fn check_at_revision(
    seq: u64,
    record: &VersionRecord,
    state: &State,
    events: &[Event],
    f: &mut Findings,
) {
    let at = state.revision;
    let digest = state.digest();
    if digest != record.digest {
        let message = format!(
            "record {seq}: the rule set at revision {at} has digest {digest}, the record says {}",
            record.digest
        );
        f.problem(at, Some(seq), message);
    }
    let happened: BTreeSet<(String, bool, Option<String>)> = events
        .iter()
        .filter(|e| e.revision == at && parse_record_key(&e.key).is_none())
        .map(|e| {
            (
                e.key.clone(),
                e.action == Action::Deleted,
                e.value.as_deref().map(value_sha256),
            )
        })
        .collect();
    let listed: BTreeSet<(String, bool, Option<String>)> = record
        .changes
        .iter()
        .map(|c| {
            (
                c.key.clone(),
                c.action == Action::Deleted,
                c.value_sha256.clone(),
            )
        })
        .collect();
    if happened != listed {
        let keys = |set: &BTreeSet<(String, bool, Option<String>)>| -> String {
            set.iter()
                .map(|(k, _, _)| k.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let message = format!(
            "record {seq} lists [{}] but revision {at} changed [{}]",
            keys(&listed),
            keys(&happened)
        );
        f.problem(at, Some(seq), message);
    }
}

/// Revisions that changed keys without a record. Returns the revisions that changed the rule set.
fn check_unrecorded(
    records: &[StoredRecord],
    events: &[Event],
    strict: bool,
    f: &mut Findings,
) -> Vec<i64> {
    let recorded: BTreeSet<i64> = records.iter().map(|r| r.create_revision).collect();
    let mut by_revision: BTreeMap<i64, Vec<&str>> = BTreeMap::new();
    for event in events.iter().filter(|e| !recorded.contains(&e.revision)) {
        if parse_record_key(&event.key).is_none() {
            by_revision
                .entry(event.revision)
                .or_default()
                .push(&event.key);
        }
    }
    let first_record = records.first().map_or(i64::MAX, |r| r.create_revision);
    let mut unrecorded = Vec::new();
    for (revision, keys) in by_revision {
        let after = records
            .iter()
            .rev()
            .find(|r| r.create_revision < revision)
            .map(|r| r.seq);
        let rules = keys.iter().any(|k| in_rule_set(k));
        let what = keys.join(", ");
        match (after, rules || strict) {
            (Some(seq), true) => {
                let message = format!("revision {revision} changed {what} without a version record (after record {seq})");
                f.problem(revision, None, message);
                if rules {
                    unrecorded.push(revision);
                }
            }
            (None, _) if revision < first_record => f.notes.push(format!(
                "revision {revision} (before the first record) changed {what}"
            )),
            _ => f.notes.push(format!(
                "revision {revision} changed {what} without a record (outside the versioned rule set)"
            )),
        }
    }
    unrecorded
}

/// `base_digest` continuity between records, and the rule set now against the newest record:
/// catches unrecorded changes that etcd's history no longer shows.
fn check_continuity(records: &[StoredRecord], now: &State, unrecorded: &[i64], f: &mut Findings) {
    let parsed: Vec<(&StoredRecord, &VersionRecord)> = records
        .iter()
        .filter_map(|s| s.record.as_ref().ok().map(|r| (s, r)))
        .collect();
    let explained = |from: i64, to: i64| unrecorded.iter().any(|r| *r > from && *r < to);
    for pair in parsed.windows(2) {
        let ((a, ra), (b, rb)) = (pair[0], pair[1]);
        if a.seq + 1 == b.seq
            && rb.base_digest != ra.digest
            && !explained(a.create_revision, b.create_revision)
        {
            let message = format!(
                "the rule set changed without a record between record {} and record {} (etcd no longer has those revisions)",
                a.seq, b.seq
            );
            f.problem(b.create_revision, Some(b.seq), message);
        }
    }
    if let Some((last, record)) = parsed.last() {
        let digest = now.digest();
        if digest != record.digest && !explained(last.create_revision, i64::MAX) {
            let message = format!(
                "the rule set now (digest {digest}) is not the one record {} describes ({}), and etcd no longer has the revisions that changed it",
                last.seq, record.digest
            );
            f.problem(now.revision, None, message);
        }
    }
}
