//! Token verification against RFC 8725 attacks and RFC 9068 rules, through the public
//! `Verifier` with the demo keys.

mod support;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use jsonwebtoken::{encode, Algorithm, Header};
use scopegate::reason::Reason;
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
fn alg_none_is_refused() {
    let head = B64.encode(br#"{"alg":"none","typ":"at+jwt"}"#);
    let body = B64.encode(claims("mallory", "orders:admin").to_string());
    for token in [format!("{head}.{body}."), format!("{head}.{body}")] {
        let err = verifier().verify(&token).unwrap_err();
        assert!(
            matches!(
                err.reason(),
                Reason::MalformedToken | Reason::AlgorithmNotAllowed
            ),
            "{err}"
        );
    }
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
    let token = encode(&h, &claims("mallory", "orders:admin"), &attacker_key()).unwrap();
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
