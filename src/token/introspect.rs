//! Opaque access tokens (RFC 7662 token introspection): a bearer token that is not a JWT is
//! sent to the introspection endpoint of the issuers that have one (in issuer-name order), with
//! scopegate's client credentials (HTTP Basic, RFC 7662 §2.1). Only `"active": true` counts;
//! the answer's `iss`, `aud`, `exp`, `nbf`, `iat`, `scope`, `sub`, `client_id`, `jti` and `cnf`
//! then go through the same validation as JWT claims ([`super::Claims`]), so revocations,
//! scopes and bindings apply to them alike.
//!
//! Answers, active or inactive, are cached by SHA-256(endpoint ‖ token) for at most the
//! configured cap (default 60 s) and never past the token's `exp`, so a token revoked at the IdP
//! stops working within the cap. An IdP error, timeout or unreadable answer denies (fail closed,
//! `introspection_failed`) and is never cached.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::sync::Cache;
use moka::Expiry;
use serde_json::Value;

use super::fetch::{FetchError, HttpsClient};
use super::remote::{KeyFetcher, RemoteKeys};
use super::{Claims, IssuerConfig, RawClaims, TokenError, Verifier};
use crate::sha256::Sha256;
use crate::store::unix_seconds;
use crate::telemetry::Metrics;

/// Longest time an introspection answer is reused.
pub const DEFAULT_INTROSPECTION_CACHE_TTL: Duration = Duration::from_secs(60);
/// Most introspection answers kept.
pub const DEFAULT_INTROSPECTION_CACHE_CAPACITY: u64 = 100_000;
/// Timeout of one introspection request: keep it below Envoy's ext_authz `timeout`.
pub const DEFAULT_INTROSPECTION_TIMEOUT: Duration = Duration::from_millis(400);

/// An issuer's `introspection` field, validated; the secret read from its file.
#[derive(Clone, PartialEq, Eq)]
pub struct IntrospectionSpec {
    /// `None`: the `introspection_endpoint` of the issuer's discovery document.
    pub endpoint: Option<String>,
    pub client_id: String,
    pub client_secret: String,
    pub ca_pem: Option<Vec<u8>>,
}

impl std::fmt::Debug for IntrospectionSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IntrospectionSpec")
            .field("endpoint", &self.endpoint)
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

/// Settings for every introspecting issuer (flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IntrospectionSettings {
    pub cache_ttl: Duration,
    pub cache_capacity: u64,
}

impl Default for IntrospectionSettings {
    fn default() -> Self {
        IntrospectionSettings {
            cache_ttl: DEFAULT_INTROSPECTION_CACHE_TTL,
            cache_capacity: DEFAULT_INTROSPECTION_CACHE_CAPACITY,
        }
    }
}

/// One issuer that introspects: its configuration, its HTTPS client, and (with discovery) the
/// remote keys task that found its endpoint.
#[derive(Debug)]
pub struct Introspector {
    pub issuer: Arc<IssuerConfig>,
    pub spec: IntrospectionSpec,
    client: Option<HttpsClient>,
    discovery: Option<Arc<RemoteKeys>>,
}

impl Introspector {
    /// `client`: `None` when it could not be built (then every introspection fails closed).
    pub fn new(
        issuer: Arc<IssuerConfig>,
        spec: IntrospectionSpec,
        timeout: Duration,
        discovery: Option<Arc<RemoteKeys>>,
    ) -> Introspector {
        let client = HttpsClient::new(spec.ca_pem.as_deref(), timeout)
            .inspect_err(|e| {
                tracing::error!(issuer = %issuer.name, error = %e, "introspection client");
            })
            .ok();
        Introspector::with_client(issuer, spec, client, discovery)
    }

    fn with_client(
        issuer: Arc<IssuerConfig>,
        spec: IntrospectionSpec,
        client: Option<HttpsClient>,
        discovery: Option<Arc<RemoteKeys>>,
    ) -> Introspector {
        Introspector {
            issuer,
            spec,
            client,
            discovery,
        }
    }

