//! The etcd source against a real etcd (started by the test on free loopback ports): initial
//! load, every key kind, atomic transactions, per-key rejection, crash and restart, compaction
//! while disconnected, TLS with client certificates, and the staleness bound.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::disallowed_methods,
    reason = "tests, benchmarks and examples: a failed step stops them with its message, and they read their own environment"
)]

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, Txn, TxnOp};
use scopegate::app::RunningApp;
use support::etcd::{EtcdServer, EtcdTls};
use support::etcd_scopegate::{self, ask, start_scopegate, P, WAIT};
use support::proxy::CuttableProxy;
use support::server::{check_request, connect, grpc_health, http_get, Answer, ServingStatus};
use support::tokens::{self, claims, sign, token};
use support::wait_until;

fn route(path: &str, scopes: &[&str]) -> String {
    serde_json::json!({"host": "api.example.com", "path": path, "require": {"all": scopes}})
        .to_string()
}

/// Puts `<prefix><key>` and returns the revision of the write.
async fn put(kv: &mut Client, key: &str, value: impl Into<Vec<u8>>) -> i64 {
    let response = kv.put(format!("{P}{key}"), value, None).await.unwrap();
    response.header().unwrap().revision()
}

async fn delete(kv: &mut Client, key: &str) {
    kv.delete(format!("{P}{key}"), None).await.unwrap();
}

async fn seed(client: &mut Client) {
    put(client, "issuers/test", tokens::issuer_json()).await;
    put(
        client,
        "routes/orders",
        route("/orders/{id}", &["orders:read"]),
    )
    .await;
    put(
        client,
        "routes/health",
        r#"{"host":"*","path":"/healthz","require":{"public":true}}"#,
    )
    .await;
}

/// Waits until a Check of `GET path` on `app` answers `status`.
async fn until_status(app: &RunningApp, path: &str, token: Option<&str>, status: u16, what: &str) {
    etcd_scopegate::until_status(app.grpc_addr, path, token, status, what).await;
}

/// Waits until the source has had at least one failed etcd session (so a fail-closed answer
/// afterwards proves that the failure is handled, not that nothing was tried yet).
async fn until_a_session_failed(app: &RunningApp) {
    let metrics = app.metrics.clone();
    wait_until("a failed etcd session", Duration::from_secs(20), || {
        let metrics = metrics.clone();
        async move {
            support::metric_value(&metrics.encode(), "scopegate_watch_restarts_total")
                .is_some_and(|v| v >= 1.0)
        }
    })
    .await;
}

