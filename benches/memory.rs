//! Memory and scale: resident memory per cached token, snapshot build time and memory at
//! 100,000 routes, `decide()` from 10 to 100,000 routes, and a revocation list of 1,000,000 jti
//! entries (load time, lookup cost). Prints one line per figure (RSS from /proc/self/statm).
//! Run: `cargo bench --bench memory` (under `cargo test --all-targets` it runs small sizes as a
//! smoke test).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use scopegate::authz::{decide, is_revoked, Credential, Request};
use scopegate::cache::{digest, ClaimsCache};
use scopegate::rules::{Entry, EntryKind, ParseContext, RuleSet};
use scopegate::store::Snapshot;
use scopegate::token::Claims;
use serde_json::json;

/// The binary's allocator, so that the figures are the binary's (`scopegate::allocator`).
#[global_allocator]
static ALLOCATOR: scopegate::allocator::Allocator = scopegate::allocator::Allocator;

/// A fixed clock for revocation lookups (no entry here expires).
const NOW: i64 = 1_764_000_000;

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Claims the size of a typical RFC 9068 access token's.
fn claims(i: usize) -> Arc<Claims> {
    Arc::new(Claims {
        iss: "https://idp.example.com/realms/prod/".into(),
        sub: Some(format!("f81d4fae-7dec-11d0-a765-{i:012}")),
        client_id: Some("orders-frontend".into()),
        jti: Some(format!("jti-{i:016}")),
        iat: Some(1_764_000_000),
        exp: i64::MAX / 2000,
        scopes: vec!["openid".into(), "orders:read".into(), "profile".into()],
        cnf: None,
    })
}

fn cached_tokens(n: usize) {
    let cache = ClaimsCache::new(n as u64, Duration::from_secs(3600));
    let before = rss_bytes();
    let started = Instant::now();
    for i in 0..n {
        cache.insert(digest(&format!("token-{i}")), claims(i), 1);
    }
    let _ = cache.entry_count();
    let grown = rss_bytes().saturating_sub(before);
    println!(
        "memory/claims_cache     tokens={n:<9} rss_growth={:>8.1} MiB  per_token={:>5} B  insert={:.2?}",
        mib(grown),
        grown / n as u64,
        started.elapsed()
    );
    let capped = ClaimsCache::new((n / 10) as u64, Duration::from_secs(3600));
    for i in 0..n {
        capped.insert(digest(&format!("token-{i}")), claims(i), 1);
    }
    println!(
        "memory/claims_cache     capacity={:<7} inserted={n} entries={} (the hard bound)",
        n / 10,
        capped.entry_count()
    );
}

fn routes(n: usize) -> RuleSet {
    let mut set = RuleSet::default();
    let ctx = ParseContext { base_dir: None };
    for i in 0..n {
        let path = match i % 3 {
            0 => format!("/v1/res{i}"),
            1 => format!("/v1/res{i}/{{id}}/items/{{item}}"),
            _ => format!("/v1/res{i}/**"),
        };
        let value = json!({"host": format!("api{}.example.com", i % 50), "path": path,
                           "methods": ["GET"], "require": {"all": [format!("res{}:read", i % 100)]}});
        let id = format!("route-{i:06}");
        set.insert(
            &id,
            Entry::parse(EntryKind::Route, &id, &value, ctx).unwrap(),
        );
    }
    set
}

fn snapshot_and_decide(sizes: &[usize], lookups: u32) {
    for &n in sizes {
        let set = routes(n);
        let before = rss_bytes();
        let started = Instant::now();
        let snapshot = Snapshot::build(set, 1, None);
        let built = started.elapsed();
        let grown = rss_bytes().saturating_sub(before);
        let i = (n / 2) / 3 * 3 + 1;
        let request = Request::new(
            &format!("api{}.example.com", i % 50),
            "GET",
            &format!("/v1/res{i}/42/items/7"),
        )
        .unwrap();
        let c = Claims {
            scopes: vec![format!("res{}:read", i % 100)],
            cnf: None,
            ..(*claims(1)).clone()
        };
        let c = Arc::new(c);
        assert!(decide(&snapshot, &request, || Credential::Valid(c.clone())).is_allow());
        let started = Instant::now();
        for _ in 0..lookups {
            std::hint::black_box(decide(&snapshot, &request, || Credential::Valid(c.clone())));
        }
        let per = started.elapsed() / lookups;
        println!(
            "scale/routes            routes={n:<7} build={built:>10.2?}  index_rss={:>7.1} MiB  decide={per:>8.2?}",
            mib(grown)
        );
    }
}

fn revocations(n: usize, lookups: u32) {
    let mut set = RuleSet::default();
    let ctx = ParseContext { base_dir: None };
    for i in 0..n {
        let id = format!("jti-{i:016}");
        let revocation = Entry::parse(EntryKind::RevokedJti, &id, &json!({}), ctx).unwrap();
        set.insert(&id, revocation);
    }
    let before = rss_bytes();
    let started = Instant::now();
    let snapshot = Snapshot::build(set, 1, None);
    let built = started.elapsed();
    let grown = rss_bytes().saturating_sub(before);
    let live = claims(n + 1);
    let revoked = claims(n / 2);
    assert!(is_revoked(&snapshot, &revoked, NOW) && !is_revoked(&snapshot, &live, NOW));
    let started = Instant::now();
    for _ in 0..lookups {
        std::hint::black_box(is_revoked(&snapshot, &live, NOW));
        std::hint::black_box(is_revoked(&snapshot, &revoked, NOW));
    }
    let per = started.elapsed() / (2 * lookups);
    println!(
        "scale/revoked_jti       entries={n:<9} load={built:>10.2?}  rss={:>7.1} MiB  lookup={per:>8.2?}",
        mib(grown)
    );
}

fn main() {
    let benching = std::env::args().any(|a| a == "--bench");
    // Growth is measured as RSS before/after, so the large allocations come last: memory freed
    // by an earlier step would be reused and hide a later step's growth.
    if benching {
        snapshot_and_decide(&[10, 1_000, 10_000, 100_000], 200_000);
        revocations(1_000, 1_000_000);
        revocations(1_000_000, 1_000_000);
        cached_tokens(1_000_000);
    } else {
        cached_tokens(10_000);
        snapshot_and_decide(&[10, 1_000], 1_000);
        revocations(10_000, 1_000);
    }
}
