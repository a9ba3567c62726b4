//! The check pipeline, independent of gRPC: take the current snapshot, parse the request, verify
//! the access token through the claims cache (only when the matched rule needs it) and, on every
//! request, the binding it carries (client certificate, DPoP proof), decide, apply the staleness
//! bound, then count and log the decision. [`resolve`]: the steps that wait on an identity
//! provider (kid-miss refetch, introspection), run between two synchronous passes.
//! [`DecisionId`]: the id that ties a decision's answer and its log line together.

mod decision_id;
mod resolve;

pub use decision_id::DecisionId;

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::authz::request::{is_b64token, presented_token, RequestError};
use crate::authz::{self, Credential, Decision, Denial, Request};
use crate::cache::ClaimsCache;
use crate::reason::Reason;
use crate::store::{unix_seconds_at, Snapshot, SnapshotStore};
use crate::telemetry::{self, DecisionLogMode, DecisionRecord, Metrics};
use crate::token::binding::{self, Presentation, Scheme};
use crate::token::dpop::{DpopSettings, ReplayCache};
use crate::token::introspect::{IntrospectionCache, IntrospectionSettings};
use crate::token::{Claims, TokenError};
use resolve::{Found, Pass};

/// Context extension (Envoy `ExtAuthzPerRoute.check_settings.context_extensions`) that pins a
/// request to one rule id instead of matching by host and path.
pub const CONTEXT_RULE: &str = "scopegate.rule";

/// Largest bearer token accepted, in bytes (refused before any JWT parsing).
pub const DEFAULT_MAX_TOKEN_BYTES: usize = 8 * 1024;

/// How long a check that arrives before the first snapshot waits for it before denying
/// (503 `no_snapshot`). A replica accepts connections a few milliseconds before its first load
/// from etcd; without the wait, the checks Envoy sends it in that gap (a restarted replica that
/// Envoy still counts healthy) would be denied. Well under Envoy's ext_authz timeout (0.5 s in
/// the examples), and a deny either way, so `failure_mode_allow` never comes into play.
pub const FIRST_SNAPSHOT_WAIT: Duration = Duration::from_millis(250);

/// Settings of the check pipeline.
#[derive(Debug, Clone)]
pub struct CheckSettings {
    /// Tokens (Authorization values) larger than this are refused before any parsing.
    pub max_token_bytes: usize,
    /// Deny non-public routes when the snapshot was last confirmed longer ago than this.
    pub max_staleness: Option<Duration>,
    pub decision_log: DecisionLogMode,
    /// DPoP proof `iat` window and replay cache size.
    pub dpop: DpopSettings,
    /// RFC 7662 answer cache (opaque tokens).
    pub introspection: IntrospectionSettings,
}

impl Default for CheckSettings {
    fn default() -> Self {
        CheckSettings {
            max_token_bytes: DEFAULT_MAX_TOKEN_BYTES,
            max_staleness: None,
            decision_log: DecisionLogMode::All,
            dpop: DpopSettings::default(),
            introspection: IntrospectionSettings::default(),
        }
    }
}

/// A header that must appear at most once (`Authorization`, `DPoP`), as Envoy forwarded it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SingleHeader<'a> {
    Absent,
    One(&'a str),
    /// Sent more than once, or not valid UTF-8: a request that carries two credentials (or two
    /// proofs), or one that cannot be read, is malformed (400), whichever copy an upstream would
    /// pick.
    Malformed,
}

/// The `Authorization` header as Envoy forwarded it.
pub type AuthorizationHeader<'a> = SingleHeader<'a>;

/// One request as Envoy describes it (borrowed from the `CheckRequest`).
#[derive(Debug, Clone, Copy)]
pub struct CheckInput<'a> {
    pub host: &'a str,
    pub method: &'a str,
    /// `:path` as received, query included.
    pub path: &'a str,
    pub authorization: AuthorizationHeader<'a>,
    /// The RFC 9449 `DPoP` proof header.
    pub dpop: SingleHeader<'a>,
    /// `http` or `https`, as Envoy saw the request (`attributes.request.http.scheme`): the
    /// scheme of the URI a DPoP proof's `htu` must name.
    pub scheme: &'a str,
    /// The client certificate, URL-encoded PEM (`attributes.source.certificate`, sent when
    /// Envoy's ext_authz filter sets `include_peer_certificate: true`).
    pub peer_certificate: Option<&'a str>,
    pub context: Option<&'a HashMap<String, String>>,
    /// The first of [`OVERRIDE_HEADERS`] the request carries, as Envoy forwarded it (its
    /// ext_authz filter must list them in `allowed_headers`).
    ///
    /// [`OVERRIDE_HEADERS`]: crate::authz::request::OVERRIDE_HEADERS
    pub override_header: Option<&'static str>,
}

