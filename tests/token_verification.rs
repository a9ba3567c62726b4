//! Token verification against RFC 8725 attacks and RFC 9068 rules, through the public
//! `Verifier` with the demo keys.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::disallowed_methods,
    reason = "tests, benchmarks and examples: a failed step stops them with its message, and they read their own environment"
)]

mod support;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use jsonwebtoken::{encode, Algorithm, Header};
use scopegate::reason::Reason;
use scopegate::token::jwks::{SkipReason, SkippedKey};
use scopegate::token::{IssuerConfig, TokenError, Verifier};
use serde_json::{json, Value};
use std::sync::Arc;
use support::tokens::{self, attacker_key, claims, demo_key, sign, AUDIENCE, ISSUER};

fn verifier() -> Verifier {
    let dir = support::repo_path("examples/keys");
    let asymmetric = IssuerConfig::from_json(
        "test",
        &json!({"issuer": ISSUER, "audiences": [AUDIENCE, "other-api"],
                "algorithms": ["RS256", "PS256", "ES256", "ES384", "EdDSA"],
                "jwks_file": "demo-jwks.json", "require_typ": "at+jwt"}),
        Some(&dir),
    )
    .unwrap();
    let hmac = IssuerConfig::from_json(
        "hs",
        &json!({"issuer": "https://hs.test/", "audiences": [AUDIENCE], "algorithms": ["HS256"],
                "hmac_secret_file": "demo-hs256.secret"}),
        Some(&dir),
    )
    .unwrap();
    Verifier::new([Arc::new(asymmetric), Arc::new(hmac)])
}

fn header(alg: Algorithm, kid: &str, typ: &str) -> Header {
    let mut h = Header::new(alg);
    h.kid = Some(kid.into());
    h.typ = Some(typ.into());
    h
}

fn reason(token: &str) -> Reason {
    verifier()
        .verify(token)
        .expect_err("token must be refused")
        .reason()
}

#[test]
fn every_supported_algorithm_verifies() {
    for alg in [
        Algorithm::RS256,
        Algorithm::PS256,
        Algorithm::ES256,
        Algorithm::ES384,
        Algorithm::EdDSA,
    ] {
        let verified = verifier().verify(&sign(alg, &claims("alice", "orders:read")));
        let claims = verified.unwrap_or_else(|e| panic!("{alg:?}: {e}"));
        assert_eq!(claims.sub.as_deref(), Some("alice"));
        assert_eq!(claims.client_id.as_deref(), Some("test-client"));
        assert_eq!(claims.scopes, vec!["orders:read"]);
    }
}

#[test]
fn hs256_works_only_with_its_shared_secret_issuer() {
    let mut c = claims("svc", "orders:read");
    c["iss"] = json!("https://hs.test/");
    let (key, _) = demo_key(Algorithm::HS256);
    let token = encode(&Header::new(Algorithm::HS256), &c, &key).unwrap();
    assert!(verifier().verify(&token).is_ok());
    // The HS issuer pins HS256 only: an RS256 token for it is refused.
    let rs = sign(Algorithm::RS256, &c);
    assert_eq!(reason(&rs), Reason::AlgorithmNotAllowed);
}

#[test]
fn hs256_signed_with_the_rsa_public_key_is_refused() {
    // The classic key-confusion attack: HMAC keyed with the issuer's public key.
    let public_pem = std::fs::read(support::repo_path("examples/keys/demo-rs256.pub.pem")).unwrap();
    let key = jsonwebtoken::EncodingKey::from_secret(&public_pem);
    let token = encode(
        &header(Algorithm::HS256, "demo-rsa-1", "at+jwt"),
        &claims("mallory", "orders:admin"),
        &key,
    )
    .unwrap();
    assert_eq!(reason(&token), Reason::AlgorithmNotAllowed);
}

#[test]
fn unknown_kid_and_wrong_key_type_for_kid() {
    let (key, _) = demo_key(Algorithm::RS256);
    let token = encode(
        &header(Algorithm::RS256, "no-such-kid", "at+jwt"),
        &claims("a", "s"),
        &key,
    )
    .unwrap();
    assert_eq!(reason(&token), Reason::UnknownKey);
    // kid of the P-384 key with alg ES256: a key is only used with algorithms of its own type.
    let (key, _) = demo_key(Algorithm::ES256);
    let token = encode(
        &header(Algorithm::ES256, "demo-ec-p384-1", "at+jwt"),
        &claims("a", "s"),
        &key,
    )
    .unwrap();
    assert_eq!(reason(&token), Reason::UnknownKey);
}

