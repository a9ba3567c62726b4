//! RSA public keys parsed once, not on every signature check. `jsonwebtoken` builds its verifier
//! from a [`DecodingKey`] for each token, and its aws-lc verifier rebuilds the RSA key from `n`
//! and `e` each time (big numbers and a Montgomery context: ~12 % of an RS256 verification,
//! docs/benchmarks.md). Here every RSA key scopegate loads from a JWKS is parsed by aws-lc when
//! it is loaded, once per algorithm it may verify ([`ParsedRsaKey::new`]), and a `jsonwebtoken`
//! [`CryptoProvider`] (its own extension point, [`install`]) verifies with the parsed key when
//! one is registered for exactly that `n`, `e` and algorithm. Everything else (EC, Ed25519 and
//! HMAC keys, DPoP proofs' keys, signing) is `jsonwebtoken`'s aws-lc provider, unchanged; so is
//! the crypto itself, which is aws-lc's either way.
//!
//! The registry holds weak references: the [`ParsedRsaKey`] lives in the [`VerificationKey`]
//! that loaded it, and a key set that is replaced takes its parsed keys with it.
//!
//! [`VerificationKey`]: super::jwks::VerificationKey

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, OnceLock, Weak};

use arc_swap::ArcSwap;

use aws_lc_rs::signature::{
    ParsedPublicKey, RsaParameters, RsaPublicKeyComponents, RSA_PKCS1_2048_8192_SHA256,
    RSA_PKCS1_2048_8192_SHA384, RSA_PKCS1_2048_8192_SHA512, RSA_PSS_2048_8192_SHA256,
    RSA_PSS_2048_8192_SHA384, RSA_PSS_2048_8192_SHA512,
};
use jsonwebtoken::crypto::{aws_lc, CryptoProvider, JwtVerifier};
use jsonwebtoken::signature::{Error as SignatureError, Verifier};
use jsonwebtoken::{Algorithm, DecodingKey, DecodingKeyKind};

/// The aws-lc parameters `jsonwebtoken`'s own aws-lc verifier uses for `alg`.
fn parameters(alg: Algorithm) -> Option<&'static RsaParameters> {
    Some(match alg {
        Algorithm::RS256 => &RSA_PKCS1_2048_8192_SHA256,
        Algorithm::RS384 => &RSA_PKCS1_2048_8192_SHA384,
        Algorithm::RS512 => &RSA_PKCS1_2048_8192_SHA512,
        Algorithm::PS256 => &RSA_PSS_2048_8192_SHA256,
        Algorithm::PS384 => &RSA_PSS_2048_8192_SHA384,
        Algorithm::PS512 => &RSA_PSS_2048_8192_SHA512,
        _ => return None,
    })
}

struct Parsed {
    alg: Algorithm,
    key: ParsedPublicKey,
}

/// One RSA key parsed for one algorithm, registered while it (or a clone) lives.
#[derive(Clone)]
pub struct ParsedRsaKey(Arc<Parsed>);

impl std::fmt::Debug for ParsedRsaKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("ParsedRsaKey").field(&self.0.alg).finish()
    }
}

/// A registry entry: what the key is for, compared before the weak reference is touched.
#[derive(Clone)]
struct Registered {
    alg: Algorithm,
    n: Arc<[u8]>,
    e: Arc<[u8]>,
    parsed: Weak<Parsed>,
}

/// The parsed keys registered, published whole on each change (read on every RSA signature
/// check; entries whose key is gone are dropped at the next registration).
static REGISTRY: LazyLock<ArcSwap<Vec<Registered>>> = LazyLock::new(ArcSwap::default);

