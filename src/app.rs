//! Wiring: [`App::build`] makes the check pipeline from a [`Config`]; [`App::spawn`] starts the
//! rule source, the admin server, health reporting and the gRPC server (ext_authz +
//! grpc.health.v1); SERVING once the first snapshot is in; drain gracefully on shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::ext_authz::v3::pb::AuthorizationServer;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::server::{Router, TcpIncoming};
use tonic_health::ServingStatus;

use crate::admin::{self, AdminState};
use crate::cache::ClaimsCache;
use crate::check::Checker;
use crate::config::{Config, SourceConfig};
use crate::grpc::tls::{self, ServerTls, TlsError};
use crate::grpc::AuthorizationService;
use crate::readiness::Readiness;
use crate::rules::document::DocumentError;
use crate::store::etcd::EtcdSource;
use crate::store::file::FileSource;
use crate::store::SnapshotStore;
use crate::telemetry::Metrics;
use crate::token::KeyFetcher;

/// How often health is re-evaluated without a new revision (staleness grows with time).
const HEALTH_RECHECK: Duration = Duration::from_millis(250);

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
    #[error("listener TLS: {0}")]
    Tls(#[from] TlsError),
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

async fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), AppError> {
    let bound = TcpListener::bind(addr).await.and_then(|listener| {
        let local = listener.local_addr()?;
        Ok((listener, local))
    });
    bound.map_err(|source| AppError::Bind { addr, source })
}

/// The service, built from a [`Config`] and not yet running.
#[derive(Debug)]
pub struct App {
    config: Config,
    store: Arc<SnapshotStore>,
    metrics: Arc<Metrics>,
    service: AuthorizationService,
    /// When the app was built: readiness waits for remote keys from here.
    started: std::time::Instant,
}

impl App {
    /// Builds the check pipeline and its shared state; starts nothing.
    pub fn build(config: Config) -> App {
        let metrics = Metrics::new();
        let fetcher = KeyFetcher::new(config.keys, Some(metrics.clone()));
        let store = SnapshotStore::with_key_fetcher(fetcher);
        let checker = Checker::new(
            store.clone(),
            ClaimsCache::new(config.cache.capacity, config.cache.max_ttl),
            metrics.clone(),
            config.check.clone(),
        );
        let service = AuthorizationService::new(Arc::new(checker), config.response.clone());
        App {
            config,
            store,
            metrics,
            service,
            started: std::time::Instant::now(),
        }
    }

    /// Starts the rule source, the admin server, health reporting and the gRPC server. Returns
    /// once the listeners are bound; with a rules file the first snapshot is loaded before this
    /// returns, with etcd it arrives in the background.
    pub async fn spawn(self) -> Result<RunningApp, AppError> {
        let tls = self.config.tls.clone().map(ServerTls::load).transpose()?;
        let mut background = vec![self.spawn_source()?];
        let (admin_listener, admin_addr) = bind(self.config.admin_listen).await?;
        background.push(self.spawn_admin(admin_listener));
        let (reporter, health_service) = tonic_health::server::health_reporter();
        let health = report_health(reporter, self.readiness());
        background.push(tokio::spawn(health));
        let (listener, grpc_addr) = bind(self.config.listen).await?;
        let (tx, rx) = oneshot::channel::<()>();
        let router = tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .add_service(health_service)
            .add_service(AuthorizationServer::new(self.service.clone()));
        let stopped = async {
            let _ = rx.await;
        };
        let tls_enabled = tls.is_some();
        let server = match tls {
            None => tokio::spawn(router.serve_with_incoming_shutdown(
                // A custom incoming stream does not inherit the builder's TCP settings: without
                // TCP_NODELAY every Check waits ~40 ms for a delayed ACK (Nagle).
                TcpIncoming::from(listener).with_nodelay(Some(true)),
                stopped,
            )),
            Some(tls) => self.serve_tls(router, listener, tls, stopped, &mut background),
        };
        tracing::info!(%grpc_addr, %admin_addr, tls = tls_enabled, "scopegate listening");
        Ok(RunningApp {
            grpc_addr,
            admin_addr,
            store: self.store,
            metrics: self.metrics,
            shutdown: Some(tx),
            server,
            background,
        })
    }

    /// gRPC over TLS: handshakes with the configuration current at accept time; the
    /// certificate watcher and the accept loop join the background tasks.
    fn serve_tls(
        &self,
        router: Router,
        listener: TcpListener,
        tls: ServerTls,
        stopped: impl Future<Output = ()> + Send + 'static,
        background: &mut Vec<JoinHandle<()>>,
    ) -> JoinHandle<Result<(), tonic::transport::Error>> {
        let (incoming, accept_loop) = tls::incoming(listener, tls.config(), self.metrics.clone());
        background.push(accept_loop);
        background.push(tokio::spawn(tls.watch(self.metrics.clone())));
        tokio::spawn(router.serve_with_incoming_shutdown(incoming, stopped))
    }

    fn spawn_source(&self) -> Result<JoinHandle<()>, AppError> {
        let (store, metrics) = (self.store.clone(), self.metrics.clone());
        match &self.config.source {
            SourceConfig::Etcd(settings) => {
                let source = EtcdSource::new(settings.clone(), store, metrics);
                Ok(tokio::spawn(source.run()))
            }
            SourceConfig::File {
                path,
                poll_interval,
            } => {
                let mut source = FileSource::new(path, store, metrics);
                source.load()?;
                Ok(tokio::spawn(source.watch(*poll_interval)))
            }
        }
    }

    fn readiness(&self) -> Readiness {
        Readiness {
            store: self.store.clone(),
            max_staleness: self.config.check.max_staleness,
            keys_ready_deadline: self.started + self.config.keys_ready_timeout,
        }
    }

    fn spawn_admin(&self, listener: TcpListener) -> JoinHandle<()> {
        let state = AdminState {
            store: self.store.clone(),
            metrics: self.metrics.clone(),
            readiness: self.readiness(),
        };
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, admin::router(state)).await {
                tracing::error!(error = %e, "admin server stopped");
            }
        })
    }
}

/// Builds and spawns (what tests, benches and `run` use).
pub async fn start(config: &Config) -> Result<RunningApp, AppError> {
    App::build(config.clone()).spawn().await
}

/// SERVING while the replica is [`Readiness::is_ready`] (a current-enough snapshot, and the
/// remote issuers' keys or the end of the start-up wait for them), for `""` and the ext_authz
/// service; NOT_SERVING otherwise. A replica cut off from etcd thus takes itself out of rotation
/// (Envoy's gRPC health check ejects it) before it would answer 503 `snapshot_stale` to its
/// share of the traffic. Re-evaluated on every new revision and every [`HEALTH_RECHECK`].
async fn report_health(reporter: tonic_health::server::HealthReporter, readiness: Readiness) {
    let mut revisions = readiness.store.subscribe();
    let name = <AuthorizationServer<AuthorizationService> as tonic::server::NamedService>::NAME;
    let mut reported = None;
    loop {
        let serving = readiness.is_ready();
        let status = if serving {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        if reported != Some(serving) {
            reporter.set_service_status("", status).await;
            reporter.set_service_status(name, status).await;
            reported = Some(serving);
        }
        tokio::select! {
            changed = revisions.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(HEALTH_RECHECK) => {}
        }
    }
}

/// Runs until `shutdown` resolves, then drains.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), AppError> {
    let drain = config.drain_timeout;
    let app = App::build(config).spawn().await?;
    shutdown.await;
    tracing::info!("shutting down: draining in-flight checks");
    app.shutdown(drain).await
}
