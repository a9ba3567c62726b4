//! Mints test tokens with the demo keys in `examples/keys/` (public, test-only keys).

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use super::repo_path;

pub const ISSUER: &str = "https://idp.test/";
pub const AUDIENCE: &str = "orders-api";

pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn key_file(name: &str) -> Vec<u8> {
    std::fs::read(repo_path(&format!("examples/keys/{name}"))).unwrap()
}

/// The demo private key and kid for an algorithm.
pub fn demo_key(alg: Algorithm) -> (EncodingKey, &'static str) {
    match alg {
        Algorithm::RS256
        | Algorithm::RS384
        | Algorithm::RS512
        | Algorithm::PS256
        | Algorithm::PS384
        | Algorithm::PS512 => (
            EncodingKey::from_rsa_pem(&key_file("demo-rs256.key.pem")).unwrap(),
            "demo-rsa-1",
        ),
        Algorithm::ES256 => (
            EncodingKey::from_ec_pem(&key_file("demo-es256.key.pem")).unwrap(),
            "demo-ec-p256-1",
        ),
        Algorithm::ES384 => (
            EncodingKey::from_ec_pem(&key_file("demo-es384.key.pem")).unwrap(),
            "demo-ec-p384-1",
        ),
        Algorithm::EdDSA => (
            EncodingKey::from_ed_pem(&key_file("demo-eddsa.key.pem")).unwrap(),
            "demo-ed25519-1",
        ),
        _ => (
            EncodingKey::from_secret(key_file("demo-hs256.secret").trim_ascii_end()),
            "hs",
        ),
    }
}

/// A key that no issuer trusts (for forgery tests).
pub fn attacker_key() -> EncodingKey {
    EncodingKey::from_rsa_pem(&key_file("attacker-rs256.key.pem")).unwrap()
}

/// Standard valid claims for `sub` with `scope`, valid for an hour.
pub fn claims(sub: &str, scope: &str) -> Value {
    let now = now();
    json!({"iss": ISSUER, "aud": AUDIENCE, "sub": sub, "client_id": "test-client", "scope": scope,
           "iat": now, "nbf": now, "exp": now + 3600, "jti": format!("jti-{sub}-{scope}-{now}")})
}

/// Signs `claims` with the demo key for `alg`, with `typ: at+jwt` and the demo kid.
pub fn sign(alg: Algorithm, claims: &Value) -> String {
    // As `scopegate serve` does before jsonwebtoken's first use (parsed RSA keys).
    scopegate::token::rsa_keys::install();
    let (key, kid) = demo_key(alg);
    let mut header = Header::new(alg);
    header.typ = Some("at+jwt".into());
    header.kid = Some(kid.into());
    encode(&header, claims, &key).unwrap()
}

/// An RS256 token for `sub` with `scope`.
pub fn token(sub: &str, scope: &str) -> String {
    sign(Algorithm::RS256, &claims(sub, scope))
}

/// The issuer entry (as YAML) trusting the demo JWKS for the test issuer.
pub fn issuer_yaml() -> String {
    format!(
        "  test:\n    issuer: {ISSUER}\n    audiences: [{AUDIENCE}]\n    algorithms: [RS256, PS256, ES256, ES384, EdDSA]\n    jwks_file: {}\n    require_typ: at+jwt\n",
        repo_path("examples/keys/demo-jwks.json").display()
    )
}

/// The issuer entry as JSON (for etcd).
pub fn issuer_json() -> String {
    let jwks: Value = serde_json::from_slice(&key_file("demo-jwks.json")).unwrap();
    json!({"issuer": ISSUER, "audiences": [AUDIENCE], "algorithms": ["RS256", "ES256", "ES384", "EdDSA"],
           "jwks": jwks, "require_typ": "at+jwt"})
    .to_string()
}
