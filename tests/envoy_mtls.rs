//! The per-cluster topology through real Envoy: `examples/envoy/envoy-mtls.yaml` (and its SDS
//! files) asks scopegate over mutual TLS, checked requests are answered end to end; without its
//! client certificate Envoy is refused by scopegate and fails closed (503).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;

use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};
use scopegate::app::RunningApp;
use support::envoy::{wait_scopegate_ready, EchoUpstream, Envoy};
use support::server::serve_args;
use support::tokens::{self, token};
use support::{free_port, metric_value, repo_path};

const SERVICE: &str = "scopegate.scopegate.svc.cluster.local";
const HOST: &str = "api.example.com";

/// The cluster CA (cert-manager's issuer) and what it signs: scopegate's serving certificate for
/// the Service name, and Envoy's client certificate.
struct Pki {
    ca: String,
    server: (String, String),
    client: (String, String),
}

fn pki() -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.distinguished_name.push(DnType::CommonName, "cluster-ca");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca.self_signed(&ca_key).unwrap();
    let leaf = |name: &str, purpose| {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec![name.to_string()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![purpose];
        let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
        (cert.pem(), key.serialize_pem())
    };
    Pki {
        ca: ca.pem(),
        server: leaf(SERVICE, ExtendedKeyUsagePurpose::ServerAuth),
        client: leaf("envoy-gateway", ExtendedKeyUsagePurpose::ClientAuth),
    }
}

struct Stack {
    envoy: Envoy,
    upstream: EchoUpstream,
    app: RunningApp,
    _dir: tempfile::TempDir,
}

fn write(path: &Path, text: &str) -> String {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
    path.to_str().unwrap().to_string()
}

/// Replaces `from` (which must occur) by `to`.
fn replaced(text: &str, from: &str, to: &str) -> String {
    assert!(text.contains(from), "examples/envoy: `{from}` not found");
    text.replace(from, to)
}

/// scopegate as the chart runs it with `tls.clientAuth`, and Envoy with the example: its
/// addresses, ports and mount paths replaced; with `client_cert: false` the example's client
/// certificate block is taken out.
async fn stack(client_cert: bool) -> Stack {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki();
    let d = dir.path();
    let rules = format!(
        "issuers:\n{}routes:\n  orders-read: {{host: {HOST}, path: \"/orders/{{id}}\", methods: [GET], require: {{all: [orders:read]}}}}\n",
        tokens::issuer_yaml()
    );
    let rules = write(&d.join("rules.yaml"), &rules);
    let cert = write(&d.join("scopegate-tls/tls.crt"), &pki.server.0);
    let key = write(&d.join("scopegate-tls/tls.key"), &pki.server.1);
    let ca = write(&d.join("scopegate-tls/ca.crt"), &pki.ca);
    let app = scopegate::app::start(&serve_args(&[
        "--rules",
        &rules,
        "--tls-cert-file",
        &cert,
        "--tls-key-file",
        &key,
        "--tls-client-ca-file",
        &ca,
    ]))
    .await
    .unwrap();
    wait_scopegate_ready(app.admin_addr).await;
    let upstream = EchoUpstream::start().await;

    // Envoy's side: the mounted Secret and the SDS files, as in the example's header.
    let client_dir = d.join("envoy/scopegate-client");
    write(&client_dir.join("tls.crt"), &pki.client.0);
    write(&client_dir.join("tls.key"), &pki.client.1);
    write(&client_dir.join("ca.crt"), &pki.ca);
    let client_dir = client_dir.to_str().unwrap();
    let sds_dir = d.join("envoy/sds");
    for name in ["scopegate-client.yaml", "scopegate-ca.yaml"] {
        let text =
            std::fs::read_to_string(repo_path(&format!("examples/envoy/sds/{name}"))).unwrap();
        write(
            &sds_dir.join(name),
            &replaced(&text, "/etc/envoy/scopegate-client", client_dir),
        );
    }
    let (listener, admin) = (free_port(), free_port());
    let mut config = std::fs::read_to_string(repo_path("examples/envoy/envoy-mtls.yaml")).unwrap();
    for (from, to) in [
        (
            "address: 0.0.0.0, port_value: 10000 ".to_string(),
            format!("address: 127.0.0.1, port_value: {listener} "),
        ),
        ("port_value: 9901 ".into(), format!("port_value: {admin} ")),
        // The Service's name resolves to this scopegate; SNI and the SAN check keep the name.
        (
            format!("address: {SERVICE}, port_value: 9191 "),
            format!("address: 127.0.0.1, port_value: {} ", app.grpc_addr.port()),
        ),
        (
            "port_value: 8080 ".into(),
            format!("port_value: {} ", upstream.addr.port()),
        ),
        (
            "/etc/envoy/sds".into(),
            sds_dir.to_str().unwrap().to_string(),
        ),
        ("/etc/envoy/scopegate-client".into(), client_dir.to_string()),
    ] {
        config = replaced(&config, &from, &to);
    }
    if !client_cert {
        let start = config
            .find("          tls_certificate_sds_secret_configs:")
            .unwrap();
        let end = config
            .find("          # scopegate's certificate must chain")
            .unwrap();
        config.replace_range(start..end, "");
    }
    let envoy = Envoy::start(&config, listener, admin).await;
    Stack {
        envoy,
        upstream,
        app,
        _dir: dir,
    }
}

fn handshake_failures(app: &RunningApp) -> f64 {
    metric_value(
        &app.metrics.encode(),
        "scopegate_tls_handshake_failures_total",
    )
    .unwrap_or(0.0)
}

#[tokio::test]
async fn envoy_asks_scopegate_over_mutual_tls() {
    let s = stack(true).await;
    let auth = format!("Bearer {}", token("alice", "orders:read"));
    let r = s
        .envoy
        .request(
            "GET",
            "/orders/1",
            &[("host", HOST), ("authorization", &auth)],
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}\n{}", s.envoy.log());
    assert_eq!(
        r.echoed().unwrap().header("x-scopegate-subject"),
        Some("alice")
    );
    // A denial comes from scopegate's policy (not from a transport failure).
    let r = s.envoy.request("GET", "/orders/1", &[("host", HOST)]).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["reason"], "missing_credential");
    assert_eq!(s.upstream.requests(), 1);
    assert_eq!(handshake_failures(&s.app), 0.0);
}

#[tokio::test]
async fn envoy_without_its_client_certificate_is_refused_and_fails_closed() {
    let s = stack(false).await;
    let auth = format!("Bearer {}", token("alice", "orders:read"));
    let r = s
        .envoy
        .request(
            "GET",
            "/orders/1",
            &[("host", HOST), ("authorization", &auth)],
        )
        .await;
    assert_eq!(r.status, 503, "status_on_error, fail closed: {r:?}");
    let r = s.envoy.request("GET", "/orders/1", &[("host", HOST)]).await;
    assert_eq!(
        r.status, 503,
        "no policy answer at all: scopegate was never asked"
    );
    assert_eq!(s.upstream.requests(), 0);
    assert!(
        handshake_failures(&s.app) >= 1.0,
        "scopegate refused the handshake"
    );
}
