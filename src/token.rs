//! JWT access-token verification (RFC 7519, RFC 8725, RFC 9068): choose the issuer by `iss`,
//! check `alg` against the issuer's pinned list (the token never chooses), pick the key by `kid`
//! among keys of the matching type, verify signature, `iss`, `aud`, `exp`, `nbf` and `typ`, and
//! return the [`Claims`] that the decision needs. `jku`, `x5u` and `jwk` headers are ignored;
//! `crit` is refused (no extension is understood). [`binding`] and [`dpop`]: sender-constrained
//! tokens (RFC 8705, RFC 9449), checked per request after verification. [`remote`]: keys
//! fetched from the issuer (`jwks_uri`, OIDC discovery) in the background; [`introspect`]: opaque
//! tokens (RFC 7662); [`fetch`]: the HTTPS client both use.

pub mod binding;
pub mod dpop;
pub mod fetch;
pub mod introspect;
pub mod issuer;
pub mod jwks;
pub mod remote;
pub mod rsa_keys;

use std::collections::HashMap;
use std::sync::Arc;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Header};
use serde::Deserialize;

pub use binding::{BindingError, Confirmation};
pub use issuer::IssuerConfig;
pub use jwks::VerificationKey;
pub use remote::{KeyFetcher, KeyStamp, RemoteKeySettings, RemoteKeys};

use introspect::Introspector;

use crate::reason::Reason;
use crate::rules::is_scope_token;

/// Why a token was refused. Every variant maps to a stable [`Reason`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token is {0} bytes, above the {1}-byte limit")]
    TooLarge(usize, usize),
    #[error("token is not a well-formed JWT: {0}")]
    Malformed(String),
    #[error("no configured issuer matches iss {0:?}")]
    UnknownIssuer(String),
    #[error("alg {0} is not allowed for this issuer")]
    AlgorithmNotAllowed(String),
    #[error("no key matches kid {kid:?} for alg {alg}")]
    UnknownKey { kid: Option<String>, alg: String },
    #[error("signature does not verify")]
    InvalidSignature,
    #[error("token has expired")]
    Expired,
    #[error("token is not valid yet (nbf)")]
    NotYetValid,
    #[error("aud does not contain an accepted audience")]
    InvalidAudience,
    #[error("typ header {0:?} is not the required type")]
    InvalidType(Option<String>),
    #[error("claims are invalid: {0}")]
    InvalidClaims(String),
    #[error("binding: {0}")]
    Binding(BindingError),
    #[error("introspection says the token is not active")]
    Inactive,
    #[error("introspection failed: {0}")]
    IntrospectionFailed(String),
}

impl TokenError {
    pub fn reason(&self) -> Reason {
        match self {
            TokenError::TooLarge(..) => Reason::TokenTooLarge,
            TokenError::Malformed(_) => Reason::MalformedToken,
            TokenError::UnknownIssuer(_) => Reason::UnknownIssuer,
            TokenError::AlgorithmNotAllowed(_) => Reason::AlgorithmNotAllowed,
            TokenError::UnknownKey { .. } => Reason::UnknownKey,
            TokenError::InvalidSignature => Reason::InvalidSignature,
            TokenError::Expired => Reason::TokenExpired,
            TokenError::NotYetValid => Reason::TokenNotYetValid,
            TokenError::InvalidAudience => Reason::InvalidAudience,
            TokenError::InvalidType(_) => Reason::InvalidType,
            TokenError::InvalidClaims(_) => Reason::InvalidClaims,
            TokenError::Binding(e) => e.reason(),
            TokenError::Inactive => Reason::TokenInactive,
            TokenError::IntrospectionFailed(_) => Reason::IntrospectionFailed,
        }
    }

