//! RFC 9449 DPoP proofs: verify one `DPoP` header against the request it came with (`typ`,
//! asymmetric `alg`, signature by its embedded public `jwk`, `htm`, `htu`, `iat` window, `ath`),
//! compute the RFC 7638 thumbprint of its key, and remember its `jti` in a bounded per-replica
//! replay cache.
//!
//! The proof is parsed by hand (header and claims as JSON) before `jsonwebtoken` sees it, so that
//! a `jwk` with private members is refused rather than silently stripped, and the key goes
//! through the same validation as issuer keys ([`super::jwks`]).

use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, Validation};
use moka::notification::RemovalCause;
use moka::policy::EvictionPolicy;
use moka::sync::Cache;
use moka::Expiry;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::jwks;
use crate::sha256::{sha256, Sha256};

/// Default accepted distance between a proof's `iat` and now, either way.
pub const DEFAULT_IAT_WINDOW: Duration = Duration::from_secs(60);
/// Default number of proof `jti`s remembered per replica.
pub const DEFAULT_REPLAY_CAPACITY: u64 = 100_000;
/// Largest `DPoP` header accepted, in bytes (an RSA-4096 proof is about 1.5 KiB).
pub const MAX_PROOF_BYTES: usize = 8 * 1024;
/// Longest `jti` accepted (each one is remembered for the iat window).
const MAX_JTI_BYTES: usize = 256;

/// Proof algorithms accepted: asymmetric only (RFC 9449 §4.2; never `none`, never HS*). In the
/// order of the `algs` challenge parameter.
pub const ALGORITHMS: [Algorithm; 9] = [
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
];

/// `algs` for a `WWW-Authenticate: DPoP` challenge (RFC 9449 §7.1).
pub const ALGS_PARAMETER: &str = "ES256 ES384 EdDSA PS256 PS384 PS512 RS256 RS384 RS512";

/// JWK members that only a private or symmetric key has (RFC 7518 §6.2.2, §6.3.2, §6.4).
const PRIVATE_MEMBERS: [&str; 8] = ["d", "p", "q", "dp", "dq", "qi", "oth", "k"];

/// Why a DPoP proof was refused (all answered `invalid_dpop_proof`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DpopError {
    #[error("no DPoP proof was sent")]
    Missing,
    #[error("the proof is larger than {MAX_PROOF_BYTES} bytes")]
    TooLarge,
    #[error("the proof is not a compact JWS with JSON header and claims")]
    Malformed,
    #[error("typ is not dpop+jwt")]
    Type,
    #[error("alg is not an accepted asymmetric algorithm")]
    Algorithm,
    #[error("jwk contains private or symmetric key members")]
    PrivateKey,
    #[error("jwk is missing or not a usable public key for alg")]
    Key,
    #[error("signature does not verify with the embedded jwk")]
    Signature,
    #[error("jti, htm, htu, iat or ath is missing or has the wrong type")]
    Claims,
    #[error("htm does not match the request method")]
    Method,
    #[error("htu does not match the request URI")]
    Uri,
    #[error("iat is outside the accepted window")]
    IssuedAt,
    #[error("ath does not match the access token")]
    TokenHash,
    #[error("jti has been seen before")]
    Replayed,
}

impl DpopError {
    /// A short RFC 6750 `error_description` (only characters the grammar allows).
    pub fn description(self) -> &'static str {
        match self {
            DpopError::Missing => "The DPoP proof is missing",
            DpopError::TooLarge => "The DPoP proof is too large",
            DpopError::Malformed => "The DPoP proof is malformed",
            DpopError::Type => "The DPoP proof typ is not dpop+jwt",
            DpopError::Algorithm => "The DPoP proof alg is not supported",
            DpopError::PrivateKey => "The DPoP proof jwk contains private key material",
            DpopError::Key => "The DPoP proof jwk is not a usable public key",
            DpopError::Signature => "The DPoP proof signature is invalid",
            DpopError::Claims => "The DPoP proof claims are missing or invalid",
            DpopError::Method => "The DPoP proof htm does not match the request method",
            DpopError::Uri => "The DPoP proof htu does not match the request URI",
            DpopError::IssuedAt => "The DPoP proof iat is outside the accepted window",
            DpopError::TokenHash => "The DPoP proof ath does not match the access token",
            DpopError::Replayed => "The DPoP proof has been used before",
        }
    }
}