#[test]
fn forged_signature_with_jku_x5u_and_jwk_headers_is_refused() {
    let mut h = header(Algorithm::RS256, "demo-rsa-1", "at+jwt");
    h.jku = Some("https://attacker.example/jwks.json".into());
    h.x5u = Some("https://attacker.example/cert.pem".into());
    // The attacker's own public key, embedded: if it were used, this token would verify.
    h.jwk =
        Some(jsonwebtoken::jwk::Jwk::from_encoding_key(&attacker_key(), Algorithm::RS256).unwrap());
    let token = encode(&h, &claims("mallory", "orders:admin"), &attacker_key()).unwrap();
    let header = jsonwebtoken::decode_header(&token).unwrap();
    assert!(header.jwk.is_some() && header.jku.is_some() && header.x5u.is_some());
    assert_eq!(reason(&token), Reason::InvalidSignature);
    // Without a kid, every key of the right type is tried, and none verifies.
    let mut h = Header::new(Algorithm::RS256);
    h.typ = Some("at+jwt".into());
    let token = encode(&h, &claims("mallory", "orders:admin"), &attacker_key()).unwrap();
    assert_eq!(reason(&token), Reason::InvalidSignature);
}

#[test]
fn expiry_and_not_before_respect_leeway() {
    let now = tokens::now();
    let at = |exp: i64, nbf: i64| {
        let mut c = claims("a", "s");
        c["exp"] = json!(exp);
        c["nbf"] = json!(nbf);
        sign(Algorithm::RS256, &c)
    };
    assert_eq!(reason(&at(now - 120, now - 3600)), Reason::TokenExpired);
    assert!(
        verifier().verify(&at(now - 10, now - 3600)).is_ok(),
        "within the 30 s leeway"
    );
    assert_eq!(reason(&at(now + 3600, now + 120)), Reason::TokenNotYetValid);
    assert!(
        verifier().verify(&at(now + 3600, now + 10)).is_ok(),
        "within the 30 s leeway"
    );
}

#[test]
fn missing_exp_is_refused() {
    let mut c = claims("a", "s");
    c.as_object_mut().unwrap().remove("exp");
    assert_eq!(reason(&sign(Algorithm::RS256, &c)), Reason::InvalidClaims);
}

#[test]
fn issuer_and_audience_must_match() {
    let mut c = claims("a", "s");
    c["iss"] = json!("https://evil.test/");
    assert_eq!(reason(&sign(Algorithm::RS256, &c)), Reason::UnknownIssuer);
    let mut c = claims("a", "s");
    c["aud"] = json!("someone-else");
    assert_eq!(reason(&sign(Algorithm::RS256, &c)), Reason::InvalidAudience);
    let mut c = claims("a", "s");
    c.as_object_mut().unwrap().remove("aud");
    assert_eq!(reason(&sign(Algorithm::RS256, &c)), Reason::InvalidAudience);
    let mut c = claims("a", "s");
    c["aud"] = json!(["x", "other-api"]);
    assert!(
        verifier().verify(&sign(Algorithm::RS256, &c)).is_ok(),
        "one accepted audience suffices"
    );
}

#[test]
fn tampered_payload_and_stripped_signature_are_refused() {
    let token = sign(Algorithm::RS256, &claims("alice", "orders:read"));
    let parts: Vec<&str> = token.split('.').collect();
    let mut payload: Value = serde_json::from_slice(&B64.decode(parts[1]).unwrap()).unwrap();
    payload["scope"] = json!("orders:admin");
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        B64.encode(payload.to_string()),
        parts[2]
    );
    assert_eq!(reason(&tampered), Reason::InvalidSignature);
    let stripped = format!("{}.{}.", parts[0], parts[1]);
    assert_eq!(reason(&stripped), Reason::InvalidSignature);
    assert_eq!(reason("not-a-jwt"), Reason::MalformedToken);
    assert_eq!(reason("a.b.c"), Reason::MalformedToken);
}

#[test]
fn typ_must_be_an_access_token() {
    let (key, kid) = demo_key(Algorithm::RS256);
    let c = claims("a", "s");
    let jwt = encode(&header(Algorithm::RS256, kid, "JWT"), &c, &key).unwrap();
    assert_eq!(reason(&jwt), Reason::InvalidType);
    let mut no_typ = Header::new(Algorithm::RS256);
    no_typ.kid = Some(kid.into());
    assert_eq!(
        reason(&encode(&no_typ, &c, &key).unwrap()),
        Reason::InvalidType
    );
    let long_form = encode(
        &header(Algorithm::RS256, kid, "application/AT+JWT"),
        &c,
        &key,
    )
    .unwrap();
    assert!(verifier().verify(&long_form).is_ok());
}

