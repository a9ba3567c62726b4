//! The admin HTTP server: `/metrics` (Prometheus text), `/healthz` (process alive), `/readyz`
//! and `/readyz/serving` (both [`Readiness`]: what the gRPC health service reports; the second
//! name is for probes that cannot speak gRPC over TLS) and `/status` (revision, age, last
//! source error, as JSON). The gRPC health service lives on the gRPC port (see `app`).

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use crate::readiness::Readiness;
use crate::store::SnapshotStore;
use crate::telemetry::Metrics;

/// What the admin endpoints read.
#[derive(Debug, Clone)]
pub struct AdminState {
    pub store: Arc<SnapshotStore>,
    pub metrics: Arc<Metrics>,
    pub readiness: Readiness,
}

pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/readyz/serving", get(serving))
        .route("/status", get(status))
        .with_state(state)
}

async fn metrics(State(state): State<AdminState>) -> impl IntoResponse {
    if let Some(age) = state.store.age() {
        state
            .metrics
            .source
            .snapshot_age_seconds
            .set(age.as_secs_f64());
    }
    if let Some(snapshot) = state.store.current() {
        let ages = snapshot
            .verifier
            .remote_keys()
            .filter_map(|keys| keys.age().map(|age| (keys.name(), age.as_secs_f64())));
        state.metrics.keys.set_ages(ages);
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
}

async fn readyz(State(state): State<AdminState>) -> impl IntoResponse {
    if state.readiness.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

/// SERVING in grpc.health.v1 terms (as `app` reports it): the same [`Readiness`] as `/readyz`.
async fn serving(State(state): State<AdminState>) -> impl IntoResponse {
    if state.readiness.is_ready() {
        (StatusCode::OK, "serving\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not serving\n")
    }
}

async fn status(State(state): State<AdminState>) -> impl IntoResponse {
    let snapshot = state.store.current();
    let body = serde_json::json!({
        "ready": state.readiness.is_ready(),
        "revision": snapshot.as_ref().map(|s| s.revision),
        "routes": snapshot.as_ref().map(|s| s.routes.len()),
        "issuers": snapshot.as_ref().map(|s| s.rules.issuers.len()),
        "lockdown": snapshot.as_ref().and_then(|s| s.rules.lockdown.as_ref()).map(|l| {
            let now = crate::store::unix_seconds();
            serde_json::json!({"reason": l.reason, "in_force": l.in_force(now)})
        }),
        "global_dry_run": snapshot.as_ref().map(|s| s.rules.global_dry_run()),
        "snapshot_age_seconds": state.store.age().map(|a| a.as_secs_f64()),
        "remote_keys": snapshot.as_ref().map(|s| remote_keys(&s.verifier)),
        "last_error": state.store.last_error(),
        "rejected": &*state.store.rejections(),
    });
    (
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
}

/// Per remote-key issuer: keys in force, keys skipped (with why), age of the set.
fn remote_keys(verifier: &crate::token::Verifier) -> serde_json::Value {
    let issuers = verifier.remote_keys().map(|keys| {
        let set = keys.keys();
        let skipped: Vec<String> = set.skipped.iter().map(ToString::to_string).collect();
        let kids: Vec<Option<&str>> = set.keys.iter().map(|k| k.kid.as_deref()).collect();
        let body = serde_json::json!({
            "kids": kids,
            "skipped": skipped,
            "age_seconds": keys.age().map(|a| a.as_secs_f64()),
        });
        (keys.name().to_string(), body)
    });
    serde_json::Value::Object(issuers.collect())
}