impl ParsedRsaKey {
    /// Parses `n`, `e` (big-endian, no leading zeros) for `alg` and registers the result;
    /// `None` for a non-RSA algorithm or a key aws-lc refuses (the token check then uses
    /// `jsonwebtoken`'s own verifier, which refuses it as well).
    pub fn new(n: &[u8], e: &[u8], alg: Algorithm) -> Option<ParsedRsaKey> {
        install();
        let key = RsaPublicKeyComponents { n, e }
            .to_parsed_public_key(parameters(alg)?)
            .ok()?;
        let parsed = Arc::new(Parsed { alg, key });
        let entry = Registered {
            alg,
            n: n.into(),
            e: e.into(),
            parsed: Arc::downgrade(&parsed),
        };
        REGISTRY.rcu(|registered| {
            let mut next: Vec<Registered> = registered
                .iter()
                .filter(|r| r.parsed.strong_count() > 0)
                .cloned()
                .collect();
            next.push(entry.clone());
            next
        });
        Some(ParsedRsaKey(parsed))
    }
}

/// The live parsed key for exactly these components and algorithm, if one is registered (an
/// entry whose key is gone may still be listed before a live one for the same key).
fn registered(alg: Algorithm, n: &[u8], e: &[u8]) -> Option<Arc<Parsed>> {
    REGISTRY
        .load()
        .iter()
        .filter(|r| r.alg == alg && *r.n == *n && *r.e == *e)
        .find_map(|r| r.parsed.upgrade())
}

/// Verifies with a parsed key (`jsonwebtoken` has checked the algorithm family and decoded
/// the signature).
struct ParsedVerifier(Arc<Parsed>);

/// Signature checks made with a parsed key, process-wide (benchmarks and tests show the path
/// is taken).
static PARSED_VERIFICATIONS: AtomicU64 = AtomicU64::new(0);

/// How many signature checks so far used a parsed key.
pub fn parsed_verifications() -> u64 {
    PARSED_VERIFICATIONS.load(Ordering::Relaxed)
}

impl Verifier<Vec<u8>> for ParsedVerifier {
    fn verify(&self, message: &[u8], signature: &Vec<u8>) -> Result<(), SignatureError> {
        PARSED_VERIFICATIONS.fetch_add(1, Ordering::Relaxed);
        self.0
            .key
            .verify_sig(message, signature)
            .map_err(SignatureError::from_source)
    }
}

impl JwtVerifier for ParsedVerifier {
    fn algorithm(&self) -> Algorithm {
        self.0.alg
    }
}

fn verifier_factory(
    alg: &Algorithm,
    key: &DecodingKey,
) -> jsonwebtoken::errors::Result<Box<dyn JwtVerifier>> {
    if let DecodingKeyKind::RsaModulusExponent { n, e } = key.kind() {
        if let Some(parsed) = registered(*alg, n, e) {
            return Ok(Box::new(ParsedVerifier(parsed)));
        }
    }
    (aws_lc::DEFAULT_PROVIDER.verifier_factory)(alg, key)
}

