//! A route rule: host pattern, path pattern, methods, scope requirement, required token binding
//! and mode, validated from its JSON form. Specificity (which of several matching rules wins) is
//! defined here too.

use std::cmp::Ordering;

use serde::Deserialize;
use serde_json::Value;

use super::validate_scope_token;

/// Why a route value was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("{0}")]
    Shape(String),
    #[error("host {0:?}: {1}")]
    Host(String, &'static str),
    #[error("path {0:?}: {1}")]
    Path(String, &'static str),
    #[error("methods: {0:?} is not an HTTP method token")]
    Method(String),
    #[error("require: {0}")]
    Require(String),
    #[error("mode {0:?}: expected \"enforce\" or \"dry_run\"")]
    Mode(String),
    #[error("require_binding {0:?}: expected \"dpop\", \"mtls\" or \"any\"")]
    Binding(String),
}

/// Which hosts a route applies to. Hosts are compared lower-case, without port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostPattern {
    /// `api.example.com`
    Exact(String),
    /// `*.example.com`: any name below `example.com` (not `example.com` itself); holds `.example.com`.
    Suffix(String),
    /// `*`
    Any,
}

impl HostPattern {
    pub fn parse(raw: &str) -> Result<HostPattern, RouteError> {
        let host = raw.strip_suffix('.').unwrap_or(raw).to_ascii_lowercase();
        let bad = |why| Err(RouteError::Host(raw.to_string(), why));
        if raw == "*" {
            return Ok(HostPattern::Any);
        }
        let (name, wildcard) = match host.strip_prefix("*.") {
            Some(rest) => (rest.to_string(), true),
            None => (host.clone(), false),
        };
        if name.is_empty() {
            return bad("must be a host name, `*.suffix` or `*`");
        }
        if !is_host(&name) {
            return bad("must be a host name, `*.suffix` or `*` (no port, no other wildcards)");
        }
        Ok(if wildcard {
            HostPattern::Suffix(format!(".{name}"))
        } else {
            HostPattern::Exact(name)
        })
    }
}

/// A host without port in a shape every reading of an authority agrees on, for rules and
/// requests alike: a name of non-empty labels (`[A-Za-z0-9_-]`, dot-separated, at most
/// [`MAX_NAME_BYTES`]; IPv4 addresses are such names), or an IPv6 address in brackets (RFC 4291
/// text, as `std` parses it).
pub fn is_host(host: &str) -> bool {
    match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(literal) => literal.parse::<std::net::Ipv6Addr>().is_ok(),
        None => host.len() <= MAX_NAME_BYTES && is_dotted_name(host),
    }
}

/// The longest host name (RFC 1035's 255 octets on the wire, as text).
pub const MAX_NAME_BYTES: usize = 253;

/// Non-empty labels of `[A-Za-z0-9_-]`, dot-separated (one pass over the bytes: hosts are
/// read on every check).
fn is_dotted_name(name: &str) -> bool {
    let mut label_bytes = 0usize;
    for b in name.bytes() {
        if b == b'.' {
            if label_bytes == 0 {
                return false;
            }
            label_bytes = 0;
        } else if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            label_bytes += 1;
        } else {
            return false;
        }
    }
    label_bytes > 0
}

/// One segment of a path pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    Literal(String),
    /// `{name}`: exactly one non-empty segment.
    Param(String),
}

/// A path pattern: `/exact`, `/orders/{id}`, `/static/**` (prefix: the path itself and all below).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathPattern {
    pub segments: Vec<Segment>,
    pub prefix: bool,
    pub source: String,
}

impl PathPattern {
    pub fn parse(raw: &str) -> Result<PathPattern, RouteError> {
        let bad = |why| Err(RouteError::Path(raw.to_string(), why));
        if !raw.starts_with('/') {
            return bad("must start with '/'");
        }
        if raw.contains(['?', '#', '\\']) || raw.chars().any(|c| c.is_control() || c == ' ') {
            return bad("must not contain '?', '#', '\\', spaces or control characters");
        }
        let trimmed = raw.trim_end_matches('/');
        let mut parts: Vec<&str> = if trimmed.is_empty() {
            Vec::new()
        } else {
            trimmed[1..].split('/').collect()
        };
        let prefix = parts.last() == Some(&"**");
        if prefix {
            parts.pop();
        }
        let mut segments = Vec::with_capacity(parts.len());
        for part in parts {
            segments.push(parse_segment(raw, part)?);
        }
        Ok(PathPattern {
            segments,
            prefix,
            source: raw.to_string(),
        })
    }

