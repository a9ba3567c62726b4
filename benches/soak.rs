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

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

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
/// Failed valid-token requests kept in detail (all are counted), and how many are printed.
const KEEP_FAILURES: usize = 10_000;
const SHOW_FAILURES: usize = 50;
/// A request's id, sent to Envoy and written in its access log, to match the two up.
const ID_HEADER: &str = "x-soak-id";

/// One scopegate process.
struct Replica {
    name: &'static str,
    grpc: u16,
    admin: u16,
    endpoints: String,
    dir: PathBuf,
    /// Each process's log, `<name>-<incarnation>.log` (a restart does not overwrite the last).
    logs: Vec<PathBuf>,
    child: Option<Child>,
}

impl Replica {
    fn new(name: &'static str, endpoints: String, dir: &Path) -> Replica {
        Replica {
            name,
            grpc: free_port(),
            admin: free_port(),
            endpoints,
            dir: dir.to_path_buf(),
            logs: Vec::new(),
            child: None,
        }
    }

    fn spawn(&mut self) {
        let path = self
            .dir
            .join(format!("{}-{}.log", self.name, self.logs.len()));
        let log = std::fs::File::create(&path).unwrap();
        self.logs.push(path);
        let child = Command::new(env!("CARGO_BIN_EXE_scopegate"))
            .args(["serve", "--listen", &format!("127.0.0.1:{}", self.grpc)])
            .args(["--admin-listen", &format!("127.0.0.1:{}", self.admin)])
            .args([
                "--etcd-endpoints",
                &self.endpoints,
                "--max-staleness",
                MAX_STALENESS,
            ])
            // Denials in the decision log (to name the replica behind a failed request by its
            // decision id), and the etcd source's reconnects, for the timeline.
            .args(["--decision-log", "deny"])
            .env(
                "RUST_LOG",
                "warn,scopegate=info,scopegate::audit=warn,scopegate::store::etcd=debug",
            )
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

    async fn is_ready(&self) -> bool {
        try_http_get(self.admin_addr(), "/readyz")
            .await
            .is_ok_and(|(status, _)| status == 200)
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

/// Where Envoy writes what the driver reads back after the run.
struct EnvoyLogs {
    /// One line per request, see [`AccessEntry`].
    access: PathBuf,
    /// The scopegate cluster's health-check events (ejections, additions), JSON lines.
    health: PathBuf,
}

/// Envoy in front of both replicas: gRPC health checks eject a replica that is down or stale,
/// and a check that fails at the gRPC level is retried on the other host. The access log and
/// the health-check event log only record (see [`EnvoyLogs`]); they change no routing.
fn envoy_config(
    listener: u16,
    admin: u16,
    replicas: [u16; 2],
    upstream: u16,
    logs: &EnvoyLogs,
) -> String {
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
          access_log:
          - name: envoy.access_loggers.file
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: {access}
              log_format:
                text_format_source:
                  inline_string: "{access_format}"
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
              emit_filter_state_stats: true
              grpc_service:
                envoy_grpc: {{cluster_name: scopegate}}
                # On the GrpcService itself: `envoy_grpc.retry_policy` is for xDS streams only (an
                # ext_authz call ignores it), and a policy without `retry_on` retries nothing.
                # A Check is idempotent: retry a failed connection, a reset or an UNAVAILABLE
                # call, on another host. Envoy also makes `max_interval` the per-try timeout: at
                # 0.05 s a 50 ms CPU stall (an etcd member restarting) timed tries out in bursts
                # that overflowed the cluster's retry limit; 0.25 s lets two tries fit the 0.5 s.
                retry_policy:
                  retry_on: connect-failure,refused-stream,reset,unavailable,cancelled
                  num_retries: 2
                  retry_back_off: {{base_interval: 0.01s, max_interval: 0.25s}}
                  retry_host_predicate:
                  - name: envoy.retry_host_predicates.previous_hosts
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate
                  host_selection_retry_max_attempts: 3
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
    # `no_traffic_interval` (default 60 s) is Envoy's interval until a cluster has had traffic,
    # and the first check (at startup, before any) schedules the next with it: without this line
    # the first health check after startup comes 60 s later, and no replica is ejected before.
    - timeout: 0.25s
      interval: 0.25s
      no_traffic_interval: 0.25s
      unhealthy_threshold: 1
      healthy_threshold: 1
      event_logger:
      - name: envoy.health_check.event_sink.file
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.health_check.event_sinks.file.v3.HealthCheckEventFileSink
          event_log_path: {health}
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
        access = logs.access.display(),
        health = logs.health.display(),
        access_format = ACCESS_FORMAT,
    )
}

/// Tab-separated, in [`AccessEntry`]'s order (YAML double-quoted escapes).
const ACCESS_FORMAT: &str = concat!(
    "%REQ(X-SOAK-ID)%\\t%START_TIME(%s.%3f)%\\t%RESPONSE_CODE%\\t%RESPONSE_FLAGS%",
    "\\t%RESPONSE_CODE_DETAILS%\\t%DURATION%",
    "\\t%FILTER_STATE(envoy.filters.http.ext_authz:FIELD:latency_us)%",
    "\\t%FILTER_STATE(envoy.filters.http.ext_authz:FIELD:bytesReceived)%",
    "\\t%DYNAMIC_METADATA(envoy.filters.http.ext_authz:decision_id)%",
    "\\t%DYNAMIC_METADATA(envoy.filters.http.ext_authz:reason)%\\n"
);

/// One line of the soak's Envoy access log.
struct AccessEntry {
    /// When Envoy started the request.
    start: SystemTime,
    status: u16,
    flags: String,
    details: String,
    duration_ms: String,
    /// The ext_authz call as Envoy saw it (`-` when not recorded).
    authz_latency_us: String,
    authz_bytes_received: String,
    decision_id: String,
    reason: String,
}

fn read_access_log(path: &Path) -> HashMap<u64, AccessEntry> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split('\t').collect();
            let [id, start, status, flags, details, duration, latency, received, decision, reason] =
                f[..]
            else {
                return None;
            };
            let start = Duration::from_secs_f64(start.parse::<f64>().ok()?);
            Some((
                id.parse().ok()?,
                AccessEntry {
                    start: SystemTime::UNIX_EPOCH + start,
                    status: status.parse().unwrap_or(0),
                    flags: flags.to_string(),
                    details: details.to_string(),
                    duration_ms: duration.to_string(),
                    authz_latency_us: latency.to_string(),
                    authz_bytes_received: received.to_string(),
                    decision_id: decision.to_string(),
                    reason: reason.to_string(),
                },
            ))
        })
        .collect()
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
    /// The fault steps so far, in order.
    steps: Vec<Step>,
}

