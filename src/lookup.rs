//! The hasher of the tables every check looks up: routes by host and path segment, scope
//! aliases and implications, revocations, and the verified-claims cache. It is foldhash with a
//! random seed per process (hashbrown's own default), in place of std's SipHash-1-3, which cost
//! ~1,000 instructions per check over these lookups.
//!
//! Flooding needs an attacker to *insert* colliding keys, and none can here: the rule tables
//! are built from the operator's rules and only read on the decision path, so a request's key
//! can at worst probe one chain the operator's keys formed; the claims cache holds only tokens
//! whose signature verified, under the SHA-256 of the token. Maps filled from request data
//! (Envoy's headers, decoded by prost) keep std's hasher.

/// A `HashMap` with the decision path's hasher; build it with `HashMap::default()`.
pub type HashMap<K, V> = std::collections::HashMap<K, V, Hasher>;

/// The hasher: foldhash's fast variant, seeded at random once per process.
pub type Hasher = foldhash::fast::RandomState;