    /// Orders two patterns that match the same path: `Greater` means `self` is more specific.
    /// Exact beats `{param}` beats `/**`; among prefixes the longer wins; otherwise a literal
    /// segment beats a parameter at the first position where they differ.
    pub fn specificity_cmp(&self, other: &PathPattern) -> Ordering {
        (!self.prefix)
            .cmp(&!other.prefix)
            .then_with(|| {
                if self.prefix {
                    self.segments.len().cmp(&other.segments.len())
                } else {
                    Ordering::Equal
                }
            })
            .then_with(|| {
                let kinds = |p: &PathPattern| -> Vec<bool> {
                    p.segments
                        .iter()
                        .map(|s| matches!(s, Segment::Literal(_)))
                        .collect()
                };
                kinds(self).cmp(&kinds(other))
            })
    }
}

fn parse_segment(raw: &str, part: &str) -> Result<Segment, RouteError> {
    let bad = |why| Err(RouteError::Path(raw.to_string(), why));
    if part.is_empty() {
        return bad("empty segment ('//')");
    }
    if let Some(name) = part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
        let ok = !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        return if ok {
            Ok(Segment::Param(name.to_string()))
        } else {
            bad("parameter names are {letters_digits_underscore}")
        };
    }
    if part.contains(['{', '}', '*']) {
        return bad(
            "'**' is only allowed as the last segment; '{' '}' only as a whole {param} segment",
        );
    }
    if part == "." || part == ".." || !part.bytes().all(is_plain_segment_byte) {
        return bad(
            "literal segments must be in normal form: no '.', '..', ';', percent-encoding, \
             non-ASCII or other characters a request path may not carry",
        );
    }
    Ok(Segment::Literal(part.to_string()))
}

/// The value of one hexadecimal digit of a percent-escape.
pub fn hex_digit(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// RFC 3986 unreserved characters (never percent-encoded in a normal-form path).
pub fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// A byte that may stand for itself in a normal-form path segment: RFC 3986 `pchar` without `%`
/// (escapes are checked one by one) and without `;` (segment parameters are refused). Rule
/// literals use the same alphabet, so every rule can match a request that passes.
pub fn is_plain_segment_byte(b: u8) -> bool {
    is_unreserved(b)
        || matches!(
            b,
            b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b'=' | b':' | b'@'
        )
}

/// What a token must carry for a route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    All(Vec<String>),
    Any(Vec<String>),
    Public,
}

impl Requirement {
    /// The scopes to list in a `WWW-Authenticate: … scope="…"` challenge.
    pub fn scopes(&self) -> &[String] {
        match self {
            Requirement::All(s) | Requirement::Any(s) => s,
            Requirement::Public => &[],
        }
    }
}

/// `enforce` denies; `dry_run` allows and reports what would have been denied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    #[default]
    Enforce,
    DryRun,
}

/// Which sender constraint a token must carry (`require_binding` on an issuer or a route): a
/// route or issuer that sets it refuses plain bearer tokens. A binding that a token carries is
/// enforced whether or not this is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BindingRequirement {
    /// RFC 9449: bound to a DPoP key (`cnf.jkt`).
    Dpop,
    /// RFC 8705: bound to a client certificate (`cnf["x5t#S256"]`).
    Mtls,
    /// Either of them.
    Any,
}

impl BindingRequirement {
    /// `"dpop"`, `"mtls"` or `"any"`; `None` for anything else.
    pub fn parse(raw: &str) -> Option<BindingRequirement> {
        match raw {
            "dpop" => Some(BindingRequirement::Dpop),
            "mtls" => Some(BindingRequirement::Mtls),
            "any" => Some(BindingRequirement::Any),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            BindingRequirement::Dpop => "dpop",
            BindingRequirement::Mtls => "mtls",
            BindingRequirement::Any => "any",
        }
    }
}