    /// Not a verdict on the token: the identity provider could not be asked. Fail closed, as
    /// "try again later" (503), so a client does not throw away a token that may be good.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, TokenError::IntrospectionFailed(_))
    }

    /// A short RFC 6750 `error_description` (only characters the grammar allows).
    pub fn description(&self) -> &'static str {
        match self {
            TokenError::TooLarge(..) => "The access token is too large",
            TokenError::Malformed(_) => "The access token is malformed",
            TokenError::UnknownIssuer(_) => "The access token issuer is not trusted",
            TokenError::AlgorithmNotAllowed(_)
            | TokenError::UnknownKey { .. }
            | TokenError::InvalidSignature => "The access token signature is invalid",
            TokenError::Expired => "The access token expired",
            TokenError::NotYetValid => "The access token is not valid yet",
            TokenError::InvalidAudience => "The access token audience is not accepted",
            TokenError::InvalidType(_) => "The access token type is not accepted",
            TokenError::InvalidClaims(_) => "The access token claims are invalid",
            TokenError::Binding(e) => e.description(),
            TokenError::Inactive => "The access token is not active",
            TokenError::IntrospectionFailed(_) => "The access token could not be checked",
        }
    }
}

/// What a verified access token says about its bearer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    pub iss: String,
    pub sub: Option<String>,
    /// RFC 9068 `client_id`, else `azp`.
    pub client_id: Option<String>,
    pub jti: Option<String>,
    pub iat: Option<i64>,
    pub exp: i64,
    /// From `scope` (space-delimited) and/or `scp` (array or string), de-duplicated.
    pub scopes: Vec<String>,
    /// `cnf` (RFC 7800): the key or certificate the token is bound to; `None` for a plain bearer
    /// token. Enforced on every request by [`binding::enforce`].
    pub cnf: Option<Confirmation>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct RawClaims {
    iss: String,
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    client_id: Option<String>,
    #[serde(default)]
    azp: Option<String>,
    #[serde(default)]
    jti: Option<String>,
    #[serde(default)]
    iat: Option<i64>,
    exp: i64,
    #[serde(default)]
    scope: Option<String>,
    #[serde(default)]
    scp: Option<OneOrMany>,
    #[serde(default)]
    cnf: Option<serde_json::Value>,
}

impl Claims {
    /// Checks the claims that the signature check does not: identity claims must be exactly what
    /// an upstream will see (no surrounding whitespace, no control characters), `iat` must not be
    /// in the future (a future `iat` would escape `revoked/sub` and `revoked/client` cut-offs),
    /// and only valid scope-tokens are granted.
    fn from_raw(raw: RawClaims, leeway_seconds: u64) -> Result<Claims, TokenError> {
        for (name, value) in [
            ("sub", &raw.sub),
            ("client_id", &raw.client_id),
            ("azp", &raw.azp),
            ("jti", &raw.jti),
        ] {
            if let Some(value) = value {
                check_identity_claim(name, value)?;
            }
        }
        if let Some(iat) = raw.iat {
            let now = jsonwebtoken::get_current_timestamp() as i64;
            let latest = now.saturating_add(leeway_seconds as i64);
            if iat > latest {
                return Err(TokenError::InvalidClaims("iat is in the future".into()));
            }
        }
        let cnf = raw
            .cnf
            .as_ref()
            .map(Confirmation::from_claim)
            .transpose()
            .map_err(TokenError::Binding)?;
        Ok(Claims {
            cnf,
            scopes: granted_scopes(&raw),
            iss: raw.iss,
            sub: raw.sub,
            client_id: raw.client_id.or(raw.azp),
            jti: raw.jti,
            iat: raw.iat,
            exp: raw.exp,
        })
    }
}

/// An identity claim is compared byte for byte with revocations and sent to the upstream in a
/// header, where HTTP strips surrounding whitespace: `"bad-user "` would escape a revocation of
/// `bad-user` and still reach the upstream as `bad-user`. Refused, never trimmed.
fn check_identity_claim(name: &str, value: &str) -> Result<(), TokenError> {
    let padded = value.starts_with(char::is_whitespace) || value.ends_with(char::is_whitespace);
    if value.is_empty() || padded || value.chars().any(char::is_control) {
        return Err(TokenError::InvalidClaims(format!(
            "{name} is empty, has surrounding whitespace or a control character"
        )));
    }
    Ok(())
}

