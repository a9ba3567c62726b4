//! criterion: `decide()` against snapshots of 10, 1,000, 10,000 and 100,000 routes (verified claims
//! given, so this is route matching, scope expansion and revocation checks only).
//! Run: `cargo bench --bench decide`
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::disallowed_methods,
    clippy::disallowed_types,
    reason = "tests, benchmarks and examples: a failed step stops them with its message, and they read their own environment"
)]

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use scopegate::authz::{decide, Credential, Request};
use scopegate::rules::{Entry, EntryKind, ParseContext, RuleSet};
use scopegate::store::Snapshot;
use scopegate::token::Claims;
use serde_json::json;

/// A realistic mix: 50 hosts (some wildcard), exact, `{param}` and `/**` paths, method lists.
fn rule_set(n: usize) -> RuleSet {
    let mut set = RuleSet::default();
    let ctx = ParseContext { base_dir: None };
    for i in 0..n {
        let host = match i % 10 {
            0 => format!("*.svc{}.example.com", i % 50),
            _ => format!("api{}.example.com", i % 50),
        };
        let path = match i % 3 {
            0 => format!("/v1/res{i}"),
            1 => format!("/v1/res{i}/{{id}}/items/{{item}}"),
            _ => format!("/v1/res{i}/**"),
        };
        let value = json!({"host": host, "path": path, "methods": ["GET", "POST"],
                           "require": {"all": [format!("res{}:read", i % 100)]}});
        let id = format!("route-{i:06}");
        set.insert(
            &id,
            Entry::parse(EntryKind::Route, &id, &value, ctx).unwrap(),
        );
    }
    for i in 0..100 {
        let id = format!("res{i}:write");
        let value =
            json!({"implies": [format!("res{i}:read")], "aliases": [format!("write:res{i}")]});
        set.insert(
            &id,
            Entry::parse(EntryKind::Scope, &id, &value, ctx).unwrap(),
        );
    }
    for i in 0..1000 {
        let id = format!("jti-{i}");
        let revocation = Entry::parse(EntryKind::RevokedJti, &id, &json!({}), ctx).unwrap();
        set.insert(&id, revocation);
    }
    set
}

fn claims(scope: &str) -> Arc<Claims> {
    Arc::new(Claims {
        iss: "https://idp.example.com/".into(),
        sub: Some("alice".into()),
        client_id: Some("web".into()),
        jti: Some("jti-live".into()),
        iat: Some(1_700_000_000),
        exp: i64::MAX,
        scopes: vec!["profile".into(), scope.into(), "email".into()],
        cnf: None,
    })
}

fn bench_decide(c: &mut Criterion) {
    let mut group = c.benchmark_group("decide");
    for n in [10usize, 1_000, 10_000, 100_000] {
        let snapshot = Snapshot::build(rule_set(n), 1, None);
        // A request for a `{param}` route in the middle of the set, granted through `implies`.
        let i = (n / 2) / 3 * 3 + 1;
        let request = Request::new(
            &format!("api{}.example.com", i % 50),
            "GET",
            &format!("/v1/res{i}/42/items/7?x=1"),
        )
        .unwrap();
        let claims = claims(&format!("res{}:write", i % 100));
        let decision = decide(&snapshot, &request, || Credential::Valid(claims.clone()));
        assert!(
            decision.is_allow(),
            "bench request must be allowed: {decision:?}"
        );
        group.bench_with_input(BenchmarkId::new("routes", n), &n, |b, _| {
            b.iter(|| decide(&snapshot, &request, || Credential::Valid(claims.clone())))
        });
    }
    group.finish();
}

fn bench_request_parsing(c: &mut Criterion) {
    // A normal-form path with a query and an escape (what a normalising Envoy forwards); paths
    // that are not in normal form are refused, not resolved.
    c.bench_function("request_normalise", |b| {
        b.iter(|| Request::new("API.example.com:443", "GET", "/v1/res1/42/items%20x/7?x=1"))
    });
}

criterion_group!(benches, bench_decide, bench_request_parsing);
criterion_main!(benches);