/// The decision plus what the response and log need.
#[derive(Debug, Clone)]
pub struct CheckOutcome {
    pub decision: Decision,
    pub decision_id: DecisionId,
    pub revision: Option<i64>,
}

/// Runs checks against a snapshot store.
#[derive(Debug)]
pub struct Checker {
    store: Arc<SnapshotStore>,
    cache: ClaimsCache,
    /// DPoP proofs seen by this replica within their iat window.
    replay: ReplayCache,
    /// RFC 7662 answers, by SHA-256(endpoint ‖ token).
    introspection: IntrospectionCache,
    metrics: Arc<Metrics>,
    settings: CheckSettings,
}

impl Checker {
    pub fn new(
        store: Arc<SnapshotStore>,
        cache: ClaimsCache,
        metrics: Arc<Metrics>,
        settings: CheckSettings,
    ) -> Checker {
        let evicted = metrics.check.dpop_replay_evictions.clone();
        let replay = ReplayCache::new(settings.dpop, move || {
            evicted.inc();
        });
        Checker {
            store,
            cache,
            replay,
            introspection: IntrospectionCache::new(&settings.introspection),
            metrics,
            settings,
        }
    }

    /// Answers one request; never panics, never allows on an internal problem. Awaits only when
    /// the credential needs an identity provider (see [`resolve`]).
    pub async fn check(&self, input: &CheckInput<'_>) -> CheckOutcome {
        let started = Instant::now();
        let snapshot = self.store.current_or_first(FIRST_SNAPSHOT_WAIT).await;
        // The time the decision is judged at, read once per pass: expiry, revocation and
        // lockdown are compared with it, and the decision log is stamped with it.
        let mut decided_at = SystemTime::now();
        let decision = match snapshot.as_deref() {
            // Fail closed: nothing has been loaded yet, nor within the wait.
            None => Decision::deny(Denial::unavailable(Reason::NoSnapshot)),
            Some(snapshot) => {
                self.decide_in_passes(snapshot, input, &mut decided_at)
                    .await
            }
        };
        let elapsed = started.elapsed();
        let decision_id = DecisionId::random();
        let revision = snapshot.as_ref().map(|s| s.revision);
        self.metrics.record(&decision, elapsed);
        telemetry::log_decision(
            self.settings.decision_log,
            &DecisionRecord {
                at: decided_at,
                decision_id: &decision_id,
                decision: &decision,
                revision,
                host: input.host,
                method: input.method,
                // Never log the query: it may carry secrets.
                path: input.path.split(['?', '#']).next().unwrap_or(""),
                elapsed,
            },
        );
        CheckOutcome {
            decision,
            decision_id,
            revision,
        }
    }

    /// One synchronous pass; a second one after the slow step, if the first asked for one.
    /// `decided_at` is the first pass's time, and becomes the second's (read after the await).
    async fn decide_in_passes(
        &self,
        snapshot: &Snapshot,
        input: &CheckInput<'_>,
        decided_at: &mut SystemTime,
    ) -> Decision {
        let first = Pass::default();
        let now = unix_seconds_at(*decided_at);
        let decision = self.decide_or_fail_closed(snapshot, input, now, &first);
        let Some(step) = first.take_slow() else {
            return decision;
        };
        match resolve::resolve(self, snapshot, step).await {
            Ok(Found::Nothing) => decision,
            Ok(found) => {
                *decided_at = SystemTime::now();
                let now = unix_seconds_at(*decided_at);
                self.decide_or_fail_closed(snapshot, input, now, &Pass::after(found))
            }
            Err(()) => internal_error(),
        }
    }

    /// Fail closed on a bug: a panic would cancel the gRPC call, and Envoy's
    /// `failure_mode_allow: true` would then let the request through. It becomes an explicit
    /// 503 deny (`internal_error`) instead, counted and logged like every decision.
    fn decide_or_fail_closed(
        &self,
        snapshot: &Snapshot,
        input: &CheckInput<'_>,
        now: i64,
        pass: &Pass,
    ) -> Decision {
        let decided =
            std::panic::catch_unwind(AssertUnwindSafe(|| self.decide(snapshot, input, now, pass)));
        decided.unwrap_or_else(|_| internal_error())
    }

