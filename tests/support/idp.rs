//! A real OpenID provider for the tests: npm `oidc-provider` (panva, OpenID Certified), run by
//! `tests/idp/server.mjs` under Node on a loopback port, over HTTPS with a certificate from a
//! CA the test generates (rcgen). It issues RFC 9068 JWT access tokens (RS256 and ES256) and
//! opaque ones through the client credentials grant with resource indicators, answers RFC 7662
//! introspection and RFC 7009 revocation, and binds tokens with DPoP (RFC 9449, `cnf.jkt`) or to
//! a TLS client certificate (RFC 8705, `cnf.x5t#S256`). The issuer is Keycloak-shaped:
//! `https://127.0.0.1:<port>/realms/test`.
//!
//! Test-only endpoints count `/jwks`, discovery, introspection and token requests, rotate and
//! retire signing keys, and make `/jwks` answer garbage or errors. Missing Node or packages fail
//! the test with how to install them (never a skip).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test harness: a step that fails must fail the calling test, with its message"
)]

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rcgen::{KeyPair, PKCS_ECDSA_P256_SHA256};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// The test PKI; `ClientCert`: a certificate and its key (PEM), with its RFC 8705 thumbprint.
pub use super::pki::{Leaf as ClientCert, TestCa};
use super::repo_path;

const INSTALL_HINT: &str = "this test needs a real OpenID provider: Node.js 20+ with npm, and the \
     pinned packages in tests/idp (run `scripts/setup.sh --test`, or `npm ci --prefix tests/idp`)";

/// How long the IdP may take to print its address.
/// How long one start may take (it generates RSA keys; a loaded 2-CPU machine may be slow).
const STARTUP_TIMEOUT: Duration = Duration::from_secs(45);
/// Starts tried before a test fails: a start that hangs (seen once in CI, not reproduced) is
/// reported with Node's diagnostic report and tried once more.
const START_ATTEMPTS: u32 = 2;

/// Audience of every resource server of the test IdP (`aud` of its access tokens).
pub const AUDIENCE: &str = "orders-api";
/// Resource indicator (RFC 8707) for RS256-signed JWT access tokens.
pub const RESOURCE_JWT: &str = "https://orders.test/jwt";
/// Resource indicator for ES256-signed JWT access tokens.
pub const RESOURCE_ES256: &str = "https://orders.test/es256";
/// Resource indicator for opaque access tokens (only introspection can read them).
pub const RESOURCE_OPAQUE: &str = "https://orders.test/opaque";

/// A registered client of the test IdP.
#[derive(Debug, Clone, Copy)]
pub struct IdpClient {
    pub id: &'static str,
    pub secret: &'static str,
}

/// Plain client credentials (may still ask for a DPoP-bound token by sending a proof).
pub const ORDERS_CLIENT: IdpClient = IdpClient {
    id: "orders-client",
    secret: "orders-secret",
};
/// Always gets DPoP-bound tokens (`dpop_bound_access_tokens`).
pub const DPOP_CLIENT: IdpClient = IdpClient {
    id: "dpop-client",
    secret: "dpop-secret",
};
/// Gets certificate-bound tokens (`tls_client_certificate_bound_access_tokens`).
pub const MTLS_CLIENT: IdpClient = IdpClient {
    id: "mtls-client",
    secret: "mtls-secret",
};
/// scopegate's own client, for introspection (RFC 7662 §2.1).
pub const SCOPEGATE_CLIENT: IdpClient = IdpClient {
    id: "scopegate",
    secret: "scopegate-secret",
};

/// How to start the IdP.
#[derive(Debug, Clone, Default)]
pub struct IdpOptions {
    /// `Cache-Control: max-age` on `/jwks` (none: oidc-provider's default, no max-age).
    pub jwks_max_age: Option<u64>,
    /// Listen on this port (e.g. to come back where a scopegate expects it); 0/None: any.
    pub port: Option<u16>,
}

/// What `/__test/stats` counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdpStats {
    pub jwks: u64,
    pub discovery: u64,
    pub introspection: u64,
    pub token: u64,
    /// Signing key ids, newest (the one that signs) first.
    pub kids: Vec<String>,
}

