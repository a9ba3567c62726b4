//! Property tests for every parser on the decision path and in rule loading: the bearer parser,
//! the host normaliser, JWT verification on arbitrary bytes, and every rule/issuer JSON value.
//! None may panic; the bearer parser agrees with a straightforward reading of RFC 6750 §2.1;
//! every host scopegate accepts is read the same by the `http` crate's authority parser (what
//! hyper-based upstreams use); a rejected rule value names the field that is wrong. Bounded here (PROPTEST_CASES raises it for a longer run, see
//! docs/benchmarks.md).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

mod support;

use std::path::Path;

use proptest::prelude::*;
use scopegate::authz::request::{bearer_token, normalise_host};
use scopegate::rules::document::parse_document;
use scopegate::rules::{Entry, EntryKind, ParseContext};
use scopegate::store::Snapshot;
use serde_json::{json, Value};

const CTX: ParseContext<'static> = ParseContext { base_dir: None };

/// RFC 6750 §2.1, read literally: `"Bearer" 1*SP b64token`, the scheme case-insensitive.
fn reference_bearer(value: &str) -> Option<Result<String, ()>> {
    let value = value.trim_matches(' ');
    let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = rest.trim_start_matches(' ');
    let body = token.trim_end_matches('=');
    let ok = !body.is_empty()
        && body
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-._~+/".contains(c));
    Some(if ok { Ok(token.to_string()) } else { Err(()) })
}