/// What the proof is checked against: the request it came with.
#[derive(Debug, Clone, Copy)]
pub struct ProofContext<'a> {
    /// The request method, exactly as received (`htm` is compared case-sensitively).
    pub method: &'a str,
    /// `scheme://authority/path` of the request (query and fragment are ignored).
    pub uri: &'a str,
    /// The access token the proof must be bound to (`ath`).
    pub access_token: &'a str,
    /// Unix seconds.
    pub now: i64,
    /// Largest accepted `|iat - now|`.
    pub iat_window: Duration,
}

/// A proof that passed every check except the replay check, which needs the token's binding
/// first (only a proof whose key matches the token is remembered).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedProof {
    /// RFC 7638 SHA-256 thumbprint of the proof key, base64url.
    pub jkt: String,
    pub jti: String,
    pub iat: i64,
}

#[derive(Deserialize)]
struct ProofClaims {
    jti: String,
    htm: String,
    htu: String,
    iat: i64,
    ath: String,
}

/// Verifies one proof against its request. Never panics on any input.
pub fn verify_proof(proof: &str, ctx: &ProofContext<'_>) -> Result<VerifiedProof, DpopError> {
    parse_proof(proof)?.verify(ctx)
}

/// A proof whose header passed (`typ`, `alg`, a public `jwk` with a thumbprint), not verified
/// yet: the caller compares [`ProofHeader::jkt`] with the token's `cnf.jkt` first, so a proof by
/// a key the token is not bound to costs no signature check.
#[derive(Debug)]
pub struct ProofHeader<'a> {
    proof: &'a str,
    alg: Algorithm,
    jwk: Value,
    /// RFC 7638 SHA-256 thumbprint of the embedded key, base64url.
    pub jkt: String,
}

/// Reads and checks a proof's header. Never panics on any input.
pub fn parse_proof(proof: &str) -> Result<ProofHeader<'_>, DpopError> {
    if proof.len() > MAX_PROOF_BYTES {
        return Err(DpopError::TooLarge);
    }
    let mut parts = proof.split('.');
    let (Some(header), Some(_), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(DpopError::Malformed);
    };
    let mut header = decode_json_object(header)?;
    let alg = check_header(&header)?;
    if signature.is_empty() {
        return Err(DpopError::Signature);
    }
    let jwk = public_jwk(&mut header)?;
    let jkt = jwk_thumbprint(&jwk).ok_or(DpopError::Key)?;
    Ok(ProofHeader {
        proof,
        alg,
        jwk,
        jkt,
    })
}

impl ProofHeader<'_> {
    /// The key (validated as issuer keys are), the signature, then the claims against `ctx`.
    pub fn verify(self, ctx: &ProofContext<'_>) -> Result<VerifiedProof, DpopError> {
        let key = jwks::keys_from_jwks(&json!({ "keys": [self.jwk] }), &[self.alg])
            .ok()
            .and_then(|set| set.keys.into_iter().next())
            .ok_or(DpopError::Key)?;
        let validation = proof_validation(self.alg);
        let claims: ProofClaims = jsonwebtoken::decode(self.proof, &key.key, &validation)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::Json(_) => DpopError::Claims,
                _ => DpopError::Signature,
            })?
            .claims;
        check_claims(&claims, ctx)?;
        Ok(VerifiedProof {
            jkt: self.jkt,
            jti: claims.jti,
            iat: claims.iat,
        })
    }
}

fn decode_json_object(part: &str) -> Result<Map<String, Value>, DpopError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| DpopError::Malformed)?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(DpopError::Malformed),
    }
}

/// `typ` (`dpop+jwt`, RFC 7515 §4.1.9 allows the `application/` prefix, case-insensitive),
/// `alg` (asymmetric, from [`ALGORITHMS`]), no `crit` (no extension is understood).
fn check_header(header: &Map<String, Value>) -> Result<Algorithm, DpopError> {
    let typ = header.get("typ").and_then(Value::as_str).unwrap_or("");
    let typ = typ.to_ascii_lowercase();
    if typ.strip_prefix("application/").unwrap_or(&typ) != "dpop+jwt" {
        return Err(DpopError::Type);
    }
    if header.contains_key("crit") {
        return Err(DpopError::Malformed);
    }
    let alg = header
        .get("alg")
        .and_then(Value::as_str)
        .and_then(|name| name.parse::<Algorithm>().ok())
        .filter(|alg| ALGORITHMS.contains(alg))
        .ok_or(DpopError::Algorithm)?;
    Ok(alg)
}

/// The embedded `jwk` (taken out of the header): an object with no private or symmetric members.
fn public_jwk(header: &mut Map<String, Value>) -> Result<Value, DpopError> {
    let jwk = header.remove("jwk").ok_or(DpopError::Key)?;
    let members = jwk.as_object().ok_or(DpopError::Key)?;
    if PRIVATE_MEMBERS.iter().any(|m| members.contains_key(*m)) {
        return Err(DpopError::PrivateKey);
    }
    Ok(jwk)
}

