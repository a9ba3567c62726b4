//! Sender-constrained tokens through real Envoy running `examples/envoy/envoy.yaml`: DPoP on
//! its plain-HTTP listener (the `dpop` header reaches scopegate through `allowed_headers`, the
//! scheme is Envoy's `http`), and the same example with a TLS listener that requires client
//! certificates (a `DownstreamTlsContext` added by the test, certificates from rcgen):
//! certificate-bound tokens with the right and a wrong certificate (`include_peer_certificate`)
//! and DPoP with scheme `https`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;

use support::binding::{dpop_token, https_get, mtls_token, DpopKey, Leaf, TestCa, TlsListener};
use support::envoy::{example_config, EchoUpstream, Envoy, EnvoyPorts, HttpResponse};
use support::free_port;
use support::server::TestServer;
use support::tokens::{self, token};

const HOST: &str = "api.example.com";
const ALGS: &str = "ES256 ES384 EdDSA PS256 PS384 PS512 RS256 RS384 RS512";

fn rules() -> String {
    format!(
        "issuers:\n{}routes:\n  \
         orders: {{host: {HOST}, path: /orders/**, require: {{all: [orders:read]}}}}\n  \
         payments: {{host: {HOST}, path: /payments/**, require: {{all: [orders:read]}}, require_binding: dpop}}\n",
        tokens::issuer_yaml()
    )
}

/// scopegate (rules file), the echo upstream, and Envoy running the example (with TLS if given).
struct Stack {
    envoy: Envoy,
    upstream: EchoUpstream,
    _scopegate: TestServer,
}

impl Stack {
    async fn start(tls: Option<&TlsListener>) -> Stack {
        let scopegate = TestServer::with_rules(&rules(), &[]).await;
        let upstream = EchoUpstream::start().await;
        let ports = EnvoyPorts {
            listener: free_port(),
            admin: free_port(),
            authz: scopegate.app.grpc_addr.port(),
            upstream: upstream.addr.port(),
        };
        let mut config = example_config(ports);
        if let Some(listener) = tls {
            config = listener.apply(&config);
        }
        let envoy = Envoy::start(&config, ports.listener, ports.admin).await;
        Stack {
            envoy,
            upstream,
            _scopegate: scopegate,
        }
    }
}

fn assert_denied(r: &HttpResponse, status: u16, reason: &str, challenge: &str) {
    assert_eq!(
        (
            r.status,
            r.json()["reason"].as_str(),
            r.header("www-authenticate")
        ),
        (status, Some(reason), Some(challenge)),
        "{r:?}"
    );
    assert!(
        r.echoed().is_none(),
        "a denial must not come from the upstream"
    );
}

fn assert_reached_upstream(r: &HttpResponse, subject: &str) {
    assert_eq!(r.status, 200, "{r:?}");
    let seen = r.echoed().expect("the upstream answered");
    assert_eq!(seen.header("x-scopegate-subject"), Some(subject));
}

