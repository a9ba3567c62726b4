//! Verification keys: a JWKS (inline or from a file) or an HMAC secret file turned into keys that
//! each know which algorithms they may be used with, so an RSA key is never used for HS256 and a
//! P-256 key never for ES384.
//!
//! Real identity providers mix keys in one JWKS (encryption keys, curves scopegate does not
//! support, keys in rotation). A key that scopegate cannot or must not use is skipped with a
//! [`SkippedKey`] reason instead of failing the whole set; only a set with no usable key at all
//! is an error. Every key is validated here, before `jsonwebtoken` ever sees it: the RSA modulus
//! by its real bit length, the RSA exponent, EC points (coordinate lengths and on the named curve,
//! checked by aws-lc) and the Ed25519 key length.

use std::fmt;
use std::path::Path;

use aws_lc_rs::signature::{
    ParsedPublicKey, VerificationAlgorithm, ECDSA_P256_SHA256_FIXED, ECDSA_P384_SHA384_FIXED,
    ED25519,
};
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk};
use jsonwebtoken::{Algorithm, DecodingKey, DecodingKeyKind};

use super::rsa_keys::ParsedRsaKey;
use serde_json::Value;

/// Smallest RSA modulus accepted (RFC 7518 §3.3: 2048 bits).
pub const MIN_RSA_MODULUS_BITS: usize = 2048;
/// Largest RSA modulus accepted: aws-lc verifies RS*/PS* signatures with 2048–8192-bit keys only.
pub const MAX_RSA_MODULUS_BITS: usize = 8192;
/// Largest RSA public exponent accepted, in bits (aws-lc refuses larger ones, a DoS guard).
pub const MAX_RSA_EXPONENT_BITS: usize = 33;
/// Smallest HMAC secret accepted (RFC 7518 §3.2: at least the hash size of HS256).
const MIN_HMAC_SECRET_BYTES: usize = 32;
/// Length of an Ed25519 public key (RFC 8037 §2).
const ED25519_KEY_BYTES: usize = 32;

const RSA_ALGORITHMS: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
];

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
    #[error("no usable key for the pinned algorithms{}", list_skipped(skipped))]
    NoUsableKey { skipped: Vec<SkippedKey> },
    #[error("HMAC secret must be at least {MIN_HMAC_SECRET_BYTES} bytes")]
    SecretTooShort,
}

fn list_skipped(skipped: &[SkippedKey]) -> String {
    let mut out = String::new();
    for (i, key) in skipped.iter().enumerate() {
        out.push_str(if i == 0 { " (skipped: " } else { "; " });
        out.push_str(&key.to_string());
    }
    if !skipped.is_empty() {
        out.push(')');
    }
    out
}

/// Why one JWKS key was left out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SkipReason {
    #[error("not a valid JWK: {0}")]
    Malformed(String),
    #[error("\"use\" is {0:?}, not \"sig\": not a signing key")]
    NotForSignatures(String),
    #[error("symmetric (oct) keys are not accepted in a JWKS; use hmac_secret_file")]
    Symmetric,
    #[error("unsupported key type {0:?} (RSA, EC and OKP are supported)")]
    UnsupportedKeyType(String),
    #[error("unsupported curve {crv:?} for kty {kty} (EC: P-256, P-384; OKP: Ed25519)")]
    UnsupportedCurve { kty: String, crv: String },
    #[error("\"alg\" {0:?} is not a supported signature algorithm")]
    UnsupportedAlgorithm(String),
    #[error("\"alg\" {alg:?} does not fit a {kty} key")]
    AlgorithmMismatch { kty: String, alg: String },
    #[error("{field} is not base64url (RFC 7515 §2, no padding)")]
    NotBase64Url { field: &'static str },
    #[error("RSA modulus is {0} bits, below the {MIN_RSA_MODULUS_BITS}-bit minimum")]
    RsaModulusTooShort(usize),
    #[error("RSA modulus is {0} bits, above the {MAX_RSA_MODULUS_BITS}-bit maximum")]
    RsaModulusTooLong(usize),
    #[error("RSA modulus is even")]
    RsaModulusEven,
    #[error("RSA exponent {0} is below 3")]
    RsaExponentTooSmall(u64),
    #[error("RSA exponent is even")]
    RsaExponentEven,
    #[error("RSA exponent is {0} bits, above the {MAX_RSA_EXPONENT_BITS}-bit maximum")]
    RsaExponentTooLarge(usize),
    #[error("{crv} coordinates must be {expected} bytes each, got x {x} and y {y} bytes")]
    EcCoordinateLength {
        crv: &'static str,
        expected: usize,
        x: usize,
        y: usize,
    },
    #[error("EC point is not on curve {0}")]
    EcPointNotOnCurve(&'static str),
    #[error("Ed25519 public key is {0} bytes, not {ED25519_KEY_BYTES}")]
    Ed25519KeyLength(usize),
    #[error("Ed25519 public key is rejected by aws-lc")]
    Ed25519KeyRejected,
    #[error("usable only with {0}, which this issuer does not pin")]
    NotPinned(String),
}

/// A JWKS key that was left out: its position in `keys`, its `kid` if it has one, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedKey {
    pub index: usize,
    pub kid: Option<String>,
    pub reason: SkipReason,
}