/// Scopes from `scope` (space-delimited) and `scp` (array, or a space-delimited string),
/// de-duplicated. Only RFC 6749 §3.3 scope-tokens count: an `scp` element such as `"x admin"`
/// is neither granted nor echoed to the upstream (where it would read as two scopes).
fn granted_scopes(raw: &RawClaims) -> Vec<String> {
    let mut scopes: Vec<String> = Vec::new();
    let mut push = |s: &str| {
        if is_scope_token(s) && !scopes.iter().any(|x| x == s) {
            scopes.push(s.to_string());
        }
    };
    raw.scope
        .as_deref()
        .into_iter()
        .flat_map(|s| s.split(' '))
        .for_each(&mut push);
    match &raw.scp {
        Some(OneOrMany::One(s)) => s.split(' ').for_each(&mut push),
        Some(OneOrMany::Many(list)) => list.iter().for_each(|s| push(s)),
        None => {}
    }
    scopes
}

#[derive(Deserialize)]
struct IssuerPeek {
    #[serde(default)]
    iss: Option<String>,
}

/// Verifies tokens against a set of issuers. Built once per snapshot; immutable (remote key sets
/// are read through their own lock-free handles).
#[derive(Debug, Default)]
pub struct Verifier {
    by_issuer: HashMap<String, Arc<IssuerConfig>>,
    /// Remote keys, by `iss`.
    remote: HashMap<String, Arc<RemoteKeys>>,
    /// Issuers that introspect opaque tokens, in name order.
    introspectors: Vec<Arc<Introspector>>,
}

/// A verification and what the check path may do next.
#[derive(Debug)]
pub struct Verified {
    pub result: Result<Claims, TokenError>,
    /// The remote issuer's key epoch the claims were verified under (for the claims cache).
    pub stamp: Option<KeyStamp>,
    /// The token's `kid` is not in the remote issuer's set: a refetch may bring it.
    pub kid_miss: Option<Arc<RemoteKeys>>,
}

impl Verifier {
    /// Static keys only: remote-key issuers get no keys (nothing is fetched).
    pub fn new<I: IntoIterator<Item = Arc<IssuerConfig>>>(issuers: I) -> Verifier {
        Verifier::build(issuers, None, None)
    }

    /// A verifier for `issuers`. A remote-key issuer whose key spec is unchanged from
    /// `previous` keeps its fetch task (no refetch on a snapshot rebuild); a new one is started
    /// by `fetcher` (without one, it stays empty).
    pub fn build<I: IntoIterator<Item = Arc<IssuerConfig>>>(
        issuers: I,
        previous: Option<&Verifier>,
        fetcher: Option<&KeyFetcher>,
    ) -> Verifier {
        let by_issuer: HashMap<String, Arc<IssuerConfig>> = issuers
            .into_iter()
            .map(|cfg| (cfg.issuer.clone(), cfg))
            .collect();
        let mut remote = HashMap::new();
        for cfg in by_issuer.values() {
            if let Some(spec) = &cfg.remote {
                let reused = previous.and_then(|p| p.remote.values().find(|r| r.spec() == spec));
                let keys = match (reused, fetcher) {
                    (Some(keys), _) => keys.clone(),
                    (None, Some(fetcher)) => Arc::new(fetcher.start(&cfg.name, spec)),
                    (None, None) => Arc::new(RemoteKeys::inert(&cfg.name, spec)),
                };
                remote.insert(cfg.issuer.clone(), keys);
            }
        }
        let introspectors = introspect::introspectors(&by_issuer, &remote, previous, fetcher);
        Verifier {
            by_issuer,
            remote,
            introspectors,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.by_issuer.is_empty()
    }

    /// The remote key sets (readiness, age metrics).
    pub fn remote_keys(&self) -> impl Iterator<Item = &Arc<RemoteKeys>> {
        self.remote.values()
    }

    /// Whether every remote-key issuer has keys.
    pub fn remote_keys_loaded(&self) -> bool {
        self.remote.values().all(|r| r.is_loaded())
    }

    /// The issuers that introspect opaque tokens, in name order.
    pub fn introspectors(&self) -> &[Arc<Introspector>] {
        &self.introspectors
    }

    /// Verifies a compact JWS token. The caller has already bounded its size.
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        self.verify_detailed(token).result
    }

