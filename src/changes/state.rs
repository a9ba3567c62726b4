//! The prefix as it was at one revision: every key except version records, with its value and
//! revisions, read with two range gets pinned to the same revision; the version records; and the
//! oldest revision etcd still has (found by bisection, without a watch).

use std::collections::BTreeMap;

use etcd_client::{GetOptions, KeyValue, SortOrder, SortTarget};

use super::record::StoredRecord;
use super::{prefix_end, ChangeError, Repo};
use crate::rules::digest::{rule_set_digest, value_sha256};
use crate::rules::document::Entries;
use crate::rules::CHANGES_PATH;

/// One key as etcd holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub value: Vec<u8>,
    pub mod_revision: i64,
    pub create_revision: i64,
    pub lease: i64,
}

/// Everything under the prefix except `changes/`, at one revision.
#[derive(Debug, Clone, Default)]
pub struct State {
    pub revision: i64,
    /// Key relative to the prefix → what it holds.
    pub keys: BTreeMap<String, Stored>,
}

impl State {
    /// The rule-set digest ([`crate::rules::digest`]) of this state.
    pub fn digest(&self) -> String {
        digest_of(
            self.keys
                .iter()
                .map(|(k, v)| (k.as_str(), v.value.as_slice())),
        )
    }

    /// The keys as rules-document entries; keys whose value is not JSON are returned apart.
    pub fn entries(&self) -> (Entries, Vec<String>) {
        let mut entries = Entries::new();
        let mut not_json = Vec::new();
        for (key, stored) in &self.keys {
            match serde_json::from_slice(&stored.value) {
                Ok(value) => {
                    entries.insert(key.clone(), value);
                }
                Err(_) => not_json.push(key.clone()),
            }
        }
        (entries, not_json)
    }
}

/// The rule-set digest of (relative key, value bytes) pairs.
pub fn digest_of<'a>(values: impl Iterator<Item = (&'a str, &'a [u8])>) -> String {
    let hashed: Vec<(&str, String)> = values.map(|(k, v)| (k, value_sha256(v))).collect();
    rule_set_digest(hashed.iter().map(|(k, v)| (*k, v.as_str())))
}

fn is_compacted(e: &etcd_client::Error) -> bool {
    e.to_string()
        .contains("required revision has been compacted")
}

fn is_future(e: &etcd_client::Error) -> bool {
    e.to_string()
        .contains("required revision is a future revision")
}

impl Repo {
    /// The current revision of the cluster.
    pub async fn current_revision(&mut self) -> Result<i64, ChangeError> {
        let response = self
            .client
            .get(
                self.prefix.as_str(),
                Some(GetOptions::new().with_keys_only().with_limit(1)),
            )
            .await?;
        Ok(response.header().map_or(0, |h| h.revision()))
    }

    /// Reads the prefix (without `changes/`) as it is now (`None`) or was at a revision.
    pub async fn read(&mut self, at: Option<i64>) -> Result<State, ChangeError> {
        let changes = self.full_key(CHANGES_PATH);
        let after_changes = prefix_end(&changes);
        let (first, revision) = self
            .range(self.prefix.clone().into_bytes(), changes.into_bytes(), at)
            .await?;
        let (second, _) = self
            .range(after_changes, prefix_end(&self.prefix), Some(revision))
            .await?;
        let mut state = State {
            revision,
            keys: BTreeMap::new(),
        };
        for kv in first.iter().chain(&second) {
            if let Some(key) = self.relative(kv.key()) {
                state.keys.insert(key.to_string(), stored(kv));
            }
        }
        Ok(state)
    }

    /// All version records as they are at `at` (`None`: now), in sequence order.
    pub async fn records(&mut self, at: Option<i64>) -> Result<Vec<StoredRecord>, ChangeError> {
        let start = self.full_key(CHANGES_PATH);
        let end = prefix_end(&start);
        let (kvs, _) = self.range(start.into_bytes(), end, at).await?;
        let mut records: Vec<StoredRecord> = kvs
            .iter()
            .filter_map(|kv| StoredRecord::from_kv(self.relative(kv.key())?, kv))
            .collect();
        records.sort_by_key(|r| r.seq);
        Ok(records)
    }

    /// The newest version record at revision `at`.
    pub async fn latest_record(&mut self, at: i64) -> Result<Option<StoredRecord>, ChangeError> {
        let start = self.full_key(CHANGES_PATH);
        let options = GetOptions::new()
            .with_range(prefix_end(&start))
            .with_revision(at)
            .with_sort(SortTarget::Key, SortOrder::Descend)
            .with_limit(1);
        let response = self.client.get(start, Some(options)).await?;
        Ok(response
            .kvs()
            .iter()
            .find_map(|kv| StoredRecord::from_kv(self.relative(kv.key())?, kv)))
    }

    /// One range get; returns the keys and the revision they were read at.
    async fn range(
        &mut self,
        start: Vec<u8>,
        end: Vec<u8>,
        at: Option<i64>,
    ) -> Result<(Vec<KeyValue>, i64), ChangeError> {
        let options = GetOptions::new()
            .with_range(end)
            .with_revision(at.unwrap_or(0));
        match self.client.get(start, Some(options)).await {
            Ok(mut response) => {
                let current = response.header().map_or(0, |h| h.revision());
                Ok((response.take_kvs(), at.unwrap_or(current)))
            }
            Err(e) => Err(self.revision_error(e, at.unwrap_or(0)).await),
        }
    }

    /// Turns etcd's compacted / future revision errors into ones that name the revisions.
    async fn revision_error(&mut self, e: etcd_client::Error, requested: i64) -> ChangeError {
        if is_compacted(&e) {
            return match self.oldest_revision().await {
                Ok(oldest) => ChangeError::Compacted { requested, oldest },
                Err(other) => other,
            };
        }
        if is_future(&e) {
            return match self.current_revision().await {
                Ok(current) => ChangeError::FutureRevision { requested, current },
                Err(other) => other,
            };
        }
        ChangeError::Etcd(e)
    }

    /// The oldest revision etcd can still read (the last compaction, or 1), by bisection.
    pub async fn oldest_revision(&mut self) -> Result<i64, ChangeError> {
        let (mut readable, mut compacted) = (self.current_revision().await?, 0_i64);
        while readable - compacted > 1 {
            let mid = compacted + (readable - compacted) / 2;
            let options = GetOptions::new()
                .with_keys_only()
                .with_limit(1)
                .with_revision(mid);
            match self.client.get(self.prefix.as_str(), Some(options)).await {
                Ok(_) => readable = mid,
                Err(e) if is_compacted(&e) => compacted = mid,
                Err(e) => return Err(e.into()),
            }
        }
        Ok(readable)
    }
}

fn stored(kv: &KeyValue) -> Stored {
    Stored {
        value: kv.value().to_vec(),
        mod_revision: kv.mod_revision(),
        create_revision: kv.create_revision(),
        lease: kv.lease(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ends_after_every_key_below_it() {
        assert_eq!(prefix_end("/scopegate/"), b"/scopegate0".to_vec());
        assert_eq!(prefix_end("/p/changes/"), b"/p/changes0".to_vec());
    }
}
