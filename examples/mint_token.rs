//! Mints a signed JWT access token (RFC 9068 shape) for trying scopegate out.
//!
//! DEMO ONLY: by default it signs with the public demo key in `examples/keys/`, which
//! `examples/rules.yaml` trusts. Never trust the demo keys anywhere real.
//!
//! ```text
//! cargo run --example mint_token -- --scope "orders:read"
//! cargo run --example mint_token -- --alg ES256 --scope "orders:write" --ttl 10m
//! cargo run --example mint_token -- --jkt "$(cargo run -q --example dpop_proof -- thumbprint --key client.p8)"
//! ```
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::disallowed_methods,
    clippy::disallowed_types,
    reason = "tests, benchmarks and examples: a failed step stops them with its message, and they read their own environment"
)]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Parser;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::json;

#[derive(Parser)]
struct Args {
    /// Signing algorithm: RS256 (demo RSA key) or ES256 (demo P-256 key), or any with --key.
    #[arg(long, default_value = "RS256")]
    alg: String,
    /// PEM private key (PKCS#8). Default: the demo key for --alg.
    #[arg(long)]
    key: Option<std::path::PathBuf>,
    /// Key id header. Default: the demo key's kid for --alg.
    #[arg(long)]
    kid: Option<String>,
    #[arg(long, default_value = "https://idp.example.com/")]
    iss: String,
    #[arg(long, default_value = "orders-api")]
    aud: String,
    #[arg(long, default_value = "alice")]
    sub: String,
    #[arg(long, default_value = "demo-client")]
    client_id: String,
    /// Space-separated scopes.
    #[arg(long, default_value = "orders:read")]
    scope: String,
    /// Lifetime, e.g. 1h, 10m.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    ttl: Duration,
    /// JOSE typ header.
    #[arg(long, default_value = "at+jwt")]
    typ: String,
    /// jti claim (default: random).
    #[arg(long)]
    jti: Option<String>,
    /// Bind the token to a DPoP key: its RFC 7638 thumbprint (`cnf.jkt`, RFC 9449).
    #[arg(long)]
    jkt: Option<String>,
    /// Bind the token to a client certificate: base64url SHA-256 of its DER (`cnf["x5t#S256"]`,
    /// RFC 8705), e.g. `openssl x509 -in client.pem -outform DER | openssl dgst -sha256 -binary | basenc --base64url | tr -d =`.
    #[arg(long)]
    x5t_s256: Option<String>,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let alg: Algorithm = args.alg.parse()?;
    let keys = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/keys");
    let (demo_key, demo_kid) = match alg {
        Algorithm::ES256 => ("demo-es256.key.pem", "demo-ec-p256-1"),
        Algorithm::ES384 => ("demo-es384.key.pem", "demo-ec-p384-1"),
        Algorithm::EdDSA => ("demo-eddsa.key.pem", "demo-ed25519-1"),
        _ => ("demo-rs256.key.pem", "demo-rsa-1"),
    };
    let key_path = args
        .key
        .unwrap_or_else(|| format!("{keys}/{demo_key}").into());
    let pem = std::fs::read(&key_path)?;
    let key = match alg {
        Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(&pem)?,
        Algorithm::EdDSA => EncodingKey::from_ed_pem(&pem)?,
        _ => EncodingKey::from_rsa_pem(&pem)?,
    };
    let mut header = Header::new(alg);
    header.typ = Some(args.typ);
    header.kid = Some(args.kid.unwrap_or_else(|| demo_kid.to_string()));
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let mut claims = json!({
        "iss": args.iss, "aud": args.aud, "sub": args.sub, "client_id": args.client_id,
        "scope": args.scope, "iat": now, "nbf": now, "exp": now + args.ttl.as_secs(),
        "jti": args.jti.unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
    });
    let mut cnf = serde_json::Map::new();
    if let Some(jkt) = args.jkt {
        cnf.insert("jkt".into(), jkt.into());
    }
    if let Some(x5t) = args.x5t_s256 {
        cnf.insert("x5t#S256".into(), x5t.into());
    }
    if !cnf.is_empty() {
        claims["cnf"] = cnf.into();
    }
    println!("{}", encode(&header, &claims, &key)?);
    Ok(())
}
