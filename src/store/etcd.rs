//! The etcd source (production): read the whole prefix at one revision R, publish it, then watch
//! from R+1. All events of one watch response (etcd never splits a revision across responses)
//! become one new snapshot, swapped in at once. A bad value is rejected for its key alone; the
//! last good version of that key stays in force. On any error: reconnect with backoff and resume
//! from the last applied revision + 1; if that revision was compacted, reload the whole prefix.
//! Periodic progress requests confirm the snapshot is current (for `--max-staleness`).
//! Version records (`changes/`) are not rules: they only feed the audit line written for every
//! applied revision ([`super::audit`]).

use std::sync::Arc;
use std::time::Duration;

use etcd_client::{
    Certificate, Client, ConnectOptions, EventType, GetOptions, Identity, KeyValue, TlsOptions,
    WatchOptions, WatchResponse,
};

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

use super::audit::AuditBook;
use super::publish::Publisher;
use super::SnapshotStore;
use crate::rules::{is_change_record, Entry, EntryKind, ParseContext, RuleSet};
use crate::telemetry::Metrics;

/// Why an etcd session ended.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error("etcd: {0}")]
    Client(#[from] etcd_client::Error),
    #[error("watch stream ended")]
    StreamEnded,
    #[error("watch cancelled by etcd: {0}")]
    Cancelled(String),
    #[error("no answer from the member for {0:?} (progress requests unanswered)")]
    Unresponsive(Duration),
    #[error("member offered revision {offered}, older than the applied {applied}")]
    Behind { offered: i64, applied: i64 },
}

/// TLS to etcd, as PEM bytes already read by `config`.
#[derive(Clone)]
pub struct EtcdTls {
    /// CA certificate to verify etcd's server certificate (system roots when absent).
    pub ca_pem: Option<Vec<u8>>,
    /// Client certificate and key, for mutual TLS.
    pub identity_pem: Option<(Vec<u8>, Vec<u8>)>,
}

/// How to reach etcd and what to watch.
#[derive(Clone)]
pub struct EtcdSettings {
    pub endpoints: Vec<String>,
    pub prefix: String,
    pub tls: Option<EtcdTls>,
    pub user: Option<(String, String)>,
    pub timeout: Duration,
    /// How often the watch asks etcd to confirm progress.
    pub progress_interval: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
}

impl std::fmt::Debug for EtcdSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdSettings")
            .field("endpoints", &self.endpoints)
            .field("prefix", &self.prefix)
            .field("tls", &self.tls.is_some())
            .field("user", &self.user.as_ref().map(|(u, _)| u))
            .finish_non_exhaustive()
    }
}

impl EtcdSettings {
    /// Plain settings for endpoints and prefix, other values at their defaults.
    pub fn new(endpoints: Vec<String>, prefix: &str) -> EtcdSettings {
        EtcdSettings {
            endpoints,
            prefix: prefix.to_string(),
            tls: None,
            user: None,
            timeout: Duration::from_secs(5),
            progress_interval: Duration::from_secs(1),
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_secs(5),
        }
    }

    /// A client for these settings (all endpoints), for the `rules`/`lockdown` commands.
    pub async fn connect(&self) -> Result<Client, etcd_client::Error> {
        Client::connect(&self.endpoints, Some(self.connect_options())).await
    }

    pub(crate) fn connect_options(&self) -> ConnectOptions {
        let mut options = ConnectOptions::new()
            .with_connect_timeout(self.timeout)
            .with_keep_alive(Duration::from_secs(5), self.timeout)
            .with_keep_alive_while_idle(true)
            // A member that lost its leader fails the watch instead of silently stalling.
            .with_require_leader(true);
        if let Some(tls) = &self.tls {
            let mut options_tls = TlsOptions::new();
            if let Some(ca) = &tls.ca_pem {
                options_tls = options_tls.ca_certificate(Certificate::from_pem(ca));
            }
            if let Some((cert, key)) = &tls.identity_pem {
                options_tls = options_tls.identity(Identity::from_pem(cert, key));
            }
            options = options.with_tls(options_tls);
        }
        if let Some((user, password)) = &self.user {
            options = options.with_user(user.clone(), password.clone());
        }
        options
    }
}

/// How a session ended, when it did not fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SessionEnd {
    /// The watch's start revision was compacted: reload the whole prefix, at once.
    Reload,
}

