//! Observability: tracing initialisation, the Prometheus metrics (names are public interface),
//! and the decision log (one JSON line per check, never the token). [`keys`]: what talking to
//! identity providers counts; [`writer`]: the batching log writer behind both.

mod keys;
pub mod writer;

pub use keys::KeyMetrics;
pub use writer::{FlushGuard, LogWriter};

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use strum::IntoEnumIterator;
use tracing_subscriber::EnvFilter;

use crate::authz::{Decision, Verdict};
use crate::check::DecisionId;
use crate::reason::Reason;

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Text,
}

/// Which decisions are written to the decision log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecisionLogMode {
    /// Every decision.
    All,
    /// Denials and dry-run would-be denials only.
    Deny,
    /// No decision log.
    Off,
}

/// Installs the global tracing subscriber. Levels come from `RUST_LOG` (default `info`).
///
/// Lines are handed to a background writer thread ([`LogWriter`]), so a Check does not wait on
/// a `write(2)` to stdout (measured: the synchronous decision log cost ~21 µs of CPU per request
/// and stalled a single worker), and written in batches. The writer is not lossy: when its queue
/// is full, logging applies backpressure instead of dropping audit lines. Keep the returned
/// guard alive until exit: dropping it writes what is queued.
pub fn init_tracing(format: LogFormat) -> std::io::Result<FlushGuard> {
    let (writer, guard) = LogWriter::spawn(std::io::stdout())?;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer.clone());
    let result = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        LogFormat::Text => builder.try_init(),
    };
    // A second init (tests) keeps the first subscriber (and the first decision-log writer).
    if result.is_ok() && format == LogFormat::Json {
        install_json_decision_writer(writer);
    }
    Ok(guard)
}

/// Sends JSON decision-log lines straight to `writer` from now on (see [`init_tracing`]; the
/// benchmarks install one over a sink). The first writer installed stays.
pub fn install_json_decision_writer(writer: LogWriter) {
    let _ = JSON_DECISION_WRITER.set(writer);
}

/// With JSON logs, decision-log lines are serialised directly (serde) and handed to the same
/// writer as every other line, instead of going through tracing-subscriber's JSON
/// formatter: measured ≈ 2.9 µs per line through the formatter (see docs/benchmarks.md). The
/// line has the same shape (timestamp, level, message, target, then the fields) and still obeys
/// `RUST_LOG` for the `scopegate::decision` target.
static JSON_DECISION_WRITER: std::sync::OnceLock<LogWriter> = std::sync::OnceLock::new();

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    decision: &'static str,
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RuleLabel {
    rule: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

/// All metrics, in one registry: the check path's and the rule source's.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub check: CheckMetrics,
    pub source: SourceMetrics,
    pub tls: TlsMetrics,
    pub keys: KeyMetrics,
}

/// What the check path counts. Cheap to update: per-reason counters are created up front.
#[derive(Debug)]
pub struct CheckMetrics {
    check_duration: Histogram,
    decisions_by_reason: Vec<Counter>,
    dry_run_by_reason: Vec<Counter>,
    scope_mismatch: Family<RuleLabel, Counter>,
    pub cache_hits: Counter,
    pub cache_misses: Counter,
    /// DPoP proofs forgotten before their iat window ended (replay cache full).
    pub dpop_replay_evictions: Counter,
}

/// What the rule sources count.
#[derive(Debug)]
pub struct SourceMetrics {
    pub snapshot_revision: Gauge,
    pub snapshot_age_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub rule_errors: Counter,
    pub watch_restarts: Counter,
    reloads: Family<ResultLabel, Counter>,
}

/// What the gRPC listener's TLS counts (certificate reloads, refused handshakes).
#[derive(Debug)]
pub struct TlsMetrics {
    reloads: Family<ResultLabel, Counter>,
    pub handshake_failures: Counter,
}

const DURATION_BUCKETS: [f64; 14] = [
    0.000_005, 0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005,
    0.01, 0.025, 0.05, 0.1,
];

