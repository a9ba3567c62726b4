//! Through real Envoy running `examples/envoy/envoy.yaml`: its access log (one JSON line per
//! request on stdout) carries scopegate's answer from the ext_authz dynamic metadata: for denials
//! by default, for allows too with `--dynamic-metadata all`; `--strip-authorization` keeps the
//! token from the upstream.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use scopegate::app::RunningApp;
use serde_json::Value;
use support::envoy::{wait_scopegate_ready, EchoUpstream, Envoy};
use support::server::serve_args;
use support::tokens::{self, token};

const HOST: &str = "api.example.com";

fn rules() -> String {
    format!(
        r#"
issuers:
{issuer}
routes:
  health: {{host: "*", path: /healthz, require: {{public: true}}}}
  orders-read: {{host: {HOST}, path: "/orders/{{id}}", methods: [GET], require: {{all: [orders:read]}}}}
"#,
        issuer = tokens::issuer_yaml()
    )
}

struct Stack {
    envoy: Envoy,
    upstream: EchoUpstream,
    _app: RunningApp,
    _dir: tempfile::TempDir,
}

async fn stack(flags: &[&str]) -> Stack {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rules.yaml");
    std::fs::write(&path, rules()).unwrap();
    let mut args = vec!["--rules", path.to_str().unwrap()];
    args.extend_from_slice(flags);
    let app = scopegate::app::start(&serve_args(&args)).await.unwrap();
    wait_scopegate_ready(app.admin_addr).await;
    let upstream = EchoUpstream::start().await;
    let envoy = Envoy::start_example(app.grpc_addr, upstream.addr).await;
    Stack {
        envoy,
        upstream,
        _app: app,
        _dir: dir,
    }
}

