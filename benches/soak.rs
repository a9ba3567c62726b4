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
//! Run: `scripts/soak.sh` (= `cargo bench --bench soak -- --duration 300 --rate 200`); under
//! `cargo test --all-targets` it runs a 15 s smoke version with every fault.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{Client, CompactionOptions};
use support::envoy::{try_request, EchoUpstream, Envoy};
use support::etcd::EtcdCluster;
use support::proxy::CuttableProxy;
use support::server::try_http_get;
use support::tokens::{self, token};
use support::{free_port, wait_until};
use tokio::sync::Mutex as AsyncMutex;

const P: &str = "/scopegate/";
/// A change must bite within this long after etcd acknowledged it: `--max-staleness` (a replica
/// cut off etcd may serve its last snapshot that long) plus one health-check interval.
const BOUND: Duration = Duration::from_millis(3_500);
const MAX_STALENESS: &str = "3s";

/// One scopegate process.
struct Replica {
    name: &'static str,
    grpc: u16,
    admin: u16,
    endpoints: String,
    log: std::path::PathBuf,
    child: Option<Child>,
}

impl Replica {
    fn new(name: &'static str, endpoints: String, dir: &std::path::Path) -> Replica {
        let log = dir.join(format!("{name}.log"));
        Replica {
            name,
            grpc: free_port(),
            admin: free_port(),
            endpoints,
            log,
            child: None,
        }
    }

    fn spawn(&mut self) {
        let log = std::fs::File::create(&self.log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_scopegate"))
            .args(["serve", "--listen", &format!("127.0.0.1:{}", self.grpc)])
            .args(["--admin-listen", &format!("127.0.0.1:{}", self.admin)])
            .args([
                "--etcd-endpoints",
                &self.endpoints,
                "--max-staleness",
                MAX_STALENESS,
            ])
            .env("RUST_LOG", "warn,scopegate::decision=off")
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("scopegate binary starts");
        self.child = Some(child);
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn admin_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.admin))
    }

    async fn wait_ready(&self) {
        let admin = self.admin_addr();
        let what = format!("replica {} ready", self.name);
        wait_until(&what, Duration::from_secs(30), || async move {
            try_http_get(admin, "/readyz")
                .await
                .is_ok_and(|(status, _)| status == 200)
        })
        .await;
    }

    fn rss_bytes(&self) -> u64 {
        let pid = self.child.as_ref().map(Child::id).unwrap_or(0);
        let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).unwrap_or_default();
        statm
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse::<u64>().ok())
            .unwrap_or(0)
            * 4096
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Envoy in front of both replicas: gRPC health checks eject a replica that is down or stale,
/// and a check that fails at the gRPC level is retried on the other host.
fn envoy_config(listener: u16, admin: u16, replicas: [u16; 2], upstream: u16) -> String {
    format!(
        r#"
admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}}}
static_resources:
  listeners:
  - name: ingress
    address: {{socket_address: {{address: 127.0.0.1, port_value: {listener}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress_http
          normalize_path: true
          merge_slashes: true
          path_with_escaped_slashes_action: REJECT_REQUEST
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{prefix: /}}
                route: {{cluster: upstream}}
          http_filters:
          - name: envoy.filters.http.ext_authz
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz
              transport_api_version: V3
              grpc_service:
                envoy_grpc:
                  cluster_name: scopegate
                  retry_policy:
                    num_retries: 2
                    retry_back_off: {{base_interval: 0.01s, max_interval: 0.05s}}
                timeout: 0.5s
              failure_mode_allow: false
              status_on_error: {{code: ServiceUnavailable}}
              allowed_headers: {{patterns: [{{exact: authorization}}]}}
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: scopegate
    type: STATIC
    connect_timeout: 0.25s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{http2_protocol_options: {{}}}}
    health_checks:
    - timeout: 0.25s
      interval: 0.25s
      unhealthy_threshold: 1
      healthy_threshold: 1
      grpc_health_check: {{service_name: envoy.service.auth.v3.Authorization}}
    load_assignment:
      cluster_name: scopegate
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {a}}}}}}}
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {b}}}}}}}
  - name: upstream
    type: STATIC
    connect_timeout: 0.25s
    load_assignment:
      cluster_name: upstream
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {upstream}}}}}}}
"#,
        a = replicas[0],
        b = replicas[1],
    )
}

/// What the changes have done, by the time etcd acknowledged them.
#[derive(Default)]
struct Changes {
    /// victim subject → (revocation put started, acknowledged).
    revoked: BTreeMap<usize, (Instant, Option<Instant>)>,
    /// Toggles of the `items` route: (started, acknowledged, requires items:admin now).
    items: Vec<(Instant, Option<Instant>, bool)>,
    /// Windows in which valid-token failures are expected (replica restart, fault detection).
    excused: Vec<(Instant, Instant)>,
}

/// What the load generator counted.
#[derive(Default)]
struct Tally {
    sent: AtomicU64,
    by_status: AsyncMutex<BTreeMap<u16, u64>>,
    valid_failed: AtomicU64,
    valid_failed_excused: AtomicU64,
    false_allows: AtomicU64,
    /// Longest time after an acknowledged change that a request sent then was still allowed.
    worst_lag_us: AtomicU64,
}

