//! Rule domain types and their validation at the edge: one JSON value (an etcd key's value, or one
//! entry of a rules file) becomes a typed, checked entry or a [`EntryError`] naming what is wrong.
//!
//! Key layout under the prefix (and the same mappings in a rules file):
//! `routes/<id>`, `scopes/<scope>`, `issuers/<name>`, `revoked/jti/<jti>`, `revoked/sub/<sub>`,
//! `revoked/client/<client_id>`, and the single keys `lockdown` and `settings`. Version records
//! under `changes/` ([`CHANGES_PATH`]) are not rules: sources skip them.

pub mod caseless;
pub mod digest;
pub mod document;
pub mod lockdown;
pub mod matcher;
pub mod route;
pub mod settings;

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::Value;

pub use lockdown::Lockdown;
pub use route::{HostPattern, Mode, PathPattern, Requirement, Route, Segment};
pub use settings::Settings;

use crate::token::IssuerConfig;

/// Which collection an entry belongs to; its key segment is the collection's path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EntryKind {
    Issuer,
    Route,
    Scope,
    RevokedJti,
    RevokedSubject,
    RevokedClient,
    /// The single key `lockdown`: incident lockdown (tightens only).
    Lockdown,
    /// The single key `settings`: policy-wide settings (global dry run).
    Settings,
}

/// Version records (`<prefix>changes/<seq>`), written by `scopegate rules apply`: never rules.
pub const CHANGES_PATH: &str = "changes/";

/// Whether a key relative to the prefix is a version record (which sources skip).
pub fn is_change_record(relative_key: &str) -> bool {
    relative_key.starts_with(CHANGES_PATH)
}

impl EntryKind {
    /// Every kind, in the order snapshots are built.
    pub const ALL: [EntryKind; 8] = [
        EntryKind::Issuer,
        EntryKind::Route,
        EntryKind::Scope,
        EntryKind::RevokedJti,
        EntryKind::RevokedSubject,
        EntryKind::RevokedClient,
        EntryKind::Lockdown,
        EntryKind::Settings,
    ];

    /// The key path of this collection below the prefix, e.g. `revoked/jti/`.
    pub fn key_path(self) -> &'static str {
        match self {
            EntryKind::Issuer => "issuers/",
            EntryKind::Route => "routes/",
            EntryKind::Scope => "scopes/",
            EntryKind::RevokedJti => "revoked/jti/",
            EntryKind::RevokedSubject => "revoked/sub/",
            EntryKind::RevokedClient => "revoked/client/",
            EntryKind::Lockdown => "lockdown",
            EntryKind::Settings => "settings",
        }
    }

    /// A single key (`lockdown`, `settings`) rather than a collection of ids.
    pub fn is_single(self) -> bool {
        matches!(self, EntryKind::Lockdown | EntryKind::Settings)
    }

    /// The key relative to the prefix of entry `id` (a single key has the empty id).
    pub fn key(self, id: &str) -> String {
        format!("{}{id}", self.key_path())
    }

    /// Splits a key relative to the prefix (`routes/orders-read`) into kind and id.
    pub fn parse_key(relative_key: &str) -> Option<(EntryKind, &str)> {
        EntryKind::ALL.iter().find_map(|kind| {
            let id = relative_key.strip_prefix(kind.key_path())?;
            (!kind.is_single() || id.is_empty()).then_some((*kind, id))
        })
    }
}

impl fmt::Display for EntryKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.key_path().trim_end_matches('/'))
    }
}

/// A rejected entry: which one, and why. `Display` gives `routes/orders: path: …` (or
/// `lockdown: …` for a single key).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", kind.key(id))]
pub struct EntryError {
    pub kind: EntryKind,
    pub id: String,
    pub message: String,
}

impl EntryError {
    pub fn new(kind: EntryKind, id: &str, message: impl Into<String>) -> Self {
        EntryError {
            kind,
            id: id.to_string(),
            message: message.into(),
        }
    }
}

/// A scope definition: the scopes it implies and the other names it is known by.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ScopeDef {
    pub implies: Vec<String>,
    pub aliases: Vec<String>,
    pub description: Option<String>,
}

/// Revocation of tokens issued before a time, for a subject or a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IssuedBefore {
    /// Unix seconds; tokens whose `iat` is earlier (or absent) are revoked.
    pub issued_before: i64,
    /// Unix seconds from which the revocation no longer applies (`None`: until deleted).
    pub expires_at: Option<i64>,
}

/// Revocation of one token (`revoked/jti/<jti>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct JtiRevocation {
    /// Unix seconds from which the revocation no longer applies (`None`: until deleted).
    pub expires_at: Option<i64>,
}

