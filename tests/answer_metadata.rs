//! Envoy-native answers over real gRPC: `dynamic_metadata` with the decision log's fields and
//! never the token, on denials and dry-run would-be denials by default and on every answer with
//! `--dynamic-metadata all`; header removals only for headers the request carries;
//! `--strip-authorization`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;

use envoy_types::ext_authz::v3::pb::{CheckRequest, CheckResponse, HttpResponse};
use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue};
use envoy_types::pb::google::protobuf::value::Kind;
use serde_json::{json, Value};
use support::server::{check_request, TestServer};
use support::tokens::{self, claims, sign, token};

fn rules() -> String {
    format!(
        r#"
issuers:
{issuer}
routes:
  health: {{host: "*", path: /healthz, require: {{public: true}}}}
  orders-read: {{host: api.example.com, path: "/orders/{{id}}", methods: [GET], require: {{all: [orders:read]}}}}
  reports: {{host: api.example.com, path: /reports/**, require: {{all: [reports:read]}}, mode: dry_run}}
"#,
        issuer = tokens::issuer_yaml()
    )
}

const IDENTITY: [&str; 3] = [
    "x-scopegate-subject",
    "x-scopegate-client-id",
    "x-scopegate-scopes",
];

async fn raw(s: &mut TestServer, request: CheckRequest) -> CheckResponse {
    s.client.check(request).await.unwrap().into_inner()
}

/// The dynamic metadata as JSON (strings and numbers are all scopegate sends).
fn metadata(response: &CheckResponse) -> BTreeMap<String, Value> {
    let fields = &response
        .dynamic_metadata
        .as_ref()
        .expect("dynamic_metadata")
        .fields;
    fields
        .iter()
        .map(|(k, v)| {
            let value = match v.kind.as_ref().unwrap() {
                Kind::StringValue(s) => json!(s),
                Kind::NumberValue(n) => json!(n),
                other => panic!("{k}: unexpected {other:?}"),
            };
            (k.clone(), value)
        })
        .collect()
}

fn removed(response: &CheckResponse) -> Vec<String> {
    match &response.http_response {
        Some(HttpResponse::OkResponse(ok)) => ok.headers_to_remove.clone(),
        other => panic!("not an OK response: {other:?}"),
    }
}

fn denial(response: &CheckResponse) -> (u32, Value, Option<String>) {
    let Some(HttpResponse::DeniedResponse(denied)) = &response.http_response else {
        panic!("not denied: {response:?}")
    };
    let header = denied
        .headers
        .iter()
        .filter_map(|h| h.header.as_ref())
        .find(|h| h.key == "x-scopegate-decision-id")
        .map(|h| h.value.clone());
    let body: Value = serde_json::from_str(&denied.body).unwrap();
    (denied.status.as_ref().unwrap().code as u32, body, header)
}

fn with_bearer<'a>(auth: &'a str, extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut headers = vec![("authorization", auth)];
    headers.extend_from_slice(extra);
    headers
}

const ALL: [&str; 2] = ["--dynamic-metadata", "all"];

#[tokio::test]
async fn an_allow_carries_decision_rule_revision_and_the_verified_identity() {
    let mut s = TestServer::with_rules(&rules(), &ALL).await;
    let t = token("alice", "orders:read");
    let auth = format!("Bearer {t}");
    let r = raw(
        &mut s,
        check_request(
            "GET",
            "api.example.com",
            "/orders/7",
            &with_bearer(&auth, &[]),
        ),
    )
    .await;
    let m = metadata(&r);
    let id = m["decision_id"].as_str().unwrap().to_string();
    assert_eq!(id.len(), 32, "{m:?}");
    assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
    let mut expected = BTreeMap::new();
    for (k, v) in [
        ("decision_id", json!(id)),
        ("decision", json!("allow")),
        ("reason", json!("allowed")),
        ("rule_id", json!("orders-read")),
        ("revision", json!(1.0)),
        ("subject", json!("alice")),
        ("client_id", json!("test-client")),
    ] {
        expected.insert(k.to_string(), v);
    }
    assert_eq!(m, expected);
    let text = format!("{r:?}");
    assert!(!text.contains(&t), "the token is nowhere in the answer");
    // Each answer has its own id.
    let again = raw(
        &mut s,
        check_request(
            "GET",
            "api.example.com",
            "/orders/7",
            &with_bearer(&auth, &[]),
        ),
    )
    .await;
    assert_ne!(metadata(&again)["decision_id"], json!(id));
}

#[tokio::test]
async fn by_default_only_denials_and_dry_run_allows_carry_metadata_and_off_sends_none() {
    let auth = format!("Bearer {}", token("alice", "orders:read"));
    let allowed = || {
        check_request(
            "GET",
            "api.example.com",
            "/orders/7",
            &with_bearer(&auth, &[]),
        )
    };
    let denied = || check_request("GET", "api.example.com", "/orders/7", &[]);
    let dry_run = || check_request("GET", "api.example.com", "/reports/q3", &[]);

    let mut s = TestServer::with_rules(&rules(), &[]).await;
    let r = raw(&mut s, allowed()).await;
    assert!(
        matches!(r.http_response, Some(HttpResponse::OkResponse(_))),
        "{r:?}"
    );
    assert_eq!(
        r.dynamic_metadata, None,
        "a plain allow carries none by default"
    );
    let r = raw(
        &mut s,
        check_request("GET", "api.example.com", "/healthz", &[]),
    )
    .await;
    assert_eq!(r.dynamic_metadata, None, "nor does a public allow");
    assert_eq!(
        metadata(&raw(&mut s, denied()).await)["reason"],
        json!("missing_credential")
    );
    let m = metadata(&raw(&mut s, dry_run()).await);
    assert_eq!(m["would_deny"], json!("missing_credential"), "{m:?}");

    let mut off = TestServer::with_rules(&rules(), &["--dynamic-metadata", "off"]).await;
    for request in [allowed(), denied(), dry_run()] {
        let r = raw(&mut off, request).await;
        assert_eq!(r.dynamic_metadata, None, "{r:?}");
    }
    // The denial itself still names its decision for the client.
    let (code, body, header) = denial(&raw(&mut off, denied()).await);
    assert_eq!(code, 401);
    assert_eq!(body["decision_id"].as_str(), header.as_deref());
}

/// (path, headers, HTTP status, reason, rule_id, subject)
type Case<'a> = (
    &'a str,
    Vec<(&'a str, &'a str)>,
    u32,
    &'a str,
    Option<&'a str>,
    Option<&'a str>,
);

#[tokio::test]
async fn every_denial_carries_metadata_matching_the_body_and_header() {
    let mut s = TestServer::with_rules(&rules(), &[]).await;
    let mut expired = claims("bob", "orders:read");
    expired["exp"] = json!(tokens::now() - 3600);
    let expired = format!("Bearer {}", sign(jsonwebtoken::Algorithm::RS256, &expired));
    let weak = format!("Bearer {}", token("carol", "profile"));
    let cases: Vec<Case<'_>> = vec![
        (
            "/orders/1",
            vec![],
            401,
            "missing_credential",
            Some("orders-read"),
            None,
        ),
        (
            "/orders/1",
            with_bearer(&expired, &[]),
            401,
            "token_expired",
            Some("orders-read"),
            None,
        ),
        // A verified token that lacks the scope: who was refused is known, and logged.
        (
            "/orders/1",
            with_bearer(&weak, &[]),
            403,
            "insufficient_scope",
            Some("orders-read"),
            Some("carol"),
        ),
        ("/nothing", vec![], 403, "no_rule", None, None),
        ("/orders/1/../2", vec![], 400, "invalid_request", None, None),
    ];
    for (path, headers, status, reason, rule, subject) in cases {
        let r = raw(
            &mut s,
            check_request("GET", "api.example.com", path, &headers),
        )
        .await;
        let m = metadata(&r);
        let (code, body, header) = denial(&r);
        assert_eq!(code, status, "{path} {reason}");
        assert_eq!(m["decision"], json!("deny"), "{reason}");
        assert_eq!(m["reason"], json!(reason));
        assert_eq!(body["reason"], json!(reason));
        assert_eq!(m["decision_id"], body["decision_id"], "{reason}");
        assert_eq!(m["decision_id"].as_str(), header.as_deref(), "{reason}");
        assert_eq!(m.get("rule_id").and_then(Value::as_str), rule, "{reason}");
        assert_eq!(
            m.get("subject").and_then(Value::as_str),
            subject,
            "{reason}"
        );
        assert_eq!(m.contains_key("client_id"), subject.is_some(), "{reason}");
        assert_eq!(m["revision"], json!(1.0));
    }
}

#[tokio::test]
async fn a_dry_run_allow_says_what_enforce_would_have_denied() {
    let mut s = TestServer::with_rules(&rules(), &[]).await;
    let r = raw(
        &mut s,
        check_request("GET", "api.example.com", "/reports/q3", &[]),
    )
    .await;
    let m = metadata(&r);
    assert_eq!(m["decision"], json!("allow"));
    assert_eq!(m["reason"], json!("dry_run"));
    assert_eq!(m["would_deny"], json!("missing_credential"));
    assert_eq!(m["rule_id"], json!("reports"));
    assert!(!m.contains_key("subject"));
}

#[tokio::test]
async fn identity_headers_are_removed_only_when_the_request_carries_them() {
    let mut s = TestServer::with_rules(&rules(), &ALL).await;
    // Public route, nothing forged: nothing to remove, so no removal is asked for.
    let r = raw(
        &mut s,
        check_request("GET", "api.example.com", "/healthz", &[]),
    )
    .await;
    assert_eq!(removed(&r), Vec::<String>::new());
    assert_eq!(metadata(&r)["reason"], json!("public"));
    // A forged copy (any case) is removed; the others, absent, are not mentioned.
    let forged = [("X-Scopegate-Subject", "root")];
    let r = raw(
        &mut s,
        check_request("GET", "api.example.com", "/healthz", &forged),
    )
    .await;
    assert_eq!(removed(&r), vec!["x-scopegate-subject".to_string()]);
    // The same through header_map (Envoy's encode_raw_headers).
    let mut request = check_request("GET", "api.example.com", "/healthz", &[]);
    let http = request
        .attributes
        .as_mut()
        .unwrap()
        .request
        .as_mut()
        .unwrap();
    http.http.as_mut().unwrap().header_map = Some(HeaderMap {
        headers: vec![HeaderValue {
            key: "x-scopegate-scopes".into(),
            raw_value: b"admin".to_vec(),
            ..Default::default()
        }],
    });
    assert_eq!(
        removed(&raw(&mut s, request).await),
        vec!["x-scopegate-scopes".to_string()]
    );
    // A dry-run allow of no token asserts nothing; all three forged copies go.
    let all: Vec<(&str, &str)> = IDENTITY.iter().map(|h| (*h, "forged")).collect();
    let r = raw(
        &mut s,
        check_request("GET", "api.example.com", "/reports/x", &all),
    )
    .await;
    let mut got = removed(&r);
    got.sort();
    let mut want: Vec<String> = IDENTITY.iter().map(|h| h.to_string()).collect();
    want.sort();
    assert_eq!(got, want);
    // Asserted identity overwrites instead: no removal.
    let auth = format!("Bearer {}", token("alice", "orders:read"));
    let headers = with_bearer(&auth, &[("x-scopegate-subject", "root")]);
    let r = raw(
        &mut s,
        check_request("GET", "api.example.com", "/orders/1", &headers),
    )
    .await;
    assert_eq!(removed(&r), Vec::<String>::new());
}

#[tokio::test]
async fn strip_authorization_removes_the_credential_only_when_sent() {
    let mut plain = TestServer::with_rules(&rules(), &[]).await;
    let auth = format!("Bearer {}", token("alice", "orders:read"));
    let orders = check_request(
        "GET",
        "api.example.com",
        "/orders/1",
        &with_bearer(&auth, &[]),
    );
    assert_eq!(
        removed(&raw(&mut plain, orders.clone()).await),
        Vec::<String>::new()
    );

    let mut s = TestServer::with_rules(&rules(), &["--strip-authorization"]).await;
    assert_eq!(
        removed(&raw(&mut s, orders).await),
        vec!["authorization".to_string()]
    );
    let public = check_request("GET", "api.example.com", "/healthz", &[]);
    assert_eq!(removed(&raw(&mut s, public).await), Vec::<String>::new());
    // A denial never reaches the upstream: nothing to strip there.
    let weak = format!("Bearer {}", token("carol", "profile"));
    let denied = raw(
        &mut s,
        check_request(
            "GET",
            "api.example.com",
            "/orders/1",
            &with_bearer(&weak, &[]),
        ),
    )
    .await;
    assert_eq!(denial(&denied).0, 403);
}

#[tokio::test]
async fn a_check_without_http_attributes_still_carries_metadata() {
    let mut s = TestServer::with_rules(&rules(), &[]).await;
    let r = raw(&mut s, CheckRequest::default()).await;
    let m = metadata(&r);
    assert_eq!(m["decision"], json!("deny"));
    assert_eq!(m["reason"], json!("invalid_request"));
    assert_eq!(m["decision_id"].as_str().unwrap().len(), 32);
}
