//! The verified-claims cache: SHA-256(token) → claims, so a token's signature is checked once,
//! not on every request. It holds nothing that depends on rules: routes, scope definitions and
//! revocations are evaluated against the current snapshot on every request, so a change applies
//! to the next request. An entry lives at most `min(max_ttl, exp - now)`, and is ignored when the
//! issuers (keys) it was verified with have changed since: a new issuer configuration (verifier
//! generation), or a fetched key set that dropped a key of the issuer (its [`KeyStamp`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::sync::Cache;
use moka::Expiry;

use crate::store::unix_millis;
use crate::token::{Claims, KeyStamp};

/// SHA-256 of the raw token: collision-resistant, and the token itself is never stored.
pub type TokenDigest = [u8; 32];

pub fn digest(token: &str) -> TokenDigest {
    crate::sha256::sha256(token.as_bytes())
}

#[derive(Debug, Clone)]
struct Entry {
    claims: Arc<Claims>,
    verifier_generation: u64,
    /// Remote keys: the issuer's key epoch at verification.
    stamp: Option<KeyStamp>,
    ttl: Duration,
}

struct EntryExpiry;

impl Expiry<TokenDigest, Entry> for EntryExpiry {
    fn expire_after_create(&self, _: &TokenDigest, entry: &Entry, _: Instant) -> Option<Duration> {
        Some(entry.ttl)
    }
}

/// Bounded cache of verified claims.
#[derive(Clone)]
pub struct ClaimsCache {
    inner: Cache<TokenDigest, Entry, crate::lookup::Hasher>,
    max_ttl: Duration,
}

impl std::fmt::Debug for ClaimsCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClaimsCache")
            .field("entries", &self.inner.entry_count())
            .field("max_ttl", &self.max_ttl)
            .finish()
    }
}

impl ClaimsCache {
    /// `capacity` entries at most; `max_ttl` zero disables caching.
    pub fn new(capacity: u64, max_ttl: Duration) -> ClaimsCache {
        ClaimsCache {
            inner: Cache::builder()
                .max_capacity(capacity)
                .expire_after(EntryExpiry)
                .build_with_hasher(crate::lookup::Hasher::default()),
            max_ttl,
        }
    }

    /// Claims cached for this token under the current issuer generation, not expired at `now`
    /// (unix seconds: the check's one reading of the clock).
    pub fn get(
        &self,
        key: &TokenDigest,
        verifier_generation: u64,
        now: i64,
    ) -> Option<Arc<Claims>> {
        let entry = self.inner.get(key)?;
        let keys_current = entry.stamp.as_ref().is_none_or(KeyStamp::is_current);
        (entry.verifier_generation == verifier_generation && keys_current && entry.claims.exp > now)
            .then_some(entry.claims)
    }

    /// Entries held now, after moka's pending maintenance (evictions) has run. Not for the
    /// check path: for `/status`, benchmarks and tests.
    pub fn entry_count(&self) -> u64 {
        self.inner.run_pending_tasks();
        self.inner.entry_count()
    }

    /// Caches freshly verified claims until `min(max_ttl, exp - now)`.
    pub fn insert(&self, key: TokenDigest, claims: Arc<Claims>, verifier_generation: u64) {
        self.insert_stamped(key, claims, verifier_generation, None);
    }

    /// Caches claims verified with remote keys, until `stamp` goes stale (a key was removed).
    pub fn insert_stamped(
        &self,
        key: TokenDigest,
        claims: Arc<Claims>,
        verifier_generation: u64,
        stamp: Option<KeyStamp>,
    ) {
        let now_ms = unix_millis() as i64;
        let until_exp_ms = claims.exp.saturating_mul(1000).saturating_sub(now_ms);
        if until_exp_ms <= 0 || self.max_ttl.is_zero() {
            return;
        }
        let ttl = self.max_ttl.min(Duration::from_millis(until_exp_ms as u64));
        self.inner.insert(
            key,
            Entry {
                claims,
                verifier_generation,
                stamp,
                ttl,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp: i64) -> Arc<Claims> {
        Arc::new(Claims {
            iss: "i".into(),
            sub: Some("s".into()),
            client_id: None,
            jti: None,
            iat: None,
            exp,
            scopes: vec![],
            cnf: None,
        })
    }

    fn now() -> i64 {
        (unix_millis() / 1000) as i64
    }

    #[test]
    fn hit_only_for_same_generation() {
        let cache = ClaimsCache::new(100, Duration::from_secs(60));
        let key = digest("a.b.c");
        cache.insert(key, claims(now() + 600), 7);
        assert!(cache.get(&key, 7, now()).is_some());
        assert!(cache.get(&key, 8, now()).is_none());
        assert!(cache.get(&digest("a.b.d"), 7, now()).is_none());
    }

    #[test]
    fn expired_claims_are_never_returned_or_stored() {
        let cache = ClaimsCache::new(100, Duration::from_secs(60));
        let key = digest("t");
        cache.insert(key, claims(now() - 1), 1);
        assert!(cache.get(&key, 1, now()).is_none());
    }

    #[test]
    fn an_entry_is_not_served_from_its_exp_on_at_the_checks_time() {
        let cache = ClaimsCache::new(100, Duration::from_secs(3600));
        let key = digest("t");
        let exp = now() + 600;
        cache.insert(key, claims(exp), 1);
        assert!(cache.get(&key, 1, exp - 1).is_some());
        assert!(
            cache.get(&key, 1, exp).is_none(),
            "a token is expired at exp"
        );
    }

    #[test]
    fn zero_ttl_disables_caching() {
        let cache = ClaimsCache::new(100, Duration::ZERO);
        let key = digest("t");
        cache.insert(key, claims(now() + 600), 1);
        assert!(cache.get(&key, 1, now()).is_none());
    }
}
