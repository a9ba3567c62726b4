//! End to end through a real Envoy: etcd → scopegate (in-process, etcd source) ← Envoy running
//! `examples/envoy/envoy.yaml` → an echo upstream, driven by real HTTP requests.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a step that fails must fail the test, with its message"
)]

mod support;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::Client;
use scopegate::app::RunningApp;
use serde_json::json;
use support::envoy::{
    try_request, wait_scopegate_ready, EchoUpstream, Echoed, Envoy, HttpResponse,
};
use support::etcd::EtcdServer;
use support::path_readings::{self, is_under, path_part, readings, readings_under};
use support::server::serve_args;
use support::tokens;
use support::wait_until;

const HOST: &str = "api.example.com";
/// A host where everything is public but `/admin/**` (see
/// `behind_a_public_catch_all_no_hostile_path_reaches_an_admin_path`).
const OPEN_HOST: &str = "open.example.com";
const IDENTITY_HEADERS: [&str; 3] = [
    "x-scopegate-subject",
    "x-scopegate-client-id",
    "x-scopegate-scopes",
];
/// What a client might send to impersonate someone.
const FORGED: [(&str, &str); 3] = [
    ("x-scopegate-subject", "mallory"),
    ("x-scopegate-client-id", "forged-client"),
    ("x-scopegate-scopes", "orders:admin"),
];

/// The rules in etcd before scopegate starts (key below `/scopegate/`, JSON value).
fn initial_rules() -> Vec<(String, String)> {
    let route = |host: &str, path: &str, methods: &[&str], require: serde_json::Value| {
        json!({"host": host, "path": path, "methods": methods, "require": require}).to_string()
    };
    vec![
        ("issuers/test".into(), tokens::issuer_json()),
        (
            "scopes/orders:write".into(),
            json!({"implies": ["orders:read"]}).to_string(),
        ),
        (
            "routes/health".into(),
            route("*", "/healthz", &["GET"], json!({"public": true})),
        ),
        (
            "routes/public".into(),
            route(HOST, "/public/**", &["GET"], json!({"public": true})),
        ),
        (
            // What the hostile paths aim at: no test token has the `admin` scope.
            "routes/admin".into(),
            route(
                HOST,
                "/admin/**",
                &["GET", "HEAD", "POST"],
                json!({"all": ["admin"]}),
            ),
        ),
        (
            "routes/orders-read".into(),
            route(
                HOST,
                "/orders/{id}",
                &["GET", "HEAD"],
                json!({"all": ["orders:read"]}),
            ),
        ),
        (
            "routes/open-all".into(),
            route(OPEN_HOST, "/**", &["GET", "HEAD"], json!({"public": true})),
        ),
        (
            "routes/open-admin".into(),
            route(
                OPEN_HOST,
                "/admin/**",
                &["GET", "HEAD", "POST"],
                json!({"all": ["admin"]}),
            ),
        ),
        (
            "routes/orders-write".into(),
            route(
                HOST,
                "/orders/**",
                &["POST", "PUT", "DELETE"],
                json!({"all": ["orders:write"]}),
            ),
        ),
    ]
}

/// etcd, scopegate watching it, the echo upstream, and Envoy in front.
struct Stack {
    envoy: Envoy,
    upstream: EchoUpstream,
    app: Option<RunningApp>,
    etcd_client: Client,
    _etcd: EtcdServer,
}

impl Stack {
    async fn start() -> Stack {
        Stack::start_with(false).await
    }

    /// `access_log`: Envoy also writes an access log (see [`Envoy::start_example_logged`]).
    async fn start_with(access_log: bool) -> Stack {
        let etcd = EtcdServer::start().await;
        let mut etcd_client = etcd.client().await;
        for (key, value) in initial_rules() {
            etcd_client
                .put(format!("/scopegate/{key}"), value, None)
                .await
                .unwrap();
        }
        let endpoint = etcd.endpoint();
        let app = scopegate::app::start(&serve_args(&["--etcd-endpoints", &endpoint]))
            .await
            .expect("scopegate starts");
        wait_scopegate_ready(app.admin_addr).await;
        let upstream = EchoUpstream::start().await;
        let envoy = if access_log {
            Envoy::start_example_logged(app.grpc_addr, upstream.addr).await
        } else {
            Envoy::start_example(app.grpc_addr, upstream.addr).await
        };
        Stack {
            envoy,
            upstream,
            app: Some(app),
            etcd_client,
            _etcd: etcd,
        }
    }

    /// `method path` on Host api.example.com, with an optional bearer token and extra headers.
    async fn send(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        extra: &[(&str, &str)],
    ) -> HttpResponse {
        let auth = token.map(|t| format!("Bearer {t}"));
        let mut headers = vec![("Host", HOST)];
        if let Some(auth) = auth.as_deref() {
            headers.push(("Authorization", auth));
        }
        headers.extend_from_slice(extra);
        self.envoy.request(method, path, &headers).await
    }

    async fn get(&self, path: &str, token: Option<&str>) -> HttpResponse {
        self.send("GET", path, token, &[]).await
    }

    async fn put(&mut self, key: &str, value: serde_json::Value) {
        self.etcd_client
            .put(format!("/scopegate/{key}"), value.to_string(), None)
            .await
            .unwrap();
    }

    async fn delete(&mut self, key: &str) {
        self.etcd_client
            .delete(format!("/scopegate/{key}"), None)
            .await
            .unwrap();
    }

    /// Waits until `GET path` with `token` answers `status` (and `reason`, for denials).
    async fn wait_for(&self, path: &str, token: &str, status: u16, reason: Option<&str>) {
        let what = format!("GET {path} answers {status} {reason:?} through Envoy");
        wait_until(&what, Duration::from_secs(10), || async {
            let r = self.get(path, Some(token)).await;
            r.status == status && reason.is_none_or(|want| r.json()["reason"] == want)
        })
        .await;
    }

