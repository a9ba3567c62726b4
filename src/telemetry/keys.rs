//! What talking to identity providers counts: JWKS and discovery fetches by issuer and result,
//! the age of each issuer's key set, and RFC 7662 introspections by issuer and result. Label
//! values are issuer entry names (bounded by configuration), never URLs or tokens.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::registered;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct IssuerResult {
    issuer: String,
    result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct IssuerLabel {
    issuer: String,
}

/// Remote keys and introspection.
#[derive(Debug)]
pub struct KeyMetrics {
    fetches: Family<IssuerResult, Counter>,
    age: Family<IssuerLabel, Gauge<f64, AtomicU64>>,
    introspections: Family<IssuerResult, Counter>,
}

impl KeyMetrics {
    pub(super) fn register(r: &mut Registry) -> KeyMetrics {
        KeyMetrics {
            fetches: registered(
                r,
                "scopegate_jwks_fetch",
                "Remote key refreshes by issuer and result (ok, invalid: not a usable JWKS or \
                 discovery document, http_status, timeout, too_large, transport)",
                Family::default(),
            ),
            age: registered(
                r,
                "scopegate_jwks_age_seconds",
                "Seconds since the issuer's key set in force was fetched (absent: none yet)",
                Family::default(),
            ),
            introspections: registered(
                r,
                "scopegate_introspection",
                "RFC 7662 introspection requests by issuer and result (active, inactive, \
                 refused: active but not acceptable here, error, no_endpoint); cache hits are \
                 not counted",
                Family::default(),
            ),
        }
    }

    /// Counts one refresh of `issuer`'s keys.
    pub fn record_fetch(&self, issuer: &str, result: &'static str) {
        let labels = IssuerResult {
            issuer: issuer.to_string(),
            result,
        };
        self.fetches.get_or_create(&labels).inc();
    }

    /// Counts one introspection (or cache hit) for `issuer`.
    pub fn record_introspection(&self, issuer: &str, result: &'static str) {
        let labels = IssuerResult {
            issuer: issuer.to_string(),
            result,
        };
        self.introspections.get_or_create(&labels).inc();
    }

    /// Replaces the age gauges with the issuers in force now (at scrape time), so an issuer that
    /// was removed is no longer listed.
    pub fn set_ages<'a>(&self, ages: impl IntoIterator<Item = (&'a str, f64)>) {
        self.age.clear();
        for (issuer, seconds) in ages {
            let labels = IssuerLabel {
                issuer: issuer.to_string(),
            };
            self.age.get_or_create(&labels).set(seconds);
        }
    }
}
