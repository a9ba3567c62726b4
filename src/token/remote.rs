//! Remote keys: an issuer's JWKS fetched over HTTPS from its `jwks_uri`, or found through OIDC
//! discovery (`<issuer>/.well-known/openid-configuration`), kept fresh by one background task per
//! issuer that publishes an immutable [`KeySet`] (ArcSwap): the check path reads it without locks
//! and never waits on the network, except for the bounded kid-miss wait ([`RemoteKeys::kid_miss`]).
//!
//! - Refresh: `Cache-Control: max-age` clamped to `[refresh_min, refresh_max]` (no max-age:
//!   `refresh_min`), minus up to 10 % jitter so replicas do not fetch in step. A failure retries
//!   with exponential backoff and jitter (1 s doubling, at most `refresh_min`, at most 30 s while
//!   no keys were ever loaded).
//! - Kid miss: a token whose `kid` is unknown asks for a refetch, at most one per
//!   `kid_miss_interval` per issuer (a flood of bogus kids costs the IdP that and nothing more),
//!   and waits at most `kid_miss_wait` for a fetch to finish; a request that arrives while a fetch
//!   is under way waits for it instead of asking for another.
//! - Failure: a response that is not a usable JWKS (not JSON, over 1 MiB, no usable signing key,
//!   or an HTTP error) is rejected whole and logged; the last good set keeps verifying.
//! - Rotation: a new set replaces the old at once; when a key of the old set is missing from the
//!   new one, the issuer's epoch moves on, and claims cached under the old epoch are verified
//!   again ([`KeyStamp`]).

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption, Guard};
use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use jsonwebtoken::Algorithm;
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::{watch, Notify};
use tokio::task::AbortHandle;
use tokio::time::Instant;

use super::fetch::{self, FetchError, Fetched, HttpsClient};
use super::jwks::{self, KeyError, SkippedKey, VerificationKey};
use crate::sha256::sha256;
use crate::telemetry::Metrics;

/// Shortest refresh interval (a `max-age` below it is raised to it).
pub const DEFAULT_REFRESH_MIN: Duration = Duration::from_secs(5 * 60);
/// Longest refresh interval (a `max-age` above it is lowered to it).
pub const DEFAULT_REFRESH_MAX: Duration = Duration::from_secs(60 * 60);
/// How long a request with an unknown `kid` waits for a refetch before answering `unknown_key`.
pub const DEFAULT_KID_MISS_WAIT: Duration = Duration::from_millis(250);
/// At most one kid-miss refetch per issuer per this interval.
pub const DEFAULT_KID_MISS_INTERVAL: Duration = Duration::from_secs(10);
/// Timeout of one request to an identity provider (JWKS, discovery).
pub const DEFAULT_FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// First retry after a failed fetch (doubles, with jitter).
const RETRY_MIN: Duration = Duration::from_secs(1);
/// Retries never wait longer than this while an issuer has no keys at all.
const RETRY_MAX_WITHOUT_KEYS: Duration = Duration::from_secs(30);
/// The discovery document's path under the issuer (OpenID Connect Discovery 1.0 §4).
const DISCOVERY_PATH: &str = "/.well-known/openid-configuration";
const NEVER: u64 = u64::MAX;

/// Defaults for every remote-key issuer (flags); `refresh_*` may be overridden per issuer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemoteKeySettings {
    pub refresh_min: Duration,
    pub refresh_max: Duration,
    pub kid_miss_wait: Duration,
    pub kid_miss_interval: Duration,
    pub fetch_timeout: Duration,
    /// Timeout of one RFC 7662 introspection request (on the request path: keep it below
    /// Envoy's ext_authz timeout).
    pub introspection_timeout: Duration,
}

