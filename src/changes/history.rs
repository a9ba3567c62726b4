//! History from etcd's own revisions: every event under the prefix since the oldest revision
//! etcd still has (a watch from there, read until etcd reports it is in sync), grouped by
//! revision and joined with the version records. A revision without a record was made with
//! plain `etcdctl` (or by a lease expiring) and is shown as unrecorded. Records outlive
//! compaction (they are keys), so scopegate's own versions stay listed after etcd forgot them.

use std::collections::BTreeMap;
use std::time::Duration;

use etcd_client::{EventType, GetOptions, KeyValue, WatchOptions};
use serde::Serialize;

use super::record::{parse_record_key, Action, StoredRecord, VersionRecord};
use super::{ChangeError, Repo};

/// One key event from etcd's history.
#[derive(Debug, Clone)]
pub struct Event {
    pub revision: i64,
    /// Relative to the prefix.
    pub key: String,
    pub action: Action,
    /// The new value (puts).
    pub value: Option<Vec<u8>>,
    /// The key's version after a put (1: created).
    pub version: i64,
}

/// One version (etcd revision) in `rules history`.
#[derive(Debug, Clone, Serialize)]
pub struct Version {
    pub revision: i64,
    /// `false`: written without a version record (plain etcdctl, a lease expiring).
    pub recorded: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub record: Option<VersionRecord>,
    pub changes: Vec<HistoryChange>,
}

/// One key a version changed.
#[derive(Debug, Clone, Serialize)]
pub struct HistoryChange {
    pub key: String,
    pub action: Action,
}

/// `rules history`: newest first.
#[derive(Debug, Clone, Serialize)]
pub struct History {
    pub revision: i64,
    /// Changes before this revision are only known from version records.
    pub oldest_revision: i64,
    pub versions: Vec<Version>,
}

/// Longest time reading the history may take.
const HISTORY_TIMEOUT: Duration = Duration::from_secs(60);

impl Repo {
    /// Every event under the prefix in `[from, to]`, oldest first. The watch is read until the
    /// last revision that changed the prefix ([`Repo::last_change`]): etcd 3.4 answers a
    /// progress request at once, even before a catching-up watch has sent its events, so
    /// progress cannot say when the history is complete.
    pub async fn events(&mut self, from: i64, to: i64) -> Result<Vec<Event>, ChangeError> {
        let Some(last) = self.last_change(from, to).await? else {
            return Ok(Vec::new());
        };
        let options = WatchOptions::new().with_prefix().with_start_revision(from);
        let mut stream = self
            .client
            .watch(self.prefix.as_str(), Some(options))
            .await?;
        let mut events = Vec::new();
        let read = tokio::time::timeout(HISTORY_TIMEOUT, async {
            loop {
                let response = stream
                    .message()
                    .await?
                    .ok_or(ChangeError::HistoryIncomplete)?;
                if response.compact_revision() > 0 {
                    let oldest = response.compact_revision();
                    return Err(ChangeError::Compacted {
                        requested: from,
                        oldest,
                    });
                }
                if response.canceled() {
                    return Err(ChangeError::HistoryIncomplete);
                }
                for event in response.events() {
                    let Some(kv) = event.kv() else { continue };
                    let Some(key) = self.relative(kv.key()) else {
                        continue;
                    };
                    if kv.mod_revision() <= last {
                        events.push(to_event(key, event.event_type(), kv));
                    }
                }
                if events.last().is_some_and(|e| e.revision >= last) {
                    return Ok(());
                }
            }
        })
        .await;
        drop(stream);
        read.map_err(|_| ChangeError::HistoryIncomplete)??;
        Ok(events)
    }

    /// The last revision in `[from, to]` that changed anything under the prefix, if any.
    /// Keys (with their mod revisions) at `to` give the last put; a later delete is found by
    /// bisection on "the keys are as they are at `to`", which holds exactly from the last change
    /// on.
    async fn last_change(&mut self, from: i64, to: i64) -> Result<Option<i64>, ChangeError> {
        let at_to = self.key_revisions(to).await?;
        let last_put = at_to.iter().map(|(_, r)| *r).max().unwrap_or(0);
        let low = last_put.max(from);
        if low > to {
            return Ok(None);
        }
        if self.key_revisions(low).await? != at_to {
            // Unchanged from `high` on; changed somewhere in (low, high].
            let (mut changed_before, mut high) = (low, to);
            while high - changed_before > 1 {
                let mid = changed_before + (high - changed_before) / 2;
                match self.key_revisions(mid).await? == at_to {
                    true => high = mid,
                    false => changed_before = mid,
                }
            }
            return Ok(Some(high));
        }
        if low == last_put {
            return Ok(Some(last_put));
        }
        // Nothing changed in (from, to]; did `from` itself change anything?
        let oldest = self.oldest_revision().await?;
        if from > oldest && self.key_revisions(from - 1).await? != at_to {
            return Ok(Some(from));
        }
        Ok(None)
    }

