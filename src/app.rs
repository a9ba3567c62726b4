//! Wiring: start the rule source, the gRPC server (ext_authz + grpc.health.v1) and the admin
//! server; report SERVING once the first snapshot is in; drain gracefully on shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::ext_authz::v3::pb::AuthorizationServer;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;

use crate::admin::{self, AdminState};
use crate::cache::ClaimsCache;
use crate::check::{CheckSettings, Checker};
use crate::cli::{EtcdArgs, ServeArgs};
use crate::grpc::{AuthorizationService, ResponseSettings};
use crate::rules::document::DocumentError;
use crate::store::etcd::{EtcdError, EtcdSettings, EtcdSource};
use crate::store::file::FileSource;
use crate::store::SnapshotStore;
use crate::telemetry::Metrics;

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("cannot bind {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("rules file: {0}")]
    Rules(#[from] DocumentError),
    #[error("etcd: {0}")]
    Etcd(#[from] EtcdError),
    #[error("no rule source: give --rules FILE or --etcd-endpoints URL")]
    NoSource,
    #[error("gRPC server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
}

/// A running scopegate: its bound addresses and a handle to stop it.
#[derive(Debug)]
pub struct RunningApp {
    pub grpc_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub store: Arc<SnapshotStore>,
    pub metrics: Arc<Metrics>,
    shutdown: Option<oneshot::Sender<()>>,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
    background: Vec<JoinHandle<()>>,
}

impl RunningApp {
    /// Stops accepting, lets in-flight checks finish (up to `drain`), then stops the sources.
    pub async fn shutdown(mut self, drain: Duration) -> Result<(), AppError> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let result = match tokio::time::timeout(drain, &mut self.server).await {
            Ok(Ok(result)) => result.map_err(AppError::from),
            Ok(Err(_join)) => Ok(()),
            Err(_elapsed) => {
                tracing::warn!(?drain, "drain timeout: closing remaining connections");
                self.server.abort();
                Ok(())
            }
        };
        for task in &self.background {
            task.abort();
        }
        result
    }
}

impl Drop for RunningApp {
    fn drop(&mut self) {
        self.server.abort();
        for task in &self.background {
            task.abort();
        }
    }
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, AppError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| AppError::Bind { addr, source })
}

/// Starts everything. Returns once the listeners are bound; with a rules file the first
/// snapshot is loaded before this returns, with etcd it arrives in the background.
pub async fn start(args: &ServeArgs) -> Result<RunningApp, AppError> {
    let store = SnapshotStore::new();
    let metrics = Metrics::new();
    let mut background = Vec::new();
    background.push(start_source(args, &store, &metrics).await?);

    let checker = Arc::new(Checker::new(
        store.clone(),
        ClaimsCache::new(args.cache_capacity, args.cache_max_ttl),
        metrics.clone(),
        CheckSettings {
            max_token_bytes: args.max_token_bytes,
            max_staleness: args.max_staleness,
            decision_log: args.decision_log,
        },
    ));
    let service = AuthorizationService::new(
        checker,
        ResponseSettings {
            realm: args.realm.clone(),
            subject_header: args.subject_header.to_ascii_lowercase(),
            client_id_header: args.client_id_header.to_ascii_lowercase(),
            scopes_header: args.scopes_header.to_ascii_lowercase(),
        },
    );

    let admin_listener = bind(args.admin_listen).await?;
    let admin_addr = admin_listener
        .local_addr()
        .map_err(|source| AppError::Bind {
            addr: args.admin_listen,
            source,
        })?;
    let admin_state = AdminState {
        store: store.clone(),
        metrics: metrics.clone(),
        max_staleness: args.max_staleness,
    };
    background.push(tokio::spawn(async move {
        if let Err(e) = axum::serve(admin_listener, admin::router(admin_state)).await {
            tracing::error!(error = %e, "admin server stopped");
        }
    }));

    let (reporter, health_service) = tonic_health::server::health_reporter();
    background.push(tokio::spawn(report_health(reporter, store.clone())));

    let listener = bind(args.listen).await?;
    let grpc_addr = listener.local_addr().map_err(|source| AppError::Bind {
        addr: args.listen,
        source,
    })?;
    let (tx, rx) = oneshot::channel::<()>();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .add_service(health_service)
            .add_service(AuthorizationServer::new(service))
            // A custom incoming stream does not inherit the builder's TCP settings: without
            // TCP_NODELAY every Check waits ~40 ms for a delayed ACK (Nagle).
            .serve_with_incoming_shutdown(
                TcpIncoming::from(listener).with_nodelay(Some(true)),
                async {
                    let _ = rx.await;
                },
            ),
    );
    tracing::info!(%grpc_addr, %admin_addr, "scopegate listening");
    Ok(RunningApp {
        grpc_addr,
        admin_addr,
        store,
        metrics,
        shutdown: Some(tx),
        server,
        background,
    })
}

async fn start_source(
    args: &ServeArgs,
    store: &Arc<SnapshotStore>,
    metrics: &Arc<Metrics>,
) -> Result<JoinHandle<()>, AppError> {
    if !args.etcd.etcd_endpoints.is_empty() {
        let settings = etcd_settings(&args.etcd)?;
        let source = EtcdSource::new(settings, store.clone(), metrics.clone());
        return Ok(tokio::spawn(source.run()));
    }
    let path = args.rules.as_ref().ok_or(AppError::NoSource)?;
    let mut source = FileSource::new(path, store.clone(), metrics.clone());
    source.load()?;
    Ok(tokio::spawn(source.watch(args.rules_poll_interval)))
}

fn etcd_settings(args: &EtcdArgs) -> Result<EtcdSettings, AppError> {
    Ok(EtcdSettings::from_args(args)?)
}

/// SERVING once a snapshot is loaded (for `""` and the ext_authz service); NOT_SERVING before.
async fn report_health(reporter: tonic_health::server::HealthReporter, store: Arc<SnapshotStore>) {
    let mut revisions = store.subscribe();
    let name = <AuthorizationServer<AuthorizationService> as tonic::server::NamedService>::NAME;
    loop {
        let status = if store.current().is_some() {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        reporter.set_service_status("", status).await;
        reporter.set_service_status(name, status).await;
        if revisions.changed().await.is_err() {
            return;
        }
    }
}

/// Runs until `shutdown` resolves, then drains.
pub async fn run(args: ServeArgs, shutdown: impl Future<Output = ()>) -> Result<(), AppError> {
    let app = start(&args).await?;
    shutdown.await;
    tracing::info!("shutting down: draining in-flight checks");
    app.shutdown(args.drain_timeout).await
}