fn arbitrary_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| json!(f)),
        ".{0,12}".prop_map(Value::String),
        prop::sample::select(vec!["/", "*", "/a/{id}", "/**", "GET", "public", "RS256"])
            .prop_map(|s| json!(s)),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(
                prop::sample::select(vec![
                    "host",
                    "path",
                    "methods",
                    "require",
                    "mode",
                    "all",
                    "any",
                    "public",
                    "implies",
                    "aliases",
                    "issued_before",
                    "reason",
                    "issuer",
                    "audiences",
                    "algorithms",
                    "jwks",
                    "keys",
                    "kty",
                    "x",
                ])
                .prop_map(str::to_string),
                inner,
                0..5
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn kind() -> impl Strategy<Value = EntryKind> {
    prop::sample::select(EntryKind::ALL.to_vec())
}

/// A valid route and the names of its fields.
fn valid_route() -> Value {
    json!({"host": "api.example.com", "path": "/orders/{id}", "methods": ["GET"],
           "require": {"all": ["orders:read"]}, "mode": "enforce"})
}

/// The `http` crate's reading of an authority: its host, lower-cased, without one trailing dot
/// (DNS names are case-insensitive and `name.` is `name`). `None`: it refuses the authority.
fn reference_host(raw: &str) -> Option<String> {
    let authority: http::uri::Authority = raw.parse().ok()?;
    if authority.as_str().contains('@') {
        return None; // userinfo: not a Host header
    }
    let host = authority.host();
    Some(host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase())
}

/// Hosts in the shapes scopegate accepts: names of labels (IPv4 among them), IPv6 literals,
/// with or without a port and a trailing dot.
fn well_formed_host() -> impl Strategy<Value = String> {
    let label = "[A-Za-z0-9_-]{1,12}";
    let name = prop::collection::vec(label, 1..5).prop_map(|labels| labels.join("."));
    let literal = "[0-9a-fA-F:.]{1,20}".prop_map(|inside| format!("[{inside}]"));
    (
        prop_oneof![name.clone(), literal],
        prop::sample::select(vec!["", "."]),
        prop::option::of(0u32..100_000),
    )
        .prop_map(|(host, dot, port)| {
            let host = if host.starts_with('[') {
                host
            } else {
                format!("{host}{dot}")
            };
            match port {
                Some(port) => format!("{host}:{port}"),
                None => host,
            }
        })
}

/// The number of cases: `PROPTEST_CASES` for a longer run, else the bounded default.
fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(2048)))]

    #[test]
    fn bearer_parser_agrees_with_rfc6750(value in "[ A-Za-z0-9._~+/=,\"-]{0,24}", prefix in prop::sample::select(vec!["", "Bearer ", "bearer  ", "BEARER", "Basic ", " Bearer "])) {
        let header = format!("{prefix}{value}");
        let ours = bearer_token(Some(&header));
        match reference_bearer(&header) {
            None => prop_assert_eq!(ours, Ok(None)),
            Some(Ok(token)) => prop_assert_eq!(ours, Ok(Some(token.as_str()))),
            Some(Err(())) => prop_assert!(ours.is_err(), "{:?} accepted as {:?}", header, ours),
        }
    }

    #[test]
    fn accepted_hosts_are_read_the_same_by_the_http_crate(
        raw in prop_oneof![
            well_formed_host(),
            "[A-Za-z0-9.:\\[\\]@%_ -]{0,24}",
            any::<String>(),
        ]
    ) {
        if let Ok(ours) = normalise_host(&raw) {
            prop_assert_eq!(Some(ours.clone()), reference_host(&raw), "{:?}", raw);
            prop_assert_eq!(normalise_host(&ours), Ok(ours.clone()), "idempotent");
            prop_assert!(!ours.starts_with('.') && !ours.contains(".."), "{:?}", ours);
        }
    }

    #[test]
    fn host_names_with_valid_ports_are_accepted(
        labels in prop::collection::vec("[A-Za-z0-9_-]{1,12}", 1..5),
        dot in prop::sample::select(vec!["", "."]),
        port in prop::option::of(any::<u16>()),
    ) {
        let name = format!("{}{dot}", labels.join("."));
        let raw = port.map_or(name.clone(), |port| format!("{name}:{port}"));
        let expected = labels.join(".").to_ascii_lowercase();
        prop_assert_eq!(normalise_host(&raw), Ok(expected));
    }

    #[test]
    fn token_verification_never_panics_on_arbitrary_input(
        raw in prop::collection::vec(any::<u8>(), 0..200),
        dots in prop::collection::vec(any::<u8>(), 0..3),
    ) {
        let snapshot = demo_snapshot();
        let mut raw = raw;
        for d in dots {
            raw.insert(usize::from(d) % (raw.len() + 1), b'.');
        }
        let text = String::from_utf8_lossy(&raw).into_owned();
        if let Err(e) = snapshot.verifier.verify(&text) {
            prop_assert!(!e.to_string().is_empty());
        } else {
            prop_assert!(false, "arbitrary bytes verified: {:?}", text);
        }
    }

    #[test]
    fn token_verification_never_panics_on_jwt_shaped_input(
        header in arbitrary_json(), claims in arbitrary_json(), sig in "[A-Za-z0-9_-]{0,90}"
    ) {
        use base64::Engine;
        let b64 = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        let token = format!("{}.{}.{sig}", b64(&header), b64(&claims));
        prop_assert!(demo_snapshot().verifier.verify(&token).is_err());
    }

    #[test]
    fn arbitrary_rule_values_never_panic(kind in kind(), value in arbitrary_json(), id in "[a-z:/]{0,6}") {
        if let Err(e) = Entry::parse(kind, &id, &value, CTX) {
            prop_assert!(!e.message.is_empty());
        }
    }

    #[test]
    fn a_rejected_route_field_is_named(field in prop::sample::select(vec!["host", "path", "methods", "require", "mode"]), value in arbitrary_json()) {
        let mut route = valid_route();
        route[field] = value;
        if let Err(e) = Entry::parse(EntryKind::Route, "r", &route, CTX) {
            prop_assert!(e.message.contains(field), "{} not named in {:?}", field, e.message);
        }
    }

    #[test]
    fn arbitrary_issuer_values_never_panic(value in arbitrary_json()) {
        let mut issuer = json!({"issuer": "https://idp/", "audiences": ["a"], "algorithms": ["EdDSA"]});
        issuer["jwks"] = json!({"keys": [value]});
        let _ = Entry::parse(EntryKind::Issuer, "i", &issuer, CTX);
    }
}

fn demo_snapshot() -> Snapshot {
    let yaml = format!("issuers:\n{}", support::tokens::issuer_yaml());
    Snapshot::build(parse_document(&yaml, Path::new("r.yaml")).unwrap(), 1, None)
}

#[test]
fn a_valid_route_parses_so_the_naming_property_is_not_vacuous() {
    assert!(Entry::parse(EntryKind::Route, "r", &valid_route(), CTX).is_ok());
    let mut bad = valid_route();
    bad["methods"] = json!(["GET", 5]);
    let e = Entry::parse(EntryKind::Route, "r", &bad, CTX).unwrap_err();
    assert!(e.message.starts_with("methods[1]: "), "{}", e.message);
}
