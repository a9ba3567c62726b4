//! Properties of the DPoP path: arbitrary `DPoP` header bytes, JWS-shaped proofs with arbitrary
//! JSON, and validly signed proofs with arbitrary claims never panic (a panic would be a 503
//! `internal_error`) and never allow a DPoP-bound token.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::{Arc, OnceLock};

use envoy_types::ext_authz::v3::pb::{CheckRequest, HttpResponse};
use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue};
use proptest::prelude::*;
use scopegate::cache::ClaimsCache;
use scopegate::check::{CheckSettings, Checker};
use scopegate::grpc::{AuthorizationService, ResponseSettings};
use scopegate::rules::document;
use scopegate::store::{Snapshot, SnapshotStore};
use scopegate::telemetry::{DecisionLogMode, Metrics};
use serde_json::{json, Value};
use support::binding::{self, dpop_token, DpopKey};
use support::server::check_request;
use support::tokens;

const HTU: &str = "https://api.example.com/orders/1";

struct Fixture {
    service: AuthorizationService,
    key: DpopKey,
    token: String,
}

/// One in-process service (what the gRPC method runs) and one DPoP-bound token for all cases.
fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let rules = format!(
            "issuers:\n{}routes:\n  orders: {{host: api.example.com, path: /orders/**, require: {{all: [orders:read]}}}}\n",
            tokens::issuer_yaml()
        );
        let set = document::parse_document(&rules, std::path::Path::new("rules.yaml")).unwrap();
        let store = SnapshotStore::new();
        store.publish(Snapshot::build(set, 1, None));
        let settings = CheckSettings {
            decision_log: DecisionLogMode::Off,
            ..CheckSettings::default()
        };
        let cache = ClaimsCache::new(1_000, std::time::Duration::from_secs(60));
        let checker = Checker::new(store, cache, Metrics::new(), settings);
        let key = DpopKey::es256();
        let token = dpop_token("alice", "orders:read", &key);
        Fixture {
            service: AuthorizationService::new(Arc::new(checker), ResponseSettings::default()),
            key,
            token,
        }
    })
}

fn request(token: &str, proof: &[u8]) -> CheckRequest {
    let auth = format!("DPoP {token}");
    let mut request = check_request(
        "GET",
        "api.example.com",
        "/orders/1",
        &[("authorization", &auth)],
    );
    let http = request
        .attributes
        .as_mut()
        .and_then(|a| a.request.as_mut())
        .and_then(|r| r.http.as_mut())
        .unwrap();
    http.scheme = "https".into();
    http.header_map = Some(HeaderMap {
        headers: vec![HeaderValue {
            key: "dpop".into(),
            raw_value: proof.to_vec(),
            ..Default::default()
        }],
    });
    request
}

/// The status and reason of the answer; panics on an allow.
fn denied(proof: &[u8]) -> (u32, String) {
    let f = fixture();
    // The handler is async (identity-provider steps); this request needs none, so it is ready
    // on the first poll.
    let response =
        futures_util::FutureExt::now_or_never(f.service.check_request(&request(&f.token, proof)))
            .expect("completes without waiting");
    let Some(HttpResponse::DeniedResponse(denied)) = response.http_response else {
        panic!("allowed with proof {:?}", String::from_utf8_lossy(proof));
    };
    let body: Value = serde_json::from_str(&denied.body).unwrap();
    let status = denied.status.map_or(0, |s| s.code as u32);
    (status, body["reason"].as_str().unwrap().to_string())
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|n| json!(n)),
        "[ -~]{0,12}".prop_map(Value::String),
        prop::sample::select(vec![
            "dpop+jwt", "ES256", "EdDSA", "HS256", "none", "EC", "P-256", "OKP", "RSA", "GET", HTU
        ])
        .prop_map(|s| json!(s)),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(
                prop::sample::select(vec![
                    "typ", "alg", "jwk", "kty", "crv", "x", "y", "n", "e", "d", "k", "jti", "htm",
                    "htu", "iat", "ath", "crit", "use"
                ])
                .prop_map(String::from),
                inner,
                0..6
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn assert_refused(proof: &[u8]) -> Result<(), TestCaseError> {
    let (status, reason) = denied(proof);
    prop_assert!(
        (status == 401 && (reason == "invalid_dpop_proof" || reason == "binding_mismatch"))
            || (status == 400 && reason == "invalid_request"),
        "{status} {reason} for {:?}",
        String::from_utf8_lossy(proof)
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_dpop_header_bytes_never_panic(
        raw in prop::collection::vec(any::<u8>(), 0..400),
        dots in prop::collection::vec(any::<u16>(), 0..4),
    ) {
        let mut raw = raw;
        for d in dots {
            raw.insert(usize::from(d) % (raw.len() + 1), b'.');
        }
        assert_refused(&raw)?;
    }

    #[test]
    fn jws_shaped_proofs_with_arbitrary_json_never_panic(
        header in json_value(), claims in json_value(), signature in "[A-Za-z0-9_-]{0,90}",
    ) {
        let proof = format!("{}.{}.{signature}", binding::b64(header.to_string()), binding::b64(claims.to_string()));
        assert_refused(proof.as_bytes())?;
    }

    #[test]
    fn signed_proofs_with_arbitrary_claims_or_jwk_members_never_allow(
        claims in json_value(), extra in json_value(), jti in "[ -~]{0,300}",
    ) {
        let f = fixture();
        // Valid header, arbitrary claims.
        assert_refused(f.key.proof_with(&f.key.header(), &claims).as_bytes())?;
        // Valid claims but an arbitrary jti (never the same twice: no case is allowed twice).
        let mut good = binding::proof_claims("POST", HTU, &f.token);
        good["jti"] = json!(jti);
        assert_refused(f.key.proof_with(&f.key.header(), &good).as_bytes())?;
        // The real key's jwk with arbitrary members merged in.
        let mut header = f.key.header();
        if let Value::Object(members) = extra {
            for (k, v) in members {
                header["jwk"][k] = v;
            }
        }
        let claims = binding::proof_claims("GET", "https://api.example.com/other", &f.token);
        assert_refused(f.key.proof_with(&header, &claims).as_bytes())?;
    }
}