    /// How many checks scopegate has answered.
    fn checks(&self) -> u64 {
        let metrics = self
            .app
            .as_ref()
            .expect("scopegate running")
            .metrics
            .encode();
        metrics
            .lines()
            .find_map(|l| {
                l.strip_prefix("scopegate_check_duration_seconds_count ")?
                    .trim()
                    .parse()
                    .ok()
            })
            .expect("check duration histogram is exported")
    }
}

fn assert_denied(r: &HttpResponse, status: u16, reason: &str) {
    assert_eq!(r.status, status, "{r:?}");
    assert_eq!(r.json()["reason"], reason, "{r:?}");
    assert!(
        r.echoed().is_none(),
        "a denial must not come from the upstream: {r:?}"
    );
}

#[tokio::test]
async fn allowed_request_reaches_upstream_with_identity_headers_replacing_forged_ones() {
    let stack = Stack::start().await;
    let token = tokens::token("alice", "orders:read");

    let r = stack
        .send("GET", "/orders/42?x=1", Some(&token), &FORGED)
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let seen = r.echoed().expect("the upstream answered");
    assert_eq!(
        (seen.method.as_str(), seen.path.as_str()),
        ("GET", "/orders/42?x=1")
    );
    assert_eq!(seen.header("x-scopegate-subject"), Some("alice"));
    assert_eq!(seen.header("x-scopegate-client-id"), Some("test-client"));
    assert_eq!(seen.header("x-scopegate-scopes"), Some("orders:read"));

    // An implied scope: orders:write implies orders:read; the upstream sees the granted scopes.
    let writer = tokens::token("carol", "orders:write");
    let r = stack
        .send("DELETE", "/orders/42", Some(&writer), &FORGED)
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let seen = r.echoed().unwrap();
    assert_eq!(seen.header("x-scopegate-subject"), Some("carol"));
    assert_eq!(seen.header("x-scopegate-scopes"), Some("orders:write"));

    // A token without client_id: the forged client id is removed, not passed through.
    let mut claims = tokens::claims("bob", "orders:read");
    claims.as_object_mut().unwrap().remove("client_id");
    let no_client = tokens::sign(jsonwebtoken::Algorithm::RS256, &claims);
    let r = stack
        .send("GET", "/orders/7", Some(&no_client), &FORGED)
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let seen = r.echoed().unwrap();
    assert_eq!(seen.header("x-scopegate-subject"), Some("bob"));
    assert_eq!(
        seen.header("x-scopegate-client-id"),
        None,
        "forged client id reached the upstream"
    );
    assert_eq!(stack.upstream.requests(), 3);
}

#[tokio::test]
async fn missing_or_invalid_token_is_401_with_bearer_challenge() {
    let stack = Stack::start().await;

    let r = stack.get("/orders/42", None).await;
    assert_denied(&r, 401, "missing_credential");
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer realm=\"scopegate\"")
    );
    assert!(r
        .header("x-scopegate-decision-id")
        .is_some_and(|id| !id.is_empty()));

    let mut claims = tokens::claims("mallory", "orders:read");
    claims["exp"] = json!(tokens::now() - 3600);
    let expired = tokens::sign(jsonwebtoken::Algorithm::RS256, &claims);
    let r = stack.get("/orders/42", Some(&expired)).await;
    assert_denied(&r, 401, "token_expired");
    let challenge = r.header("www-authenticate").unwrap();
    assert!(
        challenge.starts_with("Bearer realm=\"scopegate\", error=\"invalid_token\""),
        "{challenge}"
    );

    let r = stack.get("/orders/42", Some("not.a.jwt")).await;
    assert_eq!(r.status, 401, "{r:?}");
    assert!(r
        .header("www-authenticate")
        .unwrap()
        .contains("error=\"invalid_token\""));
    assert_eq!(stack.upstream.requests(), 0);
}

#[tokio::test]
async fn insufficient_scope_is_403_with_the_required_scope_in_the_challenge() {
    let stack = Stack::start().await;
    let reader = tokens::token("alice", "profile orders:read");

    let r = stack
        .get("/orders/42", Some(&tokens::token("alice", "profile")))
        .await;
    assert_denied(&r, 403, "insufficient_scope");
    let challenge = r.header("www-authenticate").unwrap();
    assert!(
        challenge.contains("error=\"insufficient_scope\""),
        "{challenge}"
    );
    assert!(challenge.contains("scope=\"orders:read\""), "{challenge}");
    assert_eq!(r.json()["error"], "insufficient_scope");

    let r = stack
        .send(
            "POST",
            "/orders/42",
            Some(&reader),
            &[("Content-Length", "0")],
        )
        .await;
    assert_denied(&r, 403, "insufficient_scope");
    assert!(r
        .header("www-authenticate")
        .unwrap()
        .contains("scope=\"orders:write\""));

    // No rule for the path: 403 no_rule, without a challenge.
    let r = stack.get("/unrouted", Some(&reader)).await;
    assert_denied(&r, 403, "no_rule");
    assert_eq!(r.header("www-authenticate"), None);
    assert_eq!(stack.upstream.requests(), 0);
}

#[tokio::test]
async fn forged_identity_headers_never_reach_the_upstream_on_public_routes() {
    let stack = Stack::start().await;
    let token = tokens::token("alice", "orders:read");
    for credential in [None, Some(token.as_str())] {
        let r = stack.send("GET", "/healthz", credential, &FORGED).await;
        assert_eq!(r.status, 200, "{r:?}");
        let seen = r.echoed().unwrap();
        for name in IDENTITY_HEADERS {
            assert_eq!(
                seen.all(name),
                Vec::<&str>::new(),
                "{name} reached the upstream on a public route"
            );
        }
    }
}

