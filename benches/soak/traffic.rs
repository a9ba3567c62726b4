//! The traffic and what it must get: the request classes, the answer each must have given the
//! changes acknowledged by then, one request sent and tallied, and the revision watch.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::envoy::try_request;
use crate::support::server::try_http_get;
use crate::support::tokens::{self};
use etcd_client::Client;
use tokio::sync::Mutex as AsyncMutex;

use crate::{BOUND, ID_HEADER, KEEP_FAILURES, P};

/// What the changes have done, by the time etcd acknowledged them.
#[derive(Default)]
pub(crate) struct Changes {
    /// victim subject → (revocation put started, acknowledged).
    pub(crate) revoked: BTreeMap<usize, (Instant, Option<Instant>)>,
    /// Toggles of the `items` route: (started, acknowledged, requires items:admin now).
    pub(crate) items: Vec<(Instant, Option<Instant>, bool)>,
    /// Windows in which valid-token failures are expected (replica restart, fault detection).
    pub(crate) excused: Vec<(Instant, Instant)>,
    /// The fault steps so far, in order.
    pub(crate) steps: Vec<Step>,
}

/// One step of the fault schedule: when the driver began it and when it was done with it
/// (`restart-b` lasts until B is ready, `freeze-b-member` until the member is thawed).
pub(crate) struct Step {
    pub(crate) name: &'static str,
    pub(crate) began: Instant,
    pub(crate) done: Option<Instant>,
}

/// What the load generator counted.
#[derive(Default)]
pub(crate) struct Tally {
    pub(crate) sent: AtomicU64,
    pub(crate) by_status: AsyncMutex<BTreeMap<u16, u64>>,
    pub(crate) valid_failed: AtomicU64,
    pub(crate) valid_failed_excused: AtomicU64,
    pub(crate) false_allows: AtomicU64,
    /// Longest time after an acknowledged change that a request sent then was still allowed.
    pub(crate) worst_lag_us: AtomicU64,
    /// The first [`KEEP_FAILURES`] failed valid-token requests, in order of completion.
    pub(crate) failures: AsyncMutex<Vec<Failure>>,
}

/// A valid-token request that did not get 200, as the driver saw it.
pub(crate) struct Failure {
    pub(crate) id: u64,
    pub(crate) sent: Instant,
    pub(crate) took: Duration,
    /// 0: no complete HTTP response (`error` says why).
    pub(crate) status: u16,
    pub(crate) error: Option<String>,
    /// Response headers other than the usual framing ones (`x-envoy-*`, `x-scopegate-*`, …).
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: String,
    pub(crate) excused: bool,
}

#[derive(Clone, Copy)]
pub(crate) enum Class {
    Valid,
    NoToken,
    Victim(usize),
    Items,
}

pub(crate) fn expect(class: Class, sent: Instant, changes: &Changes) -> Option<u16> {
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

pub(crate) async fn run_one(
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

pub(crate) struct Tokens {
    pub(crate) valid: String,
    pub(crate) items: String,
    pub(crate) victims: Vec<String>,
}

pub(crate) async fn seed(kv: &mut Client) {
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

pub(crate) fn items_route(admin: bool) -> String {
    let scope = if admin { "items:admin" } else { "items:read" };
    format!(r#"{{"host":"*","path":"/items/**","require":{{"all":["{scope}"]}}}}"#)
}

/// Polls every replica's `/status`: the revision must never go backwards within one process.
pub(crate) async fn watch_revisions(
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