/// Registers a metric and hands it back (the registry keeps a clone: both count together).
fn registered<M>(registry: &mut Registry, name: &str, help: &str, metric: M) -> M
where
    M: prometheus_client::registry::Metric + Clone,
{
    registry.register(name, help, metric.clone());
    metric
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let mut registry = Registry::default();
        let check = CheckMetrics::register(&mut registry);
        let source = SourceMetrics::register(&mut registry);
        let tls = TlsMetrics::register(&mut registry);
        let keys = KeyMetrics::register(&mut registry);
        Arc::new(Metrics {
            registry,
            check,
            source,
            tls,
            keys,
        })
    }

    /// Counts one decision and its latency.
    pub fn record(&self, decision: &Decision, elapsed: Duration) {
        self.check.record(decision, elapsed);
    }

    /// Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// One counter per reason, indexed by discriminant, each with its reason label.
fn per_reason<L>(family: &Family<L, Counter>, labels: impl Fn(Reason) -> L) -> Vec<Counter>
where
    L: Clone + std::hash::Hash + Eq,
{
    Reason::iter()
        .map(|reason| family.get_or_create(&labels(reason)).clone())
        .collect()
}

impl CheckMetrics {
    fn register(r: &mut Registry) -> CheckMetrics {
        let decisions: Family<DecisionLabels, Counter> = registered(
            r,
            "scopegate_decisions",
            "Decisions by outcome and reason code",
            Family::default(),
        );
        let dry_run: Family<ReasonLabel, Counter> = registered(
            r,
            "scopegate_dry_run_would_deny",
            "Requests allowed by a dry_run rule that enforce would have denied, by reason",
            Family::default(),
        );
        CheckMetrics {
            check_duration: registered(
                r,
                "scopegate_check_duration_seconds",
                "Time to answer one Check, from request to response",
                Histogram::new(DURATION_BUCKETS),
            ),
            decisions_by_reason: per_reason(&decisions, |reason| DecisionLabels {
                decision: if reason.is_allow() { "allow" } else { "deny" },
                reason: reason.as_str(),
            }),
            dry_run_by_reason: per_reason(&dry_run, |reason| ReasonLabel {
                reason: reason.as_str(),
            }),
            scope_mismatch: registered(
                r,
                "scopegate_scope_mismatch",
                "Verified tokens that lacked a rule's required scope, by rule id; dry_run \
                 would-be denials included (decisions_total counts enforced ones by reason only)",
                Family::default(),
            ),
            cache_hits: registered(
                r,
                "scopegate_cache_hits",
                "Verified-claims cache hits",
                Counter::default(),
            ),
            cache_misses: registered(
                r,
                "scopegate_cache_misses",
                "Verified-claims cache misses",
                Counter::default(),
            ),
            dpop_replay_evictions: registered(
                r,
                "scopegate_dpop_replay_evictions",
                "DPoP proofs forgotten by the replay cache before their iat window ended \
                 (capacity reached: a replay of those would go unnoticed; raise \
                 --dpop-replay-capacity)",
                Counter::default(),
            ),
        }
    }

    /// Counts one decision and its latency.
    pub fn record(&self, decision: &Decision, elapsed: Duration) {
        self.check_duration.observe(elapsed.as_secs_f64());
        let reason = decision.reason();
        self.decisions_by_reason[reason.index()].inc();
        let scope_mismatch = match &decision.verdict {
            Verdict::Allow {
                would_deny: Some(would),
                ..
            } => {
                self.dry_run_by_reason[would.index()].inc();
                *would == Reason::InsufficientScope
            }
            Verdict::Deny(d) => d.reason == Reason::InsufficientScope,
            Verdict::Allow { .. } => false,
        };
        if let (true, Some(rule)) = (scope_mismatch, &decision.rule) {
            let labels = RuleLabel {
                rule: rule.id.clone(),
            };
            self.scope_mismatch.get_or_create(&labels).inc();
        }
    }
}