/// Only the signature and the algorithm: the DPoP claims are checked by [`check_claims`].
fn proof_validation(alg: Algorithm) -> Validation {
    let mut v = Validation::new(alg);
    v.required_spec_claims.clear();
    v.validate_exp = false;
    v.validate_nbf = false;
    v.validate_aud = false;
    v
}

fn check_claims(claims: &ProofClaims, ctx: &ProofContext<'_>) -> Result<(), DpopError> {
    if claims.jti.is_empty() || claims.jti.len() > MAX_JTI_BYTES {
        return Err(DpopError::Claims);
    }
    if claims.htm != ctx.method {
        return Err(DpopError::Method);
    }
    let expected = normalise_htu(ctx.uri).ok_or(DpopError::Uri)?;
    if normalise_htu(&claims.htu).as_deref() != Some(expected.as_str()) {
        return Err(DpopError::Uri);
    }
    if claims.iat.abs_diff(ctx.now) > ctx.iat_window.as_secs() {
        return Err(DpopError::IssuedAt);
    }
    if claims.ath != access_token_hash(ctx.access_token) {
        return Err(DpopError::TokenHash);
    }
    Ok(())
}

/// `ath`: base64url SHA-256 of the access token (RFC 9449 §4.2).
pub fn access_token_hash(token: &str) -> String {
    URL_SAFE_NO_PAD.encode(sha256(token.as_bytes()))
}

/// RFC 7638 JWK SHA-256 thumbprint: the required members of the key type, in lexicographic
/// order, as compact JSON, hashed and base64url-encoded. `None` if a member is missing or not a
/// string, or the key type is not RSA, EC or OKP.
pub fn jwk_thumbprint(jwk: &Value) -> Option<String> {
    let members: &[&str] = match jwk.get("kty")?.as_str()? {
        "RSA" => &["e", "kty", "n"],
        "EC" => &["crv", "kty", "x", "y"],
        "OKP" => &["crv", "kty", "x"],
        _ => return None,
    };
    let mut canonical = String::from("{");
    for (i, name) in members.iter().enumerate() {
        let value = jwk.get(*name)?.as_str()?;
        if i > 0 {
            canonical.push(',');
        }
        // serde_json escapes exactly as RFC 7159 compact JSON requires.
        canonical.push_str(&serde_json::to_string(name).ok()?);
        canonical.push(':');
        canonical.push_str(&serde_json::to_string(value).ok()?);
    }
    canonical.push('}');
    Some(URL_SAFE_NO_PAD.encode(sha256(canonical.as_bytes())))
}

/// An `http`/`https` URI without query and fragment, normalised for comparison (RFC 9449 §4.3
/// asks for RFC 3986 §6.2.2 syntax-based and §6.2.3 scheme-based normalisation): scheme and host
/// lower-cased, the default port (and an empty one) elided, percent-escapes upper-cased and
/// unreserved characters decoded, dot segments removed, an empty path written `/`. `None` for
/// anything else (another scheme, userinfo, a bad escape, a character a URI may not contain).
pub fn normalise_htu(uri: &str) -> Option<String> {
    let uri = uri.split(['?', '#']).next()?;
    let (scheme, rest) = uri.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "http" => 80,
        "https" => 443,
        _ => return None,
    };
    let (authority, path) = rest.find('/').map_or((rest, ""), |i| rest.split_at(i));
    if authority.is_empty() || authority.contains('@') {
        return None;
    }
    let (host, port) = split_port(authority)?;
    let host = normalise_escapes(host)?.to_ascii_lowercase();
    if host.is_empty() {
        return None;
    }
    let path = remove_dot_segments(&normalise_escapes(path)?);
    let mut out = format!("{scheme}://{host}");
    if let Some(port) = port.filter(|p| *p != default_port) {
        out.push_str(&format!(":{port}"));
    }
    out.push_str(if path.is_empty() { "/" } else { &path });
    Some(out)
}

/// `host[:port]` or `[v6]:port`; an empty port is no port. `None` for a port that is not a
/// number.
fn split_port(authority: &str) -> Option<(&str, Option<u16>)> {
    let colon = match authority.rfind(':') {
        Some(i) if !authority[i..].contains(']') => i,
        _ => return Some((authority, None)),
    };
    let (host, port) = (&authority[..colon], &authority[colon + 1..]);
    if port.is_empty() {
        return Some((host, None));
    }
    if !port.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((host, Some(port.parse().ok()?)))
}