    /// Verifies a compact JWS token, saying which key epoch it was verified under and whether
    /// its `kid` is missing from a remote key set.
    pub fn verify_detailed(&self, token: &str) -> Verified {
        let (issuer, header) = match self.issuer_of(token) {
            Ok(found) => found,
            Err(e) => return Verified::failed(e),
        };
        let Some(remote) = self.remote.get(&issuer.issuer) else {
            return Verified::failed_or(verify_with_issuer(issuer, &issuer.keys, &header, token));
        };
        // The epoch first, then the keys: a key removed in between makes the stamp stale.
        let stamp = remote.stamp();
        let set = remote.keys();
        let result = verify_with_issuer(issuer, &set.keys, &header, token);
        let kid_miss = match (&result, header.kid.as_deref()) {
            (Err(TokenError::UnknownKey { .. } | TokenError::InvalidSignature), Some(kid)) => {
                (!set.keys.iter().any(|k| k.kid.as_deref() == Some(kid))).then(|| remote.clone())
            }
            _ => None,
        };
        Verified {
            result,
            stamp: Some(stamp),
            kid_miss,
        }
    }

    fn issuer_of(&self, token: &str) -> Result<(&IssuerConfig, Header), TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| header_error(token, e))?;
        if header.crit.is_some() {
            return Err(TokenError::Malformed("crit header is not supported".into()));
        }
        let peek: IssuerPeek =
            jsonwebtoken::dangerous::insecure_decode_claims(token).map_err(malformed)?;
        let iss = peek
            .iss
            .ok_or_else(|| TokenError::InvalidClaims("iss is missing".into()))?;
        let issuer = self
            .by_issuer
            .get(&iss)
            .ok_or_else(|| TokenError::UnknownIssuer(iss.clone()))?;
        Ok((issuer, header))
    }
}

impl Verified {
    fn failed(e: TokenError) -> Verified {
        Verified::failed_or(Err(e))
    }

    fn failed_or(result: Result<Claims, TokenError>) -> Verified {
        Verified {
            result,
            stamp: None,
            kid_miss: None,
        }
    }
}

fn verify_with_issuer(
    issuer: &IssuerConfig,
    issuer_keys: &[VerificationKey],
    header: &Header,
    token: &str,
) -> Result<Claims, TokenError> {
    let alg = header.alg;
    let Some(validation) = issuer.validation(alg) else {
        return Err(TokenError::AlgorithmNotAllowed(format!("{alg:?}")));
    };
    if let Some(required) = &issuer.require_typ {
        if !typ_matches(header.typ.as_deref(), required) {
            return Err(TokenError::InvalidType(header.typ.clone()));
        }
    }
    // `kid` is optional (RFC 7517 §4.5). A kid that names a key of the issuer selects the keys
    // with that kid; a kid that names none may still be signed by a key published without kid
    // (HMAC secrets have none), never by a key with another kid. No kid: every key of the type.
    let kid = header.kid.as_deref();
    let kid_is_known =
        kid.is_some_and(|kid| issuer_keys.iter().any(|k| k.kid.as_deref() == Some(kid)));
    let mut keys = issuer_keys
        .iter()
        .filter(|k| {
            k.allows(alg)
                && match kid {
                    None => true,
                    Some(kid) if kid_is_known => k.kid.as_deref() == Some(kid),
                    Some(_) => k.kid.is_none(),
                }
        })
        .peekable();
    if keys.peek().is_none() {
        return Err(TokenError::UnknownKey {
            kid: header.kid.clone(),
            alg: format!("{alg:?}"),
        });
    }
    let mut last = TokenError::InvalidSignature;
    for key in keys {
        match jsonwebtoken::decode::<RawClaims>(token, &key.key, validation) {
            Ok(data) => {
                let claims = Claims::from_raw(data.claims, issuer.leeway_seconds)?;
                return issuer_binding(issuer, claims);
            }
            Err(e) => {
                last = map_error(e.kind());
                if last != TokenError::InvalidSignature {
                    return Err(last);
                }
            }
        }
    }
    Err(last)
}

