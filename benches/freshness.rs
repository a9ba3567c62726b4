//! Freshness probe: time from an etcd put being acknowledged to the first Check that sees the
//! change, for a rule change, a revocation and a `rules rollback` (the library call the command
//! makes), over many trials (p50 / p99 / max).
//! Starts its own etcd (Debian `etcd-server`) on free loopback ports and an in-process
//! scopegate watching it; Checks go over real gRPC.
//! Run: `cargo bench --bench freshness` (optionally `-- TRIALS`, default 300)
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::disallowed_methods,
    clippy::disallowed_types,
    reason = "tests, benchmarks and examples: a failed step stops them with its message, and they read their own environment"
)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use scopegate::app;
use scopegate::changes::{Meta, RecordKind, Repo};
use scopegate::store::etcd::EtcdSettings;
use support::etcd::EtcdServer;
use support::server::{check_request, connect, serve_args, Answer};
use support::tokens::{self, claims, sign};

const P: &str = "/scopegate/";

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn report(what: &str, mut samples: Vec<Duration>) {
    samples.sort();
    println!(
        "freshness/{what:<12} trials={:<5} p50={:>8.3} ms  p99={:>8.3} ms  max={:>8.3} ms",
        samples.len(),
        percentile(&samples, 0.50).as_secs_f64() * 1e3,
        percentile(&samples, 0.99).as_secs_f64() * 1e3,
        samples.last().unwrap().as_secs_f64() * 1e3,
    );
}

#[tokio::main]
async fn main() {
    // `cargo bench` passes `--bench`; under `cargo test --all-targets` this runs as a smoke test.
    let benching = std::env::args().any(|a| a == "--bench");
    let trials: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(if benching { 300 } else { 5 });
    let etcd = EtcdServer::start().await;
    let mut kv = etcd.client().await;
    kv.put(format!("{P}issuers/test"), tokens::issuer_json(), None)
        .await
        .unwrap();
    let route =
        |scope: &str| format!(r#"{{"host":"*","path":"/fresh","require":{{"all":["{scope}"]}}}}"#);
    kv.put(format!("{P}routes/fresh"), route("a"), None)
        .await
        .unwrap();
    let app = app::start(&serve_args(&[
        "--etcd-endpoints",
        &etcd.endpoint(),
        "--decision-log",
        "off",
    ]))
    .await
    .unwrap();
    let mut client = connect(app.grpc_addr).await;
    let mut c = claims("alice", "a");
    c["jti"] = serde_json::json!("probe-jti");
    let auth = format!("Bearer {}", sign(jsonwebtoken::Algorithm::RS256, &c));
    let request = check_request(
        "GET",
        "api.example.com",
        "/fresh",
        &[("authorization", &auth)],
    );

    // Waits until Check answers `status`; returns the time from `since`.
    let mut until = async |status: u16, since: Instant| -> Duration {
        loop {
            let answer =
                Answer::from_response(client.check(request.clone()).await.unwrap().into_inner());
            if answer.status == status {
                return since.elapsed();
            }
            assert!(
                since.elapsed() < Duration::from_secs(10),
                "change never seen"
            );
        }
    };
    until(200, Instant::now()).await;

    // Watch latency alone: put acknowledged → new snapshot published in-process.
    let mut published = Vec::new();
    let mut revisions = app.store.subscribe();
    for i in 0..trials {
        let t = Instant::now();
        kv.put(
            format!("{P}routes/other"),
            route(if i % 2 == 0 { "x" } else { "y" }),
            None,
        )
        .await
        .unwrap();
        let acked = t.elapsed();
        revisions.changed().await.unwrap();
        published.push(t.elapsed() - acked);
    }
    report("watch_only", published);
    let mut rule_change = Vec::with_capacity(trials);
    let mut revocation = Vec::with_capacity(trials);
    for _ in 0..trials {
        kv.put(format!("{P}routes/fresh"), route("b"), None)
            .await
            .unwrap();
        rule_change.push(until(403, Instant::now()).await);
        kv.put(format!("{P}routes/fresh"), route("a"), None)
            .await
            .unwrap();
        until(200, Instant::now()).await;

        kv.put(format!("{P}revoked/jti/probe-jti"), "{}", None)
            .await
            .unwrap();
        revocation.push(until(401, Instant::now()).await);
        kv.delete(format!("{P}revoked/jti/probe-jti"), None)
            .await
            .unwrap();
        until(200, Instant::now()).await;
    }
    report("rule_change", rule_change);
    report("revocation", revocation);

    // Rollback: restore the revision that allowed, in one transaction with a version record.
    // `rollback`: its transaction acknowledged → first Check that sees it; `rollback_cmd`: the
    // whole call (read the old and the current rule set, write) → first Check that sees it.
    let mut repo = Repo::connect(&EtcdSettings::new(vec![etcd.endpoint()], P))
        .await
        .unwrap();
    let (mut rollback, mut rollback_cmd) = (Vec::new(), Vec::new());
    for _ in 0..trials {
        let good = kv
            .put(format!("{P}routes/fresh"), route("a"), None)
            .await
            .unwrap()
            .header()
            .unwrap()
            .revision();
        until(200, Instant::now()).await;
        kv.put(format!("{P}routes/fresh"), route("b"), None)
            .await
            .unwrap();
        until(403, Instant::now()).await;
        let started = Instant::now();
        let meta = Meta {
            kind: RecordKind::Rollback,
            author: "bench".into(),
            message: String::new(),
            rollback_to: None,
        };
        repo.rollback(good, meta).await.unwrap();
        rollback.push(until(200, Instant::now()).await);
        rollback_cmd.push(started.elapsed());
    }
    report("rollback", rollback);
    report("rollback_cmd", rollback_cmd);
}