#[tokio::test]
async fn initial_load_then_every_key_kind_flips_the_decision() {
    let etcd = EtcdServer::start().await;
    let mut kv = etcd.client().await;
    seed(&mut kv).await;
    let app = start_scopegate(&etcd.endpoint(), &[]).await;
    let t = token("alice", "read:orders");
    until_status(&app, "/healthz", None, 200, "initial load").await;
    // Scope alias not defined yet: read:orders is not orders:read.
    assert_eq!(
        ask(app.grpc_addr, "GET", "/orders/1", Some(&t))
            .await
            .status,
        403
    );

    put(
        &mut kv,
        "scopes/orders:read",
        r#"{"aliases":["read:orders"]}"#,
    )
    .await;
    until_status(&app, "/orders/1", Some(&t), 200, "scope alias applies").await;

    // Revocation by jti applies to the next request, although the claims are cached.
    let mut c = claims("alice", "orders:read");
    c["jti"] = serde_json::json!("jti-1");
    let revocable = sign(jsonwebtoken::Algorithm::RS256, &c);
    assert_eq!(
        ask(app.grpc_addr, "GET", "/orders/1", Some(&revocable))
            .await
            .status,
        200
    );
    put(&mut kv, "revoked/jti/jti-1", r#"{"reason":"leaked"}"#).await;
    until_status(
        &app,
        "/orders/1",
        Some(&revocable),
        401,
        "jti revocation applies",
    )
    .await;
    delete(&mut kv, "revoked/jti/jti-1").await;
    until_status(
        &app,
        "/orders/1",
        Some(&revocable),
        200,
        "jti revocation removed",
    )
    .await;

    let cutoff = tokens::now() + 10;
    put(
        &mut kv,
        "revoked/sub/alice",
        format!(r#"{{"issued_before":{cutoff}}}"#),
    )
    .await;
    until_status(
        &app,
        "/orders/1",
        Some(&t),
        401,
        "subject revocation applies",
    )
    .await;
    assert_eq!(
        ask(
            app.grpc_addr,
            "GET",
            "/orders/1",
            Some(&token("bob", "orders:read"))
        )
        .await
        .status,
        200
    );
    put(
        &mut kv,
        "revoked/client/test-client",
        format!(r#"{{"issued_before":{cutoff}}}"#),
    )
    .await;
    until_status(
        &app,
        "/orders/1",
        Some(&token("bob", "orders:read")),
        401,
        "client revocation applies",
    )
    .await;
    kv.delete(
        format!("{P}revoked/"),
        Some(etcd_client::DeleteOptions::new().with_prefix()),
    )
    .await
    .unwrap();
    until_status(&app, "/orders/1", Some(&t), 200, "revocations removed").await;

    delete(&mut kv, "routes/orders").await;
    until_status(&app, "/orders/1", Some(&t), 403, "route delete applies").await;
    put(
        &mut kv,
        "routes/orders",
        route("/orders/{id}", &["orders:read"]),
    )
    .await;
    until_status(&app, "/orders/1", Some(&t), 200, "route put applies").await;

    delete(&mut kv, "issuers/test").await;
    until_status(
        &app,
        "/orders/1",
        Some(&t),
        401,
        "issuer delete applies, cached claims included",
    )
    .await;
    assert_eq!(
        ask(app.grpc_addr, "GET", "/orders/1", Some(&t))
            .await
            .reason()
            .as_deref(),
        Some("unknown_issuer")
    );
}

#[tokio::test]
async fn denies_until_the_first_snapshot_then_becomes_ready() {
    let port = support::free_port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let app = start_scopegate(&endpoint, &[]).await;
    let a = ask(app.grpc_addr, "GET", "/healthz", None).await;
    assert_eq!(
        (a.status, a.reason().as_deref()),
        (503, Some("no_snapshot"))
    );
    assert!(http_get(app.admin_addr, "/readyz")
        .await
        .contains("not ready"));
    // etcd appears later on that port: scopegate connects by itself.
    let etcd = EtcdServer::start_on(port).await;
    seed(&mut etcd.client().await).await;
    until_status(
        &app,
        "/healthz",
        None,
        200,
        "first snapshot after etcd appears",
    )
    .await;
    assert!(http_get(app.admin_addr, "/readyz")
        .await
        .starts_with("ready"));
}

#[tokio::test]
async fn a_transaction_is_applied_atomically() {
    let etcd = EtcdServer::start().await;
    let mut kv = etcd.client().await;
    seed(&mut kv).await;
    // Consistent state A: route needs v1, token scope t implies v1. State B: v2 and t→v2.
    // A request that saw half a transaction would be denied.
    let state = |v: &str| {
        vec![
            TxnOp::put(format!("{P}routes/linked"), route("/linked", &[v]), None),
            TxnOp::put(
                format!("{P}scopes/t"),
                format!(r#"{{"implies":["{v}"]}}"#),
                None,
            ),
        ]
    };
    kv.txn(Txn::new().and_then(state("v1"))).await.unwrap();
    let app = start_scopegate(&etcd.endpoint(), &["--decision-log", "off"]).await;
    let t = token("alice", "t");
    until_status(&app, "/linked", Some(&t), 200, "state A loaded").await;

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let checks = Arc::new(AtomicUsize::new(0));
    let mut hammers = Vec::new();
    for _ in 0..4 {
        let (stop, checks, t, addr) = (stop.clone(), checks.clone(), t.clone(), app.grpc_addr);
        hammers.push(tokio::spawn(async move {
            let mut client = connect(addr).await;
            let auth = format!("Bearer {t}");
            let mut denied = 0;
            while !stop.load(Ordering::Relaxed) {
                let req = check_request(
                    "GET",
                    "api.example.com",
                    "/linked",
                    &[("authorization", &auth)],
                );
                let a = Answer::from_response(client.check(req).await.unwrap().into_inner());
                checks.fetch_add(1, Ordering::Relaxed);
                if a.status != 200 {
                    denied += 1;
                }
            }
            denied
        }));
    }
    let store = app.store.clone();
    for round in 0..40 {
        let v = if round % 2 == 0 { "v2" } else { "v1" };
        let resp = kv
            .txn(
                Txn::new()
                    .when([Compare::version(
                        format!("{P}scopes/t"),
                        CompareOp::Greater,
                        0,
                    )])
                    .and_then(state(v)),
            )
            .await
            .unwrap();
        let revision = resp.header().unwrap().revision();
        wait_until("transaction applied", WAIT, || {
            let store = store.clone();
            async move { store.current().is_some_and(|s| s.revision >= revision) }
        })
        .await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut denied = 0;
    for h in hammers {
        denied += h.await.unwrap();
    }
    assert!(checks.load(Ordering::Relaxed) > 40, "the hammer ran");
    assert_eq!(denied, 0, "some request saw half a transaction");
}

#[tokio::test]
async fn a_bad_value_is_rejected_for_its_key_alone() {
    let etcd = EtcdServer::start().await;
    let mut kv = etcd.client().await;
    seed(&mut kv).await;
    let app = start_scopegate(&etcd.endpoint(), &[]).await;
    let t = token("alice", "orders:read");
    until_status(&app, "/orders/1", Some(&t), 200, "initial load").await;
    // One revision: a new good route, and a broken version of the existing route.
    kv.txn(Txn::new().and_then([
        TxnOp::put(
            format!("{P}routes/new"),
            route("/new", &["orders:read"]),
            None,
        ),
        TxnOp::put(format!("{P}routes/orders"), "{not json", None),
    ]))
    .await
    .unwrap();
    until_status(
        &app,
        "/new",
        Some(&t),
        200,
        "the good key of the revision applies",
    )
    .await;
    assert_eq!(
        ask(app.grpc_addr, "GET", "/orders/1", Some(&t))
            .await
            .status,
        200,
        "last good version of routes/orders stays"
    );
    let metrics = http_get(app.admin_addr, "/metrics").await;
    assert!(
        metrics.contains("scopegate_rule_errors_total 1"),
        "{metrics}"
    );
    let status = http_get(app.admin_addr, "/status").await;
    assert!(status.contains("/scopegate/routes/orders"), "{status}");
    // An invalid route shape is rejected the same way.
    put(
        &mut kv,
        "routes/orders",
        route("no-slash", &["orders:read"]),
    )
    .await;
    put(&mut kv, "routes/marker", route("/marker", &["orders:read"])).await;
    until_status(&app, "/marker", Some(&t), 200, "later revision applies").await;
    assert_eq!(
        ask(app.grpc_addr, "GET", "/orders/1", Some(&t))
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn survives_etcd_crash_and_applies_writes_after_restart() {
    let mut etcd = EtcdServer::start().await;
    seed(&mut etcd.client().await).await;
    let app = start_scopegate(&etcd.endpoint(), &[]).await;
    let t = token("alice", "orders:read");
    until_status(&app, "/orders/1", Some(&t), 200, "initial load").await;
    etcd.kill();
    for _ in 0..20 {
        assert_eq!(
            ask(app.grpc_addr, "GET", "/orders/1", Some(&t))
                .await
                .status,
            200,
            "serves from its snapshot while etcd is down"
        );
    }
    etcd.restart().await;
    let mut kv = etcd.client().await;
    put(&mut kv, "routes/after", route("/after", &["orders:read"])).await;
    until_status(&app, "/after", Some(&t), 200, "write after restart applies").await;
    let metrics = http_get(app.admin_addr, "/metrics").await;
    let restarts = support::metric_value(&metrics, "scopegate_watch_restarts_total");
    assert!(
        restarts.is_some_and(|v| v >= 1.0),
        "{restarts:?} in {metrics}"
    );
}

#[tokio::test]
async fn compaction_while_disconnected_triggers_a_full_reload() {
    let etcd = EtcdServer::start().await;
    let mut kv = etcd.client().await;
    seed(&mut kv).await;
    put(&mut kv, "routes/doomed", route("/doomed", &["orders:read"])).await;
    let proxy =
        CuttableProxy::start(format!("127.0.0.1:{}", etcd.client_port).parse().unwrap()).await;
    let app = start_scopegate(&proxy.endpoint(), &[]).await;
    let t = token("alice", "orders:read");
    until_status(&app, "/doomed", Some(&t), 200, "initial load").await;
    let applied = app.store.current().unwrap().revision;

    proxy.cut();
    delete(&mut kv, "routes/doomed").await;
    put(&mut kv, "routes/born", route("/born", &["orders:read"])).await;
    let revision = put(&mut kv, "routes/born", route("/born", &["orders:read"])).await;
    kv.compact(revision, None).await.unwrap();
    assert!(revision > applied + 1);
    proxy.restore();

    until_status(&app, "/born", Some(&t), 200, "reload after compaction").await;
    assert_eq!(
        ask(app.grpc_addr, "GET", "/doomed", Some(&t)).await.status,
        403,
        "deleted while disconnected"
    );
    assert!(app.store.current().unwrap().revision >= revision);
}

#[tokio::test]
async fn max_staleness_fails_closed_and_recovers() {
    let etcd = EtcdServer::start().await;
    seed(&mut etcd.client().await).await;
    let proxy =
        CuttableProxy::start(format!("127.0.0.1:{}", etcd.client_port).parse().unwrap()).await;
    let app = start_scopegate(&proxy.endpoint(), &["--max-staleness", "3s"]).await;
    let t = token("alice", "orders:read");
    until_status(&app, "/orders/1", Some(&t), 200, "initial load").await;
    proxy.cut();
    until_status(&app, "/orders/1", Some(&t), 503, "stale snapshot denies").await;
    let a = ask(app.grpc_addr, "GET", "/orders/1", Some(&t)).await;
    assert_eq!(a.reason().as_deref(), Some("snapshot_stale"));
    assert_eq!(
        ask(app.grpc_addr, "GET", "/healthz", None).await.status,
        200,
        "public routes stay open"
    );
    let (status, body) = support::server::http_get_status(app.admin_addr, "/readyz").await;
    assert_eq!((status, body.as_str()), (503, "not ready\n"));
    // The gRPC health service says so too, so Envoy's health check takes the replica out.
    until_health(&app, NOT_SERVING, "stale replica reports NOT_SERVING").await;
    proxy.restore();
    until_status(
        &app,
        "/orders/1",
        Some(&t),
        200,
        "recovers when etcd returns",
    )
    .await;
    until_health(&app, SERVING, "recovered replica reports SERVING").await;
}

/// A replica cut off from etcd reports NOT_SERVING (gRPC health and /readyz) at two thirds of
/// `--max-staleness`, while its checks still answer: Envoy's health check can eject it before it
/// starts failing closed with 503 snapshot_stale.
#[tokio::test]
async fn health_leaves_rotation_before_checks_fail_closed() {
    let etcd = EtcdServer::start().await;
    seed(&mut etcd.client().await).await;
    let proxy =
        CuttableProxy::start(format!("127.0.0.1:{}", etcd.client_port).parse().unwrap()).await;
    // NOT_SERVING from 4 s without confirmation, snapshot_stale from 6 s.
    let app = start_scopegate(&proxy.endpoint(), &["--max-staleness", "6s"]).await;
    let t = token("alice", "orders:read");
    until_status(&app, "/orders/1", Some(&t), 200, "initial load").await;
    until_health(&app, SERVING, "loaded replica reports SERVING").await;
    proxy.cut();
    until_health(&app, NOT_SERVING, "cut-off replica leaves rotation").await;
    let (status, _) = support::server::http_get_status(app.admin_addr, "/readyz").await;
    assert_eq!(status, 503, "/readyz agrees with the gRPC health service");
    let age = app.store.age().unwrap();
    assert!(
        age < Duration::from_secs(6),
        "health left rotation only at {age:?}, after the staleness bound"
    );
    assert_eq!(
        ask(app.grpc_addr, "GET", "/orders/1", Some(&t))
            .await
            .status,
        200,
        "out of rotation, but not stale yet: checks still answer from the snapshot"
    );
    until_status(&app, "/orders/1", Some(&t), 503, "then it fails closed").await;
    proxy.restore();
    until_health(&app, SERVING, "recovered replica reports SERVING").await;
}

const SERVING: ServingStatus = ServingStatus::Serving;
const NOT_SERVING: ServingStatus = ServingStatus::NotServing;

async fn until_health(app: &RunningApp, want: ServingStatus, what: &str) {
    let addr = app.grpc_addr;
    wait_until(what, Duration::from_secs(10), || async move {
        grpc_health(addr).await == Some(want)
    })
    .await;
}

fn write_tls(dir: &std::path::Path) -> (EtcdTls, std::path::PathBuf, std::path::PathBuf) {
    use rcgen::{
        BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, KeyPair, SanType,
    };
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf = |name: &str, eku: ExtendedKeyUsagePurpose| {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(vec![name.to_string(), "localhost".to_string()]).unwrap();
        params
            .subject_alt_names
            .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
        params.extended_key_usages = vec![eku];
        let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let (server_cert, server_key) = leaf("etcd", ExtendedKeyUsagePurpose::ServerAuth);
    let (client_cert, client_key) = leaf("scopegate", ExtendedKeyUsagePurpose::ClientAuth);
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let tls = EtcdTls {
        ca_file: write("ca.pem", &ca.pem()),
        server_cert: write("server.pem", &server_cert),
        server_key: write("server-key.pem", &server_key),
    };
    (
        tls,
        write("client.pem", &client_cert),
        write("client-key.pem", &client_key),
    )
}

#[tokio::test]
async fn tls_with_client_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let (tls, client_cert, client_key) = write_tls(dir.path());
    let etcd = EtcdServer::start_with(Some(tls.clone())).await;
    let options = etcd_client::ConnectOptions::new().with_tls(
        etcd_client::TlsOptions::new()
            .ca_certificate(etcd_client::Certificate::from_pem(
                std::fs::read(&tls.ca_file).unwrap(),
            ))
            .identity(etcd_client::Identity::from_pem(
                std::fs::read(&client_cert).unwrap(),
                std::fs::read(&client_key).unwrap(),
            )),
    );
    let mut kv = Client::connect([etcd.endpoint()], Some(options))
        .await
        .unwrap();
    seed(&mut kv).await;
    let (ca, cert, key) = (
        tls.ca_file.to_str().unwrap(),
        client_cert.to_str().unwrap(),
        client_key.to_str().unwrap(),
    );
    let app = start_scopegate(
        &etcd.endpoint(),
        &[
            "--etcd-ca-file",
            ca,
            "--etcd-cert-file",
            cert,
            "--etcd-key-file",
            key,
        ],
    )
    .await;
    until_status(
        &app,
        "/orders/1",
        Some(&token("alice", "orders:read")),
        200,
        "loaded over mutual TLS",
    )
    .await;

    // Without a client certificate etcd refuses us: after the refused attempt, scopegate is
    // still fail-closed (503 no_snapshot), even on a public route.
    let no_cert = start_scopegate(&etcd.endpoint(), &["--etcd-ca-file", ca]).await;
    until_a_session_failed(&no_cert).await;
    let a = ask(no_cert.grpc_addr, "GET", "/healthz", None).await;
    assert_eq!(
        (a.status, a.reason().as_deref()),
        (503, Some("no_snapshot"))
    );
}

#[tokio::test]
async fn user_and_password_auth() {
    let etcd = EtcdServer::start().await;
    let mut kv = etcd.client().await;
    seed(&mut kv).await;
    kv.user_add("root", "root-pw", None).await.unwrap();
    kv.user_grant_role("root", "root").await.unwrap();
    kv.auth_enable().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let password_file = dir.path().join("etcd-password");
    std::fs::write(&password_file, "root-pw\n").unwrap();
    let pw = password_file.to_str().unwrap();
    let app = start_scopegate(
        &etcd.endpoint(),
        &["--etcd-user", "root", "--etcd-password-file", pw],
    )
    .await;
    until_status(
        &app,
        "/orders/1",
        Some(&token("alice", "orders:read")),
        200,
        "loaded with user/password",
    )
    .await;
    std::fs::write(&password_file, "wrong").unwrap();
    let wrong = start_scopegate(
        &etcd.endpoint(),
        &["--etcd-user", "root", "--etcd-password-file", pw],
    )
    .await;
    until_a_session_failed(&wrong).await;
    let a = ask(wrong.grpc_addr, "GET", "/healthz", None).await;
    assert_eq!(
        (a.status, a.reason().as_deref()),
        (503, Some("no_snapshot"))
    );
}

#[tokio::test]
async fn fails_over_across_endpoints_and_survives_leader_loss() {
    let mut cluster = support::etcd::EtcdCluster::start(3).await;
    let mut kv = Client::connect(cluster.endpoints(), None).await.unwrap();
    seed(&mut kv).await;
    // The first endpoint is dead from the start: the others serve.
    let dead = format!("http://127.0.0.1:{}", support::free_port());
    let endpoints = format!("{dead},{}", cluster.endpoints().join(","));
    let app = start_scopegate(&endpoints, &[]).await;
    let t = token("alice", "orders:read");
    until_status(
        &app,
        "/orders/1",
        Some(&t),
        200,
        "loaded through the live endpoints",
    )
    .await;

    // Kill the leader (SIGKILL): the remaining two elect a new one; writes keep flowing to us.
    let leader = cluster.leader().await;
    cluster.members[leader].kill();
    assert_eq!(
        ask(app.grpc_addr, "GET", "/orders/1", Some(&t))
            .await
            .status,
        200,
        "serves from the snapshot meanwhile"
    );
    cluster.wait_healthy().await;
    let live: Vec<String> = cluster
        .members
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != leader)
        .map(|(_, m)| m.endpoint())
        .collect();
    let mut kv = Client::connect(live, None).await.unwrap();
    put(
        &mut kv,
        "routes/after-election",
        route("/after-election", &["orders:read"]),
    )
    .await;
    until_status(
        &app,
        "/after-election",
        Some(&t),
        200,
        "write after leader loss applies",
    )
    .await;
}

/// A member that hangs (SIGSTOP) answers nothing; the replica watching it must notice the missing
/// progress replies and fail over, so a revocation written meanwhile is enforced well before the
/// ~10 s that HTTP/2 keep-alive would take to notice.
#[tokio::test]
async fn a_hung_member_is_a_lost_member() {
    let cluster = support::etcd::EtcdCluster::start(3).await;
    let mut kv = Client::connect(cluster.endpoints(), None).await.unwrap();
    seed(&mut kv).await;
    let leader = cluster.leader().await;
    let mut order: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    order.push(leader);
    let endpoints: Vec<String> = order
        .iter()
        .map(|i| cluster.members[*i].endpoint())
        .collect();
    let app = start_scopegate(&endpoints.join(","), &[]).await;
    let t = token("mallory", "orders:read");
    until_status(
        &app,
        "/orders/1",
        Some(&t),
        200,
        "loaded from the first member",
    )
    .await;

    let frozen = &cluster.members[order[0]];
    frozen.signal("-STOP");
    let others: Vec<String> = endpoints[1..].to_vec();
    let mut kv = Client::connect(others, None).await.unwrap();
    put(
        &mut kv,
        "revoked/sub/mallory",
        r#"{"issued_before":4102444800}"#.to_string(),
    )
    .await;
    let deadline = Duration::from_secs(6);
    let probe = app.grpc_addr;
    let token = t.clone();
    let result = tokio::time::timeout(deadline, async move {
        loop {
            if ask(probe, "GET", "/orders/1", Some(&token)).await.status == 401 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    frozen.signal("-CONT");
    assert!(
        result.is_ok(),
        "revocation not enforced within {deadline:?} while the watched member hung"
    );
    let restarts = support::metric_value(&app.metrics.encode(), "scopegate_watch_restarts_total");
    assert!(restarts.is_some_and(|v| v >= 1.0), "{restarts:?}");
}