/// A token request (client credentials grant).
#[derive(Debug, Clone)]
pub struct TokenRequest<'a> {
    pub client: IdpClient,
    pub scope: &'a str,
    /// Resource indicator; `None`: the IdP's default (RS256 JWT).
    pub resource: Option<&'a str>,
    /// A DPoP proof for the token endpoint (`DPoP` header).
    pub dpop: Option<String>,
    /// A TLS client certificate to present (certificate-bound tokens).
    pub client_cert: Option<&'a ClientCert>,
}

impl<'a> TokenRequest<'a> {
    pub fn new(client: IdpClient, scope: &'a str, resource: &'a str) -> Self {
        TokenRequest {
            client,
            scope,
            resource: Some(resource),
            dpop: None,
            client_cert: None,
        }
    }
}

/// The token endpoint's answer.
#[derive(Debug, Clone)]
pub struct TokenResponse {
    pub access_token: String,
    pub token_type: String,
    pub expires_in: i64,
    pub scope: Option<String>,
}

impl TokenResponse {
    /// The JWT payload (panics for an opaque token).
    pub fn claims(&self) -> Value {
        jwt_part(&self.access_token, 1)
    }

    /// The JOSE header (panics for an opaque token).
    pub fn header(&self) -> Value {
        jwt_part(&self.access_token, 0)
    }
}

/// Decodes one part of a compact JWT, without verifying anything.
pub fn jwt_part(token: &str, index: usize) -> Value {
    let part = token.split('.').nth(index).expect("a compact JWT");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).expect("base64url")).expect("JSON")
}

/// The test IdP's certificate authority (its server certificate and client certificates): a
/// [`TestCa`] whose server certificates are for `localhost` and 127.0.0.1.
pub struct IdpCa(pub TestCa);

impl IdpCa {
    /// A server certificate for `localhost` and 127.0.0.1.
    pub fn server(&self) -> ClientCert {
        self.0.server("localhost")
    }
}

/// `pem` and `client` (for mTLS-bound tokens and for Envoy's downstream TLS) are [`TestCa`]'s.
impl std::ops::Deref for IdpCa {
    type Target = TestCa;

    fn deref(&self) -> &TestCa {
        &self.0
    }
}

/// An ES256 key pair for DPoP proofs (RFC 9449).
pub struct DpopKey {
    key: EncodingKey,
    /// The public JWK as it goes into a proof's `jwk` header.
    pub jwk: Value,
}

impl DpopKey {
    pub fn generate() -> DpopKey {
        let pair = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let point = pair.public_key_raw();
        assert_eq!(point.len(), 65, "uncompressed P-256 point");
        let jwk = json!({
            "kty": "EC", "crv": "P-256",
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&point[33..]),
        });
        DpopKey {
            key: EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap(),
            jwk,
        }
    }

    /// RFC 7638 JWK thumbprint (what `cnf.jkt` of a DPoP-bound token carries).
    pub fn thumbprint(&self) -> String {
        let canonical = format!(
            r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
            self.jwk["x"].as_str().unwrap(),
            self.jwk["y"].as_str().unwrap()
        );
        URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()))
    }

    /// A proof for `htm` `htu`; `claims` may add or override anything (`ath`, `iat`, `jti`,
    /// `nonce`, …; a `null` removes a claim).
    pub fn proof(&self, htm: &str, htu: &str, claims: Value) -> String {
        let mut payload = json!({
            "jti": uuid::Uuid::new_v4().to_string(),
            "htm": htm,
            "htu": htu,
            "iat": unix_now(),
        });
        for (k, v) in claims.as_object().cloned().unwrap_or_default() {
            match v {
                Value::Null => payload.as_object_mut().unwrap().remove(&k),
                v => payload.as_object_mut().unwrap().insert(k, v),
            };
        }
        let mut header = Header::new(Algorithm::ES256);
        header.typ = Some("dpop+jwt".into());
        header.jwk = Some(serde_json::from_value(self.jwk.clone()).unwrap());
        jsonwebtoken::encode(&header, &payload, &self.key).unwrap()
    }
}