/// One step of the fault schedule: when the driver began it and when it was done with it
/// (`restart-b` lasts until B is ready, `freeze-b-member` until the member is thawed).
struct Step {
    name: &'static str,
    began: Instant,
    done: Option<Instant>,
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
    /// The first [`KEEP_FAILURES`] failed valid-token requests, in order of completion.
    failures: AsyncMutex<Vec<Failure>>,
}

/// A valid-token request that did not get 200, as the driver saw it.
struct Failure {
    id: u64,
    sent: Instant,
    took: Duration,
    /// 0: no complete HTTP response (`error` says why).
    status: u16,
    error: Option<String>,
    /// Response headers other than the usual framing ones (`x-envoy-*`, `x-scopegate-*`, …).
    headers: Vec<(String, String)>,
    body: String,
    excused: bool,
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
    id: u64,
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
    let id_value = id.to_string();
    let mut headers: Vec<(&str, &str)> = header
        .iter()
        .map(|h| ("authorization", h.as_str()))
        .collect();
    headers.push((ID_HEADER, &id_value));
    let answer = try_request(envoy, "GET", path, &headers, Duration::from_secs(3)).await;
    let took = sent.elapsed();
    let status = answer.as_ref().map_or(0, |r| r.status);
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
            drop(changes);
            let counter = if excused {
                &tally.valid_failed_excused
            } else {
                &tally.valid_failed
            };
            counter.fetch_add(1, Ordering::Relaxed);
            let (headers, body) = match &answer {
                Ok(r) => (
                    r.headers
                        .iter()
                        .filter(|(k, _)| {
                            !matches!(
                                k.as_str(),
                                "date"
                                    | "server"
                                    | "content-length"
                                    | "content-type"
                                    | "connection"
                            )
                        })
                        .cloned()
                        .collect(),
                    r.body.trim().chars().take(200).collect(),
                ),
                Err(_) => (Vec::new(), String::new()),
            };
            let mut failures = tally.failures.lock().await;
            if failures.len() < KEEP_FAILURES {
                failures.push(Failure {
                    id,
                    sent,
                    took,
                    status,
                    error: answer.as_ref().err().map(ToString::to_string),
                    headers,
                    body,
                    excused,
                });
            }
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

/// What [`explain`] needs of the finished run.
struct Run {
    started: Instant,
    started_wall: SystemTime,
    replica_ports: [u16; 2],
    /// The run's temporary directory (replica and Envoy logs).
    dir: PathBuf,
    envoy_logs: EnvoyLogs,
    /// `a#0`, `b#0`, `b#1`, …: each replica process's log.
    replica_logs: Vec<(String, PathBuf)>,
}

impl Run {
    /// Milliseconds from the start of the schedule to `t` (negative: before it).
    fn at(&self, t: Instant) -> i64 {
        match t.checked_duration_since(self.started) {
            Some(d) => d.as_millis() as i64,
            None => -((self.started - t).as_millis() as i64),
        }
    }