    /// The endpoint: configured, or found by discovery (`None` until discovery succeeded).
    pub fn endpoint(&self) -> Option<String> {
        match &self.spec.endpoint {
            Some(endpoint) => Some(endpoint.clone()),
            None => self.discovery.as_ref()?.introspection_endpoint(),
        }
    }

    async fn ask(&self, endpoint: &str, token: &str) -> Result<Value, String> {
        let client = self.client.as_ref().ok_or("no HTTPS client")?;
        let form = [("token", token), ("token_type_hint", "access_token")];
        let spec = &self.spec;
        let fetched = client
            .post_form(endpoint, &spec.client_id, &spec.client_secret, &form)
            .await
            .map_err(|e: FetchError| e.to_string())?;
        serde_json::from_slice(&fetched.body).map_err(|_| "answer is not JSON".to_string())
    }
}

/// The introspectors of a new verifier, in issuer-name order. The HTTPS client (and its
/// connections) is kept from `previous` when the introspection settings did not change.
pub(super) fn introspectors(
    by_issuer: &HashMap<String, Arc<IssuerConfig>>,
    remote: &HashMap<String, Arc<RemoteKeys>>,
    previous: Option<&Verifier>,
    fetcher: Option<&KeyFetcher>,
) -> Vec<Arc<Introspector>> {
    let timeout = fetcher.map_or(DEFAULT_INTROSPECTION_TIMEOUT, |f| {
        f.settings().introspection_timeout
    });
    let mut issuers: Vec<&Arc<IssuerConfig>> = by_issuer
        .values()
        .filter(|cfg| cfg.introspection.is_some())
        .collect();
    issuers.sort_by(|a, b| a.name.cmp(&b.name));
    let mut built = Vec::new();
    for cfg in issuers {
        let Some(spec) = cfg.introspection.clone() else {
            continue;
        };
        let discovery = remote.get(&cfg.issuer).cloned();
        let kept = previous
            .into_iter()
            .flat_map(|p| p.introspectors().iter())
            .find(|i| i.spec == spec && i.client.is_some());
        let introspector = match kept {
            Some(old) => {
                Introspector::with_client(cfg.clone(), spec, old.client.clone(), discovery)
            }
            None => Introspector::new(cfg.clone(), spec, timeout, discovery),
        };
        built.push(Arc::new(introspector));
    }
    built
}

/// What an introspection said, as cached.
#[derive(Debug, Clone)]
enum Answer {
    Active(Arc<Claims>),
    Inactive,
    /// Active, but the claims are not acceptable here (wrong audience, …).
    Refused(TokenError),
}

#[derive(Debug, Clone)]
struct Entry {
    answer: Answer,
    /// Issuer configuration the answer was judged with (as for the claims cache).
    generation: u64,
    ttl: Duration,
}

struct EntryExpiry;

impl Expiry<[u8; 32], Entry> for EntryExpiry {
    fn expire_after_create(&self, _: &[u8; 32], entry: &Entry, _: Instant) -> Option<Duration> {
        Some(entry.ttl)
    }
}

/// Introspection answers by SHA-256(endpoint ‖ token).
#[derive(Clone)]
pub struct IntrospectionCache {
    inner: Cache<[u8; 32], Entry>,
    max_ttl: Duration,
}

impl std::fmt::Debug for IntrospectionCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IntrospectionCache")
            .field("max_ttl", &self.max_ttl)
            .finish_non_exhaustive()
    }
}

impl IntrospectionCache {
    pub fn new(settings: &IntrospectionSettings) -> IntrospectionCache {
        IntrospectionCache {
            inner: Cache::builder()
                .max_capacity(settings.cache_capacity)
                .expire_after(EntryExpiry)
                .build(),
            max_ttl: settings.cache_ttl,
        }
    }