impl Default for RemoteKeySettings {
    fn default() -> Self {
        RemoteKeySettings {
            refresh_min: DEFAULT_REFRESH_MIN,
            refresh_max: DEFAULT_REFRESH_MAX,
            kid_miss_wait: DEFAULT_KID_MISS_WAIT,
            kid_miss_interval: DEFAULT_KID_MISS_INTERVAL,
            fetch_timeout: DEFAULT_FETCH_TIMEOUT,
            introspection_timeout: super::introspect::DEFAULT_INTROSPECTION_TIMEOUT,
        }
    }
}

/// Where an issuer's keys are published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyLocation {
    JwksUri(String),
    /// `jwks_uri` (and `introspection_endpoint`) from the issuer's discovery document.
    Discovery,
}

/// What a remote-key issuer entry asks for. Issuer entries whose specs are equal share one
/// fetch task across snapshots: a rule change elsewhere never refetches keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteSpec {
    pub issuer: String,
    pub location: KeyLocation,
    /// Trust only these CAs (PEM); `None`: the system roots.
    pub ca_pem: Option<Vec<u8>>,
    pub refresh_min: Option<Duration>,
    pub refresh_max: Option<Duration>,
    /// Keys are validated for these (pinned) algorithms.
    pub algorithms: Vec<Algorithm>,
}

impl RemoteSpec {
    /// `<issuer>/.well-known/openid-configuration`, a terminating `/` of the issuer removed.
    pub fn discovery_url(&self) -> String {
        format!("{}{DISCOVERY_PATH}", self.issuer.trim_end_matches('/'))
    }
}

/// One fetched key set, immutable once published.
#[derive(Debug, Default)]
pub struct KeySet {
    pub keys: Vec<VerificationKey>,
    /// Keys left out of the set, with their reasons.
    pub skipped: Vec<SkippedKey>,
    /// SHA-256 of each usable key's JWK (same order as `keys`): what a removal is judged by.
    fingerprints: Vec<[u8; 32]>,
    /// When it was fetched; `None`: nothing fetched yet (no keys).
    pub fetched_at: Option<Instant>,
}

/// What OIDC discovery said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discovered {
    pub jwks_uri: String,
    pub introspection_endpoint: Option<String>,
}

/// The epoch of an issuer's keys when claims were verified: still current while no key has
/// been removed since. Static keys carry none.
#[derive(Debug, Clone)]
pub struct KeyStamp {
    epoch: Arc<AtomicU64>,
    at: u64,
}

impl KeyStamp {
    pub fn is_current(&self) -> bool {
        self.epoch.load(Ordering::SeqCst) == self.at
    }
}

/// Why a fetched answer was not taken.
#[derive(Debug, thiserror::Error)]
enum Rejected {
    #[error("{0}")]
    Fetch(#[from] FetchError),
    #[error("not JSON")]
    NotJson,
    #[error("{0}")]
    Keys(#[from] KeyError),
    #[error("discovery document: {0}")]
    Discovery(String),
}

impl Rejected {
    fn result_label(&self) -> &'static str {
        match self {
            Rejected::Fetch(e) => e.result_label(),
            Rejected::NotJson | Rejected::Keys(_) | Rejected::Discovery(_) => "invalid",
        }
    }
}

/// How the task gets documents (HTTPS in production; scripted in tests).
pub(crate) trait Source: Send + Sync + 'static {
    fn get(&self, url: &str) -> impl Future<Output = Result<Fetched, FetchError>> + Send;
}

impl Source for HttpsClient {
    fn get(&self, url: &str) -> impl Future<Output = Result<Fetched, FetchError>> + Send {
        HttpsClient::get(self, url)
    }
}

/// Settings resolved for one issuer.
#[derive(Debug, Clone, Copy)]
struct Timing {
    refresh_min: Duration,
    refresh_max: Duration,
    kid_miss_wait: Duration,
    kid_miss_interval: Duration,
}