impl SourceMetrics {
    fn register(r: &mut Registry) -> SourceMetrics {
        SourceMetrics {
            snapshot_revision: registered(
                r,
                "scopegate_snapshot_revision",
                "Source revision of the snapshot in force (etcd revision or file reload count)",
                Gauge::default(),
            ),
            snapshot_age_seconds: registered(
                r,
                "scopegate_snapshot_age_seconds",
                "Seconds since the source last confirmed the snapshot current",
                Gauge::default(),
            ),
            rule_errors: registered(
                r,
                "scopegate_rule_errors",
                "Rule entries or files rejected by validation",
                Counter::default(),
            ),
            watch_restarts: registered(
                r,
                "scopegate_watch_restarts",
                "Times the source watch was re-established after an error",
                Counter::default(),
            ),
            reloads: registered(
                r,
                "scopegate_reloads",
                "Snapshot rebuilds by result",
                Family::default(),
            ),
        }
    }

    /// Counts a snapshot rebuild (`applied` or `rejected`).
    pub fn record_reload(&self, applied: bool) {
        let result = if applied { "applied" } else { "rejected" };
        self.reloads.get_or_create(&ResultLabel { result }).inc();
    }
}

impl TlsMetrics {
    fn register(r: &mut Registry) -> TlsMetrics {
        let reloads: Family<ResultLabel, Counter> = registered(
            r,
            "scopegate_tls_reloads",
            "Listener certificate reloads by result (applied, rejected)",
            Family::default(),
        );
        // Both series exist from the start, so that the first rejection is an increase.
        for result in ["applied", "rejected"] {
            let _created = reloads.get_or_create(&ResultLabel { result });
        }
        TlsMetrics {
            reloads,
            handshake_failures: registered(
                r,
                "scopegate_tls_handshake_failures",
                "TLS handshakes on the gRPC listener that failed or timed out (e.g. no or an \
                 untrusted client certificate)",
                Counter::default(),
            ),
        }
    }

    /// Counts a certificate reload (`applied` or `rejected`).
    pub fn record_reload(&self, applied: bool) {
        let result = if applied { "applied" } else { "rejected" };
        self.reloads.get_or_create(&ResultLabel { result }).inc();
    }
}

/// What one decision-log line carries (borrowed from the check; never the token).
#[derive(Debug)]
pub struct DecisionRecord<'a> {
    /// The time the decision was judged at: the line's timestamp.
    pub at: std::time::SystemTime,
    pub decision_id: &'a DecisionId,
    pub decision: &'a Decision,
    pub revision: Option<i64>,
    pub host: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    pub elapsed: Duration,
}

/// Writes the decision log line, if the mode wants this decision.
pub fn log_decision(mode: DecisionLogMode, record: &DecisionRecord<'_>) {
    let decision = record.decision;
    let wanted = match mode {
        DecisionLogMode::Off => false,
        DecisionLogMode::All => true,
        DecisionLogMode::Deny => decision.denies_or_would_deny(),
    };
    if !wanted {
        return;
    }
    let claims = decision.claims.as_deref();
    let (verdict, status, would_deny) = match &decision.verdict {
        Verdict::Allow { would_deny, .. } => ("allow", 200u16, would_deny.map(Reason::as_str)),
        Verdict::Deny(d) => ("deny", d.status as u16, None),
    };
    let line = DecisionLine {
        timestamp: humantime::format_rfc3339_micros(record.at),
        decision_id: record.decision_id,
        decision: verdict,
        status,
        reason: decision.reason().as_str(),
        would_deny,
        rule_id: decision.rule.as_ref().map(|r| r.id.as_str()),
        revision: record.revision,
        subject: claims.and_then(|c| c.sub.as_deref()),
        client_id: claims.and_then(|c| c.client_id.as_deref()),
        host: record.host,
        method: record.method,
        path: record.path,
        latency_us: record.elapsed.as_micros() as u64,
    };
    match JSON_DECISION_WRITER.get() {
        Some(writer) if tracing::enabled!(target: DECISION_TARGET, tracing::Level::INFO) => {
            write_json_line(writer, &line);
        }
        Some(_) => {}
        None => log_through_tracing(&line),
    }
}