    fn get(&self, key: &[u8; 32], generation: u64) -> Option<Answer> {
        let entry = self.inner.get(key)?;
        let fresh = match &entry.answer {
            Answer::Active(claims) => claims.exp > unix_seconds(),
            Answer::Inactive | Answer::Refused(_) => true,
        };
        (fresh && entry.generation == generation).then_some(entry.answer)
    }

    fn insert(&self, key: [u8; 32], answer: Answer, generation: u64) {
        let ttl = match &answer {
            Answer::Active(claims) => {
                let left = claims.exp.saturating_sub(unix_seconds());
                self.max_ttl.min(Duration::from_secs(left.max(0) as u64))
            }
            Answer::Inactive | Answer::Refused(_) => self.max_ttl,
        };
        if !ttl.is_zero() {
            let entry = Entry {
                answer,
                generation,
                ttl,
            };
            self.inner.insert(key, entry);
        }
    }
}

/// SHA-256(endpoint ‖ NUL ‖ token): one answer per endpoint and token; the token is never stored.
fn cache_key(endpoint: &str, token: &str) -> [u8; 32] {
    let mut hash = Sha256::new();
    hash.update(endpoint.as_bytes());
    hash.update([0u8]);
    hash.update(token.as_bytes());
    hash.finish()
}

/// What the cache alone says about `token` (no network): `None` when an issuer that would be
/// asked has no cached answer.
pub fn cached(
    introspectors: &[Arc<Introspector>],
    token: &str,
    cache: &IntrospectionCache,
    generation: u64,
) -> Option<Result<Arc<Claims>, TokenError>> {
    for introspector in introspectors {
        let endpoint = introspector.endpoint()?;
        match cache.get(&cache_key(&endpoint, token), generation)? {
            Answer::Active(claims) => return Some(Ok(claims)),
            Answer::Inactive => {}
            Answer::Refused(e) => return Some(Err(e)),
        }
    }
    Some(Err(TokenError::Inactive))
}

/// Introspects `token` with each issuer in turn until one says it is active. All inactive:
/// `Inactive`. None active and one failed: `IntrospectionFailed` (it might have said active).
pub async fn introspect(
    introspectors: &[Arc<Introspector>],
    token: &str,
    cache: &IntrospectionCache,
    generation: u64,
    metrics: &Metrics,
) -> Result<Arc<Claims>, TokenError> {
    let mut failed = None;
    for introspector in introspectors {
        match introspect_one(introspector, token, cache, generation, metrics).await {
            Ok(Some(claims)) => return Ok(claims),
            Ok(None) => {}
            Err(TokenError::IntrospectionFailed(e)) => failed = Some(e),
            Err(refused) => return Err(refused),
        }
    }
    Err(failed.map_or(TokenError::Inactive, TokenError::IntrospectionFailed))
}

async fn introspect_one(
    introspector: &Introspector,
    token: &str,
    cache: &IntrospectionCache,
    generation: u64,
    metrics: &Metrics,
) -> Result<Option<Arc<Claims>>, TokenError> {
    let name = introspector.issuer.name.as_str();
    let Some(endpoint) = introspector.endpoint() else {
        metrics.keys.record_introspection(name, "no_endpoint");
        return Err(TokenError::IntrospectionFailed(
            "no endpoint (discovery pending)".into(),
        ));
    };
    let key = cache_key(&endpoint, token);
    let answer = match cache.get(&key, generation) {
        Some(answer) => answer,
        None => {
            let answer = match introspector.ask(&endpoint, token).await {
                Ok(value) => judge(&introspector.issuer, &value),
                Err(e) => {
                    metrics.keys.record_introspection(name, "error");
                    tracing::warn!(issuer = name, error = %e, "introspection failed (deny)");
                    return Err(TokenError::IntrospectionFailed(e));
                }
            };
            metrics.keys.record_introspection(name, answer.label());
            cache.insert(key, answer.clone(), generation);
            answer
        }
    };
    match answer {
        Answer::Active(claims) => Ok(Some(claims)),
        Answer::Inactive => Ok(None),
        Answer::Refused(e) => Err(e),
    }
}

