//! Sender-constrained access tokens: the confirmation (`cnf`, RFC 7800) a token carries, and the
//! check, on every request, that the request proves it: RFC 8705 (the SHA-256 of the client
//! certificate that Envoy forwards equals `cnf["x5t#S256"]`) and RFC 9449 (a valid DPoP proof
//! whose key thumbprint equals `cnf.jkt`, sent with the `DPoP` scheme), and what
//! `require_binding` on an issuer or a route asks of a token.
//!
//! Verified claims may come from the cache; the binding never does: a proof is per request and
//! the certificate may differ per connection.

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use serde_json::Value;

pub use crate::rules::route::BindingRequirement;
use crate::sha256::sha256;

use super::dpop::{self, DpopError, DpopSettings, ProofContext, ReplayCache};
use super::Claims;
use crate::reason::Reason;

/// The confirmation methods of a token's `cnf` claim that scopegate verifies.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Confirmation {
    /// RFC 9449 §6.1: SHA-256 JWK thumbprint of the DPoP key.
    pub jkt: Option<String>,
    /// RFC 8705 §3.1: SHA-256 thumbprint of the client certificate (DER).
    pub x5t_s256: Option<String>,
}

impl Confirmation {
    /// Reads `cnf`. A member scopegate cannot verify (`jwk`, `kid`, `jku`, …), an empty `cnf`
    /// or a value that is not a non-empty string is refused: a token bound to something that is
    /// not checked must not pass as a bearer token.
    pub fn from_claim(value: &Value) -> Result<Confirmation, BindingError> {
        let members = value
            .as_object()
            .filter(|m| !m.is_empty())
            .ok_or(BindingError::UnsupportedConfirmation)?;
        let mut cnf = Confirmation::default();
        for (name, value) in members {
            let text = value
                .as_str()
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .ok_or(BindingError::UnsupportedConfirmation)?;
            match name.as_str() {
                "jkt" => cnf.jkt = Some(text),
                "x5t#S256" => cnf.x5t_s256 = Some(text),
                _ => return Err(BindingError::UnsupportedConfirmation),
            }
        }
        Ok(cnf)
    }
}

/// Whether a token with confirmation `cnf` meets `required`.
pub fn satisfies(cnf: Option<&Confirmation>, required: BindingRequirement) -> bool {
    let dpop = cnf.is_some_and(|c| c.jkt.is_some());
    let mtls = cnf.is_some_and(|c| c.x5t_s256.is_some());
    match required {
        BindingRequirement::Dpop => dpop,
        BindingRequirement::Mtls => mtls,
        BindingRequirement::Any => dpop || mtls,
    }
}

/// The authentication scheme of the `Authorization` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// RFC 6750 `Bearer`.
    Bearer,
    /// RFC 9449 §7.1 `DPoP`.
    Dpop,
}

/// What the request presents besides the token, as Envoy describes it.
#[derive(Debug, Clone, Copy)]
pub struct Presentation<'a> {
    pub scheme: Scheme,
    /// The one `DPoP` header, if any.
    pub proof: Option<&'a str>,
    /// The client certificate: URL-encoded PEM (Envoy `include_peer_certificate`), if any.
    pub peer_certificate: Option<&'a str>,
    /// `attributes.request.http.scheme` (`http` or `https`).
    pub http_scheme: &'a str,
    /// `:authority`, port included if the client sent one.
    pub host: &'a str,
    pub method: &'a str,
    /// `:path`, query included (ignored).
    pub path: &'a str,
}

/// Why a token's binding was not proven, or a required binding is missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BindingError {
    #[error("DPoP proof refused: {0}")]
    Proof(DpopError),
    #[error("a DPoP-bound token was sent with the Bearer scheme")]
    DpopBoundAsBearer,
    #[error("the DPoP scheme was used with a token that is not DPoP-bound")]
    NotDpopBound,
    #[error("the DPoP proof key is not the key the token is bound to (cnf.jkt)")]
    KeyMismatch,
    #[error("the token is certificate-bound but no client certificate was presented")]
    CertificateMissing,
    #[error("the forwarded client certificate cannot be read")]
    CertificateUnreadable,
    #[error("the client certificate is not the one the token is bound to (cnf x5t#S256)")]
    CertificateMismatch,
    #[error("cnf has a confirmation method that is not verified (only jkt and x5t#S256 are)")]
    UnsupportedConfirmation,
    #[error("a token bound by {} is required", .0.as_str())]
    Required(BindingRequirement),
}