/// Whether a revocation with this `expires_at` still applies at `now` (unix seconds). Evaluated
/// at check time, so it stops applying exactly then, also on mirrors that copy no leases.
pub fn in_force(expires_at: Option<i64>, now: i64) -> bool {
    expires_at.is_none_or(|at| now < at)
}

/// One validated entry.
#[derive(Debug, Clone)]
pub enum Entry {
    Issuer(Arc<IssuerConfig>),
    Route(Arc<Route>),
    Scope(ScopeDef),
    RevokedJti(JtiRevocation),
    RevokedSubject(IssuedBefore),
    RevokedClient(IssuedBefore),
    Lockdown(Arc<Lockdown>),
    Settings(Settings),
}

/// Where relative file paths in an entry (e.g. `jwks_file`) are resolved from.
#[derive(Debug, Clone, Copy)]
pub struct ParseContext<'a> {
    pub base_dir: Option<&'a Path>,
}

impl Entry {
    /// Validates one value. Never panics; every problem is an [`EntryError`].
    pub fn parse(
        kind: EntryKind,
        id: &str,
        value: &Value,
        ctx: ParseContext<'_>,
    ) -> Result<Entry, EntryError> {
        validate_id(kind, id)?;
        let err = |message: String| EntryError::new(kind, id, message);
        match kind {
            EntryKind::Issuer => IssuerConfig::from_json(id, value, ctx.base_dir)
                .map(|issuer| Entry::Issuer(Arc::new(issuer)))
                .map_err(|e| err(e.to_string())),
            EntryKind::Route => Route::from_json(id, value)
                .map(|route| Entry::Route(Arc::new(route)))
                .map_err(|e| err(e.to_string())),
            EntryKind::Scope => parse_scope(id, value).map(Entry::Scope).map_err(err),
            EntryKind::RevokedJti => parse_as::<RawRevocation>(value)
                .map(|raw| {
                    Entry::RevokedJti(JtiRevocation {
                        expires_at: raw.expires_at,
                    })
                })
                .map_err(err),
            EntryKind::RevokedSubject => parse_issued_before(value)
                .map(Entry::RevokedSubject)
                .map_err(err),
            EntryKind::RevokedClient => parse_issued_before(value)
                .map(Entry::RevokedClient)
                .map_err(err),
            EntryKind::Lockdown => Lockdown::from_json(value)
                .map(|l| Entry::Lockdown(Arc::new(l)))
                .map_err(err),
            EntryKind::Settings => Settings::from_json(value).map(Entry::Settings).map_err(err),
        }
    }
}

fn validate_id(kind: EntryKind, id: &str) -> Result<(), EntryError> {
    if kind.is_single() {
        return match id.is_empty() {
            true => Ok(()),
            false => Err(EntryError::new(kind, id, "a single key has no id")),
        };
    }
    let bad = id.is_empty()
        || id.len() > 512
        || id.chars().any(|c| c.is_control())
        || (kind != EntryKind::Scope && kind != EntryKind::RevokedJti && id.contains('/'));
    if bad {
        return Err(EntryError::new(
            kind,
            id,
            "id must be 1..512 printable characters (and contain no '/')",
        ));
    }
    Ok(())
}

fn parse_as<T: for<'de> Deserialize<'de>>(value: &Value) -> Result<T, String> {
    deserialize_value(value)
}

