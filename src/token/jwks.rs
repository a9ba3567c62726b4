//! Verification keys: a JWKS (inline or from a file) or an HMAC secret file turned into keys that
//! each know which algorithms they may be used with, so an RSA key is never used for HS256 and a
//! P-256 key never for ES384.

use std::path::Path;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::Value;

/// Smallest RSA modulus accepted (RFC 7518 §3.3: 2048 bits), as base64url characters.
const MIN_RSA_MODULUS_B64_CHARS: usize = 342;
/// Smallest HMAC secret accepted (RFC 7518 §3.2: at least the hash size of HS256).
const MIN_HMAC_SECRET_BYTES: usize = 32;

/// Why keys could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("JWKS is not a JSON object with a \"keys\" array")]
    NotAJwks,
    #[error("JWKS key #{index}: {message}")]
    Key { index: usize, message: String },
    #[error("no usable key for the pinned algorithms")]
    NoUsableKey,
    #[error("HMAC secret must be at least {MIN_HMAC_SECRET_BYTES} bytes")]
    SecretTooShort,
}

/// One key and the algorithms it may verify.
#[derive(Clone)]
pub struct VerificationKey {
    pub kid: Option<String>,
    pub algorithms: Vec<Algorithm>,
    pub key: DecodingKey,
}

impl std::fmt::Debug for VerificationKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerificationKey")
            .field("kid", &self.kid)
            .field("algorithms", &self.algorithms)
            .finish_non_exhaustive()
    }
}

impl VerificationKey {
    pub fn allows(&self, alg: Algorithm) -> bool {
        self.algorithms.contains(&alg)
    }
}

/// Reads a JWKS file.
pub fn read_jwks_file(path: &Path) -> Result<Value, KeyError> {
    let text = std::fs::read_to_string(path).map_err(|source| KeyError::Read {
        path: path.display().to_string(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|_| KeyError::NotAJwks)
}

/// Keys of a JWKS usable with `pinned`. Keys for encryption, symmetric (`oct`) keys and keys
/// too weak to trust are refused: a JWKS must only carry public signing keys.
pub fn keys_from_jwks(
    jwks: &Value,
    pinned: &[Algorithm],
) -> Result<Vec<VerificationKey>, KeyError> {
    let keys = jwks
        .get("keys")
        .and_then(Value::as_array)
        .ok_or(KeyError::NotAJwks)?;
    let mut out = Vec::new();
    for (index, raw) in keys.iter().enumerate() {
        let key_err = |message: String| KeyError::Key { index, message };
        let jwk: Jwk = serde_json::from_value(raw.clone()).map_err(|e| key_err(e.to_string()))?;
        if let Some(key) = key_from_jwk(&jwk, pinned).map_err(key_err)? {
            out.push(key);
        }
    }
    if out.is_empty() {
        return Err(KeyError::NoUsableKey);
    }
    Ok(out)
}

/// `Ok(None)`: a valid key that none of the pinned algorithms can use.
fn key_from_jwk(jwk: &Jwk, pinned: &[Algorithm]) -> Result<Option<VerificationKey>, String> {
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
        return Ok(None);
    }
    let by_type: &[Algorithm] = match &jwk.algorithm {
        AlgorithmParameters::RSA(p) => {
            if p.n.len() < MIN_RSA_MODULUS_B64_CHARS {
                return Err("RSA modulus is shorter than 2048 bits".into());
            }
            &[
                Algorithm::RS256,
                Algorithm::RS384,
                Algorithm::RS512,
                Algorithm::PS256,
                Algorithm::PS384,
                Algorithm::PS512,
            ]
        }
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => &[Algorithm::ES256],
            EllipticCurve::P384 => &[Algorithm::ES384],
            _ => return Err("unsupported EC curve (P-256 and P-384 are supported)".into()),
        },
        AlgorithmParameters::OctetKeyPair(p) => match p.curve {
            EllipticCurve::Ed25519 => &[Algorithm::EdDSA],
            _ => return Err("unsupported OKP curve (Ed25519 is supported)".into()),
        },
        AlgorithmParameters::OctetKey(_) => {
            return Err(
                "symmetric (oct) keys are not accepted in a JWKS; use hmac_secret_file".into(),
            )
        }
        _ => return Err("unsupported key type".into()),
    };
    let declared = jwk
        .common
        .key_algorithm
        .map(|a| Algorithm::try_from(a).map_err(|e| e.to_string()))
        .transpose()?;
    let algorithms: Vec<Algorithm> = by_type
        .iter()
        .copied()
        .filter(|a| pinned.contains(a) && declared.is_none_or(|d| d == *a))
        .collect();
    if algorithms.is_empty() {
        return Ok(None);
    }
    let key = DecodingKey::from_jwk(jwk).map_err(|e| e.to_string())?;
    Ok(Some(VerificationKey {
        kid: jwk.common.key_id.clone(),
        algorithms,
        key,
    }))
}

