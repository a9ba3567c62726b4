#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Remote keys against a real OpenID provider (tests/support/idp.rs): discovery, rotation at the
//! IdP (a new kid accepted at once through the kid-miss path, a retired key refused after the
//! next refresh), a flood of bogus kids that costs the IdP at most the rate-limited fetches, the
//! IdP going away (cached keys keep verifying, `/metrics` shows their age), readiness, and a
//! rules reload that does not refetch keys of an unchanged issuer.

mod support;

use std::time::{Duration, Instant};

use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use serde_json::{json, Value};
use support::idp::{Idp, IdpOptions, TokenRequest, ORDERS_CLIENT, RESOURCE_ES256};
use support::server::{grpc_health, http_get_status, Answer, ServingStatus, TestServer};
use support::wait_until;
use tonic::transport::Channel;

const HOST: &str = "api.example.com";

async fn serve(idp: &Idp, extra: Value, flags: &[&str]) -> TestServer {
    TestServer::with_rules(&idp.rules(extra), flags).await
}

async fn ready(server: &TestServer) {
    let addr = server.app.admin_addr;
    wait_until(
        "/readyz answers 200",
        Duration::from_secs(20),
        || async move { http_get_status(addr, "/readyz").await.0 == 200 },
    )
    .await;
}

async fn get(server: &mut TestServer, token: &str) -> Answer {
    server.check("GET", HOST, "/orders/42", Some(token)).await
}

fn reason(answer: &Answer) -> String {
    match answer.status {
        200 => "allowed".into(),
        _ => answer.reason().unwrap_or_default(),
    }
}

/// The value of a labelled metric line (`name{labels} value`).
fn labelled(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(prefix)?.trim().parse().ok())
}

#[tokio::test]
async fn discovery_finds_the_keys_and_real_tokens_are_allowed() {
    let idp = Idp::start().await;
    let mut server = serve(&idp, json!({}), &[]).await;
    ready(&server).await;
    let rs256 = idp.jwt("orders:read").await;
    let answer = get(&mut server, &rs256).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(
        answer.header("x-scopegate-client-id"),
        Some(ORDERS_CLIENT.id)
    );
    assert_eq!(answer.header("x-scopegate-scopes"), Some("orders:read"));
    let es256 = idp
        .token(&TokenRequest::new(
            ORDERS_CLIENT,
            "orders:read",
            RESOURCE_ES256,
        ))
        .await
        .access_token;
    assert_eq!(get(&mut server, &es256).await.status, 200);
    let write = server.check("POST", HOST, "/orders", Some(&rs256)).await;
    assert_eq!(
        (write.status, reason(&write)),
        (403, "insufficient_scope".into())
    );

    let stats = idp.stats().await;
    assert_eq!(
        (stats.discovery, stats.jwks),
        (1, 1),
        "one discovery, one JWKS fetch"
    );
    let status: Value = serde_json::from_str(&server.admin_get("/status").await).unwrap();
    let keys = &status["remote_keys"]["idp"];
    assert_eq!(keys["kids"].as_array().unwrap().len(), 2, "{status}");
    let skipped = keys["skipped"].to_string();
    assert!(
        skipped.contains("enc-1") && skipped.contains("not a signing key"),
        "{skipped}"
    );
}