impl SkippedKey {
    /// A key that is fine but usable only with algorithms the issuer does not pin: expected in a
    /// shared JWKS, so worth listing but not worth a warning.
    pub fn is_expected(&self) -> bool {
        matches!(self.reason, SkipReason::NotPinned(_))
    }
}

impl fmt::Display for SkippedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kid {
            Some(kid) => write!(f, "JWKS key #{} (kid {kid:?}): {}", self.index, self.reason),
            None => write!(f, "JWKS key #{} (no kid): {}", self.index, self.reason),
        }
    }
}

/// The usable keys of a JWKS, and the keys left out with their reasons.
#[derive(Debug, Clone)]
pub struct JwksKeys {
    pub keys: Vec<VerificationKey>,
    pub skipped: Vec<SkippedKey>,
}

/// One key and the algorithms it may verify.
#[derive(Clone)]
pub struct VerificationKey {
    pub kid: Option<String>,
    pub algorithms: Vec<Algorithm>,
    pub key: DecodingKey,
    /// An RSA key parsed once per algorithm: only held, so that it stays registered (see
    /// `rsa_keys`) as long as this key is.
    _parsed: Vec<ParsedRsaKey>,
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
    /// A key for `algorithms`; an RSA key is parsed for each of them (see [`rsa_keys`]).
    ///
    /// [`rsa_keys`]: super::rsa_keys
    pub fn new(kid: Option<String>, algorithms: Vec<Algorithm>, key: DecodingKey) -> Self {
        let parsed = match key.kind() {
            DecodingKeyKind::RsaModulusExponent { n, e } => algorithms
                .iter()
                .filter_map(|alg| ParsedRsaKey::new(n, e, *alg))
                .collect(),
            DecodingKeyKind::SecretOrDer(_) => Vec::new(),
        };
        VerificationKey {
            kid,
            algorithms,
            key,
            _parsed: parsed,
        }
    }

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

/// Keys of a JWKS usable with `pinned`. Encryption keys, symmetric (`oct`) keys, unsupported key
/// types and curves, weak or malformed keys are skipped with a reason: a JWKS must only give
/// public signing keys, but one bad key does not take the good ones down with it. Fails only if
/// the JWKS is not a JWKS or no key at all is usable.
pub fn keys_from_jwks(jwks: &Value, pinned: &[Algorithm]) -> Result<JwksKeys, KeyError> {
    let raw_keys = jwks
        .get("keys")
        .and_then(Value::as_array)
        .ok_or(KeyError::NotAJwks)?;
    let mut keys = Vec::new();
    let mut skipped = Vec::new();
    for (index, raw) in raw_keys.iter().enumerate() {
        match key_from_value(raw, pinned) {
            Ok(key) => keys.push(key),
            Err(reason) => skipped.push(SkippedKey {
                index,
                kid: raw.get("kid").and_then(Value::as_str).map(str::to_string),
                reason,
            }),
        }
    }
    if keys.is_empty() {
        return Err(KeyError::NoUsableKey { skipped });
    }
    Ok(JwksKeys { keys, skipped })
}

fn str_field<'a>(raw: &'a Value, name: &str) -> Result<Option<&'a str>, SkipReason> {
    match raw.get(name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(SkipReason::Malformed(format!("{name:?} is not a string"))),
    }
}

