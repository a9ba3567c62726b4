//! Versioned rule sets on etcd's own revisions, for the `rules`, `lockdown`, `revocations` and
//! `audit` commands (never used by the check path): a whole rules file applied in ONE guarded
//! transaction together with a version record, history and diffs read from etcd's history,
//! rollback as an apply of an old revision's content, incident lockdown, and the verification
//! of the records' hash chain.
//!
//! A version is an etcd revision. Every write goes through [`commit::Plan`]: the puts and deletes,
//! computed against the prefix as read at a base revision, written with a version record
//! (`<prefix>changes/<seq>`) in one transaction that fails (and writes nothing) if anything under
//! the prefix was created or modified after the base revision, or a rule key was deleted.

pub mod apply;
pub mod commit;
pub mod controls;
pub mod diff;
pub mod history;
pub mod record;
pub mod state;
pub mod verify;

use etcd_client::Client;

use crate::rules::document::DocumentError;
use crate::rules::EntryError;
use crate::store::etcd::EtcdSettings;

pub use commit::{Meta, Outcome, Plan};
pub use record::{RecordKind, VersionRecord};
pub use state::State;

/// Why a change command failed. Nothing was written unless the variant says otherwise.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    #[error("{0}")]
    Document(#[from] DocumentError),
    #[error("{} invalid entr{}:\n  {}", .0.len(), if .0.len() == 1 { "y" } else { "ies" },
        .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n  "))]
    Invalid(Vec<EntryError>),
    #[error(
        "the prefix changed since revision {base} (etcd is at revision {current}); nothing \
             was written: review `scopegate rules diff --from {base}` and try again"
    )]
    Conflict { base: i64, current: i64 },
    #[error("revision {requested} was compacted: the oldest revision still available is {oldest}")]
    Compacted { requested: i64, oldest: i64 },
    #[error("revision {requested} does not exist yet (etcd is at revision {current})")]
    FutureRevision { requested: i64, current: i64 },
    #[error(
        "etcd refused the transaction ({0}): a change of this size needs a larger \
             --max-txn-ops on every etcd member (default 128)"
    )]
    TooManyOps(String),
    #[error("{0}")]
    Refused(String),
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("etcd watch ended before the history was read")]
    HistoryIncomplete,
}

impl ChangeError {
    /// A stable code for `--output json`.
    pub fn code(&self) -> &'static str {
        match self {
            ChangeError::Etcd(_) => "etcd",
            ChangeError::Document(_) | ChangeError::Invalid(_) => "invalid",
            ChangeError::Conflict { .. } => "conflict",
            ChangeError::Compacted { .. } => "compacted",
            ChangeError::FutureRevision { .. } => "future_revision",
            ChangeError::TooManyOps(_) => "too_many_ops",
            ChangeError::Refused(_) => "refused",
            ChangeError::Read { .. } => "read",
            ChangeError::HistoryIncomplete => "history_incomplete",
        }
    }
}

/// A connection to one prefix of one etcd cluster.
pub struct Repo {
    client: Client,
    prefix: String,
    etcd_user: Option<String>,
}

impl std::fmt::Debug for Repo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Repo")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl Repo {
    /// Connects with the same settings (endpoints, TLS, auth, prefix) as `scopegate serve`.
    pub async fn connect(settings: &EtcdSettings) -> Result<Repo, ChangeError> {
        Ok(Repo {
            client: settings.connect().await?,
            prefix: settings.prefix.clone(),
            etcd_user: settings.user.as_ref().map(|(user, _)| user.clone()),
        })
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The full etcd key of a key relative to the prefix.
    fn full_key(&self, relative: &str) -> String {
        format!("{}{relative}", self.prefix)
    }

    /// The key relative to the prefix (`None`: not under it, or not UTF-8).
    fn relative<'k>(&self, key: &'k [u8]) -> Option<&'k str> {
        std::str::from_utf8(key)
            .ok()?
            .strip_prefix(self.prefix.as_str())
    }
}

/// The first key after every key that starts with `prefix`.
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xFF {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// Unix seconds now.
pub fn now() -> i64 {
    crate::store::unix_seconds()
}