#[test]
fn crit_header_is_refused() {
    let mut h = header(Algorithm::RS256, "demo-rsa-1", "at+jwt");
    h.crit = Some(vec!["exp-ext".into()]);
    let (key, _) = demo_key(Algorithm::RS256);
    let token = encode(&h, &claims("a", "s"), &key).unwrap();
    assert!(matches!(
        verifier().verify(&token),
        Err(TokenError::Malformed(_))
    ));
}

#[test]
fn scopes_come_from_scope_or_scp() {
    let mut c = claims("a", "a b  a");
    c["scp"] = json!(["c", "b"]);
    let got = verifier().verify(&sign(Algorithm::RS256, &c)).unwrap();
    assert_eq!(got.scopes, vec!["a", "b", "c"]);
    let mut c = claims("a", "");
    c.as_object_mut().unwrap().remove("scope");
    c["scp"] = json!("x y");
    let got = verifier().verify(&sign(Algorithm::RS256, &c)).unwrap();
    assert_eq!(got.scopes, vec!["x", "y"]);
    let mut c = claims("a", "");
    c["scope"] = json!(["not", "a", "string"]);
    assert_eq!(reason(&sign(Algorithm::RS256, &c)), Reason::InvalidClaims);
}

// ---- Key validation and kid selection (mixed JWKS) ----

/// A verifier for the test issuer over `jwks` (inline), pinning `algorithms`.
fn issuer_over(jwks: Value, algorithms: &[&str]) -> IssuerConfig {
    IssuerConfig::from_json(
        "mixed",
        &json!({"issuer": ISSUER, "audiences": [AUDIENCE], "algorithms": algorithms,
                "jwks": jwks, "require_typ": "at+jwt"}),
        None,
    )
    .unwrap()
}

/// The demo JWK with this kid.
fn demo_jwk(kid: &str) -> Value {
    let jwks: Value = serde_json::from_slice(
        &std::fs::read(support::repo_path("examples/keys/demo-jwks.json")).unwrap(),
    )
    .unwrap();
    jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == kid)
        .unwrap()
        .clone()
}

fn unknown_key(kid: &str, alg: &str) -> TokenError {
    TokenError::UnknownKey {
        kid: Some(kid.into()),
        alg: alg.into(),
    }
}

/// A 1024-bit RSA modulus written as 256 bytes (128 leading zero bytes), so its base64url is
/// 342 characters like a real 2048-bit one. Test-only key: its private half was thrown away.
const WEAK_1024_N: &str = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAACsu2xVeGjGDBxyWvY2prLJndtXl6HubEPuJ-HtCuFFGnwEgAfS4HbLggjw2S0TaduSxm-c_60PTlHwEIn-qYGu95qzgFTOHyOfQ3XoTK5DLppvirf4-HygO8k6NALwMR68LcPKDAVqloWmZM3Cvquvpo026NHSbl3VanaDjl987w";
/// An RS256 access token (kid `weak-1024`, `scope: orders:admin`, exp 2100-01-01) signed with
/// that 1024-bit key. aws-lc refuses to sign with a key under 2048 bits, so it was minted once
/// with Python `cryptography` (PKCS#1 v1.5, SHA-256) and pasted here.
const WEAK_1024_TOKEN: &str = "eyJhbGciOiJSUzI1NiIsInR5cCI6ImF0K2p3dCIsImtpZCI6IndlYWstMTAyNCJ9.eyJpc3MiOiJodHRwczovL2lkcC50ZXN0LyIsImF1ZCI6Im9yZGVycy1hcGkiLCJzdWIiOiJtYWxsb3J5IiwiY2xpZW50X2lkIjoidGVzdC1jbGllbnQiLCJzY29wZSI6Im9yZGVyczphZG1pbiIsImlhdCI6MTc2NzIyNTYwMCwibmJmIjoxNzY3MjI1NjAwLCJleHAiOjQxMDI0NDQ4MDAsImp0aSI6IndlYWstMTAyNC10b2tlbiJ9.VfkR-jEBj7Jmevkd0ZhGdGUPTjP47Ak4Ekb8S2WvgG-zzJToeBMHzoE0tDrkE6O_x_9S5Bjp3zCFBAUlryTPnTVUKzZODiUPRO0w-rO7xN2N30-zSVFc4ETACe3Xyb8ixDI6cXPqEujwhORBkXt52eyR5C5qpCxZfqOYfJ0ogzk";