/// Upper-cases percent-escapes and decodes those of unreserved characters; refuses bad escapes,
/// control characters, spaces and non-ASCII.
fn normalise_escapes(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let hex = text.get(i + 1..i + 3)?;
            let decoded = u8::from_str_radix(hex, 16).ok()?;
            if !hex.bytes().all(|h| h.is_ascii_hexdigit()) {
                return None;
            }
            if crate::rules::route::is_unreserved(decoded) {
                out.push(decoded as char);
            } else {
                out.push_str(&format!("%{decoded:02X}"));
            }
            i += 3;
            continue;
        }
        if !b.is_ascii_graphic() {
            return None;
        }
        out.push(b as char);
        i += 1;
    }
    Some(out)
}

/// RFC 3986 §5.2.4 `remove_dot_segments`.
fn remove_dot_segments(path: &str) -> String {
    let mut output: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let last = segments.len().saturating_sub(1);
    let mut trailing_slash = false;
    for (i, segment) in segments.iter().enumerate() {
        match *segment {
            "." => trailing_slash = i == last,
            ".." => {
                output.pop();
                trailing_slash = i == last;
            }
            other => {
                output.push(other);
                trailing_slash = false;
            }
        }
    }
    let mut out = String::with_capacity(path.len());
    for segment in &output {
        out.push('/');
        out.push_str(segment);
    }
    if trailing_slash || (out.is_empty() && !path.is_empty()) {
        out.push('/');
    }
    out
}

/// Settings of DPoP verification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DpopSettings {
    /// Largest accepted `|iat - now|`; also how long a `jti` is remembered after its `iat`.
    pub iat_window: Duration,
    /// Most `jti`s remembered per replica (least recently used ones are forgotten first).
    pub replay_capacity: u64,
}

impl Default for DpopSettings {
    fn default() -> Self {
        DpopSettings {
            iat_window: DEFAULT_IAT_WINDOW,
            replay_capacity: DEFAULT_REPLAY_CAPACITY,
        }
    }
}

/// How long one remembered proof must stay: until its `iat` leaves the window.
struct UntilOutOfWindow;

impl Expiry<[u8; 32], Duration> for UntilOutOfWindow {
    fn expire_after_create(&self, _: &[u8; 32], ttl: &Duration, _: Instant) -> Option<Duration> {
        Some(*ttl)
    }
}

/// The proofs seen by this replica within their iat window, keyed by SHA-256(jkt, jti): a
/// second use of a proof is refused. Bounded: past `capacity` the least recently used entry is
/// forgotten (and counted, see [`ReplayCache::new`]), so capacity must cover the proofs one
/// replica sees in two windows. Other replicas' proofs are not seen at all.
#[derive(Clone)]
pub struct ReplayCache {
    inner: Cache<[u8; 32], Duration>,
    iat_window: Duration,
}

impl std::fmt::Debug for ReplayCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplayCache")
            .field("entries", &self.inner.entry_count())
            .field("iat_window", &self.iat_window)
            .finish()
    }
}

impl ReplayCache {
    /// `on_forced_eviction` is called for each entry forgotten before its time (capacity
    /// reached): a replay of that proof would then go unnoticed, so it is worth a metric.
    pub fn new(
        settings: DpopSettings,
        on_forced_eviction: impl Fn() + Send + Sync + 'static,
    ) -> ReplayCache {
        let inner = Cache::builder()
            .max_capacity(settings.replay_capacity)
            // LRU, not TinyLFU: a new proof must always be admitted (TinyLFU may refuse to
            // admit a key seen once, which would make that proof replayable).
            .eviction_policy(EvictionPolicy::lru())
            .expire_after(UntilOutOfWindow)
            .eviction_listener(move |_, _, cause| {
                if cause == RemovalCause::Size {
                    on_forced_eviction();
                }
            })
            .build();
        ReplayCache {
            inner,
            iat_window: settings.iat_window,
        }
    }