/// The decision log's tracing target, as a literal that `concat!` can take ([`LINE_CONSTANTS`]).
macro_rules! decision_target {
    () => {
        "scopegate::decision"
    };
}

const DECISION_TARGET: &str = decision_target!();

/// One decision-log line (borrowed; never the token), in the shape of a tracing JSON event:
/// `timestamp`, `level` (INFO), `message` (decision), `target` ([`DECISION_TARGET`]), then
/// these fields. Absent values are left out, as tracing leaves out `None` fields. Written by
/// [`DecisionLine::write_json`]; the tests hold it, byte for byte, to serde_json's
/// serialisation of the same fields (this derive, under the constant ones).
#[cfg_attr(test, derive(serde::Serialize))]
struct DecisionLine<'a> {
    #[cfg_attr(test, serde(skip))]
    timestamp: humantime::Rfc3339Timestamp,
    #[cfg_attr(test, serde(serialize_with = "serialize_display"))]
    decision_id: &'a DecisionId,
    /// `allow` or `deny`.
    decision: &'static str,
    status: u16,
    reason: &'static str,
    #[cfg_attr(test, serde(skip_serializing_if = "Option::is_none"))]
    would_deny: Option<&'static str>,
    #[cfg_attr(test, serde(skip_serializing_if = "Option::is_none"))]
    rule_id: Option<&'a str>,
    #[cfg_attr(test, serde(skip_serializing_if = "Option::is_none"))]
    revision: Option<i64>,
    #[cfg_attr(test, serde(skip_serializing_if = "Option::is_none"))]
    subject: Option<&'a str>,
    #[cfg_attr(test, serde(skip_serializing_if = "Option::is_none"))]
    client_id: Option<&'a str>,
    host: &'a str,
    method: &'a str,
    path: &'a str,
    latency_us: u64,
}

#[cfg(test)]
fn serialize_display<S: serde::Serializer>(
    value: &impl std::fmt::Display,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_str(value)
}

impl DecisionLine<'_> {
    /// Appends the line as one compact JSON object: byte for byte what serde_json writes for
    /// the derived `Serialize` (the tests compare, over arbitrary strings). The keys are
    /// written as the literals they are, and a value with nothing to escape is copied whole;
    /// only a value that needs escaping goes through serde_json. Escaping every key and value
    /// byte by byte was ~5,500 of the ~6,200 instructions a line cost
    /// (`scripts/bench-instructions.sh`, docs/benchmarks-envoy.md).
    fn write_json(&self, out: &mut Vec<u8>) {
        use std::io::Write as _;
        out.extend_from_slice(b"{\"timestamp\":\"");
        // RFC 3339 digits and `-:.TZ`: nothing to escape. Writing to a Vec cannot fail.
        let _ = write!(out, "{}", self.timestamp);
        // The constant fields, and values that never need escaping: hex digits (the id), and
        // the snake_case names of a closed set (`decision`, reasons; a unit test checks them).
        out.extend_from_slice(LINE_CONSTANTS.as_bytes());
        out.extend_from_slice(self.decision_id.as_bytes());
        out.push(b'"');
        json_plain(out, key!("decision"), self.decision);
        json_number(out, key!("status"), self.status);
        json_plain(out, key!("reason"), self.reason);
        if let Some(would_deny) = self.would_deny {
            json_plain(out, key!("would_deny"), would_deny);
        }
        if let Some(rule_id) = self.rule_id {
            json_string(out, key!("rule_id"), rule_id);
        }
        if let Some(revision) = self.revision {
            json_number(out, key!("revision"), revision);
        }
        if let Some(subject) = self.subject {
            json_string(out, key!("subject"), subject);
        }
        if let Some(client_id) = self.client_id {
            json_string(out, key!("client_id"), client_id);
        }
        json_string(out, key!("host"), self.host);
        json_string(out, key!("method"), self.method);
        json_string(out, key!("path"), self.path);
        json_number(out, key!("latency_us"), self.latency_us);
        out.push(b'}');
    }
}

