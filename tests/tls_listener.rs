//! TLS on the gRPC listener, over real sockets: mutual TLS answers a Check (the admin port stays
//! plain HTTP); a client without a certificate, or with one from another CA, is refused; and a
//! rotation of the certificate files laid out as a Kubernetes Secret volume (an atomic `..data`
//! symlink swap) is picked up by the next handshake while an established connection keeps
//! working.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use scopegate::app::{self, AppError, RunningApp};
use support::pki::{Leaf, TestCa};
use support::server::{check_request, http_get_status, serve_args, Answer};
use support::{metric_value, wait_until};
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

const SERVER_NAME: &str = "scopegate.test";
const RULES: &str = r#"
routes:
  health: {host: "*", path: /healthz, require: {public: true}}
"#;

/// A directory laid out like a Kubernetes Secret volume: `tls.crt`, `tls.key`, `ca.crt` are
/// symlinks into `..data`, itself a symlink to a timestamped directory, swapped atomically.
struct SecretVolume {
    dir: PathBuf,
    version: u32,
}

impl SecretVolume {
    fn new(dir: &Path, server: &Leaf, client_ca: &str) -> SecretVolume {
        std::fs::create_dir_all(dir).unwrap();
        let mut volume = SecretVolume {
            dir: dir.to_path_buf(),
            version: 0,
        };
        volume.publish(server, client_ca);
        for name in ["tls.crt", "tls.key", "ca.crt"] {
            std::os::unix::fs::symlink(format!("..data/{name}"), dir.join(name)).unwrap();
        }
        volume
    }

    /// What the kubelet does on a Secret update: a new directory, then one rename of `..data`.
    fn publish(&mut self, server: &Leaf, client_ca: &str) {
        self.version += 1;
        let versioned = format!("..2026_01_01_00_00_0{}.v", self.version);
        let target = self.dir.join(&versioned);
        std::fs::create_dir(&target).unwrap();
        std::fs::write(target.join("tls.crt"), &server.cert_pem).unwrap();
        std::fs::write(target.join("tls.key"), &server.key_pem).unwrap();
        std::fs::write(target.join("ca.crt"), client_ca).unwrap();
        let tmp = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(&versioned, &tmp).unwrap();
        std::fs::rename(&tmp, self.dir.join("..data")).unwrap();
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).to_str().unwrap().to_string()
    }
}

async fn start(dir: &Path, tls_flags: &[&str]) -> Result<RunningApp, AppError> {
    let rules = dir.join("rules.yaml");
    std::fs::write(&rules, RULES).unwrap();
    let mut flags = vec!["--rules", rules.to_str().unwrap()];
    flags.extend_from_slice(tls_flags);
    app::start(&serve_args(&flags)).await
}

async fn start_mtls(volume: &SecretVolume) -> RunningApp {
    let (cert, key, ca) = (
        volume.path("tls.crt"),
        volume.path("tls.key"),
        volume.path("ca.crt"),
    );
    let flags = [
        "--tls-cert-file",
        cert.as_str(),
        "--tls-key-file",
        key.as_str(),
        "--tls-client-ca-file",
        ca.as_str(),
    ];
    start(volume.dir.parent().unwrap(), &flags).await.unwrap()
}

/// A gRPC client over TLS that trusts `server_ca` and presents `identity` (if any).
async fn tls_client(
    addr: SocketAddr,
    server_ca: &str,
    identity: Option<&Leaf>,
) -> Result<AuthorizationClient<Channel>, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(server_ca))
        .domain_name(SERVER_NAME);
    if let Some(leaf) = identity {
        tls = tls.identity(Identity::from_pem(&leaf.cert_pem, &leaf.key_pem));
    }
    let endpoint = Endpoint::from_shared(format!("https://{addr}"))?
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(5));
    Ok(AuthorizationClient::new(endpoint.connect().await?))
}

async fn check_health(client: &mut AuthorizationClient<Channel>) -> Result<Answer, tonic::Status> {
    let request = check_request("GET", "api.example.com", "/healthz", &[]);
    let response = client.check(request).await?;
    Ok(Answer::from_response(response.into_inner()))
}

/// Whether a new connection with this client identity gets an answer.
async fn answered(addr: SocketAddr, server_ca: &str, identity: Option<&Leaf>) -> bool {
    match tls_client(addr, server_ca, identity).await {
        Ok(mut client) => check_health(&mut client).await.is_ok(),
        Err(_) => false,
    }
}

