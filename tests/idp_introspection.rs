#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Opaque access tokens (RFC 7662) against a real OpenID provider: the introspection endpoint
//! found by discovery; an active token allowed (and its answer cached), a token revoked at the
//! IdP refused within the cache cap, and an IdP that fails, hangs or is gone: deny (fail closed,
//! 503 `introspection_failed`), never cached.

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::idp::{Idp, ORDERS_CLIENT};
use support::server::{Answer, TestServer};

const HOST: &str = "api.example.com";

async fn serve(idp: &Idp, flags: &[&str]) -> TestServer {
    let extra = json!({"introspection": idp.introspection_entry()});
    let server = TestServer::with_rules(&idp.rules(extra), flags).await;
    let admin = server.app.admin_addr;
    support::wait_until("ready", Duration::from_secs(20), || async move {
        support::server::http_get_status(admin, "/readyz").await.0 == 200
    })
    .await;
    server
}

fn reason(answer: &Answer) -> String {
    match answer.status {
        200 => "allowed".into(),
        _ => answer.reason().unwrap_or_default(),
    }
}

async fn get(server: &mut TestServer, token: &str) -> Answer {
    server.check("GET", HOST, "/orders/7", Some(token)).await
}

#[tokio::test]
async fn an_active_opaque_token_is_allowed_and_its_answer_cached() {
    let idp = Idp::start().await;
    let mut server = serve(&idp, &[]).await;
    let token = idp.opaque("orders:read").await;
    let answer = get(&mut server, &token).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(
        answer.header("x-scopegate-client-id"),
        Some(ORDERS_CLIENT.id)
    );
    assert_eq!(answer.header("x-scopegate-scopes"), Some("orders:read"));
    let write = server.check("POST", HOST, "/orders", Some(&token)).await;
    assert_eq!(
        (write.status, reason(&write)),
        (403, "insufficient_scope".into())
    );
    assert_eq!(get(&mut server, &token).await.status, 200);
    assert_eq!(
        idp.stats().await.introspection,
        1,
        "one introspection, then the cache"
    );

    // JWT access tokens are verified, not introspected; unknown strings are inactive.
    let jwt = idp.jwt("orders:read").await;
    assert_eq!(get(&mut server, &jwt).await.status, 200);
    assert_eq!(idp.stats().await.introspection, 1);
    let forged = get(&mut server, "not-a-token-the-idp-issued").await;
    assert_eq!(
        (forged.status, reason(&forged)),
        (401, "token_inactive".into())
    );
    let challenge = forged.header("www-authenticate").unwrap();
    assert!(challenge.contains("error=\"invalid_token\""), "{challenge}");
}

#[tokio::test]
async fn an_opaque_token_revoked_at_the_idp_is_refused_within_the_cache_cap() {
    let idp = Idp::start().await;
    let mut server = serve(&idp, &["--introspection-cache-ttl", "1s"]).await;
    let token = idp.opaque("orders:read").await;
    assert_eq!(get(&mut server, &token).await.status, 200);
    idp.revoke(ORDERS_CLIENT, &token).await;
    let revoked = Instant::now();
    let mut last = String::new();
    while revoked.elapsed() < Duration::from_secs(5) {
        last = reason(&get(&mut server, &token).await);
        if last != "allowed" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(last, "token_inactive");
    // The cap is 1 s; the rest is slack for a loaded machine.
    let took = revoked.elapsed();
    assert!(took < Duration::from_millis(2500), "{took:?}");
}

#[tokio::test]
async fn an_idp_that_fails_hangs_or_is_gone_fails_closed_and_is_never_cached() {
    let mut idp = Idp::start().await;
    let mut server = serve(&idp, &[]).await;
    let token = idp.opaque("orders:read").await;

    idp.set_introspection_mode("error").await;
    let failed = get(&mut server, &token).await;
    assert_eq!(
        (failed.status, reason(&failed)),
        (503, "introspection_failed".into())
    );
    assert_eq!(
        failed.header("www-authenticate"),
        None,
        "not a verdict on the token"
    );
    idp.set_introspection_mode("ok").await;
    assert_eq!(
        get(&mut server, &token).await.status,
        200,
        "the error was not cached"
    );

    let slow = idp.opaque("orders:read").await;
    idp.set_introspection_mode("slow").await;
    let asked = Instant::now();
    let timed_out = get(&mut server, &slow).await;
    assert_eq!(reason(&timed_out), "introspection_failed");
    // The IdP answers after 3 s; the 400 ms timeout cut it off well before.
    let took = asked.elapsed();
    assert!(
        took < Duration::from_millis(2500),
        "bounded by the timeout: {took:?}"
    );

    idp.set_introspection_mode("ok").await;
    let unseen = idp.opaque("orders:read").await;
    idp.stop();
    let gone = get(&mut server, &unseen).await;
    assert_eq!(
        (gone.status, reason(&gone)),
        (503, "introspection_failed".into())
    );
    assert_eq!(
        get(&mut server, &token).await.status,
        200,
        "cached answers still count"
    );
    let metrics = server.admin_get("/metrics").await;
    assert!(
        metrics.contains("scopegate_introspection_total{issuer=\"idp\",result=\"error\"} 3"),
        "{metrics}"
    );
}
