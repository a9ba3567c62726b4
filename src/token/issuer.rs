//! An issuer entry (`issuers/<name>`): who may sign tokens, for which audiences, with which pinned
//! algorithms and keys. Validated once when the entry is loaded, so verification never fails on
//! configuration. Keys are inline (`jwks`), in a file (`jwks_file`), an HMAC secret file, or
//! remote (`jwks_uri`, or `discovery: true`), fetched by [`super::remote`]; opaque tokens are
//! introspected (`introspection`, [`super::introspect`]).

use std::path::{Path, PathBuf};
use std::time::Duration;

use jsonwebtoken::{Algorithm, Validation};
use serde::Deserialize;
use serde_json::Value;

use super::binding::BindingRequirement;
use super::fetch;
use super::introspect::IntrospectionSpec;
use super::jwks::{self, JwksKeys, KeyError, SkippedKey, VerificationKey};
use super::remote::{KeyLocation, RemoteSpec};

const DEFAULT_LEEWAY_SECONDS: u64 = 30;
const MAX_LEEWAY_SECONDS: u64 = 300;

/// Why an issuer entry was rejected.
#[derive(Debug, thiserror::Error)]
pub enum IssuerError {
    #[error("{0}")]
    Shape(String),
    #[error("algorithms: {0}")]
    Algorithms(String),
    #[error("keys: {0}")]
    Keys(#[from] KeyError),
    #[error("{0}")]
    Invalid(&'static str),
    #[error("{0}")]
    Field(String),
}

/// Shortest `refresh_min` accepted.
const MIN_REFRESH: Duration = Duration::from_secs(1);

/// A validated issuer.
#[derive(Debug, Clone)]
pub struct IssuerConfig {
    pub name: String,
    /// Exact `iss` value.
    pub issuer: String,
    pub audiences: Vec<String>,
    pub algorithms: Vec<Algorithm>,
    pub keys: Vec<VerificationKey>,
    /// JWKS keys left out (encryption keys, unsupported or weak keys, algorithms not pinned),
    /// with their reasons, for logs and `scopegate rules validate`.
    pub skipped_keys: Vec<SkippedKey>,
    pub require_typ: Option<String>,
    pub leeway_seconds: u64,
    /// Every token of this issuer must be sender-constrained this way (`require_binding`).
    pub require_binding: Option<BindingRequirement>,
    /// Keys fetched from the issuer (`keys` is then empty: the verifier reads the fetched set).
    pub remote: Option<RemoteSpec>,
    /// RFC 7662 introspection of opaque tokens.
    pub introspection: Option<IntrospectionSpec>,
    /// Prebuilt validation (iss, aud, exp, nbf, leeway) for each pinned algorithm (one
    /// algorithm each: `jsonwebtoken` refuses a list that mixes key families).
    validations: Vec<(Algorithm, Validation)>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIssuer {
    issuer: String,
    audiences: Vec<String>,
    #[serde(default)]
    algorithms: Vec<String>,
    #[serde(default)]
    jwks: Option<Value>,
    #[serde(default)]
    jwks_uri: Option<String>,
    #[serde(default)]
    discovery: bool,
    #[serde(default)]
    ca_file: Option<String>,
    #[serde(default)]
    refresh_min: Option<DurationField>,
    #[serde(default)]
    refresh_max: Option<DurationField>,
    #[serde(default)]
    introspection: Option<RawIntrospection>,
    #[serde(default)]
    jwks_file: Option<String>,
    #[serde(default)]
    hmac_secret_file: Option<String>,
    #[serde(default)]
    require_typ: Option<String>,
    #[serde(default)]
    leeway_seconds: Option<u64>,
    #[serde(default)]
    require_binding: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    description: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIntrospection {
    #[serde(default)]
    endpoint: Option<String>,
    client_id: String,
    client_secret_file: String,
}

/// A duration as seconds (`300`) or humantime text (`"5m"`).
#[derive(Deserialize)]
#[serde(untagged)]
enum DurationField {
    Seconds(u64),
    Text(String),
}

impl IssuerConfig {
    /// Validates an issuer value and loads its keys; relative files resolve against `base_dir`.
    pub fn from_json(
        name: &str,
        value: &Value,
        base_dir: Option<&Path>,
    ) -> Result<Self, IssuerError> {
        let raw = RawIssuer::deserialize(value).map_err(|e| IssuerError::Shape(e.to_string()))?;
        if raw.issuer.is_empty() {
            return Err(IssuerError::Invalid("issuer must not be empty"));
        }
        if raw.audiences.is_empty() || raw.audiences.iter().any(String::is_empty) {
            return Err(IssuerError::Invalid(
                "audiences must list at least one non-empty audience",
            ));
        }
        let introspection_only = !has_key_source(&raw) && raw.introspection.is_some();
        let algorithms = match introspection_only && raw.algorithms.is_empty() {
            true => Vec::new(),
            false => parse_algorithms(&raw.algorithms)?,
        };
        let ca_pem = read_ca(&raw, base_dir)?;
        let remote = remote_spec(&raw, &algorithms, ca_pem.clone())?;
        let introspection = introspection_spec(&raw, ca_pem, base_dir)?;
        let JwksKeys {
            keys,
            skipped: skipped_keys,
        } = match remote.is_some() || introspection_only {
            true => JwksKeys {
                keys: Vec::new(),
                skipped: Vec::new(),
            },
            false => load_keys(&raw, &algorithms, base_dir)?,
        };
        for skipped in &skipped_keys {
            if skipped.is_expected() {
                tracing::debug!(issuer = name, index = skipped.index, kid = ?skipped.kid,
                    reason = %skipped.reason, "JWKS key skipped");
            } else {
                tracing::warn!(issuer = name, index = skipped.index, kid = ?skipped.kid,
                    reason = %skipped.reason, "JWKS key skipped");
            }
        }
        let leeway_seconds = raw.leeway_seconds.unwrap_or(DEFAULT_LEEWAY_SECONDS);
        if leeway_seconds > MAX_LEEWAY_SECONDS {
            return Err(IssuerError::Invalid("leeway_seconds must be at most 300"));
        }
        let require_binding = parse_binding(raw.require_binding.as_deref())?;
        let validations = algorithms
            .iter()
            .map(|alg| (*alg, build_validation(&raw, *alg, leeway_seconds)))
            .collect();
        Ok(IssuerConfig {
            name: name.to_string(),
            issuer: raw.issuer,
            audiences: raw.audiences,
            algorithms,
            keys,
            skipped_keys,
            require_typ: raw.require_typ,
            leeway_seconds,
            require_binding,
            remote,
            introspection,
            validations,
        })
    }

    /// The validation for one pinned algorithm.
    pub fn validation(&self, alg: Algorithm) -> Option<&Validation> {
        self.validations
            .iter()
            .find(|(a, _)| *a == alg)
            .map(|(_, v)| v)
    }
}

fn parse_algorithms(names: &[String]) -> Result<Vec<Algorithm>, IssuerError> {
    if names.is_empty() {
        return Err(IssuerError::Algorithms(
            "at least one algorithm must be pinned".into(),
        ));
    }
    let mut algorithms = Vec::new();
    for name in names {
        let alg = super::parse_algorithm(name).ok_or_else(|| {
            IssuerError::Algorithms(format!(
                "{name:?} is not supported (RS256/384/512, PS256/384/512, ES256, ES384, EdDSA, HS256/384/512)"
            ))
        })?;
        algorithms.push(alg);
    }
    let hmac = algorithms.iter().filter(|a| is_hmac(**a)).count();
    if hmac != 0 && hmac != algorithms.len() {
        return Err(IssuerError::Algorithms(
            "do not mix HMAC (HS*) and public-key algorithms in one issuer (RFC 8725 §3.1)".into(),
        ));
    }
    Ok(algorithms)
}

fn parse_binding(raw: Option<&str>) -> Result<Option<BindingRequirement>, IssuerError> {
    raw.map(|b| {
        BindingRequirement::parse(b).ok_or(IssuerError::Invalid(
            "require_binding must be \"dpop\", \"mtls\" or \"any\"",
        ))
    })
    .transpose()
}

fn is_hmac(alg: Algorithm) -> bool {
    matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)
}

fn resolve(base_dir: Option<&Path>, file: &str) -> PathBuf {
    match base_dir {
        Some(dir) if Path::new(file).is_relative() => dir.join(file),
        _ => PathBuf::from(file),
    }
}

fn has_key_source(raw: &RawIssuer) -> bool {
    raw.jwks.is_some()
        || raw.jwks_file.is_some()
        || raw.hmac_secret_file.is_some()
        || raw.jwks_uri.is_some()
        || raw.discovery
}

/// `ca_file` (PEM, at least one certificate): the only CAs trusted for this issuer's HTTPS.
fn read_ca(raw: &RawIssuer, base_dir: Option<&Path>) -> Result<Option<Vec<u8>>, IssuerError> {
    let Some(file) = &raw.ca_file else {
        return Ok(None);
    };
    if raw.jwks_uri.is_none() && !raw.discovery && raw.introspection.is_none() {
        return Err(IssuerError::Invalid(
            "ca_file applies to jwks_uri, discovery and introspection only",
        ));
    }
    let path = resolve(base_dir, file);
    let pem = std::fs::read(&path)
        .map_err(|e| IssuerError::Field(format!("ca_file {}: {e}", path.display())))?;
    fetch::parse_ca(&pem).map_err(|e| IssuerError::Field(format!("ca_file: {e}")))?;
    Ok(Some(pem))
}

/// `jwks_uri` or `discovery`, with the refresh bounds: HTTPS only, and never beside other keys.
fn remote_spec(
    raw: &RawIssuer,
    algorithms: &[Algorithm],
    ca_pem: Option<Vec<u8>>,
) -> Result<Option<RemoteSpec>, IssuerError> {
    let location = match (&raw.jwks_uri, raw.discovery) {
        (Some(_), true) => {
            return Err(IssuerError::Invalid("give jwks_uri or discovery, not both"))
        }
        (None, false) if raw.refresh_min.is_some() || raw.refresh_max.is_some() => {
            return Err(IssuerError::Invalid(
                "refresh_min and refresh_max apply to jwks_uri and discovery only",
            ))
        }
        (None, false) => return Ok(None),
        (Some(uri), false) => {
            fetch::require_https(uri).map_err(|e| IssuerError::Field(format!("jwks_uri: {e}")))?;
            KeyLocation::JwksUri(uri.clone())
        }
        (None, true) => {
            fetch::require_https(&raw.issuer)
                .map_err(|e| IssuerError::Field(format!("discovery needs an https issuer: {e}")))?;
            KeyLocation::Discovery
        }
    };
    if raw.jwks.is_some() || raw.jwks_file.is_some() || raw.hmac_secret_file.is_some() {
        return Err(IssuerError::Invalid(
            "give exactly one of jwks, jwks_file, jwks_uri, discovery or hmac_secret_file",
        ));
    }
    if algorithms.iter().any(|a| is_hmac(*a)) {
        return Err(IssuerError::Invalid(
            "HS* algorithms need hmac_secret_file (shared secrets are never read from a JWKS)",
        ));
    }
    let refresh_min = raw
        .refresh_min
        .as_ref()
        .map(|d| duration("refresh_min", d))
        .transpose()?;
    let refresh_max = raw
        .refresh_max
        .as_ref()
        .map(|d| duration("refresh_max", d))
        .transpose()?;
    if refresh_min.is_some_and(|min| min < MIN_REFRESH) {
        return Err(IssuerError::Invalid("refresh_min must be at least 1s"));
    }
    if let (Some(min), Some(max)) = (refresh_min, refresh_max) {
        if min > max {
            return Err(IssuerError::Invalid(
                "refresh_min must not exceed refresh_max",
            ));
        }
    }
    Ok(Some(RemoteSpec {
        issuer: raw.issuer.clone(),
        location,
        ca_pem,
        refresh_min,
        refresh_max,
        algorithms: algorithms.to_vec(),
    }))
}

fn duration(field: &str, value: &DurationField) -> Result<Duration, IssuerError> {
    match value {
        DurationField::Seconds(s) => Ok(Duration::from_secs(*s)),
        DurationField::Text(text) => humantime::parse_duration(text)
            .map_err(|e| IssuerError::Field(format!("{field} {text:?}: {e}"))),
    }
}

/// `introspection`: an HTTPS endpoint (or discovery's), scopegate's client id, and the secret
/// read from its file (one trailing newline ignored).
fn introspection_spec(
    raw: &RawIssuer,
    ca_pem: Option<Vec<u8>>,
    base_dir: Option<&Path>,
) -> Result<Option<IntrospectionSpec>, IssuerError> {
    let Some(config) = &raw.introspection else {
        return Ok(None);
    };
    match &config.endpoint {
        Some(endpoint) => fetch::require_https(endpoint)
            .map_err(|e| IssuerError::Field(format!("introspection.endpoint: {e}")))?,
        None if raw.discovery => {}
        None => {
            return Err(IssuerError::Invalid(
                "introspection.endpoint is required without discovery",
            ))
        }
    }
    if config.client_id.is_empty() {
        return Err(IssuerError::Invalid(
            "introspection.client_id must not be empty",
        ));
    }
    let path = resolve(base_dir, &config.client_secret_file);
    let secret = std::fs::read_to_string(&path).map_err(|e| {
        IssuerError::Field(format!(
            "introspection.client_secret_file {}: {e}",
            path.display()
        ))
    })?;
    let secret = secret.strip_suffix('\n').unwrap_or(&secret);
    let secret = secret.strip_suffix('\r').unwrap_or(secret);
    if secret.is_empty() {
        return Err(IssuerError::Invalid(
            "introspection.client_secret_file is empty",
        ));
    }
    Ok(Some(IntrospectionSpec {
        endpoint: config.endpoint.clone(),
        client_id: config.client_id.clone(),
        client_secret: secret.to_string(),
        ca_pem,
    }))
}

fn load_keys(
    raw: &RawIssuer,
    algorithms: &[Algorithm],
    base_dir: Option<&Path>,
) -> Result<JwksKeys, IssuerError> {
    let uses_hmac = algorithms.iter().any(|a| is_hmac(*a));
    match (&raw.jwks, &raw.jwks_file, &raw.hmac_secret_file) {
        (Some(_), _, Some(_)) | (_, Some(_), Some(_)) | (Some(_), Some(_), _) => Err(
            IssuerError::Invalid("give exactly one of jwks, jwks_file or hmac_secret_file"),
        ),
        (_, _, Some(_)) | (None, None, None) if !uses_hmac => Err(IssuerError::Invalid(
            "public-key algorithms need keys in jwks or jwks_file",
        )),
        (Some(_), _, _) | (_, Some(_), _) if uses_hmac => Err(IssuerError::Invalid(
            "HS* algorithms need hmac_secret_file (shared secrets are never read from a JWKS)",
        )),
        (None, None, None) => Err(IssuerError::Invalid("HS* algorithms need hmac_secret_file")),
        (Some(jwks), None, None) => Ok(jwks::keys_from_jwks(jwks, algorithms)?),
        (None, Some(file), None) => {
            let jwks = jwks::read_jwks_file(&resolve(base_dir, file))?;
            Ok(jwks::keys_from_jwks(&jwks, algorithms)?)
        }
        (None, None, Some(file)) => Ok(JwksKeys {
            keys: vec![jwks::key_from_secret_file(
                &resolve(base_dir, file),
                algorithms,
            )?],
            skipped: Vec::new(),
        }),
    }
}

fn build_validation(raw: &RawIssuer, alg: Algorithm, leeway: u64) -> Validation {
    let mut v = Validation::new(alg);
    v.set_issuer(&[&raw.issuer]);
    v.set_audience(&raw.audiences);
    v.set_required_spec_claims(&["exp", "iss", "aud"]);
    v.validate_exp = true;
    v.validate_nbf = true;
    v.validate_aud = true;
    v.leeway = leeway;
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn keys_dir() -> PathBuf {
        PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/keys"))
    }

    #[test]
    fn loads_a_jwks_file_relative_to_the_rules_file() {
        let cfg = IssuerConfig::from_json(
            "demo",
            &json!({"issuer":"https://idp/","audiences":["api"],"algorithms":["RS256","ES256"],
                    "jwks_file":"demo-jwks.json","require_typ":"at+jwt"}),
            Some(&keys_dir()),
        )
        .unwrap();
        assert_eq!(cfg.keys.len(), 2);
        assert_eq!(cfg.leeway_seconds, 30);
    }

    #[test]
    fn rejects_bad_issuers() {
        let dir = keys_dir();
        let cases = [
            json!({"issuer":"i","audiences":["a"],"algorithms":["none"],"jwks_file":"demo-jwks.json"}),
            json!({"issuer":"i","audiences":["a"],"algorithms":[],"jwks_file":"demo-jwks.json"}),
            json!({"issuer":"i","audiences":[],"algorithms":["RS256"],"jwks_file":"demo-jwks.json"}),
            json!({"issuer":"i","audiences":["a"],"algorithms":["RS256","HS256"],"jwks_file":"demo-jwks.json"}),
            json!({"issuer":"i","audiences":["a"],"algorithms":["HS256"],"jwks_file":"demo-jwks.json"}),
            json!({"issuer":"i","audiences":["a"],"algorithms":["RS256"]}),
            json!({"issuer":"i","audiences":["a"],"algorithms":["RS256"],"jwks_file":"missing.json"}),
            json!({"issuer":"i","audiences":["a"],"algorithms":["RS256"],"jwks_uri":"http://idp/jwks"}),
            json!({"issuer":"i","audiences":["a"],"algorithms":["RS256"],"jwks_uri":"https://idp/jwks","jwks_file":"demo-jwks.json"}),
            json!({"issuer":"http://idp","audiences":["a"],"algorithms":["RS256"],"discovery":true}),
            json!({"issuer":"https://idp","audiences":["a"],"algorithms":["RS256"],"discovery":true,"jwks_uri":"https://idp/jwks"}),
            json!({"issuer":"https://idp","audiences":["a"],"algorithms":["HS256"],"discovery":true}),
            json!({"issuer":"https://idp","audiences":["a"],"algorithms":["RS256"],"discovery":true,"refresh_min":"1h","refresh_max":"5m"}),
            json!({"issuer":"https://idp","audiences":["a"],"algorithms":["RS256"],"discovery":true,"refresh_min":0}),
            json!({"issuer":"https://idp","audiences":["a"],"algorithms":["RS256"],"discovery":true,"refresh_min":"soon"}),
            json!({"issuer":"i","audiences":["a"],"algorithms":["RS256"],"jwks_file":"demo-jwks.json","refresh_min":"5m"}),
            json!({"issuer":"i","audiences":["a"],"algorithms":["RS256"],"jwks_file":"demo-jwks.json","ca_file":"demo-jwks.json"}),
            json!({"issuer":"https://idp","audiences":["a"],"algorithms":["RS256"],"discovery":true,"ca_file":"demo-jwks.json"}),
            json!({"issuer":"https://idp","audiences":["a"],"algorithms":["RS256"],"jwks_file":"demo-jwks.json",
                   "introspection":{"client_id":"c","client_secret_file":"demo-hs256.secret"}}),
            json!({"issuer":"https://idp","audiences":["a"],"introspection":{"endpoint":"http://idp/i","client_id":"c","client_secret_file":"demo-hs256.secret"}}),
            json!({"issuer":"https://idp","audiences":["a"],"introspection":{"endpoint":"https://idp/i","client_id":"","client_secret_file":"demo-hs256.secret"}}),
            json!({"issuer":"https://idp","audiences":["a"],"introspection":{"endpoint":"https://idp/i","client_id":"c","client_secret_file":"missing"}}),
            json!({"issuer":"i","audiences":["a"],"algorithms":["RS256"],"jwks_file":"demo-jwks.json","leeway_seconds":9999}),
            json!({"issuer":"i","audiences":["a"],"algorithms":["RS256"],"jwks_file":"demo-jwks.json","require_binding":"bearer"}),
        ];
        for case in cases {
            assert!(
                IssuerConfig::from_json("x", &case, Some(&dir)).is_err(),
                "{case}"
            );
        }
    }

    /// RFC 8725 §3.1: with keys for both families given, the mixing rule itself refuses.
    #[test]
    fn hmac_and_public_key_algorithms_are_never_mixed() {
        let mixed = json!({"issuer":"i","audiences":["a"],"algorithms":["RS256","HS256"],
                           "jwks_file":"demo-jwks.json","hmac_secret_file":"demo-hs256.secret"});
        let err = IssuerConfig::from_json("x", &mixed, Some(&keys_dir())).unwrap_err();
        assert_eq!(
            err.to_string(),
            "algorithms: do not mix HMAC (HS*) and public-key algorithms in one issuer (RFC 8725 §3.1)"
        );
        let hs_only = json!({"issuer":"i","audiences":["a"],"algorithms":["HS256"],
                             "hmac_secret_file":"demo-hs256.secret"});
        assert!(IssuerConfig::from_json("x", &hs_only, Some(&keys_dir())).is_ok());
    }

    #[test]
    fn skipped_keys_are_kept_on_the_issuer() {
        let jwks: Value = serde_json::from_str(
            &std::fs::read_to_string(keys_dir().join("demo-jwks.json")).unwrap(),
        )
        .unwrap();
        let mut keys = jwks["keys"].as_array().unwrap().clone();
        keys.push(json!({"kty": "OKP", "crv": "X25519", "x": "AAAA", "kid": "ecdh"}));
        let cfg = IssuerConfig::from_json(
            "mixed",
            &json!({"issuer":"i","audiences":["a"],"algorithms":["RS256"],"jwks":{"keys":keys}}),
            None,
        )
        .unwrap();
        assert_eq!(cfg.keys.len(), 1);
        let listed: Vec<String> = cfg.skipped_keys.iter().map(ToString::to_string).collect();
        assert_eq!(
            listed,
            vec![
                "JWKS key #1 (kid \"demo-ec-p256-1\"): usable only with ES256, which this issuer does not pin",
                "JWKS key #2 (kid \"demo-ec-p384-1\"): usable only with ES384, which this issuer does not pin",
                "JWKS key #3 (kid \"demo-ed25519-1\"): usable only with EdDSA, which this issuer does not pin",
                "JWKS key #4 (kid \"ecdh\"): unsupported curve \"X25519\" for kty OKP (EC: P-256, P-384; OKP: Ed25519)",
            ]
        );
        // Only a set without any usable key is fatal.
        let err = IssuerConfig::from_json(
            "bad",
            &json!({"issuer":"i","audiences":["a"],"algorithms":["RS256"],
                    "jwks":{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}}),
            None,
        )
        .unwrap_err();
        assert!(
            matches!(&err, IssuerError::Keys(KeyError::NoUsableKey { skipped }) if skipped.len() == 1),
            "{err}"
        );
    }

    #[test]
    fn a_skipped_key_is_logged_with_its_kid_and_reason() {
        use crate::test_support::Captured;
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::WARN)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            IssuerConfig::from_json(
                "logged",
                &json!({"issuer":"i","audiences":["a"],"algorithms":["ES256"],"jwks":{"keys":[
                    {"kty":"EC","crv":"P-521","kid":"p521","x":"AAAA","y":"AAAA"},
                    {"kty":"EC","crv":"P-256","kid":"ok",
                     "x":"PLaDrYS6S1SQ398oKjkXHyiNbLQWoci1kOMidxpxU-s",
                     "y":"jW5ojzTlFa4AAUw-tP5eKR-hah9CkruX__5CL2Mr_8I"}]}}),
                None,
            )
            .unwrap();
        });
        let text = captured.text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1, "{text}");
        assert!(lines[0].contains(" WARN "), "{text}");
        assert!(
            lines[0].ends_with(
                "JWKS key skipped issuer=\"logged\" index=0 kid=Some(\"p521\") \
                 reason=unsupported curve \"P-521\" for kty EC (EC: P-256, P-384; OKP: Ed25519)"
            ),
            "{text}"
        );
    }

    #[test]
    fn remote_keys_and_introspection_fields() {
        let dir = tempfile::tempdir().unwrap();
        let ca = rcgen::CertificateParams::new(Vec::<String>::new())
            .unwrap()
            .self_signed(&rcgen::KeyPair::generate().unwrap())
            .unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        std::fs::write(dir.path().join("secret"), "s3cret\n").unwrap();
        let cfg = IssuerConfig::from_json(
            "kc",
            &json!({"issuer":"https://kc.test/realms/a","audiences":["api"],"algorithms":["RS256"],
                    "discovery":true,"ca_file":"ca.pem","refresh_min":"1m","refresh_max":7200,
                    "introspection":{"client_id":"scopegate","client_secret_file":"secret"}}),
            Some(dir.path()),
        )
        .unwrap();
        let remote = cfg.remote.as_ref().unwrap();
        assert_eq!(remote.location, KeyLocation::Discovery);
        assert_eq!(remote.refresh_min, Some(Duration::from_secs(60)));
        assert_eq!(remote.refresh_max, Some(Duration::from_secs(7200)));
        assert_eq!(remote.ca_pem.as_deref(), Some(ca.pem().as_bytes()));
        assert!(cfg.keys.is_empty());
        let introspection = cfg.introspection.as_ref().unwrap();
        assert_eq!(introspection.endpoint, None, "from discovery");
        assert_eq!(
            introspection.client_secret, "s3cret",
            "one trailing newline dropped"
        );
        assert!(
            !format!("{introspection:?}").contains("s3cret"),
            "never in Debug output"
        );

        let by_uri = IssuerConfig::from_json(
            "u",
            &json!({"issuer":"i","audiences":["api"],"algorithms":["ES256"],"jwks_uri":"https://idp/jwks"}),
            None,
        )
        .unwrap();
        let expected = KeyLocation::JwksUri("https://idp/jwks".into());
        assert_eq!(by_uri.remote.unwrap().location, expected);

        let opaque_only = IssuerConfig::from_json(
            "o",
            &json!({"issuer":"https://idp","audiences":["api"],
                    "introspection":{"endpoint":"https://idp/introspect","client_id":"c",
                                     "client_secret_file":"secret"}}),
            Some(dir.path()),
        )
        .unwrap();
        assert!(opaque_only.algorithms.is_empty() && opaque_only.remote.is_none());

        let plain = IssuerConfig::from_json(
            "p",
            &json!({"issuer":"i","audiences":["api"],"algorithms":["RS256"],"jwks_uri":"http://idp/jwks"}),
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(plain.contains("not an https:// URL"), "{plain}");
    }

    #[test]
    fn hmac_issuer_from_a_secret_file() {
        let cfg = IssuerConfig::from_json(
            "hs",
            &json!({"issuer":"i","audiences":["a"],"algorithms":["HS256"],"hmac_secret_file":"demo-hs256.secret"}),
            Some(&keys_dir()),
        )
        .unwrap();
        assert_eq!(cfg.keys[0].algorithms, vec![Algorithm::HS256]);
    }
}