    /// Records the proof; `false` if it was already recorded (a replay). Atomic: of two
    /// concurrent uses of one proof, exactly one is first.
    pub fn first_use(&self, proof: &VerifiedProof, now: i64) -> bool {
        let mut hash = Sha256::new();
        hash.update(proof.jkt.as_bytes());
        hash.update([0]);
        hash.update(proof.jti.as_bytes());
        let key: [u8; 32] = hash.finish();
        // Remembered until iat + window has passed (then the iat check refuses it anyway).
        let window = self.iat_window.as_secs();
        let remaining = proof
            .iat
            .saturating_sub(now)
            .saturating_add_unsigned(window);
        let ttl = Duration::from_secs(remaining.clamp(0, 2 * window as i64) as u64 + 1);
        self.inner.entry(key).or_insert(ttl).is_fresh()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_7638_section_3_1_thumbprint() {
        let jwk = json!({
            "kty": "RSA",
            "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
            "e": "AQAB",
            "alg": "RS256",
            "kid": "2011-04-29"
        });
        assert_eq!(
            jwk_thumbprint(&jwk).as_deref(),
            Some("NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs")
        );
        // Optional members do not count; missing required ones make no thumbprint.
        assert_eq!(jwk_thumbprint(&json!({"kty": "RSA", "e": "AQAB"})), None);
        assert_eq!(
            jwk_thumbprint(&json!({"kty": "oct", "k": "c2VjcmV0"})),
            None
        );
        assert_eq!(
            jwk_thumbprint(&json!({"kty": "EC", "crv": "P-256", "x": "a", "y": 1})),
            None
        );
    }

    #[test]
    fn htu_is_compared_in_normal_form() {
        let same = [
            (
                "https://api.example.com/orders/1",
                "https://api.example.com/orders/1",
            ),
            (
                "HTTPS://API.Example.COM/orders/1",
                "https://api.example.com/orders/1",
            ),
            (
                "https://api.example.com:443/orders/1",
                "https://api.example.com/orders/1",
            ),
            ("http://api.example.com:80/x", "http://api.example.com/x"),
            ("https://api.example.com:/x", "https://api.example.com/x"),
            ("https://api.example.com", "https://api.example.com/"),
            (
                "https://api.example.com/a?x=1#f",
                "https://api.example.com/a",
            ),
            (
                "https://api.example.com/a/./b/../c",
                "https://api.example.com/a/c",
            ),
            (
                "https://api.example.com/%7euser/%2f",
                "https://api.example.com/~user/%2F",
            ),
            (
                "https://api.example.com/caf%c3%a9",
                "https://api.example.com/caf%C3%A9",
            ),
            ("https://[::1]:443/x", "https://[::1]/x"),
            ("https://[::1]:8443/x", "https://[::1]:8443/x"),
            (
                "https://api.example.com:08443/x",
                "https://api.example.com:8443/x",
            ),
            ("https://api.example.com/a/", "https://api.example.com/a/"),
            ("https://api.example.com/a/..", "https://api.example.com/"),
        ];
        for (raw, want) in same {
            assert_eq!(normalise_htu(raw).as_deref(), Some(want), "{raw}");
        }
        let different = [
            ("https://api.example.com/a", "http://api.example.com/a"),
            (
                "https://api.example.com/a",
                "https://api.example.com:8443/a",
            ),
            ("https://api.example.com/a", "https://api.example.com/a/"),
            ("https://api.example.com/a", "https://api.example.com/A"),
            ("https://api.example.com/a", "https://other.example.com/a"),
            ("http://api.example.com:443/a", "http://api.example.com/a"),
        ];
        for (a, b) in different {
            assert_ne!(normalise_htu(a), normalise_htu(b), "{a} vs {b}");
        }
        for bad in [
            "",
            "/orders/1",
            "api.example.com/orders",
            "ftp://api.example.com/x",
            "https://user@api.example.com/x",
            "https:///x",
            "https://api.example.com:x/",
            "https://api.example.com:99999/",
            "https://api.example.com/a%zz",
            "https://api.example.com/a%",
            "https://api.example.com/a b",
            "https://api.example.com/caf\u{e9}",
        ] {
            assert_eq!(normalise_htu(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn dot_segments_follow_rfc_3986() {
        for (raw, want) in [
            ("/a/b/c/./../../g", "/a/g"),
            ("/../a", "/a"),
            ("/a/b/.", "/a/b/"),
            ("/.", "/"),
            ("", ""),
            ("/", "/"),
        ] {
            assert_eq!(remove_dot_segments(raw), want, "{raw}");
        }
    }

    #[test]
    fn a_proof_is_first_used_once() {
        let cache = ReplayCache::new(DpopSettings::default(), || {});
        let proof = VerifiedProof {
            jkt: "k".into(),
            jti: "j".into(),
            iat: 1_000,
        };
        assert!(cache.first_use(&proof, 1_000));
        assert!(!cache.first_use(&proof, 1_001));
        // The same jti under another key is another proof.
        let other = VerifiedProof {
            jkt: "k2".into(),
            ..proof
        };
        assert!(cache.first_use(&other, 1_000));
    }
}
