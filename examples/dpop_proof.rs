//! A DPoP client key and its proofs (RFC 9449), for trying sender-constrained tokens out.
//!
//! `keygen` makes a P-256 key (PKCS#8 DER file) and prints its RFC 7638 thumbprint, the value
//! an identity provider puts in the token's `cnf.jkt` (or `mint_token --jkt`); `proof` prints
//! one proof (a fresh `jti`, `iat` now) for one request: method, URL and the access token.
//!
//! ```text
//! cargo run --example dpop_proof -- keygen --key client.p8
//! cargo run --example dpop_proof -- proof --key client.p8 --method GET \
//!     --url http://api.example.com/orders/42 --token "$TOKEN"
//! ```

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use clap::{Parser, Subcommand};
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

#[derive(Parser)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a P-256 key and print its thumbprint (cnf.jkt).
    Keygen {
        #[arg(long)]
        key: PathBuf,
    },
    /// Print the thumbprint (cnf.jkt) of an existing key.
    Thumbprint {
        #[arg(long)]
        key: PathBuf,
    },
    /// Print a proof for one request.
    Proof {
        #[arg(long)]
        key: PathBuf,
        #[arg(long, default_value = "GET")]
        method: String,
        /// The request URL as the server sees it (scheme, host, path; the query is ignored).
        #[arg(long)]
        url: String,
        /// The access token the proof goes with (its SHA-256 becomes `ath`).
        #[arg(long)]
        token: String,
    },
}

fn b64(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The public JWK of a P-256 key pair.
fn public_jwk(pair: &EcdsaKeyPair) -> Value {
    let point = pair.public_key().as_ref();
    json!({"kty": "EC", "crv": "P-256", "x": b64(&point[1..33]), "y": b64(&point[33..65])})
}

/// RFC 7638: the required members in lexicographic order, compact, SHA-256, base64url.
fn thumbprint(jwk: &Value) -> String {
    let canonical = format!(
        r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
        jwk["x"].as_str().unwrap_or_default(),
        jwk["y"].as_str().unwrap_or_default()
    );
    b64(Sha256::digest(canonical.as_bytes()))
}

fn load(path: &PathBuf) -> Result<(Vec<u8>, EcdsaKeyPair), Box<dyn std::error::Error>> {
    let pkcs8 = std::fs::read(path)?;
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &pkcs8)
        .map_err(|e| format!("{}: not a P-256 PKCS#8 key: {e}", path.display()))?;
    Ok((pkcs8, pair))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    match Args::parse().command {
        Command::Keygen { key } => {
            let pkcs8 = EcdsaKeyPair::generate_pkcs8(
                &ECDSA_P256_SHA256_FIXED_SIGNING,
                &SystemRandom::new(),
            )
            .map_err(|e| format!("key generation failed: {e}"))?;
            std::fs::write(&key, pkcs8.as_ref())?;
            let (_, pair) = load(&key)?;
            println!("{}", thumbprint(&public_jwk(&pair)));
        }
        Command::Thumbprint { key } => {
            let (_, pair) = load(&key)?;
            println!("{}", thumbprint(&public_jwk(&pair)));
        }
        Command::Proof {
            key,
            method,
            url,
            token,
        } => {
            let (pkcs8, pair) = load(&key)?;
            let header = json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": public_jwk(&pair)});
            let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
            let claims = json!({
                "jti": uuid::Uuid::new_v4().to_string(), "htm": method, "htu": url, "iat": now,
                "ath": b64(Sha256::digest(token.as_bytes())),
            });
            let input = format!("{}.{}", b64(header.to_string()), b64(claims.to_string()));
            let key = EncodingKey::from_ec_der(&pkcs8);
            let signature = jsonwebtoken::crypto::sign(input.as_bytes(), &key, Algorithm::ES256)?;
            println!("{input}.{signature}");
        }
    }
    Ok(())
}
