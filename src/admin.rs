//! The admin HTTP server: `/metrics` (Prometheus text), `/healthz` (process alive), `/readyz`
//! (a snapshot is loaded and within `--max-staleness`), `/readyz/serving` (a snapshot is loaded:
//! what the gRPC health service reports, for probes that cannot speak gRPC over TLS) and
//! `/status` (revision, age, last source error, as JSON). The gRPC health service lives on the
//! gRPC port (see `app`).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use crate::store::SnapshotStore;
use crate::telemetry::Metrics;

/// What the admin endpoints read.
#[derive(Debug, Clone)]
pub struct AdminState {
    pub store: Arc<SnapshotStore>,
    pub metrics: Arc<Metrics>,
    pub max_staleness: Option<Duration>,
}

impl AdminState {
    /// Ready: a snapshot is loaded and not older than allowed.
    pub fn is_ready(&self) -> bool {
        self.store.current().is_some() && !self.store.is_stale(self.max_staleness)
    }
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
        state.metrics.source.snapshot_age_seconds.set(age.as_secs_f64());
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
    if state.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

/// SERVING in grpc.health.v1 terms: a snapshot is loaded (staleness is the check path's business).
async fn serving(State(state): State<AdminState>) -> impl IntoResponse {
    if state.store.current().is_some() {
        (StatusCode::OK, "serving\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not serving\n")
    }
}

async fn status(State(state): State<AdminState>) -> impl IntoResponse {
    let snapshot = state.store.current();
    let body = serde_json::json!({
        "ready": state.is_ready(),
        "revision": snapshot.as_ref().map(|s| s.revision),
        "routes": snapshot.as_ref().map(|s| s.routes.len()),
        "issuers": snapshot.as_ref().map(|s| s.rules.issuers.len()),
        "snapshot_age_seconds": state.store.age().map(|a| a.as_secs_f64()),
        "last_error": state.store.last_error(),
        "rejected": &*state.store.rejections(),
    });
    (
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
}
