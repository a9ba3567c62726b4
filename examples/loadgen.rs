//! A gRPC load generator for scopegate alone (no Envoy): sends ext_authz `Check` requests as
//! Envoy would, over a few HTTP/2 connections, and reports latency percentiles and throughput.
//!
//! Two modes:
//! - closed loop (default): `--concurrency` workers each send the next request as soon as the
//!   previous answer arrives: the maximum throughput of the machine.
//! - open loop (`--rate R`): requests start on a fixed schedule, R per second, whatever the
//!   answers do (no coordinated omission); requests beyond `--max-in-flight` are counted as
//!   dropped, never queued.
//!
//! The mix is realistic: mostly valid tokens from a small pool (verified once, then answered from
//! the claims cache), `--fresh-pct` never-seen tokens (a signature check each: cache misses),
//! and `--deny-pct` denials (half a valid token without the scope: 403; half no token: 401).
//! Every answer is checked against what that kind of request must get.
//!
//! `--report-every 1s` (open loop) adds a time series: a `WINDOWS start_unix=...` line when the
//! measured run starts, then one `WINDOW t=<window start>s sent= ok= errors= unexpected=
//! dropped= p50_us= p99_us= max_us= send_p99_us= err_max_us= lag_p99_us=` line per window. A
//! request counts in the window of its scheduled start, and there its latency runs from that
//! scheduled start (send_p99_us and the summary's latency run from the actual send; lag_p99_us
//! is how late requests left); `-` when nothing in the window was answered. gRPC errors (the
//! server restarting) are counted and never stop the run (the channel reconnects by itself);
//! `--tolerate-errors` also keeps them out of the exit status (scripts/bench-cold-restart.sh).
//!
//! Defaults match `scopegate serve --rules examples/rules.yaml` (issuer
//! https://idp.example.com/, route GET api.example.com /orders/{id} needing orders:read). Bounded:
//! at most `--duration` (≤ 10 min) and `--requests`; loopback targets only.
//!
//! ```text
//! cargo build --release --bin scopegate --example loadgen
//! target/release/scopegate serve --rules examples/rules.yaml --decision-log off &
//! target/release/examples/loadgen --rate 5000 --duration 20s   # open loop
//! target/release/examples/loadgen --concurrency 64 --duration 10s  # closed loop, max rate
//! ```
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::disallowed_methods,
    clippy::disallowed_types,
    reason = "tests, benchmarks and examples: a failed step stops them with its message, and they read their own environment"
)]

use std::collections::VecDeque;
use std::net::ToSocketAddrs;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use envoy_types::ext_authz::v3::pb::{CheckRequest, HttpResponse};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::AttributeContext;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::json;
use tokio::sync::{mpsc, Semaphore};
use tonic::transport::{Channel, Endpoint};

const MAX_DURATION: Duration = Duration::from_secs(600);
const MAX_REQUESTS: u64 = 50_000_000;
const MAX_FRESH_TOKENS: usize = 200_000;

/// `--any-answer`: do not check answers against the request kind.
static ANY_ANSWER: AtomicBool = AtomicBool::new(false);