/// A validated route rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub id: String,
    pub host: HostPattern,
    pub path: PathPattern,
    /// `None`: any method. Upper-case tokens otherwise.
    pub methods: Option<Vec<String>>,
    pub require: Requirement,
    /// The token must be sender-constrained this way (`None`: plain bearer tokens are fine).
    pub require_binding: Option<BindingRequirement>,
    pub mode: Mode,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    host: String,
    path: String,
    #[serde(default)]
    methods: Option<Vec<String>>,
    require: RawRequire,
    #[serde(default)]
    require_binding: Option<String>,
    #[serde(default)]
    mode: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    description: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRequire {
    #[serde(default)]
    all: Option<Vec<String>>,
    #[serde(default)]
    any: Option<Vec<String>>,
    #[serde(default)]
    public: Option<bool>,
}

impl Route {
    pub fn from_json(id: &str, value: &Value) -> Result<Route, RouteError> {
        let raw: RawRoute = super::deserialize_value(value).map_err(RouteError::Shape)?;
        Ok(Route {
            id: id.to_string(),
            host: HostPattern::parse(&raw.host)?,
            path: PathPattern::parse(&raw.path)?,
            methods: raw.methods.map(parse_methods).transpose()?,
            require: parse_require(raw.require)?,
            require_binding: raw
                .require_binding
                .map(|b| BindingRequirement::parse(&b).ok_or(RouteError::Binding(b)))
                .transpose()?,
            mode: parse_mode(raw.mode.as_deref())?,
        })
    }

    /// Orders two routes that both match a request: `Greater` means `self` wins.
    /// Host specificity is decided by the index before this is consulted.
    pub fn precedence_cmp(&self, other: &Route) -> Ordering {
        self.path
            .specificity_cmp(&other.path)
            .then_with(|| self.methods.is_some().cmp(&other.methods.is_some()))
            .then_with(|| other.id.cmp(&self.id))
    }
}

fn parse_methods(methods: Vec<String>) -> Result<Vec<String>, RouteError> {
    if methods.is_empty() {
        return Err(RouteError::Shape(
            "methods: an empty list matches nothing; omit it to match any method".into(),
        ));
    }
    methods
        .into_iter()
        .map(|m| {
            let ok = !m.is_empty() && m.bytes().all(|b| b.is_ascii_alphabetic() || b == b'-');
            if ok {
                Ok(m.to_ascii_uppercase())
            } else {
                Err(RouteError::Method(m))
            }
        })
        .collect()
}

fn parse_require(raw: RawRequire) -> Result<Requirement, RouteError> {
    let scopes = |list: Vec<String>| -> Result<Vec<String>, RouteError> {
        if list.is_empty() {
            return Err(RouteError::Require("scope list must not be empty".into()));
        }
        for s in &list {
            validate_scope_token(s).map_err(RouteError::Require)?;
        }
        Ok(list)
    };
    match (raw.all, raw.any, raw.public) {
        (Some(all), None, None) => Ok(Requirement::All(scopes(all)?)),
        (None, Some(any), None) => Ok(Requirement::Any(scopes(any)?)),
        (None, None, Some(true)) => Ok(Requirement::Public),
        _ => Err(RouteError::Require(
            "exactly one of {\"all\":[…]}, {\"any\":[…]} or {\"public\":true}".into(),
        )),
    }
}

