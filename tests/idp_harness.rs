#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The test IdP itself: what the other real-IdP tests rely on. It issues RFC 9068 JWT access
//! tokens and opaque ones, introspects and revokes, binds tokens with DPoP and with a TLS client
//! certificate, counts requests, and rotates keys.

mod support;

use serde_json::json;
use support::idp::{
    ath, DpopKey, Idp, TokenRequest, AUDIENCE, DPOP_CLIENT, MTLS_CLIENT, ORDERS_CLIENT,
    RESOURCE_ES256, RESOURCE_JWT,
};

#[tokio::test]
async fn issues_jwt_and_opaque_tokens_and_introspects_and_revokes() {
    let idp = Idp::start().await;
    let token = idp
        .token(&TokenRequest::new(
            ORDERS_CLIENT,
            "orders:read",
            RESOURCE_JWT,
        ))
        .await;
    let (header, claims) = (token.header(), token.claims());
    assert_eq!(header["typ"], "at+jwt");
    assert_eq!(header["alg"], "RS256");
    assert_eq!(header["kid"], idp.stats().await.kids[0].as_str());
    assert_eq!(claims["iss"], idp.issuer.as_str());
    assert_eq!(claims["aud"], AUDIENCE);
    assert_eq!(claims["scope"], "orders:read");
    assert_eq!(claims["client_id"], ORDERS_CLIENT.id);
    let es = idp
        .token(&TokenRequest::new(
            ORDERS_CLIENT,
            "orders:read",
            RESOURCE_ES256,
        ))
        .await;
    assert_eq!(es.header()["alg"], "ES256");

    let opaque = idp.opaque("orders:read orders:write").await;
    assert!(!opaque.contains('.'), "{opaque}");
    let answer = idp.introspect(&opaque).await;
    assert_eq!(answer["active"], true, "{answer}");
    assert_eq!(answer["aud"], AUDIENCE);
    assert_eq!(answer["scope"], "orders:read orders:write");
    idp.revoke(ORDERS_CLIENT, &opaque).await;
    assert_eq!(idp.introspect(&opaque).await, json!({"active": false}));
    let stats = idp.stats().await;
    assert_eq!((stats.token, stats.introspection), (3, 2));
}

#[tokio::test]
async fn binds_tokens_with_dpop_and_with_a_client_certificate() {
    let idp = Idp::start().await;
    let key = DpopKey::generate();
    let mut request = TokenRequest::new(DPOP_CLIENT, "orders:read", RESOURCE_JWT);
    request.dpop = Some(key.proof("POST", &idp.token_endpoint(), json!({})));
    let bound = idp.token(&request).await;
    assert_eq!(bound.token_type, "DPoP");
    assert_eq!(bound.claims()["cnf"]["jkt"], key.thumbprint().as_str());
    // A proof for the resource server carries the token's hash.
    let proof = key.proof(
        "GET",
        "https://api.test/orders",
        json!({"ath": ath(&bound.access_token)}),
    );
    assert_eq!(support::idp::jwt_part(&proof, 0)["typ"], "dpop+jwt");
    // The DPoP-only client gets nothing without a proof.
    request.dpop = None;
    assert!(idp.try_token(&request).await.is_err());

    let cert = idp.ca.client("orders-mtls-client");
    let mut request = TokenRequest::new(MTLS_CLIENT, "orders:read", RESOURCE_JWT);
    request.client_cert = Some(&cert);
    let bound = idp.token(&request).await;
    assert_eq!(bound.claims()["cnf"]["x5t#S256"], cert.x5t_s256.as_str());
}

#[tokio::test]
async fn rotates_keys_and_counts_jwks_fetches() {
    let idp = Idp::start().await;
    let first = idp.stats().await.kids;
    let rotated = idp.rotate().await;
    assert_eq!(rotated.len(), 2);
    assert_eq!(rotated[1], first[0]);
    assert!(!idp.jwt("orders:read").await.is_empty());
    let token = idp
        .token(&TokenRequest::new(
            ORDERS_CLIENT,
            "orders:read",
            RESOURCE_JWT,
        ))
        .await;
    assert_eq!(token.header()["kid"], rotated[0].as_str());
    assert_eq!(idp.retire().await, vec![rotated[0].clone()]);
    let http = support::idp::https_client(&idp.ca.pem(), None);
    let body = http
        .get(idp.url("jwks"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let jwks: serde_json::Value = serde_json::from_str(&body).unwrap();
    let kids: Vec<&str> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap())
        .collect();
    assert!(
        kids.contains(&rotated[0].as_str()) && !kids.contains(&first[0].as_str()),
        "{kids:?}"
    );
    assert!(
        kids.contains(&"enc-1"),
        "an encryption key is published too: {kids:?}"
    );
    assert_eq!(idp.stats().await.jwks, 1);
}