/// Makes this `jsonwebtoken`'s process-wide provider (once; later calls do nothing). Called when
/// a key is parsed and at start-up; if `jsonwebtoken` was used before (its default provider is
/// then fixed for the process) parsed keys go unused: every check is still made, only slower.
pub fn install() {
    static PROVIDER: OnceLock<CryptoProvider> = OnceLock::new();
    let provider = PROVIDER.get_or_init(|| CryptoProvider {
        verifier_factory,
        ..aws_lc::DEFAULT_PROVIDER.clone()
    });
    let _ = provider.install_default();
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::signature::{KeyPair, RsaKeyPair, RSA_PKCS1_SHA256, RSA_PSS_SHA256};

    /// A key of this test's own: tests run in parallel, and others register the demo keys.
    fn fresh_key() -> RsaKeyPair {
        RsaKeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap()
    }

    fn components(pair: &RsaKeyPair) -> (Vec<u8>, Vec<u8>) {
        let c: RsaPublicKeyComponents<Vec<u8>> = pair.public_key().into();
        (c.n, c.e)
    }

    fn sign(pair: &RsaKeyPair, padding: &'static dyn aws_lc_rs::signature::RsaEncoding) -> Vec<u8> {
        let mut signature = vec![0; pair.public_modulus_len()];
        pair.sign(
            padding,
            &SystemRandom::new(),
            b"header.payload",
            &mut signature,
        )
        .unwrap();
        signature
    }

    /// What the factory's verifier says, and whether it was the parsed one.
    fn verdict(alg: Algorithm, key: &DecodingKey, signature: &[u8]) -> (bool, bool) {
        let parsed = match key.kind() {
            DecodingKeyKind::RsaModulusExponent { n, e } => registered(alg, n, e).is_some(),
            DecodingKeyKind::SecretOrDer(_) => false,
        };
        let verifier = verifier_factory(&alg, key).unwrap();
        let ok = verifier
            .verify(b"header.payload", &signature.to_vec())
            .is_ok();
        (ok, parsed)
    }

    #[test]
    fn a_registered_key_verifies_as_jsonwebtokens_own_verifier_does() {
        let pair = fresh_key();
        let (n, e) = components(&pair);
        let key = DecodingKey::from_rsa_raw_components(&n, &e);
        let pkcs1 = sign(&pair, &RSA_PKCS1_SHA256);
        let pss = sign(&pair, &RSA_PSS_SHA256);
        let mut tampered = pkcs1.clone();
        tampered[10] ^= 1;
        let cases = [
            (Algorithm::RS256, &pkcs1, true),
            (Algorithm::RS256, &tampered, false),
            (Algorithm::RS256, &pss, false),
            (Algorithm::PS256, &pss, true),
            (Algorithm::PS256, &pkcs1, false),
            (Algorithm::RS384, &pkcs1, false),
        ];
        let unregistered: Vec<(bool, bool)> = cases
            .iter()
            .map(|(alg, sig, _)| verdict(*alg, &key, sig))
            .collect();
        let held: Vec<ParsedRsaKey> = [Algorithm::RS256, Algorithm::PS256, Algorithm::RS384]
            .into_iter()
            .filter_map(|alg| ParsedRsaKey::new(&n, &e, alg))
            .collect();
        assert_eq!(held.len(), 3);
        for ((alg, sig, expected), (default_ok, default_parsed)) in cases.iter().zip(unregistered) {
            let (ok, parsed) = verdict(*alg, &key, sig);
            assert!(!default_parsed, "{alg:?}: parsed before registration");
            assert!(parsed, "{alg:?}: the parsed key was not used");
            assert_eq!(ok, *expected, "{alg:?}");
            assert_eq!(
                ok, default_ok,
                "{alg:?}: differs from jsonwebtoken's verifier"
            );
        }
        drop(held);
        assert!(
            registered(Algorithm::RS256, &n, &e).is_none(),
            "dropped keys leave"
        );
        // A key set replaced by one with the same key: the old entry is dead, the new one found.
        let old = ParsedRsaKey::new(&n, &e, Algorithm::RS256).unwrap();
        let new = ParsedRsaKey::new(&n, &e, Algorithm::RS256).unwrap();
        drop(old);
        assert!(registered(Algorithm::RS256, &n, &e).is_some());
        drop(new);
        assert!(registered(Algorithm::RS256, &n, &e).is_none());
    }

    #[test]
    fn only_the_exact_key_is_found() {
        let pair = fresh_key();
        let (n, e) = components(&pair);
        let _held = ParsedRsaKey::new(&n, &e, Algorithm::RS512).unwrap();
        let mut other_n = n.clone();
        other_n[5] ^= 0x10;
        assert!(registered(Algorithm::RS512, &n, &e).is_some());
        assert!(registered(Algorithm::RS512, &other_n, &e).is_none());
        assert!(registered(Algorithm::RS512, &n, &[1, 0, 0, 1]).is_none());
        assert!(registered(Algorithm::PS512, &n, &e).is_none());
        assert!(ParsedRsaKey::new(&n, &e, Algorithm::ES256).is_none());
    }
}
