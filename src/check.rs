//! The check pipeline, independent of gRPC: take the current snapshot, parse the request, verify
//! the bearer token through the claims cache (only when the matched rule needs it), decide,
//! apply the staleness bound, then count and log the decision.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::authz::request::bearer_token;
use crate::authz::{self, Credential, Decision, Denial, Request};
use crate::cache::{self, ClaimsCache};
use crate::reason::Reason;
use crate::store::{Snapshot, SnapshotStore};
use crate::telemetry::{self, DecisionLogMode, DecisionRecord, Metrics};
use crate::token::TokenError;

/// Context extension (Envoy `ExtAuthzPerRoute.check_settings.context_extensions`) that pins a
/// request to one rule id instead of matching by host and path.
pub const CONTEXT_RULE: &str = "scopegate.rule";

/// Largest bearer token accepted, in bytes (refused before any JWT parsing).
pub const DEFAULT_MAX_TOKEN_BYTES: usize = 8 * 1024;

/// Settings of the check pipeline.
#[derive(Debug, Clone)]
pub struct CheckSettings {
    /// Tokens (Authorization values) larger than this are refused before any parsing.
    pub max_token_bytes: usize,
    /// Deny non-public routes when the snapshot was last confirmed longer ago than this.
    pub max_staleness: Option<Duration>,
    pub decision_log: DecisionLogMode,
}

impl Default for CheckSettings {
    fn default() -> Self {
        CheckSettings {
            max_token_bytes: DEFAULT_MAX_TOKEN_BYTES,
            max_staleness: None,
            decision_log: DecisionLogMode::All,
        }
    }
}

/// The `Authorization` header as Envoy forwarded it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthorizationHeader<'a> {
    Absent,
    One(&'a str),
    /// Sent more than once, or not valid UTF-8: a request that carries two credentials, or one
    /// that cannot be read, is malformed (400), whichever copy an upstream would pick.
    Malformed,
}

/// One request as Envoy describes it (borrowed from the `CheckRequest`).
#[derive(Debug, Clone, Copy)]
pub struct CheckInput<'a> {
    pub host: &'a str,
    pub method: &'a str,
    /// `:path` as received, query included.
    pub path: &'a str,
    pub authorization: AuthorizationHeader<'a>,
    pub context: Option<&'a HashMap<String, String>>,
}

/// The decision plus what the response and log need.
#[derive(Debug, Clone)]
pub struct CheckOutcome {
    pub decision: Decision,
    pub decision_id: String,
    pub revision: Option<i64>,
}

/// Runs checks against a snapshot store.
#[derive(Debug)]
pub struct Checker {
    store: Arc<SnapshotStore>,
    cache: ClaimsCache,
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
        Checker {
            store,
            cache,
            metrics,
            settings,
        }
    }

    /// Answers one request; never panics, never allows on an internal problem.
    pub fn check(&self, input: &CheckInput<'_>) -> CheckOutcome {
        let started = Instant::now();
        let snapshot = self.store.current();
        let decision = match snapshot.as_deref() {
            // Fail closed: nothing has been loaded yet.
            None => Decision::deny(Denial::unavailable(Reason::NoSnapshot)),
            Some(snapshot) => self.decide_or_fail_closed(snapshot, input),
        };
        let elapsed = started.elapsed();
        let decision_id = uuid::Uuid::new_v4().simple().to_string();
        let revision = snapshot.as_ref().map(|s| s.revision);
        self.metrics.record(&decision, elapsed);
        telemetry::log_decision(
            self.settings.decision_log,
            &DecisionRecord {
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

    /// Fail closed on a bug: a panic would cancel the gRPC call, and Envoy's
    /// `failure_mode_allow: true` would then let the request through. It becomes an explicit
    /// 503 deny (`internal_error`) instead, counted and logged like every decision.
    fn decide_or_fail_closed(&self, snapshot: &Snapshot, input: &CheckInput<'_>) -> Decision {
        let decided = std::panic::catch_unwind(AssertUnwindSafe(|| self.decide(snapshot, input)));
        decided.unwrap_or_else(|_| {
            tracing::error!("check panicked; answering deny (internal_error)");
            Decision::deny(Denial::unavailable(Reason::InternalError))
        })
    }

    fn decide(&self, snapshot: &Snapshot, input: &CheckInput<'_>) -> Decision {
        let request = match Request::new(input.host, input.method, input.path) {
            Ok(request) => request,
            Err(e) => return Decision::deny(Denial::invalid_request(&e)),
        };
        let credential = || self.credential(snapshot, input.authorization);
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
        authorization: AuthorizationHeader<'_>,
    ) -> Credential {
        let value = match authorization {
            AuthorizationHeader::Absent => None,
            AuthorizationHeader::One(value) => Some(value),
            AuthorizationHeader::Malformed => return Credential::Malformed,
        };
        // The size bound applies to the token itself, once, before any JWT parsing.
        match bearer_token(value) {
            Err(_) => Credential::Malformed,
            Ok(None) => Credential::Absent,
            Ok(Some(token)) if token.len() > self.settings.max_token_bytes => Credential::Invalid(
                TokenError::TooLarge(token.len(), self.settings.max_token_bytes),
            ),
            Ok(Some(token)) => self.verify(snapshot, token),
        }
    }

    fn verify(&self, snapshot: &Snapshot, token: &str) -> Credential {
        let key = cache::digest(token);
        if let Some(claims) = self.cache.get(&key, snapshot.verifier_generation) {
            self.metrics.check.cache_hits.inc();
            return Credential::Valid(claims);
        }
        self.metrics.check.cache_misses.inc();
        match snapshot.verifier.verify(token) {
            Ok(claims) => {
                let claims = Arc::new(claims);
                self.cache
                    .insert(key, claims.clone(), snapshot.verifier_generation);
                Credential::Valid(claims)
            }
            Err(e) => Credential::Invalid(e),
        }
    }
}
