//! Sender-constrained test credentials: DPoP keys generated per test (rcgen) and the proofs they
//! sign (RFC 9449), access tokens bound to a DPoP key (`cnf.jkt`) or to a client certificate
//! (`cnf["x5t#S256"]`, RFC 8705), the test CA that issues client and server certificates
//! ([`super::pki`]'s, named here too), and an Envoy listener that terminates TLS and requires
//! client certificates, with an HTTPS client for it. Thumbprints are computed here (and in
//! `pki`) independently of scopegate's own code.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test harness: a step that fails must fail the calling test, with its message"
)]

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey};
use rcgen::KeyPair;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};

use super::envoy::{is_framed, parse_response, HttpResponse};
pub use super::pki::Leaf;
#[allow(
    unused_imports,
    reason = "the test CA of tests/binding.rs and tests/envoy_binding.rs, named from here"
)]
pub use super::pki::TestCa;
use super::tokens;

pub fn b64(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// `ath`: base64url SHA-256 of the access token.
pub fn ath(token: &str) -> String {
    b64(Sha256::digest(token.as_bytes()))
}

/// A DPoP key pair, fresh for each call.
pub struct DpopKey {
    pub alg: Algorithm,
    pub key: EncodingKey,
    /// The public JWK, as a client puts it in the proof header.
    pub jwk: Value,
}

impl DpopKey {
    /// A new P-256 key (ES256).
    pub fn es256() -> DpopKey {
        let pair = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let point = pair.public_key_raw();
        assert_eq!(point.len(), 65, "uncompressed P-256 point");
        DpopKey {
            alg: Algorithm::ES256,
            key: EncodingKey::from_ec_der(&pair.serialize_der()),
            jwk: json!({"kty": "EC", "crv": "P-256", "x": b64(&point[1..33]), "y": b64(&point[33..])}),
        }
    }

    /// A new Ed25519 key (EdDSA).
    pub fn ed25519() -> DpopKey {
        let pair = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        DpopKey {
            alg: Algorithm::EdDSA,
            key: EncodingKey::from_ed_der(&pair.serialize_der()),
            jwk: json!({"kty": "OKP", "crv": "Ed25519", "x": b64(pair.public_key_raw())}),
        }
    }

    /// RFC 7638 thumbprint of this key.
    pub fn thumbprint(&self) -> String {
        thumbprint_of(&self.jwk)
    }

    /// The standard proof header for this key.
    pub fn header(&self) -> Value {
        json!({"typ": "dpop+jwt", "alg": alg_name(self.alg), "jwk": self.jwk})
    }

    /// A valid proof for `method` `htu` with `token`, issued now, with a fresh jti.
    pub fn proof(&self, method: &str, htu: &str, token: &str) -> String {
        self.proof_with(&self.header(), &proof_claims(method, htu, token))
    }

    /// A proof with any header and claims, signed by this key with its algorithm.
    pub fn proof_with(&self, header: &Value, claims: &Value) -> String {
        sign_raw(header, claims, self.alg, &self.key)
    }
}

/// RFC 7638 thumbprint of an EC or OKP JWK, written out by hand (not scopegate's code).
pub fn thumbprint_of(j: &Value) -> String {
    let canonical = match j["kty"].as_str().unwrap() {
        "EC" => format!(
            r#"{{"crv":"{}","kty":"EC","x":"{}","y":"{}"}}"#,
            j["crv"].as_str().unwrap(),
            j["x"].as_str().unwrap(),
            j["y"].as_str().unwrap()
        ),
        "OKP" => format!(
            r#"{{"crv":"{}","kty":"OKP","x":"{}"}}"#,
            j["crv"].as_str().unwrap(),
            j["x"].as_str().unwrap()
        ),
        other => panic!("no thumbprint for kty {other}"),
    };
    b64(Sha256::digest(canonical.as_bytes()))
}

pub fn alg_name(alg: Algorithm) -> &'static str {
    match alg {
        Algorithm::ES256 => "ES256",
        Algorithm::EdDSA => "EdDSA",
        Algorithm::HS256 => "HS256",
        Algorithm::RS256 => "RS256",
        other => panic!("no name for {other:?} here"),
    }
}