/// Validates one JWKS entry (as JSON, so that a key `jsonwebtoken` cannot even represent still
/// gets a precise reason) and builds its verification key.
fn key_from_value(raw: &Value, pinned: &[Algorithm]) -> Result<VerificationKey, SkipReason> {
    if !raw.is_object() {
        return Err(SkipReason::Malformed("not a JSON object".into()));
    }
    if let Some(key_use) = str_field(raw, "use")? {
        if key_use != "sig" {
            return Err(SkipReason::NotForSignatures(key_use.to_string()));
        }
    }
    let kty =
        str_field(raw, "kty")?.ok_or_else(|| SkipReason::Malformed("\"kty\" is missing".into()))?;
    let crv = str_field(raw, "crv")?;
    let unsupported_curve = || SkipReason::UnsupportedCurve {
        kty: kty.to_string(),
        crv: crv.unwrap_or("(none)").to_string(),
    };
    match (kty, crv) {
        ("RSA", _) | ("EC", Some("P-256" | "P-384")) | ("OKP", Some("Ed25519")) => {}
        ("EC" | "OKP", _) => return Err(unsupported_curve()),
        ("oct", _) => return Err(SkipReason::Symmetric),
        _ => return Err(SkipReason::UnsupportedKeyType(kty.to_string())),
    }
    let jwk: Jwk =
        serde_json::from_value(raw.clone()).map_err(|e| SkipReason::Malformed(e.to_string()))?;
    let declared = match str_field(raw, "alg")? {
        None => None,
        Some(name) => Some(
            jwk.common
                .key_algorithm
                .and_then(|a| Algorithm::try_from(a).ok())
                .ok_or_else(|| SkipReason::UnsupportedAlgorithm(name.to_string()))?,
        ),
    };
    let (by_type, key): (&[Algorithm], DecodingKey) = match &jwk.algorithm {
        AlgorithmParameters::RSA(p) if kty == "RSA" => (RSA_ALGORITHMS, rsa_key(&p.n, &p.e)?),
        AlgorithmParameters::EllipticCurve(p) if kty == "EC" => match crv {
            Some("P-256") => (&[Algorithm::ES256], ec_key(&p.x, &p.y, P256)?),
            _ => (&[Algorithm::ES384], ec_key(&p.x, &p.y, P384)?),
        },
        AlgorithmParameters::OctetKeyPair(p) if kty == "OKP" => {
            (&[Algorithm::EdDSA], ed25519_key(&p.x)?)
        }
        _ => {
            return Err(SkipReason::Malformed(format!(
                "missing or invalid parameters for kty {kty}"
            )))
        }
    };
    if let Some(alg) = declared {
        if !by_type.contains(&alg) {
            return Err(SkipReason::AlgorithmMismatch {
                kty: kty.to_string(),
                alg: format!("{alg:?}"),
            });
        }
    }
    let usable: Vec<Algorithm> = by_type
        .iter()
        .copied()
        .filter(|a| declared.is_none_or(|d| d == *a))
        .collect();
    let algorithms: Vec<Algorithm> = usable
        .iter()
        .copied()
        .filter(|a| pinned.contains(a))
        .collect();
    if algorithms.is_empty() {
        let names: Vec<String> = usable.iter().map(|a| format!("{a:?}")).collect();
        return Err(SkipReason::NotPinned(names.join("/")));
    }
    Ok(VerificationKey::new(
        jwk.common.key_id.clone(),
        algorithms,
        key,
    ))
}