/// A compact JWS that names `iss` and a distinct bogus `kid` (`n` and a UUID), RS256, with
/// random signature bytes: no key is ever tried for it, since its kid matches none.
pub fn bogus_kid_token(iss: &str, n: usize) -> String {
    let now = unix_now();
    let header = json!({"alg": "RS256", "typ": "at+jwt",
                        "kid": format!("bogus-{n:05}-{}", uuid::Uuid::new_v4())});
    let claims = json!({"iss": iss, "aud": AUDIENCE, "sub": "mallory", "scope": "orders:read",
                        "iat": now, "exp": now + 3600});
    let signature: Vec<u8> = (0..256).map(|_| fastrand::u8(..)).collect();
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        URL_SAFE_NO_PAD.encode(signature)
    )
}

/// base64url(SHA-256(access token)): a DPoP proof's `ath`.
pub fn ath(access_token: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(access_token.as_bytes()))
}

pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// The `node` binary on PATH; panics with how to install it (and the packages) when missing.
#[allow(
    clippy::disallowed_methods,
    reason = "the test run's environment, not scopegate's configuration"
)]
pub fn node_binary() -> PathBuf {
    let node = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join("node"))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| panic!("no `node` on PATH: {INSTALL_HINT}"));
    let version = Command::new(&node)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let major: u32 = version
        .trim_start_matches('v')
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    assert!(
        major >= 20,
        "node {version:?} is too old (20 or newer): {INSTALL_HINT}"
    );
    let package = repo_path("tests/idp/node_modules/oidc-provider/package.json");
    assert!(
        package.is_file(),
        "{} is missing: {INSTALL_HINT}",
        package.display()
    );
    node
}

/// A running test IdP (killed on drop).
pub struct Idp {
    pub issuer: String,
    pub port: u16,
    /// The CA that signed the IdP's certificate (PEM file): scopegate's `ca_file`.
    pub ca_file: PathBuf,
    pub ca: IdpCa,
    dir: tempfile::TempDir,
    options: IdpOptions,
    child: Option<Child>,
    stderr: Option<std::thread::JoinHandle<String>>,
    http: reqwest::Client,
}

impl Idp {
    pub async fn start() -> Idp {
        Idp::start_with(IdpOptions::default()).await
    }

    pub async fn start_with(options: IdpOptions) -> Idp {
        let node = node_binary();
        let dir = tempfile::tempdir().unwrap();
        let ca = IdpCa(TestCa::new("scopegate test IdP CA"));
        let server = ca.server();
        let ca_file = dir.path().join("idp-ca.pem");
        std::fs::write(&ca_file, ca.pem()).unwrap();
        std::fs::write(dir.path().join("idp.crt"), &server.cert_pem).unwrap();
        std::fs::write(dir.path().join("idp.key"), &server.key_pem).unwrap();
        let http = https_client(&ca.pem(), None);
        let mut idp = Idp {
            issuer: String::new(),
            port: 0,
            ca_file,
            ca,
            dir,
            options,
            child: None,
            stderr: None,
            http,
        };
        idp.spawn(&node).await;
        idp
    }

    fn write_config(&self) -> PathBuf {
        let path = self.dir.path().join("idp.json");
        let config = json!({
            "cert_file": self.dir.path().join("idp.crt"),
            "key_file": self.dir.path().join("idp.key"),
            "port": self.options.port.unwrap_or(0),
            "jwks_max_age": self.options.jwks_max_age,
        });
        std::fs::write(&path, config.to_string()).unwrap();
        path
    }

    async fn spawn(&mut self, node: &Path) {
        let mut hangs = Vec::new();
        for attempt in 1..=START_ATTEMPTS {
            match self.try_spawn(node).await {
                Ok(()) => {
                    if !hangs.is_empty() {
                        eprintln!(
                            "test IdP: started on attempt {attempt}; earlier hang(s):\n{}",
                            hangs.join("\n")
                        );
                    }
                    return;
                }
                Err(Start::Exited(log)) => {
                    panic!("the test IdP exited before it listened: {log}\n({INSTALL_HINT})")
                }
                Err(Start::Hung(report)) => hangs.push(report),
            }
        }
        panic!(
            "the test IdP did not start within {STARTUP_TIMEOUT:?}, {START_ATTEMPTS} times:\n{}\n({INSTALL_HINT})",
            hangs.join("\n")
        );
    }

