//! Stable, machine-readable reason codes for every decision. They are part of the public
//! interface: used as the `reason` metric label, in the decision log and in deny bodies.

use std::fmt;

/// Why a decision came out the way it did.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    strum::EnumIter,
    strum::EnumCount,
    strum::IntoStaticStr,
)]
#[strum(serialize_all = "snake_case")]
pub enum Reason {
    /// A matched rule's scope requirement was satisfied.
    Allowed,
    /// The matched rule is public (`require: {public: true}`).
    Public,
    /// A `dry_run` rule would have denied; the request was allowed.
    DryRun,
    /// No rule matches host, method and path.
    NoRule,
    /// No bearer token in the request.
    MissingCredential,
    /// The request itself is malformed (hostile path, bad host, broken Authorization header).
    InvalidRequest,
    /// The token is not a well-formed JWS compact JWT.
    MalformedToken,
    /// The token exceeds the configured size bound.
    TokenTooLarge,
    /// `iss` names no configured issuer.
    UnknownIssuer,
    /// The token's `alg` is not pinned for its issuer (or is `none`).
    AlgorithmNotAllowed,
    /// No key of the issuer matches the token's `kid` and `alg`.
    UnknownKey,
    /// The signature does not verify.
    InvalidSignature,
    /// `exp` is in the past (beyond leeway).
    TokenExpired,
    /// `nbf` is in the future (beyond leeway).
    TokenNotYetValid,
    /// `aud` missing or not one of the issuer's audiences.
    InvalidAudience,
    /// The JOSE `typ` header is not the one the issuer requires.
    InvalidType,
    /// A required claim is missing or has the wrong type.
    InvalidClaims,
    /// The token, its subject or its client was revoked.
    TokenRevoked,
    /// RFC 7662: the identity provider says the opaque token is not active (expired, revoked or
    /// unknown to it).
    TokenInactive,
    /// RFC 7662: the identity provider could not be asked (error, timeout, unreadable answer):
    /// fail closed, 503, never cached.
    IntrospectionFailed,
    /// RFC 9449: the DPoP proof is missing, malformed, not for this request, stale or replayed.
    InvalidDpopProof,
    /// The token is sender-constrained (`cnf`), and the request does not prove it: wrong or no
    /// client certificate (RFC 8705), DPoP key mismatch, a DPoP-bound token sent as `Bearer`, the
    /// `DPoP` scheme with an unbound token, or a confirmation method scopegate does not verify.
    BindingMismatch,
    /// The route or the issuer sets `require_binding` and the token is not bound that way.
    BindingRequired,
    /// The token lacks the scope the matched rule requires.
    InsufficientScope,
    /// An incident lockdown covers the request and the token has no bypass scope (or the normal
    /// rule does not allow it).
    Lockdown,
    /// No rule snapshot has been loaded yet (fail closed).
    NoSnapshot,
    /// The snapshot is older than `--max-staleness` (fail closed).
    SnapshotStale,
    /// The check failed inside scopegate (a bug): answered as an explicit deny, never an error
    /// status that `failure_mode_allow` could turn into an allow.
    InternalError,
}

impl Reason {
    /// The stable code, e.g. `token_expired`.
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    /// Whether a decision with this reason lets the request through. The one place that says so.
    pub fn is_allow(self) -> bool {
        match self {
            Reason::Allowed | Reason::Public | Reason::DryRun => true,
            Reason::NoRule
            | Reason::MissingCredential
            | Reason::InvalidRequest
            | Reason::MalformedToken
            | Reason::TokenTooLarge
            | Reason::UnknownIssuer
            | Reason::AlgorithmNotAllowed
            | Reason::UnknownKey
            | Reason::InvalidSignature
            | Reason::TokenExpired
            | Reason::TokenNotYetValid
            | Reason::InvalidAudience
            | Reason::InvalidType
            | Reason::InvalidClaims
            | Reason::TokenRevoked
            | Reason::TokenInactive
            | Reason::IntrospectionFailed
            | Reason::InvalidDpopProof
            | Reason::BindingMismatch
            | Reason::BindingRequired
            | Reason::InsufficientScope
            | Reason::Lockdown
            | Reason::NoSnapshot
            | Reason::SnapshotStale
            | Reason::InternalError => false,
        }
    }

    /// A dense index (the discriminant), for per-reason counters created up front.
    pub fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strum::{EnumCount, IntoEnumIterator};

    #[test]
    fn codes_are_stable_and_indices_dense() {
        assert_eq!(Reason::InsufficientScope.as_str(), "insufficient_scope");
        assert_eq!(Reason::NoRule.as_str(), "no_rule");
        assert_eq!(Reason::DryRun.as_str(), "dry_run");
        assert_eq!(Reason::InvalidDpopProof.as_str(), "invalid_dpop_proof");
        assert_eq!(Reason::BindingMismatch.as_str(), "binding_mismatch");
        assert_eq!(Reason::BindingRequired.as_str(), "binding_required");
        for (i, reason) in Reason::iter().enumerate() {
            assert_eq!(reason.index(), i);
        }
        assert_eq!(Reason::iter().count(), Reason::COUNT);
        let allows: Vec<Reason> = Reason::iter().filter(|r| r.is_allow()).collect();
        assert_eq!(allows, [Reason::Allowed, Reason::Public, Reason::DryRun]);
    }
}