impl BindingError {
    pub fn reason(&self) -> Reason {
        match self {
            BindingError::Proof(_) => Reason::InvalidDpopProof,
            BindingError::Required(_) => Reason::BindingRequired,
            _ => Reason::BindingMismatch,
        }
    }

    /// A short RFC 6750 `error_description` (only characters the grammar allows).
    pub fn description(&self) -> &'static str {
        match self {
            BindingError::Proof(e) => e.description(),
            BindingError::DpopBoundAsBearer => {
                "The DPoP-bound access token must be sent with the DPoP scheme"
            }
            BindingError::NotDpopBound => "The access token is not DPoP-bound",
            BindingError::KeyMismatch => "The DPoP proof key does not match the access token",
            BindingError::CertificateMissing => {
                "The access token is bound to a client certificate that was not presented"
            }
            BindingError::CertificateUnreadable => "The client certificate cannot be read",
            BindingError::CertificateMismatch => {
                "The client certificate does not match the access token"
            }
            BindingError::UnsupportedConfirmation => {
                "The access token confirmation method is not supported"
            }
            BindingError::Required(BindingRequirement::Dpop) => {
                "A DPoP-bound access token is required"
            }
            BindingError::Required(BindingRequirement::Mtls) => {
                "A certificate-bound access token is required"
            }
            BindingError::Required(BindingRequirement::Any) => {
                "A sender-constrained access token is required"
            }
        }
    }

    /// Whether the challenge is a `DPoP` one (RFC 9449 §7.1) rather than `Bearer`.
    pub fn is_dpop(&self) -> bool {
        matches!(
            self,
            BindingError::Proof(_)
                | BindingError::DpopBoundAsBearer
                | BindingError::NotDpopBound
                | BindingError::KeyMismatch
                | BindingError::Required(BindingRequirement::Dpop)
        )
    }
}

/// Checks, for one request, every binding the token carries: the certificate first, then the
/// DPoP proof (whose `jti` is recorded last, so only a proof that passed everything is
/// remembered). A plain bearer token with the `Bearer` scheme passes at once.
pub fn enforce(
    token: &str,
    claims: &Claims,
    presented: &Presentation<'_>,
    settings: &DpopSettings,
    replay: &ReplayCache,
    now: i64,
) -> Result<(), BindingError> {
    let jkt = claims.cnf.as_ref().and_then(|c| c.jkt.as_deref());
    match (presented.scheme, jkt) {
        (Scheme::Bearer, None) if claims.cnf.is_none() => return Ok(()),
        (Scheme::Bearer, Some(_)) => return Err(BindingError::DpopBoundAsBearer),
        (Scheme::Dpop, None) => return Err(BindingError::NotDpopBound),
        _ => {}
    }
    if let Some(x5t) = claims.cnf.as_ref().and_then(|c| c.x5t_s256.as_deref()) {
        check_certificate(x5t, presented.peer_certificate)?;
    }
    match jkt {
        Some(jkt) => check_proof(token, jkt, presented, settings, replay, now),
        None => Ok(()),
    }
}

fn check_certificate(x5t: &str, certificate: Option<&str>) -> Result<(), BindingError> {
    let certificate = certificate
        .filter(|c| !c.is_empty())
        .ok_or(BindingError::CertificateMissing)?;
    let thumbprint =
        certificate_thumbprint(certificate).ok_or(BindingError::CertificateUnreadable)?;
    if thumbprint != x5t {
        return Err(BindingError::CertificateMismatch);
    }
    Ok(())
}