/// Which endpoint to try next and how long to wait first: one endpoint per session, rotated
/// after every failure, so the member that just failed (down, or cut off from its leader) is not
/// the next one asked; after a full round of failures, an exponential backoff with jitter.
#[derive(Debug)]
pub struct Reconnect {
    endpoints: usize,
    next: usize,
    failures_in_round: usize,
    builder: ExponentialBuilder,
    delays: ExponentialBackoff,
}

impl Reconnect {
    pub fn new(endpoints: usize, min: Duration, max: Duration) -> Reconnect {
        let builder = ExponentialBuilder::default()
            .with_min_delay(min)
            .with_max_delay(max)
            .with_jitter()
            .without_max_times();
        Reconnect {
            endpoints: endpoints.max(1),
            next: 0,
            failures_in_round: 0,
            delays: builder.build(),
            builder,
        }
    }

    /// The index of the endpoint for the next session.
    pub fn endpoint(&self) -> usize {
        self.next % self.endpoints
    }

    /// A session was established (its watch was created): start the next failure afresh.
    pub fn connected(&mut self) {
        self.failures_in_round = 0;
        self.delays = self.builder.build();
    }

    /// A session failed: move to the next endpoint; after a full round, wait the backoff.
    /// Returns how long it waited.
    pub async fn failed(&mut self) -> Duration {
        self.next = self.next.wrapping_add(1);
        self.failures_in_round += 1;
        if self.failures_in_round < self.endpoints {
            return Duration::ZERO;
        }
        self.failures_in_round = 0;
        let delay = self.delays.next().unwrap_or(Duration::from_secs(1));
        tokio::time::sleep(delay).await;
        delay
    }
}

/// The running etcd source.
#[derive(Debug)]
pub struct EtcdSource {
    settings: EtcdSettings,
    book: Publisher,
    /// Validated entries in force (the last good version of every key).
    rules: RuleSet,
    /// Last revision applied; 0 before the first load.
    revision: i64,
    /// Set when the watch found its start revision compacted.
    needs_reload: bool,
    /// Value digests in force, for the audit line of each applied revision.
    audit: AuditBook,
}

impl EtcdSource {
    pub fn new(settings: EtcdSettings, store: Arc<SnapshotStore>, metrics: Arc<Metrics>) -> Self {
        EtcdSource {
            settings,
            book: Publisher::new(store, metrics),
            rules: RuleSet::default(),
            revision: 0,
            needs_reload: true,
            audit: AuditBook::default(),
        }
    }

    /// Runs until the task is dropped: load, watch, and on any error fail over (see
    /// [`Reconnect`]); resume from the last applied revision + 1.
    pub async fn run(mut self) {
        let s = &self.settings;
        let mut reconnect = Reconnect::new(s.endpoints.len(), s.backoff_min, s.backoff_max);
        loop {
            let endpoint = self.settings.endpoints[reconnect.endpoint()].clone();
            match self.session(&endpoint, &mut reconnect).await {
                Ok(SessionEnd::Reload) => self.needs_reload = true,
                Err(e) => {
                    self.book.metrics().source.watch_restarts.inc();
                    tracing::warn!(
                        %endpoint,
                        error = %e,
                        applied_revision = self.revision,
                        "etcd session lost; serving the last snapshot and reconnecting"
                    );
                    let waited = reconnect.failed().await;
                    tracing::debug!(waited_ms = waited.as_millis() as u64, "reconnecting");
                }
            }
        }
    }

