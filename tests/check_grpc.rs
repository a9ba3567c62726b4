//! The check path over real gRPC (in-process server on port 0): every answer kind, upstream
//! headers, dry-run, revocations, context extensions, health, and hot reload of the rules file.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::disallowed_methods,
    reason = "tests, benchmarks and examples: a failed step stops them with its message, and they read their own environment"
)]

mod support;

use std::time::Duration;

use envoy_types::ext_authz::v3::pb::{CheckResponse, HeaderAppendAction, HttpResponse};
use support::server::{check_request, grpc_health_of, http_get_status, ServingStatus, TestServer};
use support::tokens::{self, claims, sign, token};
use support::wait_until;

fn rules(extra_routes: &str) -> String {
    format!(
        r#"
issuers:
{issuer}
scopes:
  orders:write: {{implies: [orders:read]}}
  orders:read: {{aliases: [read:orders]}}
routes:
  health: {{host: "*", path: /healthz, require: {{public: true}}}}
  orders-read: {{host: api.example.com, path: "/orders/{{id}}", methods: [GET], require: {{all: [orders:read]}}}}
  orders-write: {{host: api.example.com, path: /orders/**, methods: [POST], require: {{all: [orders:write]}}}}
  reports: {{host: api.example.com, path: /reports/**, require: {{all: [reports:read]}}, mode: dry_run}}
{extra_routes}
revoked:
  jti: {{revoked-jti: {{reason: leaked}}}}
  sub: {{fired: {{issued_before: 4102444800}}}}
  client: {{old-client: {{issued_before: 4102444800}}}}
"#,
        issuer = tokens::issuer_yaml()
    )
}

async fn server() -> TestServer {
    TestServer::with_rules(&rules(""), &[]).await
}

#[tokio::test]
async fn allowed_request_gets_identity_headers_that_overwrite_client_copies() {
    let mut s = server().await;
    let t = token("alice", "orders:read");
    let auth = format!("Bearer {t}");
    let request = check_request(
        "GET",
        "API.example.com:443",
        "/orders/42?x=1",
        &[("authorization", &auth), ("x-scopegate-subject", "root")],
    );
    let raw = s.client.check(request).await.unwrap().into_inner();
    assert_eq!(raw.status.as_ref().unwrap().code, 0);
    let Some(HttpResponse::OkResponse(ok)) = raw.http_response else {
        panic!("not OK")
    };
    let subject = ok
        .headers
        .iter()
        .find(|h| h.header.as_ref().unwrap().key == "x-scopegate-subject")
        .unwrap();
    assert_eq!(subject.header.as_ref().unwrap().value, "alice");
    assert_eq!(
        subject.append_action,
        HeaderAppendAction::OverwriteIfExistsOrAdd as i32
    );
    let answer = s
        .check("GET", "api.example.com", "/orders/42", Some(&t))
        .await;
    assert_eq!(answer.header("x-scopegate-client-id"), Some("test-client"));
    assert_eq!(answer.header("x-scopegate-scopes"), Some("orders:read"));
    assert!(
        answer.headers.values().all(|v| !v.contains(&t)),
        "the token never goes into a header"
    );
}

#[tokio::test]
async fn public_route_strips_forged_identity_headers() {
    let mut s = server().await;
    let names = [
        "x-scopegate-subject",
        "x-scopegate-client-id",
        "x-scopegate-scopes",
    ];
    let forged: Vec<(&str, &str)> = names.iter().map(|h| (*h, "forged")).collect();
    let request = check_request("GET", "anything.example", "/healthz", &forged);
    let a = s.check_with(request).await;
    assert_eq!(a.status, 200);
    for h in names {
        assert!(
            a.removed.iter().any(|r| r == h),
            "{h} removed: {:?}",
            a.removed
        );
    }
    // Nothing forged: no removal is asked for (tests/answer_metadata.rs has the details).
    let a = s.check("GET", "anything.example", "/healthz", None).await;
    assert!(a.removed.is_empty(), "{:?}", a.removed);
}

#[tokio::test]
async fn no_credential_is_401_with_a_bare_challenge() {
    let mut s = server().await;
    let a = s.check("GET", "api.example.com", "/orders/1", None).await;
    assert_eq!(a.status, 401);
    assert_eq!(a.grpc_code, 16);
    assert_eq!(
        a.header("www-authenticate"),
        Some(r#"Bearer realm="scopegate""#)
    );
    // A Basic credential is not a bearer credential either.
    let req = check_request(
        "GET",
        "api.example.com",
        "/orders/1",
        &[("authorization", "Basic dXNlcjpwYXNz")],
    );
    assert_eq!(s.check_with(req).await.status, 401);
}

#[tokio::test]
async fn bad_tokens_are_401_invalid_token() {
    let mut s = server().await;
    let mut expired = claims("alice", "orders:read");
    expired["exp"] = serde_json::json!(tokens::now() - 3600);
    let mut wrong_aud = claims("alice", "orders:read");
    wrong_aud["aud"] = serde_json::json!("billing-api");
    let cases = [
        (
            sign(jsonwebtoken::Algorithm::RS256, &expired),
            "token_expired",
        ),
        (
            sign(jsonwebtoken::Algorithm::RS256, &wrong_aud),
            "invalid_audience",
        ),
        ("abc.def.ghi".to_string(), "malformed_token"),
    ];
    for (t, reason) in cases {
        let a = s
            .check("GET", "api.example.com", "/orders/1", Some(&t))
            .await;
        assert_eq!(a.status, 401, "{reason}");
        assert_eq!(a.reason().as_deref(), Some(reason));
        let challenge = a.header("www-authenticate").unwrap();
        assert!(
            challenge.starts_with(r#"Bearer realm="scopegate", error="invalid_token""#),
            "{challenge}"
        );
    }
}

#[tokio::test]
async fn oversize_token_is_refused_before_parsing() {
    let mut s = server().await;
    let huge = "a".repeat(9000);
    let a = s
        .check("GET", "api.example.com", "/orders/1", Some(&huge))
        .await;
    assert_eq!(
        (a.status, a.reason().as_deref()),
        (401, Some("token_too_large"))
    );
}

#[tokio::test]
async fn missing_scope_is_403_with_the_required_scope() {
    let mut s = server().await;
    let a = s
        .check(
            "POST",
            "api.example.com",
            "/orders/1",
            Some(&token("alice", "orders:read")),
        )
        .await;
    assert_eq!(a.status, 403);
    assert_eq!(a.grpc_code, 7);
    assert_eq!(
        a.header("www-authenticate"),
        Some(
            r#"Bearer realm="scopegate", error="insufficient_scope", error_description="The access token lacks a required scope", scope="orders:write""#
        )
    );
    // implies: write grants read; aliases: read:orders is orders:read.
    assert_eq!(
        s.check(
            "GET",
            "api.example.com",
            "/orders/1",
            Some(&token("a", "orders:write"))
        )
        .await
        .status,
        200
    );
    assert_eq!(
        s.check(
            "GET",
            "api.example.com",
            "/orders/1",
            Some(&token("a", "read:orders"))
        )
        .await
        .status,
        200
    );
    // Never a substring or prefix match.
    assert_eq!(
        s.check(
            "GET",
            "api.example.com",
            "/orders/1",
            Some(&token("a", "orders:rea orders"))
        )
        .await
        .status,
        403
    );
}

#[tokio::test]
async fn hostile_paths_are_400_and_unrouted_requests_403() {
    let mut s = server().await;
    let t = token("alice", "orders:read");
    for path in [
        "/healthz/%2e%2e/orders/1",
        "/healthz%2f..%2forders/1",
        "/healthz/..;/orders/1",
        "/orders/1%00",
    ] {
        let a = s.check("GET", "api.example.com", path, Some(&t)).await;
        assert_eq!(a.status, 400, "{path}");
        assert!(a
            .header("www-authenticate")
            .unwrap()
            .contains(r#"error="invalid_request""#));
    }
    let a = s
        .check("GET", "api.example.com", "/nothing/here", Some(&t))
        .await;
    assert_eq!((a.status, a.reason().as_deref()), (403, Some("no_rule")));
    assert_eq!(a.header("www-authenticate"), None);
    // Raw dot segments are not resolved (upstreams disagree on how): refused, even without a
    // token, before any rule is considered.
    let a = s
        .check("GET", "api.example.com", "/healthz/../orders/1", None)
        .await;
    assert_eq!(
        (a.status, a.reason().as_deref()),
        (400, Some("invalid_request"))
    );
    // A token in the query string is not a credential.
    let a = s
        .check(
            "GET",
            "api.example.com",
            &format!("/orders/1?access_token={t}"),
            None,
        )
        .await;
    assert_eq!(a.status, 401);
}

#[tokio::test]
async fn dry_run_allows_and_counts_the_would_be_denial() {
    let mut s = server().await;
    let a = s
        .check(
            "GET",
            "api.example.com",
            "/reports/q3",
            Some(&token("alice", "orders:read")),
        )
        .await;
    assert_eq!(a.status, 200);
    let metrics = s.admin_get("/metrics").await;
    assert!(
        metrics.contains(r#"scopegate_dry_run_would_deny_total{reason="insufficient_scope"} 1"#),
        "{metrics}"
    );
    assert!(metrics.contains(r#"scopegate_decisions_total{decision="allow",reason="dry_run"} 1"#));
}

#[tokio::test]
async fn revocations_by_jti_subject_and_client() {
    let mut s = server().await;
    let mut by_jti = claims("alice", "orders:read");
    by_jti["jti"] = serde_json::json!("revoked-jti");
    let mut by_client = claims("bob", "orders:read");
    by_client["client_id"] = serde_json::json!("old-client");
    for (c, who) in [
        (by_jti, "jti"),
        (claims("fired", "orders:read"), "sub"),
        (by_client, "client"),
    ] {
        let a = s
            .check(
                "GET",
                "api.example.com",
                "/orders/1",
                Some(&sign(jsonwebtoken::Algorithm::RS256, &c)),
            )
            .await;
        assert_eq!(
            (a.status, a.reason().as_deref()),
            (401, Some("token_revoked")),
            "{who}"
        );
    }
}

#[tokio::test]
async fn context_extension_pins_the_rule() {
    let mut s = TestServer::with_rules(
        &rules("  pinned: {host: nowhere.invalid, path: /never, require: {all: [special]}}"),
        &[],
    )
    .await;
    let t = token("alice", "special");
    let auth = format!("Bearer {t}");
    let mut req = check_request(
        "GET",
        "api.example.com",
        "/anything",
        &[("authorization", &auth)],
    );
    let attrs = req.attributes.as_mut().unwrap();
    attrs
        .context_extensions
        .insert("scopegate.rule".into(), "pinned".into());
    assert_eq!(s.check_with(req.clone()).await.status, 200);
    req.attributes
        .as_mut()
        .unwrap()
        .context_extensions
        .insert("scopegate.rule".into(), "missing".into());
    assert_eq!(s.check_with(req).await.reason().as_deref(), Some("no_rule"));
}

#[tokio::test]
async fn grpc_health_reports_serving_and_admin_readiness() {
    let s = server().await;
    for service in ["", "envoy.service.auth.v3.Authorization"] {
        assert_eq!(
            grpc_health_of(s.app.grpc_addr, service).await,
            Some(ServingStatus::Serving),
            "{service:?}"
        );
    }
    let (status, body) = http_get_status(s.app.admin_addr, "/readyz").await;
    assert_eq!((status, body.as_str()), (200, "ready\n"));
}

/// A Check that is in flight when shutdown starts (its request body has not fully arrived)
/// is still answered; only then does shutdown complete, and the listener is closed.
#[tokio::test]
async fn shutdown_drains_a_check_in_flight() {
    let s = server().await;
    let addr = s.app.grpc_addr;
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut h2, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let request = http::Request::post(format!(
        "http://{addr}/envoy.service.auth.v3.Authorization/Check"
    ))
    .header("content-type", "application/grpc")
    .header("te", "trailers")
    .body(())
    .unwrap();
    h2 = h2.ready().await.unwrap();
    let (response, mut body) = h2.send_request(request, false).unwrap();
    // Half of the gRPC frame now, the rest after shutdown has begun.
    let message =
        prost::Message::encode_to_vec(&check_request("GET", "anything.example", "/healthz", &[]));
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
    frame.extend_from_slice(&message);
    let (head, tail) = frame.split_at(3);
    body.send_data(bytes::Bytes::copy_from_slice(head), false)
        .unwrap();

    let shutdown = tokio::spawn(s.app.shutdown(Duration::from_secs(10)));
    wait_until(
        "the listener stops accepting",
        Duration::from_secs(10),
        || async move { tokio::net::TcpStream::connect(addr).await.is_err() },
    )
    .await;
    assert!(
        !shutdown.is_finished(),
        "shutdown waits for the check in flight"
    );

    body.send_data(bytes::Bytes::copy_from_slice(tail), true)
        .unwrap();
    let response = response.await.expect("the in-flight check is answered");
    assert_eq!(response.status(), 200);
    let mut answer = response.into_body();
    let mut bytes = Vec::new();
    while let Some(chunk) = answer.data().await {
        bytes.extend_from_slice(&chunk.unwrap());
    }
    let trailers = answer.trailers().await.unwrap().unwrap_or_default();
    assert_eq!(
        trailers.get("grpc-status").map(|v| v.as_bytes()),
        Some(&b"0"[..])
    );
    let decoded: CheckResponse = prost::Message::decode(&bytes[5..]).unwrap();
    assert_eq!(
        decoded.status.map(|s| s.code),
        Some(0),
        "the public /healthz route allows"
    );
    tokio::time::timeout(Duration::from_secs(10), shutdown)
        .await
        .expect("shutdown completes once the check is answered")
        .unwrap()
        .unwrap();
}

/// Changes are seen through notifications, and only changes: reading the file on reload raises
/// access events of its own, which once made scopegate re-read an unchanged file 20 times a
/// second for ever. With the fallback poll an hour away, the snapshot must go unconfirmed (its
/// age grows) while nothing changes, and a write must still be applied at once.
#[tokio::test]
async fn an_unchanged_rules_file_is_not_re_read_and_a_change_is_seen_at_once() {
    let s = TestServer::with_rules_polled(&rules(""), "1h", &[]).await;
    let store = s.app.store.clone();
    wait_until(
        "the snapshot is left unconfirmed for 1 s (no re-reads)",
        Duration::from_secs(10),
        || {
            let store = store.clone();
            async move { store.age().is_some_and(|age| age >= Duration::from_secs(1)) }
        },
    )
    .await;
    let with_new =
        rules("  new: {host: api.example.com, path: /new, require: {all: [orders:read]}}");
    std::fs::write(&s.rules_path, &with_new).unwrap();
    wait_until(
        "the change is applied through the notification",
        Duration::from_secs(10),
        || {
            let store = store.clone();
            async move { store.current().is_some_and(|snap| snap.revision == 2) }
        },
    )
    .await;
    assert!(s
        .app
        .store
        .current()
        .unwrap()
        .rules
        .routes
        .contains_key("new"));
}

#[tokio::test]
async fn hot_reload_flips_decisions_and_rejects_broken_files() {
    let mut s = server().await;
    let t = token("alice", "orders:read");
    assert_eq!(
        s.check("GET", "api.example.com", "/new", Some(&t))
            .await
            .status,
        403
    );

    let with_new =
        rules("  new: {host: api.example.com, path: /new, require: {all: [orders:read]}}");
    std::fs::write(&s.rules_path, &with_new).unwrap();
    let probe = s.client.clone();
    wait_until(
        "reload applies the new route",
        Duration::from_secs(10),
        || {
            let mut probe = probe.clone();
            let auth = format!("Bearer {t}");
            async move {
                let req = check_request(
                    "GET",
                    "api.example.com",
                    "/new",
                    &[("authorization", &auth)],
                );
                probe
                    .check(req)
                    .await
                    .unwrap()
                    .into_inner()
                    .status
                    .unwrap()
                    .code
                    == 0
            }
        },
    )
    .await;
    let revision = s.app.store.current().unwrap().revision;

    // A broken file (one bad entry) is rejected whole; the previous rules keep serving.
    let broken = with_new.replace("path: /new", "path: no-leading-slash");
    std::fs::write(&s.rules_path, broken).unwrap();
    let store = s.app.store.clone();
    wait_until(
        "the broken file is reported",
        Duration::from_secs(10),
        || {
            let store = store.clone();
            async move { store.last_error().is_some() }
        },
    )
    .await;
    let error = s.app.store.last_error().unwrap();
    assert!(
        error.contains("routes/new") && error.contains("no-leading-slash"),
        "{error}"
    );
    assert_eq!(
        s.app.store.current().unwrap().revision,
        revision,
        "old snapshot still in force"
    );
    assert_eq!(
        s.check("GET", "api.example.com", "/new", Some(&t))
            .await
            .status,
        200
    );
    let status = s.admin_get("/status").await;
    assert!(status.contains("routes/new"), "{status}");
    assert!(s
        .admin_get("/metrics")
        .await
        .contains("scopegate_rule_errors_total 1"));

    // Fixing the file applies again.
    std::fs::write(&s.rules_path, rules("")).unwrap();
    wait_until("the fixed file applies", Duration::from_secs(10), || {
        let store = store.clone();
        async move { store.current().unwrap().revision > revision && store.last_error().is_none() }
    })
    .await;
    assert_eq!(
        s.check("GET", "api.example.com", "/new", Some(&t))
            .await
            .status,
        403
    );
}

#[tokio::test]
async fn rules_validate_command_reports_every_error() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "routes:\n  a: {host: '*', path: nope, require: {public: true}}\n  b: {host: '*', path: /b, require: {}}\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_scopegate"))
        .args(["rules", "validate"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("routes/a")
            && stderr.contains("routes/b")
            && stderr.contains("2 invalid entries"),
        "{stderr}"
    );
    // Valid, but two paths differ only in letter case: a warning names both.
    let cased = dir.path().join("cased.yaml");
    std::fs::write(
        &cased,
        "routes:\n  admin-upper: {host: '*', path: /Admin, require: {public: true}}\n  admin-lower: {host: '*', path: /admin, require: {all: [admin]}}\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_scopegate"))
        .args(["rules", "validate"])
        .arg(&cased)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains(
            "routes/admin-lower and routes/admin-upper: paths differ only in letter case"
        ),
        "{stdout}"
    );
    let good = support::repo_path("examples/rules.yaml");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_scopegate"))
        .args(["rules", "validate"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