    fn at_wall(&self, t: SystemTime) -> i64 {
        match t.duration_since(self.started_wall) {
            Ok(d) => d.as_millis() as i64,
            Err(e) => -(e.duration().as_millis() as i64),
        }
    }

    fn replica_at(&self, port: u64) -> &'static str {
        match self
            .replica_ports
            .iter()
            .position(|p| u64::from(*p) == port)
        {
            Some(0) => "a",
            Some(_) => "b",
            None => "?",
        }
    }
}

/// An Envoy health-check event for one replica, in ms since the start.
struct HealthEvent {
    at: i64,
    replica: &'static str,
    /// `eject`, `add`, `failure(<type>)`, …
    what: String,
}

fn read_health_events(run: &Run) -> Vec<HealthEvent> {
    let text = std::fs::read_to_string(&run.envoy_logs.health).unwrap_or_default();
    let mut events: Vec<HealthEvent> = text
        .lines()
        .filter_map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).ok()?;
            let at = humantime::parse_rfc3339(v["timestamp"].as_str()?).ok()?;
            let port = v["host"]["socket_address"]["port_value"].as_u64()?;
            let what = if v.get("eject_unhealthy_event").is_some() {
                "eject".to_string()
            } else if v.get("add_healthy_event").is_some() {
                "add".to_string()
            } else if let Some(failure) = v.get("health_check_failure_event") {
                format!(
                    "failure({})",
                    failure["failure_type"].as_str().unwrap_or("?")
                )
            } else {
                let keys: Vec<&str> = v.as_object()?.keys().map(String::as_str).collect();
                let kind = keys
                    .iter()
                    .find(|k| k.ends_with("_event") || k.ends_with("_host"));
                kind.map_or("?", |k| *k).to_string()
            };
            Some(HealthEvent {
                at: run.at_wall(at),
                replica: run.replica_at(port),
                what,
            })
        })
        .collect();
    events.sort_by_key(|e| e.at);
    events
}

/// Envoy's health view of each replica at `at` (from ejections and additions before it).
fn health_at(events: &[HealthEvent], at: i64) -> String {
    let state = |replica: &str| {
        events
            .iter()
            .rfind(|e| e.replica == replica && e.at <= at && (e.what == "eject" || e.what == "add"))
            .map_or("?", |e| if e.what == "add" { "in" } else { "out" })
    };
    format!("a={} b={}", state("a"), state("b"))
}