#[derive(Parser, Debug)]
#[command(about = "gRPC load generator for scopegate (closed or open loop)")]
struct Args {
    /// scopegate's gRPC address (loopback only).
    #[arg(long, default_value = "http://127.0.0.1:9191")]
    addr: String,
    /// Open loop at this many requests per second (default: closed loop).
    #[arg(long)]
    rate: Option<u32>,
    /// Measured run time (after warm-up).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Unmeasured warm-up at the same load.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Stop after this many measured requests.
    #[arg(long, default_value_t = MAX_REQUESTS)]
    requests: u64,
    /// HTTP/2 connections (requests are spread round-robin).
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// Closed loop: concurrent workers (in-flight requests).
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Open loop: requests in flight beyond this are dropped (and counted).
    #[arg(long, default_value_t = 1024)]
    max_in_flight: usize,
    /// Runtime worker threads of the load generator.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Percent of requests with a never-seen token (signature check: cache miss).
    #[arg(long, default_value_t = 1.0)]
    fresh_pct: f64,
    /// Percent of requests that must be denied (half 403 insufficient_scope, half 401).
    #[arg(long, default_value_t = 4.0)]
    deny_pct: f64,
    /// Distinct cached valid tokens.
    #[arg(long, default_value_t = 100)]
    pool: usize,
    /// Fresh tokens to mint up front (default: enough for the run, up to 200000).
    #[arg(long)]
    fresh_tokens: Option<usize>,
    #[arg(long, default_value = "https://idp.example.com/")]
    iss: String,
    #[arg(long, default_value = "orders-api")]
    aud: String,
    /// Scope that the route requires (granted to allowed requests).
    #[arg(long, default_value = "orders:read")]
    scope: String,
    #[arg(long, default_value = "GET")]
    method: String,
    #[arg(long, default_value = "api.example.com")]
    host: String,
    #[arg(long, default_value = "/orders/42")]
    path: String,
    /// PEM RSA private key (PKCS#8) for RS256. Default: the public demo key.
    #[arg(long)]
    key: Option<std::path::PathBuf>,
    #[arg(long, default_value = "demo-rsa-1")]
    kid: String,
    /// Accept any answer (to measure examples/noop_authz, the protocol floor, with the same mix).
    #[arg(long)]
    any_answer: bool,
    /// Open loop: print a `WINDOW` line per window of this length (e.g. `1s`) during the measured
    /// run. Each request counts in the window of its scheduled start, and its latency there is
    /// taken from that scheduled start (start lag included: coordinated omission stays visible).
    #[arg(long, value_parser = humantime::parse_duration)]
    report_every: Option<Duration>,
    /// Exit 0 despite gRPC errors (e.g. while the server restarts); unexpected answers still
    /// fail the run.
    #[arg(long)]
    tolerate_errors: bool,
}

// ---------------------------------------------------------------------------------------------
// Latency histogram: log-linear buckets (128 per power of two, < 1% error), mergeable.

const SUB_BUCKETS: u64 = 128;

#[derive(Clone)]
struct Histogram {
    counts: Vec<u64>,
    total: u64,
    max: u64,
}

impl Histogram {
    fn new() -> Histogram {
        Histogram {
            counts: vec![0; 64 * SUB_BUCKETS as usize],
            total: 0,
            max: 0,
        }
    }

    fn index(nanos: u64) -> usize {
        if nanos < SUB_BUCKETS {
            return nanos as usize;
        }
        let exp = 63 - nanos.leading_zeros() as u64; // >= 7
        let shift = exp - 7;
        let mantissa = (nanos >> shift) - SUB_BUCKETS; // 0..128
        ((shift + 1) * SUB_BUCKETS + mantissa) as usize
    }

    /// Upper bound of a bucket, in nanoseconds.
    fn value(index: usize) -> u64 {
        let index = index as u64;
        if index < SUB_BUCKETS {
            return index;
        }
        let shift = index / SUB_BUCKETS - 1;
        let mantissa = index % SUB_BUCKETS + SUB_BUCKETS;
        ((mantissa + 1) << shift) - 1
    }

    fn record(&mut self, d: Duration) {
        let nanos = d.as_nanos().min(u64::MAX as u128) as u64;
        self.counts[Self::index(nanos)] += 1;
        self.total += 1;
        self.max = self.max.max(nanos);
    }

    fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.total += other.total;
        self.max = self.max.max(other.max);
    }

    /// The `q` quantile (0..=1) in microseconds.
    fn quantile_us(&self, q: f64) -> f64 {
        if self.total == 0 {
            return 0.0;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Self::value(i).min(self.max) as f64 / 1000.0;
            }
        }
        self.max as f64 / 1000.0
    }
}

// ---------------------------------------------------------------------------------------------
// The request mix.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Cached,
    Fresh,
    DenyScope,
    DenyMissing,
}

const KINDS: [Kind; 4] = [
    Kind::Cached,
    Kind::Fresh,
    Kind::DenyScope,
    Kind::DenyMissing,
];

impl Kind {
    fn expected_status(self) -> u16 {
        match self {
            Kind::Cached | Kind::Fresh => 200,
            Kind::DenyScope => 403,
            Kind::DenyMissing => 401,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Kind::Cached => "cached valid token (allow)",
            Kind::Fresh => "fresh token, cache miss (allow)",
            Kind::DenyScope => "token without the scope (403)",
            Kind::DenyMissing => "no token (401)",
        }
    }
}