/// An RSA key from its JWK `n` and `e`, judged by the real size of the numbers: leading zero
/// bytes (which RFC 7518 §6.3.1.1 forbids but some IdPs write) are stripped before counting bits,
/// and stripped from the key `jsonwebtoken` gets (aws-lc refuses components with leading zeros).
fn rsa_key(n: &str, e: &str) -> Result<DecodingKey, SkipReason> {
    let n = b64url_decode(n).ok_or(SkipReason::NotBase64Url { field: "RSA n" })?;
    let e = b64url_decode(e).ok_or(SkipReason::NotBase64Url { field: "RSA e" })?;
    let n = strip_leading_zeros(&n);
    let e = strip_leading_zeros(&e);
    let n_bits = bit_length(n);
    if n_bits < MIN_RSA_MODULUS_BITS {
        return Err(SkipReason::RsaModulusTooShort(n_bits));
    }
    if n_bits > MAX_RSA_MODULUS_BITS {
        return Err(SkipReason::RsaModulusTooLong(n_bits));
    }
    if n.last().is_none_or(|b| b & 1 == 0) {
        return Err(SkipReason::RsaModulusEven);
    }
    let e_bits = bit_length(e);
    if e_bits > MAX_RSA_EXPONENT_BITS {
        return Err(SkipReason::RsaExponentTooLarge(e_bits));
    }
    let e_value = e.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
    if e_value < 3 {
        return Err(SkipReason::RsaExponentTooSmall(e_value));
    }
    if e_value & 1 == 0 {
        return Err(SkipReason::RsaExponentEven);
    }
    Ok(DecodingKey::from_rsa_raw_components(n, e))
}

/// A named curve: its JWK name, coordinate size and aws-lc verification algorithm.
struct Curve {
    name: &'static str,
    coordinate_bytes: usize,
    algorithm: &'static dyn VerificationAlgorithm,
}

const P256: Curve = Curve {
    name: "P-256",
    coordinate_bytes: 32,
    algorithm: &ECDSA_P256_SHA256_FIXED,
};
const P384: Curve = Curve {
    name: "P-384",
    coordinate_bytes: 48,
    algorithm: &ECDSA_P384_SHA384_FIXED,
};

/// An EC key: both coordinates exactly the curve's size (RFC 7518 §6.2.1.2, so a P-384 point
/// labelled P-256 is caught), and the uncompressed point on the curve (aws-lc parses it).
fn ec_key(x: &str, y: &str, curve: Curve) -> Result<DecodingKey, SkipReason> {
    let xb = b64url_decode(x).ok_or(SkipReason::NotBase64Url { field: "EC x" })?;
    let yb = b64url_decode(y).ok_or(SkipReason::NotBase64Url { field: "EC y" })?;
    if xb.len() != curve.coordinate_bytes || yb.len() != curve.coordinate_bytes {
        return Err(SkipReason::EcCoordinateLength {
            crv: curve.name,
            expected: curve.coordinate_bytes,
            x: xb.len(),
            y: yb.len(),
        });
    }
    let mut point = Vec::with_capacity(1 + 2 * curve.coordinate_bytes);
    point.push(0x04);
    point.extend_from_slice(&xb);
    point.extend_from_slice(&yb);
    ParsedPublicKey::new(curve.algorithm, &point)
        .map_err(|_| SkipReason::EcPointNotOnCurve(curve.name))?;
    DecodingKey::from_ec_components(x, y).map_err(|e| SkipReason::Malformed(e.to_string()))
}

/// An Ed25519 key: exactly 32 bytes (`jsonwebtoken` must never see another length).
fn ed25519_key(x: &str) -> Result<DecodingKey, SkipReason> {
    let xb = b64url_decode(x).ok_or(SkipReason::NotBase64Url { field: "OKP x" })?;
    if xb.len() != ED25519_KEY_BYTES {
        return Err(SkipReason::Ed25519KeyLength(xb.len()));
    }
    ParsedPublicKey::new(&ED25519, &xb).map_err(|_| SkipReason::Ed25519KeyRejected)?;
    DecodingKey::from_ed_components(x).map_err(|e| SkipReason::Malformed(e.to_string()))
}

fn strip_leading_zeros(bytes: &[u8]) -> &[u8] {
    let first = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    &bytes[first..]
}

/// Bits in a big-endian unsigned number without leading zero bytes.
fn bit_length(bytes: &[u8]) -> usize {
    match bytes.first() {
        None => 0,
        Some(top) => bytes.len() * 8 - top.leading_zeros() as usize,
    }
}