#[tokio::test]
async fn a_rotated_key_is_accepted_at_once_and_a_retired_one_refused_after_refresh() {
    // A max-age of an hour: no scheduled refresh can happen while the rotation is checked.
    let idp = Idp::start_with(IdpOptions {
        jwks_max_age: Some(3600),
        ..IdpOptions::default()
    })
    .await;
    let extra = json!({"refresh_min": "1s", "refresh_max": "1h"});
    // A generous kid-miss wait, so that a loaded test machine does not turn the refetch into
    // a timeout; the refetch itself is what is checked.
    let mut server = serve(&idp, extra, &["--jwks-kid-miss-wait", "2s"]).await;
    ready(&server).await;
    let old = idp.jwt("orders:read").await;
    assert_eq!(get(&mut server, &old).await.status, 200);
    assert_eq!(idp.stats().await.jwks, 1);

    // From now on the IdP asks for a 2 s refresh; it has not been fetched since.
    idp.set_jwks_max_age(Some(2)).await;
    let kids = idp.rotate().await;
    let new = idp.jwt("orders:read").await;
    assert_eq!(support::idp::jwt_part(&new, 0)["kid"], kids[0].as_str());
    let asked = Instant::now();
    let answer = get(&mut server, &new).await;
    assert_eq!(
        answer.status, 200,
        "new kid accepted at once: {}",
        answer.body
    );
    assert!(
        asked.elapsed() < Duration::from_secs(2),
        "within the kid-miss wait"
    );
    assert_eq!(idp.stats().await.jwks, 2, "exactly one kid-miss refetch");
    assert_eq!(
        get(&mut server, &old).await.status,
        200,
        "both keys are published"
    );

    // Retired at the IdP: the old token (cached) is refused once the next refresh lands.
    idp.retire().await;
    let retired = Instant::now();
    let mut last = String::new();
    while retired.elapsed() < Duration::from_secs(10) {
        last = reason(&get(&mut server, &old).await);
        if last != "allowed" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(last, "unknown_key", "refused after the scheduled refresh");
    assert!(
        retired.elapsed() <= Duration::from_secs(4),
        "{:?}",
        retired.elapsed()
    );
    assert_eq!(
        idp.stats().await.jwks,
        3,
        "by the scheduled refresh, not another kid miss"
    );
    assert_eq!(get(&mut server, &new).await.status, 200);
}

#[tokio::test]
async fn a_thousand_bogus_kids_cost_the_idp_at_most_the_rate_limited_fetches() {
    let idp = Idp::start().await;
    let server = serve(&idp, json!({}), &[]).await;
    ready(&server).await;
    let before = idp.stats().await.jwks;
    let started = Instant::now();
    let mut answers = Vec::new();
    for chunk in (0..1000).collect::<Vec<_>>().chunks(50) {
        let requests = chunk.iter().map(|n| {
            let mut client = server.client.clone();
            let token = support::idp::bogus_kid_token(&idp.issuer, *n);
            async move {
                let auth = format!("Bearer {token}");
                let request = support::server::check_request(
                    "GET",
                    HOST,
                    "/orders/1",
                    &[("authorization", &auth)],
                );
                Answer::from_response(client.check(request).await.unwrap().into_inner())
            }
        });
        let handles: Vec<_> = requests.map(tokio::spawn).collect();
        for handle in handles {
            answers.push(handle.await.unwrap());
        }
    }
    let elapsed = started.elapsed();
    let fetches = idp.stats().await.jwks - before;
    assert!(answers
        .iter()
        .all(|a| a.status == 401 && reason(a) == "unknown_key"));
    let allowed = 1 + elapsed.as_secs() / 10;
    assert!(
        fetches <= allowed,
        "{fetches} JWKS fetches for 1,000 bogus kids in {elapsed:?} (at most {allowed})"
    );
    assert!(fetches >= 1, "the first miss does refetch");
}

#[tokio::test]
async fn with_the_idp_gone_cached_keys_still_verify_and_metrics_show_their_age() {
    let mut idp = Idp::start().await;
    let extra = json!({"refresh_min": "1s", "refresh_max": "1s"});
    let mut server = serve(&idp, extra, &[]).await;
    ready(&server).await;
    let fresh = idp.jwt("orders:read").await;
    idp.stop();
    let admin = server.app.admin_addr;
    wait_until(
        "two failed refreshes",
        Duration::from_secs(10),
        || async move {
            let text = http_get_status(admin, "/metrics").await.1;
            let failed = labelled(
                &text,
                "scopegate_jwks_fetch_total{issuer=\"idp\",result=\"transport\"}",
            );
            failed.is_some_and(|n| n >= 2.0)
        },
    )
    .await;
    let answer = get(&mut server, &fresh).await;
    assert_eq!(
        answer.status, 200,
        "never verified before, the kept keys verify it"
    );
    let text = server.admin_get("/metrics").await;
    let age = labelled(&text, "scopegate_jwks_age_seconds{issuer=\"idp\"}").unwrap();
    assert!(age >= 1.0, "age {age} grows while the IdP is gone:\n{text}");
    assert_eq!(
        http_get_status(admin, "/readyz").await.0,
        200,
        "still ready on kept keys"
    );
}

#[tokio::test]
async fn readiness_waits_for_keys_and_a_failed_first_fetch_recovers() {
    let mut idp = Idp::start().await;
    idp.stop();
    // The IdP is down at start-up: not ready, tokens answer unknown_key.
    let mut server = serve(&idp, json!({}), &["--keys-ready-timeout", "1m"]).await;
    let admin = server.app.admin_addr;
    assert_eq!(http_get_status(admin, "/readyz").await.0, 503);
    // The gRPC health service (what Envoy's health check and the chart's default probe ask)
    // says the same, so no check is sent to a replica that cannot verify the issuer's tokens.
    let grpc = server.app.grpc_addr;
    assert_eq!(grpc_health(grpc).await, Some(ServingStatus::NotServing));
    assert_eq!(http_get_status(admin, "/readyz/serving").await.0, 503);
    let bounded = serve(&idp, json!({}), &["--keys-ready-timeout", "500ms"]).await;
    ready(&bounded).await;
    let bounded_grpc = bounded.app.grpc_addr;
    wait_until(
        "bounded wait: SERVING",
        Duration::from_secs(20),
        || async move { grpc_health(bounded_grpc).await == Some(ServingStatus::Serving) },
    )
    .await;
    // It comes back on the same address (fresh keys): the retry loop picks it up.
    idp.restart().await;
    ready(&server).await;
    wait_until(
        "keys loaded: SERVING",
        Duration::from_secs(20),
        || async move { grpc_health(grpc).await == Some(ServingStatus::Serving) },
    )
    .await;
    let token = idp.jwt("orders:read").await;
    assert_eq!(get(&mut server, &token).await.status, 200);
}

#[tokio::test]
async fn a_rules_reload_does_not_refetch_the_keys_of_an_unchanged_issuer() {
    let idp = Idp::start().await;
    let mut server = serve(&idp, json!({}), &[]).await;
    ready(&server).await;
    let token = idp.jwt("orders:read").await;
    assert_eq!(get(&mut server, &token).await.status, 200);
    let before = idp.stats().await;
    // A route change (a new snapshot, the issuer re-read with the same settings).
    let mut rules = idp.rules(json!({}));
    rules.push_str(
        "  reports: {host: api.example.com, path: /reports, require: {all: [orders:read]}}\n",
    );
    std::fs::write(&server.rules_path, rules).unwrap();
    let store = server.app.store.clone();
    let revision = store.current().unwrap().revision;
    wait_until("reloaded", Duration::from_secs(10), || {
        let store = store.clone();
        async move { store.current().is_some_and(|s| s.revision > revision) }
    })
    .await;
    let report = server.check("GET", HOST, "/reports", Some(&token)).await;
    assert_eq!(report.status, 200, "{}", report.body);
    let after = idp.stats().await;
    assert_eq!(
        (after.discovery, after.jwks),
        (before.discovery, before.jwks)
    );
}

async fn check_via(client: &mut AuthorizationClient<Channel>, token: &str, path: &str) -> Answer {
    let auth = format!("Bearer {token}");
    let request = support::server::check_request("GET", HOST, path, &[("authorization", &auth)]);
    Answer::from_response(client.check(request).await.unwrap().into_inner())
}

#[tokio::test]
async fn an_etcd_change_elsewhere_does_not_refetch_the_keys() {
    let idp = Idp::start().await;
    let etcd = support::etcd::EtcdServer::start().await;
    let mut kv = etcd.client().await;
    let entry = idp.issuer_entry(json!({})).to_string();
    kv.put("/scopegate/issuers/idp", entry, None).await.unwrap();
    let route = json!({"host": HOST, "path": "/orders/{id}", "methods": ["GET"],
                       "require": {"all": ["orders:read"]}});
    kv.put("/scopegate/routes/orders-read", route.to_string(), None)
        .await
        .unwrap();
    let config = support::server::serve_args(&["--etcd-endpoints", &etcd.endpoint()]);
    let app = scopegate::app::start(&config).await.unwrap();
    let admin = app.admin_addr;
    wait_until("ready", Duration::from_secs(20), || async move {
        http_get_status(admin, "/readyz").await.0 == 200
    })
    .await;
    let mut client = support::server::connect(app.grpc_addr).await;
    let token = idp.jwt("orders:read").await;
    assert_eq!(
        check_via(&mut client, &token, "/orders/1").await.status,
        200
    );
    let before = idp.stats().await;
    for i in 0..5 {
        let route = json!({"host": HOST, "path": format!("/extra/{i}"), "require": {"all": ["orders:read"]}});
        kv.put(
            format!("/scopegate/routes/extra-{i}"),
            route.to_string(),
            None,
        )
        .await
        .unwrap();
    }
    let store = app.store.clone();
    wait_until(
        "the last route is in force",
        Duration::from_secs(10),
        || {
            let store = store.clone();
            async move {
                store
                    .current()
                    .is_some_and(|s| s.rules.routes.contains_key("extra-4"))
            }
        },
    )
    .await;
    assert_eq!(check_via(&mut client, &token, "/extra/4").await.status, 200);
    let after = idp.stats().await;
    assert_eq!(
        (after.discovery, after.jwks),
        (before.discovery, before.jwks),
        "no refetch"
    );
}

#[tokio::test]
async fn garbage_from_the_idp_is_rejected_and_the_last_good_keys_stay() {
    let idp = Idp::start().await;
    let extra = json!({"refresh_min": "1s", "refresh_max": "1s"});
    let mut server = serve(&idp, extra, &[]).await;
    ready(&server).await;
    idp.set_jwks_mode("garbage").await;
    let admin = server.app.admin_addr;
    wait_until(
        "a rejected refresh",
        Duration::from_secs(10),
        || async move {
            let text = http_get_status(admin, "/metrics").await.1;
            labelled(
                &text,
                "scopegate_jwks_fetch_total{issuer=\"idp\",result=\"invalid\"}",
            )
            .is_some_and(|n| n >= 1.0)
        },
    )
    .await;
    idp.set_jwks_mode("error").await;
    wait_until("an HTTP error", Duration::from_secs(10), || async move {
        let text = http_get_status(admin, "/metrics").await.1;
        labelled(
            &text,
            "scopegate_jwks_fetch_total{issuer=\"idp\",result=\"http_status\"}",
        )
        .is_some_and(|n| n >= 1.0)
    })
    .await;
    let token = idp.jwt("orders:read").await;
    assert_eq!(
        get(&mut server, &token).await.status,
        200,
        "the last good keys verify"
    );
}