/// The issuer's `require_binding`, for JWT and introspected claims alike.
fn issuer_binding(issuer: &IssuerConfig, claims: Claims) -> Result<Claims, TokenError> {
    match issuer.require_binding {
        Some(required) if !binding::satisfies(claims.cnf.as_ref(), required) => {
            Err(TokenError::Binding(BindingError::Required(required)))
        }
        _ => Ok(claims),
    }
}

/// RFC 9068 §4: `at+jwt` may also be written `application/at+jwt`; compared case-insensitively.
fn typ_matches(typ: Option<&str>, required: &str) -> bool {
    let Some(typ) = typ else { return false };
    let strip = |s: &str| {
        let lower = s.to_ascii_lowercase();
        lower
            .strip_prefix("application/")
            .map(str::to_string)
            .unwrap_or(lower)
    };
    strip(typ) == strip(required)
}

/// A header jsonwebtoken cannot read: when it names an algorithm nobody may use (`none`, or one
/// jsonwebtoken does not know), say so (`algorithm_not_allowed`), else it is malformed.
/// Only on the error path: the header is decoded a second time here.
fn header_error(token: &str, e: jsonwebtoken::errors::Error) -> TokenError {
    use base64::Engine as _;
    #[derive(Deserialize)]
    struct AlgPeek {
        alg: String,
    }
    let segments = token.split('.').count();
    let head = token.split('.').next().unwrap_or("");
    let peek = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(head)
        .ok()
        .and_then(|json| serde_json::from_slice::<AlgPeek>(&json).ok());
    match peek {
        Some(p) if segments == 3 && parse_algorithm(&p.alg).is_none() => {
            TokenError::AlgorithmNotAllowed(p.alg.chars().take(16).collect())
        }
        _ => malformed(e),
    }
}

fn malformed(e: jsonwebtoken::errors::Error) -> TokenError {
    match e.kind() {
        ErrorKind::InvalidAlgorithmName | ErrorKind::UnsupportedAlgorithm => {
            TokenError::AlgorithmNotAllowed("unsupported".into())
        }
        _ => TokenError::Malformed(e.to_string()),
    }
}

fn map_error(kind: &ErrorKind) -> TokenError {
    match kind {
        ErrorKind::InvalidSignature
        | ErrorKind::InvalidEcdsaKey
        | ErrorKind::InvalidEddsaKey
        | ErrorKind::InvalidRsaKey(_)
        | ErrorKind::InvalidKeyFormat => TokenError::InvalidSignature,
        ErrorKind::ExpiredSignature => TokenError::Expired,
        ErrorKind::ImmatureSignature => TokenError::NotYetValid,
        ErrorKind::InvalidAudience => TokenError::InvalidAudience,
        ErrorKind::MissingRequiredClaim(c) if c == "aud" => TokenError::InvalidAudience,
        ErrorKind::InvalidIssuer => TokenError::UnknownIssuer("(mismatch)".into()),
        ErrorKind::InvalidAlgorithm
        | ErrorKind::InvalidAlgorithmName
        | ErrorKind::UnsupportedAlgorithm
        | ErrorKind::MissingAlgorithm => TokenError::AlgorithmNotAllowed("mismatch".into()),
        ErrorKind::MissingRequiredClaim(c) => TokenError::InvalidClaims(format!("{c} is missing")),
        ErrorKind::InvalidClaimFormat(c) => {
            TokenError::InvalidClaims(format!("{c} has the wrong type"))
        }
        ErrorKind::Json(e) => TokenError::InvalidClaims(e.to_string()),
        other => TokenError::Malformed(format!("{other:?}")),
    }
}

/// Algorithm names as written in configuration (`RS256`, `EdDSA`, …); `none` is not one.
pub fn parse_algorithm(name: &str) -> Option<Algorithm> {
    name.parse().ok()
}