/// Strict unpadded base64url (RFC 7515 §2): no padding, no whitespace, no stray trailing bits
/// (the `base64` crate's `URL_SAFE_NO_PAD` engine refuses all three).
fn b64url_decode(text: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text)
        .ok()
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
        return Err(KeyError::NoUsableKey {
            skipped: Vec::new(),
        });
    }
    Ok(VerificationKey::new(
        None,
        algorithms,
        DecodingKey::from_secret(secret),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    use base64::Engine;
    use serde_json::json;

    const ALL: &[Algorithm] = &[
        Algorithm::RS256,
        Algorithm::PS256,
        Algorithm::ES256,
        Algorithm::ES384,
        Algorithm::EdDSA,
    ];

    fn demo_jwks() -> Value {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/keys/demo-jwks.json");
        read_jwks_file(Path::new(path)).unwrap()
    }

    /// The demo key with this kid, as JSON.
    fn demo(kid: &str) -> Value {
        demo_jwks()["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["kid"] == kid)
            .unwrap()
            .clone()
    }

    fn b64_field(key: &Value, field: &str) -> Vec<u8> {
        B64.decode(key[field].as_str().unwrap()).unwrap()
    }

    /// Loads a JWKS of `bad` beside the good demo RSA key and returns the one skipped key.
    fn skipped_beside_a_good_key(bad: Value) -> SkippedKey {
        let jwks = json!({"keys": [demo("demo-rsa-1"), bad]});
        let loaded = keys_from_jwks(&jwks, ALL).unwrap();
        assert_eq!(loaded.keys.len(), 1, "the good key still loads");
        assert_eq!(loaded.keys[0].kid.as_deref(), Some("demo-rsa-1"));
        assert_eq!(loaded.skipped.len(), 1, "{:?}", loaded.skipped);
        assert_eq!(loaded.skipped[0].index, 1);
        loaded.skipped[0].clone()
    }

    fn reason(bad: Value) -> SkipReason {
        skipped_beside_a_good_key(bad).reason
    }

    fn rsa(n: &[u8], e: &[u8]) -> Value {
        json!({"kty": "RSA", "kid": "bad-rsa", "n": B64.encode(n), "e": B64.encode(e)})
    }

    /// A 1024-bit odd modulus (top bit set) written as 256 bytes: 128 leading zero bytes, so its
    /// base64url is as long as a real 2048-bit modulus.
    fn padded_1024_bit_modulus() -> Vec<u8> {
        let mut n = vec![0u8; 128];
        n.push(0xc5);
        n.extend(std::iter::repeat_n(0x5a, 126));
        n.push(0x01);
        assert_eq!(n.len(), 256);
        n
    }

    #[test]
    fn keys_get_only_the_algorithms_of_their_type() {
        let mut pinned = ALL.to_vec();
        pinned.push(Algorithm::HS256);
        let loaded = keys_from_jwks(&demo_jwks(), &pinned).unwrap();
        assert!(loaded.skipped.is_empty(), "{:?}", loaded.skipped);
        let keys = loaded.keys;
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
        let loaded = keys_from_jwks(&jwks, &[Algorithm::RS256, Algorithm::PS256]).unwrap();
        assert_eq!(loaded.keys[0].algorithms, vec![Algorithm::RS256]);
    }

    #[test]
    fn unpinned_algorithms_leave_no_usable_key() {
        let err = keys_from_jwks(&demo_jwks(), &[Algorithm::HS256]).unwrap_err();
        let KeyError::NoUsableKey { skipped } = err else {
            panic!("{err}")
        };
        assert_eq!(skipped.len(), 4);
        assert_eq!(
            skipped[0].reason,
            SkipReason::NotPinned("RS256/RS384/RS512/PS256/PS384/PS512".into())
        );
        assert_eq!(skipped[1].reason, SkipReason::NotPinned("ES256".into()));
        assert!(skipped.iter().all(SkippedKey::is_expected));
    }

    #[test]
    fn not_a_jwks_is_fatal() {
        for bad in [json!({"nokeys": 1}), json!({"keys": {}}), json!([1])] {
            assert!(matches!(keys_from_jwks(&bad, ALL), Err(KeyError::NotAJwks)));
        }
    }

    #[test]
    fn rsa_modulus_is_counted_by_its_real_bit_length() {
        let n = padded_1024_bit_modulus();
        let key = rsa(&n, &[1, 0, 1]);
        // The old check (base64url length ≥ 342 characters) let this key through.
        assert_eq!(key["n"].as_str().unwrap().len(), 342);
        assert_eq!(reason(key), SkipReason::RsaModulusTooShort(1024));
        // Just below 2048 bits, with no padding at all.
        let mut n = vec![0x7f];
        n.extend(std::iter::repeat_n(0xff, 255));
        assert_eq!(
            reason(rsa(&n, &[1, 0, 1])),
            SkipReason::RsaModulusTooShort(2047)
        );
        let mut n = vec![0x01];
        n.extend(std::iter::repeat_n(0x11, 1024));
        assert_eq!(
            reason(rsa(&n, &[1, 0, 1])),
            SkipReason::RsaModulusTooLong(8193)
        );
        let mut even = b64_field(&demo("demo-rsa-1"), "n");
        *even.last_mut().unwrap() &= 0xfe;
        assert_eq!(reason(rsa(&even, &[1, 0, 1])), SkipReason::RsaModulusEven);
    }

    #[test]
    fn a_real_key_with_zero_padding_is_accepted() {
        // RFC 7518 forbids leading zeros, some IdPs write them anyway: the key is the same number.
        let demo_rsa = demo("demo-rsa-1");
        let mut n = vec![0, 0];
        n.extend(b64_field(&demo_rsa, "n"));
        let mut key = rsa(&n, &[0, 1, 0, 1]);
        key["kid"] = json!("padded");
        let loaded = keys_from_jwks(&json!({"keys": [key]}), ALL).unwrap();
        assert!(loaded.skipped.is_empty());
        assert_eq!(loaded.keys[0].kid.as_deref(), Some("padded"));
    }

    #[test]
    fn rsa_exponent_must_be_odd_and_at_least_3() {
        let n = b64_field(&demo("demo-rsa-1"), "n");
        assert_eq!(reason(rsa(&n, &[2])), SkipReason::RsaExponentTooSmall(2));
        assert_eq!(reason(rsa(&n, &[1])), SkipReason::RsaExponentTooSmall(1));
        assert_eq!(reason(rsa(&n, &[0])), SkipReason::RsaExponentTooSmall(0));
        assert_eq!(reason(rsa(&n, &[4])), SkipReason::RsaExponentEven);
        assert_eq!(reason(rsa(&n, &[1, 0, 0])), SkipReason::RsaExponentEven); // 65536
        assert_eq!(
            reason(rsa(&n, &[1, 0, 0, 0, 0, 1])),
            SkipReason::RsaExponentTooLarge(41)
        );
        // 3 and 65537 are fine.
        for e in [&[3u8][..], &[1, 0, 1]] {
            let jwks = json!({"keys": [rsa(&n, e)]});
            assert_eq!(keys_from_jwks(&jwks, ALL).unwrap().keys.len(), 1);
        }
    }

    #[test]
    fn ec_point_must_be_on_its_curve() {
        let mut key = demo("demo-ec-p256-1");
        let mut y = b64_field(&key, "y");
        *y.last_mut().unwrap() ^= 1;
        key["y"] = json!(B64.encode(&y));
        assert_eq!(reason(key), SkipReason::EcPointNotOnCurve("P-256"));

        let mut key = demo("demo-ec-p384-1");
        let mut x = b64_field(&key, "x");
        *x.last_mut().unwrap() ^= 1;
        key["x"] = json!(B64.encode(&x));
        assert_eq!(reason(key), SkipReason::EcPointNotOnCurve("P-384"));
    }

    #[test]
    fn a_p384_point_labelled_p256_is_skipped() {
        let mut key = demo("demo-ec-p384-1");
        key["crv"] = json!("P-256");
        key.as_object_mut().unwrap().remove("alg");
        assert_eq!(
            reason(key),
            SkipReason::EcCoordinateLength {
                crv: "P-256",
                expected: 32,
                x: 48,
                y: 48
            }
        );
        // The other way round too: a P-256 point cannot pass for P-384.
        let mut key = demo("demo-ec-p256-1");
        key["crv"] = json!("P-384");
        key.as_object_mut().unwrap().remove("alg");
        assert_eq!(
            reason(key),
            SkipReason::EcCoordinateLength {
                crv: "P-384",
                expected: 48,
                x: 32,
                y: 32
            }
        );
    }

    #[test]
    fn ed25519_key_must_be_32_bytes() {
        let mut key = demo("demo-ed25519-1");
        let x = b64_field(&key, "x");
        key["x"] = json!(B64.encode(&x[..31]));
        assert_eq!(reason(key.clone()), SkipReason::Ed25519KeyLength(31));
        let mut long = x.clone();
        long.push(0);
        key["x"] = json!(B64.encode(&long));
        assert_eq!(reason(key.clone()), SkipReason::Ed25519KeyLength(33));
        key["x"] = json!("");
        assert_eq!(reason(key), SkipReason::Ed25519KeyLength(0));
    }

    #[test]
    fn encryption_keys_are_skipped() {
        let mut key = demo("demo-ec-p256-1");
        key["use"] = json!("enc");
        let skipped = skipped_beside_a_good_key(key);
        assert_eq!(skipped.kid.as_deref(), Some("demo-ec-p256-1"));
        assert_eq!(skipped.reason, SkipReason::NotForSignatures("enc".into()));
        assert_eq!(
            skipped.to_string(),
            "JWKS key #1 (kid \"demo-ec-p256-1\"): \"use\" is \"enc\", not \"sig\": not a signing key"
        );
        // An encryption algorithm without "use" says the same.
        let mut key = demo("demo-rsa-1");
        key["alg"] = json!("RSA-OAEP");
        assert_eq!(
            reason(key),
            SkipReason::UnsupportedAlgorithm("RSA-OAEP".into())
        );
    }

    #[test]
    fn unsupported_curves_and_key_types_are_skipped() {
        let x32 = B64.encode([7u8; 32]);
        let x66 = B64.encode([7u8; 66]);
        let cases = [
            (
                json!({"kty": "OKP", "crv": "X25519", "x": x32, "kid": "x"}),
                SkipReason::UnsupportedCurve {
                    kty: "OKP".into(),
                    crv: "X25519".into(),
                },
            ),
            (
                json!({"kty": "OKP", "crv": "Ed448", "x": x32}),
                SkipReason::UnsupportedCurve {
                    kty: "OKP".into(),
                    crv: "Ed448".into(),
                },
            ),
            (
                json!({"kty": "EC", "crv": "P-521", "x": x66, "y": x66, "alg": "ES512"}),
                SkipReason::UnsupportedCurve {
                    kty: "EC".into(),
                    crv: "P-521".into(),
                },
            ),
            (
                json!({"kty": "EC", "crv": "secp256k1", "x": x32, "y": x32, "alg": "ES256K"}),
                SkipReason::UnsupportedCurve {
                    kty: "EC".into(),
                    crv: "secp256k1".into(),
                },
            ),
            (
                json!({"kty": "EC", "x": x32, "y": x32}),
                SkipReason::UnsupportedCurve {
                    kty: "EC".into(),
                    crv: "(none)".into(),
                },
            ),
            (
                json!({"kty": "oct", "k": "c2VjcmV0", "kid": "hs"}),
                SkipReason::Symmetric,
            ),
            (
                json!({"kty": "AKP", "alg": "ML-DSA-44", "pub": x32}),
                SkipReason::UnsupportedKeyType("AKP".into()),
            ),
        ];
        for (key, expected) in cases {
            assert_eq!(reason(key.clone()), expected, "{key}");
        }
    }

    #[test]
    fn malformed_keys_are_skipped_not_fatal() {
        let demo_ec = demo("demo-ec-p256-1");
        let mut no_y = demo_ec.clone();
        no_y.as_object_mut().unwrap().remove("y");
        let mut wrong_alg = demo_ec.clone();
        wrong_alg["alg"] = json!("RS256");
        let mut padded = demo_ec.clone();
        padded["x"] = json!(format!("{}=", demo_ec["x"].as_str().unwrap()));
        let cases = [
            (
                json!("not an object"),
                SkipReason::Malformed("not a JSON object".into()),
            ),
            (
                json!({"n": "AQAB"}),
                SkipReason::Malformed("\"kty\" is missing".into()),
            ),
            (
                json!({"kty": 7}),
                SkipReason::Malformed("\"kty\" is not a string".into()),
            ),
            (
                json!({"kty": "RSA", "n": 5, "e": "AQAB"}),
                SkipReason::Malformed("missing or invalid parameters for kty RSA".into()),
            ),
            (
                no_y,
                SkipReason::Malformed("missing or invalid parameters for kty EC".into()),
            ),
            (
                wrong_alg,
                SkipReason::AlgorithmMismatch {
                    kty: "EC".into(),
                    alg: "RS256".into(),
                },
            ),
            (padded, SkipReason::NotBase64Url { field: "EC x" }),
            (
                json!({"kty": "RSA", "kid": 5, "n": "AQAB", "e": "AQAB"}),
                SkipReason::Malformed("invalid type: integer `5`, expected a string".into()),
            ),
        ];
        for (key, expected) in cases {
            assert_eq!(reason(key.clone()), expected, "{key}");
        }
    }

    #[test]
    fn a_mixed_set_loads_its_good_keys() {
        let mut enc = demo("demo-rsa-1");
        enc["use"] = json!("enc");
        enc["kid"] = json!("rsa-enc");
        let mut short_ed = demo("demo-ed25519-1");
        short_ed["kid"] = json!("short-ed");
        short_ed["x"] = json!(B64.encode([9u8; 31]));
        let jwks = json!({"keys": [
            enc,
            demo("demo-ec-p256-1"),
            rsa(&padded_1024_bit_modulus(), &[1, 0, 1]),
            json!({"kty": "OKP", "crv": "X25519", "x": B64.encode([1u8; 32])}),
            short_ed,
            demo("demo-ed25519-1"),
            json!({"kty": "oct", "k": "c2VjcmV0"}),
        ]});
        let loaded = keys_from_jwks(&jwks, ALL).unwrap();
        let kids: Vec<_> = loaded.keys.iter().map(|k| k.kid.as_deref()).collect();
        assert_eq!(kids, vec![Some("demo-ec-p256-1"), Some("demo-ed25519-1")]);
        let skipped: Vec<_> = loaded
            .skipped
            .iter()
            .map(|s| (s.index, s.kid.as_deref(), s.reason.clone()))
            .collect();
        assert_eq!(
            skipped,
            vec![
                (
                    0,
                    Some("rsa-enc"),
                    SkipReason::NotForSignatures("enc".into())
                ),
                (2, Some("bad-rsa"), SkipReason::RsaModulusTooShort(1024)),
                (
                    3,
                    None,
                    SkipReason::UnsupportedCurve {
                        kty: "OKP".into(),
                        crv: "X25519".into()
                    }
                ),
                (4, Some("short-ed"), SkipReason::Ed25519KeyLength(31)),
                (6, None, SkipReason::Symmetric),
            ]
        );
    }

    #[test]
    fn a_set_of_only_bad_keys_fails_with_every_reason() {
        let jwks = json!({"keys": [
            json!({"kty": "oct", "k": "c2VjcmV0"}),
            rsa(&padded_1024_bit_modulus(), &[1, 0, 1]),
        ]});
        let err = keys_from_jwks(&jwks, ALL).unwrap_err();
        assert_eq!(
            err.to_string(),
            "no usable key for the pinned algorithms (skipped: JWKS key #0 (no kid): symmetric \
             (oct) keys are not accepted in a JWKS; use hmac_secret_file; JWKS key #1 (kid \
             \"bad-rsa\"): RSA modulus is 1024 bits, below the 2048-bit minimum)"
        );
        let KeyError::NoUsableKey { skipped } = err else {
            unreachable!()
        };
        assert_eq!(skipped.len(), 2);
        let empty = keys_from_jwks(&json!({"keys": []}), ALL).unwrap_err();
        assert!(matches!(empty, KeyError::NoUsableKey { skipped } if skipped.is_empty()));
    }

    #[test]
    fn base64url_is_strict() {
        assert_eq!(b64url_decode("").unwrap(), b"");
        assert_eq!(b64url_decode("AQAB").unwrap(), [1, 0, 1]);
        assert_eq!(b64url_decode("-_8").unwrap(), [0xfb, 0xff]);
        assert_eq!(b64url_decode("_w").unwrap(), [0xff]);
        for bad in ["AQAB=", "A", "AQ A", "+/8", "_x", "-_9"] {
            assert_eq!(b64url_decode(bad), None, "{bad}");
        }
        for len in 0..70usize {
            let data: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            assert_eq!(b64url_decode(&B64.encode(&data)).unwrap(), data);
        }
    }
}