/// What follows the timestamp's digits up to the decision id's: the end of the timestamp, the
/// tracing event's constant fields and the id's key.
const LINE_CONSTANTS: &str = concat!(
    "\",\"level\":\"INFO\",\"message\":\"decision\",\"target\":\"",
    decision_target!(),
    "\",\"decision_id\":\""
);

/// `,"key":` as one literal (every key is a literal of this module: nothing to escape).
macro_rules! key {
    ($key:literal) => {
        concat!(",\"", $key, "\":").as_bytes()
    };
}
use key;

/// `,"key":"value"` for a value with nothing to escape (a `&'static str` of this crate's
/// closed sets).
fn json_plain(out: &mut Vec<u8>, key: &[u8], value: &'static str) {
    out.extend_from_slice(key);
    out.push(b'"');
    out.extend_from_slice(value.as_bytes());
    out.push(b'"');
}

/// `,"key":"value"`, the value escaped as serde_json escapes it (control characters, the
/// quote and the backslash; everything else, UTF-8 included, as it is).
fn json_string(out: &mut Vec<u8>, key: &[u8], value: &str) {
    out.extend_from_slice(key);
    // No early exit: the whole value is read either way, and the loop vectorises.
    let plain = value.bytes().fold(true, |plain, b| {
        plain & (b >= 0x20) & (b != b'"') & (b != b'\\')
    });
    if plain {
        out.push(b'"');
        out.extend_from_slice(value.as_bytes());
        out.push(b'"');
    } else {
        // Serialising a str into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, value);
    }
}

/// `,"key":number`.
fn json_number(out: &mut Vec<u8>, key: &[u8], value: impl serde::Serialize) {
    out.extend_from_slice(key);
    let _ = serde_json::to_writer(&mut *out, &value);
}

fn write_json_line(writer: &LogWriter, line: &DecisionLine<'_>) {
    let mut buffer = Vec::with_capacity(512);
    line.write_json(&mut buffer);
    buffer.push(b'\n');
    // The writer is not lossy; an error here means it has shut down (at exit).
    let _ = writer.write_line(buffer);
}