fn handshake_failures(app: &RunningApp) -> f64 {
    metric_value(
        &app.metrics.encode(),
        "scopegate_tls_handshake_failures_total",
    )
    .unwrap_or(0.0)
}

fn der(pem: &str) -> CertificateDer<'static> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
}

/// One raw TLS handshake (trusting every CA in `roots`): the leaf certificate the server shows
/// (`None` if the handshake failed).
async fn presented_certificate(addr: SocketAddr, roots: &[&str], client: &Leaf) -> Option<Vec<u8>> {
    use rustls::pki_types::pem::PemObject;
    let mut store = RootCertStore::empty();
    for root in roots {
        store.add(der(root)).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(store)
        .with_client_auth_cert(
            vec![der(&client.cert_pem)],
            PrivateKeyDer::from_pem_slice(client.key_pem.as_bytes()).unwrap(),
        )
        .unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from(SERVER_NAME).unwrap();
    let stream = connector.connect(name, tcp).await.ok()?;
    Some(stream.get_ref().1.peer_certificates()?.first()?.to_vec())
}

#[tokio::test]
async fn mutual_tls_answers_a_check_and_the_admin_port_stays_plain_http() {
    let dir = tempfile::tempdir().unwrap();
    let (server_ca, client_ca) = (TestCa::new("server-ca"), TestCa::new("client-ca"));
    let volume = SecretVolume::new(
        &dir.path().join("tls"),
        &server_ca.server(SERVER_NAME),
        &client_ca.pem(),
    );
    let app = start_mtls(&volume).await;
    let envoy = client_ca.client("envoy");

    let mut client = tls_client(app.grpc_addr, &server_ca.pem(), Some(&envoy))
        .await
        .unwrap();
    let answer = check_health(&mut client).await.unwrap();
    assert_eq!(answer.status, 200);
    let (status, body) = http_get_status(app.admin_addr, "/healthz").await;
    assert_eq!((status, body.trim()), (200, "ok"));
    // A plain-text gRPC client gets no answer from the TLS listener.
    let plain = AuthorizationClient::connect(format!("http://{}", app.grpc_addr)).await;
    if let Ok(mut plain) = plain {
        assert!(check_health(&mut plain).await.is_err());
    }
}

#[tokio::test]
async fn a_client_without_a_certificate_is_refused_when_one_is_required() {
    let dir = tempfile::tempdir().unwrap();
    let (server_ca, client_ca) = (TestCa::new("server-ca"), TestCa::new("client-ca"));
    let volume = SecretVolume::new(
        &dir.path().join("tls"),
        &server_ca.server(SERVER_NAME),
        &client_ca.pem(),
    );
    let app = start_mtls(&volume).await;

    assert!(!answered(app.grpc_addr, &server_ca.pem(), None).await);
    assert!(handshake_failures(&app) >= 1.0, "the server refused it");
    let envoy = client_ca.client("envoy");
    assert!(answered(app.grpc_addr, &server_ca.pem(), Some(&envoy)).await);
}

#[tokio::test]
async fn a_client_certificate_from_another_ca_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (server_ca, client_ca, other_ca) = (
        TestCa::new("server-ca"),
        TestCa::new("client-ca"),
        TestCa::new("client-ca"), // same name, different key: a look-alike CA
    );
    let volume = SecretVolume::new(
        &dir.path().join("tls"),
        &server_ca.server(SERVER_NAME),
        &client_ca.pem(),
    );
    let app = start_mtls(&volume).await;

    let intruder = other_ca.client("envoy");
    assert!(!answered(app.grpc_addr, &server_ca.pem(), Some(&intruder)).await);
    // A server certificate from the right CA is no client certificate either (wrong purpose).
    let server_leaf = client_ca.server(SERVER_NAME);
    assert!(!answered(app.grpc_addr, &server_ca.pem(), Some(&server_leaf)).await);
    assert!(handshake_failures(&app) >= 2.0);
}