/// Pre-built requests: building them costs nothing during the run.
struct Mix {
    cached: Vec<CheckRequest>,
    deny_scope: Vec<CheckRequest>,
    deny_missing: CheckRequest,
    fresh: Vec<CheckRequest>,
    next_fresh: AtomicUsize,
    fresh_per_million: u64,
    deny_per_million: u64,
}

impl Mix {
    /// Deterministic choice for request number `seq` (a hash of it, so kinds interleave).
    fn pick(&self, seq: u64) -> (Kind, CheckRequest) {
        let h = splitmix(seq);
        let slot = h % 1_000_000;
        if slot < self.fresh_per_million {
            let i = self.next_fresh.fetch_add(1, Ordering::Relaxed);
            if let Some(request) = self.fresh.get(i) {
                return (Kind::Fresh, request.clone());
            }
        } else if slot < self.fresh_per_million + self.deny_per_million {
            if h & (1 << 40) == 0 {
                let i = (h >> 20) as usize % self.deny_scope.len();
                return (Kind::DenyScope, self.deny_scope[i].clone());
            }
            return (Kind::DenyMissing, self.deny_missing.clone());
        }
        let i = (h >> 20) as usize % self.cached.len();
        (Kind::Cached, self.cached[i].clone())
    }

    fn fresh_exhausted(&self) -> bool {
        self.next_fresh.load(Ordering::Relaxed) > self.fresh.len()
    }
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

fn check_request(args: &Args, token: Option<&str>) -> CheckRequest {
    let mut headers = std::collections::HashMap::new();
    if let Some(token) = token {
        headers.insert("authorization".to_string(), format!("Bearer {token}"));
    }
    headers.insert("user-agent".to_string(), "scopegate-loadgen".to_string());
    headers.insert("accept".to_string(), "application/json".to_string());
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Request {
                http: Some(HttpRequest {
                    id: "loadgen".into(),
                    method: args.method.clone(),
                    host: args.host.clone(),
                    path: args.path.clone(),
                    scheme: "http".into(),
                    protocol: "HTTP/1.1".into(),
                    headers,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

struct Minter {
    key: EncodingKey,
    kid: String,
    iss: String,
    aud: String,
}

impl Minter {
    fn mint(&self, sub: &str, scope: &str, jti: &str) -> String {
        let mut header = Header::new(Algorithm::RS256);
        header.typ = Some("at+jwt".into());
        header.kid = Some(self.kid.clone());
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let claims = json!({
            "iss": self.iss, "aud": self.aud, "sub": sub, "client_id": "loadgen",
            "scope": scope, "iat": now, "nbf": now, "exp": now + 3600, "jti": jti,
        });
        encode(&header, &claims, &self.key).expect("signing with the RSA key")
    }
}

/// Mints `count` tokens on all cores.
fn mint_many(minter: &Minter, count: usize, scope: &str, tag: &str) -> Vec<String> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(count.max(1));
    let per_thread = count.div_ceil(threads.max(1));
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || {
                    let range = (t * per_thread)..((t + 1) * per_thread).min(count);
                    range
                        .map(|i| {
                            minter.mint(
                                &format!("user-{tag}-{i}"),
                                scope,
                                &format!("{tag}-{i}-{}", uuid::Uuid::new_v4()),
                            )
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("minting thread"))
            .collect()
    })
}

fn build_mix(args: &Args, measured_estimate: u64) -> Result<Mix, Box<dyn std::error::Error>> {
    let key_path = args.key.clone().unwrap_or_else(|| {
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/examples/keys/demo-rs256.key.pem"
        )
        .into()
    });
    let minter = Minter {
        key: EncodingKey::from_rsa_pem(&std::fs::read(&key_path)?)?,
        kid: args.kid.clone(),
        iss: args.iss.clone(),
        aud: args.aud.clone(),
    };
    let fresh_fraction = args.fresh_pct / 100.0;
    let wanted = (measured_estimate as f64 * fresh_fraction * 1.2) as usize + 64;
    let fresh_count = args.fresh_tokens.unwrap_or(wanted).min(MAX_FRESH_TOKENS);
    let started = Instant::now();
    let pool = mint_many(&minter, args.pool.max(1), &args.scope, "pool");
    let deny = mint_many(&minter, 8, "profile", "deny");
    let fresh = if fresh_fraction > 0.0 {
        mint_many(&minter, fresh_count, &args.scope, "fresh")
    } else {
        vec![]
    };
    eprintln!(
        "loadgen: minted {} pool + {} fresh RS256 tokens in {:.1}s",
        pool.len(),
        fresh.len(),
        started.elapsed().as_secs_f64()
    );
    let per_million = |pct: f64| (pct.clamp(0.0, 100.0) * 10_000.0) as u64;
    Ok(Mix {
        cached: pool.iter().map(|t| check_request(args, Some(t))).collect(),
        deny_scope: deny.iter().map(|t| check_request(args, Some(t))).collect(),
        deny_missing: check_request(args, None),
        fresh: fresh.iter().map(|t| check_request(args, Some(t))).collect(),
        next_fresh: AtomicUsize::new(0),
        fresh_per_million: per_million(args.fresh_pct),
        deny_per_million: per_million(args.deny_pct),
    })
}

// ---------------------------------------------------------------------------------------------
// Running.

#[derive(Clone)]
struct Stats {
    latency: Histogram,
    /// Open loop: how late each request started against its schedule.
    lag: Histogram,
    by_kind: [u64; 4],
    /// Latency of the answered requests of each kind (a fresh token's signature check shows).
    latency_by_kind: [Histogram; 4],
    unexpected: u64,
    errors: u64,
    dropped: u64,
    first_unexpected: Option<String>,
}

impl Stats {
    fn new() -> Stats {
        Stats {
            latency: Histogram::new(),
            lag: Histogram::new(),
            by_kind: [0; 4],
            latency_by_kind: std::array::from_fn(|_| Histogram::new()),
            unexpected: 0,
            errors: 0,
            dropped: 0,
            first_unexpected: None,
        }
    }

    fn merge(&mut self, other: &Stats) {
        self.latency.merge(&other.latency);
        self.lag.merge(&other.lag);
        for (a, b) in self.by_kind.iter_mut().zip(other.by_kind) {
            *a += b;
        }
        for (a, b) in self.latency_by_kind.iter_mut().zip(&other.latency_by_kind) {
            a.merge(b);
        }
        self.unexpected += other.unexpected;
        self.errors += other.errors;
        self.dropped += other.dropped;
        if self.first_unexpected.is_none() {
            self.first_unexpected.clone_from(&other.first_unexpected);
        }
    }

    fn completed(&self) -> u64 {
        self.by_kind.iter().sum::<u64>() + self.errors
    }
}

/// Sends one request; returns the HTTP status Envoy would answer with, or an error text.
async fn send(
    client: &mut AuthorizationClient<Channel>,
    request: CheckRequest,
) -> Result<u16, String> {
    let response = client
        .check(request)
        .await
        .map_err(|s| s.to_string())?
        .into_inner();
    match response.http_response {
        Some(HttpResponse::OkResponse(_)) => Ok(200),
        Some(HttpResponse::DeniedResponse(d)) => Ok(d.status.map_or(0, |s| s.code as u16)),
        _ => Ok(0),
    }
}

fn account(stats: &mut Stats, kind: Kind, result: Result<u16, String>, latency: Duration) {
    match result {
        Ok(status) => {
            stats.latency.record(latency);
            let index = KINDS.iter().position(|k| *k == kind).unwrap_or(0);
            stats.by_kind[index] += 1;
            stats.latency_by_kind[index].record(latency);
            if status != kind.expected_status() && !ANY_ANSWER.load(Ordering::Relaxed) {
                stats.unexpected += 1;
                if stats.first_unexpected.is_none() {
                    stats.first_unexpected = Some(format!("{}: got {status}", kind.label()));
                }
            }
        }
        Err(e) => {
            stats.errors += 1;
            if stats.first_unexpected.is_none() {
                stats.first_unexpected = Some(format!("{}: gRPC error {e}", kind.label()));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Per-window report (open loop, `--report-every`).

/// The requests scheduled to start in one window.
struct Window {
    /// Scheduled here and sent (not dropped): `ok + unexpected + errors` once all have finished.
    sent: u64,
    ok: u64,
    unexpected: u64,
    errors: u64,
    dropped: u64,
    /// Answered requests, from the scheduled start to the answer.
    latency: Histogram,
    /// Answered requests, from the actual send to the answer (as the summary measures).
    send_latency: Histogram,
    /// The slowest failure, from the scheduled start (a fast refusal or a hang).
    error_max: Duration,
    /// How late sent requests left against their scheduled start (the client's share).
    lag: Histogram,
}

impl Window {
    fn new() -> Window {
        Window {
            sent: 0,
            ok: 0,
            unexpected: 0,
            errors: 0,
            dropped: 0,
            latency: Histogram::new(),
            send_latency: Histogram::new(),
            error_max: Duration::ZERO,
            lag: Histogram::new(),
        }
    }

    fn finished(&self) -> u64 {
        self.ok + self.unexpected + self.errors
    }
}

/// Windows not yet printed, in order; a window is printed once the schedule has moved past it
/// and every request started in it has finished (so a slow answer delays the line, never
/// moves to a later window).
struct Windows {
    every: Duration,
    /// Window number of `pending[0]`.
    first: u64,
    pending: VecDeque<Window>,
    /// Windows before this one get no more requests.
    closed_before: u64,
}

impl Windows {
    fn new(every: Duration) -> Windows {
        Windows {
            every,
            first: 0,
            pending: VecDeque::new(),
            closed_before: 0,
        }
    }

    /// The window of a request scheduled `offset` after the start of the run.
    fn number(&self, offset: Duration) -> u64 {
        (offset.as_nanos() / self.every.as_nanos().max(1)) as u64
    }

    fn window(&mut self, number: u64) -> Option<&mut Window> {
        let i = usize::try_from(number.checked_sub(self.first)?).ok()?;
        while self.pending.len() <= i {
            self.pending.push_back(Window::new());
        }
        self.pending.get_mut(i)
    }

    /// A request scheduled in window `number` (the schedule is in order: earlier windows get
    /// no more requests).
    fn schedule(&mut self, number: u64, dropped: bool) {
        if let Some(window) = self.window(number) {
            if dropped {
                window.dropped += 1;
            } else {
                window.sent += 1;
            }
        }
        self.closed_before = self.closed_before.max(number);
    }

    /// A request of window `number` finished: it left `lag` after its scheduled start and
    /// took `latency` from there.
    fn finish(
        &mut self,
        number: u64,
        kind: Kind,
        result: &Result<u16, String>,
        lag: Duration,
        latency: Duration,
    ) {
        let Some(window) = self.window(number) else {
            return;
        };
        let since_scheduled = lag + latency;
        window.lag.record(lag);
        match result {
            Ok(status) => {
                window.latency.record(since_scheduled);
                window.send_latency.record(latency);
                if *status == kind.expected_status() || ANY_ANSWER.load(Ordering::Relaxed) {
                    window.ok += 1;
                } else {
                    window.unexpected += 1;
                }
            }
            Err(_) => {
                window.errors += 1;
                window.error_max = window.error_max.max(since_scheduled);
            }
        }
    }

    /// The schedule is over: every remaining window closes.
    fn close_all(&mut self) {
        self.closed_before = u64::MAX;
    }

    /// Lines of the windows complete now, in order (removed from `pending`).
    fn take_complete(&mut self) -> Vec<String> {
        let mut lines = Vec::new();
        while self.first < self.closed_before {
            match self.pending.front() {
                Some(front) if front.finished() >= front.sent => {}
                _ => break,
            }
            if let Some(window) = self.pending.pop_front() {
                lines.push(self.line(self.first, &window));
            }
            self.first += 1;
        }
        lines
    }

    fn line(&self, number: u64, w: &Window) -> String {
        let start = self.every.as_secs_f64() * number as f64;
        let t = if self.every.subsec_nanos().is_multiple_of(100_000_000) {
            format!("{start:.1}")
        } else {
            format!("{start:.3}")
        };
        let l = &w.latency;
        let (p50, p99, max, send_p99) = if l.total == 0 {
            let none = || "-".to_string();
            (none(), none(), none(), none())
        } else {
            (
                format!("{:.1}", l.quantile_us(0.5)),
                format!("{:.1}", l.quantile_us(0.99)),
                format!("{:.1}", l.max as f64 / 1000.0),
                format!("{:.1}", w.send_latency.quantile_us(0.99)),
            )
        };
        let err_max = if w.errors == 0 {
            "-".to_string()
        } else {
            format!("{:.1}", w.error_max.as_secs_f64() * 1e6)
        };
        format!(
            "WINDOW t={t}s sent={} ok={} errors={} unexpected={} dropped={} p50_us={p50} p99_us={p99} max_us={max} send_p99_us={send_p99} err_max_us={err_max} lag_p99_us={:.1}",
            w.sent,
            w.ok,
            w.errors,
            w.unexpected,
            w.dropped,
            w.lag.quantile_us(0.99)
        )
    }
}

/// What the open-loop tasks share: the run's totals and, with `--report-every`, the windows.
struct Shared {
    stats: Stats,
    windows: Option<Windows>,
}

fn print_lines(lines: Vec<String>) {
    for line in lines {
        println!("{line}");
    }
}

struct Target {
    clients: Vec<AuthorizationClient<Channel>>,
    mix: Arc<Mix>,
    seq: Arc<AtomicU64>,
}

impl Target {
    fn client(&self, n: u64) -> AuthorizationClient<Channel> {
        self.clients[n as usize % self.clients.len()].clone()
    }
}

/// Closed loop for `length`: `concurrency` workers back to back; stops early after `limit`.
async fn closed_loop(
    target: &Target,
    concurrency: usize,
    length: Duration,
    limit: u64,
) -> (Stats, Duration) {
    let started = Instant::now();
    let deadline = started + length;
    let issued = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..concurrency)
        .map(|w| {
            let mut client = target.client(w as u64);
            let (mix, seq, issued) = (target.mix.clone(), target.seq.clone(), issued.clone());
            tokio::spawn(async move {
                let mut stats = Stats::new();
                while Instant::now() < deadline && issued.fetch_add(1, Ordering::Relaxed) < limit {
                    let (kind, request) = mix.pick(seq.fetch_add(1, Ordering::Relaxed));
                    let sent = Instant::now();
                    let result = send(&mut client, request).await;
                    account(&mut stats, kind, result, sent.elapsed());
                }
                stats
            })
        })
        .collect();
    let mut total = Stats::new();
    for worker in workers {
        total.merge(&worker.await.expect("worker task"));
    }
    (total, started.elapsed())
}

/// Open loop for `length` at `rate`/s; stops early after `limit`. A dedicated thread paces the
/// starts (tokio timers tick in milliseconds); each request runs as its own task. With
/// `report_every`, prints a `WINDOWS` line first, then a `WINDOW` line per window.
async fn open_loop(
    target: &Target,
    rate: u32,
    max_in_flight: usize,
    length: Duration,
    limit: u64,
    report_every: Option<Duration>,
) -> (Stats, Duration) {
    let period = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    let total = ((length.as_secs_f64() * f64::from(rate)) as u64).min(limit);
    let (tx, mut rx) = mpsc::unbounded_channel::<(u64, Instant)>();
    let started = Instant::now();
    if let Some(every) = report_every {
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        println!(
            "WINDOWS start_unix={:.6} every_s={:.3} rate={rate} scheduled={total}",
            unix.as_secs_f64(),
            every.as_secs_f64()
        );
    }
    let pacer = std::thread::spawn(move || {
        for i in 0..total {
            let at = started + period.mul_f64(i as f64);
            if let Some(wait) = at.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            if tx.send((i, at)).is_err() {
                return;
            }
        }
    });
    let shared = Arc::new(Mutex::new(Shared {
        stats: Stats::new(),
        windows: report_every.map(Windows::new),
    }));
    let in_flight = Arc::new(Semaphore::new(max_in_flight));
    let mut tasks = tokio::task::JoinSet::new();
    while let Some((i, scheduled)) = rx.recv().await {
        let permit = in_flight.clone().try_acquire_owned().ok();
        let mut number = 0;
        let lines = {
            let mut shared = shared.lock().expect("stats");
            if permit.is_none() {
                shared.stats.dropped += 1;
            }
            match &mut shared.windows {
                Some(windows) => {
                    number = windows.number(scheduled.saturating_duration_since(started));
                    windows.schedule(number, permit.is_none());
                    windows.take_complete()
                }
                None => Vec::new(),
            }
        };
        print_lines(lines);
        let Some(permit) = permit else {
            continue;
        };
        let mut client = target.client(i);
        let (kind, request) = target.mix.pick(target.seq.fetch_add(1, Ordering::Relaxed));
        let shared = shared.clone();
        tasks.spawn(async move {
            let sent = Instant::now();
            let result = send(&mut client, request).await;
            let latency = sent.elapsed();
            let lag = sent.saturating_duration_since(scheduled);
            let lines = {
                let mut shared = shared.lock().expect("stats");
                if let Some(windows) = &mut shared.windows {
                    windows.finish(number, kind, &result, lag, latency);
                }
                let stats = &mut shared.stats;
                stats.lag.record(lag);
                account(stats, kind, result, latency);
                shared
                    .windows
                    .as_mut()
                    .map(Windows::take_complete)
                    .unwrap_or_default()
            };
            drop(permit);
            print_lines(lines);
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    let _ = pacer.join();
    let elapsed = started.elapsed();
    let mut shared = shared.lock().expect("stats");
    if let Some(windows) = &mut shared.windows {
        windows.close_all();
        print_lines(windows.take_complete());
    }
    (shared.stats.clone(), elapsed)
}

/// One run; `report_every` (open loop only) prints per-window lines during it.
async fn run(
    target: &Target,
    args: &Args,
    length: Duration,
    limit: u64,
    report_every: Option<Duration>,
) -> (Stats, Duration) {
    match args.rate {
        Some(rate) => {
            open_loop(
                target,
                rate,
                args.max_in_flight,
                length,
                limit,
                report_every,
            )
            .await
        }
        None => closed_loop(target, args.concurrency, length, limit).await,
    }
}

fn report(args: &Args, stats: &Stats, elapsed: Duration, mix: &Mix) {
    let mode = match args.rate {
        Some(rate) => format!(
            "open loop, {rate} req/s scheduled, max {} in flight",
            args.max_in_flight
        ),
        None => format!("closed loop, {} concurrent", args.concurrency),
    };
    let done = stats.completed();
    let throughput = done as f64 / elapsed.as_secs_f64();
    let l = &stats.latency;
    println!(
        "loadgen: {mode}; {} connection(s), {} client thread(s), {}",
        args.connections, args.threads, args.addr
    );
    println!(
        "  measured   {:.2}s, {done} answers, {throughput:.0} req/s",
        elapsed.as_secs_f64()
    );
    println!(
        "  latency    p50 {:.1} µs   p99 {:.1} µs   p99.9 {:.1} µs   max {:.1} µs",
        l.quantile_us(0.5),
        l.quantile_us(0.99),
        l.quantile_us(0.999),
        l.max as f64 / 1000.0
    );
    if args.rate.is_some() {
        println!(
            "  start lag  p50 {:.1} µs   p99 {:.1} µs (how late requests left against the schedule)",
            stats.lag.quantile_us(0.5),
            stats.lag.quantile_us(0.99)
        );
    }
    for ((kind, count), latency) in KINDS.iter().zip(stats.by_kind).zip(&stats.latency_by_kind) {
        println!(
            "  {:<34} {count:>9} ({:.2}%)   p50 {:.1} µs   p99 {:.1} µs",
            kind.label(),
            100.0 * count as f64 / done.max(1) as f64,
            latency.quantile_us(0.5),
            latency.quantile_us(0.99),
        );
    }
    println!(
        "  errors {}   unexpected answers {}   dropped (over max in flight) {}",
        stats.errors, stats.unexpected, stats.dropped
    );
    if let Some(first) = &stats.first_unexpected {
        println!("  first unexpected: {first}");
    }
    if mix.fresh_exhausted() {
        println!("  note: fresh tokens ran out; later 'fresh' picks were cached tokens (use --fresh-tokens)");
    }
    println!(
        "RESULT mode={} rps={throughput:.0} p50_us={:.1} p99_us={:.1} p999_us={:.1} max_us={:.1} errors={} unexpected={} dropped={}",
        if args.rate.is_some() { "open" } else { "closed" },
        l.quantile_us(0.5),
        l.quantile_us(0.99),
        l.quantile_us(0.999),
        l.max as f64 / 1000.0,
        stats.errors,
        stats.unexpected,
        stats.dropped
    );
}

fn check_args(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let authority = args
        .addr
        .strip_prefix("http://")
        .ok_or("--addr must be http://HOST:PORT (plaintext loopback)")?
        .trim_end_matches('/');
    let all_loopback = authority.to_socket_addrs()?.all(|a| a.ip().is_loopback());
    if !all_loopback {
        return Err(format!(
            "--addr {} is not a loopback address: loadgen only targets this machine",
            args.addr
        )
        .into());
    }
    if args.duration > MAX_DURATION || args.warmup > MAX_DURATION {
        return Err(format!("--duration and --warmup are bounded to {MAX_DURATION:?}").into());
    }
    if args.requests > MAX_REQUESTS {
        return Err(format!("--requests is bounded to {MAX_REQUESTS}").into());
    }
    if args.connections == 0 || args.concurrency == 0 || args.threads == 0 || args.pool == 0 {
        return Err("--connections, --concurrency, --threads and --pool must be at least 1".into());
    }
    if args.rate.is_some_and(|r| r == 0 || r > 1_000_000) {
        return Err("--rate must be 1..=1000000".into());
    }
    if let Some(every) = args.report_every {
        if args.rate.is_none() {
            return Err("--report-every needs --rate (open loop)".into());
        }
        if every < Duration::from_millis(1) {
            return Err("--report-every must be at least 1ms".into());
        }
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    check_args(&args)?;
    ANY_ANSWER.store(args.any_answer, Ordering::Relaxed);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads)
        .enable_all()
        .build()?;
    runtime.block_on(async_main(args))
}

async fn async_main(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    // Enough fresh tokens for the run: at the open-loop rate, or a generous closed-loop guess.
    let seconds = (args.duration + args.warmup).as_secs_f64();
    let estimate = match args.rate {
        Some(rate) => (f64::from(rate) * seconds) as u64,
        None => (40_000.0 * seconds) as u64,
    }
    .min(args.requests);
    let mix = Arc::new(build_mix(&args, estimate)?);
    let mut clients = Vec::new();
    for _ in 0..args.connections {
        let channel = Endpoint::from_shared(args.addr.clone())?
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .map_err(|e| format!("cannot connect to {}: {e}", args.addr))?;
        clients.push(AuthorizationClient::new(channel));
    }
    let target = Target {
        clients,
        mix: mix.clone(),
        seq: Arc::new(AtomicU64::new(0)),
    };

    // Every pool token once, so that "cached" really is cached; and a sanity check of the setup.
    let mut client = target.client(0);
    for (i, request) in mix.cached.iter().chain(&mix.deny_scope).enumerate() {
        let expected = if i < mix.cached.len() { 200 } else { 403 };
        let status = send(&mut client, request.clone()).await?;
        if status != expected && !args.any_answer {
            return Err(format!(
                "setup check: expected {expected}, got {status}. Is scopegate serving examples/rules.yaml \
                 (issuer {}, route {} {}{} needing {})?",
                args.iss, args.method, args.host, args.path, args.scope
            )
            .into());
        }
    }
    if !args.warmup.is_zero() {
        let (warm, _) = run(&target, &args, args.warmup, u64::MAX, None).await;
        eprintln!("loadgen: warm-up done ({} requests)", warm.completed());
    }
    let (stats, elapsed) = run(
        &target,
        &args,
        args.duration,
        args.requests,
        args.report_every,
    )
    .await;
    report(&args, &stats, elapsed, &mix);
    if stats.unexpected > 0 || (stats.errors > 0 && !args.tolerate_errors) {
        return Err("some requests failed or got unexpected answers".into());
    }
    Ok(())
}
