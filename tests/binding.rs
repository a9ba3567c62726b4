//! Sender-constrained tokens over real gRPC: RFC 9449 DPoP (every way a proof can be wrong, each
//! with its exact status, reason and `WWW-Authenticate`), RFC 8705 certificate-bound tokens
//! (right, wrong, no and unreadable certificate), and `require_binding` on routes and issuers.
//! Tokens and proofs are minted here (demo issuer key; a fresh DPoP key per test).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use envoy_types::ext_authz::v3::pb::CheckRequest;
use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Peer};
use serde_json::json;
use support::binding::{self, ath, dpop_token, mtls_token, proof_claims, DpopKey, TestCa};
use support::server::{check_request, Answer, TestServer};
use support::tokens::{self, token};

const HOST: &str = "api.example.com";
const HTU: &str = "https://api.example.com/orders/1";
const ALGS: &str = "ES256 ES384 EdDSA PS256 PS384 PS512 RS256 RS384 RS512";
const STRICT_ISSUER: &str = "https://strict.idp.test/";

fn rules() -> String {
    format!(
        r#"
issuers:
{issuer}
  strict:
    issuer: {STRICT_ISSUER}
    audiences: [{audience}]
    algorithms: [RS256]
    jwks_file: {jwks}
    require_binding: dpop
routes:
  orders: {{host: {HOST}, path: /orders/**, require: {{all: [orders:read]}}}}
  payments: {{host: {HOST}, path: /payments/**, require: {{all: [orders:read]}}, require_binding: dpop}}
  certs: {{host: {HOST}, path: /certs/**, require: {{all: [orders:read]}}, require_binding: mtls}}
  bound: {{host: {HOST}, path: /bound/**, require: {{all: [orders:read]}}, require_binding: any}}
"#,
        issuer = tokens::issuer_yaml(),
        audience = tokens::AUDIENCE,
        jwks = support::repo_path("examples/keys/demo-jwks.json").display(),
    )
}

async fn server() -> TestServer {
    TestServer::with_rules(&rules(), &[]).await
}

/// What the request carries besides method and path.
#[derive(Default)]
struct Sent<'a> {
    authorization: Option<String>,
    /// One entry: the `dpop` header; more: that many copies in `header_map`.
    dpop: Vec<&'a str>,
    certificate: Option<String>,
    /// `attributes.request.http.scheme`; `https` unless set.
    scheme: Option<&'a str>,
}

fn dpop_auth(token: &str) -> Option<String> {
    Some(format!("DPoP {token}"))
}

fn bearer(token: &str) -> Option<String> {
    Some(format!("Bearer {token}"))
}

fn http(request: &mut CheckRequest) -> &mut HttpRequest {
    request
        .attributes
        .as_mut()
        .and_then(|a| a.request.as_mut())
        .and_then(|r| r.http.as_mut())
        .unwrap()
}

fn request(method: &str, path: &str, sent: Sent<'_>) -> CheckRequest {
    let mut request = check_request(method, HOST, path, &[]);
    let h = http(&mut request);
    h.scheme = sent.scheme.unwrap_or("https").into();
    if let Some(auth) = sent.authorization {
        h.headers.insert("authorization".into(), auth);
    }
    match sent.dpop.as_slice() {
        [] => {}
        [one] => {
            h.headers.insert("dpop".into(), one.to_string());
        }
        many => {
            h.header_map = Some(HeaderMap {
                headers: many
                    .iter()
                    .map(|v| HeaderValue {
                        key: "DPoP".into(),
                        raw_value: v.as_bytes().to_vec(),
                        ..Default::default()
                    })
                    .collect(),
            });
        }
    }
    if let Some(certificate) = sent.certificate {
        request.attributes.as_mut().unwrap().source = Some(Peer {
            certificate,
            ..Default::default()
        });
    }
    request
}

/// A DPoP request (`Authorization: DPoP`, one proof) for `GET path`.
async fn send_dpop(s: &mut TestServer, path: &str, token: &str, proof: &str) -> Answer {
    let sent = Sent {
        authorization: dpop_auth(token),
        dpop: vec![proof],
        ..Sent::default()
    };
    s.check_with(request("GET", path, sent)).await
}

fn assert_allowed(a: &Answer, subject: &str, what: &str) {
    assert_eq!(a.status, 200, "{what}: {a:?}");
    assert_eq!(a.header("x-scopegate-subject"), Some(subject), "{what}");
}

/// Status, reason code, exact `WWW-Authenticate`, and the body's error code.
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
    let body: serde_json::Value = serde_json::from_str(&a.body).unwrap();
    let error = challenge
        .split("error=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or("unauthorized");
    assert_eq!(body["error"], error, "{what}: body {}", a.body);
}

fn proof_error(description: &str) -> String {
    format!(
        "DPoP error=\"invalid_dpop_proof\", error_description=\"{description}\", algs=\"{ALGS}\""
    )
}

fn dpop_token_error(description: &str) -> String {
    format!("DPoP error=\"invalid_token\", error_description=\"{description}\", algs=\"{ALGS}\"")
}

fn bearer_token_error(description: &str) -> String {
    format!(
        "Bearer realm=\"scopegate\", error=\"invalid_token\", error_description=\"{description}\""
    )
}

async fn assert_proof_refused(s: &mut TestServer, token: &str, proof: &str, description: &str) {
    let a = send_dpop(s, "/orders/1", token, proof).await;
    assert_denied(
        &a,
        401,
        "invalid_dpop_proof",
        &proof_error(description),
        description,
    );
}

#[tokio::test]
async fn a_valid_proof_is_allowed_with_every_request_checked_again() {
    let mut s = server().await;
    for key in [DpopKey::es256(), DpopKey::ed25519()] {
        let t = dpop_token("alice", "orders:read", &key);
        let a = send_dpop(&mut s, "/orders/1", &t, &key.proof("GET", HTU, &t)).await;
        assert_allowed(&a, "alice", &format!("{:?} proof", key.alg));
        assert_eq!(a.header("x-scopegate-scopes"), Some("orders:read"));
        // The claims are cached now; a new proof is still needed and checked.
        let again = key.proof("GET", HTU, &t);
        let a = send_dpop(&mut s, "/orders/1", &t, &again).await;
        assert_allowed(&a, "alice", "second request, cached token");
        // htu is compared normalised (RFC 9449 §4.3): case, default port, query, fragment.
        let loose = key.proof("GET", "HTTPS://API.Example.COM:443/orders/./1?x=1#f", &t);
        let a = send_dpop(&mut s, "/orders/1?page=2", &t, &loose).await;
        assert_allowed(&a, "alice", "normalised htu");
    }
    let metrics = s.admin_get("/metrics").await;
    assert!(
        support::metric_value(&metrics, "scopegate_cache_hits_total").unwrap() >= 4.0,
        "{metrics}"
    );
}

#[tokio::test]
async fn wrong_htm_or_htu_is_an_invalid_proof() {
    let mut s = server().await;
    let key = DpopKey::es256();
    let t = dpop_token("alice", "orders:read", &key);
    let htm = "The DPoP proof htm does not match the request method";
    for method in ["POST", "get"] {
        assert_proof_refused(&mut s, &t, &key.proof(method, HTU, &t), htm).await;
    }
    let htu = "The DPoP proof htu does not match the request URI";
    for uri in [
        "https://api.example.com/orders/2",
        "https://api.example.com/orders/1/",
        "https://other.example.com/orders/1",
        "https://api.example.com:8443/orders/1",
        "http://api.example.com/orders/1",
        "/orders/1",
        "https://user@api.example.com/orders/1",
    ] {
        assert_proof_refused(&mut s, &t, &key.proof("GET", uri, &t), htu).await;
    }
    // The scheme is Envoy's: a proof for https sent over plain http does not match.
    let proof = key.proof("GET", HTU, &t);
    let sent = Sent {
        authorization: dpop_auth(&t),
        dpop: vec![&proof],
        scheme: Some("http"),
        ..Sent::default()
    };
    let a = s.check_with(request("GET", "/orders/1", sent)).await;
    assert_denied(
        &a,
        401,
        "invalid_dpop_proof",
        &proof_error(htu),
        "http scheme",
    );
}

#[tokio::test]
async fn iat_outside_the_window_is_an_invalid_proof() {
    let mut s = server().await;
    let key = DpopKey::es256();
    let t = dpop_token("alice", "orders:read", &key);
    let description = "The DPoP proof iat is outside the accepted window";
    for offset in [-61, 61, -3600, 86_400] {
        let mut claims = proof_claims("GET", HTU, &t);
        claims["iat"] = json!(tokens::now() + offset);
        let proof = key.proof_with(&key.header(), &claims);
        assert_proof_refused(&mut s, &t, &proof, description).await;
    }
    for offset in [-50, 50] {
        let mut claims = proof_claims("GET", HTU, &t);
        claims["iat"] = json!(tokens::now() + offset);
        let a = send_dpop(
            &mut s,
            "/orders/1",
            &t,
            &key.proof_with(&key.header(), &claims),
        )
        .await;
        assert_allowed(&a, "alice", &format!("iat {offset:+}s"));
    }
    // The window is a flag.
    let mut short = TestServer::with_rules(&rules(), &["--dpop-iat-window", "5s"]).await;
    let mut claims = proof_claims("GET", HTU, &t);
    claims["iat"] = json!(tokens::now() - 20);
    let proof = key.proof_with(&key.header(), &claims);
    assert_proof_refused(&mut short, &t, &proof, description).await;
}

#[tokio::test]
async fn a_replayed_proof_is_refused() {
    let mut s = server().await;
    let key = DpopKey::es256();
    let t = dpop_token("alice", "orders:read", &key);
    let proof = key.proof("GET", HTU, &t);
    let a = send_dpop(&mut s, "/orders/1", &t, &proof).await;
    assert_allowed(&a, "alice", "first use");
    for _ in 0..3 {
        assert_proof_refused(&mut s, &t, &proof, "The DPoP proof has been used before").await;
    }
    // A new proof with another jti is fine.
    let a = send_dpop(&mut s, "/orders/1", &t, &key.proof("GET", HTU, &t)).await;
    assert_allowed(&a, "alice", "fresh jti");
}

#[tokio::test]
async fn wrong_or_missing_ath_is_an_invalid_proof() {
    let mut s = server().await;
    let key = DpopKey::es256();
    let t = dpop_token("alice", "orders:read", &key);
    let other = dpop_token("alice", "orders:read orders:write", &key);
    let description = "The DPoP proof ath does not match the access token";
    assert_proof_refused(&mut s, &t, &key.proof("GET", HTU, &other), description).await;
    let mut claims = proof_claims("GET", HTU, &t);
    claims["ath"] = json!(ath(&t).to_uppercase());
    assert_proof_refused(
        &mut s,
        &t,
        &key.proof_with(&key.header(), &claims),
        description,
    )
    .await;
    let claims_description = "The DPoP proof claims are missing or invalid";
    for field in ["ath", "jti", "htm", "htu", "iat"] {
        let mut claims = proof_claims("GET", HTU, &t);
        claims.as_object_mut().unwrap().remove(field);
        let proof = key.proof_with(&key.header(), &claims);
        assert_proof_refused(&mut s, &t, &proof, claims_description).await;
    }
    let mut claims = proof_claims("GET", HTU, &t);
    claims["iat"] = json!(format!("{}", tokens::now()));
    let proof = key.proof_with(&key.header(), &claims);
    assert_proof_refused(&mut s, &t, &proof, claims_description).await;
}

#[tokio::test]
async fn a_proof_by_another_key_is_refused() {
    let mut s = server().await;
    let (key, thief) = (DpopKey::es256(), DpopKey::es256());
    let t = dpop_token("alice", "orders:read", &key);
    // A valid proof, but its key is not the one the token is bound to (cnf.jkt).
    let a = send_dpop(&mut s, "/orders/1", &t, &thief.proof("GET", HTU, &t)).await;
    let description = "The DPoP proof key does not match the access token";
    assert_denied(
        &a,
        401,
        "binding_mismatch",
        &dpop_token_error(description),
        "thief's key",
    );
    // The victim's jwk in the header, signed by the thief: the signature does not verify.
    let forged = thief.proof_with(&key.header(), &proof_claims("GET", HTU, &t));
    assert_proof_refused(&mut s, &t, &forged, "The DPoP proof signature is invalid").await;
    // The thief's proof did not burn the victim's next proof.
    let a = send_dpop(&mut s, "/orders/1", &t, &key.proof("GET", HTU, &t)).await;
    assert_allowed(&a, "alice", "owner");
}

#[tokio::test]
async fn a_dpop_bound_token_sent_as_bearer_is_refused() {
    let mut s = server().await;
    let key = DpopKey::es256();
    let t = dpop_token("alice", "orders:read", &key);
    let description = "The DPoP-bound access token must be sent with the DPoP scheme";
    let proof = key.proof("GET", HTU, &t);
    for dpop in [vec![], vec![proof.as_str()]] {
        let sent = Sent {
            authorization: bearer(&t),
            dpop,
            ..Sent::default()
        };
        let a = s.check_with(request("GET", "/orders/1", sent)).await;
        assert_denied(
            &a,
            401,
            "binding_mismatch",
            &dpop_token_error(description),
            "as Bearer",
        );
    }
    // No proof with the DPoP scheme.
    let sent = Sent {
        authorization: dpop_auth(&t),
        ..Sent::default()
    };
    let a = s.check_with(request("GET", "/orders/1", sent)).await;
    let missing = proof_error("The DPoP proof is missing");
    assert_denied(&a, 401, "invalid_dpop_proof", &missing, "no proof");
    // A token that is not bound, sent with the DPoP scheme (and a valid proof).
    let plain = token("bob", "orders:read");
    let a = send_dpop(&mut s, "/orders/1", &plain, &key.proof("GET", HTU, &plain)).await;
    let unbound = dpop_token_error("The access token is not DPoP-bound");
    assert_denied(
        &a,
        401,
        "binding_mismatch",
        &unbound,
        "unbound token, DPoP scheme",
    );
}

#[tokio::test]
async fn a_proof_with_private_key_members_is_refused() {
    let mut s = server().await;
    let key = DpopKey::es256();
    let t = dpop_token("alice", "orders:read", &key);
    let description = "The DPoP proof jwk contains private key material";
    for member in ["d", "p", "q", "dp", "dq", "qi", "oth", "k"] {
        let mut header = key.header();
        header["jwk"][member] = json!("AQAB");
        let proof = key.proof_with(&header, &proof_claims("GET", HTU, &t));
        assert_proof_refused(&mut s, &t, &proof, description).await;
    }
    // No jwk, a jwk that is not a key.
    let usable = "The DPoP proof jwk is not a usable public key";
    let claims = proof_claims("GET", HTU, &t);
    for jwk in [None, Some(json!("not a key")), Some(json!({"kty": "oct"}))] {
        let mut header = key.header();
        match jwk {
            None => {
                header.as_object_mut().unwrap().remove("jwk");
            }
            Some(jwk) => header["jwk"] = jwk,
        }
        assert_proof_refused(&mut s, &t, &key.proof_with(&header, &claims), usable).await;
    }
    // Keys that are not usable for ES256: a point that is not on the curve, an Ed25519 key.
    // A token bound to such a key gets its proof refused for the key; a token bound to another
    // key gets it refused for the mismatch, before any signature check.
    let mismatch = dpop_token_error("The DPoP proof key does not match the access token");
    for bad in [
        json!({"kty": "EC", "crv": "P-256", "x": "AAAA", "y": "AAAA"}),
        json!({"kty": "OKP", "crv": "Ed25519", "x": key.jwk["x"]}),
    ] {
        let mut header = key.header();
        header["jwk"] = bad.clone();
        let bound = binding::bound_token(
            "alice",
            "orders:read",
            json!({"jkt": binding::thumbprint_of(&bad)}),
        );
        let proof = key.proof_with(&header, &proof_claims("GET", HTU, &bound));
        assert_proof_refused(&mut s, &bound, &proof, usable).await;
        let proof = key.proof_with(&header, &claims);
        let a = send_dpop(&mut s, "/orders/1", &t, &proof).await;
        assert_denied(&a, 401, "binding_mismatch", &mismatch, &bad.to_string());
    }
}

#[tokio::test]
async fn a_proof_with_alg_none_hmac_or_wrong_typ_is_refused() {
    let mut s = server().await;
    let key = DpopKey::es256();
    let t = dpop_token("alice", "orders:read", &key);
    let claims = proof_claims("GET", HTU, &t);
    let alg = "The DPoP proof alg is not supported";
    // alg none: no signature at all.
    let none = format!(
        "{}.{}.",
        binding::b64(json!({"typ": "dpop+jwt", "alg": "none", "jwk": key.jwk}).to_string()),
        binding::b64(claims.to_string())
    );
    assert_proof_refused(&mut s, &t, &none, alg).await;
    // HS256 keyed with a secret (here the x coordinate, which anyone can read off the jwk).
    let secret = jsonwebtoken::EncodingKey::from_secret(key.jwk["x"].as_str().unwrap().as_bytes());
    let header = json!({"typ": "dpop+jwt", "alg": "HS256", "jwk": key.jwk});
    let hs = binding::sign_raw(&header, &claims, jsonwebtoken::Algorithm::HS256, &secret);
    assert_proof_refused(&mut s, &t, &hs, alg).await;
    for name in ["ES512", "es256", ""] {
        let mut header = key.header();
        header["alg"] = json!(name);
        assert_proof_refused(&mut s, &t, &key.proof_with(&header, &claims), alg).await;
    }
    let typ = "The DPoP proof typ is not dpop+jwt";
    for value in [json!("JWT"), json!("at+jwt"), json!(null), json!(1)] {
        let mut header = key.header();
        header["typ"] = value;
        assert_proof_refused(&mut s, &t, &key.proof_with(&header, &claims), typ).await;
    }
    // application/dpop+jwt is the same media type.
    let mut header = key.header();
    header["typ"] = json!("application/DPoP+JWT");
    let a = send_dpop(&mut s, "/orders/1", &t, &key.proof_with(&header, &claims)).await;
    assert_allowed(&a, "alice", "typ application/dpop+jwt");
    let malformed = "The DPoP proof is malformed";
    for junk in ["", "a.b", "a.b.c.d", "!!!.e30.sig", "e30.e30.sig"] {
        let description = if junk == "e30.e30.sig" {
            typ
        } else {
            malformed
        };
        assert_proof_refused(&mut s, &t, junk, description).await;
    }
}

#[tokio::test]
async fn more_than_one_dpop_header_is_a_bad_request() {
    let mut s = server().await;
    let key = DpopKey::es256();
    let t = dpop_token("alice", "orders:read", &key);
    let (one, two) = (key.proof("GET", HTU, &t), key.proof("GET", HTU, &t));
    let challenge = "Bearer realm=\"scopegate\", error=\"invalid_request\", \
                     error_description=\"The DPoP header is repeated or unreadable\"";
    let joined = format!("{one},{two}");
    for dpop in [vec![one.as_str(), two.as_str()], vec![joined.as_str()]] {
        let sent = Sent {
            authorization: dpop_auth(&t),
            dpop,
            ..Sent::default()
        };
        let a = s.check_with(request("GET", "/orders/1", sent)).await;
        assert_denied(&a, 400, "invalid_request", challenge, "two proofs");
    }
    // The first proof was never used: it still works alone.
    let a = send_dpop(&mut s, "/orders/1", &t, &one).await;
    assert_allowed(&a, "alice", "one proof");
}

#[tokio::test]
async fn a_certificate_bound_token_needs_its_certificate() {
    let mut s = server().await;
    let ca = TestCa::new("client-ca");
    let (right, wrong) = (ca.client("alice-device"), ca.client("mallory-device"));
    let t = mtls_token("alice", "orders:read", &right);
    let with_cert = |certificate: Option<String>| Sent {
        authorization: bearer(&t),
        certificate,
        ..Sent::default()
    };
    let a = s
        .check_with(request(
            "GET",
            "/orders/1",
            with_cert(Some(right.url_encoded())),
        ))
        .await;
    assert_allowed(&a, "alice", "right certificate");
    let cases = [
        (
            Some(wrong.url_encoded()),
            "The client certificate does not match the access token",
        ),
        (
            None,
            "The access token is bound to a client certificate that was not presented",
        ),
        (
            Some("%2D%2D%2D%2D%2DBEGIN%20CERTIFICATE".into()),
            "The client certificate cannot be read",
        ),
    ];
    for (certificate, description) in cases {
        let a = s
            .check_with(request("GET", "/orders/1", with_cert(certificate)))
            .await;
        let challenge = bearer_token_error(description);
        assert_denied(&a, 401, "binding_mismatch", &challenge, description);
    }
    // A plain bearer token does not care about a certificate.
    let plain = Sent {
        authorization: bearer(&token("bob", "orders:read")),
        certificate: Some(wrong.url_encoded()),
        ..Sent::default()
    };
    let a = s.check_with(request("GET", "/orders/1", plain)).await;
    assert_allowed(&a, "bob", "plain token with a certificate");
}

#[tokio::test]
async fn a_token_bound_both_ways_needs_both_proofs() {
    let mut s = server().await;
    let key = DpopKey::es256();
    let ca = TestCa::new("client-ca");
    let cert = ca.client("device");
    let cnf = json!({"jkt": key.thumbprint(), "x5t#S256": cert.x5t_s256()});
    let t = binding::bound_token("alice", "orders:read", cnf);
    let proof = key.proof("GET", HTU, &t);
    fn sent<'a>(t: &str, certificate: Option<String>, proof: &'a str) -> Sent<'a> {
        Sent {
            authorization: dpop_auth(t),
            dpop: vec![proof],
            certificate,
            ..Sent::default()
        }
    }
    let a = s
        .check_with(request("GET", "/orders/1", sent(&t, None, &proof)))
        .await;
    let missing = "The access token is bound to a client certificate that was not presented";
    assert_denied(
        &a,
        401,
        "binding_mismatch",
        &bearer_token_error(missing),
        "no cert",
    );
    // That proof was not remembered (the certificate failed first): usable with the cert.
    let a = s
        .check_with(request(
            "GET",
            "/orders/1",
            sent(&t, Some(cert.url_encoded()), &proof),
        ))
        .await;
    assert_allowed(&a, "alice", "both");
}

#[tokio::test]
async fn require_binding_on_a_route_refuses_plain_bearer_tokens() {
    let mut s = server().await;
    let key = DpopKey::es256();
    let ca = TestCa::new("client-ca");
    let cert = ca.client("device");
    let plain = token("bob", "orders:read");
    let dpop = dpop_token("alice", "orders:read", &key);
    let mtls = mtls_token("carol", "orders:read", &cert);
    let htu = |path: &str| format!("https://{HOST}{path}");

    // dpop route: a plain bearer token, no token, an mTLS-bound token.
    let a = s.check("GET", HOST, "/payments/1", Some(&plain)).await;
    let required = dpop_token_error("A DPoP-bound access token is required");
    assert_denied(
        &a,
        401,
        "binding_required",
        &required,
        "plain on dpop route",
    );
    let a = s.check("GET", HOST, "/payments/1", None).await;
    let challenge = format!("DPoP algs=\"{ALGS}\"");
    assert_denied(
        &a,
        401,
        "missing_credential",
        &challenge,
        "nothing on dpop route",
    );
    let sent = Sent {
        authorization: bearer(&mtls),
        certificate: Some(cert.url_encoded()),
        ..Sent::default()
    };
    let a = s.check_with(request("GET", "/payments/1", sent)).await;
    assert_denied(&a, 401, "binding_required", &required, "mtls on dpop route");
    let proof = key.proof("GET", &htu("/payments/1"), &dpop);
    let a = send_dpop(&mut s, "/payments/1", &dpop, &proof).await;
    assert_allowed(&a, "alice", "dpop on dpop route");

    // mtls route.
    let a = s.check("GET", HOST, "/certs/1", Some(&plain)).await;
    let required = bearer_token_error("A certificate-bound access token is required");
    assert_denied(
        &a,
        401,
        "binding_required",
        &required,
        "plain on mtls route",
    );
    let proof = key.proof("GET", &htu("/certs/1"), &dpop);
    let a = send_dpop(&mut s, "/certs/1", &dpop, &proof).await;
    assert_denied(&a, 401, "binding_required", &required, "dpop on mtls route");
    let sent = Sent {
        authorization: bearer(&mtls),
        certificate: Some(cert.url_encoded()),
        ..Sent::default()
    };
    let a = s.check_with(request("GET", "/certs/1", sent)).await;
    assert_allowed(&a, "carol", "mtls on mtls route");

    // any: either binding, not none.
    let a = s.check("GET", HOST, "/bound/1", Some(&plain)).await;
    let required = bearer_token_error("A sender-constrained access token is required");
    assert_denied(&a, 401, "binding_required", &required, "plain on any route");
    let proof = key.proof("GET", &htu("/bound/1"), &dpop);
    let a = send_dpop(&mut s, "/bound/1", &dpop, &proof).await;
    assert_allowed(&a, "alice", "dpop on any route");

    // A route without require_binding takes plain tokens, and still enforces a bound token's
    // binding (the DPoP-bound token without its proof is refused).
    let a = s.check("GET", HOST, "/orders/1", Some(&plain)).await;
    assert_allowed(&a, "bob", "plain on open route");
    let a = s.check("GET", HOST, "/orders/1", Some(&dpop)).await;
    let as_bearer =
        dpop_token_error("The DPoP-bound access token must be sent with the DPoP scheme");
    assert_denied(
        &a,
        401,
        "binding_mismatch",
        &as_bearer,
        "bound token on open route",
    );
}

#[tokio::test]
async fn require_binding_on_an_issuer_refuses_its_plain_bearer_tokens() {
    let mut s = server().await;
    let key = DpopKey::es256();
    let mut claims = tokens::claims("dave", "orders:read");
    claims["iss"] = json!(STRICT_ISSUER);
    let plain = tokens::sign(jsonwebtoken::Algorithm::RS256, &claims);
    let a = s.check("GET", HOST, "/orders/1", Some(&plain)).await;
    let required = dpop_token_error("A DPoP-bound access token is required");
    assert_denied(
        &a,
        401,
        "binding_required",
        &required,
        "strict issuer, plain token",
    );
    claims["cnf"] = json!({"jkt": key.thumbprint()});
    let bound = tokens::sign(jsonwebtoken::Algorithm::RS256, &claims);
    let a = send_dpop(&mut s, "/orders/1", &bound, &key.proof("GET", HTU, &bound)).await;
    assert_allowed(&a, "dave", "strict issuer, DPoP-bound token");
}

#[tokio::test]
async fn a_confirmation_method_scopegate_cannot_verify_is_refused() {
    let mut s = server().await;
    let key = DpopKey::es256();
    for cnf in [
        json!({"jwk": key.jwk}),
        json!({"kid": "k1"}),
        json!({}),
        json!("jkt"),
    ] {
        let t = binding::bound_token("alice", "orders:read", cnf.clone());
        let a = s.check("GET", HOST, "/orders/1", Some(&t)).await;
        let description = "The access token confirmation method is not supported";
        assert_denied(
            &a,
            401,
            "binding_mismatch",
            &bearer_token_error(description),
            &cnf.to_string(),
        );
    }
}