/// A denial in a replica's decision log.
struct Decided {
    replica: String,
    status: u64,
    reason: String,
    revision: Option<i64>,
}

/// One replica log line other than a decision, for the timeline.
struct LogLine {
    at: i64,
    text: String,
}

fn read_replica_logs(run: &Run) -> (HashMap<String, Decided>, Vec<LogLine>) {
    let mut decisions = HashMap::new();
    let mut lines = Vec::new();
    for (replica, path) in &run.replica_logs {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        for line in text.lines() {
            let Ok(serde_json::Value::Object(v)) = serde_json::from_str(line) else {
                if !line.trim().is_empty() {
                    lines.push(LogLine {
                        at: i64::MAX,
                        text: format!("{replica} {line}"),
                    });
                }
                continue;
            };
            let target = v.get("target").and_then(|t| t.as_str()).unwrap_or("");
            if target == "scopegate::decision" {
                if let Some(id) = v.get("decision_id").and_then(|d| d.as_str()) {
                    decisions.insert(
                        id.to_string(),
                        Decided {
                            replica: replica.clone(),
                            status: v.get("status").and_then(|s| s.as_u64()).unwrap_or(0),
                            reason: v["reason"].as_str().unwrap_or("?").to_string(),
                            revision: v.get("revision").and_then(|r| r.as_i64()),
                        },
                    );
                }
                continue;
            }
            let at = v
                .get("timestamp")
                .and_then(|t| t.as_str())
                .and_then(|t| humantime::parse_rfc3339(t).ok())
                .map_or(i64::MAX, |t| run.at_wall(t));
            let mut text = format!(
                "{replica} {} {}",
                v.get("level").and_then(|l| l.as_str()).unwrap_or("?"),
                v.get("message").and_then(|m| m.as_str()).unwrap_or("")
            );
            for (key, value) in &v {
                if !matches!(key.as_str(), "timestamp" | "level" | "message" | "target") {
                    text.push_str(&format!(" {key}={}", compact(value)));
                }
            }
            lines.push(LogLine { at, text });
        }
    }
    (decisions, lines)
}