impl Timing {
    fn new(defaults: &RemoteKeySettings, spec: &RemoteSpec) -> Timing {
        let refresh_min = spec.refresh_min.unwrap_or(defaults.refresh_min);
        Timing {
            refresh_min,
            refresh_max: spec
                .refresh_max
                .unwrap_or(defaults.refresh_max)
                .max(refresh_min),
            kid_miss_wait: defaults.kid_miss_wait,
            kid_miss_interval: defaults.kid_miss_interval,
        }
    }
}

/// State shared by the task (writer) and the check path (readers).
#[derive(Debug)]
struct Shared {
    name: String,
    spec: RemoteSpec,
    timing: Timing,
    keys: ArcSwap<KeySet>,
    discovered: ArcSwapOption<Discovered>,
    epoch: Arc<AtomicU64>,
    /// Completed fetch attempts (success or not): what kid-miss waiters wait on.
    attempts: watch::Sender<u64>,
    wake: Notify,
    fetching: AtomicBool,
    /// Milliseconds since `base` of the last kid-miss refetch (`NEVER`: none yet).
    kid_miss_at: AtomicU64,
    base: Instant,
    metrics: Option<Arc<Metrics>>,
    /// Told whenever any issuer's keys change (readiness).
    changed: Option<Arc<watch::Sender<u64>>>,
}

/// One issuer's remote keys: the published set, and the task that keeps it fresh (stopped when
/// the last snapshot that uses it is gone).
#[derive(Debug)]
pub struct RemoteKeys {
    shared: Arc<Shared>,
    task: Option<AbortHandle>,
}

impl Drop for RemoteKeys {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

impl RemoteKeys {
    fn shared(name: &str, spec: &RemoteSpec, timing: Timing) -> Shared {
        Shared {
            name: name.to_string(),
            spec: spec.clone(),
            timing,
            keys: ArcSwap::from_pointee(KeySet::default()),
            discovered: ArcSwapOption::empty(),
            epoch: Arc::new(AtomicU64::new(0)),
            attempts: watch::channel(0).0,
            wake: Notify::new(),
            fetching: AtomicBool::new(false),
            kid_miss_at: AtomicU64::new(NEVER),
            base: Instant::now(),
            metrics: None,
            changed: None,
        }
    }

    /// Keys that are never fetched (no runtime or fetcher: `rules validate`, unit tests).
    pub fn inert(name: &str, spec: &RemoteSpec) -> RemoteKeys {
        let timing = Timing::new(&RemoteKeySettings::default(), spec);
        RemoteKeys {
            shared: Arc::new(Self::shared(name, spec, timing)),
            task: None,
        }
    }

    /// Starts the task on the current runtime with `source`.
    fn spawn<S: Source>(shared: Shared, source: S) -> RemoteKeys {
        let shared = Arc::new(shared);
        let task = tokio::spawn(Task::new(shared.clone()).run(source));
        RemoteKeys {
            shared,
            task: Some(task.abort_handle()),
        }
    }

    pub fn name(&self) -> &str {
        &self.shared.name
    }

    pub fn spec(&self) -> &RemoteSpec {
        &self.shared.spec
    }

    /// The current key set (lock-free).
    pub fn keys(&self) -> Guard<Arc<KeySet>> {
        self.shared.keys.load()
    }

    /// The epoch now. Take it *before* reading the keys a token is verified with.
    pub fn stamp(&self) -> KeyStamp {
        KeyStamp {
            epoch: self.shared.epoch.clone(),
            at: self.shared.epoch.load(Ordering::SeqCst),
        }
    }

    /// Whether a key set has been fetched.
    pub fn is_loaded(&self) -> bool {
        self.shared.keys.load().fetched_at.is_some()
    }

    /// Time since the key set in force was fetched.
    pub fn age(&self) -> Option<Duration> {
        self.shared.keys.load().fetched_at.map(|at| at.elapsed())
    }

    /// The introspection endpoint discovery found, if any.
    pub fn introspection_endpoint(&self) -> Option<String> {
        self.shared
            .discovered
            .load()
            .as_ref()
            .and_then(|d| d.introspection_endpoint.clone())
    }