    fn decide(
        &self,
        snapshot: &Snapshot,
        input: &CheckInput<'_>,
        now: i64,
        pass: &Pass,
    ) -> Decision {
        if let Some(name) = input.override_header {
            // The upstream might serve another method or URL than the one decided here.
            return Decision::deny(Denial::invalid_request(&RequestError::OverrideHeader(name)));
        }
        let request = match Request::at(input.host, input.method, input.path, now) {
            Ok(request) => request,
            Err(e) => return Decision::deny(Denial::invalid_request(&e)),
        };
        let credential = || self.credential(snapshot, input, now, pass);
        let pinned_rule = input.context.and_then(|c| c.get(CONTEXT_RULE));
        let decision = match pinned_rule {
            Some(rule_id) => authz::decide_with_rule(snapshot, &request, rule_id, credential),
            None => authz::decide(snapshot, &request, credential),
        };
        if decision.reason() != Reason::Public && self.store.is_stale(self.settings.max_staleness) {
            // Fail closed: the snapshot may be missing changes (revocations included).
            return Decision::deny(Denial::unavailable(Reason::SnapshotStale));
        }
        decision
    }

    fn credential(
        &self,
        snapshot: &Snapshot,
        input: &CheckInput<'_>,
        now: i64,
        pass: &Pass,
    ) -> Credential {
        let value = match input.authorization {
            SingleHeader::Absent => None,
            SingleHeader::One(value) => Some(value),
            SingleHeader::Malformed => return Credential::Malformed,
        };
        // The size bound applies to the token itself, once, before any JWT parsing (and
        // before hashing it), after its syntax.
        let (scheme, token) = match presented_token(value) {
            None => return Credential::Absent,
            Some((_, token)) if token.len() > self.settings.max_token_bytes => {
                if !is_b64token(token) {
                    return Credential::Malformed;
                }
                let max = self.settings.max_token_bytes;
                return Credential::Invalid(TokenError::TooLarge(token.len(), max));
            }
            Some(found) => found,
        };
        // The claims cache is asked before the token's syntax is checked: a hit means these
        // very bytes (their SHA-256) were verified before, and only a token that passed the
        // same check is ever verified (`verify_token`), so the answer is the same either way.
        // The check reads every byte (~1,200 instructions for a 700-byte token); most checks
        // are hits.
        let lookup = self.look_up(snapshot, token, now);
        if !lookup.is_hit() && !is_b64token(token) {
            return Credential::Malformed;
        }
        // Envoy joins repeated headers with ',' in `headers`; a compact JWS has none.
        let proof = match input.dpop {
            SingleHeader::Absent => None,
            SingleHeader::One(proof) if !proof.contains(',') => Some(proof),
            SingleHeader::One(_) | SingleHeader::Malformed => return Credential::MalformedDpop,
        };
        match self.verify_token(snapshot, token, lookup, pass) {
            // Plain bearer (the cached fast path): nothing to prove, nothing allocated.
            Credential::Valid(claims) if scheme == Scheme::Bearer && claims.cnf.is_none() => {
                Credential::Valid(claims)
            }
            Credential::Valid(claims) => {
                let presented = Presentation {
                    scheme,
                    proof,
                    peer_certificate: input.peer_certificate,
                    http_scheme: input.scheme,
                    host: input.host,
                    method: input.method,
                    path: input.path,
                };
                self.bind(token, claims, &presented, now)
            }
            other => other,
        }
    }

    /// Checks, for this request, the binding the (verified, possibly cached) token carries:
    /// never cached, since a proof is per request and the certificate per connection.
    fn bind(
        &self,
        token: &str,
        claims: Arc<Claims>,
        presented: &Presentation<'_>,
        now: i64,
    ) -> Credential {
        let dpop = &self.settings.dpop;
        match binding::enforce(token, &claims, presented, dpop, &self.replay, now) {
            Ok(()) => Credential::Valid(claims),
            Err(e) => Credential::Invalid(TokenError::Binding(e)),
        }
    }
}

fn internal_error() -> Decision {
    tracing::error!("check panicked; answering deny (internal_error)");
    Decision::deny(Denial::unavailable(Reason::InternalError))
}
