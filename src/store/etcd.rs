//! The etcd source (production): read the whole prefix at one revision R, publish it, then watch
//! from R+1. All events of one watch response (etcd never splits a revision across responses)
//! become one new snapshot, swapped in at once. A bad value is rejected for its key alone; the
//! last good version of that key stays in force. On any error: reconnect with backoff and resume
//! from the last applied revision + 1; if that revision was compacted, reload the whole prefix.
//! Periodic progress requests confirm the snapshot is current (for `--max-staleness`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{
    Certificate, Client, ConnectOptions, EventType, GetOptions, Identity, KeyValue, TlsOptions,
    WatchOptions, WatchResponse,
};

use super::{Snapshot, SnapshotStore};
use crate::cli::EtcdArgs;
use crate::rules::{Entry, EntryKind, ParseContext, RuleSet};
use crate::telemetry::Metrics;

/// Why the etcd source could not be configured or lost its session.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error("cannot read {path}: {source}")]
    ReadFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("configuration: {0}")]
    Config(String),
    #[error("etcd: {0}")]
    Client(#[from] etcd_client::Error),
    #[error("watch stream ended")]
    StreamEnded,
    #[error("watch cancelled by etcd: {0}")]
    Cancelled(String),
}

/// How to reach etcd and what to watch.
#[derive(Clone)]
pub struct EtcdSettings {
    pub endpoints: Vec<String>,
    pub prefix: String,
    pub tls: Option<TlsOptions>,
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

fn read(path: &PathBuf) -> Result<Vec<u8>, EtcdError> {
    std::fs::read(path).map_err(|source| EtcdError::ReadFile {
        path: path.clone(),
        source,
    })
}

impl EtcdSettings {
    /// Plain settings for endpoints and prefix (tests, examples).
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

    /// Builds settings from the CLI, reading certificates and the password from files/env.
    pub fn from_args(args: &EtcdArgs) -> Result<EtcdSettings, EtcdError> {
        if !args.etcd_prefix.starts_with('/') || !args.etcd_prefix.ends_with('/') {
            return Err(EtcdError::Config(
                "--etcd-prefix must start and end with '/'".into(),
            ));
        }
        let mut settings = EtcdSettings::new(args.etcd_endpoints.clone(), &args.etcd_prefix);
        settings.timeout = args.etcd_timeout;
        if args.etcd_ca_file.is_some() || args.etcd_cert_file.is_some() {
            let mut tls = TlsOptions::new();
            if let Some(ca) = &args.etcd_ca_file {
                tls = tls.ca_certificate(Certificate::from_pem(read(ca)?));
            }
            if let (Some(cert), Some(key)) = (&args.etcd_cert_file, &args.etcd_key_file) {
                tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
            }
            settings.tls = Some(tls);
        }
        if let Some(user) = &args.etcd_user {
            let password = match &args.etcd_password_file {
                Some(file) => String::from_utf8_lossy(&read(file)?).trim_end().to_string(),
                None => std::env::var("SCOPEGATE_ETCD_PASSWORD").map_err(|_| {
                    EtcdError::Config(
                        "--etcd-user needs --etcd-password-file or SCOPEGATE_ETCD_PASSWORD".into(),
                    )
                })?,
            };
            settings.user = Some((user.clone(), password));
        }
        Ok(settings)
    }

    fn connect_options(&self) -> ConnectOptions {
        let mut options = ConnectOptions::new()
            .with_connect_timeout(self.timeout)
            .with_keep_alive(Duration::from_secs(5), self.timeout)
            .with_keep_alive_while_idle(true)
            // A member that lost its leader fails the watch instead of silently stalling.
            .with_require_leader(true);
        if let Some(tls) = &self.tls {
            options = options.with_tls(tls.clone());
        }
        if let Some((user, password)) = &self.user {
            options = options.with_user(user.clone(), password.clone());
        }
        options
    }
}

/// The running etcd source.
#[derive(Debug)]
pub struct EtcdSource {
    settings: EtcdSettings,
    store: Arc<SnapshotStore>,
    metrics: Arc<Metrics>,
    /// Validated entries in force (the last good version of every key).
    rules: RuleSet,
    /// Last revision applied; 0 before the first load.
    revision: i64,
    /// Set when the watch found its start revision compacted.
    needs_reload: bool,
    /// Index of the endpoint the next session uses; advanced after every failure.
    endpoint: usize,
}

impl EtcdSource {
    pub fn new(settings: EtcdSettings, store: Arc<SnapshotStore>, metrics: Arc<Metrics>) -> Self {
        EtcdSource {
            settings,
            store,
            metrics,
            rules: RuleSet::default(),
            revision: 0,
            needs_reload: true,
            endpoint: 0,
        }
    }

    /// Runs until the task is dropped: load, watch, and on any error fail over to the next
    /// endpoint at once; after a full round of failed endpoints, wait (exponential backoff).
    pub async fn run(mut self) {
        let mut backoff = self.settings.backoff_min;
        let mut failures = 0usize;
        loop {
            let count = self.settings.endpoints.len();
            let endpoint = self.settings.endpoints[self.endpoint % count].clone();
            let outcome = self.session(&endpoint, &mut backoff, &mut failures).await;
            if let Err(e) = outcome {
                self.metrics.watch_restarts.inc();
                self.endpoint = self.endpoint.wrapping_add(1);
                failures += 1;
                let full_round = failures.is_multiple_of(count);
                tracing::warn!(
                    %endpoint,
                    error = %e,
                    applied_revision = self.revision,
                    retry_in_ms = if full_round { backoff.as_millis() as u64 } else { 0 },
                    "etcd session lost; serving the last snapshot and reconnecting"
                );
                if full_round {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(self.settings.backoff_max);
                }
            }
        }
    }

