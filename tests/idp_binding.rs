//! Sender-constrained tokens from a real identity provider (npm `oidc-provider`, see
//! `tests/support/idp.rs`): DPoP-bound tokens (the IdP binds them to the key of the proof sent to
//! its token endpoint, `cnf.jkt`) and certificate-bound ones (the client's TLS certificate,
//! `cnf["x5t#S256"]`) are sent through scopegate over gRPC: a valid proof is allowed; wrong
//! `htm`, wrong `htu`, stale `iat`, replayed `jti`, wrong `ath`, a proof by another key, the
//! token sent as `Bearer` are each refused as RFC 9449 says; a certificate-bound token with the
//! right, a wrong and no certificate, in-process and through real Envoy terminating TLS
//! (`include_peer_certificate`).
//!
//! The IdP's signing keys are fetched once and given to scopegate inline, so that these tests
//! depend on the IdP's tokens, not on remote key fetching (tested elsewhere).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use envoy_types::ext_authz::v3::pb::CheckRequest;
use envoy_types::pb::envoy::service::auth::v3::attribute_context::Peer;
use serde_json::{json, Value};
use support::binding::{https_get, TlsListener};
use support::envoy::{example_config, EchoUpstream, Envoy, EnvoyPorts, HttpResponse};
use support::free_port;
use support::idp::{
    ath, https_client, unix_now, ClientCert, DpopKey, Idp, TokenRequest, AUDIENCE, DPOP_CLIENT,
    MTLS_CLIENT, RESOURCE_ES256, RESOURCE_JWT,
};
use support::server::{check_request, Answer, TestServer};

const HOST: &str = "api.example.com";
const HTU: &str = "https://api.example.com/orders/1";
const ALGS: &str = "ES256 ES384 EdDSA PS256 PS384 PS512 RS256 RS384 RS512";