impl Answer {
    fn label(&self) -> &'static str {
        match self {
            Answer::Active(_) => "active",
            Answer::Inactive => "inactive",
            Answer::Refused(_) => "refused",
        }
    }
}

/// Judges an introspection answer for `issuer`. Missing `iss` means this issuer; `aud` must
/// name one of its audiences (as for a JWT); `exp` and `nbf` are checked with its leeway; a
/// missing `exp` counts as "now + cache cap" (the answer itself is the authority). A refresh
/// token is never an access token.
fn judge(issuer: &IssuerConfig, value: &Value) -> Answer {
    if value.get("active") != Some(&Value::Bool(true)) {
        return Answer::Inactive;
    }
    match claims_from_answer(issuer, value) {
        Ok(claims) => Answer::Active(Arc::new(claims)),
        Err(e) => Answer::Refused(e),
    }
}

fn claims_from_answer(issuer: &IssuerConfig, value: &Value) -> Result<Claims, TokenError> {
    let invalid = |what: &str| TokenError::InvalidClaims(format!("introspection: {what}"));
    if value.get("token_type").and_then(Value::as_str) == Some("refresh_token") {
        return Err(invalid("a refresh token is not an access token"));
    }
    let mut answer = value
        .as_object()
        .cloned()
        .ok_or_else(|| invalid("not an object"))?;
    match answer.get("iss") {
        None => {
            answer.insert("iss".into(), Value::String(issuer.issuer.clone()));
        }
        Some(Value::String(iss)) if *iss == issuer.issuer => {}
        Some(_) => return Err(TokenError::UnknownIssuer("(introspection)".into())),
    }
    check_audience(issuer, answer.get("aud"))?;
    let now = unix_seconds();
    let leeway = issuer.leeway_seconds as i64;
    let exp = match answer.get("exp") {
        None => now.saturating_add(DEFAULT_INTROSPECTION_CACHE_TTL.as_secs() as i64),
        Some(exp) => exp.as_i64().ok_or_else(|| invalid("exp is not a number"))?,
    };
    if exp.saturating_add(leeway) <= now {
        return Err(TokenError::Expired);
    }
    if let Some(nbf) = answer.get("nbf") {
        let nbf = nbf.as_i64().ok_or_else(|| invalid("nbf is not a number"))?;
        if nbf > now.saturating_add(leeway) {
            return Err(TokenError::NotYetValid);
        }
    }
    answer.insert("exp".into(), Value::from(exp));
    let raw: RawClaims =
        serde_json::from_value(Value::Object(answer)).map_err(|e| invalid(&e.to_string()))?;
    super::issuer_binding(issuer, Claims::from_raw(raw, issuer.leeway_seconds)?)
}

fn check_audience(issuer: &IssuerConfig, aud: Option<&Value>) -> Result<(), TokenError> {
    let accepted = |a: &Value| {
        a.as_str()
            .is_some_and(|a| issuer.audiences.iter().any(|x| x == a))
    };
    let ok = match aud {
        Some(Value::Array(list)) => list.iter().any(accepted),
        Some(one) => accepted(one),
        None => false,
    };
    if ok {
        Ok(())
    } else {
        Err(TokenError::InvalidAudience)
    }
}

