//! Security issue regressions over real gRPC: what the upstream is told (never an identity or
//! a scope that did not pass), credentials that are ambiguous, methods upstreams fold, tokens
//! whose claims would escape revocations, and paths that are not in normal form (pinned or not).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::disallowed_methods,
    reason = "tests, benchmarks and examples: a failed step stops them with its message, and they read their own environment"
)]

mod support;

use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue};
use serde_json::json;
use support::server::{check_request, Answer, TestServer};
use support::tokens::{self, claims, sign, token};

const ADMIN_PREFIX: &str = "/admin";

fn rules() -> String {
    format!(
        r#"
issuers:
{issuer}
routes:
  orders-read: {{host: api.example.com, path: "/orders/**", methods: [GET], require: {{all: [orders:read]}}}}
  tenant-orders: {{host: api.example.com, path: "/{{tenant}}/orders", require: {{all: [orders:read]}}}}
  admin: {{host: api.example.com, path: {ADMIN_PREFIX}/**, require: {{all: [admin]}}}}
  delete-orders: {{host: api.example.com, path: /items/**, methods: [DELETE], require: {{all: [items:delete]}}}}
  items: {{host: api.example.com, path: /items/**, require: {{all: [orders:read]}}}}
  shadow: {{host: api.example.com, path: /shadow/**, require: {{all: [shadow:read]}}, mode: dry_run}}
revoked:
  sub: {{bad-user: {{issued_before: 4102444800}}}}
"#,
        issuer = tokens::issuer_yaml()
    )
}

async fn server() -> TestServer {
    TestServer::with_rules(&rules(), &[]).await
}

fn assert_denied(a: &Answer, status: u16, reason: &str, what: &str) {
    assert_eq!(
        (a.status, a.reason().as_deref()),
        (status, Some(reason)),
        "{what}: {a:?}"
    );
}

#[tokio::test]
async fn scp_elements_that_are_not_scope_tokens_are_neither_granted_nor_echoed() {
    let mut s = server().await;
    let mut c = claims("alice", "");
    c.as_object_mut().unwrap().remove("scope");
    c["scp"] = json!([
        "orders:read",
        "x admin",
        "admin\u{0}",
        "tab\tadmin",
        "quote\"admin"
    ]);
    let t = sign(jsonwebtoken::Algorithm::RS256, &c);
    let a = s
        .check("GET", "api.example.com", "/orders/1", Some(&t))
        .await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.header("x-scopegate-scopes"), Some("orders:read"));
    // The split pieces of "x admin" grant nothing either.
    let a = s
        .check("GET", "api.example.com", "/admin/x", Some(&t))
        .await;
    assert_denied(&a, 403, "insufficient_scope", "admin with a smuggled scope");
    // An scp that is one space-delimited string is split, as `scope` is.
    c["scp"] = json!("orders:read admin");
    let t = sign(jsonwebtoken::Algorithm::RS256, &c);
    let a = s
        .check("GET", "api.example.com", "/admin/x", Some(&t))
        .await;
    assert_eq!(a.status, 200, "{a:?}");
}

#[tokio::test]
async fn dry_run_allow_of_a_failed_token_asserts_no_identity() {
    let mut s = server().await;
    // Revoked subject: allowed by the dry_run rule, but no identity reaches the upstream.
    // The client also forged the identity headers: they must be removed, not passed on.
    let revoked = token("bad-user", "shadow:read");
    let auth = format!("Bearer {revoked}");
    let forged = check_request(
        "GET",
        "api.example.com",
        "/shadow/x",
        &[
            ("authorization", &auth),
            ("x-scopegate-subject", "bad-user"),
            ("x-scopegate-client-id", "test-client"),
            ("x-scopegate-scopes", "admin"),
        ],
    );
    let a = s.check_with(forged).await;
    assert_eq!(a.status, 200, "{a:?}");
    for h in [
        "x-scopegate-subject",
        "x-scopegate-client-id",
        "x-scopegate-scopes",
    ] {
        assert_eq!(a.header(h), None, "{h} must not be asserted");
        assert!(a.removed.iter().any(|r| r == h), "{h} removed: {a:?}");
    }
    // A token that verifies but only lacks the scope keeps its (verified) identity.
    let unscoped = token("alice", "orders:read");
    let a = s
        .check("GET", "api.example.com", "/shadow/x", Some(&unscoped))
        .await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.header("x-scopegate-subject"), Some("alice"));
}

#[tokio::test]
async fn iat_in_the_future_is_refused_so_revocation_cutoffs_bite() {
    let mut s = server().await;
    let mut c = claims("bad-user", "orders:read");
    c["iat"] = json!(4_102_444_800i64 + 10);
    let a = s
        .check(
            "GET",
            "api.example.com",
            "/orders/1",
            Some(&sign(jsonwebtoken::Algorithm::RS256, &c)),
        )
        .await;
    assert_denied(&a, 401, "invalid_claims", "future iat");
    assert!(a
        .header("www-authenticate")
        .unwrap()
        .contains(r#"error="invalid_token""#));
    // Within the leeway (30 s) it is accepted.
    let mut c = claims("alice", "orders:read");
    c["iat"] = json!(tokens::now() + 5);
    let t = sign(jsonwebtoken::Algorithm::RS256, &c);
    let a = s
        .check("GET", "api.example.com", "/orders/1", Some(&t))
        .await;
    assert_eq!(a.status, 200, "{a:?}");
}

#[tokio::test]
async fn identity_claims_with_whitespace_or_controls_are_refused() {
    let mut s = server().await;
    let cases = [
        ("sub", "bad-user "),
        ("sub", " bad-user"),
        ("sub", "bad-user\t"),
        ("sub", "bad\u{0}user"),
        ("sub", "bad-user\u{a0}"),
        ("sub", ""),
        ("client_id", "client\r\nx-injected: 1"),
        ("jti", "jti "),
    ];
    for (claim, value) in cases {
        let mut c = claims("alice", "orders:read");
        c[claim] = json!(value);
        let t = sign(jsonwebtoken::Algorithm::RS256, &c);
        let a = s
            .check("GET", "api.example.com", "/orders/1", Some(&t))
            .await;
        assert_denied(&a, 401, "invalid_claims", &format!("{claim}={value:?}"));
    }
}

#[tokio::test]
async fn methods_that_are_not_upper_case_tokens_are_refused() {
    let mut s = server().await;
    let t = token("alice", "orders:read");
    // DELETE needs items:delete; `delete` must not fall through to the broader `items` rule.
    for method in ["delete", "Delete", "dElEtE", "get", "GET ", "G\u{0}T"] {
        let a = s
            .check(method, "api.example.com", "/items/1", Some(&t))
            .await;
        assert_denied(&a, 400, "invalid_request", method);
    }
    let a = s
        .check("DELETE", "api.example.com", "/items/1", Some(&t))
        .await;
    assert_denied(&a, 403, "insufficient_scope", "DELETE");
    let a = s
        .check("GET", "api.example.com", "/items/1", Some(&t))
        .await;
    assert_eq!(a.status, 200, "{a:?}");
}

fn with_header_map(
    path: &str,
    headers: &[(&str, &[u8])],
) -> envoy_types::ext_authz::v3::pb::CheckRequest {
    let mut request = check_request("GET", "api.example.com", path, &[]);
    let http = request
        .attributes
        .as_mut()
        .and_then(|a| a.request.as_mut())
        .and_then(|r| r.http.as_mut())
        .unwrap();
    http.header_map = Some(HeaderMap {
        headers: headers
            .iter()
            .map(|(k, v)| HeaderValue {
                key: k.to_string(),
                raw_value: v.to_vec(),
                ..Default::default()
            })
            .collect(),
    });
    request
}

#[tokio::test]
async fn repeated_or_unreadable_authorization_is_malformed() {
    let mut s = server().await;
    let good = format!("Bearer {}", token("alice", "orders:read"));
    let other = format!("Bearer {}", token("mallory", "admin"));
    // One copy in header_map (Envoy's encode_raw_headers) works.
    let a = s
        .check_with(with_header_map(
            "/orders/1",
            &[("authorization", good.as_bytes())],
        ))
        .await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.header("x-scopegate-subject"), Some("alice"));
    type Headers<'a> = Vec<(&'a str, &'a [u8])>;
    let cases: [(&str, Headers<'_>); 3] = [
        (
            "two copies",
            vec![
                ("authorization", good.as_bytes()),
                ("authorization", other.as_bytes()),
            ],
        ),
        (
            "two copies, different case",
            vec![
                ("Authorization", other.as_bytes()),
                ("authorization", good.as_bytes()),
            ],
        ),
        (
            "not UTF-8",
            vec![("authorization", b"Bearer \xff\xfe".as_slice())],
        ),
    ];
    for (what, headers) in cases {
        let a = s.check_with(with_header_map("/orders/1", &headers)).await;
        assert_denied(&a, 400, "invalid_request", what);
    }
    // One copy in `headers` and another in `header_map`.
    let mut request = with_header_map("/orders/1", &[("authorization", other.as_bytes())]);
    let http = request
        .attributes
        .as_mut()
        .and_then(|a| a.request.as_mut())
        .and_then(|r| r.http.as_mut())
        .unwrap();
    http.headers.insert("authorization".into(), good.clone());
    let a = s.check_with(request).await;
    assert_denied(&a, 400, "invalid_request", "headers and header_map");
}

#[tokio::test]
async fn paths_not_in_normal_form_are_refused_also_on_a_pinned_rule() {
    let mut s = server().await;
    let t = token("alice", "orders:read");
    let hostile = [
        "/admin//../orders/1",
        "/orders/;/../admin",
        "/orders/;x=1/../admin",
        "/admin;x=1/orders",
        "/orders/1/../../admin/x",
        "/orders/%2e%2e/admin",
        "/orders/%252e%252e/admin",
        "//admin/x",
    ];
    for path in hostile {
        let a = s.check("GET", "api.example.com", path, Some(&t)).await;
        assert_denied(&a, 400, "invalid_request", path);
        let mut pinned = check_request(
            "GET",
            "api.example.com",
            path,
            &[("authorization", &format!("Bearer {t}"))],
        );
        pinned
            .attributes
            .as_mut()
            .unwrap()
            .context_extensions
            .insert("scopegate.rule".into(), "orders-read".into());
        let a = s.check_with(pinned).await;
        assert_denied(&a, 400, "invalid_request", &format!("pinned {path}"));
    }
    // The same token on normal-form paths: the orders rule allows, the admin rule denies.
    let a = s
        .check("GET", "api.example.com", "/orders/1/", Some(&t))
        .await;
    assert_eq!(a.status, 200, "{a:?}");
    let a = s
        .check("GET", "api.example.com", "/admin/orders/1", Some(&t))
        .await;
    assert_denied(&a, 403, "insufficient_scope", "/admin/orders/1");
}

/// .NET and Java compare decoded paths per character by Unicode case mappings, ICU folds them
/// fully after NFKC: to them `/%E2%84%AAeys/x` (KELVIN SIGN) is `/keys/x`, which the admin-only
/// rule covers, while as written it falls to the catch-all that lets a reader in. Refused (400)
/// whatever the token, as are escapes that NFKC turns into path syntax; non-ASCII that picks the
/// same rule either way is decided normally.
#[tokio::test]
async fn a_path_whose_unicode_case_changes_the_rule_is_refused() {
    let rules = format!(
        r#"
issuers:
{issuer}
routes:
  keys: {{host: api.example.com, path: /keys/**, require: {{all: [admin]}}}}
  files: {{host: api.example.com, path: "/files/{{name}}", require: {{all: [admin]}}}}
  rest: {{host: api.example.com, path: /**, require: {{all: [orders:read]}}}}
"#,
        issuer = tokens::issuer_yaml()
    );
    let mut s = TestServer::with_rules(&rules, &[]).await;
    let reader = token("alice", "orders:read");
    let admin = token("root", "admin orders:read");
    let a = s
        .check("GET", "api.example.com", "/keys/x", Some(&reader))
        .await;
    assert_denied(&a, 403, "insufficient_scope", "/keys/x is the admin rule's");
    for path in [
        "/%E2%84%AAeys/x",   // KELVIN SIGN: Java, .NET, ICU
        "/%E2%84%AAEYS",     // and upper case
        "/%EF%BC%ABeys/x",   // FULLWIDTH K (ICU: NFKC)
        "/%EF%AC%81les/a",   // LIGATURE FI (ICU)
        "/x/%E2%80%A5/keys", // TWO DOT LEADER is `..` to NFKC
        "/x%EF%BC%8Fkeys",   // FULLWIDTH SOLIDUS is `/`
        "/ke%C2%ADys/x",     // SOFT HYPHEN: ignored by culture-aware comparisons (.NET, ICU)
        "/%E2%80%8Bkeys",    // ZERO WIDTH SPACE
        "/x/%C2%AD/keys",    // a segment of ignorables only is `//`
    ] {
        let a = s.check("GET", "api.example.com", path, Some(&reader)).await;
        assert_denied(&a, 400, "invalid_request", path);
        let a = s.check("GET", "api.example.com", path, Some(&admin)).await;
        assert_denied(&a, 400, "invalid_request", "refused even with the scope");
    }
    // The catch-all's either way (`kyes` is no rule's literal), and the keys rule's either way.
    for (path, t) in [
        ("/caf%C3%A9/x", &reader),
        ("/%EF%BC%AByes", &reader),
        ("/keys/%E2%84%AA", &admin),
        ("/kyes%C2%AD", &reader),
    ] {
        let a = s.check("GET", "api.example.com", path, Some(t)).await;
        assert_eq!(a.status, 200, "{path}: {a:?}");
    }
}

/// A case-insensitive upstream (IIS, some ASP.NET and Spring set-ups) serves `/ADMIN/x` as
/// `/admin/x`: a path whose letter case changes which rule applies is refused (400), whatever
/// the token; upper case that picks the same rule either way is decided normally.
#[tokio::test]
async fn a_path_whose_letter_case_changes_the_rule_is_refused() {
    let mut s = server().await;
    let reader = token("alice", "orders:read");
    let admin = token("root", "admin orders:read");
    for path in ["/ADMIN/x", "/Admin/x", "/aDMIN", "/ORDERS/1"] {
        let a = s.check("GET", "api.example.com", path, Some(&reader)).await;
        assert_denied(&a, 400, "invalid_request", path);
        let a = s.check("GET", "api.example.com", path, Some(&admin)).await;
        assert_denied(&a, 400, "invalid_request", "refused even with the scope");
    }
    // Upper case inside a parameter or a prefix's tail picks the same rule either way.
    let a = s
        .check("GET", "api.example.com", "/orders/AbC", Some(&reader))
        .await;
    assert_eq!(a.status, 200, "{a:?}");
    let a = s
        .check("GET", "api.example.com", "/ACME/orders", Some(&reader))
        .await;
    assert_eq!(a.status, 200, "{a:?}");
    let a = s
        .check("GET", "api.example.com", "/admin/Reports", Some(&reader))
        .await;
    assert_denied(
        &a,
        403,
        "insufficient_scope",
        "same rule either way: decided",
    );
}

/// Some upstreams let a header replace the method (`X-HTTP-Method-Override: DELETE` on a POST)
/// or the URL (`X-Original-URL`) after the proxy: scopegate decided on the method and path
/// Envoy saw, so such a request is refused (400), whatever the rule and the token.
#[tokio::test]
async fn method_and_url_override_headers_are_refused() {
    let mut s = server().await;
    let reader = token("alice", "orders:read");
    let auth = format!("Bearer {reader}");
    // The controls: a reader may POST to /items/ (items), not DELETE there (delete-orders).
    let a = s
        .check("POST", "api.example.com", "/items/1", Some(&reader))
        .await;
    assert_eq!(a.status, 200, "{a:?}");
    let a = s
        .check("DELETE", "api.example.com", "/items/1", Some(&reader))
        .await;
    assert_denied(&a, 403, "insufficient_scope", "DELETE needs items:delete");
    for (method, path, header, value) in [
        ("POST", "/items/1", "x-http-method-override", "DELETE"),
        ("POST", "/items/1", "x-http-method", "DELETE"),
        ("POST", "/items/1", "x-method-override", "DELETE"),
        ("GET", "/orders/1", "x-original-url", "/admin/x"),
        ("GET", "/orders/1", "x-rewrite-url", "/admin/x"),
    ] {
        let request = check_request(
            method,
            "api.example.com",
            path,
            &[("authorization", &auth), (header, value)],
        );
        let a = s.check_with(request).await;
        assert_denied(&a, 400, "invalid_request", header);
    }
    // Listed in `header_map` (Envoy's `encode_raw_headers`), in any letter case.
    let raw = with_header_map(
        "/orders/1",
        &[
            ("authorization", auth.as_bytes()),
            ("X-HTTP-Method-Override", b"DELETE"),
        ],
    );
    let a = s.check_with(raw).await;
    assert_denied(&a, 400, "invalid_request", "header_map");
    // Other x- headers are no reason to refuse.
    let request = check_request(
        "GET",
        "api.example.com",
        "/orders/1",
        &[("authorization", &auth), ("x-request-id", "1")],
    );
    assert_eq!(s.check_with(request).await.status, 200);
}

#[tokio::test]
async fn a_malformed_token_is_refused_even_beside_a_cached_valid_one() {
    // The claims cache is asked before the token's syntax is checked (a hit means the very
    // same bytes passed that check and verification before): a token that differs from a
    // cached one in any byte must still get the answer its syntax calls for.
    let mut s = server().await;
    let good = token("alice", "orders:read");
    for round in ["verified", "cached"] {
        let a = s
            .check("GET", "api.example.com", "/orders/1", Some(&good))
            .await;
        assert_eq!(a.status, 200, "{round}: {a:?}");
    }
    let malformed = [
        format!("{good}!"),
        format!("{good}\u{e9}"),
        format!("{} {}", &good[..10], &good[10..]),
        format!("={good}"),
    ];
    for (i, bad) in malformed.iter().enumerate() {
        for round in ["first", "again"] {
            let a = s
                .check("GET", "api.example.com", "/orders/1", Some(bad))
                .await;
            assert_denied(
                &a,
                400,
                "invalid_request",
                &format!("malformed {i}, {round}"),
            );
        }
    }
    // Surrounding spaces are not part of the header value (RFC 9110 §5.5): the cached token.
    let a = s
        .check(
            "GET",
            "api.example.com",
            "/orders/1",
            Some(&format!("{good} ")),
        )
        .await;
    assert_eq!(a.status, 200, "{a:?}");
    // Well-formed but not the cached token (trailing padding is b64token syntax): verified, and
    // refused by the signature check.
    let a = s
        .check(
            "GET",
            "api.example.com",
            "/orders/1",
            Some(&format!("{good}=")),
        )
        .await;
    assert_eq!(a.status, 401, "{a:?}");
    // Over the size bound: the syntax is still judged first, as for any token.
    let huge = "a".repeat(scopegate::check::DEFAULT_MAX_TOKEN_BYTES + 1);
    let a = s
        .check(
            "GET",
            "api.example.com",
            "/orders/1",
            Some(&format!("{huge}!")),
        )
        .await;
    assert_denied(&a, 400, "invalid_request", "oversized and malformed");
    let a = s
        .check("GET", "api.example.com", "/orders/1", Some(&huge))
        .await;
    assert_denied(&a, 401, "token_too_large", "oversized");
    // And the cached token is still good.
    let a = s
        .check("GET", "api.example.com", "/orders/1", Some(&good))
        .await;
    assert_eq!(a.status, 200, "{a:?}");
}