/// Text logs (and tests, with no JSON writer installed): the line as a tracing event.
fn log_through_tracing(line: &DecisionLine<'_>) {
    tracing::info!(
        target: DECISION_TARGET,
        decision_id = line.decision_id.as_str(),
        decision = line.decision,
        status = line.status,
        reason = line.reason,
        would_deny = line.would_deny,
        rule_id = line.rule_id,
        revision = line.revision,
        subject = line.subject,
        client_id = line.client_id,
        host = line.host,
        method = line.method,
        path = line.path,
        latency_us = line.latency_us,
        "decision"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_decision_line_is_one_json_object_with_the_tracing_shape() {
        let id = DecisionId::random();
        let line = DecisionLine {
            timestamp: humantime::format_rfc3339_micros(std::time::SystemTime::UNIX_EPOCH),
            decision_id: &id,
            decision: "deny",
            status: 403,
            reason: "insufficient_scope",
            would_deny: None,
            rule_id: Some("orders-read"),
            revision: Some(7),
            subject: None,
            client_id: Some("web \"quoted\"\n"),
            host: "api.example.com",
            method: "GET",
            path: "/orders/1",
            latency_us: 12,
        };
        let mut buffer = Vec::new();
        line.write_json(&mut buffer);
        let text = String::from_utf8(buffer).unwrap();
        assert!(!text.contains('\n'), "one line: {text}");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["timestamp"], "1970-01-01T00:00:00.000000Z");
        assert_eq!(
            (&v["level"], &v["message"], &v["target"]),
            (
                &"INFO".into(),
                &"decision".into(),
                &"scopegate::decision".into()
            )
        );
        assert_eq!(v["decision_id"], id.as_str());
        assert_eq!(v["client_id"], "web \"quoted\"\n");
        assert_eq!(v["rule_id"], "orders-read");
        assert!(v.get("subject").is_none() && v.get("would_deny").is_none());
        assert_eq!(
            (v["status"].as_u64(), v["revision"].as_i64()),
            (Some(403), Some(7))
        );
    }

    /// The reference a written line is held to: the tracing JSON event's shape, serialised by
    /// serde_json.
    #[derive(serde::Serialize)]
    struct ReferenceLine<'a> {
        #[serde(serialize_with = "serialize_display")]
        timestamp: humantime::Rfc3339Timestamp,
        level: &'static str,
        message: &'static str,
        target: &'static str,
        #[serde(flatten)]
        fields: &'a DecisionLine<'a>,
    }

    /// The values written without escaping: a decision, every reason.
    #[test]
    fn the_closed_sets_need_no_escaping() {
        let plain = |s: &str| serde_json::to_string(s).unwrap() == format!("\"{s}\"");
        assert!(["allow", "deny", DECISION_TARGET].into_iter().all(plain));
        for reason in Reason::iter() {
            assert!(plain(reason.as_str()), "{reason:?}");
        }
    }

    /// Strings with everything JSON must escape, and what it must not (UTF-8, DEL).
    fn text() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let piece = prop_oneof![
            4 => proptest::char::range('a', 'z'),
            1 => any::<char>(),
            1 => prop::sample::select(vec!['"', '\\', '\n', '\u{0}', '\u{1f}', '\u{7f}', '\u{2028}', 'é']),
        ];
        prop::collection::vec(piece, 0..24).prop_map(|chars| chars.into_iter().collect())
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

        /// The hand-assembled line is byte for byte serde_json's serialisation of the same
        /// fields, whatever the strings hold.
        #[test]
        fn the_written_line_is_serde_jsons_line(
            seconds in 0u64..4_000_000_000,
            micros in 0u32..1_000_000,
            id in proptest::prelude::any::<u128>(),
            strings in proptest::collection::vec(text(), 6),
            present in proptest::collection::vec(proptest::prelude::any::<bool>(), 5),
            reason in proptest::sample::select(Reason::iter().collect::<Vec<_>>()),
            numbers in (proptest::prelude::any::<u16>(), proptest::prelude::any::<i64>(), proptest::prelude::any::<u64>()),
        ) {
            let time = std::time::UNIX_EPOCH
                + Duration::from_secs(seconds)
                + Duration::from_micros(u64::from(micros));
            let id = DecisionId::from(uuid::Uuid::from_u128(id));
            let line = DecisionLine {
                timestamp: humantime::format_rfc3339_micros(time),
                decision_id: &id,
                decision: if reason.is_allow() { "allow" } else { "deny" },
                status: numbers.0,
                reason: reason.as_str(),
                would_deny: present[0].then_some(reason.as_str()),
                rule_id: present[1].then_some(strings[0].as_str()),
                revision: present[2].then_some(numbers.1),
                subject: present[3].then_some(strings[1].as_str()),
                client_id: present[4].then_some(strings[2].as_str()),
                host: &strings[3],
                method: &strings[4],
                path: &strings[5],
                latency_us: numbers.2,
            };
            let mut written = Vec::new();
            line.write_json(&mut written);
            let reference = serde_json::to_vec(&ReferenceLine {
                timestamp: humantime::format_rfc3339_micros(time),
                level: "INFO",
                message: "decision",
                target: DECISION_TARGET,
                fields: &line,
            })
            .unwrap();
            proptest::prop_assert_eq!(String::from_utf8(written).unwrap(), String::from_utf8(reference).unwrap());
        }
    }
}