    /// Every key under the prefix with its mod revision, at `at`.
    async fn key_revisions(&mut self, at: i64) -> Result<Vec<(Vec<u8>, i64)>, ChangeError> {
        let options = GetOptions::new()
            .with_prefix()
            .with_keys_only()
            .with_revision(at);
        let response = self.client.get(self.prefix.as_str(), Some(options)).await?;
        Ok(response
            .kvs()
            .iter()
            .map(|kv| (kv.key().to_vec(), kv.mod_revision()))
            .collect())
    }

    /// Every event etcd still has, from the oldest available revision to `to`.
    pub async fn available_events(&mut self, to: i64) -> Result<(i64, Vec<Event>), ChangeError> {
        let mut from = self.oldest_revision().await?;
        loop {
            match self.events(from, to).await {
                Ok(events) => return Ok((from, events)),
                // Compacted while reading: start again from the new oldest revision.
                Err(ChangeError::Compacted { oldest, .. }) if oldest > from => from = oldest,
                Err(e) => return Err(e),
            }
        }
    }

    /// `rules history [KEY] [--limit N]`.
    pub async fn history(
        &mut self,
        key: Option<&str>,
        limit: Option<usize>,
    ) -> Result<History, ChangeError> {
        let revision = self.current_revision().await?;
        let records = self.records(Some(revision)).await?;
        let (oldest_revision, events) = self.available_events(revision).await?;
        let key = key.map(|k| k.strip_prefix(self.prefix.as_str()).unwrap_or(k));
        let mut versions = versions(&records, &events);
        if let Some(key) = key {
            versions.retain_mut(|v| {
                v.changes.retain(|c| c.key == key);
                !v.changes.is_empty()
            });
        }
        versions.reverse();
        versions.truncate(limit.unwrap_or(usize::MAX));
        Ok(History {
            revision,
            oldest_revision,
            versions,
        })
    }
}

fn to_event(key: &str, kind: EventType, kv: &KeyValue) -> Event {
    Event {
        revision: kv.mod_revision(),
        key: key.to_string(),
        action: match (kind, kv.version()) {
            (EventType::Delete, _) => Action::Deleted,
            (EventType::Put, 1) => Action::Added,
            (EventType::Put, _) => Action::Changed,
        },
        value: (kind == EventType::Put).then(|| kv.value().to_vec()),
        version: kv.version(),
    }
}

/// Joins events and records into versions, oldest first. A record's own key is not listed as a
/// change; any other event on `changes/` (a record modified or deleted) is.
pub fn versions(records: &[StoredRecord], events: &[Event]) -> Vec<Version> {
    let mut by_revision: BTreeMap<i64, Version> = BTreeMap::new();
    for stored in records {
        let revision = stored.create_revision;
        let record = stored.record.as_ref().ok().cloned();
        let changes = record.as_ref().map_or_else(Vec::new, |r| {
            r.changes
                .iter()
                .map(|c| HistoryChange {
                    key: c.key.clone(),
                    action: c.action,
                })
                .collect()
        });
        by_revision.insert(
            revision,
            Version {
                revision,
                recorded: true,
                record,
                changes,
            },
        );
    }
    let mut from_events: BTreeMap<i64, Vec<HistoryChange>> = BTreeMap::new();
    for event in events {
        let creates_record = parse_record_key(&event.key).is_some() && event.version == 1;
        if !creates_record {
            from_events
                .entry(event.revision)
                .or_default()
                .push(HistoryChange {
                    key: event.key.clone(),
                    action: event.action,
                });
        }
    }
    for (revision, changes) in from_events {
        let version = by_revision.entry(revision).or_insert_with(|| Version {
            revision,
            recorded: false,
            record: None,
            changes: Vec::new(),
        });
        // etcd's events are the truth where it still has them.
        version.changes = changes;
    }
    by_revision.into_values().collect()
}
