//! Rule domain types and their validation at the edge: one JSON value (an etcd key's value, or one
//! entry of a rules file) becomes a typed, checked entry or a [`EntryError`] naming what is wrong.
//!
//! Key layout under the prefix (and the same mappings in a rules file):
//! `routes/<id>`, `scopes/<scope>`, `issuers/<name>`, `revoked/jti/<jti>`, `revoked/sub/<sub>`,
//! `revoked/client/<client_id>`.

pub mod document;
pub mod matcher;
pub mod route;

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::Value;

pub use route::{HostPattern, Mode, PathPattern, Requirement, Route, Segment};

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
}

impl EntryKind {
    /// Every kind, in the order snapshots are built.
    pub const ALL: [EntryKind; 6] = [
        EntryKind::Issuer,
        EntryKind::Route,
        EntryKind::Scope,
        EntryKind::RevokedJti,
        EntryKind::RevokedSubject,
        EntryKind::RevokedClient,
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
        }
    }

    /// Splits a key relative to the prefix (`routes/orders-read`) into kind and id.
    pub fn parse_key(relative_key: &str) -> Option<(EntryKind, &str)> {
        EntryKind::ALL.iter().find_map(|kind| {
            let id = relative_key.strip_prefix(kind.key_path())?;
            Some((*kind, id))
        })
    }
}

impl fmt::Display for EntryKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.key_path().trim_end_matches('/'))
    }
}

/// A rejected entry: which one, and why. `Display` gives `routes/orders: path: …`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind}/{id}: {message}")]
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
}

/// One validated entry.
#[derive(Debug, Clone)]
pub enum Entry {
    Issuer(Arc<IssuerConfig>),
    Route(Arc<Route>),
    Scope(ScopeDef),
    RevokedJti,
    RevokedSubject(IssuedBefore),
    RevokedClient(IssuedBefore),
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
            EntryKind::RevokedJti => {
                parse_as::<RawRevocation>(value).map_err(err)?;
                Ok(Entry::RevokedJti)
            }
            EntryKind::RevokedSubject => parse_issued_before(value)
                .map(Entry::RevokedSubject)
                .map_err(err),
            EntryKind::RevokedClient => parse_issued_before(value)
                .map(Entry::RevokedClient)
                .map_err(err),
        }
    }
}

fn validate_id(kind: EntryKind, id: &str) -> Result<(), EntryError> {
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
    T::deserialize(value).map_err(|e| e.to_string())
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
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIssuedBefore {
    issued_before: i64,
    #[serde(default)]
    #[allow(dead_code)]
    reason: Option<String>,
}

fn parse_issued_before(value: &Value) -> Result<IssuedBefore, String> {
    let raw: RawIssuedBefore = parse_as(value)?;
    Ok(IssuedBefore {
        issued_before: raw.issued_before,
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
    pub revoked_jti: BTreeMap<String, ()>,
    pub revoked_subjects: BTreeMap<String, IssuedBefore>,
    pub revoked_clients: BTreeMap<String, IssuedBefore>,
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
            Entry::RevokedJti => {
                self.revoked_jti.insert(id, ());
            }
            Entry::RevokedSubject(v) => {
                self.revoked_subjects.insert(id, v);
            }
            Entry::RevokedClient(v) => {
                self.revoked_clients.insert(id, v);
            }
        }
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
            Entry::RevokedSubject(IssuedBefore { issued_before: 17 })
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
                err.message,
                "id must be 1..512 printable characters (and contain no '/')",
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
