//! The rule snapshot and its publication. A [`Snapshot`] is everything a decision reads (routes,
//! scope definitions, revocations, issuers) at one source revision, immutable once built. The
//! [`SnapshotStore`] swaps whole snapshots atomically, so a request never sees half a change, and
//! remembers when the source last confirmed the snapshot current (for `--max-staleness`).

pub mod audit;
pub mod etcd;
pub mod file;
pub mod publish;

use crate::lookup::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::{ArcSwap, ArcSwapOption};
use tokio::sync::watch;

use crate::authz::scope::ScopeGraph;
use crate::rules::matcher::RouteIndex;
use crate::rules::{IssuedBefore, RuleSet};
use crate::token::{KeyFetcher, Verifier};
pub use publish::{Publisher, Rejection, Rejections};

static VERIFIER_GENERATION: AtomicU64 = AtomicU64::new(1);

/// Revoked tokens, subjects and clients. Each may carry an `expires_at` (unix seconds), checked
/// against the clock at every check ([`crate::rules::in_force`]).
#[derive(Debug, Default)]
pub struct Revocations {
    /// jti → expires_at.
    pub jti: HashMap<String, Option<i64>>,
    /// subject → tokens issued before `issued_before` are revoked (until `expires_at`).
    pub subjects: HashMap<String, IssuedBefore>,
    /// client id → tokens issued before `issued_before` are revoked (until `expires_at`).
    pub clients: HashMap<String, IssuedBefore>,
}

/// Everything one decision reads, at one revision.
#[derive(Debug)]
pub struct Snapshot {
    /// etcd revision, or a reload counter for a rules file.
    pub revision: i64,
    pub routes: RouteIndex,
    pub scopes: ScopeGraph,
    pub revocations: Revocations,
    pub verifier: Arc<Verifier>,
    /// Changes whenever the issuers change; cached claims from another generation are re-verified.
    pub verifier_generation: u64,
    /// The validated entries this snapshot was built from (the base for the next revision).
    pub rules: RuleSet,
}

impl Snapshot {
    /// Compiles a rule set. `previous` lets an unchanged issuer set keep its verifier (and so the
    /// verified-claims cache stays warm across route or revocation changes).
    pub fn build(rules: RuleSet, revision: i64, previous: Option<&Snapshot>) -> Snapshot {
        Snapshot::build_with_keys(rules, revision, previous, None)
    }

    /// [`Snapshot::build`], with `fetcher` starting the key tasks of new remote-key issuers
    /// (those whose key spec is unchanged keep the previous snapshot's task and keys).
    pub fn build_with_keys(
        rules: RuleSet,
        revision: i64,
        previous: Option<&Snapshot>,
        fetcher: Option<&KeyFetcher>,
    ) -> Snapshot {
        let (verifier, verifier_generation) = match previous {
            Some(prev) if same_issuers(&prev.rules, &rules) => {
                (prev.verifier.clone(), prev.verifier_generation)
            }
            _ => {
                let issuers = rules.issuers.values().cloned();
                let previous = previous.map(|p| &*p.verifier);
                (
                    Arc::new(Verifier::build(issuers, previous, fetcher)),
                    VERIFIER_GENERATION.fetch_add(1, Ordering::Relaxed),
                )
            }
        };
        let revocations = Revocations {
            jti: rules
                .revoked_jti
                .iter()
                .map(|(k, v)| (k.clone(), v.expires_at))
                .collect(),
            subjects: rules
                .revoked_subjects
                .iter()
                .map(|(k, v)| (k.clone(), *v))
                .collect(),
            clients: rules
                .revoked_clients
                .iter()
                .map(|(k, v)| (k.clone(), *v))
                .collect(),
        };
        Snapshot {
            revision,
            routes: RouteIndex::build(rules.routes.values().cloned()),
            scopes: ScopeGraph::build(&rules.scopes),
            revocations,
            verifier,
            verifier_generation,
            rules,
        }
    }
}