    /// A token named a `kid` the set does not have: ask for a refetch (rate-limited) or join
    /// the one under way, and wait at most `kid_miss_wait` for it. `true`: a fetch finished, so
    /// verifying again may now find the key. `false` (rate-limited, or the wait ran out) costs
    /// no network and, when rate-limited, no waiting.
    pub async fn kid_miss(&self) -> bool {
        if self.task.is_none() {
            return false;
        }
        let shared = &self.shared;
        let mut finished = shared.attempts.subscribe();
        if !shared.fetching.load(Ordering::SeqCst) {
            if !shared.take_kid_miss_slot() {
                return false;
            }
            shared.wake.notify_one();
        }
        let waited = tokio::time::timeout(shared.timing.kid_miss_wait, finished.changed()).await;
        matches!(waited, Ok(Ok(())))
    }
}

impl Shared {
    /// Claims the kid-miss refetch slot if the interval since the last one has passed.
    fn take_kid_miss_slot(&self) -> bool {
        let now = self.base.elapsed().as_millis() as u64;
        let interval = self.timing.kid_miss_interval.as_millis() as u64;
        let last = self.kid_miss_at.load(Ordering::SeqCst);
        if last != NEVER && now < last.saturating_add(interval) {
            return false;
        }
        self.kid_miss_at
            .compare_exchange(last, now, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
    }

    /// Swaps in a new set; moves the epoch on when a key of the old set is gone. The set is
    /// stored before the epoch moves, and readers take the epoch before the set, so claims
    /// verified with a removed key never carry the new epoch.
    fn publish(&self, set: KeySet) {
        let old = self.keys.load_full();
        let removed = old
            .fingerprints
            .iter()
            .any(|f| !set.fingerprints.contains(f));
        let changed = removed || old.fingerprints.len() != set.fingerprints.len();
        if changed || old.fetched_at.is_none() {
            self.log_change(&set, removed);
        }
        self.keys.store(Arc::new(set));
        if removed {
            self.epoch.fetch_add(1, Ordering::SeqCst);
        }
        if let Some(changed) = &self.changed {
            changed.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    /// A new or changed set: its kids, and the keys it skipped with why (logged once per
    /// change, not on every refresh).
    fn log_change(&self, set: &KeySet, removed: bool) {
        let kids: Vec<&str> = set.keys.iter().filter_map(|k| k.kid.as_deref()).collect();
        tracing::info!(issuer = %self.name, ?kids, skipped = set.skipped.len(), removed,
            "JWKS in force");
        for skipped in set.skipped.iter().filter(|s| !s.is_expected()) {
            tracing::warn!(issuer = %self.name, index = skipped.index, kid = ?skipped.kid,
                reason = %skipped.reason, "fetched JWKS key skipped");
        }
    }

    fn record(&self, result: &'static str) {
        if let Some(metrics) = &self.metrics {
            metrics.keys.record_fetch(&self.name, result);
        }
    }
}

/// The refresh delay after a successful fetch: `max_age` (absent: `refresh_min`) clamped to
/// `[refresh_min, refresh_max]`, less `jitter` (0..1) × 10 %.
fn refresh_delay(max_age: Option<Duration>, timing: &Timing, jitter: f64) -> Duration {
    let delay = max_age
        .unwrap_or(timing.refresh_min)
        .clamp(timing.refresh_min, timing.refresh_max);
    delay.mul_f64(1.0 - 0.1 * jitter.clamp(0.0, 1.0))
}

/// The background task of one issuer.
struct Task {
    shared: Arc<Shared>,
    retries: ExponentialBackoff,
    /// When discovery last succeeded; rediscovered every `refresh_max` and after a failure.
    discovered_at: Option<Instant>,
}

impl Task {
    fn new(shared: Arc<Shared>) -> Task {
        let retries = Self::backoff(&shared.timing);
        Task {
            shared,
            retries,
            discovered_at: None,
        }
    }

    fn backoff(timing: &Timing) -> ExponentialBackoff {
        ExponentialBuilder::default()
            .with_min_delay(RETRY_MIN)
            .with_max_delay(timing.refresh_min.max(RETRY_MIN))
            .with_jitter()
            .without_max_times()
            .build()
    }

    async fn run<S: Source>(mut self, source: S) {
        loop {
            self.shared.fetching.store(true, Ordering::SeqCst);
            let outcome = self.fetch(&source).await;
            self.shared.fetching.store(false, Ordering::SeqCst);
            self.shared.attempts.send_modify(|n| *n = n.wrapping_add(1));
            let delay = self.next_delay(outcome);
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = self.shared.wake.notified() => {}
            }
        }
    }

    fn next_delay(&mut self, outcome: Result<Option<Duration>, ()>) -> Duration {
        match outcome {
            Ok(max_age) => {
                self.retries = Self::backoff(&self.shared.timing);
                refresh_delay(max_age, &self.shared.timing, fastrand::f64())
            }
            Err(()) => {
                self.discovered_at = None;
                let delay = self
                    .retries
                    .next()
                    .unwrap_or(self.shared.timing.refresh_min);
                match self.shared.keys.load().fetched_at {
                    None => delay.min(RETRY_MAX_WITHOUT_KEYS),
                    Some(_) => delay,
                }
            }
        }
    }

    /// One refresh: discovery when due, then the JWKS. `Ok(max_age)` when a set was published.
    async fn fetch<S: Source>(&mut self, source: &S) -> Result<Option<Duration>, ()> {
        let shared = self.shared.clone();
        let result = match self.jwks_uri(source).await {
            Ok(uri) => fetch_jwks(&shared.spec, source, &uri).await,
            Err(e) => Err(e),
        };
        match result {
            Ok((set, max_age)) => {
                shared.record("ok");
                shared.publish(set);
                Ok(max_age)
            }
            Err(e) => {
                shared.record(e.result_label());
                let age = shared
                    .keys
                    .load()
                    .fetched_at
                    .map(|at| at.elapsed().as_secs());
                tracing::warn!(issuer = %shared.name, error = %e, last_good_age_s = age,
                    "JWKS fetch rejected; the last good keys stay in force");
                Err(())
            }
        }
    }

    async fn jwks_uri<S: Source>(&mut self, source: &S) -> Result<String, Rejected> {
        let spec = &self.shared.spec;
        if let KeyLocation::JwksUri(uri) = &spec.location {
            return Ok(uri.clone());
        }
        let due = self
            .discovered_at
            .is_none_or(|at| at.elapsed() >= self.shared.timing.refresh_max);
        if let (false, Some(found)) = (due, self.shared.discovered.load_full()) {
            return Ok(found.jwks_uri.clone());
        }
        let found = discover(spec, source).await?;
        let uri = found.jwks_uri.clone();
        self.shared.discovered.store(Some(Arc::new(found)));
        self.discovered_at = Some(Instant::now());
        Ok(uri)
    }
}

#[derive(Deserialize)]
struct DiscoveryDocument {
    issuer: String,
    jwks_uri: String,
    #[serde(default)]
    introspection_endpoint: Option<String>,
}

/// Reads the discovery document; its `issuer` must be exactly the configured one (OpenID
/// Connect Discovery 1.0 §4.3), and the endpoints HTTPS.
async fn discover<S: Source>(spec: &RemoteSpec, source: &S) -> Result<Discovered, Rejected> {
    let fetched = source.get(&spec.discovery_url()).await?;
    let doc: DiscoveryDocument =
        serde_json::from_slice(&fetched.body).map_err(|e| Rejected::Discovery(e.to_string()))?;
    if doc.issuer != spec.issuer {
        return Err(Rejected::Discovery(format!(
            "issuer {:?} is not the configured {:?}",
            doc.issuer, spec.issuer
        )));
    }
    fetch::require_https(&doc.jwks_uri).map_err(|e| Rejected::Discovery(e.to_string()))?;
    if let Some(endpoint) = &doc.introspection_endpoint {
        fetch::require_https(endpoint).map_err(|e| Rejected::Discovery(e.to_string()))?;
    }
    Ok(Discovered {
        jwks_uri: doc.jwks_uri,
        introspection_endpoint: doc.introspection_endpoint,
    })
}

async fn fetch_jwks<S: Source>(
    spec: &RemoteSpec,
    source: &S,
    uri: &str,
) -> Result<(KeySet, Option<Duration>), Rejected> {
    let fetched = source.get(uri).await?;
    let set = parse_key_set(&fetched.body, &spec.algorithms)?;
    Ok((set, fetched.max_age))
}

/// A JWKS body as a key set: rejected whole unless it is JSON with at least one usable key;
/// unusable keys inside it are skipped with their reasons (the `jwks` module's rules).
fn parse_key_set(body: &[u8], algorithms: &[Algorithm]) -> Result<KeySet, Rejected> {
    let value: Value = serde_json::from_slice(body).map_err(|_| Rejected::NotJson)?;
    let loaded = jwks::keys_from_jwks(&value, algorithms)?;
    let raw = value
        .get("keys")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let fingerprints = raw
        .iter()
        .enumerate()
        .filter(|(i, _)| !loaded.skipped.iter().any(|s| s.index == *i))
        .map(|(_, key)| sha256(key.to_string().as_bytes()))
        .collect();
    Ok(KeySet {
        keys: loaded.keys,
        skipped: loaded.skipped,
        fingerprints,
        fetched_at: Some(Instant::now()),
    })
}

/// Starts remote-key tasks for a service: the defaults (flags), the metrics, and a signal that
/// any issuer's keys changed (readiness waits on it).
#[derive(Debug)]
pub struct KeyFetcher {
    settings: RemoteKeySettings,
    metrics: Option<Arc<Metrics>>,
    changed: Arc<watch::Sender<u64>>,
}

impl KeyFetcher {
    pub fn new(settings: RemoteKeySettings, metrics: Option<Arc<Metrics>>) -> Arc<KeyFetcher> {
        Arc::new(KeyFetcher {
            settings,
            metrics,
            changed: Arc::new(watch::channel(0).0),
        })
    }

    pub fn settings(&self) -> &RemoteKeySettings {
        &self.settings
    }

    /// Changes whenever an issuer's key set is published.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Starts fetching `spec`'s keys in the background. Without a runtime, or when the HTTPS
    /// client cannot be built, the keys stay empty (that issuer answers `unknown_key`), logged.
    pub fn start(&self, name: &str, spec: &RemoteSpec) -> RemoteKeys {
        if tokio::runtime::Handle::try_current().is_err() {
            tracing::error!(issuer = name, "no runtime: remote keys are not fetched");
            return RemoteKeys::inert(name, spec);
        }
        let client = match HttpsClient::new(spec.ca_pem.as_deref(), self.settings.fetch_timeout) {
            Ok(client) => client,
            Err(e) => {
                tracing::error!(issuer = name, error = %e, "remote keys are not fetched");
                return RemoteKeys::inert(name, spec);
            }
        };
        self.start_with(name, spec, client)
    }

    pub(crate) fn start_with<S: Source>(
        &self,
        name: &str,
        spec: &RemoteSpec,
        source: S,
    ) -> RemoteKeys {
        let mut shared = RemoteKeys::shared(name, spec, Timing::new(&self.settings, spec));
        shared.metrics = self.metrics.clone();
        shared.changed = Some(self.changed.clone());
        RemoteKeys::spawn(shared, source)
    }
}

#[cfg(test)]
mod tests;