/// `X-HTTP-Method-Override` (a POST served as DELETE by some frameworks) and `X-Original-URL`
/// (a path served from the header by IIS URL Rewrite set-ups): through the example's Envoy,
/// scopegate sees them (`allowed_headers`) and refuses the request; on the unchecked /static/
/// route Envoy removes them.
#[tokio::test]
async fn method_and_url_override_headers_are_refused_or_removed() {
    let stack = Stack::start().await;
    let writer = tokens::token("alice", "orders:write");
    // The control: a writer may POST.
    let r = stack.send("POST", "/orders/1", Some(&writer), &[]).await;
    assert_eq!(r.status, 200, "{r:?}");
    for (method, path, token, header) in [
        (
            "POST",
            "/orders/1",
            Some(writer.as_str()),
            ("X-HTTP-Method-Override", "DELETE"),
        ),
        (
            "POST",
            "/orders/1",
            Some(writer.as_str()),
            ("X-HTTP-Method", "PUT"),
        ),
        ("GET", "/public/info", None, ("X-Original-URL", "/admin/x")),
        ("GET", "/public/info", None, ("X-Rewrite-URL", "/admin/x")),
    ] {
        let before = stack.upstream.requests();
        let r = stack.send(method, path, token, &[header]).await;
        assert_denied(&r, 400, "invalid_request");
        assert_eq!(
            stack.upstream.requests(),
            before,
            "{header:?} reached the upstream"
        );
    }
    // Spelled with `_` (which CGI-style upstreams read as `-`): Envoy refuses the request.
    for header in [
        ("X_HTTP_Method_Override", "DELETE"),
        ("x_scopegate_subject", "mallory"),
    ] {
        let before = stack.upstream.requests();
        let r = stack
            .send("POST", "/orders/1", Some(&writer), &[header])
            .await;
        assert_eq!(r.status, 400, "{header:?}: {r:?}");
        assert_eq!(
            stack.upstream.requests(),
            before,
            "{header:?} reached the upstream"
        );
    }
    let r = stack
        .send(
            "GET",
            "/static/app.js",
            None,
            &[("X-Original-URL", "/admin/x")],
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let seen = r.echoed().unwrap();
    assert_eq!(
        seen.all("x-original-url"),
        Vec::<&str>::new(),
        "removed on /static/"
    );
}

#[tokio::test]
async fn context_extension_pins_the_request_to_one_rule() {
    let mut stack = Stack::start().await;
    let reader = tokens::token("alice", "orders:read");

    // /legacy/orders/ is pinned to `orders-read` by Envoy's per-route context_extensions: host
    // and path do not match that rule (nor any other), yet the rule decides.
    let r = stack
        .envoy
        .request(
            "GET",
            "/legacy/orders/a/b",
            &[
                ("Host", "legacy.example.net"),
                ("Authorization", &format!("Bearer {reader}")),
            ],
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        r.echoed().unwrap().header("x-scopegate-subject"),
        Some("alice")
    );

    let r = stack.get("/legacy/orders/a/b", None).await;
    assert_denied(&r, 401, "missing_credential");
    let r = stack
        .get("/legacy/orders/1", Some(&tokens::token("alice", "profile")))
        .await;
    assert_denied(&r, 403, "insufficient_scope");
    assert!(r
        .header("www-authenticate")
        .unwrap()
        .contains("scope=\"orders:read\""));
    // The rule's method list still applies (orders-read: GET, HEAD).
    let r = stack
        .send("DELETE", "/legacy/orders/1", Some(&reader), &[])
        .await;
    assert_denied(&r, 403, "no_rule");
    // Without the pin, host/path matching finds no rule for the same request.
    let r = stack.get("/unpinned/orders/a/b", Some(&reader)).await;
    assert_denied(&r, 403, "no_rule");

    // The pinned id disappears from etcd: 403 no_rule.
    stack.delete("routes/orders-read").await;
    stack
        .wait_for("/legacy/orders/1", &reader, 403, Some("no_rule"))
        .await;
}

#[tokio::test]
async fn disabled_route_passes_without_a_check_and_without_forged_headers() {
    let stack = Stack::start().await;
    let checks_before = stack.checks();

    let r = stack.send("GET", "/static/app.js", None, &FORGED).await;
    assert_eq!(r.status, 200, "{r:?}");
    let seen = r.echoed().unwrap();
    assert_eq!(seen.path, "/static/app.js");
    for name in IDENTITY_HEADERS {
        assert_eq!(
            seen.all(name),
            Vec::<&str>::new(),
            "{name} reached the upstream on the unchecked route"
        );
    }
    assert_eq!(
        stack.checks(),
        checks_before,
        "the disabled route must not call scopegate"
    );

    // Control: a checked route does call it.
    let _ = stack.get("/orders/1", None).await;
    assert_eq!(stack.checks(), checks_before + 1);
}

#[tokio::test]
async fn etcd_changes_flip_envoys_answer() {
    let mut stack = Stack::start().await;
    let token = tokens::token("dave", "reports:read");
    assert_denied(
        &stack.get("/reports/q1", Some(&token)).await,
        403,
        "no_rule",
    );

    let reports = |scope: &str| json!({"host": HOST, "path": "/reports/**", "methods": ["GET"], "require": {"all": [scope]}});
    stack.put("routes/reports", reports("reports:read")).await;
    stack.wait_for("/reports/q1", &token, 200, None).await;

    stack.put("routes/reports", reports("reports:admin")).await;
    stack
        .wait_for("/reports/q1", &token, 403, Some("insufficient_scope"))
        .await;
    stack.put("routes/reports", reports("reports:read")).await;
    stack.wait_for("/reports/q1", &token, 200, None).await;

    // Revoking the subject applies to the very token that was just allowed (and cached).
    stack
        .put(
            "revoked/sub/dave",
            json!({"issued_before": tokens::now() + 60}),
        )
        .await;
    stack
        .wait_for("/reports/q1", &token, 401, Some("token_revoked"))
        .await;
    stack.delete("revoked/sub/dave").await;
    stack.wait_for("/reports/q1", &token, 200, None).await;

    stack.delete("routes/reports").await;
    stack
        .wait_for("/reports/q1", &token, 403, Some("no_rule"))
        .await;
}

#[tokio::test]
async fn envoy_fails_closed_when_scopegate_is_down() {
    let mut stack = Stack::start().await;
    let token = tokens::token("alice", "orders:read");
    assert_eq!(stack.get("/orders/42", Some(&token)).await.status, 200);
    let reached = stack.upstream.requests();

    let app = stack.app.take().unwrap();
    app.shutdown(Duration::from_secs(2))
        .await
        .expect("clean shutdown");

    for path in ["/orders/42", "/orders/43", "/healthz", "/orders/42"] {
        let r = stack.get(path, Some(&token)).await;
        // Never 200; the example config answers errors with 503 (`status_on_error`).
        assert_eq!(r.status, 503, "Envoy must fail closed, got {r:?}");
        assert!(r.echoed().is_none(), "{r:?}");
    }
    assert_eq!(
        stack.upstream.requests(),
        reached,
        "nothing reached the upstream while scopegate was down"
    );
    // The unchecked route keeps working.
    assert_eq!(stack.get("/static/logo.png", None).await.status, 200);
}

// --- Hostile paths --------------------------------------------------------------------------
//
// Nothing may reach the upstream at a path that some upstream reads as /admin (whose rule needs
// the `admin` scope, which no test token has), whatever the spelling: the assertions are about
// the raw request targets the echo upstream logged, read by every interpretation in
// `support::path_readings`.

/// Spellings of "one level up" (for some reader or other), and look-alikes.
const UPS: [&str; 16] = [
    "..",
    ".%2e",
    "%2e.",
    "%2e%2e",
    "%2E%2e",
    "%2E%2E",
    "..;",
    "..;x=1",
    ".%2e;",
    "%2e%2e;",
    "%2E%2e;x=1",
    "..%3b",
    "..%3B",
    "%2e%2e%3B",
    "%252e%252e",
    "...",
];

/// Separators between segments, plain and hostile.
const SEPS: [&str; 16] = [
    "/", "//", "///", "/./", "/%2e/", "/.;/", "/;/", "/;x=1/", "%2f", "%2F", "%5c", "%5C", "\\",
    "\\\\", "/\\", "\\/",
];

/// Where the climb starts: the unchecked, pinned, rule-matched and public areas (and the root).
const PREFIXES: [&str; 9] = [
    "",
    "/static",
    "/static/css",
    "/legacy/orders",
    "/legacy/orders/1",
    "/orders",
    "/orders/1",
    "/public",
    "/public/a",
];

/// What comes after the climb (all of them name something under /admin for some reader).
const TAILS: [&str; 12] = [
    "admin/x",
    "admin",
    "admin/",
    "admin/x;y=1",
    "admin/x?q=1",
    "%61dmin/x",
    "admin;x=1/x",
    "ADMIN/x",
    "admin/x/.",
    // Unicode that case-insensitive upstreams read as `admin`: dotless ı (Java, .NET), fullwidth
    // ａ (NFKC), and a dotted capital İ (lower-cased `i` by .NET and Java, `i̇` by full folding).
    "adm%C4%B1n/x",
    "%EF%BD%81dmin/x",
    "ADM%C4%B0N/x",
];

/// Authorities for absolute-form request targets (`GET http://host/path HTTP/1.1`).
const AUTHORITIES: [&str; 4] = [
    "http://api.example.com",
    "http://api.example.com:80",
    "HTTP://API.EXAMPLE.COM",
    "http://legacy.example.net",
];

/// Hand-written cases (origin form unless they start with a scheme).
const SPECIAL: &[&str] = &[
    "/static/../admin/x",
    "/static/%2e%2e/admin/x",
    "/static/%2E%2e/admin/x",
    "/static/..;/admin/x",
    "/static//../../admin/x",
    "/static/./../admin/x",
    "/static;/../admin/x",
    "/static;x=1/../admin/x",
    "/static/%2e%2e;/admin/x",
    "/static/x;/%2e%2e;/%2e%2e;/admin/x",
    "/static/..%3B/admin/x",
    "/static/..%252f..%252fadmin/x",
    "/static%2f..%2fadmin/x",
    "/static/..%5cadmin/x",
    "/static\\..\\admin\\x",
    "/static/x?/../../admin/x",
    "/static/x#/../../admin/x",
    "/static/..%00/admin/x",
    "/static/..%20/admin/x",
    "/static/.. /admin/x",
    "/static/.../admin/x",
    "/static/..../admin/x",
    "/static/app.js/../../admin/x",
    "/static/app.js/..;/..;/admin/x",
    "/static/app.js;/../../admin/x",
    "/admin/x",
    "/ADMIN/x",
    "/Admin/x",
    "//admin/x",
    "/./admin/x",
    "/%2e/admin/x",
    "/;/admin/x",
    "/admin;/x",
    "/admin;x=1",
    "/%61dmin/x",
    "/admin%2fx",
    "/admin/x/..",
    "/adm%C4%B1n/x",
    "/adm%C4%B0n/x",
    "/%EF%BD%81dmin/x",
    "/%EF%BC%A1DMIN/x",
    "/adm%E2%85%B0n/x",
    "/admin%EF%BC%8Fx",
    "/%EF%BC%8Fadmin/x",
    "/static/../adm%C4%B1n/x",
    "/public/../%EF%BD%81dmin/x",
    "/public/%EF%BC%8E%EF%BC%8E/admin/x",
    "/public/%E2%80%A5/admin/x",
    "/ad%C2%ADmin/x",
    "/%E2%80%8Badmin/x",
    "/public/..%C2%AD/admin/x",
    "/legacy/orders/../../admin/x",
    "/legacy/orders/;/../admin",
    "/legacy/orders/;/../../../admin/x",
    "/legacy/orders/..;/..;/admin/x",
    "/legacy/orders/%2e%2e;/%2e%2e;/admin/x",
    "/legacy/orders/..%3B/..%3B/admin/x",
    "/legacy/orders/x;/..;/..;/..;/admin/x",
    "/legacy/orders//../../admin/x",
    "/legacy/orders/.%2e/.%2e/admin/x",
    "/legacy/orders/..\\..\\admin\\x",
    "/legacy/orders/%2e%2e%3b/%2e%2e%3b/admin/x",
    "/orders/1/../../admin/x",
    "/orders/..;/admin/x",
    "/orders/%2e%2e;/admin/x",
    "/orders/1;/../../admin/x",
    "/orders/..%3b/admin",
    "/public/../admin/x",
    "/public/%2e%2e/admin/x",
    "/public/..;/admin/x",
    "/public/%2e%2e;/admin/x",
    "/public/..%3B/admin/x",
    "http://api.example.com/static/../admin/x",
    "http://api.example.com/static/%2e%2e;/admin/x",
    "http://api.example.com/legacy/orders/../../admin/x",
    "http://api.example.com/legacy/orders/%2e%2e;/%2e%2e;/admin/x",
    "http://api.example.com//admin/x",
    "http://api.example.com/static/..%3B/admin/x",
    "HTTP://API.EXAMPLE.COM/static/../admin/x",
    "http://api.example.com:80/static/..;/admin/x",
    "http://api.example.com/../admin/x",
    "http://api.example.com..;/admin/x",
    "http://admin.example.com/static/../admin/x",
    "http://api.example.com/static/x?/../../admin/x",
    "*",
    "admin/x",
    "static/../admin/x",
];

/// One hostile request target and the class it belongs to (for the summary).
struct Probe {
    target: String,
    /// `(dimension, value)` pairs, e.g. `("up", "%2e%2e;")`, `("form", "absolute")`.
    classes: Vec<(&'static str, String)>,
}

/// The hostile corpus: every prefix × climb spelling × separator × depth (exactly out of the
/// prefix, and one more), each in origin form and in absolute form, with the tails taken in
/// turn; plus every pair of climb spellings after four prefixes; plus [`SPECIAL`].
fn hostile_corpus() -> Vec<Probe> {
    let mut corpus = Vec::new();
    let mut turn = 0usize;
    for prefix in PREFIXES {
        let depth = prefix.split('/').filter(|s| !s.is_empty()).count().max(1);
        for up in UPS {
            for sep in SEPS {
                for climb in [depth, depth + 1] {
                    let tail = TAILS[turn % TAILS.len()];
                    let authority = AUTHORITIES[turn % AUTHORITIES.len()];
                    turn += 1;
                    let mut path = if prefix.is_empty() {
                        "/".to_string()
                    } else {
                        format!("{prefix}{sep}")
                    };
                    for _ in 0..climb {
                        path.push_str(up);
                        path.push_str(sep);
                    }
                    path.push_str(tail);
                    let classes = |form: &str| {
                        vec![
                            ("prefix", prefix.to_string()),
                            ("up", up.to_string()),
                            ("sep", sep.to_string()),
                            ("form", form.to_string()),
                        ]
                    };
                    corpus.push(Probe {
                        target: format!("{authority}{path}"),
                        classes: classes("absolute"),
                    });
                    corpus.push(Probe {
                        target: path,
                        classes: classes("origin"),
                    });
                }
            }
        }
    }
    for prefix in ["/static", "/legacy/orders/1", "/public/a", "/orders/1"] {
        for first in UPS {
            for second in UPS {
                corpus.push(Probe {
                    target: format!("{prefix}/{first}/{second}/{first}/admin/x"),
                    classes: vec![
                        ("prefix", prefix.to_string()),
                        ("mixed", format!("{first} + {second}")),
                        ("form", "origin".to_string()),
                    ],
                });
            }
        }
    }
    for target in SPECIAL {
        corpus.push(Probe {
            target: target.to_string(),
            classes: vec![("special", target.to_string())],
        });
    }
    corpus
}

/// The origin-form part of a request target (`http://host/p?q` -> `/p?q`).
fn origin_form(target: &str) -> &str {
    let lower = target.to_ascii_lowercase();
    if lower.starts_with("http://") {
        let rest = &target["http://".len()..];
        return rest.find('/').map_or("/", |at| &rest[at..]);
    }
    target
}

/// Mirrors the `safe_regex` of the unchecked `/static/` route in examples/envoy/envoy.yaml:
/// `/static(/[A-Za-z0-9_~-][A-Za-z0-9._~-]*)+`, against the path without its query.
fn matches_static_route(target: &str) -> bool {
    let Some(rest) = path_part(target).strip_prefix("/static") else {
        return false;
    };
    let Some(rest) = rest.strip_prefix('/') else {
        return false;
    };
    let plain = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'~');
    rest.split('/').all(|segment| {
        let bytes = segment.as_bytes();
        !bytes.is_empty() && plain(bytes[0]) && bytes[1..].iter().all(|b| plain(*b) || *b == b'.')
    })
}

/// What one probe ended in, as the client saw it.
fn outcome(response: &std::io::Result<HttpResponse>) -> String {
    match response {
        Err(e) => format!("no response ({:?})", e.kind()),
        Ok(r) if r.echoed().is_some() => "upstream".to_string(),
        Ok(r) if r.header("x-scopegate-decision-id").is_some() => {
            format!(
                "scopegate {} {}",
                r.status,
                r.json()["reason"].as_str().unwrap_or("?")
            )
        }
        Ok(r) => format!("envoy {}", r.status),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_paths_never_reach_the_upstream_at_an_admin_path() {
    let stack = Stack::start_with(true).await;
    let reader = tokens::token("alice", "orders:read");
    let as_reader = format!("Bearer {reader}");

    // The controls: benign requests work, and /admin is really protected. (So the corpus cannot
    // pass by everything being refused, nor by /admin being unrouted.)
    let benign: &[(&str, Option<&str>, u16, Option<&str>)] = &[
        ("/static/app.js", None, 200, Some("/static/app.js")),
        (
            "/static/css/site.v2.css?v=3",
            None,
            200,
            Some("/static/css/site.v2.css?v=3"),
        ),
        (
            "http://api.example.com/static/app.js",
            None,
            200,
            Some("/static/app.js"),
        ),
        ("/static/x/../app.js", None, 200, Some("/static/app.js")),
        ("/public/info", None, 200, Some("/public/info")),
        ("/orders/1", Some(&reader), 200, Some("/orders/1")),
        (
            "/legacy/orders/1",
            Some(&reader),
            200,
            Some("/legacy/orders/1"),
        ),
        ("/static/app.js", Some(&reader), 200, Some("/static/app.js")),
        ("/orders/1", None, 401, None),
        ("/admin/x", None, 401, None),
        ("/admin/x", Some(&reader), 403, None),
    ];
    for &(target, token, status, upstream_path) in benign {
        let auth = token.map(|t| format!("Bearer {t}"));
        let mut headers = vec![("Host", HOST)];
        if let Some(auth) = auth.as_deref() {
            headers.push(("Authorization", auth));
        }
        let r = stack.envoy.request("GET", target, &headers).await;
        assert_eq!(
            r.status,
            status,
            "GET {target} (token: {}): {r:?}",
            token.is_some()
        );
        assert_eq!(
            r.echoed().map(|e| e.path),
            upstream_path.map(str::to_string),
            "GET {target}: {r:?}"
        );
    }
    let controls = stack.upstream.requests();

    // The corpus, without a token and with an orders:read token, over raw TCP (the request
    // target is sent byte for byte, nothing normalises it on the way to Envoy).
    let corpus = hostile_corpus();
    let tokens: [Option<&str>; 2] = [None, Some(&as_reader)];
    let probes: Vec<(usize, &Probe, Option<&str>)> = tokens
        .iter()
        .flat_map(|token| corpus.iter().map(move |probe| (*token, probe)))
        .enumerate()
        .map(|(id, (token, probe))| (id, probe, token))
        .collect();
    let sent: Vec<(usize, String, Option<String>)> = probes
        .iter()
        .map(|(id, probe, token)| (*id, probe.target.clone(), token.map(str::to_string)))
        .collect();
    let responses = send_probes(&stack, HOST, sent).await;

    // What reached the upstream, by probe id (the controls carry none).
    let received = stack.upstream.received().await;
    assert!(received.len() >= controls);
    let mut reached: HashMap<usize, String> = HashMap::new();
    let mut findings = Vec::new();
    for request in &received[controls..] {
        let id = probe_id(request);
        let sent = id.map(|id| probes[id].1.target.as_str());
        findings.extend(admin_finding(request, sent));
        let id = id.expect("every corpus request carries x-probe-id");
        assert!(
            reached.insert(id, request.path.clone()).is_none(),
            "probe {id} twice"
        );
    }

    // Envoy's view of each probe (its normalised :path and what it did), from the access log.
    let wanted: Vec<usize> = responses
        .iter()
        .filter(|(_, r)| {
            r.as_ref().is_ok_and(|r| {
                r.echoed().is_some() || r.header("x-scopegate-decision-id").is_some()
            })
        })
        .map(|(id, _)| *id)
        .collect();
    // (Only for the summary: if it stays incomplete, the missing probes show as "not logged".)
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let envoy_view = loop {
        let view: HashMap<usize, _> = stack
            .envoy
            .access_log()
            .into_iter()
            .filter_map(|entry| Some((entry.probe.parse().ok()?, entry)))
            .collect();
        if wanted.iter().all(|id| view.contains_key(id)) || std::time::Instant::now() > deadline {
            break view;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    // Summary per class: what Envoy did with the path, and how the request ended.
    let mut summary: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
    let mut ambiguous_reached = BTreeMap::new();
    let mut unchecked_but_not_plain = Vec::new();
    let mut disagreements = Vec::new();
    for (id, probe, token) in &probes {
        let response = &responses[id];
        let end = outcome(response);
        let sent = origin_form(&probe.target);
        let envoy = match envoy_view.get(id) {
            Some(e) if end.starts_with("envoy ") => format!("rejected ({})", e.details),
            None if end.starts_with("envoy ") || end.starts_with("no response") => {
                "rejected (before its headers were parsed)".to_string()
            }
            Some(e) if e.path == sent => "as sent".to_string(),
            Some(_) => "normalised".to_string(),
            None => "not logged".to_string(),
        };
        // The client's view and the upstream's log agree.
        if let Ok(r) = response {
            let echoed = r.echoed().map(|e| e.path);
            if echoed.as_ref() != reached.get(id) {
                disagreements.push(format!(
                    "probe {id} {:?}: response echoed {echoed:?}, upstream logged {:?}",
                    probe.target,
                    reached.get(id)
                ));
            }
        }
        if let Some(path) = reached.get(id) {
            if !path_readings::is_unambiguous(path) {
                ambiguous_reached.insert(path.clone(), probe.target.clone());
            }
            // Without a token only two ways lead to the upstream: the unchecked /static/ route,
            // which must only ever forward plain, unambiguous paths, and public rules.
            if token.is_none()
                && !is_under(&path_readings::rfc3986(path), "/public")
                && !(matches_static_route(path) && path_readings::is_unambiguous(path))
            {
                unchecked_but_not_plain.push(format!("{:?} -> {path:?}", probe.target));
            }
        }
        let who = if token.is_some() {
            "orders:read"
        } else {
            "no token"
        };
        for (dimension, value) in probe
            .classes
            .iter()
            .map(|(d, v)| (*d, v.clone()))
            .chain([("token", who.to_string())])
        {
            let row = summary.entry(format!("{dimension} {value:?}")).or_default();
            *row.entry(format!("envoy: {envoy}")).or_default() += 1;
            *row.entry(end.clone()).or_default() += 1;
        }
    }
    println!(
        "{} hostile probes ({} targets x {} credentials); {} reached the upstream",
        probes.len(),
        corpus.len(),
        tokens.len(),
        reached.len()
    );
    for (class, counts) in &summary {
        let counts: Vec<String> = counts.iter().map(|(k, n)| format!("{k}: {n}")).collect();
        println!("{class}: {}", counts.join(", "));
    }
    println!(
        "reached the upstream, readers disagree ({}):",
        ambiguous_reached.len()
    );
    for (path, target) in &ambiguous_reached {
        println!("  {path:?} (sent {target:?}): {:?}", readings(path));
    }

    assert!(
        findings.is_empty(),
        "{} request(s) reached the upstream at a path some upstream reads as /admin:\n{}",
        findings.len(),
        findings.join("\n")
    );
    assert!(
        unchecked_but_not_plain.is_empty(),
        "without a token, these reached the upstream at a path that is neither public nor a \
         plain /static/ path:\n{}",
        unchecked_but_not_plain.join("\n")
    );
    assert!(
        disagreements.is_empty(),
        "the responses and the upstream's log disagree:\n{}",
        disagreements.join("\n")
    );
    // The corpus is not refused wholesale: Envoy normalises some of it onto the benign routes.
    assert!(
        reached.values().any(|p| matches_static_route(p)),
        "no hostile probe was resolved onto /static/ at all: {reached:?}"
    );
}

/// The probe id (`x-probe-id`) a request that reached the upstream carries.
fn probe_id(request: &Echoed) -> Option<usize> {
    request.all("x-probe-id").first()?.parse().ok()
}

/// A line for a request that reached the upstream at a path some upstream reads as under
/// /admin (`sent`: the target the probe sent), or `None`.
fn admin_finding(request: &Echoed, sent: Option<&str>) -> Option<String> {
    let under_admin = readings_under(&request.path, "/admin");
    (!under_admin.is_empty()).then(|| {
        format!(
            "sent {:?}, upstream got {:?}, read as {under_admin:?}",
            sent.unwrap_or("?"),
            request.path
        )
    })
}

/// Sends each `(probe id, request target, Authorization)` to Envoy over raw TCP (the target
/// byte for byte: nothing normalises it on the way to Envoy), 16 at a time, with the probe id in
/// `x-probe-id` for the upstream's log.
async fn send_probes(
    stack: &Stack,
    host: &'static str,
    probes: Vec<(usize, String, Option<String>)>,
) -> HashMap<usize, std::io::Result<HttpResponse>> {
    let limit = Arc::new(tokio::sync::Semaphore::new(16));
    let mut tasks = tokio::task::JoinSet::new();
    for (id, target, auth) in probes {
        let (addr, limit) = (stack.envoy.addr, limit.clone());
        tasks.spawn(async move {
            let _permit = limit.acquire_owned().await.unwrap();
            let probe_id = id.to_string();
            let mut headers = vec![("Host", host), ("x-probe-id", probe_id.as_str())];
            if let Some(auth) = auth.as_deref() {
                headers.push(("Authorization", auth));
            }
            let r = try_request(addr, "GET", &target, &headers, Duration::from_secs(10)).await;
            (id, r)
        });
    }
    let mut responses = HashMap::new();
    while let Some(done) = tasks.join_next().await {
        let (id, r) = done.expect("probe task");
        responses.insert(id, r);
    }
    responses
}

/// On a host where every path but `/admin/**` is public, every hostile path that scopegate
/// reads as outside `/admin/` is allowed and forwarded. So any difference between scopegate's
/// reading and some upstream's shows here as a request that reached the upstream at an admin
/// path. (On the API host such a path falls to no rule and is denied anyway, which would hide
/// the difference.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_public_catch_all_no_hostile_path_reaches_an_admin_path() {
    let stack = Stack::start().await;
    // The controls: the catch-all lets paths through (Unicode ones too), /admin/ is protected,
    // and the spellings that only a case-insensitive upstream reads as /admin are refused.
    let controls: &[(&str, u16, Option<&str>)] = &[
        ("/anything/at/all", 200, Some("/anything/at/all")),
        ("/files/caf%C3%A9", 200, Some("/files/caf%C3%A9")),
        ("/static/../docs", 200, Some("/docs")),
        ("/admin/x", 401, None),
        ("/ADMIN/x", 400, None),
        ("/adm%C4%B1n/x", 400, None),
        ("/%EF%BD%81dmin/x", 400, None),
        ("/ad%C2%ADmin/x", 400, None),
    ];
    for &(target, status, upstream_path) in controls {
        let r = stack
            .envoy
            .request("GET", target, &[("Host", OPEN_HOST)])
            .await;
        assert_eq!(r.status, status, "GET {target}: {r:?}");
        assert_eq!(
            r.echoed().map(|e| e.path),
            upstream_path.map(str::to_string),
            "GET {target}: {r:?}"
        );
    }
    let before = stack.upstream.requests();

    // The corpus's origin-form targets (absolute forms name the API host), without a token.
    let targets: Vec<String> = hostile_corpus()
        .into_iter()
        .map(|probe| probe.target)
        .filter(|target| target.starts_with('/'))
        .collect();
    let probes = targets
        .iter()
        .enumerate()
        .map(|(id, target)| (id, target.clone(), None))
        .collect();
    let responses = send_probes(&stack, OPEN_HOST, probes).await;
    assert_eq!(responses.len(), targets.len());

    let received = stack.upstream.received().await;
    let mut findings = Vec::new();
    for request in &received[before..] {
        let sent = probe_id(request).map(|id| targets[id].as_str());
        findings.extend(admin_finding(request, sent));
    }
    let reached = received.len() - before;
    println!(
        "{} hostile targets to {OPEN_HOST}; {reached} reached the upstream",
        targets.len()
    );
    assert!(
        findings.is_empty(),
        "{} request(s) reached the upstream at a path some upstream reads as /admin:\n{}",
        findings.len(),
        findings.join("\n")
    );
    // Not refused wholesale: the catch-all forwards what every reader agrees is outside /admin.
    assert!(
        reached >= targets.len() / 10,
        "only {reached} of {} probes reached the upstream",
        targets.len()
    );
}

#[test]
fn path_readings_resolve_as_their_servers_would() {
    use path_readings::{
        decode_first, merge_slashes, merged_rfc3986, remove_dot_segments, strip_path_params, tomcat,
    };
    // RFC 3986 §5.2.4 and §5.4 examples.
    assert_eq!(remove_dot_segments("/a/b/c/./../../g"), "/a/g");
    assert_eq!(remove_dot_segments("mid/content=5/../6"), "mid/6");
    assert_eq!(remove_dot_segments("/../../g"), "/g");
    assert_eq!(remove_dot_segments("/a/b/.."), "/a/");
    assert_eq!(remove_dot_segments("/a/b/."), "/a/b/");
    assert_eq!(remove_dot_segments("/a//../b"), "/a/b");
    assert_eq!(remove_dot_segments("/a/..;/b"), "/a/..;/b");
    assert_eq!(merge_slashes("//a///b/"), "/a/b/");
    assert_eq!(strip_path_params("/a;x=1/..;/b;"), "/a/../b");

    // (a) RFC 3986: %2e is a dot, `;` is just a character, `//` an empty segment.
    assert_eq!(rfc3986_of("/static/%2e%2E/admin/x"), "/admin/x");
    assert_eq!(rfc3986_of("/static/..;/admin/x"), "/static/..;/admin/x");
    assert_eq!(rfc3986_of("/static//../admin"), "/static/admin");
    assert_eq!(rfc3986_of("/static/%61dmin?q=/../x"), "/static/admin");
    assert_eq!(rfc3986_of("/static/..%2fadmin"), "/static/..%2fadmin");
    // (b) slashes merged first.
    assert_eq!(merged_rfc3986("/static//../admin"), "/admin");
    assert_eq!(merged_rfc3986("/static//..%2Fadmin"), "/static/..%2Fadmin");
    // (c) Tomcat: params stripped from the raw segments, then decoded, `\` as `/`.
    assert_eq!(tomcat("/static/..;/admin/x"), "/admin/x");
    assert_eq!(tomcat("/static/%2e%2e;x=1/admin"), "/admin");
    assert_eq!(tomcat("/static/x;/../../admin"), "/admin");
    assert_eq!(tomcat("/static\\..\\admin"), "/admin");
    assert_eq!(tomcat("/static/..%2fadmin"), "/admin");
    assert_eq!(tomcat("/static/..%5c..%5cadmin"), "/admin");
    assert_eq!(tomcat("/static/..%3B/admin"), "/static/..;/admin");
    assert_eq!(tomcat("/static/app.js?/../../admin"), "/static/app.js");
    // (d) decode first: an encoded `;` is a `;`.
    assert_eq!(decode_first("/static/..%3B/admin"), "/admin");
    assert_eq!(decode_first("/static/%2e%2e%3bx/admin"), "/admin");

    assert!(is_under("/admin", "/admin"));
    assert!(is_under("/admin/", "/admin"));
    assert!(is_under("/ADMIN/x", "/admin"));
    assert!(is_under("/admin;x=1/y", "/admin"));
    assert!(!is_under("/administrator", "/admin"));
    assert!(!is_under("/static/admin", "/admin"));
    // Case-insensitive upstreams beyond ASCII (Java, .NET, NFKC).
    assert!(is_under("/adm\u{131}n/x", "/admin"));
    assert!(is_under("/ADM\u{130}N", "/admin"));
    assert!(is_under("/\u{ff41}dmin/x", "/admin"));
    assert!(is_under("/adm\u{2170}n", "/admin"));
    assert!(is_under("/ad\u{ad}min", "/admin"));
    assert!(!is_under("/files/caf\u{e9}", "/admin"));
    assert!(
        !is_under("/adm%C4%B1n", "/admin"),
        "escapes are the readings' business"
    );
    assert!(path_readings::is_unambiguous("/static/app.js?v=1"));
    assert!(!path_readings::is_unambiguous("/static/a;v=1"));
    assert!(!path_readings::is_unambiguous("/static/%61"));
    assert!(!path_readings::is_unambiguous("/static//a"));
    assert_eq!(
        readings_under("/legacy/orders/..%3B/..%3B/admin/x", "/admin"),
        [("decode-first", "/admin/x".to_string())]
    );
}

fn rfc3986_of(target: &str) -> String {
    path_readings::rfc3986(target)
}

#[test]
fn the_static_route_mirror_and_the_corpus_are_what_they_claim() {
    for plain in [
        "/static/app.js",
        "/static/css/site.v2.css?v=1",
        "/static/a-b_c~d",
    ] {
        assert!(matches_static_route(plain), "{plain}");
    }
    for not_plain in [
        "/static",
        "/static/",
        "/static/css/",
        "/static//a",
        "/static/.hidden",
        "/static/..",
        "/static/a;b",
        "/static/a%20b",
        "/static/a\\b",
        "/staticx/a",
        "/admin/x",
    ] {
        assert!(!matches_static_route(not_plain), "{not_plain}");
    }
    assert_eq!(origin_form("http://api.example.com:80/a?b"), "/a?b");
    assert_eq!(origin_form("HTTP://API.EXAMPLE.COM"), "/");
    assert_eq!(origin_form("/a"), "/a");

    let corpus = hostile_corpus();
    assert!(corpus.len() > 10_000, "{}", corpus.len());
    // Every generated climb (not the look-alikes `%252e%252e`, `...`) names something under
    // /admin for at least one reader: the corpus does aim at /admin.
    const LOOK_ALIKES: [&str; 2] = ["%252e%252e", "..."];
    let mut climbs = 0;
    for probe in &corpus {
        let up = probe.classes.iter().find(|(d, _)| *d == "up");
        let Some((_, up)) = up.filter(|(_, up)| !LOOK_ALIKES.contains(&up.as_str())) else {
            continue;
        };
        let target = origin_form(&probe.target);
        assert!(
            !readings_under(target, "/admin").is_empty(),
            "{target:?} (up {up:?}): {:?}",
            readings(target)
        );
        climbs += 1;
    }
    assert!(climbs > 8_000, "{climbs}");
}