/// The `count`-th access-log line for `path` (logged without its query), once Envoy flushed it.
async fn log_line(envoy: &Envoy, path: &str, count: usize) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let lines: Vec<Value> = envoy
            .stdout_json()
            .into_iter()
            .filter(|l| l["path"] == path)
            .collect();
        if lines.len() >= count {
            return lines[count - 1].clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no access-log line for {path} after 10 s; stdout: {:?}\nlog: {}",
            envoy.stdout_json(),
            envoy.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A value Envoy logs for metadata that is absent (`-` in text, null in JSON).
fn absent(v: &Value) -> bool {
    v.is_null() || v == "-"
}

#[tokio::test]
async fn the_access_log_carries_scopegates_answer_for_allows_and_denials() {
    let s = stack(&["--dynamic-metadata", "all"]).await;
    let t = token("alice", "orders:read");
    let auth = format!("Bearer {t}");

    let allowed = s
        .envoy
        .request(
            "GET",
            "/orders/7?api_key=secret",
            &[("host", HOST), ("authorization", &auth)],
        )
        .await;
    assert_eq!(allowed.status, 200, "{allowed:?}");
    let line = log_line(&s.envoy, "/orders/7", 1).await;
    assert_eq!(line["status"], 200);
    assert_eq!(line["details"], "via_upstream");
    assert_eq!(line["authz_decision"], "allow");
    assert_eq!(line["authz_reason"], "allowed");
    assert_eq!(line["authz_rule_id"], "orders-read");
    assert_eq!(line["authz_subject"], "alice");
    assert_eq!(line["authz_client_id"], "test-client");
    assert_eq!(line["authz_revision"], 1);
    let id = line["authz_decision_id"].as_str().unwrap();
    assert!(
        id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "{line}"
    );
    let text = line.to_string();
    assert!(
        !text.contains(&t) && !text.contains("secret"),
        "no token, no query: {text}"
    );

    // A denial: the line, the response header and the body name the same decision.
    let denied = s.envoy.request("GET", "/orders/8", &[("host", HOST)]).await;
    assert_eq!(denied.status, 401);
    let line = log_line(&s.envoy, "/orders/8", 1).await;
    assert_eq!(line["status"], 401);
    assert_eq!(line["details"], "ext_authz_denied");
    assert_eq!(line["authz_decision"], "deny");
    assert_eq!(line["authz_reason"], "missing_credential");
    assert_eq!(line["authz_rule_id"], "orders-read");
    assert!(
        absent(&line["authz_subject"]),
        "no verified subject: {line}"
    );
    let id = line["authz_decision_id"].as_str().unwrap();
    assert_eq!(denied.header("x-scopegate-decision-id"), Some(id));
    assert_eq!(denied.json()["decision_id"], id);

    // Insufficient scope: denied, but the verified subject is known.
    let weak = format!("Bearer {}", token("carol", "profile"));
    let r = s
        .envoy
        .request(
            "GET",
            "/orders/9",
            &[("host", HOST), ("authorization", &weak)],
        )
        .await;
    assert_eq!(r.status, 403);
    let line = log_line(&s.envoy, "/orders/9", 1).await;
    assert_eq!(line["authz_reason"], "insufficient_scope");
    assert_eq!(line["authz_subject"], "carol");

    // No rule: no rule id.
    let r = s.envoy.request("GET", "/nowhere", &[("host", HOST)]).await;
    assert_eq!(r.status, 403);
    let line = log_line(&s.envoy, "/nowhere", 1).await;
    assert_eq!(line["authz_reason"], "no_rule");
    assert!(absent(&line["authz_rule_id"]), "{line}");
    assert_eq!(
        s.upstream.requests(),
        1,
        "only the allowed request reached the upstream"
    );
}

#[tokio::test]
async fn by_default_the_access_log_carries_scopegates_answer_for_denials_only() {
    let s = stack(&[]).await;
    let auth = format!("Bearer {}", token("alice", "orders:read"));
    let allowed = s
        .envoy
        .request(
            "GET",
            "/orders/7",
            &[("host", HOST), ("authorization", &auth)],
        )
        .await;
    assert_eq!(allowed.status, 200, "{allowed:?}");
    let line = log_line(&s.envoy, "/orders/7", 1).await;
    assert_eq!(line["status"], 200);
    for field in [
        "authz_decision",
        "authz_reason",
        "authz_decision_id",
        "authz_subject",
    ] {
        assert!(absent(&line[field]), "{field} on a plain allow: {line}");
    }
    let denied = s.envoy.request("GET", "/orders/8", &[("host", HOST)]).await;
    assert_eq!(denied.status, 401);
    let line = log_line(&s.envoy, "/orders/8", 1).await;
    assert_eq!(line["authz_decision"], "deny");
    assert_eq!(line["authz_reason"], "missing_credential");
    let id = line["authz_decision_id"].as_str().unwrap();
    assert_eq!(denied.header("x-scopegate-decision-id"), Some(id));
}

#[tokio::test]
async fn forged_identity_headers_are_removed_and_strip_authorization_hides_the_token() {
    let s = stack(&["--strip-authorization"]).await;
    let auth = format!("Bearer {}", token("alice", "orders:read"));
    let forged = [
        ("x-scopegate-subject", "mallory"),
        ("x-scopegate-scopes", "admin"),
    ];

    // Public route: nothing to assert, so the forged copies are removed (Envoy forwards them to
    // the check, as the example's allowed_headers says).
    let mut headers = vec![("host", HOST), ("authorization", auth.as_str())];
    headers.extend_from_slice(&forged);
    let r = s.envoy.request("GET", "/healthz", &headers).await;
    let echoed = r.echoed().expect("reached the upstream");
    assert_eq!(echoed.header("x-scopegate-subject"), None);
    assert_eq!(echoed.header("x-scopegate-scopes"), None);
    assert_eq!(
        echoed.header("authorization"),
        None,
        "stripped before the upstream"
    );

    // Checked route: identity replaces the forged copies; the token stays with Envoy.
    let r = s.envoy.request("GET", "/orders/1", &headers).await;
    let echoed = r.echoed().expect("reached the upstream");
    assert_eq!(echoed.header("x-scopegate-subject"), Some("alice"));
    assert_eq!(echoed.header("x-scopegate-scopes"), Some("orders:read"));
    assert_eq!(echoed.header("authorization"), None);
}
