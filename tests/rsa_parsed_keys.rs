//! RSA tokens are verified with the key aws-lc parsed when the JWKS was loaded (one test in its
//! own process: jsonwebtoken's provider is process-wide and fixed at its first use, so no other
//! test may run before `install`).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a step that fails must fail the test, with its message"
)]

mod support;

use std::sync::Arc;

use jsonwebtoken::{encode, Algorithm, Header};
use scopegate::token::rsa_keys::{install, parsed_verifications};
use scopegate::token::{IssuerConfig, TokenError, Verifier};
use serde_json::json;
use support::tokens::{attacker_key, claims, sign, AUDIENCE, ISSUER};

#[test]
fn rsa_tokens_are_verified_with_the_parsed_key_and_forgeries_still_fail() {
    install();
    let dir = support::repo_path("examples/keys");
    let issuer = IssuerConfig::from_json(
        "test",
        &json!({"issuer": ISSUER, "audiences": [AUDIENCE], "algorithms": ["RS256", "PS256", "ES256"],
                "jwks_file": "demo-jwks.json"}),
        Some(&dir),
    )
    .unwrap();
    let verifier = Verifier::new([Arc::new(issuer)]);

    for alg in [Algorithm::RS256, Algorithm::PS256] {
        let before = parsed_verifications();
        let claims = verifier
            .verify(&sign(alg, &claims("alice", "orders:read")))
            .unwrap_or_else(|e| panic!("{alg:?}: {e}"));
        assert_eq!(claims.sub.as_deref(), Some("alice"));
        assert_eq!(
            parsed_verifications(),
            before + 1,
            "{alg:?}: parsed key not used"
        );
    }

    // A token signed by another key under the demo kid, and one with a flipped signature bit:
    // both checked with the parsed key, both refused.
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("demo-rsa-1".into());
    let forged = encode(&header, &claims("mallory", "admin"), &attacker_key()).unwrap();
    let genuine = sign(Algorithm::RS256, &claims("alice", "orders:read"));
    let (rest, signature) = genuine.rsplit_once('.').unwrap();
    let mut flipped = signature.as_bytes().to_vec();
    flipped[4] = if flipped[4] == b'A' { b'B' } else { b'A' };
    let tampered = format!("{rest}.{}", String::from_utf8(flipped).unwrap());
    for token in [forged, tampered] {
        let before = parsed_verifications();
        assert_eq!(verifier.verify(&token), Err(TokenError::InvalidSignature));
        assert_eq!(parsed_verifications(), before + 1);
    }

    // EC keys keep jsonwebtoken's own verifier.
    let before = parsed_verifications();
    verifier
        .verify(&sign(Algorithm::ES256, &claims("alice", "orders:read")))
        .unwrap();
    assert_eq!(parsed_verifications(), before);
}