    async fn try_spawn(&mut self, node: &Path) -> Result<(), Start> {
        let config = self.write_config();
        let reports = self.dir.path().join("node-reports");
        let mut child = Command::new(node)
            // On SIGUSR2, Node writes a diagnostic report (JavaScript and native stacks): what a
            // hung start is doing.
            .arg("--report-on-signal")
            .arg("--report-signal=SIGUSR2")
            .arg(format!("--report-directory={}", reports.display()))
            .arg(repo_path("tests/idp/server.mjs"))
            .arg(&config)
            .current_dir(repo_path("tests/idp"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start node: {e}; {INSTALL_HINT}"));
        let stdout = child.stdout.take().unwrap();
        let mut stderr = child.stderr.take().unwrap();
        self.stderr = Some(std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            text
        }));
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            let _ = reader.read_line(&mut line);
            let _ = tx.send(line);
            // Keep draining: oidc-provider logs notices to stdout, and a closed pipe kills it.
            let _ = std::io::copy(&mut reader, &mut std::io::sink());
        });
        let pid = child.id();
        self.child = Some(child);
        let line = tokio::task::spawn_blocking(move || rx.recv_timeout(STARTUP_TIMEOUT))
            .await
            .unwrap();
        let line = match line {
            Ok(line) if !line.is_empty() => line,
            Ok(_) => return Err(Start::Exited(self.stop_and_collect())),
            Err(_) => {
                let report = node_report(pid, &reports).await;
                let log = self.stop_and_collect();
                return Err(Start::Hung(format!("stderr: {log}\nNode report: {report}")));
            }
        };
        let started: Value = serde_json::from_str(line.trim()).unwrap();
        self.port = started["port"].as_u64().unwrap() as u16;
        self.issuer = started["issuer"].as_str().unwrap().to_string();
        self.options.port = Some(self.port);
        Ok(())
    }

    /// Kills the IdP (as if its host went away): connections are refused from now on.
    pub fn stop(&mut self) {
        let _ = self.stop_and_collect();
    }

    fn stop_and_collect(&mut self) -> String {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.stderr
            .take()
            .map(|h| h.join().unwrap_or_default())
            .unwrap_or_default()
    }

    /// Starts it again on the same port (fresh signing keys: oidc-provider's keys live in the
    /// process).
    pub async fn restart(&mut self) {
        self.stop();
        let node = node_binary();
        self.spawn(&node).await;
    }

    /// `<issuer>/<path>`.
    pub fn url(&self, path: &str) -> String {
        format!("{}/{}", self.issuer, path.trim_start_matches('/'))
    }

    /// The token endpoint.
    pub fn token_endpoint(&self) -> String {
        self.url("token")
    }

    /// Runs a client credentials grant; panics unless the IdP issues a token.
    pub async fn token(&self, request: &TokenRequest<'_>) -> TokenResponse {
        match self.try_token(request).await {
            Ok(token) => token,
            Err((status, body)) => panic!("token request refused: {status} {body}"),
        }
    }

    /// A client credentials grant: the token, or the IdP's status and error body.
    pub async fn try_token(
        &self,
        request: &TokenRequest<'_>,
    ) -> Result<TokenResponse, (u16, String)> {
        let mut form = vec![
            ("grant_type", "client_credentials"),
            ("scope", request.scope),
        ];
        if let Some(resource) = request.resource {
            form.push(("resource", resource));
        }
        let http = match request.client_cert {
            Some(cert) => https_client(&self.ca.pem(), Some(cert)),
            None => self.http.clone(),
        };
        let mut builder = http
            .post(self.token_endpoint())
            .basic_auth(request.client.id, Some(request.client.secret))
            .form(&form);
        if let Some(proof) = &request.dpop {
            builder = builder.header("dpop", proof);
        }
        let response = builder.send().await.expect("token endpoint reachable");
        let status = response.status().as_u16();
        let body = response.text().await.unwrap();
        if status != 200 {
            return Err((status, body));
        }
        let v: Value = serde_json::from_str(&body).unwrap();
        Ok(TokenResponse {
            access_token: v["access_token"].as_str().unwrap().to_string(),
            token_type: v["token_type"].as_str().unwrap_or("").to_string(),
            expires_in: v["expires_in"].as_i64().unwrap_or(0),
            scope: v["scope"].as_str().map(str::to_string),
        })
    }

    /// An RS256 JWT access token for `orders-api` from the plain client.
    pub async fn jwt(&self, scope: &str) -> String {
        self.token(&TokenRequest::new(ORDERS_CLIENT, scope, RESOURCE_JWT))
            .await
            .access_token
    }

    /// An opaque access token for `orders-api` from the plain client.
    pub async fn opaque(&self, scope: &str) -> String {
        self.token(&TokenRequest::new(ORDERS_CLIENT, scope, RESOURCE_OPAQUE))
            .await
            .access_token
    }

    /// Revokes a token at the IdP (RFC 7009), as the client it was issued to.
    pub async fn revoke(&self, client: IdpClient, token: &str) {
        let response = self
            .http
            .post(self.url("token/revocation"))
            .basic_auth(client.id, Some(client.secret))
            .form(&[("token", token), ("token_type_hint", "access_token")])
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let body = response.text().await.unwrap_or_default();
        assert_eq!(status, 200, "revocation refused: {body}");
    }

    /// What the IdP's introspection endpoint says about a token (asked as scopegate).
    pub async fn introspect(&self, token: &str) -> Value {
        let response = self
            .http
            .post(self.url("token/introspection"))
            .basic_auth(SCOPEGATE_CLIENT.id, Some(SCOPEGATE_CLIENT.secret))
            .form(&[("token", token)])
            .send()
            .await
            .unwrap();
        serde_json::from_str(&response.text().await.unwrap()).unwrap()
    }

    async fn test_endpoint(&self, method: reqwest::Method, path: &str) -> Value {
        let url = format!("https://127.0.0.1:{}/__test/{path}", self.port);
        let response = self.http.request(method, url).send().await.unwrap();
        assert_eq!(response.status().as_u16(), 200, "/__test/{path}");
        serde_json::from_str(&response.text().await.unwrap()).unwrap()
    }

    /// Request counts and signing key ids.
    pub async fn stats(&self) -> IdpStats {
        let v = self.test_endpoint(reqwest::Method::GET, "stats").await;
        let count = |name: &str| v[name].as_u64().unwrap();
        IdpStats {
            jwks: count("jwks"),
            discovery: count("discovery"),
            introspection: count("introspection"),
            token: count("token"),
            kids: kids(&v),
        }
    }

    /// Adds a new RSA signing key, which signs new tokens; the old ones stay published.
    /// Returns the signing key ids, newest first.
    pub async fn rotate(&self) -> Vec<String> {
        kids(&self.test_endpoint(reqwest::Method::POST, "rotate").await)
    }

    /// Stops publishing every RSA signing key but the newest.
    pub async fn retire(&self) -> Vec<String> {
        kids(&self.test_endpoint(reqwest::Method::POST, "retire").await)
    }

    /// `/jwks` answers normally (`ok`), with a truncated non-JWKS body (`garbage`) or 500 (`error`).
    pub async fn set_jwks_mode(&self, mode: &str) {
        self.test_endpoint(reqwest::Method::POST, &format!("jwks-mode?mode={mode}"))
            .await;
    }

    /// `Cache-Control: max-age` on `/jwks` from now on (`None`: no header).
    pub async fn set_jwks_max_age(&self, seconds: Option<u64>) {
        let query = seconds.map(|s| format!("?seconds={s}")).unwrap_or_default();
        self.test_endpoint(reqwest::Method::POST, &format!("jwks-max-age{query}"))
            .await;
    }

    /// Introspection answers normally (`ok`), with HTTP 500 (`error`), or after 3 s (`slow`).
    pub async fn set_introspection_mode(&self, mode: &str) {
        self.test_endpoint(
            reqwest::Method::POST,
            &format!("introspection-mode?mode={mode}"),
        )
        .await;
    }

    /// A scopegate issuer entry for this IdP: discovery, the test CA, `orders-api`, RS256 and
    /// ES256, RFC 9068 `typ`. `extra` adds or replaces fields (e.g. `refresh_min`, `introspection`).
    pub fn issuer_entry(&self, extra: Value) -> Value {
        let mut entry = json!({
            "issuer": self.issuer,
            "audiences": [AUDIENCE],
            "algorithms": ["RS256", "ES256"],
            "discovery": true,
            "ca_file": self.ca_file,
            "require_typ": "at+jwt",
        });
        for (k, v) in extra.as_object().cloned().unwrap_or_default() {
            entry.as_object_mut().unwrap().insert(k, v);
        }
        entry
    }

    /// A rules file (YAML) trusting this IdP as issuer `idp` ([`Idp::issuer_entry`] with
    /// `extra`), with `GET /orders/{id}` needing `orders:read`, `POST /orders/**` needing
    /// `orders:write`, and a public `/healthz`, all on `api.example.com`.
    pub fn rules(&self, extra: Value) -> String {
        format!(
            "issuers:\n  idp: {}\nroutes:\n{}",
            self.issuer_entry(extra),
            r#"  health: {host: "*", path: /healthz, require: {public: true}}
  orders-read: {host: api.example.com, path: "/orders/{id}", methods: [GET], require: {all: [orders:read]}}
  orders-write: {host: api.example.com, path: /orders/**, methods: [POST], require: {all: [orders:write]}}
"#
        )
    }

    /// Writes scopegate's introspection client secret to a file and returns the `introspection`
    /// issuer field (endpoint from discovery).
    pub fn introspection_entry(&self) -> Value {
        let secret = self.dir.path().join("scopegate-client-secret");
        std::fs::write(&secret, SCOPEGATE_CLIENT.secret).unwrap();
        json!({"client_id": SCOPEGATE_CLIENT.id, "client_secret_file": secret})
    }
}

impl Drop for Idp {
    fn drop(&mut self) {
        let log = self.stop_and_collect();
        if std::thread::panicking() && !log.trim().is_empty() {
            eprintln!("--- test IdP stderr ---\n{log}--- end of test IdP stderr ---");
        }
    }
}

fn kids(v: &Value) -> Vec<String> {
    v["kids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap().to_string())
        .collect()
}

/// An HTTPS client that trusts only `ca_pem`, optionally presenting a client certificate.
pub fn https_client(ca_pem: &str, identity: Option<&ClientCert>) -> reqwest::Client {
    let roots = reqwest::Certificate::from_pem_bundle(ca_pem.as_bytes()).unwrap();
    let mut builder = reqwest::Client::builder()
        .tls_certs_only(roots)
        .no_proxy()
        .timeout(Duration::from_secs(10));
    if let Some(cert) = identity {
        let pem = format!("{}\n{}", cert.key_pem, cert.cert_pem);
        builder = builder.identity(reqwest::Identity::from_pem(pem.as_bytes()).unwrap());
    }
    builder.build().unwrap()
}

/// Why one start of the IdP failed.
enum Start {
    /// The process ended before listening (its stderr).
    Exited(String),
    /// It did not listen in time (stderr and Node's diagnostic report).
    Hung(String),
}

/// Asks a running Node for its diagnostic report and returns its stacks (or why not).
async fn node_report(pid: u32, dir: &Path) -> String {
    let signalled = Command::new("kill")
        .args(["-USR2", &pid.to_string()])
        .status()
        .is_ok_and(|s| s.success());
    if !signalled {
        return "no report: the process could not be signalled".into();
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        let report = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .find(|e| e.path().extension().is_some_and(|x| x == "json"))
            .and_then(|e| std::fs::read_to_string(e.path()).ok())
            .and_then(|text| serde_json::from_str::<Value>(&text).ok());
        if let Some(report) = report {
            let native: Vec<String> = report["nativeStack"]
                .as_array()
                .into_iter()
                .flatten()
                .take(12)
                .map(|frame| frame["symbol"].as_str().unwrap_or("?").to_string())
                .collect();
            return format!(
                "javascriptStack {}; nativeStack {native:?}",
                report["javascriptStack"]
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    "no report within 10 s".into()
}
