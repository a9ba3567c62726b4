//! The decision: a pure function of (snapshot, request, credential) with no gRPC or etcd types.
//!
//! Order: match the most specific route (none: 403 `no_rule`); a public route allows without
//! looking at the token; otherwise the credential must be present (401), well-formed (400),
//! valid (401 `invalid_token`; a DPoP proof or binding that fails answers with a `DPoP`
//! challenge, RFC 9449 §7.1), bound as the route's `require_binding` asks (401
//! `binding_required`), not revoked (401 `invalid_token`) and carry the required scopes
//! (403 `insufficient_scope`). A `dry_run` route (or every enforce route, when the `settings`
//! key says `mode: dry_run`) turns any of those denials into an allow that reports what would
//! have happened. Last, an incident lockdown ([`lockdown`]) may tighten the decision, never loosen.

pub mod lockdown;
pub mod request;
pub mod scope;

use std::sync::Arc;

pub use request::{Request, RequestError};

use crate::reason::Reason;
use crate::rules::route::BindingRequirement;
use crate::rules::{in_force, IssuedBefore, Mode, Route};
use crate::store::Snapshot;
use crate::token::{binding, dpop, BindingError, Claims, TokenError};

/// The bearer credential, as far as it could be established.
#[derive(Debug, Clone)]
pub enum Credential {
    /// No `Authorization: Bearer` header.
    Absent,
    /// An `Authorization: Bearer` header that is not a valid b64token.
    Malformed,
    /// More than one `DPoP` header, or one that cannot be read (RFC 9449 §4.3: exactly one).
    MalformedDpop,
    /// A token that failed verification.
    Invalid(TokenError),
    /// A verified token.
    Valid(Arc<Claims>),
}

/// The HTTP status of a denial.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenyStatus {
    BadRequest = 400,
    Unauthorized = 401,
    Forbidden = 403,
    ServiceUnavailable = 503,
}

