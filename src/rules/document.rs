//! The rules-file document: the etcd prefix written as one YAML or JSON document, with top-level
//! mappings `issuers`, `routes`, `scopes` and `revoked` (`jti`, `sub`, `client`), each from id to
//! the value an etcd key would hold. A document is validated whole: every error is reported.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use super::{Entry, EntryError, EntryKind, ParseContext, RuleSet};

/// Why a document was rejected.
#[derive(Debug, thiserror::Error)]
pub enum DocumentError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: not a valid rules document: {message}")]
    Syntax { path: String, message: String },
    #[error("{path}: {} invalid entr{}:\n  {}", errors.len(), if errors.len() == 1 { "y" } else { "ies" },
        errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n  "))]
    Entries {
        path: String,
        errors: Vec<EntryError>,
    },
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDocument {
    #[serde(default)]
    issuers: BTreeMap<String, Value>,
    #[serde(default)]
    routes: BTreeMap<String, Value>,
    #[serde(default)]
    scopes: BTreeMap<String, Value>,
    #[serde(default)]
    revoked: RawRevoked,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRevoked {
    #[serde(default)]
    jti: BTreeMap<String, Value>,
    #[serde(default)]
    sub: BTreeMap<String, Value>,
    #[serde(default)]
    client: BTreeMap<String, Value>,
}

/// Reads and validates a rules file. Relative paths inside it resolve against its directory.
pub fn load_file(path: &Path) -> Result<RuleSet, DocumentError> {
    let text = std::fs::read_to_string(path).map_err(|source| DocumentError::Read {
        path: path.display().to_string(),
        source,
    })?;
    parse_document(&text, path)
}

/// Validates document text; `path` names it in errors and anchors relative file paths.
pub fn parse_document(text: &str, path: &Path) -> Result<RuleSet, DocumentError> {
    let name = path.display().to_string();
    let is_json = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("json"));
    let raw: RawDocument = if is_json {
        serde_json::from_str(text).map_err(|e| DocumentError::Syntax {
            path: name.clone(),
            message: e.to_string(),
        })?
    } else if text.trim().is_empty() {
        RawDocument::default()
    } else {
        serde_yaml_ng::from_str(text).map_err(|e| DocumentError::Syntax {
            path: name.clone(),
            message: e.to_string(),
        })?
    };
    let ctx = ParseContext {
        base_dir: path.parent(),
    };
    let mut set = RuleSet::default();
    let mut errors = Vec::new();
    let collections = [
        (EntryKind::Issuer, &raw.issuers),
        (EntryKind::Route, &raw.routes),
        (EntryKind::Scope, &raw.scopes),
        (EntryKind::RevokedJti, &raw.revoked.jti),
        (EntryKind::RevokedSubject, &raw.revoked.sub),
        (EntryKind::RevokedClient, &raw.revoked.client),
    ];
    for (kind, entries) in collections {
        for (id, value) in entries {
            match Entry::parse(kind, id, value, ctx) {
                Ok(entry) => set.insert(id, entry),
                Err(e) => errors.push(e),
            }
        }
    }
    if errors.is_empty() {
        Ok(set)
    } else {
        Err(DocumentError::Entries { path: name, errors })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_document_with_every_collection() {
        let text = r#"
routes:
  health: {host: "*", path: /healthz, require: {public: true}}
  orders: {host: api.example.com, path: "/orders/{id}", methods: [GET], require: {all: [orders:read]}}
scopes:
  orders:write: {implies: [orders:read]}
revoked:
  jti: {j1: {reason: leaked}}
  sub: {alice: {issued_before: 1764000000}}
  client: {ci: {issued_before: 1764000000}}
"#;
        let set = parse_document(text, Path::new("rules.yaml")).unwrap();
        assert_eq!(set.routes.len(), 2);
        assert_eq!(set.scopes.len(), 1);
        assert!(set.revoked_jti.contains_key("j1"));
        assert_eq!(set.revoked_subjects["alice"].issued_before, 1764000000);
        assert!(set.revoked_clients.contains_key("ci"));
    }

    #[test]
    fn every_bad_entry_is_named() {
        let text = r#"
routes:
  good: {host: "*", path: /, require: {public: true}}
  bad-path: {host: "*", path: "no-slash", require: {public: true}}
  bad-require: {host: "*", path: /x, require: {}}
"#;
        let err = parse_document(text, Path::new("rules.yaml")).unwrap_err();
        let DocumentError::Entries { errors, .. } = &err else {
            panic!("{err}")
        };
        let ids: Vec<_> = errors.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, ["bad-path", "bad-require"]);
        assert!(
            err.to_string()
                .contains("routes/bad-path: path \"no-slash\""),
            "{err}"
        );
    }

    #[test]
    fn syntax_and_unknown_sections_are_errors() {
        assert!(matches!(
            parse_document("routes: [", Path::new("r.yaml")),
            Err(DocumentError::Syntax { .. })
        ));
        assert!(matches!(
            parse_document("{\"rutes\": {}}", Path::new("r.json")),
            Err(DocumentError::Syntax { .. })
        ));
        assert!(parse_document("", Path::new("r.yaml"))
            .unwrap()
            .routes
            .is_empty());
    }
}