/// `jti` (fresh), `htm`, `htu`, `iat` (now) and `ath` of `token`.
pub fn proof_claims(method: &str, htu: &str, token: &str) -> Value {
    json!({"jti": uuid::Uuid::new_v4().to_string(), "htm": method, "htu": htu,
           "iat": tokens::now(), "ath": ath(token)})
}

/// A compact JWS of exactly `header` and `claims` (no field added or dropped).
pub fn sign_raw(header: &Value, claims: &Value, alg: Algorithm, key: &EncodingKey) -> String {
    let signing_input = format!("{}.{}", b64(header.to_string()), b64(claims.to_string()));
    let signature = jsonwebtoken::crypto::sign(signing_input.as_bytes(), key, alg).unwrap();
    format!("{signing_input}.{signature}")
}

/// An RS256 access token of the test issuer for `sub` with `scope`, bound by `cnf`.
pub fn bound_token(sub: &str, scope: &str, cnf: Value) -> String {
    let mut claims = tokens::claims(sub, scope);
    claims["cnf"] = cnf;
    tokens::sign(Algorithm::RS256, &claims)
}

/// A token bound to `key` (`cnf.jkt`).
pub fn dpop_token(sub: &str, scope: &str, key: &DpopKey) -> String {
    bound_token(sub, scope, json!({"jkt": key.thumbprint()}))
}

/// A token bound to `cert` (`cnf["x5t#S256"]`).
pub fn mtls_token(sub: &str, scope: &str, cert: &Leaf) -> String {
    bound_token(sub, scope, json!({"x5t#S256": cert.x5t_s256()}))
}

/// The PEM body of a DER certificate, for tests that build PEM by hand.
pub fn pem_of(der: &[u8]) -> String {
    format!(
        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
        STANDARD.encode(der)
    )
}

/// The files for a TLS listener on Envoy that requires client certificates: its server
/// certificate and key, and the CA its clients' certificates must chain to.
pub struct TlsListener {
    dir: tempfile::TempDir,
}

impl TlsListener {
    pub fn new(server_cert_pem: &str, server_key_pem: &str, client_ca_pem: &str) -> TlsListener {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("server.pem"), server_cert_pem).unwrap();
        std::fs::write(dir.path().join("server.key"), server_key_pem).unwrap();
        std::fs::write(dir.path().join("client-ca.pem"), client_ca_pem).unwrap();
        TlsListener { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    /// `config` (the example) with its listener terminating TLS and requiring a client
    /// certificate (what a certificate-bound deployment adds; the ext_authz filter, with its
    /// `include_peer_certificate`, is the example's own).
    pub fn apply(&self, config: &str) -> String {
        let anchor = "    filter_chains:\n    - filters:\n";
        assert_eq!(config.matches(anchor).count(), 1, "example listener layout");
        let tls = format!(
            r#"    filter_chains:
    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          require_client_certificate: true
          common_tls_context:
            tls_certificates:
            - certificate_chain: {{ filename: {cert} }}
              private_key: {{ filename: {key} }}
            validation_context:
              trusted_ca: {{ filename: {ca} }}
      filters:
"#,
            cert = self.path("server.pem"),
            key = self.path("server.key"),
            ca = self.path("client-ca.pem"),
        );
        config.replacen(anchor, &tls, 1)
    }
}

/// A client certificate and its key, PEM.
pub type Identity<'a> = (&'a str, &'a str);

/// One HTTP/1.1 `GET` over TLS to `addr` (verified as `server_name` against `ca_pem`), with
/// `Host: host`, presenting `client` if given. Errors (a refused handshake included) are returned.
pub async fn https_get(
    addr: SocketAddr,
    server_name: &str,
    ca_pem: &str,
    client: Option<Identity<'_>>,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> std::io::Result<HttpResponse> {
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
        .unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match client {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    let mut head = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("Connection: close\r\n\r\n");
    let name = ServerName::try_from(server_name.to_string()).unwrap();
    let exchange = async {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let mut stream = connector.connect(name, tcp).await?;
        stream.write_all(head.as_bytes()).await?;
        let mut raw = Vec::new();
        let mut chunk = [0u8; 8192];
        loop {
            if is_framed(&raw) {
                if let Ok(response) = parse_response(&raw) {
                    return Ok(response);
                }
            }
            match stream.read(&mut chunk).await? {
                0 => return parse_response(&raw),
                n => raw.extend_from_slice(&chunk[..n]),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no complete response"))?
}