/// The RFC 6750 challenge sent with a denial.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    /// No `WWW-Authenticate` header.
    None,
    /// `Bearer realm="…"` (no credential: RFC 6750 §3.1 says no error code).
    Bearer,
    /// `error="invalid_request"`
    InvalidRequest(&'static str),
    /// `error="invalid_token"`
    InvalidToken(&'static str),
    /// `error="insufficient_scope", scope="…"`
    InsufficientScope(String),
    /// `DPoP algs="…"`: no credential where a DPoP-bound token is required.
    Dpop,
    /// `DPoP error="invalid_dpop_proof", error_description="…", algs="…"` (RFC 9449 §7.1).
    DpopProof(&'static str),
    /// `DPoP error="invalid_token", error_description="…", algs="…"`: the token's DPoP binding
    /// does not hold (or the token is not DPoP-bound where that is required).
    DpopToken(&'static str),
}

impl Challenge {
    /// The `WWW-Authenticate` value for this challenge, if any.
    pub fn header_value(&self, realm: &str) -> Option<String> {
        let with = |error: &str, description: &str| {
            format!(
                "Bearer realm=\"{realm}\", error=\"{error}\", error_description=\"{description}\""
            )
        };
        match self {
            Challenge::None => None,
            Challenge::Bearer => Some(format!("Bearer realm=\"{realm}\"")),
            Challenge::InvalidRequest(d) => Some(with("invalid_request", d)),
            Challenge::InvalidToken(d) => Some(with("invalid_token", d)),
            Challenge::InsufficientScope(scope) => Some(format!(
                "Bearer realm=\"{realm}\", error=\"insufficient_scope\", \
                 error_description=\"The access token lacks a required scope\", scope=\"{scope}\""
            )),
            Challenge::Dpop => Some(format!("DPoP algs=\"{}\"", dpop::ALGS_PARAMETER)),
            Challenge::DpopProof(d) => Some(dpop_with("invalid_dpop_proof", d)),
            Challenge::DpopToken(d) => Some(dpop_with("invalid_token", d)),
        }
    }
}

fn dpop_with(error: &str, description: &str) -> String {
    format!(
        "DPoP error=\"{error}\", error_description=\"{description}\", algs=\"{}\"",
        dpop::ALGS_PARAMETER
    )
}

/// A denial: status, reason code and challenge.
#[derive(Debug, Clone)]
pub struct Denial {
    pub status: DenyStatus,
    pub reason: Reason,
    pub challenge: Challenge,
}

impl Denial {
    pub fn new(status: DenyStatus, reason: Reason, challenge: Challenge) -> Denial {
        Denial {
            status,
            reason,
            challenge,
        }
    }

    /// 400 for a malformed request.
    pub fn invalid_request(error: &RequestError) -> Denial {
        let description = match error {
            RequestError::MalformedBearer => "The Authorization header is malformed",
            RequestError::MalformedDpop => "The DPoP header is repeated or unreadable",
            RequestError::OverrideHeader(_) => "Method and URL override headers are not accepted",
            _ => "The request path or host is not acceptable",
        };
        Denial::new(
            DenyStatus::BadRequest,
            Reason::InvalidRequest,
            Challenge::InvalidRequest(description),
        )
    }

    /// The RFC 6750 error code for the deny body (`access_denied`, `unauthorized` and
    /// `temporarily_unavailable` where RFC 6750 has none).
    pub fn error_code(&self) -> &'static str {
        match &self.challenge {
            Challenge::InvalidRequest(_) => "invalid_request",
            Challenge::InvalidToken(_) | Challenge::DpopToken(_) => "invalid_token",
            Challenge::DpopProof(_) => "invalid_dpop_proof",
            Challenge::InsufficientScope(_) => "insufficient_scope",
            Challenge::Bearer | Challenge::Dpop => "unauthorized",
            Challenge::None if self.status == DenyStatus::ServiceUnavailable => {
                "temporarily_unavailable"
            }
            Challenge::None => "access_denied",
        }
    }

    /// 401 for a token that failed verification or whose binding does not hold: a `DPoP`
    /// challenge for DPoP problems (RFC 9449 §7.1), a `Bearer` one otherwise.
    pub fn invalid_token(error: &TokenError) -> Denial {
        if error.is_unavailable() {
            // Fail closed, as "try again later": the IdP could not be asked (introspection).
            return Denial::unavailable(error.reason());
        }
        let description = error.description();
        let challenge = match error {
            TokenError::Binding(BindingError::Proof(_)) => Challenge::DpopProof(description),
            TokenError::Binding(b) if b.is_dpop() => Challenge::DpopToken(description),
            _ => Challenge::InvalidToken(description),
        };
        Denial::new(DenyStatus::Unauthorized, error.reason(), challenge)
    }

    /// Fail closed: no snapshot, or one older than allowed.
    pub fn unavailable(reason: Reason) -> Denial {
        Denial::new(DenyStatus::ServiceUnavailable, reason, Challenge::None)
    }
}

/// The answer for one request.
#[derive(Debug, Clone)]
pub struct Decision {
    pub verdict: Verdict,
    /// The rule that decided, if one matched.
    pub rule: Option<Arc<Route>>,
    /// The verified claims, when a token was verified.
    pub claims: Option<Arc<Claims>>,
}

#[derive(Debug, Clone)]
pub enum Verdict {
    /// `reason` is `allowed`, `public` or `dry_run`; for `dry_run`, `would_deny` says why not.
    Allow {
        reason: Reason,
        would_deny: Option<Reason>,
    },
    Deny(Denial),
}

impl Decision {
    pub fn deny(denial: Denial) -> Decision {
        Decision {
            verdict: Verdict::Deny(denial),
            rule: None,
            claims: None,
        }
    }

    pub fn is_allow(&self) -> bool {
        matches!(self.verdict, Verdict::Allow { .. })
    }

    /// A denial, or a dry-run allow that enforcement would have denied: what the `deny` modes
    /// of the decision log and of the answer's dynamic metadata report.
    pub fn denies_or_would_deny(&self) -> bool {
        !matches!(
            self.verdict,
            Verdict::Allow {
                would_deny: None,
                ..
            }
        )
    }

    /// The claims that may be asserted to the upstream: only on an allow, and only when the token
    /// itself passed (a `dry_run` allow of a revoked token must not name its subject; one that
    /// only lacked a scope may).
    pub fn upstream_identity(&self) -> Option<&Claims> {
        match &self.verdict {
            Verdict::Allow {
                would_deny: None | Some(Reason::InsufficientScope),
                ..
            } => self.claims.as_deref(),
            _ => None,
        }
    }

    pub fn reason(&self) -> Reason {
        match &self.verdict {
            Verdict::Allow { reason, .. } => *reason,
            Verdict::Deny(d) => d.reason,
        }
    }
}

/// The credential, established at most once and only when something asks for it.
struct LazyCredential<F> {
    make: Option<F>,
    value: Option<Credential>,
}

impl<F: FnOnce() -> Credential> LazyCredential<F> {
    fn new(make: F) -> Self {
        LazyCredential {
            make: Some(make),
            value: None,
        }
    }

    fn get(&mut self) -> &Credential {
        let make = &mut self.make;
        self.value
            .get_or_insert_with(|| make.take().map_or(Credential::Absent, |f| f()))
    }
}

/// Decides one request. `credential` is only called when the matched route is not public (or a
/// lockdown asks for a bypass scope), so unrouted and public requests cost no signature check.
pub fn decide(
    snapshot: &Snapshot,
    request: &Request,
    credential: impl FnOnce() -> Credential,
) -> Decision {
    let segments = request.segments();
    let mut credential = LazyCredential::new(credential);
    let found = snapshot
        .routes
        .find_case_checked(&request.host, &request.method, &segments);
    let decision = match found {
        Ok(Some(route)) => decide_for_route(snapshot, request, route, &mut credential),
        Ok(None) => no_rule(),
        // Refused before any rule applies (a lockdown cannot loosen it: tighten keeps denials).
        Err(_) => Decision::deny(Denial::invalid_request(&RequestError::CaseAmbiguous)),
    };
    lockdown::tighten(snapshot, request, decision, &mut credential)
}

/// Decides with the rule named by Envoy's per-route context extension instead of matching host
/// and path. The rule's method list still applies; a missing rule id denies (`no_rule`).
pub fn decide_with_rule(
    snapshot: &Snapshot,
    request: &Request,
    rule_id: &str,
    credential: impl FnOnce() -> Credential,
) -> Decision {
    let route = snapshot.rules.routes.get(rule_id).filter(|r| {
        r.methods
            .as_ref()
            .is_none_or(|m| m.contains(&request.method))
    });
    let mut credential = LazyCredential::new(credential);
    let decision = match route {
        Some(route) => decide_for_route(snapshot, request, route, &mut credential),
        None => no_rule(),
    };
    lockdown::tighten(snapshot, request, decision, &mut credential)
}

fn no_rule() -> Decision {
    Decision::deny(Denial::new(
        DenyStatus::Forbidden,
        Reason::NoRule,
        Challenge::None,
    ))
}

fn decide_for_route<F: FnOnce() -> Credential>(
    snapshot: &Snapshot,
    request: &Request,
    route: &Arc<Route>,
    credential: &mut LazyCredential<F>,
) -> Decision {
    let rule = Some(route.clone());
    if route.require == crate::rules::Requirement::Public {
        return Decision {
            verdict: Verdict::Allow {
                reason: Reason::Public,
                would_deny: None,
            },
            rule,
            claims: None,
        };
    }
    let (outcome, claims) = match credential.get() {
        Credential::Absent => (Err(missing_credential(route)), None),
        Credential::Malformed => (
            Err(Denial::invalid_request(&RequestError::MalformedBearer)),
            None,
        ),
        Credential::MalformedDpop => (
            Err(Denial::invalid_request(&RequestError::MalformedDpop)),
            None,
        ),
        Credential::Invalid(e) => (Err(Denial::invalid_token(e)), None),
        Credential::Valid(claims) => (
            authorize(snapshot, route, claims, request.now),
            Some(claims.clone()),
        ),
    };
    // The `settings` key can shadow the whole policy: every enforce rule runs in dry run.
    let mode = match snapshot.rules.global_dry_run() {
        true => Mode::DryRun,
        false => route.mode,
    };
    let verdict = match (outcome, mode) {
        (Ok(()), _) => Verdict::Allow {
            reason: Reason::Allowed,
            would_deny: None,
        },
        (Err(denial), Mode::DryRun) => Verdict::Allow {
            reason: Reason::DryRun,
            would_deny: Some(denial.reason),
        },
        (Err(denial), Mode::Enforce) => Verdict::Deny(denial),
    };
    Decision {
        verdict,
        rule,
        claims,
    }
}

/// 401 without a credential: a `DPoP` challenge where the route requires a DPoP-bound token.
fn missing_credential(route: &Route) -> Denial {
    let challenge = match route.require_binding {
        Some(BindingRequirement::Dpop) => Challenge::Dpop,
        _ => Challenge::Bearer,
    };
    Denial::new(
        DenyStatus::Unauthorized,
        Reason::MissingCredential,
        challenge,
    )
}

/// Binding requirement, revocation and scope checks for a verified token (whose own binding,
/// if it has one, was already proven for this request).
fn authorize(snapshot: &Snapshot, route: &Route, claims: &Claims, now: i64) -> Result<(), Denial> {
    if let Some(required) = route.require_binding {
        if !binding::satisfies(claims.cnf.as_ref(), required) {
            let error = TokenError::Binding(BindingError::Required(required));
            return Err(Denial::invalid_token(&error));
        }
    }
    if is_revoked(snapshot, claims, now) {
        return Err(Denial::new(
            DenyStatus::Unauthorized,
            Reason::TokenRevoked,
            Challenge::InvalidToken("The access token has been revoked"),
        ));
    }
    if !snapshot.scopes.satisfies(&claims.scopes, &route.require) {
        return Err(Denial::new(
            DenyStatus::Forbidden,
            Reason::InsufficientScope,
            Challenge::InsufficientScope(route.require.scopes().join(" ")),
        ));
    }
    Ok(())
}

/// A token is revoked by its `jti`, or when its subject or client has a revocation that is later
/// than its `iat` (a token without `iat` counts as issued at the beginning of time). A
/// revocation whose `expires_at` is not after `now` no longer applies.
pub fn is_revoked(snapshot: &Snapshot, claims: &Claims, now: i64) -> bool {
    let r = &snapshot.revocations;
    let issued_at = claims.iat.unwrap_or(i64::MIN);
    let before = |cutoff: Option<&IssuedBefore>| {
        cutoff.is_some_and(|c| issued_at < c.issued_before && in_force(c.expires_at, now))
    };
    let jti = claims.jti.as_ref().and_then(|j| r.jti.get(j));
    jti.is_some_and(|expires_at| in_force(*expires_at, now))
        || before(claims.sub.as_ref().and_then(|s| r.subjects.get(s)))
        || before(claims.client_id.as_ref().and_then(|c| r.clients.get(c)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::{Entry, EntryKind, ParseContext, RuleSet};
    use serde_json::json;

    fn snapshot() -> Snapshot {
        let mut set = RuleSet::default();
        let ctx = ParseContext { base_dir: None };
        let mut add = |kind, id: &str, value: serde_json::Value| {
            set.insert(id, Entry::parse(kind, id, &value, ctx).unwrap());
        };
        add(
            EntryKind::Route,
            "read",
            json!({"host":"api.test","path":"/r/{id}","require":{"all":["r:read"]}}),
        );
        add(
            EntryKind::Route,
            "any",
            json!({"host":"api.test","path":"/any","require":{"any":["a","b"]}}),
        );
        add(
            EntryKind::Route,
            "open",
            json!({"host":"*","path":"/open","require":{"public":true}}),
        );
        add(
            EntryKind::Route,
            "dry",
            json!({"host":"api.test","path":"/dry","require":{"all":["x"]},"mode":"dry_run"}),
        );
        add(
            EntryKind::RevokedSubject,
            "gone",
            json!({"issued_before": 100}),
        );
        Snapshot::build(set, 1, None)
    }

    fn claims(sub: &str, scopes: &[&str], iat: i64) -> Credential {
        Credential::Valid(Arc::new(Claims {
            iss: "i".into(),
            sub: Some(sub.into()),
            client_id: None,
            jti: None,
            iat: Some(iat),
            exp: i64::MAX,
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            cnf: None,
        }))
    }

    fn run(path: &str, credential: Credential) -> Decision {
        let request = Request::new("api.test", "GET", path).unwrap();
        decide(&snapshot(), &request, || credential)
    }

    fn denial(d: &Decision) -> (u16, Reason, Option<String>) {
        match &d.verdict {
            Verdict::Deny(x) => (x.status as u16, x.reason, x.challenge.header_value("r")),
            Verdict::Allow { .. } => panic!("expected a denial, got {d:?}"),
        }
    }

    #[test]
    fn each_denial_has_its_status_and_challenge() {
        let cases = [
            ("/r/1", Credential::Absent, 401, Reason::MissingCredential, Some(r#"Bearer realm="r""#.to_string())),
            (
                "/r/1",
                Credential::Malformed,
                400,
                Reason::InvalidRequest,
                Some(r#"Bearer realm="r", error="invalid_request", error_description="The Authorization header is malformed""#.into()),
            ),
            (
                "/r/1",
                Credential::Invalid(TokenError::Expired),
                401,
                Reason::TokenExpired,
                Some(r#"Bearer realm="r", error="invalid_token", error_description="The access token expired""#.into()),
            ),
            (
                "/r/1",
                claims("gone", &["r:read"], 50),
                401,
                Reason::TokenRevoked,
                Some(r#"Bearer realm="r", error="invalid_token", error_description="The access token has been revoked""#.into()),
            ),
            (
                "/any",
                claims("alice", &["c"], 500),
                403,
                Reason::InsufficientScope,
                Some(r#"Bearer realm="r", error="insufficient_scope", error_description="The access token lacks a required scope", scope="a b""#.into()),
            ),
            ("/nothing", claims("alice", &["r:read"], 500), 403, Reason::NoRule, None),
        ];
        for (path, credential, status, reason, challenge) in cases {
            let d = run(path, credential);
            assert_eq!(denial(&d), (status, reason, challenge), "{path}");
        }
    }

    #[test]
    fn allows_and_their_reasons() {
        let d = run("/r/1", claims("alice", &["r:read"], 500));
        assert_eq!(d.reason(), Reason::Allowed);
        assert_eq!(d.rule.as_ref().unwrap().id, "read");
        // Revocation is by issue time: a token issued after the cutoff is fine.
        assert!(run("/r/1", claims("gone", &["r:read"], 100)).is_allow());
        let d = run("/open", Credential::Absent);
        assert_eq!(d.reason(), Reason::Public);
        let d = run("/dry", claims("alice", &[], 500));
        assert!(matches!(
            d.verdict,
            Verdict::Allow {
                reason: Reason::DryRun,
                would_deny: Some(Reason::InsufficientScope)
            }
        ));
    }

    #[test]
    fn public_and_unrouted_requests_never_look_at_the_token() {
        let request = Request::new("api.test", "GET", "/open").unwrap();
        let d = decide(&snapshot(), &request, || {
            panic!("credential must not be evaluated")
        });
        assert!(d.is_allow());
        let request = Request::new("api.test", "GET", "/nothing").unwrap();
        let d = decide(&snapshot(), &request, || {
            panic!("credential must not be evaluated")
        });
        assert_eq!(d.reason(), Reason::NoRule);
    }
}
