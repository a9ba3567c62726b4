//! End to end through a real Envoy: etcd → scopegate (in-process, etcd source) ← Envoy running
//! `examples/envoy/envoy.yaml` → an echo upstream, driven by real HTTP requests.

mod support;

use std::time::Duration;

use etcd_client::Client;
use scopegate::app::RunningApp;
use serde_json::json;
use support::envoy::{wait_scopegate_ready, EchoUpstream, Envoy, HttpResponse};
use support::etcd::EtcdServer;
use support::server::serve_args;
use support::tokens;
use support::wait_until;

const HOST: &str = "api.example.com";
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
            "routes/orders-read".into(),
            route(
                HOST,
                "/orders/{id}",
                &["GET", "HEAD"],
                json!({"all": ["orders:read"]}),
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
        let envoy = Envoy::start_example(app.grpc_addr, upstream.addr).await;
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