/// An HMAC key from a secret file (trailing whitespace trimmed), for the pinned HS algorithms.
pub fn key_from_secret_file(
    path: &Path,
    pinned: &[Algorithm],
) -> Result<VerificationKey, KeyError> {
    let bytes = std::fs::read(path).map_err(|source| KeyError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let secret = bytes.trim_ascii_end();
    if secret.len() < MIN_HMAC_SECRET_BYTES {
        return Err(KeyError::SecretTooShort);
    }
    let algorithms: Vec<Algorithm> = [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512]
        .into_iter()
        .filter(|a| pinned.contains(a))
        .collect();
    if algorithms.is_empty() {
        return Err(KeyError::NoUsableKey);
    }
    Ok(VerificationKey {
        kid: None,
        algorithms,
        key: DecodingKey::from_secret(secret),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn demo_jwks() -> Value {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/keys/demo-jwks.json");
        read_jwks_file(Path::new(path)).unwrap()
    }

    #[test]
    fn keys_get_only_the_algorithms_of_their_type() {
        let all = [
            Algorithm::RS256,
            Algorithm::PS256,
            Algorithm::ES256,
            Algorithm::ES384,
            Algorithm::EdDSA,
            Algorithm::HS256,
        ];
        let keys = keys_from_jwks(&demo_jwks(), &all).unwrap();
        let by_kid = |kid: &str| keys.iter().find(|k| k.kid.as_deref() == Some(kid)).unwrap();
        // The demo RSA key declares no alg: every pinned RSA algorithm may use it.
        assert_eq!(
            by_kid("demo-rsa-1").algorithms,
            vec![Algorithm::RS256, Algorithm::PS256]
        );
        // The EC keys declare their alg; a declared alg narrows what a key may be used for.
        assert_eq!(by_kid("demo-ec-p256-1").algorithms, vec![Algorithm::ES256]);
        assert_eq!(by_kid("demo-ec-p384-1").algorithms, vec![Algorithm::ES384]);
        assert_eq!(by_kid("demo-ed25519-1").algorithms, vec![Algorithm::EdDSA]);
        assert!(keys.iter().all(|k| !k.allows(Algorithm::HS256)));
    }

    #[test]
    fn a_declared_alg_narrows_the_key() {
        let mut jwks = demo_jwks();
        jwks["keys"][0]["alg"] = json!("RS256");
        let keys = keys_from_jwks(&jwks, &[Algorithm::RS256, Algorithm::PS256]).unwrap();
        assert_eq!(keys[0].algorithms, vec![Algorithm::RS256]);
    }

    #[test]
    fn unpinned_algorithms_leave_no_usable_key() {
        let err = keys_from_jwks(&demo_jwks(), &[Algorithm::HS256]).unwrap_err();
        assert!(matches!(err, KeyError::NoUsableKey));
    }

    #[test]
    fn oct_and_weak_keys_are_refused() {
        let oct = json!({"keys":[{"kty":"oct","k":"c2VjcmV0"}]});
        assert!(keys_from_jwks(&oct, &[Algorithm::HS256]).is_err());
        let weak = json!({"keys":[{"kty":"RSA","n":"sXch","e":"AQAB"}]});
        assert!(keys_from_jwks(&weak, &[Algorithm::RS256]).is_err());
        assert!(keys_from_jwks(&json!({"nokeys":1}), &[Algorithm::RS256]).is_err());
    }
}