fn check_proof(
    token: &str,
    jkt: &str,
    presented: &Presentation<'_>,
    settings: &DpopSettings,
    replay: &ReplayCache,
    now: i64,
) -> Result<(), BindingError> {
    let proof = presented
        .proof
        .ok_or(BindingError::Proof(DpopError::Missing))?;
    let path = presented.path.split(['?', '#']).next().unwrap_or("");
    let uri = format!("{}://{}{path}", presented.http_scheme, presented.host);
    let ctx = ProofContext {
        method: presented.method,
        uri: &uri,
        access_token: token,
        now,
        iat_window: settings.iat_window,
    };
    let header = dpop::parse_proof(proof).map_err(BindingError::Proof)?;
    // Before the signature: a key the token is not bound to is refused without verifying.
    if header.jkt != jkt {
        return Err(BindingError::KeyMismatch);
    }
    let verified = header.verify(&ctx).map_err(BindingError::Proof)?;
    if !replay.first_use(&verified, now) {
        return Err(BindingError::Proof(DpopError::Replayed));
    }
    Ok(())
}

/// RFC 8705 §3.1 `x5t#S256` of a certificate as Envoy forwards it (`source.certificate`:
/// URL-encoded PEM): base64url SHA-256 of the DER of its first `CERTIFICATE` block.
pub fn certificate_thumbprint(url_encoded_pem: &str) -> Option<String> {
    let pem = percent_decode(url_encoded_pem)?;
    let der = first_certificate_der(&pem)?;
    Some(URL_SAFE_NO_PAD.encode(sha256(&der)))
}

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3)?;
            if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn first_certificate_der(pem: &str) -> Option<Vec<u8>> {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let start = pem.find(BEGIN)? + BEGIN.len();
    let end = start + pem[start..].find(END)?;
    let body: String = pem[start..end]
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    let der = STANDARD.decode(body).ok()?;
    (!der.is_empty()).then_some(der)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn cnf_members_scopegate_cannot_verify_are_refused() {
        let ok = Confirmation::from_claim(&json!({"jkt": "abc"})).unwrap();
        assert_eq!(ok.jkt.as_deref(), Some("abc"));
        let both = Confirmation::from_claim(&json!({"jkt": "a", "x5t#S256": "b"})).unwrap();
        assert_eq!(both.x5t_s256.as_deref(), Some("b"));
        for bad in [
            json!({}),
            json!("jkt"),
            json!({"jkt": ""}),
            json!({"jkt": 1}),
            json!({"jwk": {"kty": "EC"}}),
            json!({"jkt": "a", "kid": "k"}),
            json!({"x5t#s256": "case matters"}),
        ] {
            assert_eq!(
                Confirmation::from_claim(&bad),
                Err(BindingError::UnsupportedConfirmation),
                "{bad}"
            );
        }
    }

    #[test]
    fn requirements() {
        let dpop = Confirmation {
            jkt: Some("k".into()),
            x5t_s256: None,
        };
        let mtls = Confirmation {
            jkt: None,
            x5t_s256: Some("t".into()),
        };
        use BindingRequirement::*;
        for (cnf, dpop_ok, mtls_ok) in [
            (None, false, false),
            (Some(&dpop), true, false),
            (Some(&mtls), false, true),
        ] {
            assert_eq!(satisfies(cnf, Dpop), dpop_ok);
            assert_eq!(satisfies(cnf, Mtls), mtls_ok);
            assert_eq!(satisfies(cnf, Any), dpop_ok || mtls_ok);
        }
    }

    #[test]
    fn certificate_thumbprint_of_url_encoded_pem() {
        let der = b"not really a certificate, but DER bytes all the same";
        let pem = format!(
            "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
            STANDARD.encode(der)
        );
        let encoded: String = pem
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect();
        let want = URL_SAFE_NO_PAD.encode(sha256(der));
        assert_eq!(
            certificate_thumbprint(&encoded).as_deref(),
            Some(want.as_str())
        );
        assert_eq!(certificate_thumbprint(&pem).as_deref(), Some(want.as_str()));
        for bad in ["", "%", "%zz", "-----BEGIN CERTIFICATE-----", "no pem here"] {
            assert_eq!(certificate_thumbprint(bad), None, "{bad:?}");
        }
    }
}
