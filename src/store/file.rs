//! The rules-file source (the embedded default): load the file, publish it as a snapshot, and
//! reload it when it changes. A file that fails validation is rejected whole; the previous
//! snapshot keeps serving and the error (naming every bad entry) is logged, counted and shown on
//! `/status`. Changes are seen through filesystem notifications on the file's directory (which
//! also catches editors' rename-on-save and Kubernetes ConfigMap symlink swaps), with a periodic
//! re-read as a fallback.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc;

use super::publish::Publisher;
use super::SnapshotStore;
use crate::rules::document::{self, DocumentError};
use crate::sha256::sha256;
use crate::telemetry::Metrics;

/// Quiet time after a change notification before the file is read (writers often truncate,
/// then write, then rename: one reload after the burst instead of one per step).
const SETTLE: Duration = Duration::from_millis(50);

/// Watches one rules file and keeps the store's snapshot in line with it.
#[derive(Debug)]
pub struct FileSource {
    path: PathBuf,
    book: Publisher,
    revision: i64,
    last_seen: Option<[u8; 32]>,
}

impl FileSource {
    pub fn new(path: &Path, store: Arc<SnapshotStore>, metrics: Arc<Metrics>) -> FileSource {
        FileSource {
            path: path.to_path_buf(),
            book: Publisher::new(store, metrics),
            revision: 0,
            last_seen: None,
        }
    }

    /// Loads the file for the first time; an invalid file is an error (nothing to serve).
    pub fn load(&mut self) -> Result<(), DocumentError> {
        let (digest, text) = self.read()?;
        let rules = self.parse(&text)?;
        self.last_seen = Some(digest);
        self.apply(rules);
        Ok(())
    }

    /// Reads the file once: the digest that was seen and the text that is parsed are the same.
    fn read(&self) -> Result<([u8; 32], Vec<u8>), DocumentError> {
        let text = std::fs::read(&self.path).map_err(|source| DocumentError::Read {
            path: self.path.display().to_string(),
            source,
        })?;
        Ok((sha256(&text), text))
    }

    fn parse(&self, text: &[u8]) -> Result<crate::rules::RuleSet, DocumentError> {
        let text = std::str::from_utf8(text).map_err(|e| DocumentError::Syntax {
            path: self.path.display().to_string(),
            message: e.to_string(),
        })?;
        document::parse_document(text, &self.path)
    }

    fn apply(&mut self, rules: crate::rules::RuleSet) {
        self.revision += 1;
        let routes = rules.routes.len();
        self.book.publish(rules, self.revision);
        self.book.accept_all();
        tracing::info!(path = %self.path.display(), revision = self.revision, routes, "rules loaded");
    }

    /// Re-reads the file if its content changed since the last attempt.
    pub fn reload_if_changed(&mut self) {
        let (digest, text) = match self.read() {
            Ok(read) => read,
            Err(e) => {
                self.reject(e.to_string());
                return;
            }
        };
        if self.last_seen == Some(digest) {
            self.book.confirm();
            return;
        }
        self.last_seen = Some(digest);
        match self.parse(&text) {
            Ok(rules) => self.apply(rules),
            Err(e) => self.reject(e.to_string()),
        }
    }

    /// The whole file is rejected; the previous snapshot stays in force.
    fn reject(&mut self, error: String) {
        self.book.metrics().source.record_reload(false);
        let key = self.path.display().to_string();
        self.book.reject(&key, self.revision, error);
    }

    /// Watches the file until the task is dropped. `poll` is the fallback re-read interval.
    pub async fn watch(mut self, poll: Duration) {
        let (tx, mut rx) = mpsc::channel::<()>(1);
        // Held for as long as this task runs: dropping it stops the notifications.
        let _watcher = self.start_notify(tx);
        let mut ticker = tokio::time::interval(poll);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                Some(()) = rx.recv() => {
                    tokio::time::sleep(SETTLE).await;
                    while rx.try_recv().is_ok() {}
                }
                _ = ticker.tick() => {}
            }
            self.reload_if_changed();
        }
    }

    fn start_notify(&self, tx: mpsc::Sender<()>) -> Option<notify::RecommendedWatcher> {
        let dir = self
            .path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_path_buf();
        let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            // Reads are not changes: reading the file on reload itself raises open, access
            // and close-without-write events, and reacting to them re-read the file every
            // SETTLE for ever (20 reads a second while nothing changed).
            let change = event.is_ok_and(|e| !matches!(e.kind, EventKind::Access(_)));
            if change {
                // Full channel: a reload is already pending, which will see this change.
                let _ = tx.try_send(());
            }
        });
        match watcher.and_then(|mut w| w.watch(&dir, RecursiveMode::NonRecursive).map(|_| w)) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "file notifications unavailable; polling only");
                None
            }
        }
    }
}
