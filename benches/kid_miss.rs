#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Kid-miss burst: 10,000 tokens that name the real test IdP as issuer, each with a distinct
//! bogus `kid` (and random signature bytes), against an in-process scopegate whose keys come
//! from the IdP by discovery. Reports what the burst costs the IdP (JWKS fetches, counted by the
//! IdP itself) and what it costs scopegate per request: over real gRPC (concurrency 64), and in
//! the Check handler alone (polled once: a rate-limited miss never waits), next to a cached
//! valid token and an unrouted request for scale.
//! Needs Node.js and `npm ci --prefix tests/idp` (scripts/setup.sh --test).
//! Run: `cargo bench --bench kid_miss` (optionally `-- TOKENS`, default 10000)

#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use envoy_types::ext_authz::v3::pb::CheckRequest;
use futures_util::FutureExt;
use scopegate::cache::ClaimsCache;
use scopegate::check::{CheckSettings, Checker};
use scopegate::grpc::{AuthorizationService, ResponseSettings};
use scopegate::telemetry::{DecisionLogMode, Metrics};
use serde_json::json;
use support::idp::Idp;
use support::server::{check_request, Answer, TestServer};

const HOST: &str = "api.example.com";

fn bogus_tokens(iss: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| support::idp::bogus_kid_token(iss, i))
        .collect()
}

fn request(token: &str, path: &str) -> CheckRequest {
    let auth = format!("Bearer {token}");
    check_request("GET", HOST, path, &[("authorization", &auth)])
}

async fn over_grpc(server: &TestServer, tokens: &[String]) -> (Duration, usize) {
    let started = Instant::now();
    let mut refused = 0;
    for chunk in tokens.chunks(64) {
        let calls: Vec<_> = chunk
            .iter()
            .map(|token| {
                let mut client = server.client.clone();
                let request = request(token, "/orders/1");
                tokio::spawn(async move {
                    Answer::from_response(client.check(request).await.unwrap().into_inner())
                })
            })
            .collect();
        for call in calls {
            let answer = call.await.unwrap();
            refused += usize::from(answer.reason().as_deref() == Some("unknown_key"));
        }
    }
    (started.elapsed(), refused)
}

/// Mean handler time per request, and how many did not complete on their first poll (a
/// rate-limited kid miss never waits; only the one miss per interval that refetches does).
async fn in_handler(svc: &AuthorizationService, requests: &[CheckRequest]) -> (Duration, usize) {
    let mut waited = 0;
    let started = Instant::now();
    for request in requests {
        let mut call = std::pin::pin!(svc.check_request(request));
        let response = match (&mut call).now_or_never() {
            Some(response) => response,
            None => {
                waited += 1;
                call.await
            }
        };
        std::hint::black_box(response);
    }
    (started.elapsed() / requests.len() as u32, waited)
}

#[tokio::main]
async fn main() {
    // `cargo bench` passes `--bench`; under `cargo test --all-targets` this runs as a smoke test.
    let benching = std::env::args().any(|a| a == "--bench");
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(if benching { 10_000 } else { 200 });
    let idp = Idp::start().await;
    let rules = idp.rules(json!({}));
    let server = TestServer::with_rules(&rules, &[]).await;
    let store = server.app.store.clone();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !store
        .current()
        .is_some_and(|s| s.verifier.remote_keys_loaded())
    {
        assert!(Instant::now() < deadline, "keys never loaded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let tokens = bogus_tokens(&idp.issuer, n);
    let before = idp.stats().await.jwks;
    let (elapsed, refused) = over_grpc(&server, &tokens).await;
    let fetches = idp.stats().await.jwks - before;
    assert_eq!(refused, n, "every bogus kid answers unknown_key");
    println!(
        "kid_miss/grpc        tokens={n} wall={:.3} s ({:.0} checks/s, concurrency 64) idp_jwks_fetches={fetches} (allowed: 1 per 10 s = {})",
        elapsed.as_secs_f64(),
        n as f64 / elapsed.as_secs_f64(),
        1 + elapsed.as_secs() / 10
    );

    // The Check handler alone, on the same snapshot (the kid-miss slot is taken: rate-limited).
    let checker = Checker::new(
        store,
        ClaimsCache::new(100_000, Duration::from_secs(300)),
        Metrics::new(),
        CheckSettings {
            decision_log: DecisionLogMode::Off,
            ..CheckSettings::default()
        },
    );
    let svc = AuthorizationService::new(Arc::new(checker), ResponseSettings::default());
    let fresh = bogus_tokens(&idp.issuer, n);
    let bogus: Vec<CheckRequest> = fresh.iter().map(|t| request(t, "/orders/1")).collect();
    let before = idp.stats().await.jwks;
    let (per_bogus, waited) = in_handler(&svc, &bogus).await;
    let fetches = idp.stats().await.jwks - before;
    let valid = idp.jwt("orders:read").await;
    let cached: Vec<CheckRequest> = (0..n).map(|_| request(&valid, "/orders/1")).collect();
    in_handler(&svc, &cached[..1]).await;
    let (per_cached, _) = in_handler(&svc, &cached).await;
    let unrouted: Vec<CheckRequest> = fresh.iter().map(|t| request(t, "/nowhere")).collect();
    let (per_unrouted, _) = in_handler(&svc, &unrouted).await;
    println!(
        "kid_miss/handler     bogus kid={:.2} µs ({waited} of {n} waited)  cached valid token={:.2} µs  unrouted={:.2} µs  idp_jwks_fetches={fetches}",
        per_bogus.as_secs_f64() * 1e6,
        per_cached.as_secs_f64() * 1e6,
        per_unrouted.as_secs_f64() * 1e6,
    );
}