fn compact(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The fault step under way (or last done) when a request was sent, and the lasting states
/// (leader down, A cut off) then.
fn phase(steps: &[Step], sent: Instant) -> String {
    let Some(step) = steps.iter().rev().find(|s| s.began <= sent) else {
        return "before the first fault".to_string();
    };
    let since = (sent - step.began).as_millis();
    let mut phase = match step.done {
        Some(done) if sent > done => format!(
            "{} +{since} ms (done {} ms before)",
            step.name,
            (sent - done).as_millis()
        ),
        _ => format!("{} +{since} ms (running)", step.name),
    };
    let began = |name: &str| steps.iter().find(|s| s.name == name).map(|s| s.began);
    let done = |name: &str| steps.iter().find(|s| s.name == name).and_then(|s| s.done);
    let between = |from: Option<Instant>, to: Option<Instant>| {
        from.is_some_and(|f| f <= sent) && to.is_none_or(|t| sent < t)
    };
    if between(began("kill-leader"), done("restart-leader")) {
        phase.push_str(" [an etcd member down]");
    }
    if between(began("cut-a"), began("restore-a")) {
        phase.push_str(" [a cut off etcd]");
    }
    phase
}

/// One failed valid-token request, described.
struct Detail {
    /// When it was sent, ms since the start.
    at: i64,
    excused: bool,
    /// The whole detail line.
    line: String,
    /// For the timeline.
    short: String,
}

/// The detail of every failed valid-token request (the first [`SHOW_FAILURES`] printed, all
/// returned), then a timeline around each failure outside the fault windows, and Envoy's
/// counters that say how checks failed.
async fn explain(run: &Run, tally: &Tally, changes: &Changes, envoy_stats: &[String]) {
    let access = read_access_log(&run.envoy_logs.access);
    let health = read_health_events(run);
    let (decisions, log_lines) = read_replica_logs(run);
    let mut failures = tally.failures.lock().await;
    failures.sort_by_key(|f| f.sent);
    let mut details = Vec::new();
    for (n, f) in failures.iter().enumerate() {
        let at = run.at(f.sent);
        let mut line = format!(
            "soak: valid-token failure #{} t={at} ms {} status={} took={} ms phase={} envoy-health[{}]",
            n + 1,
            if f.excused { "excused" } else { "OUTSIDE" },
            f.status,
            f.took.as_millis(),
            phase(&changes.steps, f.sent),
            health_at(&health, at),
        );
        if let Some(error) = &f.error {
            line.push_str(&format!(" error={error:?}"));
        }
        let header = |name: &str| {
            f.headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        };
        let mut decision_id = header("x-scopegate-decision-id");
        let mut reason = "-".to_string();
        let mut by = "envoy".to_string();
        match access.get(&f.id) {
            Some(e) => {
                reason = format!("{}/{}", e.details, e.reason);
                line.push_str(&format!(
                    " envoy[code={} flags={} details={} duration={} ms authz_latency={} us \
                     authz_rx={} B reason={} started t={} ms]",
                    e.status,
                    e.flags,
                    e.details,
                    e.duration_ms,
                    e.authz_latency_us,
                    e.authz_bytes_received,
                    e.reason,
                    run.at_wall(e.start),
                ));
                if decision_id.is_none() && e.decision_id != "-" {
                    decision_id = Some(e.decision_id.clone());
                }
            }
            None => line.push_str(" envoy[no access-log line]"),
        }
        if let Some(id) = &decision_id {
            match decisions.get(id) {
                Some(d) => {
                    line.push_str(&format!(
                        " answered-by={} (status {} reason {} revision {})",
                        d.replica,
                        d.status,
                        d.reason,
                        d.revision.map_or("-".to_string(), |r| r.to_string())
                    ));
                    by = d.replica.clone();
                }
                None => {
                    line.push_str(&format!(" decision {id} in no replica log"));
                    by = "a replica (decision not logged)".to_string();
                }
            }
        } else {
            line.push_str(" answered-by=envoy (no decision id)");
        }
        let shown: Vec<String> = f
            .headers
            .iter()
            .filter(|(k, _)| k.starts_with("x-envoy-") || k.starts_with("x-scopegate-"))
            .map(|(k, v)| format!("{k}: {v}"))
            .collect();
        if !shown.is_empty() {
            line.push_str(&format!(" headers[{}]", shown.join("; ")));
        }
        if !f.body.is_empty() {
            line.push_str(&format!(" body={}", f.body));
        }
        details.push(Detail {
            at,
            excused: f.excused,
            short: format!(
                "{} failure #{} status={} reason={reason} by {by}",
                if f.excused { "excused" } else { "OUTSIDE" },
                n + 1,
                f.status,
            ),
            line,
        });
    }
    let total = tally.valid_failed.load(Ordering::Relaxed)
        + tally.valid_failed_excused.load(Ordering::Relaxed);
    if total > 0 {
        println!(
            "soak: failed valid-token requests in detail (first {} of {total}, by time sent):",
            SHOW_FAILURES.min(details.len())
        );
    }
    for d in details.iter().take(SHOW_FAILURES) {
        println!("{}", d.line);
    }

    // The timeline: fault steps, Envoy's health events, replica log lines, failures.
    let mut timeline: Vec<(i64, bool, String)> = Vec::new();
    for step in &changes.steps {
        timeline.push((
            run.at(step.began),
            false,
            format!("step {} begins", step.name),
        ));
        if let Some(done) = step.done {
            timeline.push((run.at(done), false, format!("step {} done", step.name)));
        }
    }
    for e in &health {
        let what = format!("envoy health {} {}", e.replica, e.what);
        timeline.push((e.at, false, what));
    }
    for l in &log_lines {
        timeline.push((l.at, false, l.text.clone()));
    }
    for d in &details {
        timeline.push((d.at, true, d.short.clone()));
    }
    timeline.sort_by_key(|(at, _, _)| *at);
    let outside: Vec<i64> = details
        .iter()
        .filter(|d| !d.excused)
        .map(|d| d.at)
        .collect();
    let near = |t: i64| outside.iter().any(|o| t >= o - 6_000 && t <= o + 1_500);
    let around: Vec<&(i64, bool, String)> = timeline.iter().filter(|e| near(e.0)).collect();
    if !around.is_empty() {
        println!("soak: timeline around the failures outside the windows (-6 s … +1.5 s):");
        let (mut i, mut printed) = (0, 0);
        while i < around.len() && printed < 150 {
            let (t, failure, what) = around[i];
            println!("soak:   t={t:>7} ms {what}");
            printed += 1;
            i += 1;
            if *failure {
                // A run of failures: the first, then how many more until when.
                let run_end = around[i..]
                    .iter()
                    .position(|e| !e.1)
                    .map_or(around.len(), |n| i + n);
                if run_end > i {
                    let more = &around[i..run_end];
                    let outside = more.iter().filter(|e| e.2.contains("OUTSIDE")).count();
                    let last = more[more.len() - 1].0;
                    println!(
                        "soak:   t={last:>7} ms   … and {} more failures up to here ({outside} outside)",
                        more.len()
                    );
                    printed += 1;
                }
                i = run_end;
            }
        }
        if i < around.len() {
            println!("soak:   … the rest in timeline.txt");
        }
    }
    if total > 0 {
        println!("soak: envoy counters (non-zero, replicas by name):");
        for line in envoy_stats {
            let mut line = line.clone();
            for (name, port) in ["a", "b"].iter().zip(run.replica_ports) {
                line = line.replace(&format!("127.0.0.1:{port}"), &format!("replica-{name}"));
            }
            println!("soak:   {line}");
        }
    }
    let text: String = details.iter().map(|d| format!("{}\n", d.line)).collect();
    let _ = std::fs::write(run.dir.join("failures.txt"), text);
    let text: String = timeline
        .iter()
        .map(|(t, _, what)| format!("t={t:>7} ms {what}\n"))
        .collect();
    let _ = std::fs::write(run.dir.join("timeline.txt"), text);
}

/// Envoy's counters that say how ext_authz calls fared (non-zero only): the filter's, the
/// scopegate cluster's retries, timeouts, resets and health checks, and per-host errors.
async fn envoy_stats(admin: SocketAddr) -> Vec<String> {
    let mut out = Vec::new();
    let get = |path: &'static str| async move {
        try_request(admin, "GET", path, &[], Duration::from_secs(5))
            .await
            .map(|r| r.body)
            .unwrap_or_default()
    };
    let interesting = [
        "retry",
        "timeout",
        "reset",
        "connect_fail",
        "pending_failure_eject",
        "with_active_rq",
        "health_check.",
        "upstream_rq_5",
    ];
    for line in get("/stats").await.lines() {
        let Some((name, value)) = line.split_once(": ") else {
            continue;
        };
        if value.trim() == "0" || value.contains("P0(") {
            continue;
        }
        let authz = name.contains("ext_authz");
        let cluster =
            name.starts_with("cluster.scopegate.") && interesting.iter().any(|i| name.contains(i));
        if authz || cluster {
            out.push(line.to_string());
        }
    }
    for line in get("/clusters").await.lines() {
        let Some(rest) = line.strip_prefix("scopegate::") else {
            continue;
        };
        let wanted = [
            "::rq_error::",
            "::rq_timeout::",
            "::cx_connect_fail::",
            "::health_flags::",
        ];
        if wanted.iter().any(|w| rest.contains(w)) && !rest.ends_with("::0") {
            out.push(line.to_string());
        }
    }
    out
}

/// Copies every log of the run (replicas, Envoy's access and health-event logs, the failure
/// details and the timeline) to `target/soak-logs/`, replacing the previous run's.
fn keep_logs(dir: &Path) {
    let kept = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/soak-logs");
    let _ = std::fs::remove_dir_all(&kept);
    if std::fs::create_dir_all(&kept).is_err() {
        return;
    }
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let _ = std::fs::copy(entry.path(), kept.join(entry.file_name()));
    }
    println!("soak: logs of this run in {}", kept.display());
}