#[tokio::test]
async fn dpop_through_envoy() {
    let stack = Stack::start(None).await;
    let key = DpopKey::es256();
    let t = dpop_token("alice", "orders:read", &key);
    let auth = format!("DPoP {t}");
    // Envoy's listener is plain HTTP: the request URI is http://api.example.com/orders/1.
    let htu = format!("http://{HOST}/orders/1");
    let proof = key.proof("GET", &htu, &t);
    let send = |headers: Vec<(&'static str, String)>| {
        let envoy = &stack.envoy;
        async move {
            let mut all: Vec<(&str, &str)> = vec![("Host", HOST)];
            all.extend(headers.iter().map(|(k, v)| (*k, v.as_str())));
            envoy.request("GET", "/orders/1?page=2", &all).await
        }
    };
    let r = send(vec![
        ("Authorization", auth.clone()),
        ("DPoP", proof.clone()),
    ])
    .await;
    assert_reached_upstream(&r, "alice");

    let r = send(vec![
        ("Authorization", auth.clone()),
        ("DPoP", proof.clone()),
    ])
    .await;
    let replayed = format!(
        "DPoP error=\"invalid_dpop_proof\", error_description=\"The DPoP proof has been used before\", algs=\"{ALGS}\""
    );
    assert_denied(&r, 401, "invalid_dpop_proof", &replayed);

    // A proof for https does not match Envoy's http.
    let https = key.proof("GET", &format!("https://{HOST}/orders/1"), &t);
    let r = send(vec![("Authorization", auth.clone()), ("DPoP", https)]).await;
    let htu_error = format!(
        "DPoP error=\"invalid_dpop_proof\", error_description=\"The DPoP proof htu does not match the request URI\", algs=\"{ALGS}\""
    );
    assert_denied(&r, 401, "invalid_dpop_proof", &htu_error);

    // The DPoP-bound token as a bearer token, with a fresh valid proof.
    let fresh = key.proof("GET", &htu, &t);
    let r = send(vec![
        ("Authorization", format!("Bearer {t}")),
        ("DPoP", fresh),
    ])
    .await;
    let as_bearer = format!(
        "DPoP error=\"invalid_token\", error_description=\"The DPoP-bound access token must be sent with the DPoP scheme\", algs=\"{ALGS}\""
    );
    assert_denied(&r, 401, "binding_mismatch", &as_bearer);

    // Two DPoP headers: Envoy forwards both (joined), scopegate answers 400.
    let (one, two) = (key.proof("GET", &htu, &t), key.proof("GET", &htu, &t));
    let r = send(vec![
        ("Authorization", auth.clone()),
        ("DPoP", one.clone()),
        ("DPoP", two),
    ])
    .await;
    assert_denied(
        &r,
        400,
        "invalid_request",
        "Bearer realm=\"scopegate\", error=\"invalid_request\", error_description=\"The DPoP header is repeated or unreadable\"",
    );

    // A route that requires DPoP refuses a plain bearer token.
    let plain = token("bob", "orders:read");
    let r = stack
        .envoy
        .request(
            "GET",
            "/payments/1",
            &[
                ("Host", HOST),
                ("Authorization", &format!("Bearer {plain}")),
            ],
        )
        .await;
    let required = format!(
        "DPoP error=\"invalid_token\", error_description=\"A DPoP-bound access token is required\", algs=\"{ALGS}\""
    );
    assert_denied(&r, 401, "binding_required", &required);
    assert_eq!(stack.upstream.requests(), 1);
}

/// `GET path` over TLS to Envoy (`Host: api.example.com`), presenting `client`.
async fn https(
    addr: SocketAddr,
    ca: &TestCa,
    client: Option<&Leaf>,
    path: &str,
    headers: &[(&str, &str)],
) -> std::io::Result<HttpResponse> {
    let identity = client.map(|c| (c.cert_pem.as_str(), c.key_pem.as_str()));
    https_get(addr, HOST, &ca.pem(), identity, HOST, path, headers).await
}

#[tokio::test]
async fn certificate_bound_tokens_through_envoy_with_tls() {
    let ca = TestCa::new("test-ca");
    let server = ca.server(HOST);
    let listener = TlsListener::new(&server.cert_pem, &server.key_pem, &ca.pem());
    let stack = Stack::start(Some(&listener)).await;
    let (right, wrong) = (ca.client("alice-device"), ca.client("mallory-device"));
    let t = mtls_token("alice", "orders:read", &right);
    let auth = format!("Bearer {t}");
    let headers = [("Authorization", auth.as_str())];
    let addr = stack.envoy.addr;

    let r = https(addr, &ca, Some(&right), "/orders/1", &headers)
        .await
        .unwrap();
    assert_reached_upstream(&r, "alice");

    // Another certificate from the same CA: the TLS handshake succeeds, the binding does not.
    let r = https(addr, &ca, Some(&wrong), "/orders/1", &headers)
        .await
        .unwrap();
    assert_denied(
        &r,
        401,
        "binding_mismatch",
        "Bearer realm=\"scopegate\", error=\"invalid_token\", error_description=\"The client certificate does not match the access token\"",
    );

    // A plain bearer token over the same connection type is unaffected by the certificate.
    let plain = format!("Bearer {}", token("bob", "orders:read"));
    let r = https(
        addr,
        &ca,
        Some(&wrong),
        "/orders/1",
        &[("Authorization", &plain)],
    )
    .await
    .unwrap();
    assert_reached_upstream(&r, "bob");

    // DPoP behind TLS: Envoy's scheme is https, so that is what htu names.
    let key = DpopKey::es256();
    let dt = dpop_token("carol", "orders:read", &key);
    let proof = key.proof("GET", &format!("https://{HOST}/payments/1"), &dt);
    let dauth = format!("DPoP {dt}");
    let r = https(
        addr,
        &ca,
        Some(&right),
        "/payments/1",
        &[("Authorization", &dauth), ("DPoP", &proof)],
    )
    .await
    .unwrap();
    assert_reached_upstream(&r, "carol");

    // Without a client certificate Envoy refuses the connection itself.
    let r = https(addr, &ca, None, "/orders/1", &headers).await;
    assert!(r.is_err(), "no client certificate, yet an answer: {r:?}");
    assert_eq!(stack.upstream.requests(), 3);
}