    /// One connection to one endpoint: (re)load if needed, then watch until something breaks.
    async fn session(
        &mut self,
        endpoint: &str,
        reconnect: &mut Reconnect,
    ) -> Result<SessionEnd, EtcdError> {
        let options = Some(self.settings.connect_options());
        tracing::debug!(endpoint, "connecting to etcd");
        let mut client = Client::connect([endpoint], options).await?;
        if self.needs_reload {
            self.load(&mut client).await?;
        }
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(self.revision + 1)
            .with_progress_notify();
        let mut stream = client
            .watch(self.settings.prefix.as_str(), Some(options))
            .await?;
        tracing::debug!(endpoint, from = self.revision + 1, "watching");
        let mut progress = tokio::time::interval(self.settings.progress_interval);
        // A member that hangs (frozen, partitioned without a reset) answers nothing; the HTTP/2
        // keep-alive would notice only after ~10 s, while revocations pile up unseen. Nothing
        // heard for two progress intervals (a progress request left unanswered for a whole
        // interval) ends the session, and the next endpoint is tried. A deadline of its own:
        // sampled at the next progress tick instead, the silence was seen only ~3 intervals
        // after the last answer, and the snapshot (confirmed by that answer) was already older
        // than a `--max-staleness` of 3 intervals by the time the next member confirmed it.
        let silence_limit = self.settings.progress_interval * 2;
        let mut last_heard = tokio::time::Instant::now();
        loop {
            tokio::select! {
                message = stream.message() => {
                    let response = message?.ok_or(EtcdError::StreamEnded)?;
                    last_heard = tokio::time::Instant::now();
                    if response.created() {
                        reconnect.connected();
                        self.book.confirm();
                    }
                    if let Some(end) = self.handle(response)? {
                        return Ok(end);
                    }
                }
                _ = progress.tick() => {
                    stream.request_progress().await?;
                }
                _ = tokio::time::sleep_until(last_heard + silence_limit) => {
                    return Err(EtcdError::Unresponsive(last_heard.elapsed()));
                }
            }
        }
    }

    /// Reads the whole prefix at one revision and publishes it.
    async fn load(&mut self, client: &mut Client) -> Result<(), EtcdError> {
        let response = client
            .get(
                self.settings.prefix.as_str(),
                Some(GetOptions::new().with_prefix()),
            )
            .await?;
        let revision = response.header().map_or(0, |h| h.revision());
        if revision < self.revision {
            // A lagging member: never go back to an older rule set (a revocation once enforced
            // stays enforced). Fail over to the next endpoint instead.
            tracing::warn!(
                revision,
                applied_revision = self.revision,
                "etcd member is behind the applied revision; refusing its snapshot"
            );
            return Err(EtcdError::Behind {
                offered: revision,
                applied: self.revision,
            });
        }
        let previous = std::mem::take(&mut self.rules);
        self.book.accept_all();
        self.audit.begin_load();
        for kv in response.kvs() {
            self.put(kv, revision, Some(&previous));
        }
        self.revision = revision;
        self.needs_reload = false;
        self.publish();
        self.audit.emit(revision);
        tracing::info!(
            revision,
            keys = response.kvs().len(),
            "loaded rules from etcd"
        );
        Ok(())
    }

    /// Applies one watch response; `Some(end)` ends the session.
    fn handle(&mut self, response: WatchResponse) -> Result<Option<SessionEnd>, EtcdError> {
        if response.compact_revision() > 0 {
            tracing::warn!(
                compact_revision = response.compact_revision(),
                applied_revision = self.revision,
                "watch start revision was compacted; reloading the whole prefix"
            );
            return Ok(Some(SessionEnd::Reload));
        }
        if response.canceled() {
            return Err(EtcdError::Cancelled(response.cancel_reason().to_string()));
        }
        let events = response.events();
        if events.is_empty() {
            // Progress notification (or watch created): nothing changed up to its revision.
            self.book.confirm();
            return Ok(None);
        }
        let mut revision = self.revision;
        for event in events {
            let Some(kv) = event.kv() else { continue };
            revision = revision.max(kv.mod_revision());
            match event.event_type() {
                EventType::Put => self.put(kv, kv.mod_revision(), None),
                EventType::Delete => self.delete(kv),
            }
        }
        self.revision = revision;
        self.publish();
        self.audit.emit(revision);
        Ok(None)
    }