fn same_issuers(a: &RuleSet, b: &RuleSet) -> bool {
    a.issuers.len() == b.issuers.len()
        && a.issuers
            .iter()
            .zip(&b.issuers)
            .all(|((ka, va), (kb, vb))| ka == kb && Arc::ptr_eq(va, vb))
}

/// Unix milliseconds now.
pub fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Unix seconds now (revocation and lockdown expiry are compared with it at check time).
pub fn unix_seconds() -> i64 {
    unix_seconds_at(SystemTime::now())
}

/// Unix seconds at `time` (0 before the epoch).
pub fn unix_seconds_at(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs() as i64)
}

/// The current snapshot, swapped atomically, plus source health.
#[derive(Debug)]
pub struct SnapshotStore {
    current: ArcSwapOption<Snapshot>,
    /// Unix ms when the source last confirmed the snapshot is current (0: never).
    confirmed_at_ms: AtomicU64,
    revision: watch::Sender<i64>,
    rejected: ArcSwap<Rejections>,
    /// Starts remote-key tasks for the issuers of published snapshots (`None`: keys are never
    /// fetched, as in `rules validate`).
    key_fetcher: Option<Arc<KeyFetcher>>,
}

/// The age at which health (gRPC health, `/readyz`) reports a replica out of rotation: two
/// thirds of `--max-staleness`, the bound at which its checks fail closed.
pub fn health_bound(max_staleness: Duration) -> Duration {
    max_staleness * 2 / 3
}

impl Default for SnapshotStore {
    fn default() -> Self {
        SnapshotStore {
            current: ArcSwapOption::empty(),
            confirmed_at_ms: AtomicU64::new(0),
            revision: watch::channel(0).0,
            rejected: ArcSwap::from_pointee(Rejections::new()),
            key_fetcher: None,
        }
    }
}

impl SnapshotStore {
    pub fn new() -> Arc<SnapshotStore> {
        Arc::new(SnapshotStore::default())
    }

    /// A store whose snapshots fetch remote keys with `fetcher`.
    pub fn with_key_fetcher(fetcher: Arc<KeyFetcher>) -> Arc<SnapshotStore> {
        Arc::new(SnapshotStore {
            key_fetcher: Some(fetcher),
            ..SnapshotStore::default()
        })
    }

    /// What starts remote-key tasks for this store's snapshots.
    pub fn key_fetcher(&self) -> Option<&KeyFetcher> {
        self.key_fetcher.as_deref()
    }

    /// The snapshot to decide with; `None` until the first one is published.
    pub fn current(&self) -> Option<Arc<Snapshot>> {
        self.current.load_full()
    }

    /// Swaps in a new snapshot; the very next request reads it.
    pub fn publish(&self, snapshot: Snapshot) {
        let revision = snapshot.revision;
        self.current.store(Some(Arc::new(snapshot)));
        self.confirm();
        self.revision.send_replace(revision);
    }

    /// Records that the source confirmed the current snapshot is up to date.
    pub fn confirm(&self) {
        self.confirmed_at_ms.store(unix_millis(), Ordering::Relaxed);
    }

    /// How long since the source last confirmed the snapshot; `None` before the first one.
    pub fn age(&self) -> Option<Duration> {
        match self.confirmed_at_ms.load(Ordering::Relaxed) {
            0 => None,
            at => Some(Duration::from_millis(unix_millis().saturating_sub(at))),
        }
    }

    /// Whether the snapshot is older than `max` (never stale without a bound; always stale
    /// before the first confirmation when there is one). Fail-closed checks and readiness share it.
    pub fn is_stale(&self, max: Option<Duration>) -> bool {
        let Some(max) = max else { return false };
        self.age().is_none_or(|age| age > max)
    }

    /// Whether health checks should see this replica in rotation: a snapshot is loaded and,
    /// with a bound, confirmed within [`health_bound`] of it. Health leaves rotation before the
    /// checks fail closed, so that a health check running at least every third of `--max-staleness`
    /// ejects a replica cut off from its source before it answers 503 `snapshot_stale`.
    pub fn is_serving(&self, max_staleness: Option<Duration>) -> bool {
        self.current().is_some() && !self.is_stale(max_staleness.map(health_bound))
    }