#[test]
fn a_token_signed_by_a_zero_padded_1024_bit_key_is_refused() {
    use aws_lc_rs::signature::{
        RsaPublicKeyComponents, RSA_PKCS1_1024_8192_SHA256_FOR_LEGACY_USE_ONLY,
    };
    // The token really is signed by the published key (checked with aws-lc's legacy 1024-bit
    // verifier), so only the key check stands between it and `orders:admin`.
    let n = B64.decode(WEAK_1024_N).unwrap();
    assert_eq!(
        (n.len(), n.iter().take_while(|b| **b == 0).count()),
        (256, 128)
    );
    let (signed, signature) = WEAK_1024_TOKEN.rsplit_once('.').unwrap();
    let key = RsaPublicKeyComponents {
        n: &n[128..],
        e: &[1u8, 0, 1][..],
    };
    key.verify(
        &RSA_PKCS1_1024_8192_SHA256_FOR_LEGACY_USE_ONLY,
        signed.as_bytes(),
        &B64.decode(signature).unwrap(),
    )
    .expect("the weak token is genuinely signed");

    let weak =
        json!({"kty": "RSA", "kid": "weak-1024", "use": "sig", "n": WEAK_1024_N, "e": "AQAB"});
    let issuer = issuer_over(json!({"keys": [weak, demo_jwk("demo-rsa-1")]}), &["RS256"]);
    assert_eq!(
        issuer.skipped_keys,
        vec![SkippedKey {
            index: 0,
            kid: Some("weak-1024".into()),
            reason: SkipReason::RsaModulusTooShort(1024),
        }]
    );
    let verifier = Verifier::new([Arc::new(issuer)]);
    assert_eq!(
        verifier.verify(WEAK_1024_TOKEN),
        Err(unknown_key("weak-1024", "RS256"))
    );
    // The good key beside it still verifies.
    assert!(verifier
        .verify(&sign(Algorithm::RS256, &claims("alice", "orders:read")))
        .is_ok());
}

#[test]
fn a_zero_padded_2048_bit_key_still_verifies() {
    // aws-lc refuses RSA components with leading zeros; scopegate strips them before handing the
    // key over, so an IdP that pads its modulus keeps working.
    let mut padded = demo_jwk("demo-rsa-1");
    let mut n = vec![0u8];
    n.extend(B64.decode(padded["n"].as_str().unwrap()).unwrap());
    padded["n"] = json!(B64.encode(&n));
    padded["e"] = json!("AAEAAQ");
    let issuer = issuer_over(json!({"keys": [padded]}), &["RS256", "PS256"]);
    assert!(issuer.skipped_keys.is_empty());
    let verifier = Verifier::new([Arc::new(issuer)]);
    for alg in [Algorithm::RS256, Algorithm::PS256] {
        let verified = verifier.verify(&sign(alg, &claims("alice", "orders:read")));
        assert_eq!(verified.map(|c| c.sub), Ok(Some("alice".into())), "{alg:?}");
    }
}

#[test]
fn a_short_ed25519_key_is_skipped_before_the_library_sees_it() {
    // jsonwebtoken 11 panics on an Ed25519 key shorter than 32 bytes when a token arrives for it.
    let mut short = demo_jwk("demo-ed25519-1");
    let x = B64.decode(short["x"].as_str().unwrap()).unwrap();
    short["x"] = json!(B64.encode(&x[..31]));
    short["kid"] = json!("short-ed");
    let issuer = issuer_over(
        json!({"keys": [short, demo_jwk("demo-ed25519-1"), demo_jwk("demo-rsa-1")]}),
        &["EdDSA", "RS256"],
    );
    assert_eq!(
        issuer.skipped_keys,
        vec![SkippedKey {
            index: 0,
            kid: Some("short-ed".into()),
            reason: SkipReason::Ed25519KeyLength(31),
        }]
    );
    let verifier = Verifier::new([Arc::new(issuer)]);
    let (key, _) = demo_key(Algorithm::EdDSA);
    let token = encode(
        &header(Algorithm::EdDSA, "short-ed", "at+jwt"),
        &claims("mallory", "orders:admin"),
        &key,
    )
    .unwrap();
    assert_eq!(
        verifier.verify(&token),
        Err(unknown_key("short-ed", "EdDSA"))
    );
    // Good keys still verify, with their kid and without one (every EdDSA key is tried).
    for alg in [Algorithm::EdDSA, Algorithm::RS256] {
        let verified = verifier.verify(&sign(alg, &claims("alice", "orders:read")));
        assert!(verified.is_ok(), "{alg:?}: {verified:?}");
    }
    let mut no_kid = Header::new(Algorithm::EdDSA);
    no_kid.typ = Some("at+jwt".into());
    let token = encode(&no_kid, &claims("alice", "orders:read"), &key).unwrap();
    assert!(verifier.verify(&token).is_ok());
}

