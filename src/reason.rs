//! Stable, machine-readable reason codes for every decision. They are part of the public
//! interface: used as the `reason` metric label, in the decision log and in deny bodies.

use std::fmt;

/// Why a decision came out the way it did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
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
    /// The token lacks the scope the matched rule requires.
    InsufficientScope,
    /// No rule snapshot has been loaded yet (fail closed).
    NoSnapshot,
    /// The snapshot is older than `--max-staleness` (fail closed).
    SnapshotStale,
}

impl Reason {
    /// Every reason, for pre-registering metric label values and for docs.
    pub const ALL: [Reason; 21] = [
        Reason::Allowed,
        Reason::Public,
        Reason::DryRun,
        Reason::NoRule,
        Reason::MissingCredential,
        Reason::InvalidRequest,
        Reason::MalformedToken,
        Reason::TokenTooLarge,
        Reason::UnknownIssuer,
        Reason::AlgorithmNotAllowed,
        Reason::UnknownKey,
        Reason::InvalidSignature,
        Reason::TokenExpired,
        Reason::TokenNotYetValid,
        Reason::InvalidAudience,
        Reason::InvalidType,
        Reason::InvalidClaims,
        Reason::TokenRevoked,
        Reason::InsufficientScope,
        Reason::NoSnapshot,
        Reason::SnapshotStale,
    ];

    /// The stable code, e.g. `token_expired`.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Allowed => "allowed",
            Reason::Public => "public",
            Reason::DryRun => "dry_run",
            Reason::NoRule => "no_rule",
            Reason::MissingCredential => "missing_credential",
            Reason::InvalidRequest => "invalid_request",
            Reason::MalformedToken => "malformed_token",
            Reason::TokenTooLarge => "token_too_large",
            Reason::UnknownIssuer => "unknown_issuer",
            Reason::AlgorithmNotAllowed => "algorithm_not_allowed",
            Reason::UnknownKey => "unknown_key",
            Reason::InvalidSignature => "invalid_signature",
            Reason::TokenExpired => "token_expired",
            Reason::TokenNotYetValid => "token_not_yet_valid",
            Reason::InvalidAudience => "invalid_audience",
            Reason::InvalidType => "invalid_type",
            Reason::InvalidClaims => "invalid_claims",
            Reason::TokenRevoked => "token_revoked",
            Reason::InsufficientScope => "insufficient_scope",
            Reason::NoSnapshot => "no_snapshot",
            Reason::SnapshotStale => "snapshot_stale",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
