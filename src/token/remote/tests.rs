//! Remote keys under `tokio::time::pause()`, with a scripted source instead of HTTPS: refresh
//! timing, backoff, kid-miss rate limit and wait bound, rejection of unusable answers, rotation.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use serde_json::{json, Value};
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::*;
use crate::telemetry::Metrics;

const ISSUER: &str = "https://idp.test/realms/x";

/// What the scripted source answers, and what it was asked.
struct Script {
    jwks: ArcSwap<Result<Fetched, FetchError>>,
    discovery: ArcSwap<Result<Fetched, FetchError>>,
    delay: ArcSwap<Duration>,
    jwks_hits: AtomicU64,
    discovery_hits: AtomicU64,
    asked_at: Mutex<Vec<Instant>>,
}

#[derive(Clone)]
struct Source(Arc<Script>);

impl super::Source for Source {
    fn get(&self, url: &str) -> impl Future<Output = Result<Fetched, FetchError>> + Send {
        let script = self.0.clone();
        let discovery = url.ends_with(DISCOVERY_PATH);
        async move {
            script.asked_at.lock().await.push(Instant::now());
            let delay = **script.delay.load();
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            if discovery {
                script.discovery_hits.fetch_add(1, Ordering::SeqCst);
                (**script.discovery.load()).clone()
            } else {
                script.jwks_hits.fetch_add(1, Ordering::SeqCst);
                (**script.jwks.load()).clone()
            }
        }
    }
}

impl Source {
    fn new(jwks: Value, max_age: Option<u64>) -> Source {
        Source(Arc::new(Script {
            jwks: ArcSwap::from_pointee(ok(&jwks, max_age)),
            discovery: ArcSwap::from_pointee(Err(FetchError::Status(404))),
            delay: ArcSwap::from_pointee(Duration::ZERO),
            jwks_hits: AtomicU64::new(0),
            discovery_hits: AtomicU64::new(0),
            asked_at: Mutex::new(Vec::new()),
        }))
    }

    fn answer(&self, answer: Result<Fetched, FetchError>) {
        self.0.jwks.store(Arc::new(answer));
    }

    fn hits(&self) -> u64 {
        self.0.jwks_hits.load(Ordering::SeqCst)
    }
}

fn ok(body: &Value, max_age: Option<u64>) -> Result<Fetched, FetchError> {
    Ok(Fetched {
        body: body.to_string().into_bytes(),
        max_age: max_age.map(Duration::from_secs),
    })
}

/// The demo RSA public key under each of `kids`.
fn jwks(kids: &[&str]) -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/keys/demo-jwks.json");
    let demo: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let rsa = demo["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kty"] == "RSA")
        .unwrap()
        .clone();
    let keys: Vec<Value> = kids
        .iter()
        .map(|kid| {
            let mut key = rsa.clone();
            key["kid"] = json!(kid);
            key
        })
        .collect();
    json!({ "keys": keys })
}

fn spec(location: KeyLocation, min: u64, max: u64) -> RemoteSpec {
    RemoteSpec {
        issuer: ISSUER.into(),
        location,
        ca_pem: None,
        refresh_min: Some(Duration::from_secs(min)),
        refresh_max: Some(Duration::from_secs(max)),
        algorithms: vec![Algorithm::RS256],
    }
}

fn uri() -> KeyLocation {
    KeyLocation::JwksUri("https://idp.test/jwks".into())
}

fn start(spec: &RemoteSpec, source: &Source) -> (RemoteKeys, Arc<Metrics>) {
    let metrics = Metrics::new();
    let fetcher = KeyFetcher::new(RemoteKeySettings::default(), Some(metrics.clone()));
    (fetcher.start_with("idp", spec, source.clone()), metrics)
}

