//! After the run: every failed valid-token request explained from Envoy's access log, the
//! replicas' decision logs and health events and the fault step under way, and the logs kept.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Instant, SystemTime};

use crate::envoy::{read_access_log, EnvoyLogs};
use crate::traffic::{Changes, Step, Tally};
use crate::SHOW_FAILURES;

/// What [`explain`] needs of the finished run.
pub(crate) struct Run {
    pub(crate) started: Instant,
    pub(crate) started_wall: SystemTime,
    pub(crate) replica_ports: [u16; 2],
    /// The run's temporary directory (replica and Envoy logs).
    pub(crate) dir: PathBuf,
    pub(crate) envoy_logs: EnvoyLogs,
    /// `a#0`, `b#0`, `b#1`, …: each replica process's log.
    pub(crate) replica_logs: Vec<(String, PathBuf)>,
}

impl Run {
    /// Milliseconds from the start of the schedule to `t` (negative: before it).
    pub(crate) fn at(&self, t: Instant) -> i64 {
        match t.checked_duration_since(self.started) {
            Some(d) => d.as_millis() as i64,
            None => -((self.started - t).as_millis() as i64),
        }
    }

    pub(crate) fn at_wall(&self, t: SystemTime) -> i64 {
        match t.duration_since(self.started_wall) {
            Ok(d) => d.as_millis() as i64,
            Err(e) => -(e.duration().as_millis() as i64),
        }
    }

    pub(crate) fn replica_at(&self, port: u64) -> &'static str {
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
pub(crate) struct HealthEvent {
    pub(crate) at: i64,
    pub(crate) replica: &'static str,
    /// `eject`, `add`, `failure(<type>)`, …
    pub(crate) what: String,
}

pub(crate) fn read_health_events(run: &Run) -> Vec<HealthEvent> {
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
pub(crate) fn health_at(events: &[HealthEvent], at: i64) -> String {
    let state = |replica: &str| {
        events
            .iter()
            .rfind(|e| e.replica == replica && e.at <= at && (e.what == "eject" || e.what == "add"))
            .map_or("?", |e| if e.what == "add" { "in" } else { "out" })
    };
    format!("a={} b={}", state("a"), state("b"))
}

/// A denial in a replica's decision log.
pub(crate) struct Decided {
    pub(crate) replica: String,
    pub(crate) status: u64,
    pub(crate) reason: String,
    pub(crate) revision: Option<i64>,
}

/// One replica log line other than a decision, for the timeline.
pub(crate) struct LogLine {
    pub(crate) at: i64,
    pub(crate) text: String,
}

pub(crate) fn read_replica_logs(run: &Run) -> (HashMap<String, Decided>, Vec<LogLine>) {
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

pub(crate) fn compact(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The fault step under way (or last done) when a request was sent, and the lasting states
/// (leader down, A cut off) then.
pub(crate) fn phase(steps: &[Step], sent: Instant) -> String {
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
pub(crate) struct Detail {
    /// When it was sent, ms since the start.
    pub(crate) at: i64,
    pub(crate) excused: bool,
    /// The whole detail line.
    pub(crate) line: String,
    /// For the timeline.
    pub(crate) short: String,
}

/// The detail of every failed valid-token request (the first [`SHOW_FAILURES`] printed, all
/// returned), then a timeline around each failure outside the fault windows, and Envoy's
/// counters that say how checks failed.
pub(crate) async fn explain(run: &Run, tally: &Tally, changes: &Changes, envoy_stats: &[String]) {
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

/// Copies every log of the run (replicas, Envoy's access and health-event logs, the failure
/// details and the timeline) to `target/soak-logs/`, replacing the previous run's.
pub(crate) fn keep_logs(dir: &Path) {
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