#[test]
fn a_kid_miss_falls_back_only_to_keys_without_kid() {
    // The RSA key has a kid; the P-256 key is published without one (RFC 7517: kid is optional).
    let mut ec_no_kid = demo_jwk("demo-ec-p256-1");
    ec_no_kid.as_object_mut().unwrap().remove("kid");
    let issuer = issuer_over(
        json!({"keys": [demo_jwk("demo-rsa-1"), ec_no_kid]}),
        &["RS256", "ES256"],
    );
    let verifier = Verifier::new([Arc::new(issuer)]);
    let with_kid = |alg: Algorithm, kid: &str| {
        let (key, _) = demo_key(alg);
        encode(
            &header(alg, kid, "at+jwt"),
            &claims("alice", "orders:read"),
            &key,
        )
        .unwrap()
    };
    // An unknown kid is tried against the kid-less key, and verifies if that key signed it…
    let verified = verifier.verify(&with_kid(Algorithm::ES256, "rotated-away"));
    assert_eq!(verified.map(|c| c.sub), Ok(Some("alice".into())));
    // …but never against a key with another kid, even one that would verify the signature.
    assert_eq!(
        verifier.verify(&with_kid(Algorithm::RS256, "rotated-away")),
        Err(unknown_key("rotated-away", "RS256"))
    );
    // A kid that names a key selects that key only: no fallback to the kid-less key.
    assert_eq!(
        verifier.verify(&with_kid(Algorithm::ES256, "demo-rsa-1")),
        Err(unknown_key("demo-rsa-1", "ES256"))
    );
    // Known kid, right type: verifies as before.
    assert!(verifier
        .verify(&with_kid(Algorithm::RS256, "demo-rsa-1"))
        .is_ok());
}

#[test]
fn an_hs256_token_with_a_kid_is_checked_against_the_kid_less_secret() {
    // An HMAC secret has no kid: a kid in an HS256 token no longer makes it unverifiable.
    let mut c = claims("svc", "orders:read");
    c["iss"] = json!("https://hs.test/");
    let (key, _) = demo_key(Algorithm::HS256);
    let mut h = Header::new(Algorithm::HS256);
    h.kid = Some("hs-2026".into());
    let token = encode(&h, &c, &key).unwrap();
    assert_eq!(
        verifier().verify(&token).map(|c| c.sub),
        Ok(Some("svc".into()))
    );
    // The forged variant (attacker key, unknown kid) still fails on the signature.
    let token = encode(&h, &c, &jsonwebtoken::EncodingKey::from_secret(&[7u8; 32])).unwrap();
    assert_eq!(verifier().verify(&token), Err(TokenError::InvalidSignature));
}

#[test]
fn the_demo_jwks_loads_without_skipped_keys() {
    let dir = support::repo_path("examples/keys");
    let issuer = IssuerConfig::from_json(
        "test",
        &json!({"issuer": ISSUER, "audiences": [AUDIENCE],
                "algorithms": ["RS256", "PS256", "ES256", "ES384", "EdDSA"],
                "jwks_file": "demo-jwks.json"}),
        Some(&dir),
    )
    .unwrap();
    assert_eq!(issuer.keys.len(), 4);
    assert_eq!(issuer.skipped_keys, vec![]);
}

#[test]
fn alg_none_reasons_are_exact() {
    let head = B64.encode(br#"{"alg":"none","typ":"at+jwt"}"#);
    let body = B64.encode(claims("mallory", "orders:admin").to_string());
    let three_parts = verifier().verify(&format!("{head}.{body}.")).unwrap_err();
    let two_parts = verifier().verify(&format!("{head}.{body}")).unwrap_err();
    assert_eq!(three_parts, TokenError::AlgorithmNotAllowed("none".into()));
    // Not three segments: not a JWS at all.
    assert_eq!(two_parts.reason(), Reason::MalformedToken, "{two_parts}");
}