/// scopegate trusting the IdP (its JWKS inline), with an orders route.
async fn scopegate_for(idp: &Idp) -> TestServer {
    let http = https_client(&idp.ca.pem(), None);
    let body = http
        .get(idp.url("jwks"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let jwks: Value = serde_json::from_str(&body).unwrap();
    let rules = json!({
        "issuers": {"idp": {"issuer": idp.issuer, "audiences": [AUDIENCE],
                            "algorithms": ["RS256", "ES256"], "jwks": jwks, "require_typ": "at+jwt"}},
        "routes": {"orders": {"host": HOST, "path": "/orders/**", "require": {"all": ["orders:read"]}},
                   "payments": {"host": HOST, "path": "/payments/**", "require": {"all": ["orders:read"]},
                                "require_binding": "dpop"}},
    });
    TestServer::with_rules(&rules.to_string(), &[]).await
}

/// A DPoP-bound token from the IdP (client credentials, with a proof at the token endpoint).
async fn dpop_bound(idp: &Idp, key: &DpopKey, resource: &str) -> String {
    let mut request = TokenRequest::new(DPOP_CLIENT, "orders:read", resource);
    request.dpop = Some(key.proof("POST", &idp.token_endpoint(), json!({})));
    let token = idp.token(&request).await;
    assert_eq!(token.token_type, "DPoP");
    assert_eq!(token.claims()["cnf"]["jkt"], key.thumbprint().as_str());
    token.access_token
}

/// A certificate-bound token from the IdP (the client authenticates with `cert` over TLS).
async fn certificate_bound(idp: &Idp, cert: &ClientCert) -> String {
    let mut request = TokenRequest::new(MTLS_CLIENT, "orders:read", RESOURCE_JWT);
    request.client_cert = Some(cert);
    let token = idp.token(&request).await;
    assert_eq!(token.claims()["cnf"]["x5t#S256"], cert.x5t_s256.as_str());
    token.access_token
}

fn request(
    path: &str,
    authorization: &str,
    proof: Option<&str>,
    cert: Option<&ClientCert>,
) -> CheckRequest {
    let mut headers = vec![("authorization", authorization)];
    if let Some(proof) = proof {
        headers.push(("dpop", proof));
    }
    let mut request = check_request("GET", HOST, path, &headers);
    let attributes = request.attributes.as_mut().unwrap();
    attributes
        .request
        .as_mut()
        .unwrap()
        .http
        .as_mut()
        .unwrap()
        .scheme = "https".into();
    if let Some(cert) = cert {
        attributes.source = Some(Peer {
            certificate: url_encode(&cert.cert_pem),
            ..Default::default()
        });
    }
    request
}

/// As Envoy forwards a certificate: URL-encoded PEM.
fn url_encode(pem: &str) -> String {
    pem.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn assert_denied(a: &Answer, status: u16, reason: &str, challenge: &str, what: &str) {
    assert_eq!(
        (
            a.status,
            a.reason().as_deref(),
            a.header("www-authenticate")
        ),
        (status, Some(reason), Some(challenge)),
        "{what}: {a:?}"
    );
}

fn proof_error(description: &str) -> String {
    format!(
        "DPoP error=\"invalid_dpop_proof\", error_description=\"{description}\", algs=\"{ALGS}\""
    )
}

fn dpop_token_error(description: &str) -> String {
    format!("DPoP error=\"invalid_token\", error_description=\"{description}\", algs=\"{ALGS}\"")
}

#[tokio::test]
async fn dpop_bound_tokens_from_a_real_idp() {
    let idp = Idp::start().await;
    let mut s = scopegate_for(&idp).await;
    let key = DpopKey::generate();
    for resource in [RESOURCE_JWT, RESOURCE_ES256] {
        let t = dpop_bound(&idp, &key, resource).await;
        let auth = format!("DPoP {t}");
        let proof = key.proof("GET", HTU, json!({"ath": ath(&t)}));
        let a = s
            .check_with(request("/orders/1", &auth, Some(&proof), None))
            .await;
        assert_eq!(a.status, 200, "{resource}: {a:?}");
        assert_eq!(a.header("x-scopegate-client-id"), Some(DPOP_CLIENT.id));
        // Replayed jti.
        let a = s
            .check_with(request("/orders/1", &auth, Some(&proof), None))
            .await;
        let replayed = proof_error("The DPoP proof has been used before");
        assert_denied(&a, 401, "invalid_dpop_proof", &replayed, "replay");
        // A route that requires DPoP takes it.
        let proof = key.proof(
            "GET",
            "https://api.example.com/payments/1",
            json!({"ath": ath(&t)}),
        );
        let a = s
            .check_with(request("/payments/1", &auth, Some(&proof), None))
            .await;
        assert_eq!(a.status, 200, "{resource} on the dpop route: {a:?}");
    }

    let t = dpop_bound(&idp, &key, RESOURCE_JWT).await;
    let auth = format!("DPoP {t}");
    let good = json!({"ath": ath(&t)});
    let cases = [
        (
            "wrong htm",
            key.proof("POST", HTU, good.clone()),
            "The DPoP proof htm does not match the request method",
        ),
        (
            "wrong htu",
            key.proof("GET", "https://api.example.com/orders/2", good.clone()),
            "The DPoP proof htu does not match the request URI",
        ),
        (
            "stale iat",
            key.proof("GET", HTU, json!({"ath": ath(&t), "iat": unix_now() - 300})),
            "The DPoP proof iat is outside the accepted window",
        ),
        (
            "wrong ath",
            key.proof("GET", HTU, json!({"ath": ath("another token")})),
            "The DPoP proof ath does not match the access token",
        ),
        (
            "no ath",
            key.proof("GET", HTU, json!({})),
            "The DPoP proof claims are missing or invalid",
        ),
    ];
    for (what, proof, description) in cases {
        let a = s
            .check_with(request("/orders/1", &auth, Some(&proof), None))
            .await;
        assert_denied(
            &a,
            401,
            "invalid_dpop_proof",
            &proof_error(description),
            what,
        );
    }
    // A proof signed by another key: valid as a proof, but not the token's key.
    let thief = DpopKey::generate();
    let proof = thief.proof("GET", HTU, good.clone());
    let a = s
        .check_with(request("/orders/1", &auth, Some(&proof), None))
        .await;
    let mismatch = dpop_token_error("The DPoP proof key does not match the access token");
    assert_denied(&a, 401, "binding_mismatch", &mismatch, "another key");
    // The DPoP-bound token sent as a bearer token (with or without a proof).
    for proof in [None, Some(key.proof("GET", HTU, good.clone()))] {
        let a = s
            .check_with(request(
                "/orders/1",
                &format!("Bearer {t}"),
                proof.as_deref(),
                None,
            ))
            .await;
        let as_bearer =
            dpop_token_error("The DPoP-bound access token must be sent with the DPoP scheme");
        assert_denied(&a, 401, "binding_mismatch", &as_bearer, "as Bearer");
    }
    // After all that, a fresh proof still works: refused proofs were not remembered.
    let proof = key.proof("GET", HTU, good);
    let a = s
        .check_with(request("/orders/1", &auth, Some(&proof), None))
        .await;
    assert_eq!(a.status, 200, "{a:?}");
}

#[tokio::test]
async fn certificate_bound_tokens_from_a_real_idp() {
    let idp = Idp::start().await;
    let mut s = scopegate_for(&idp).await;
    let (right, wrong) = (
        idp.ca.client("orders-device"),
        idp.ca.client("other-device"),
    );
    let t = certificate_bound(&idp, &right).await;
    let auth = format!("Bearer {t}");
    let a = s
        .check_with(request("/orders/1", &auth, None, Some(&right)))
        .await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.header("x-scopegate-client-id"), Some(MTLS_CLIENT.id));
    let bearer = |d: &str| {
        format!("Bearer realm=\"scopegate\", error=\"invalid_token\", error_description=\"{d}\"")
    };
    let a = s
        .check_with(request("/orders/1", &auth, None, Some(&wrong)))
        .await;
    let mismatch = bearer("The client certificate does not match the access token");
    assert_denied(&a, 401, "binding_mismatch", &mismatch, "wrong certificate");
    let a = s.check_with(request("/orders/1", &auth, None, None)).await;
    let missing =
        bearer("The access token is bound to a client certificate that was not presented");
    assert_denied(&a, 401, "binding_mismatch", &missing, "no certificate");
    // The dpop route refuses it: it is certificate-bound, not DPoP-bound.
    let a = s
        .check_with(request("/payments/1", &auth, None, Some(&right)))
        .await;
    let required = dpop_token_error("A DPoP-bound access token is required");
    assert_denied(
        &a,
        401,
        "binding_required",
        &required,
        "mtls token on the dpop route",
    );
}

#[tokio::test]
async fn certificate_bound_tokens_from_a_real_idp_through_envoy() {
    let idp = Idp::start().await;
    let scopegate = scopegate_for(&idp).await;
    let upstream = EchoUpstream::start().await;
    // Envoy terminates TLS with a certificate from the IdP's test CA, and requires client
    // certificates from it (the same CA that signs the clients the IdP binds tokens to).
    let server = idp.ca.server();
    let listener = TlsListener::new(&server.cert_pem, &server.key_pem, &idp.ca.pem());
    let ports = EnvoyPorts {
        listener: free_port(),
        admin: free_port(),
        authz: scopegate.app.grpc_addr.port(),
        upstream: upstream.addr.port(),
    };
    let config = listener.apply(&example_config(ports));
    let envoy = Envoy::start(&config, ports.listener, ports.admin).await;

    let (right, wrong) = (
        idp.ca.client("orders-device"),
        idp.ca.client("other-device"),
    );
    let t = certificate_bound(&idp, &right).await;
    let auth = format!("Bearer {t}");
    let send = |cert: &ClientCert| {
        let (ca, auth, addr) = (idp.ca.pem(), auth.clone(), envoy.addr);
        let identity = (cert.cert_pem.clone(), cert.key_pem.clone());
        async move {
            let id = Some((identity.0.as_str(), identity.1.as_str()));
            https_get(
                addr,
                "localhost",
                &ca,
                id,
                HOST,
                "/orders/1",
                &[("Authorization", &auth)],
            )
            .await
            .unwrap()
        }
    };
    let r: HttpResponse = send(&right).await;
    assert_eq!(r.status, 200, "{r:?}");
    let seen = r.echoed().expect("the upstream answered");
    assert_eq!(seen.header("x-scopegate-client-id"), Some(MTLS_CLIENT.id));
    let r = send(&wrong).await;
    assert_eq!(
        (r.status, r.json()["reason"].as_str(), r.header("www-authenticate")),
        (
            401,
            Some("binding_mismatch"),
            Some("Bearer realm=\"scopegate\", error=\"invalid_token\", error_description=\"The client certificate does not match the access token\"")
        ),
        "{r:?}"
    );
    assert_eq!(upstream.requests(), 1);
}
