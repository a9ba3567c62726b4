//! criterion: the in-process Check handler (`CheckRequest` → `CheckResponse`, what the gRPC
//! method runs) with cached and uncached RS256 and ES256 tokens. The handler is async only for
//! the identity-provider steps (kid-miss refetch, introspection); these requests never need
//! them, so each is polled once (`now_or_never`), which also proves it completes without waiting.
//! Run: `cargo bench --bench check`
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::disallowed_methods,
    clippy::disallowed_types,
    reason = "tests, benchmarks and examples: a failed step stops them with its message, and they read their own environment"
)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use criterion::{criterion_group, criterion_main, Criterion};
use envoy_types::ext_authz::v3::pb::{CheckRequest, CheckResponse};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
use envoy_types::pb::envoy::service::auth::v3::AttributeContext;
use futures_util::FutureExt;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use scopegate::cache::ClaimsCache;
use scopegate::check::{CheckSettings, Checker};
use scopegate::grpc::{AuthorizationService, ResponseSettings};
use scopegate::rules::document;
use scopegate::store::{Snapshot, SnapshotStore};
use scopegate::telemetry::{DecisionLogMode, Metrics};
use serde_json::json;

/// The binary's allocator, so that the figures are the binary's (`scopegate::allocator`).
#[global_allocator]
static ALLOCATOR: scopegate::allocator::Allocator = scopegate::allocator::Allocator;

const KEYS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/keys");

fn token(alg: Algorithm) -> String {
    let (file, kid) = match alg {
        Algorithm::ES256 => ("demo-es256.key.pem", "demo-ec-p256-1"),
        _ => ("demo-rs256.key.pem", "demo-rsa-1"),
    };
    let pem = std::fs::read(format!("{KEYS}/{file}")).unwrap();
    let key = match alg {
        Algorithm::ES256 => EncodingKey::from_ec_pem(&pem).unwrap(),
        _ => EncodingKey::from_rsa_pem(&pem).unwrap(),
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut header = Header::new(alg);
    header.kid = Some(kid.into());
    header.typ = Some("at+jwt".into());
    let claims = json!({"iss": "https://idp.example.com/", "aud": "orders-api", "sub": "alice",
        "client_id": "web", "scope": "orders:read profile", "iat": now, "exp": now + 86_400, "jti": "j1"});
    encode(&header, &claims, &key).unwrap()
}

fn service(cache_ttl: Duration, decision_log: DecisionLogMode) -> AuthorizationService {
    let rules = document::load_file(std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/rules.yaml"
    )))
    .unwrap();
    let store = SnapshotStore::new();
    store.publish(Snapshot::build(rules, 1, None));
    let settings = CheckSettings {
        decision_log,
        ..CheckSettings::default()
    };
    let checker = Checker::new(
        store,
        ClaimsCache::new(10_000, cache_ttl),
        Metrics::new(),
        settings,
    );
    AuthorizationService::new(Arc::new(checker), ResponseSettings::default())
}

/// Runs the handler for a request that needs no identity provider: it must not wait.
fn check(svc: &AuthorizationService, req: &CheckRequest) -> CheckResponse {
    svc.check_request(req)
        .now_or_never()
        .expect("the fast path completes without awaiting")
}

fn request(token: &str) -> CheckRequest {
    let mut headers = HashMap::new();
    headers.insert("authorization".to_string(), format!("Bearer {token}"));
    headers.insert("user-agent".to_string(), "bench".to_string());
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Request {
                http: Some(HttpRequest {
                    method: "GET".into(),
                    host: "api.example.com".into(),
                    path: "/orders/42".into(),
                    headers,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

fn bench_check(c: &mut Criterion) {
    // As `scopegate serve` does first thing (the provider that verifies with parsed RSA keys).
    scopegate::token::rsa_keys::install();
    let mut group = c.benchmark_group("check_handler");
    for alg in [Algorithm::RS256, Algorithm::ES256] {
        let req = request(&token(alg));
        for (label, ttl) in [
            ("cached", Duration::from_secs(300)),
            ("uncached", Duration::ZERO),
        ] {
            let svc = service(ttl, DecisionLogMode::Off);
            // Counted from before the first check, which verifies too: a filter that skips
            // the timed loop (`--bench ES256`) must not fail the assertion below.
            let parsed_before = scopegate::token::rsa_keys::parsed_verifications();
            let first = check(&svc, &req);
            assert_eq!(
                first.status.as_ref().unwrap().code,
                0,
                "bench request must be allowed"
            );
            group.bench_function(format!("{alg:?}/{label}"), |b| b.iter(|| check(&svc, &req)));
            if alg == Algorithm::RS256 && label == "uncached" {
                assert!(
                    scopegate::token::rsa_keys::parsed_verifications() > parsed_before,
                    "uncached RS256 checks must use the parsed key"
                );
            }
        }
    }
    group.finish();
}

/// The decision log's cost: the same cached RS256 check with one JSON line per decision,
/// written to a sink (no I/O). `…+decision_log_tracing`: formatted by tracing-subscriber's JSON
/// formatter (the text-format path); `…+decision_log`: the direct serde path that `serve` uses
/// with JSON logs, through the same non-blocking writer thread.
fn bench_decision_log(c: &mut Criterion) {
    let subscriber = tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_writer(std::io::sink)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let svc = service(Duration::from_secs(300), DecisionLogMode::All);
    let req = request(&token(Algorithm::RS256));
    c.bench_function("check_handler/RS256/cached+decision_log_tracing", |b| {
        b.iter(|| check(&svc, &req))
    });
    let (writer, _flush) = scopegate::telemetry::LogWriter::spawn(std::io::sink()).unwrap();
    scopegate::telemetry::install_json_decision_writer(writer);
    c.bench_function("check_handler/RS256/cached+decision_log", |b| {
        b.iter(|| check(&svc, &req))
    });
}

criterion_group!(benches, bench_check, bench_decision_log);
criterion_main!(benches);