#[derive(Clone, Copy)]
enum Class {
    Valid,
    NoToken,
    Victim(usize),
    Items,
}

fn expect(class: Class, sent: Instant, changes: &Changes) -> Option<u16> {
    let settled = |ack: Option<Instant>| ack.is_some_and(|a| sent > a + BOUND);
    match class {
        Class::Valid => Some(200),
        Class::NoToken => Some(401),
        Class::Victim(v) => match changes.revoked.get(&v) {
            None => Some(200),
            Some((_, ack)) if settled(*ack) => Some(401),
            Some(_) => None,
        },
        Class::Items => match changes.items.last() {
            None => Some(200),
            Some((_, ack, admin)) if settled(*ack) => Some(if *admin { 403 } else { 200 }),
            Some(_) => None,
        },
    }
}

async fn run_one(
    envoy: SocketAddr,
    class: Class,
    tokens: Arc<Tokens>,
    changes: Arc<AsyncMutex<Changes>>,
    tally: Arc<Tally>,
) {
    let sent = Instant::now();
    let (path, auth) = match class {
        Class::Valid => ("/orders/1", Some(tokens.valid.clone())),
        Class::NoToken => ("/orders/1", None),
        Class::Victim(v) => ("/orders/1", Some(tokens.victims[v].clone())),
        Class::Items => ("/items/1", Some(tokens.items.clone())),
    };
    let header = auth.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = header
        .iter()
        .map(|h| ("authorization", h.as_str()))
        .collect();
    let status = try_request(envoy, "GET", path, &headers, Duration::from_secs(3))
        .await
        .map_or(0, |r| r.status);
    tally.sent.fetch_add(1, Ordering::Relaxed);
    *tally.by_status.lock().await.entry(status).or_default() += 1;
    let changes = changes.lock().await;
    let expected = expect(class, sent, &changes);
    let denied_after_change = match class {
        Class::Victim(v) => changes.revoked.get(&v).and_then(|(_, ack)| *ack),
        Class::Items => changes.items.last().filter(|i| i.2).and_then(|i| i.1),
        _ => None,
    };
    if let (Some(ack), 200) = (denied_after_change, status) {
        if sent > ack {
            let lag = (sent - ack).as_micros() as u64;
            tally.worst_lag_us.fetch_max(lag, Ordering::Relaxed);
        }
    }
    match expected {
        Some(want) if want == status => {}
        Some(200) => {
            let excused = changes
                .excused
                .iter()
                .any(|(a, b)| sent >= *a && sent <= *b);
            let counter = if excused {
                &tally.valid_failed_excused
            } else {
                &tally.valid_failed
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }
        Some(_) if status == 200 => {
            tally.false_allows.fetch_add(1, Ordering::Relaxed);
        }
        _ => {}
    }
}

struct Tokens {
    valid: String,
    items: String,
    victims: Vec<String>,
}

async fn seed(kv: &mut Client) {
    kv.put(format!("{P}issuers/test"), tokens::issuer_json(), None)
        .await
        .unwrap();
    let orders = r#"{"host":"*","path":"/orders/{id}","require":{"all":["orders:read"]}}"#;
    kv.put(format!("{P}routes/orders"), orders, None)
        .await
        .unwrap();
    kv.put(format!("{P}routes/items"), items_route(false), None)
        .await
        .unwrap();
}

fn items_route(admin: bool) -> String {
    let scope = if admin { "items:admin" } else { "items:read" };
    format!(r#"{{"host":"*","path":"/items/**","require":{{"all":["{scope}"]}}}}"#)
}

/// Polls every replica's `/status`: the revision must never go backwards within one process.
async fn watch_revisions(
    admins: Vec<(&'static str, SocketAddr)>,
    incarnation: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> u64 {
    let mut best: BTreeMap<(&str, u64), i64> = BTreeMap::new();
    let mut regressions = 0;
    while !stop.load(Ordering::Relaxed) {
        for (name, addr) in &admins {
            let Ok((status, body)) = try_http_get(*addr, "/status").await else {
                continue;
            };
            let revision = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["revision"].as_i64());
            let (200, Some(revision)) = (status, revision) else {
                continue;
            };
            let key = (
                *name,
                if *name == "b" {
                    incarnation.load(Ordering::Relaxed)
                } else {
                    0
                },
            );
            let seen = best.entry(key).or_insert(revision);
            if revision < *seen {
                eprintln!("soak: replica {name} went back from revision {seen} to {revision}");
                regressions += 1;
            }
            *seen = (*seen).max(revision);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    regressions
}

struct Settings {
    duration: Duration,
    rate: u32,
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
    let config = envoy_config(listener, admin, [a.grpc, b.grpc], upstream.addr.port());
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
                let excuse_from = Instant::now();
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
                // Where valid-token failures are expected: a replica out (restart) or going stale
                // (cut off: it fails closed ~3 s after its last confirmation, until Envoy's next
                // health check ejects it), plus a health-check round on either side.
                let now = Instant::now();
                let second = Duration::from_secs(1);
                let window = match step {
                    "cut-a" => (now + second, now + second * 5),
                    _ => (excuse_from, now + second),
                };
                changes.lock().await.excused.push(window);
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
    // `exit` skips destructors: stop every child process first.
    drop(envoy);
    drop((a, b, proxies, kv));
    drop(cluster);
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
