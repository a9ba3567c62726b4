//! The hasher of the tables every check looks up: routes by host and path segment, scope
//! aliases and implications, revocations, and the verified-claims cache. It is foldhash
//! (hashbrown's own default) in place of std's SipHash-1-3, which cost ~1,300 instructions per
//! check over these lookups.
//!
//! foldhash is seeded per process from address-space layout and the clock, and does not claim
//! flood resistance. None is needed, as no client can insert chosen keys: the rule tables are
//! built from the operator's rules and only read on the decision path (a request's key can at
//! worst walk one chain the operator's keys formed), and the claims cache only takes tokens whose
//! signature verified, keyed by their SHA-256. Maps filled from request data (Envoy's headers,
//! decoded by prost) keep std's hasher.

/// A `HashMap` with the decision path's hasher; build it with `HashMap::default()`.
pub type HashMap<K, V> = std::collections::HashMap<K, V, Hasher>;

/// The hasher: foldhash's fast variant, with a per-process seed.
pub type Hasher = foldhash::fast::RandomState;