    fn relative_key<'k>(&self, kv: &'k KeyValue) -> Option<(EntryKind, &'k str)> {
        EntryKind::parse_key(self.relative(kv)?)
    }

    fn relative<'k>(&self, kv: &'k KeyValue) -> Option<&'k str> {
        let key = std::str::from_utf8(kv.key()).ok()?;
        key.strip_prefix(self.settings.prefix.as_str())
    }

    /// Validates one value; a bad one leaves the last good version (from `self.rules`, or from
    /// `fallback` during a reload) in force.
    fn put(&mut self, kv: &KeyValue, revision: i64, fallback: Option<&RuleSet>) {
        let key = String::from_utf8_lossy(kv.key()).into_owned();
        if let Some(relative) = self.relative(kv) {
            self.audit.put(relative, kv.value());
            if is_change_record(relative) {
                return; // a version record: audited, never a rule
            }
        }
        let Some((kind, id)) = self.relative_key(kv) else {
            self.reject(
                &key,
                revision,
                "unknown key (expected routes/, scopes/, issuers/, revoked/{jti,sub,client}/, \
                 lockdown, settings or changes/)",
            );
            return;
        };
        let parsed = serde_json::from_slice(kv.value())
            .map_err(|e| format!("not JSON: {e}"))
            .and_then(|value| {
                Entry::parse(kind, id, &value, ParseContext { base_dir: None })
                    .map_err(|e| e.message)
            });
        match parsed {
            Ok(entry) => {
                self.rules.insert(id, entry);
                self.book.accept(&key);
            }
            Err(error) => {
                if let Some(previous) = fallback {
                    carry_over(previous, &mut self.rules, kind, id);
                }
                self.reject(&key, revision, &error);
            }
        }
    }

    fn delete(&mut self, kv: &KeyValue) {
        if let Some(relative) = self.relative(kv) {
            self.audit.delete(relative);
        }
        if let Some((kind, id)) = self.relative_key(kv) {
            self.rules.remove(kind, id);
        }
        self.book.accept(&String::from_utf8_lossy(kv.key()));
    }

    fn reject(&mut self, key: &str, revision: i64, error: &str) {
        self.book.reject(key, revision, error.to_string());
    }

    fn publish(&mut self) {
        self.book.publish(self.rules.clone(), self.revision);
    }
}

/// Copies the entry `kind/id` from `from` into `to`, if it exists there.
fn carry_over(from: &RuleSet, to: &mut RuleSet, kind: EntryKind, id: &str) {
    if let Some(entry) = from.entry(kind, id) {
        to.insert(id, entry);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Instant;

    const MIN: Duration = Duration::from_millis(50);
    const MAX: Duration = Duration::from_secs(5);

    /// Under paused time: a failure with another endpoint left in the round fails over at
    /// once; a full round waits the backoff, which doubles (with up to 100 % jitter) up to the
    /// cap, and starts afresh once a session is established.
    #[tokio::test(start_paused = true)]
    async fn failover_is_immediate_and_backoff_grows_with_jitter_to_the_cap() {
        let mut reconnect = Reconnect::new(3, MIN, MAX);
        let mut endpoints = vec![reconnect.endpoint()];
        let mut waits = Vec::new();
        for _ in 0..30 {
            let started = Instant::now();
            let reported = reconnect.failed().await;
            let slept = started.elapsed();
            assert!(
                slept >= reported && slept <= reported + Duration::from_millis(1),
                "the reported wait is the real wait: {slept:?} vs {reported:?}"
            );
            waits.push(reported);
            endpoints.push(reconnect.endpoint());
        }
        assert_eq!(
            &endpoints[..7],
            &[0, 1, 2, 0, 1, 2, 0],
            "rotates through every endpoint"
        );
        for (i, wait) in waits.iter().enumerate() {
            if i % 3 != 2 {
                assert_eq!(*wait, Duration::ZERO, "failure {i} fails over at once");
            }
        }
        let round_waits: Vec<Duration> = waits.iter().copied().skip(2).step_by(3).collect();
        for (round, wait) in round_waits.iter().enumerate() {
            let base = MIN.saturating_mul(1 << round.min(20)).min(MAX);
            assert!(
                *wait >= base && *wait < base * 2 + Duration::from_millis(1),
                "round {round}: {wait:?} not in [{base:?}, 2x)"
            );
        }
        assert!(
            round_waits.last().unwrap() >= &MAX,
            "capped at the maximum (plus jitter)"
        );
        let distinct: std::collections::HashSet<_> = round_waits.iter().collect();
        assert!(distinct.len() > 1, "jitter varies the waits");

        reconnect.connected();
        let _ = reconnect.failed().await;
        let _ = reconnect.failed().await;
        let first_round = reconnect.failed().await;
        assert!(
            first_round < MIN * 2 + Duration::from_millis(1),
            "{first_round:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_single_endpoint_waits_after_every_failure() {
        let mut reconnect = Reconnect::new(1, MIN, MAX);
        let first = reconnect.failed().await;
        let second = reconnect.failed().await;
        assert!(first >= MIN && second >= MIN * 2, "{first:?} {second:?}");
        assert_eq!(reconnect.endpoint(), 0);
    }
}