#[tokio::test]
async fn rotation_applies_to_the_next_handshake_and_keeps_established_connections() {
    let dir = tempfile::tempdir().unwrap();
    let (old_server_ca, old_client_ca) = (TestCa::new("server-ca-1"), TestCa::new("client-ca-1"));
    let (new_server_ca, new_client_ca) = (TestCa::new("server-ca-2"), TestCa::new("client-ca-2"));
    let old_server = old_server_ca.server(SERVER_NAME);
    let mut volume = SecretVolume::new(&dir.path().join("tls"), &old_server, &old_client_ca.pem());
    let app = start_mtls(&volume).await;
    let (old_envoy, new_envoy) = (old_client_ca.client("envoy"), new_client_ca.client("envoy"));
    // Trusts only the old server CA: a reconnect after the rotation could not succeed.
    let mut established = tls_client(app.grpc_addr, &old_server_ca.pem(), Some(&old_envoy))
        .await
        .unwrap();
    assert_eq!(check_health(&mut established).await.unwrap().status, 200);

    let new_server = new_server_ca.server(SERVER_NAME);
    volume.publish(&new_server, &new_client_ca.pem());
    let roots = [old_server_ca.pem(), new_server_ca.pem()];
    let roots: Vec<&str> = roots.iter().map(String::as_str).collect();
    let addr = app.grpc_addr;
    let (new_leaf, new_envoy_probe) = (der(&new_server.cert_pem).to_vec(), new_envoy.clone());
    wait_until(
        "the next handshake presents the new certificate",
        Duration::from_secs(10),
        || {
            let (roots, probe, new_leaf) = (roots.clone(), new_envoy_probe.clone(), &new_leaf);
            async move { presented_certificate(addr, &roots, &probe).await.as_ref() == Some(new_leaf) }
        },
    )
    .await;

    // The connection made before the rotation still answers, many times over.
    for _ in 0..3 {
        assert_eq!(check_health(&mut established).await.unwrap().status, 200);
    }
    // New handshakes: the new server certificate and the new client CA are in force.
    assert!(!answered(addr, &old_server_ca.pem(), Some(&old_envoy)).await);
    assert!(!answered(addr, &new_server_ca.pem(), Some(&old_envoy)).await);
    assert!(answered(addr, &new_server_ca.pem(), Some(&new_envoy)).await);
    let metrics = app.metrics.encode();
    assert!(
        metrics.contains("scopegate_tls_reloads_total{result=\"applied\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_broken_rotation_is_rejected_and_the_previous_certificate_stays() {
    let dir = tempfile::tempdir().unwrap();
    let (server_ca, client_ca) = (TestCa::new("server-ca"), TestCa::new("client-ca"));
    let first = server_ca.server(SERVER_NAME);
    let mut volume = SecretVolume::new(&dir.path().join("tls"), &first, &client_ca.pem());
    let app = start_mtls(&volume).await;
    let envoy = client_ca.client("envoy");

    // A key that does not belong to the certificate.
    let (cert_of, key_of) = (server_ca.server(SERVER_NAME), server_ca.server(SERVER_NAME));
    let mismatched = Leaf {
        key_pem: key_of.key_pem,
        ..cert_of
    };
    volume.publish(&mismatched, &client_ca.pem());
    wait_until(
        "the broken files are rejected",
        Duration::from_secs(10),
        || async {
            app.metrics
                .encode()
                .contains("scopegate_tls_reloads_total{result=\"rejected\"} 1")
        },
    )
    .await;
    let shown = presented_certificate(app.grpc_addr, &[&server_ca.pem()], &envoy).await;
    assert_eq!(shown, Some(der(&first.cert_pem).to_vec()));
    assert!(answered(app.grpc_addr, &server_ca.pem(), Some(&envoy)).await);
}

#[tokio::test]
async fn server_only_tls_needs_no_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let server_ca = TestCa::new("server-ca");
    let leaf = server_ca.server(SERVER_NAME);
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::write(&cert, &leaf.cert_pem).unwrap();
    std::fs::write(&key, &leaf.key_pem).unwrap();
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let app = start(
        dir.path(),
        &["--tls-cert-file", cert, "--tls-key-file", key],
    )
    .await
    .unwrap();
    assert!(answered(app.grpc_addr, &server_ca.pem(), None).await);
}

#[tokio::test]
async fn bad_tls_settings_stop_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("server-ca");
    let (a, b) = (ca.server(SERVER_NAME), ca.server(SERVER_NAME));
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::write(&cert, &a.cert_pem).unwrap();
    std::fs::write(&key, &b.key_pem).unwrap();
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let err = start(
        dir.path(),
        &["--tls-cert-file", cert, "--tls-key-file", key],
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(err.starts_with("listener TLS:"), "{err}");

    // Half a pair, or a client CA without a server certificate, is refused by the command line.
    use scopegate::cli::Cli;
    for argv in [
        vec!["--tls-cert-file", cert],
        vec!["--tls-key-file", key],
        vec!["--tls-client-ca-file", cert],
    ] {
        let mut full = vec!["scopegate", "serve", "--rules", "r.yaml"];
        full.extend(argv);
        assert!(Cli::try_parse_args(full.clone()).is_err(), "{full:?}");
    }
}