fn parse_mode(raw: Option<&str>) -> Result<Mode, RouteError> {
    match raw {
        None | Some("enforce") => Ok(Mode::Enforce),
        Some("dry_run") => Ok(Mode::DryRun),
        Some(other) => Err(RouteError::Mode(other.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn route(v: Value) -> Result<Route, RouteError> {
        Route::from_json("r", &v)
    }

    #[test]
    fn parses_a_full_route() {
        let r = route(
            json!({"host":"API.Example.com","path":"/orders/{id}","methods":["get"],
            "require":{"all":["orders:read"]},"mode":"dry_run"}),
        )
        .unwrap();
        assert_eq!(r.host, HostPattern::Exact("api.example.com".into()));
        assert_eq!(
            r.path.segments,
            vec![
                Segment::Literal("orders".into()),
                Segment::Param("id".into())
            ]
        );
        assert_eq!(r.methods, Some(vec!["GET".to_string()]));
        assert_eq!(r.mode, Mode::DryRun);
    }

    #[test]
    fn require_binding_is_dpop_mtls_or_any() {
        let with = |b: Value| {
            route(json!({"host":"*","path":"/","require":{"all":["a"]},"require_binding":b}))
        };
        assert_eq!(
            with(json!("dpop")).unwrap().require_binding,
            Some(BindingRequirement::Dpop)
        );
        assert_eq!(
            with(json!("mtls")).unwrap().require_binding,
            Some(BindingRequirement::Mtls)
        );
        assert_eq!(
            with(json!("any")).unwrap().require_binding,
            Some(BindingRequirement::Any)
        );
        for bad in [json!("DPoP"), json!("bearer"), json!(""), json!(true)] {
            assert!(with(bad.clone()).is_err(), "{bad}");
        }
        let plain = route(json!({"host":"*","path":"/","require":{"all":["a"]}})).unwrap();
        assert_eq!(plain.require_binding, None);
    }

    #[test]
    fn host_patterns() {
        assert_eq!(HostPattern::parse("*").unwrap(), HostPattern::Any);
        assert_eq!(
            HostPattern::parse("*.Example.com").unwrap(),
            HostPattern::Suffix(".example.com".into())
        );
        assert_eq!(
            HostPattern::parse("[::1]").unwrap(),
            HostPattern::Exact("[::1]".into())
        );
        for bad in [
            "",
            "a*.example.com",
            "*.*.com",
            "a..b",
            "a b",
            "*.",
            "api.example.com:8080",
            "::1",
            "[..]",
            "a]b",
        ] {
            assert!(HostPattern::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn path_patterns() {
        let p = PathPattern::parse("/static/**").unwrap();
        assert!(p.prefix);
        assert_eq!(p.segments, vec![Segment::Literal("static".into())]);
        let root = PathPattern::parse("/").unwrap();
        assert!(root.segments.is_empty() && !root.prefix);
        for bad in [
            "orders", "/a/**/b", "/a//b", "/a/../b", "/a/%2e", "/a?x", "/a/{}", "/a/{x-y}", "/a*",
        ] {
            assert!(PathPattern::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn require_needs_exactly_one_form() {
        assert!(route(json!({"host":"*","path":"/","require":{}})).is_err());
        assert!(route(json!({"host":"*","path":"/","require":{"all":["a"],"any":["b"]}})).is_err());
        assert!(route(json!({"host":"*","path":"/","require":{"public":false}})).is_err());
        assert!(route(json!({"host":"*","path":"/","require":{"all":[]}})).is_err());
        assert!(route(json!({"host":"*","path":"/","require":{"public":true}})).is_ok());
    }

    #[test]
    fn unknown_fields_and_modes_are_rejected() {
        assert!(route(json!({"host":"*","path":"/","require":{"public":true},"x":1})).is_err());
        assert!(
            route(json!({"host":"*","path":"/","require":{"public":true},"mode":"audit"})).is_err()
        );
        assert!(
            route(json!({"host":"*","path":"/","methods":[],"require":{"public":true}})).is_err()
        );
    }

    #[test]
    fn specificity_exact_over_param_over_prefix() {
        let p = |s| PathPattern::parse(s).unwrap();
        assert_eq!(p("/a/b").specificity_cmp(&p("/a/{x}")), Ordering::Greater);
        assert_eq!(p("/a/{x}").specificity_cmp(&p("/a/**")), Ordering::Greater);
        assert_eq!(p("/a/b/**").specificity_cmp(&p("/a/**")), Ordering::Greater);
        assert_eq!(
            p("/a/b/{x}").specificity_cmp(&p("/a/{y}/c")),
            Ordering::Greater
        );
        assert_eq!(p("/a/{x}").specificity_cmp(&p("/a/{y}")), Ordering::Equal);
    }
}