    /// One connection to one endpoint: (re)load if needed, then watch until something breaks.
    /// One endpoint per session, rotated on failure, so the member that just failed us (down,
    /// or cut off from its leader) is not the one the next attempt goes to.
    async fn session(
        &mut self,
        endpoint: &str,
        backoff: &mut Duration,
        failures: &mut usize,
    ) -> Result<(), EtcdError> {
        let options = Some(self.settings.connect_options());
        tracing::debug!(endpoint, "connecting to etcd");
        let mut client = Client::connect([endpoint], options).await?;
        tracing::debug!(endpoint, needs_reload = self.needs_reload, "connected");
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
        loop {
            tokio::select! {
                message = stream.message() => {
                    let response = message?.ok_or(EtcdError::StreamEnded)?;
                    if response.created() {
                        *backoff = self.settings.backoff_min;
                        *failures = 0;
                        self.store.confirm();
                    }
                    if !self.handle(response)? {
                        return Ok(());
                    }
                }
                _ = progress.tick() => stream.request_progress().await?,
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
        let previous = std::mem::take(&mut self.rules);
        for kv in response.kvs() {
            self.put(kv, revision, Some(&previous));
        }
        self.revision = revision;
        self.needs_reload = false;
        self.publish();
        tracing::info!(
            revision,
            keys = response.kvs().len(),
            "loaded rules from etcd"
        );
        Ok(())
    }

    /// Applies one watch response. `Ok(false)`: the watch must be re-created (after a reload).
    fn handle(&mut self, response: WatchResponse) -> Result<bool, EtcdError> {
        if response.compact_revision() > 0 {
            tracing::warn!(
                compact_revision = response.compact_revision(),
                applied_revision = self.revision,
                "watch start revision was compacted; reloading the whole prefix"
            );
            self.needs_reload = true;
            return Ok(false);
        }
        if response.canceled() {
            return Err(EtcdError::Cancelled(response.cancel_reason().to_string()));
        }
        let events = response.events();
        if events.is_empty() {
            // Progress notification (or watch created): nothing changed up to its revision.
            self.store.confirm();
            return Ok(true);
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
        Ok(true)
    }

    fn relative_key<'k>(&self, kv: &'k KeyValue) -> Option<(EntryKind, &'k str)> {
        let key = std::str::from_utf8(kv.key()).ok()?;
        EntryKind::parse_key(key.strip_prefix(self.settings.prefix.as_str())?)
    }

    /// Validates one value; a bad one leaves the last good version (from `self.rules`, or from
    /// `fallback` during a reload) in force.
    fn put(&mut self, kv: &KeyValue, revision: i64, fallback: Option<&RuleSet>) {
        let key = String::from_utf8_lossy(kv.key()).into_owned();
        let Some((kind, id)) = self.relative_key(kv) else {
            self.reject(
                &key,
                revision,
                "unknown key (expected routes/, scopes/, issuers/ or revoked/{jti,sub,client}/)",
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
            Ok(entry) => self.rules.insert(id, entry),
            Err(error) => {
                if let Some(previous) = fallback {
                    carry_over(previous, &mut self.rules, kind, id);
                }
                self.reject(&key, revision, &error);
            }
        }
    }

    fn delete(&mut self, kv: &KeyValue) {
        if let Some((kind, id)) = self.relative_key(kv) {
            self.rules.remove(kind, id);
        }
    }

    fn reject(&self, key: &str, revision: i64, error: &str) {
        self.metrics.rule_errors.inc();
        tracing::error!(
            key,
            revision,
            error,
            "etcd value rejected; the last good version of this key stays in force"
        );
        self.store
            .set_last_error(Some(format!("{key} @ revision {revision}: {error}")));
    }

    fn publish(&mut self) {
        let previous = self.store.current();
        let snapshot = Snapshot::build(self.rules.clone(), self.revision, previous.as_deref());
        self.store.publish(snapshot);
        self.metrics.snapshot_revision.set(self.revision);
        self.metrics.record_reload(true);
    }
}

/// Copies the entry `kind/id` from `from` into `to`, if it exists there.
fn carry_over(from: &RuleSet, to: &mut RuleSet, kind: EntryKind, id: &str) {
    let entry = match kind {
        EntryKind::Issuer => from.issuers.get(id).cloned().map(Entry::Issuer),
        EntryKind::Route => from.routes.get(id).cloned().map(Entry::Route),
        EntryKind::Scope => from.scopes.get(id).cloned().map(Entry::Scope),
        EntryKind::RevokedJti => from.revoked_jti.get(id).map(|_| Entry::RevokedJti),
        EntryKind::RevokedSubject => from
            .revoked_subjects
            .get(id)
            .copied()
            .map(Entry::RevokedSubject),
        EntryKind::RevokedClient => from
            .revoked_clients
            .get(id)
            .copied()
            .map(Entry::RevokedClient),
    };
    if let Some(entry) = entry {
        to.insert(id, entry);
    }
}
