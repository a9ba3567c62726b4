//! Soak through faults: real Envoy → two scopegate replicas (the real binary, etcd source,
//! `--max-staleness 3s`) → an echo upstream, at a fixed request rate, while a 3-member etcd
//! cluster loses its leader, gets members restarted and compacted, one replica is cut off etcd
//! and restored, the other is restarted, the member a replica watches hangs (SIGSTOP), and rule
//! changes and revocations are applied throughout.
//!
//! It reports requests sent, answers by status, valid-token failures (inside and outside the
//! replica-restart and fault-detection windows), false allows (a revoked token or a removed scope
//! allowed later than `BOUND` after etcd acknowledged the change), each replica's snapshot
//! revision never going backwards, and RSS at start and end. It exits non-zero on any false
//! allow or revision regression.
//!
//! Every failed valid-token request (excused or not) is kept with what came back (status,
//! `x-envoy-*`/`x-scopegate-*` headers, body), Envoy's access-log line for it (response flags,
//! `%RESPONSE_CODE_DETAILS%`, ext_authz call latency), which replica answered (by the decision id,
//! from the replicas' decision logs), which health state Envoy had each replica in (its health
//! check event log) and which fault step was under way. The first 50 are printed after the
//! summary, with a timeline (fault steps, Envoy ejections, replica warnings) around each failure
//! outside the windows; every log of the run is copied to `target/soak-logs/`.
//!
//! Run: `scripts/soak.sh` (= `cargo bench --bench soak -- --duration 300 --rate 200`); under
//! `cargo test --all-targets` it runs a 15 s smoke version with every fault.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

#[path = "../../tests/support/mod.rs"]
mod support;

mod envoy;
mod explain;
mod replica;
mod traffic;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::support::envoy::{EchoUpstream, Envoy};
use crate::support::etcd::EtcdCluster;
use crate::support::free_port;
use crate::support::proxy::CuttableProxy;
use crate::support::tokens::token;
use etcd_client::{Client, CompactionOptions};
use tokio::sync::Mutex as AsyncMutex;

use envoy::{envoy_config, envoy_stats, EnvoyLogs};
use explain::{explain, keep_logs, Run};
use replica::Replica;
use traffic::{items_route, run_one, seed, watch_revisions, Changes, Class, Step, Tally, Tokens};

pub(crate) const P: &str = "/scopegate/";
/// A change must bite within this long after etcd acknowledged it: `--max-staleness` (a replica
/// cut off etcd may serve its last snapshot that long) plus one health-check interval.
pub(crate) const BOUND: Duration = Duration::from_millis(3_500);
pub(crate) const MAX_STALENESS: &str = "3s";
/// Failed valid-token requests kept in detail (all are counted), and how many are printed.
pub(crate) const KEEP_FAILURES: usize = 10_000;
pub(crate) const SHOW_FAILURES: usize = 50;
/// A request's id, sent to Envoy and written in its access log, to match the two up.
pub(crate) const ID_HEADER: &str = "x-soak-id";

pub(crate) struct Settings {
    pub(crate) duration: Duration,
    pub(crate) rate: u32,
}

fn settings() -> Settings {
    let args: Vec<String> = std::env::args().collect();
    let benching = args.iter().any(|a| a == "--bench");
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse::<u64>().ok())
    };
    let default_duration = if benching { 300 } else { 15 };
    Settings {
        duration: Duration::from_secs(flag("--duration").unwrap_or(default_duration)),
        rate: flag("--rate").unwrap_or(if benching { 200 } else { 50 }) as u32,
    }
}