/// Waits (in paused time) until `condition` holds, at most `within`.
async fn until(what: &str, within: Duration, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + within;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn kids(keys: &RemoteKeys) -> Vec<String> {
    keys.keys()
        .keys
        .iter()
        .map(|k| k.kid.clone().unwrap_or_default())
        .collect()
}

fn fetch_count(metrics: &Metrics, result: &str) -> u64 {
    let line = format!("scopegate_jwks_fetch_total{{issuer=\"idp\",result=\"{result}\"}} ");
    metrics
        .encode()
        .lines()
        .find_map(|l| l.strip_prefix(&line)?.parse().ok())
        .unwrap_or(0)
}

#[test]
fn refresh_delay_is_max_age_clamped_less_up_to_ten_percent() {
    let timing = Timing {
        refresh_min: Duration::from_secs(300),
        refresh_max: Duration::from_secs(3600),
        kid_miss_wait: DEFAULT_KID_MISS_WAIT,
        kid_miss_interval: DEFAULT_KID_MISS_INTERVAL,
    };
    let secs = |max_age: Option<u64>, jitter: f64| {
        refresh_delay(max_age.map(Duration::from_secs), &timing, jitter).as_secs_f64()
    };
    assert_eq!(secs(Some(900), 0.0), 900.0);
    assert_eq!(secs(Some(900), 1.0), 810.0);
    assert_eq!(secs(Some(10), 0.0), 300.0, "raised to refresh_min");
    assert_eq!(secs(Some(0), 0.0), 300.0, "no-cache: refresh_min");
    assert_eq!(secs(None, 0.0), 300.0, "no max-age: refresh_min");
    assert_eq!(secs(Some(86_400), 0.0), 3600.0, "lowered to refresh_max");
    assert_eq!(secs(Some(86_400), 0.5), 3420.0);
}

#[tokio::test(start_paused = true)]
async fn refresh_follows_max_age_within_the_bounds() {
    let source = Source::new(jwks(&["k1"]), Some(120));
    let (keys, metrics) = start(&spec(uri(), 60, 600), &source);
    until("first fetch", Duration::from_secs(1), || keys.is_loaded()).await;
    assert_eq!(kids(&keys), ["k1"]);
    let started = Instant::now();
    // max-age 120 s, less at most 10 % jitter: the next fetch comes in [108 s, 120 s].
    tokio::time::sleep(Duration::from_secs(107)).await;
    assert_eq!(source.hits(), 1, "not before 0.9 × max-age");
    until("second fetch", Duration::from_secs(14), || {
        source.hits() == 2
    })
    .await;
    let at = started.elapsed();
    assert!(
        at >= Duration::from_secs(107) && at <= Duration::from_secs(121),
        "{at:?}"
    );
    // Outside the bounds: a huge max-age is lowered to refresh_max.
    source.answer(ok(&jwks(&["k1"]), Some(86_400)));
    until("third fetch", Duration::from_secs(121), || {
        source.hits() == 3
    })
    .await;
    let before = Instant::now();
    tokio::time::sleep(Duration::from_secs(539)).await;
    assert_eq!(source.hits(), 3, "not before 0.9 × refresh_max");
    until("fourth fetch", Duration::from_secs(62), || {
        source.hits() == 4
    })
    .await;
    assert!(before.elapsed() <= Duration::from_secs(601));
    assert_eq!(fetch_count(&metrics, "ok"), 4);
}

#[tokio::test(start_paused = true)]
async fn no_max_age_refreshes_at_refresh_min() {
    let source = Source::new(jwks(&["k1"]), None);
    let (keys, _) = start(&spec(uri(), 300, 3600), &source);
    until("first fetch", Duration::from_secs(1), || keys.is_loaded()).await;
    tokio::time::sleep(Duration::from_secs(269)).await;
    assert_eq!(source.hits(), 1);
    until("refresh", Duration::from_secs(32), || source.hits() == 2).await;
}

#[tokio::test(start_paused = true)]
async fn unusable_answers_are_rejected_whole_and_the_last_good_keys_stay() {
    let source = Source::new(jwks(&["good"]), Some(60));
    let (keys, metrics) = start(&spec(uri(), 60, 600), &source);
    until("first fetch", Duration::from_secs(1), || keys.is_loaded()).await;
    let enc_only =
        json!({"keys": [{"kty": "RSA", "use": "enc", "kid": "e", "n": "AQAB", "e": "AQAB"}]});
    let bad = [
        (
            Ok(Fetched {
                body: b"<html>".to_vec(),
                max_age: None,
            }),
            "invalid",
        ),
        (ok(&json!({"keys": "none"}), None), "invalid"),
        (ok(&enc_only, None), "invalid"),
        (Err(FetchError::TooLarge), "too_large"),
        (Err(FetchError::Status(503)), "http_status"),
        (Err(FetchError::Timeout), "timeout"),
    ];
    for (answer, label) in bad {
        let before = fetch_count(&metrics, label);
        source.answer(answer);
        keys.shared.wake.notify_one();
        until(label, Duration::from_secs(5), || {
            fetch_count(&metrics, label) == before + 1
        })
        .await;
        assert_eq!(kids(&keys), ["good"], "{label}: the last good set stays");
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let age = keys.age().unwrap();
    assert!(
        age >= Duration::from_secs(5),
        "age grows while fetches fail: {age:?}"
    );
    assert_eq!(kids(&keys), ["good"]);
}

#[tokio::test(start_paused = true)]
async fn failures_back_off_exponentially_with_jitter_up_to_refresh_min() {
    let source = Source::new(jwks(&["k1"]), None);
    source.answer(Err(FetchError::Status(500)));
    let (keys, metrics) = start(&spec(uri(), 20, 600), &source);
    until("eight attempts", Duration::from_secs(300), || {
        source.hits() >= 8
    })
    .await;
    assert!(!keys.is_loaded());
    let at = source.0.asked_at.lock().await.clone();
    let gaps: Vec<f64> = at.windows(2).map(|w| (w[1] - w[0]).as_secs_f64()).collect();
    // 1 s doubling with up to 100 % jitter, capped at refresh_min (20 s), plus its jitter.
    for (i, gap) in gaps.iter().enumerate() {
        let base = 2f64.powi(i as i32).min(20.0);
        assert!(
            *gap >= base && *gap <= 2.0 * base + 0.001,
            "gap {i}: {gap} (base {base})"
        );
    }
    // A failed first fetch recovers by itself.
    source.answer(ok(&jwks(&["k1"]), None));
    until("recovery", Duration::from_secs(45), || keys.is_loaded()).await;
    assert_eq!(fetch_count(&metrics, "ok"), 1);
}

#[tokio::test(start_paused = true)]
async fn kid_misses_refetch_at_most_once_per_interval() {
    let source = Source::new(jwks(&["k1"]), None);
    source.0.delay.store(Arc::new(Duration::from_millis(20)));
    let (keys, _) = start(&spec(uri(), 300, 3600), &source);
    until("first fetch", Duration::from_secs(1), || keys.is_loaded()).await;
    source.answer(ok(&jwks(&["k1", "k2"]), None));
    let keys = Arc::new(keys);
    let burst = |n: usize| {
        let keys = keys.clone();
        async move {
            let waits = (0..n).map(|_| {
                let keys = keys.clone();
                tokio::spawn(async move { keys.kid_miss().await })
            });
            let mut fetched = 0;
            for wait in waits.collect::<Vec<_>>() {
                fetched += usize::from(wait.await.unwrap());
            }
            fetched
        }
    };
    let fetched = burst(1000).await;
    assert_eq!(source.hits(), 2, "a thousand misses, one refetch");
    assert!(fetched >= 1, "the miss that asked saw the refetch finish");
    assert_eq!(kids(&keys), ["k1", "k2"], "the new key is usable at once");
    let quiet = Instant::now();
    assert_eq!(burst(1000).await, 0, "rate-limited: no fetch to wait for");
    assert_eq!(
        quiet.elapsed(),
        Duration::ZERO,
        "rate-limited misses do not wait"
    );
    assert_eq!(source.hits(), 2);
    tokio::time::sleep(DEFAULT_KID_MISS_INTERVAL).await;
    assert!(burst(10).await >= 1);
    assert_eq!(source.hits(), 3, "one more after the interval");
}

#[tokio::test(start_paused = true)]
async fn a_kid_miss_waits_at_most_the_bound() {
    let source = Source::new(jwks(&["k1"]), None);
    let (keys, _) = start(&spec(uri(), 300, 3600), &source);
    until("first fetch", Duration::from_secs(1), || keys.is_loaded()).await;
    source.0.delay.store(Arc::new(Duration::from_secs(4)));
    let asked = Instant::now();
    assert!(!keys.kid_miss().await, "the refetch is still under way");
    assert_eq!(asked.elapsed(), DEFAULT_KID_MISS_WAIT);
}

#[tokio::test(start_paused = true)]
async fn a_removed_key_moves_the_epoch_and_an_added_one_does_not() {
    let source = Source::new(jwks(&["old"]), None);
    let (keys, _) = start(&spec(uri(), 300, 3600), &source);
    until("first fetch", Duration::from_secs(1), || keys.is_loaded()).await;
    let stamp = keys.stamp();
    source.answer(ok(&jwks(&["old", "new"]), None));
    keys.shared.wake.notify_one();
    until("added", Duration::from_secs(1), || kids(&keys).len() == 2).await;
    assert!(stamp.is_current(), "adding a key keeps cached claims");
    source.answer(ok(&jwks(&["new"]), None));
    keys.shared.wake.notify_one();
    until("removed", Duration::from_secs(1), || kids(&keys) == ["new"]).await;
    assert!(
        !stamp.is_current(),
        "claims verified with a removed key are verified again"
    );
    assert!(keys.stamp().is_current());
}

#[tokio::test(start_paused = true)]
async fn discovery_must_name_the_issuer_and_https_endpoints() {
    let source = Source::new(jwks(&["k1"]), None);
    let document = |issuer: &str, jwks_uri: &str| {
        ok(
            &json!({"issuer": issuer, "jwks_uri": jwks_uri,
                   "introspection_endpoint": "https://idp.test/introspect"}),
            None,
        )
    };
    source.0.discovery.store(Arc::new(document(
        "https://evil.test/",
        "https://idp.test/jwks",
    )));
    let (keys, metrics) = start(&spec(KeyLocation::Discovery, 300, 3600), &source);
    until("refused", Duration::from_secs(1), || {
        fetch_count(&metrics, "invalid") == 1
    })
    .await;
    source
        .0
        .discovery
        .store(Arc::new(document(ISSUER, "http://idp.test/jwks")));
    until("refused again", Duration::from_secs(5), || {
        fetch_count(&metrics, "invalid") == 2
    })
    .await;
    assert!(
        !keys.is_loaded() && source.hits() == 0,
        "no JWKS from an unchecked document"
    );
    source
        .0
        .discovery
        .store(Arc::new(document(ISSUER, "https://idp.test/jwks")));
    until("loaded", Duration::from_secs(10), || keys.is_loaded()).await;
    assert_eq!(
        keys.introspection_endpoint().as_deref(),
        Some("https://idp.test/introspect")
    );
    assert_eq!(
        spec(KeyLocation::Discovery, 1, 1).discovery_url(),
        "https://idp.test/realms/x/.well-known/openid-configuration"
    );
    let mut slash = spec(KeyLocation::Discovery, 1, 1);
    slash.issuer.push('/');
    assert_eq!(
        slash.discovery_url(),
        "https://idp.test/realms/x/.well-known/openid-configuration"
    );
}

#[tokio::test(start_paused = true)]
async fn dropping_the_last_handle_stops_the_task() {
    let source = Source::new(jwks(&["k1"]), None);
    let (keys, _) = start(&spec(uri(), 1, 1), &source);
    until("first fetch", Duration::from_secs(1), || keys.is_loaded()).await;
    drop(keys);
    let hits = source.hits();
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(source.hits(), hits);
}