    /// The current snapshot, or the first one if it is published within `wait` (`None` if not):
    /// for a check that arrives in the moments between the listener opening and the first load.
    pub async fn current_or_first(&self, wait: Duration) -> Option<Arc<Snapshot>> {
        if let Some(snapshot) = self.current() {
            return Some(snapshot);
        }
        let mut revisions = self.revision.subscribe();
        let first = async {
            loop {
                if let Some(snapshot) = self.current() {
                    return Some(snapshot);
                }
                revisions.changed().await.ok()?;
            }
        };
        tokio::time::timeout(wait, first).await.ok().flatten()
    }

    /// Subscribe to published revisions (tests and readiness wait on this).
    pub fn subscribe(&self) -> watch::Receiver<i64> {
        self.revision.subscribe()
    }

    /// Replaces the list of what the source has rejected and is not in force (see `publish`).
    pub fn set_rejections(&self, rejected: Rejections) {
        self.rejected.store(Arc::new(rejected));
    }

    /// What is rejected now, by key or file.
    pub fn rejections(&self) -> Arc<Rejections> {
        self.rejected.load_full()
    }

    /// The most recent rejection still in force, as one line (for `/status`).
    pub fn last_error(&self) -> Option<String> {
        let rejected = self.rejected.load();
        let (key, latest) = rejected.iter().max_by_key(|(_, r)| r.revision)?;
        Some(format!(
            "{key} @ revision {}: {}",
            latest.revision, latest.error
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staleness_needs_a_bound_and_a_confirmation() {
        let store = SnapshotStore::default();
        assert!(!store.is_stale(None), "no bound: never stale");
        assert!(
            store.is_stale(Some(Duration::from_secs(60))),
            "never confirmed: stale"
        );
        store.confirm();
        assert!(!store.is_stale(Some(Duration::from_secs(60))));
        store
            .confirmed_at_ms
            .store(unix_millis() - 120_000, Ordering::Relaxed);
        assert!(store.is_stale(Some(Duration::from_secs(60))));
    }

    #[tokio::test(start_paused = true)]
    async fn a_check_before_the_first_snapshot_waits_for_it_boundedly() {
        let store = SnapshotStore::new();
        let waiting = tokio::spawn({
            let store = store.clone();
            async move { store.current_or_first(Duration::from_secs(1)).await }
        });
        // Published while the check waits: it gets that snapshot.
        while store.revision.receiver_count() < 1 {
            tokio::task::yield_now().await;
        }
        store.publish(Snapshot::build(RuleSet::default(), 7, None));
        let got = waiting.await.unwrap().expect("the first snapshot");
        assert_eq!(got.revision, 7);
        // Nothing published: the wait ends at its bound (paused time advances by itself).
        let empty = SnapshotStore::new();
        let started = tokio::time::Instant::now();
        assert!(empty
            .current_or_first(Duration::from_secs(1))
            .await
            .is_none());
        assert_eq!(started.elapsed(), Duration::from_secs(1));
    }

    #[test]
    fn health_leaves_rotation_at_two_thirds_of_the_staleness_bound() {
        let bound = Some(Duration::from_secs(60));
        let store = SnapshotStore::default();
        assert!(!store.is_serving(None), "no snapshot: not serving");
        store.publish(Snapshot::build(RuleSet::default(), 1, None));
        assert!(store.is_serving(None) && store.is_serving(bound));
        let confirmed_ago = |secs: u64| {
            store
                .confirmed_at_ms
                .store(unix_millis() - secs * 1000, Ordering::Relaxed)
        };
        confirmed_ago(30);
        assert!(store.is_serving(bound), "30 s of 60: in rotation");
        confirmed_ago(45);
        assert!(!store.is_stale(bound), "45 s of 60: checks still answer");
        assert!(!store.is_serving(bound), "...but health has left rotation");
        assert!(store.is_serving(None), "no bound: health never ages out");
        confirmed_ago(90);
        assert!(store.is_stale(bound) && !store.is_serving(bound));
    }
}
