//! The rules-file document: the etcd prefix written as one YAML or JSON document, with top-level
//! mappings `issuers`, `routes`, `scopes` and `revoked` (`jti`, `sub`, `client`), each from id to
//! the value an etcd key would hold, and `settings` (the value of the single key). A document is
//! validated whole: every error is reported. [`render`] writes entries back in the same shape
//! (what `scopegate rules get` prints), so a document round-trips.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
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

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawDocument {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    settings: Option<Value>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    issuers: BTreeMap<String, Value>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    scopes: BTreeMap<String, Value>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    routes: BTreeMap<String, Value>,
    #[serde(default, skip_serializing_if = "RawRevoked::is_empty")]
    revoked: RawRevoked,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawRevoked {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    jti: BTreeMap<String, Value>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    sub: BTreeMap<String, Value>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    client: BTreeMap<String, Value>,
}

impl RawRevoked {
    fn is_empty(&self) -> bool {
        self.jti.is_empty() && self.sub.is_empty() && self.client.is_empty()
    }
}

/// A document's entries as etcd would hold them: key relative to the prefix → JSON value.
pub type Entries = BTreeMap<String, Value>;

/// The output format of [`render`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Yaml,
    Json,
}

impl RawDocument {
    fn into_entries(self) -> Entries {
        let mut entries = Entries::new();
        let collections = [
            (EntryKind::Issuer, self.issuers),
            (EntryKind::Route, self.routes),
            (EntryKind::Scope, self.scopes),
            (EntryKind::RevokedJti, self.revoked.jti),
            (EntryKind::RevokedSubject, self.revoked.sub),
            (EntryKind::RevokedClient, self.revoked.client),
        ];
        for (kind, values) in collections {
            for (id, value) in values {
                entries.insert(kind.key(&id), value);
            }
        }
        if let Some(settings) = self.settings {
            entries.insert(EntryKind::Settings.key(""), settings);
        }
        entries
    }

    /// Places an entry in its section; `false` for keys a document cannot hold (`lockdown`,
    /// unknown keys).
    fn place(&mut self, key: &str, value: Value) -> bool {
        let Some((kind, id)) = EntryKind::parse_key(key) else {
            return false;
        };
        let section = match kind {
            EntryKind::Issuer => &mut self.issuers,
            EntryKind::Route => &mut self.routes,
            EntryKind::Scope => &mut self.scopes,
            EntryKind::RevokedJti => &mut self.revoked.jti,
            EntryKind::RevokedSubject => &mut self.revoked.sub,
            EntryKind::RevokedClient => &mut self.revoked.client,
            EntryKind::Settings => {
                self.settings = Some(value);
                return true;
            }
            EntryKind::Lockdown => return false,
        };
        section.insert(id.to_string(), value);
        true
    }
}

/// Writes entries as a rules document. Returns the text and the keys it could not hold
/// (`lockdown`, which `scopegate lockdown` manages, and unknown keys).
pub fn render(entries: &Entries, format: Format) -> Result<(String, Vec<String>), String> {
    let mut document = RawDocument::default();
    let mut skipped = Vec::new();
    for (key, value) in entries {
        if !document.place(key, value.clone()) {
            skipped.push(key.clone());
        }
    }
    let text = match format {
        Format::Yaml => serde_yaml_ng::to_string(&document).map_err(|e| e.to_string())?,
        Format::Json => serde_json::to_string_pretty(&document).map_err(|e| e.to_string())? + "\n",
    };
    Ok((text, skipped))
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
    validate(&read_entries(text, path)?, path)
}

/// Reads document text into its entries without validating them (syntax errors only).
pub fn read_entries(text: &str, path: &Path) -> Result<Entries, DocumentError> {
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
    Ok(raw.into_entries())
}

/// Validates entries as the document at `path` (relative file paths resolve against its
/// directory): every bad entry is reported.
pub fn validate(entries: &Entries, path: &Path) -> Result<RuleSet, DocumentError> {
    let ctx = ParseContext {
        base_dir: path.parent(),
    };
    let mut set = RuleSet::default();
    let mut errors = Vec::new();
    for (key, value) in entries {
        let Some((kind, id)) = EntryKind::parse_key(key) else {
            continue; // documents only produce known keys
        };
        match Entry::parse(kind, id, value, ctx) {
            Ok(entry) => set.insert(id, entry),
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() {
        Ok(set)
    } else {
        Err(DocumentError::Entries {
            path: path.display().to_string(),
            errors,
        })
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

    #[test]
    fn rendered_entries_read_back_the_same() {
        let text = r#"
settings: {mode: dry_run}
routes:
  orders: {host: api.example.com, path: "/orders/{id}", require: {all: [orders:read]}}
scopes:
  api/orders:write: {implies: [orders:read]}
revoked:
  sub: {alice: {issued_before: 1764000000, expires_at: 1765000000}}
"#;
        let entries = read_entries(text, Path::new("r.yaml")).unwrap();
        assert!(entries.contains_key("scopes/api/orders:write"));
        assert!(entries.contains_key("settings"));
        let set = validate(&entries, Path::new("r.yaml")).unwrap();
        assert!(set.global_dry_run());
        let mut with_lockdown = entries.clone();
        with_lockdown.insert("lockdown".into(), serde_json::json!({"reason": "x"}));
        for format in [Format::Yaml, Format::Json] {
            let (out, skipped) = render(&with_lockdown, format).unwrap();
            assert_eq!(skipped, ["lockdown"]);
            let name = if format == Format::Json {
                "r.json"
            } else {
                "r.yaml"
            };
            assert_eq!(
                read_entries(&out, Path::new(name)).unwrap(),
                entries,
                "{out}"
            );
        }
    }
}