/// A bearer token that is not a compact JWS (`header.payload.signature`) is an opaque token.
pub fn is_opaque(token: &str) -> bool {
    token.bytes().filter(|b| *b == b'.').count() != 2
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn issuer() -> IssuerConfig {
        let dir = std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/keys"));
        IssuerConfig::from_json(
            "idp",
            &json!({"issuer":"https://idp.test/","audiences":["orders-api"],"algorithms":["RS256"],
                    "jwks_file":"demo-jwks.json"}),
            Some(&dir),
        )
        .unwrap()
    }

    fn active(extra: Value) -> Value {
        let mut v = json!({"active": true, "aud": "orders-api", "scope": "orders:read orders:write",
            "client_id": "c1", "sub": "alice", "exp": unix_seconds() + 300, "iat": unix_seconds()});
        for (k, x) in extra.as_object().unwrap() {
            match x {
                Value::Null => drop(v.as_object_mut().unwrap().remove(k)),
                x => v[k] = x.clone(),
            }
        }
        v
    }

    fn judged(v: Value) -> Result<Claims, String> {
        match judge(&issuer(), &v) {
            Answer::Active(c) => Ok((*c).clone()),
            Answer::Inactive => Err("inactive".into()),
            Answer::Refused(e) => Err(e.reason().as_str().into()),
        }
    }

    #[test]
    fn an_active_answer_becomes_claims() {
        let claims = judged(active(json!({}))).unwrap();
        assert_eq!(claims.iss, "https://idp.test/");
        assert_eq!(claims.sub.as_deref(), Some("alice"));
        assert_eq!(claims.client_id.as_deref(), Some("c1"));
        assert_eq!(claims.scopes, ["orders:read", "orders:write"]);
        let without_exp = judged(active(json!({"exp": null}))).unwrap_or_else(|e| panic!("{e}"));
        assert!(without_exp.exp > unix_seconds());
    }

    #[test]
    fn only_active_true_counts_and_claims_are_checked_as_for_a_jwt() {
        let cases = [
            (json!({"active": false}), "inactive"),
            (json!({"active": "true"}), "inactive"),
            (json!({}), "inactive"),
            (active(json!({"aud": "other"})), "invalid_audience"),
            (active(json!({"aud": null})), "invalid_audience"),
            (
                active(json!({"iss": "https://evil.test/"})),
                "unknown_issuer",
            ),
            (
                active(json!({"exp": unix_seconds() - 3600})),
                "token_expired",
            ),
            (
                active(json!({"nbf": unix_seconds() + 3600})),
                "token_not_yet_valid",
            ),
            (active(json!({"sub": "alice "})), "invalid_claims"),
            (
                active(json!({"iat": unix_seconds() + 3600})),
                "invalid_claims",
            ),
            (
                active(json!({"token_type": "refresh_token"})),
                "invalid_claims",
            ),
        ];
        for (answer, want) in cases {
            assert_eq!(judged(answer.clone()).unwrap_err(), want, "{answer}");
        }
        assert!(judged(active(json!({"aud": ["x", "orders-api"]}))).is_ok());
        let odd = judged(active(json!({"scope": "a  b\tc"}))).unwrap();
        assert_eq!(odd.scopes, ["a"], "only RFC 6749 scope-tokens are granted");
    }

    #[test]
    fn cache_keys_separate_endpoints_and_tokens() {
        assert_ne!(cache_key("https://a/i", "t"), cache_key("https://b/i", "t"));
        assert_ne!(
            cache_key("https://a/i", "t1"),
            cache_key("https://a/i", "t2")
        );
        assert_ne!(cache_key("https://a/it", ""), cache_key("https://a/i", "t"));
    }

    #[test]
    fn cached_answers_expire_with_the_token_and_the_generation() {
        let cache = IntrospectionCache::new(&IntrospectionSettings::default());
        let key = cache_key("https://a/i", "t");
        cache.insert(key, Answer::Inactive, 1);
        assert!(matches!(cache.get(&key, 1), Some(Answer::Inactive)));
        assert!(cache.get(&key, 2).is_none(), "another issuer configuration");
        let mut claims = judged(active(json!({}))).unwrap();
        claims.exp = unix_seconds() - 1;
        let other = cache_key("https://a/i", "expired");
        cache.insert(other, Answer::Active(Arc::new(claims)), 1);
        assert!(cache.get(&other, 1).is_none(), "never past exp");
    }

    #[test]
    fn opaque_means_not_three_parts() {
        assert!(is_opaque("CNrFtRdzOHlz_iB2Xy2m9EQR9DQTgz2TFkDirbvjpVQ"));
        assert!(is_opaque("a.b"));
        assert!(is_opaque("a.b.c.d"));
        assert!(!is_opaque("a.b.c"));
    }
}