#[tokio::main]
async fn main() {
    let settings = settings();
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = EtcdCluster::start(3).await;
    let mut kv = Client::connect(cluster.endpoints(), None).await.unwrap();
    seed(&mut kv).await;

    // Replica A reaches each member through a cuttable proxy; replica B watches a follower first.
    let mut proxies = Vec::new();
    for m in &cluster.members {
        proxies.push(
            CuttableProxy::start(format!("127.0.0.1:{}", m.client_port).parse().unwrap()).await,
        );
    }
    let a_endpoints: Vec<String> = proxies.iter().map(CuttableProxy::endpoint).collect();
    let leader = cluster.leader().await;
    let mut b_order: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    b_order.push(leader);
    let b_endpoints: Vec<String> = b_order
        .iter()
        .map(|i| cluster.members[*i].endpoint())
        .collect();
    let mut a = Replica::new("a", a_endpoints.join(","), dir.path());
    let mut b = Replica::new("b", b_endpoints.join(","), dir.path());
    a.spawn();
    b.spawn();
    a.wait_ready().await;
    b.wait_ready().await;

    let upstream = EchoUpstream::start().await;
    let (listener, admin) = (free_port(), free_port());
    let envoy_logs = EnvoyLogs {
        access: dir.path().join("access.log"),
        health: dir.path().join("health-events.log"),
    };
    let replica_ports = [a.grpc, b.grpc];
    let config = envoy_config(
        listener,
        admin,
        replica_ports,
        upstream.addr.port(),
        &envoy_logs,
    );
    let envoy = Envoy::start(&config, listener, admin).await;
    let envoy_addr = envoy.addr;

    let victims = 200usize;
    let tokens = Arc::new(Tokens {
        valid: token("alice", "orders:read"),
        items: token("bob", "items:read"),
        victims: (0..victims)
            .map(|v| token(&format!("victim-{v}"), "orders:read"))
            .collect(),
    });
    let changes = Arc::new(AsyncMutex::new(Changes::default()));
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let incarnation = Arc::new(AtomicU64::new(0));
    let revisions = tokio::spawn(watch_revisions(
        vec![("a", a.admin_addr()), ("b", b.admin_addr())],
        incarnation.clone(),
        stop.clone(),
    ));

    // The load: a fixed rate, open loop (a slow answer does not slow the sender).
    let load = {
        let (tokens, changes, tally, stop) =
            (tokens.clone(), changes.clone(), tally.clone(), stop.clone());
        let rate = settings.rate;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1) / rate);
            let mut i: u64 = 0;
            let mut tasks = tokio::task::JoinSet::new();
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                i += 1;
                let class = match i % 10 {
                    0..=5 => Class::Valid,
                    6 => Class::NoToken,
                    7 | 8 => Class::Victim((i as usize / 10) % victims),
                    _ => Class::Items,
                };
                tasks.spawn(run_one(
                    envoy_addr,
                    i,
                    class,
                    tokens.clone(),
                    changes.clone(),
                    tally.clone(),
                ));
                while tasks.try_join_next().is_some() {}
            }
            while tasks.join_next().await.is_some() {}
        })
    };

    let started = Instant::now();
    let started_wall = SystemTime::now();
    let at = |f: f64| started + settings.duration.mul_f64(f);
    tokio::time::sleep(Duration::from_secs(2).min(settings.duration / 10)).await;
    let rss_start = a.rss_bytes();
    let mut next_victim = 0usize;
    let mut items_admin = false;
    let mut revoke_next = false;
    let mut steps: Vec<(f64, &str)> = vec![
        (0.10, "kill-leader"),
        (0.18, "restart-leader"),
        (0.25, "compact"),
        (0.32, "cut-a"),
        (0.42, "restore-a"),
        (0.50, "restart-b"),
        (0.60, "freeze-b-member"),
        (0.70, "restart-follower"),
    ];
    steps.reverse();
    let mut killed_leader = None;
    let change_every = Duration::from_millis(1500).min(settings.duration / 8);
    let mut next_change = Instant::now() + change_every;
    while Instant::now() < at(1.0) {
        if let Some((when, step)) = steps.last().copied() {
            if Instant::now() >= at(when) {
                steps.pop();
                // A fault that takes a replica out must not begin while the other one is still
                // out: in a short run restart-b comes before A is back from its reconnect
                // backoff (up to 2 × 5 s after restore-a). Wait for both, and for Envoy's health
                // check to have seen them (two rounds).
                if matches!(step, "cut-a" | "restart-b" | "freeze-b-member") {
                    let waiting = Instant::now();
                    let mut out = Vec::new();
                    for r in [&a, &b] {
                        if !r.is_ready().await {
                            out.push(r.name);
                            r.wait_ready().await;
                        }
                    }
                    if !out.is_empty() {
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        println!(
                            "soak: {step} waited {:.1} s for replica {} to be ready again",
                            waiting.elapsed().as_secs_f64(),
                            out.join(", ")
                        );
                    }
                }
                let excuse_from = Instant::now();
                let second = Duration::from_secs(1);
                // Where valid-token failures are expected: a replica out (restart) or going stale
                // (cut off: it fails closed ~3 s after its last confirmation, until Envoy's next
                // health check ejects it), plus a health-check round on either side. Open-ended
                // until the step is done: a check that fails and is answered while the step is
                // still under way (B restarting) is inside it.
                let window = match step {
                    "cut-a" => (excuse_from + second, excuse_from + second * 5),
                    _ => (excuse_from, excuse_from + Duration::from_secs(3600)),
                };
                {
                    let mut changes = changes.lock().await;
                    changes.excused.push(window);
                    changes.steps.push(Step {
                        name: step,
                        began: excuse_from,
                        done: None,
                    });
                }
                match step {
                    "kill-leader" => {
                        let l = cluster.leader().await;
                        cluster.members[l].kill();
                        killed_leader = Some(l);
                    }
                    "restart-leader" => {
                        if let Some(l) = killed_leader.take() {
                            cluster.members[l].restart().await;
                            cluster.wait_healthy().await;
                        }
                    }
                    "compact" => {
                        let rev = kv
                            .get(format!("{P}routes/orders"), None)
                            .await
                            .unwrap()
                            .header()
                            .unwrap()
                            .revision();
                        kv.compact(rev, Some(CompactionOptions::new().with_physical()))
                            .await
                            .unwrap();
                    }
                    "cut-a" => proxies.iter().for_each(CuttableProxy::cut),
                    "restore-a" => proxies.iter().for_each(CuttableProxy::restore),
                    "restart-b" => {
                        b.kill();
                        incarnation.fetch_add(1, Ordering::Relaxed);
                        b.spawn();
                        b.wait_ready().await;
                    }
                    "freeze-b-member" => {
                        let member = &cluster.members[b_order[0]];
                        // Write through the members that keep answering.
                        let others: Vec<String> = b_order[1..]
                            .iter()
                            .map(|i| cluster.members[*i].endpoint())
                            .collect();
                        let mut live = Client::connect(others, None).await.unwrap();
                        member.signal("-STOP");
                        // Revoke while B's member hangs: B must still enforce it within BOUND.
                        revoke(&mut live, &changes, next_victim).await;
                        next_victim += 1;
                        tokio::time::sleep(Duration::from_secs(3)).await;
                        member.signal("-CONT");
                    }
                    "restart-follower" => {
                        let l = cluster.leader().await;
                        let f = (l + 1) % 3;
                        cluster.members[f].restart().await;
                        cluster.wait_healthy().await;
                    }
                    _ => unreachable!(),
                }
                let now = Instant::now();
                {
                    let mut changes = changes.lock().await;
                    if step != "cut-a" {
                        if let Some(last) = changes.excused.last_mut() {
                            last.1 = now + second;
                        }
                    }
                    if let Some(last) = changes.steps.last_mut() {
                        last.done = Some(now);
                    }
                }
                println!("soak: t={:>6.1}s {step}", started.elapsed().as_secs_f64());
            }
        }
        if Instant::now() >= next_change {
            next_change += change_every;
            revoke_next = !revoke_next;
            if revoke_next && next_victim < victims {
                revoke(&mut kv, &changes, next_victim).await;
                next_victim += 1;
            } else {
                items_admin = !items_admin;
                toggle_items(&mut kv, &changes, items_admin).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    let regressions = revisions.await.unwrap();
    let rss_end = a.rss_bytes();
    report(
        &settings,
        &tally,
        regressions,
        rss_start,
        rss_end,
        started.elapsed(),
    )
    .await;
    let failed = tally.false_allows.load(Ordering::Relaxed) > 0 || regressions > 0;
    let envoy_stats = envoy_stats(envoy.admin_addr).await;
    // Envoy flushes its logs every 100 ms (`--file-flush-interval-msec`).
    tokio::time::sleep(Duration::from_millis(300)).await;
    // `exit` skips destructors: stop every child process first.
    drop(envoy);
    let replica_logs: Vec<(String, PathBuf)> = [&a, &b]
        .iter()
        .flat_map(|r| {
            r.logs
                .iter()
                .enumerate()
                .map(|(n, log)| (format!("{}#{n}", r.name), log.clone()))
        })
        .collect();
    drop((a, b, proxies, kv));
    drop(cluster);
    let run = Run {
        started,
        started_wall,
        replica_ports,
        dir: dir.path().to_path_buf(),
        envoy_logs,
        replica_logs,
    };
    explain(&run, &tally, &*changes.lock().await, &envoy_stats).await;
    keep_logs(&run.dir);
    std::process::exit(i32::from(failed));
}

/// Puts a subject revocation, with retries: etcd may be electing a leader.
async fn revoke(kv: &mut Client, changes: &AsyncMutex<Changes>, victim: usize) {
    let key = format!("{P}revoked/sub/victim-{victim}");
    let value = r#"{"issued_before":4102444800,"reason":"soak"}"#;
    let started = Instant::now();
    changes.lock().await.revoked.insert(victim, (started, None));
    put_retrying(kv, &key, value).await;
    changes
        .lock()
        .await
        .revoked
        .insert(victim, (started, Some(Instant::now())));
}

async fn toggle_items(kv: &mut Client, changes: &AsyncMutex<Changes>, admin: bool) {
    let started = Instant::now();
    changes.lock().await.items.push((started, None, admin));
    put_retrying(kv, &format!("{P}routes/items"), &items_route(admin)).await;
    if let Some(last) = changes.lock().await.items.last_mut() {
        last.1 = Some(Instant::now());
    }
}

/// Writes with retries, each attempt bounded: a member may be electing a leader, or hung (the
/// client may have picked the frozen one).
async fn put_retrying(kv: &mut Client, key: &str, value: &str) {
    for _ in 0..50 {
        let attempt = tokio::time::timeout(Duration::from_millis(500), kv.put(key, value, None));
        if matches!(attempt.await, Ok(Ok(_))) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("soak: could not write {key} for 30 s");
}

async fn report(
    s: &Settings,
    t: &Tally,
    regressions: u64,
    rss_start: u64,
    rss_end: u64,
    took: Duration,
) {
    let mib = |b: u64| b as f64 / 1_048_576.0;
    println!(
        "soak: duration={:.0}s rate={}/s sent={}",
        took.as_secs_f64(),
        s.rate,
        t.sent.load(Ordering::Relaxed)
    );
    println!("soak: answers by status {:?}", *t.by_status.lock().await);
    println!(
        "soak: valid-token failures outside fault windows={} inside={}",
        t.valid_failed.load(Ordering::Relaxed),
        t.valid_failed_excused.load(Ordering::Relaxed)
    );
    println!(
        "soak: false allows (later than {:?} after the ack)={} worst allow after an ack={:.1} ms",
        BOUND,
        t.false_allows.load(Ordering::Relaxed),
        t.worst_lag_us.load(Ordering::Relaxed) as f64 / 1000.0
    );
    println!("soak: revision regressions={regressions}");
    let growth = (rss_end as f64 / rss_start.max(1) as f64 - 1.0) * 100.0;
    println!(
        "soak: replica a rss start={:.1} MiB end={:.1} MiB ({growth:+.1} %)",
        mib(rss_start),
        mib(rss_end)
    );
}
