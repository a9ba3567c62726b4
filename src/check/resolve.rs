//! The credential steps that wait on an identity provider, kept off the fast path. A check runs
//! as one synchronous pass (snapshot → request → credential → decide); when the credential needs
//! the network (a `kid` missing from a remote key set, or an opaque token whose introspection is
//! not cached), the pass records it, the one asynchronous step runs ([`resolve`]), and the pass
//! runs again with what it found. `authz::decide` stays pure and synchronous; a cached or
//! plain JWT costs no await and no allocation beyond what it did before.
//!
//! A slow step is only asked for when the first pass's credential is *not* valid, so the binding
//! check (and its DPoP replay cache) runs once per request, in the pass that decides.

use std::cell::RefCell;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures_util::FutureExt;

use super::Checker;
use crate::authz::request::is_b64token;
use crate::authz::Credential;
use crate::cache;
use crate::store::Snapshot;
use crate::token::introspect;
use crate::token::{Claims, RemoteKeys, TokenError};

/// What the first pass could not settle.
#[derive(Debug)]
pub(super) enum SlowStep {
    /// Wait (bounded) for a refetch of this issuer's keys, then verify again.
    KidMiss(Arc<RemoteKeys>),
    /// Introspect this opaque token (RFC 7662).
    Introspect(String),
}

/// What the slow step found.
#[derive(Debug)]
pub(super) enum Found {
    /// Nothing new (a rate-limited kid miss, or a refetch that did not finish in time): the
    /// first pass's decision stands, and is not computed again.
    Nothing,
    /// A refetch finished: verify again with the keys now published.
    Keys,
    /// What introspection said.
    Introspected(Result<Arc<Claims>, TokenError>),
}

/// One check's memory across its passes.
#[derive(Default)]
pub(super) struct Pass {
    second: bool,
    slow: RefCell<Option<SlowStep>>,
    introspected: RefCell<Option<Result<Arc<Claims>, TokenError>>>,
}

impl Pass {
    /// The step the first pass asked for, if any.
    pub(super) fn take_slow(&self) -> Option<SlowStep> {
        self.slow.borrow_mut().take()
    }

    fn need(&self, step: SlowStep) {
        if !self.second {
            *self.slow.borrow_mut() = Some(step);
        }
    }

    /// The pass after the slow step, knowing what it found.
    pub(super) fn after(found: Found) -> Pass {
        let introspected = match found {
            Found::Introspected(answer) => Some(answer),
            Found::Nothing | Found::Keys => None,
        };
        Pass {
            second: true,
            slow: RefCell::new(None),
            introspected: RefCell::new(introspected),
        }
    }
}

/// Runs the slow step. A panic inside it fails closed like one in the synchronous pass.
pub(super) async fn resolve(
    checker: &Checker,
    snapshot: &Snapshot,
    step: SlowStep,
) -> Result<Found, ()> {
    let work = async {
        match step {
            SlowStep::KidMiss(keys) => match keys.kid_miss().await {
                true => Found::Keys,
                false => Found::Nothing,
            },
            SlowStep::Introspect(token) => Found::Introspected(
                introspect::introspect(
                    snapshot.verifier.introspectors(),
                    &token,
                    &checker.introspection,
                    snapshot.verifier_generation,
                    &checker.metrics,
                )
                .await,
            ),
        }
    };
    AssertUnwindSafe(work).catch_unwind().await.map_err(|_| ())
}

/// The claims cache's answer for one token: its key, and the claims if they are held.
#[derive(Debug)]
pub(super) struct CacheLookup {
    key: cache::TokenDigest,
    claims: Option<Arc<Claims>>,
}

impl CacheLookup {
    pub(super) fn is_hit(&self) -> bool {
        self.claims.is_some()
    }
}

impl Checker {
    /// Asks the claims cache for `token` (cheap: a SHA-256 and a lookup).
    pub(super) fn look_up(&self, snapshot: &Snapshot, token: &str, now: i64) -> CacheLookup {
        let key = cache::digest(token);
        let claims = self.cache.get(&key, snapshot.verifier_generation, now);
        CacheLookup { key, claims }
    }

    /// The token's claims: the claims cache, else introspection (opaque tokens) or verification.
    pub(super) fn verify_token(
        &self,
        snapshot: &Snapshot,
        token: &str,
        lookup: CacheLookup,
        pass: &Pass,
    ) -> Credential {
        let CacheLookup { key, claims } = lookup;
        if let Some(claims) = claims {
            self.metrics.check.cache_hits.inc();
            return Credential::Valid(claims);
        }
        // What `credential` relies on to skip the syntax check on a cache hit.
        debug_assert!(is_b64token(token), "only a well-formed token is verified");
        let introspectors = snapshot.verifier.introspectors();
        if !introspectors.is_empty() && introspect::is_opaque(token) {
            // Not a JWT: never in the claims cache (introspection answers have their own).
            return self.opaque(snapshot, token, pass);
        }
        self.metrics.check.cache_misses.inc();
        let verified = snapshot.verifier.verify_detailed(token);
        match verified.result {
            Ok(claims) => {
                let claims = Arc::new(claims);
                let generation = snapshot.verifier_generation;
                self.cache
                    .insert_stamped(key, claims.clone(), generation, verified.stamp);
                Credential::Valid(claims)
            }
            Err(e) => {
                if let Some(keys) = verified.kid_miss {
                    pass.need(SlowStep::KidMiss(keys));
                }
                Credential::Invalid(e)
            }
        }
    }

    fn opaque(&self, snapshot: &Snapshot, token: &str, pass: &Pass) -> Credential {
        let cached = introspect::cached(
            snapshot.verifier.introspectors(),
            token,
            &self.introspection,
            snapshot.verifier_generation,
        );
        let found = pass.introspected.borrow().clone().or(cached);
        match found {
            Some(Ok(claims)) => Credential::Valid(claims),
            Some(Err(e)) => Credential::Invalid(e),
            None => {
                pass.need(SlowStep::Introspect(token.to_string()));
                // Placeholder: the decision of this pass is discarded for the introspected one.
                Credential::Invalid(TokenError::IntrospectionFailed("pending".into()))
            }
        }
    }
}