/// Deserialises a JSON value; an error names the field it is about (`require.all[1]: invalid
/// type: …`), so an operator can find it in a large value.
pub fn deserialize_value<T: for<'de> Deserialize<'de>>(value: &Value) -> Result<T, String> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        if path == "." {
            e.inner().to_string()
        } else {
            format!("{path}: {}", e.inner())
        }
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRevocation {
    #[serde(default)]
    #[allow(dead_code)]
    reason: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    exp: Option<i64>,
    #[serde(default)]
    expires_at: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIssuedBefore {
    issued_before: i64,
    #[serde(default)]
    #[allow(dead_code)]
    reason: Option<String>,
    #[serde(default)]
    expires_at: Option<i64>,
}

fn parse_issued_before(value: &Value) -> Result<IssuedBefore, String> {
    let raw: RawIssuedBefore = parse_as(value)?;
    Ok(IssuedBefore {
        issued_before: raw.issued_before,
        expires_at: raw.expires_at,
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScope {
    #[serde(default)]
    implies: Vec<String>,
    #[serde(default)]
    aliases: Vec<String>,
    #[serde(default)]
    description: Option<String>,
}

fn parse_scope(id: &str, value: &Value) -> Result<ScopeDef, String> {
    let raw: RawScope = parse_as(value)?;
    validate_scope_token(id)?;
    for name in raw.implies.iter().chain(&raw.aliases) {
        validate_scope_token(name)?;
    }
    Ok(ScopeDef {
        implies: raw.implies,
        aliases: raw.aliases,
        description: raw.description,
    })
}

/// RFC 6749 §3.3: `scope-token = 1*( %x21 / %x23-5B / %x5D-7E )`.
pub fn is_scope_token(scope: &str) -> bool {
    !scope.is_empty()
        && scope
            .bytes()
            .all(|b| b == 0x21 || (0x23..=0x5B).contains(&b) || (0x5D..=0x7E).contains(&b))
}

/// [`is_scope_token`], with an error message naming the value.
pub fn validate_scope_token(scope: &str) -> Result<(), String> {
    if is_scope_token(scope) {
        Ok(())
    } else {
        Err(format!(
            "{scope:?} is not a valid scope token (RFC 6749 §3.3)"
        ))
    }
}

/// All validated entries of one source, keyed by id: what a snapshot is built from.
#[derive(Debug, Clone, Default)]
pub struct RuleSet {
    pub issuers: BTreeMap<String, Arc<IssuerConfig>>,
    pub routes: BTreeMap<String, Arc<Route>>,
    pub scopes: BTreeMap<String, ScopeDef>,
    pub revoked_jti: BTreeMap<String, JtiRevocation>,
    pub revoked_subjects: BTreeMap<String, IssuedBefore>,
    pub revoked_clients: BTreeMap<String, IssuedBefore>,
    /// Incident lockdown, if one is set (it may have expired: see [`Lockdown::in_force`]).
    pub lockdown: Option<Arc<Lockdown>>,
    /// Policy-wide settings (`None`: the defaults).
    pub settings: Option<Settings>,
}

impl RuleSet {
    /// One line saying what the set holds, e.g. for `rules validate`.
    pub fn summary(&self) -> String {
        format!(
            "{} routes, {} scopes, {} issuers, {} revocations",
            self.routes.len(),
            self.scopes.len(),
            self.issuers.len(),
            self.revoked_jti.len() + self.revoked_subjects.len() + self.revoked_clients.len()
        )
    }

    /// Inserts (or replaces) one validated entry.
    pub fn insert(&mut self, id: &str, entry: Entry) {
        let id = id.to_string();
        match entry {
            Entry::Issuer(v) => {
                self.issuers.insert(id, v);
            }
            Entry::Route(v) => {
                self.routes.insert(id, v);
            }
            Entry::Scope(v) => {
                self.scopes.insert(id, v);
            }
            Entry::RevokedJti(v) => {
                self.revoked_jti.insert(id, v);
            }
            Entry::RevokedSubject(v) => {
                self.revoked_subjects.insert(id, v);
            }
            Entry::RevokedClient(v) => {
                self.revoked_clients.insert(id, v);
            }
            Entry::Lockdown(v) => self.lockdown = Some(v),
            Entry::Settings(v) => self.settings = Some(v),
        }
    }

    /// The entry `kind/id`, if the set has it.
    pub fn entry(&self, kind: EntryKind, id: &str) -> Option<Entry> {
        match kind {
            EntryKind::Issuer => self.issuers.get(id).cloned().map(Entry::Issuer),
            EntryKind::Route => self.routes.get(id).cloned().map(Entry::Route),
            EntryKind::Scope => self.scopes.get(id).cloned().map(Entry::Scope),
            EntryKind::RevokedJti => self.revoked_jti.get(id).copied().map(Entry::RevokedJti),
            EntryKind::RevokedSubject => self
                .revoked_subjects
                .get(id)
                .copied()
                .map(Entry::RevokedSubject),
            EntryKind::RevokedClient => self
                .revoked_clients
                .get(id)
                .copied()
                .map(Entry::RevokedClient),
            EntryKind::Lockdown => self.lockdown.clone().map(Entry::Lockdown),
            EntryKind::Settings => self.settings.map(Entry::Settings),
        }
    }

    /// Whether every enforce rule runs in dry run (the `settings` key says `mode: dry_run`).
    pub fn global_dry_run(&self) -> bool {
        self.settings.is_some_and(|s| s.mode == Mode::DryRun)
    }

    /// Removes one entry (an etcd delete); absent entries are fine.
    pub fn remove(&mut self, kind: EntryKind, id: &str) {
        match kind {
            EntryKind::Issuer => self.issuers.remove(id).map(drop),
            EntryKind::Route => self.routes.remove(id).map(drop),
            EntryKind::Scope => self.scopes.remove(id).map(drop),
            EntryKind::RevokedJti => self.revoked_jti.remove(id).map(drop),
            EntryKind::RevokedSubject => self.revoked_subjects.remove(id).map(drop),
            EntryKind::RevokedClient => self.revoked_clients.remove(id).map(drop),
            EntryKind::Lockdown => self.lockdown.take().map(drop),
            EntryKind::Settings => self.settings.take().map(drop),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const CTX: ParseContext<'static> = ParseContext { base_dir: None };

    #[test]
    fn keys_split_into_kind_and_id() {
        assert_eq!(
            EntryKind::parse_key("revoked/jti/abc"),
            Some((EntryKind::RevokedJti, "abc"))
        );
        assert_eq!(
            EntryKind::parse_key("routes/r1"),
            Some((EntryKind::Route, "r1"))
        );
        assert_eq!(EntryKind::parse_key("unknown/x"), None);
        assert_eq!(
            EntryKind::parse_key("lockdown"),
            Some((EntryKind::Lockdown, ""))
        );
        assert_eq!(EntryKind::parse_key("lockdownx"), None);
        assert_eq!(
            EntryKind::parse_key("settings"),
            Some((EntryKind::Settings, ""))
        );
        assert!(is_change_record("changes/00000000000000000001"));
        assert_eq!(EntryKind::Lockdown.key(""), "lockdown");
    }

    #[test]
    fn revocations_expire_at_their_time() {
        let e = Entry::parse(
            EntryKind::RevokedJti,
            "j",
            &json!({"reason": "leak", "expires_at": 100}),
            CTX,
        )
        .unwrap();
        let Entry::RevokedJti(r) = e else { panic!() };
        assert_eq!(r.expires_at, Some(100));
        assert!(in_force(r.expires_at, 99));
        assert!(
            !in_force(r.expires_at, 100),
            "stops applying exactly at expires_at"
        );
        assert!(in_force(None, i64::MAX));
        let e = Entry::parse(
            EntryKind::RevokedSubject,
            "s",
            &json!({"issued_before": 5, "expires_at": 7}),
            CTX,
        )
        .unwrap();
        assert!(matches!(
            e,
            Entry::RevokedSubject(IssuedBefore {
                issued_before: 5,
                expires_at: Some(7)
            })
        ));
    }

    #[test]
    fn scope_tokens_follow_rfc6749() {
        assert!(validate_scope_token("orders:read").is_ok());
        assert!(validate_scope_token("a b").is_err());
        assert!(validate_scope_token("").is_err());
        assert!(validate_scope_token("quote\"").is_err());
    }

    #[test]
    fn revocations_validate() {
        let e = Entry::parse(
            EntryKind::RevokedSubject,
            "alice",
            &json!({"issued_before": 17}),
            CTX,
        )
        .unwrap();
        assert!(matches!(
            e,
            Entry::RevokedSubject(IssuedBefore {
                issued_before: 17,
                expires_at: None
            })
        ));
        let err = Entry::parse(
            EntryKind::RevokedSubject,
            "alice",
            &json!({"issued": 17}),
            CTX,
        )
        .unwrap_err();
        assert!(err.to_string().starts_with("revoked/sub/alice: "), "{err}");
        assert!(Entry::parse(EntryKind::RevokedJti, "j1", &json!({"reason": "leak"}), CTX).is_ok());
        assert!(Entry::parse(EntryKind::RevokedJti, "j1", &json!("nope"), CTX).is_err());
    }

    #[test]
    fn ids_are_checked() {
        let valid = json!({"host": "*", "path": "/x", "require": {"public": true}});
        assert!(Entry::parse(EntryKind::Route, "ok", &valid, CTX).is_ok());
        for bad in ["", "a/b", "a\u{0}b", &"x".repeat(513)] {
            let err = Entry::parse(EntryKind::Route, bad, &valid, CTX).unwrap_err();
            assert_eq!(
                err.message, "id must be 1..512 printable characters (and contain no '/')",
                "{bad:?}"
            );
        }
        // Scope names and jti may contain '/'.
        let scope = json!({"implies": []});
        assert!(Entry::parse(EntryKind::Scope, "api/orders:read", &scope, CTX).is_ok());
    }

    #[test]
    fn scope_definitions_validate() {
        let ok = Entry::parse(
            EntryKind::Scope,
            "orders:write",
            &json!({"implies": ["orders:read"], "aliases": ["write:orders"]}),
            CTX,
        );
        assert!(ok.is_ok());
        let bad = Entry::parse(
            EntryKind::Scope,
            "orders:write",
            &json!({"implies": ["has space"]}),
            CTX,
        );
        assert!(bad.is_err());
    }
}
