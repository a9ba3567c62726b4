//! Property tests for the path rule: for arbitrary paths built from the pieces attackers use
//! (`""`, `.`, `..`, `;`, `;p=1`, `%2e`, ...), the rule scopegate applies is the rule every
//! reference reading of the path (RFC 3986, merge-slashes-then-RFC 3986, Tomcat, decode-first)
//! would apply, or scopegate refuses the request; the same against case-insensitive upstreams,
//! against rules with their letters folded: IIS (RFC 3986, then ASCII letters folded), Java and
//! .NET (everything decoded, then compared per character by simple case mappings, so the Kelvin
//! sign is `k` and the dotless `ı` is `i`), culture-aware .NET comparisons (the same after
//! default-ignorable characters are dropped: `ad\u{AD}min` with a soft hyphen is `admin`) and
//! ICU's `NFKC_Casefold` (everything decoded, default-ignorables dropped, NFKC, full case
//! folding: `ﬁ` is `fi`, the fullwidth `Ａ` is `a`, `／` is `/`). Also: the normaliser never
//! panics, is idempotent, and never yields `..`, `//`, `;` or an encoded `/`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::disallowed_methods,
    reason = "tests, benchmarks and examples: a failed step stops them with its message, and they read their own environment"
)]

mod support;

use std::path::Path;

use proptest::prelude::*;
use scopegate::authz::request::normalise_path;
use scopegate::authz::Request;
use scopegate::rules::document::parse_document;
use scopegate::store::Snapshot;
use support::path_readings::{
    is_default_ignorable, merge_slashes, path_part, percent_decode, remove_dot_segments, rfc3986,
    READINGS,
};
use unicode_normalization::UnicodeNormalization;

const RULES: &str = r#"
routes:
  admin: {host: "*", path: /admin/**, require: {all: [admin]}}
  orders-one: {host: "*", path: "/orders/{id}", require: {all: [orders:read]}}
  orders-all: {host: "*", path: /orders/**, require: {all: [orders:list]}}
  orders-admin: {host: "*", path: /orders/admin, require: {all: [admin]}}
  tenant: {host: "*", path: "/{tenant}/orders", require: {all: [tenant]}}
  one: {host: "*", path: /1/**, require: {public: true}}
  api: {host: "*", path: /API/**, require: {all: [admin]}}
  keys: {host: "*", path: /keys/**, require: {all: [admin]}}
  files: {host: "*", path: "/files/{name}", require: {all: [admin]}}
  root: {host: "*", path: /**, require: {public: true}}
"#;

fn snapshot() -> Snapshot {
    let rules = parse_document(RULES, Path::new("rules.yaml")).expect("rules parse");
    Snapshot::build(rules, 1, None)
}

/// The rules as a case-insensitive upstream sees them (ids are lower-case already).
fn folded_snapshot() -> Snapshot {
    let rules = parse_document(&RULES.to_ascii_lowercase(), Path::new("rules.yaml"))
        .expect("folded rules parse");
    Snapshot::build(rules, 1, None)
}

/// The rule a case-insensitive upstream applies to `raw`, by name.
fn case_insensitive_rules(folded: &Snapshot, raw: &str) -> [(&'static str, Option<String>); 4] {
    [
        ("IIS", rule_for_segments(folded, &iis(raw))),
        ("Java/.NET", rule_for_segments(folded, &per_character(raw))),
        (
            ".NET culture-aware",
            rule_for_segments(folded, &culture_aware(raw)),
        ),
        (
            "ICU NFKC_Casefold",
            rule_for_segments(folded, &nfkc_folded(raw)),
        ),
    ]
}

fn without_ignorables(text: &str) -> String {
    text.chars().filter(|c| !is_default_ignorable(*c)).collect()
}

/// .NET's culture-aware comparisons (ICU collation underneath): default-ignorable characters
/// count for nothing, the rest compares as in [`per_character`].
fn culture_aware(raw: &str) -> String {
    per_character(&without_ignorables(&percent_decode(path_part(raw), |_| {
        true
    })))
}

/// IIS: RFC 3986, then ASCII letters folded.
fn iis(raw: &str) -> String {
    rfc3986(raw).to_ascii_lowercase()
}

/// Everything decoded, dot segments resolved and slashes merged.
fn decoded(raw: &str) -> String {
    remove_dot_segments(&merge_slashes(&percent_decode(path_part(raw), |_| true)))
}

/// Java's `equalsIgnoreCase` and .NET's per-character comparisons: two characters are equal
/// when their simple upper-case mappings are, or the lower-case mappings of those; each
/// character is keyed by that (lower of upper) against rules in lower case.
fn per_character(raw: &str) -> String {
    // A simple mapping is one character; where Rust's (full) mapping has more, the simple one
    // is the character itself (upper: `ß`, `ﬁ`) or the first character (lower: only `İ`, `i`).
    fn simple_upper(c: char) -> char {
        let mut up = c.to_uppercase();
        match (up.next(), up.next()) {
            (Some(u), None) => u,
            _ => c,
        }
    }
    fn simple_lower(c: char) -> char {
        c.to_lowercase().next().unwrap_or(c)
    }
    decoded(raw)
        .chars()
        .map(|c| simple_lower(simple_upper(c)))
        .collect()
}

/// ICU's `NFKC_Casefold`: default-ignorables dropped, NFKC, full case folding (lower of upper,
/// full mappings), NFKC again, default-ignorables dropped; dot segments and slashes that
/// normalisation produced are resolved as the upstream resolves them.
fn nfkc_folded(raw: &str) -> String {
    let text = without_ignorables(&percent_decode(path_part(raw), |_| true));
    let folded: String = text
        .nfkc()
        .flat_map(char::to_uppercase)
        .flat_map(char::to_lowercase)
        .collect();
    let normal = without_ignorables(&folded.nfkc().collect::<String>());
    remove_dot_segments(&merge_slashes(&normal))
}

/// The rule a path selects when matched segment by segment as it stands.
fn rule_for_segments(snapshot: &Snapshot, path: &str) -> Option<String> {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    snapshot
        .routes
        .find("api.example.com", "GET", &segments)
        .map(|r| r.id.clone())
}

/// The rule scopegate applies, or `None` when it refuses the path (as `authz::decide` looks it
/// up: the path checked, then the rule, with the letter-case check).
fn scopegate_rule(snapshot: &Snapshot, raw: &str) -> Option<Option<String>> {
    let request = Request::new("api.example.com", "GET", raw).ok()?;
    let segments = request.segments();
    let found = snapshot
        .routes
        .find_case_checked(&request.host, &request.method, &segments)
        .ok()?;
    Some(found.map(|r| r.id.clone()))
}

fn piece() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "",
        ".",
        "..",
        ";",
        ";p=1",
        "%2e",
        "%2E%2e",
        "%2e.",
        "..;",
        ".;",
        "admin",
        "orders",
        "1",
        "%3B",
        "%2F",
        "%25",
        "%61dmin",
        "%20",
        "ADMIN",
        "Admin",
        "API",
        "api",
        "Orders",
        "X",
        // Unicode that case-insensitive upstreams fold to ASCII letters or NFKC to path syntax.
        "keys",
        "files",
        "%E2%84%AAeys",
        "adm%C4%B1n",
        "AP%C4%B0",
        "order%C5%BF",
        "%EF%BC%A1dmin",
        "%EF%AC%81les",
        "%C3%A9",
        "%C3%9F",
        "%E2%80%A5",
        "%EF%BC%8F",
        "%EF%BC%8E",
        "%E2%80%A4",
        // Default-ignorable: soft hyphen, zero width space, BOM.
        "ad%C2%ADmin",
        "%C2%AD",
        "%E2%80%8B",
        "%EF%BB%BF",
    ])
}

/// A segment: one to three pieces glued together (`admin;p=1`, `..%2e`, ...).
fn segment() -> impl Strategy<Value = String> {
    prop::collection::vec(piece(), 1..=3).prop_map(|p| p.concat())
}

fn path() -> impl Strategy<Value = String> {
    (prop::collection::vec(segment(), 0..7), any::<bool>()).prop_map(|(segments, slash)| {
        let mut p = format!("/{}", segments.join("/"));
        if slash {
            p.push('/');
        }
        p
    })
}

/// The number of cases: `PROPTEST_CASES` for a longer run, else the bounded default.
fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(4096)))]

    #[test]
    fn accepted_paths_select_the_rule_every_reading_selects(raw in path()) {
        let snapshot = snapshot();
        let folded = folded_snapshot();
        if let Some(chosen) = scopegate_rule(&snapshot, &raw) {
            for (name, theirs) in case_insensitive_rules(&folded, &raw) {
                prop_assert_eq!(&chosen, &theirs, "{} (case-insensitive) reads {:?}", name, raw);
            }
            for (name, read) in READINGS {
                let served = read(&raw);
                let theirs = rule_for_segments(&snapshot, &served);
                prop_assert_eq!(
                    &chosen, &theirs,
                    "{} reads {:?} as {:?}", name, raw, served
                );
            }
        }
    }

    #[test]
    fn normal_form_is_idempotent_and_clean(raw in path(), query in "[?#]?[a-z=/.;%]{0,8}") {
        let target = format!("{raw}{query}");
        if let Ok(normal) = normalise_path(&target) {
            let again = normalise_path(&normal);
            prop_assert_eq!(again.as_deref(), Ok(normal.as_str()));
            prop_assert!(normal.starts_with('/'));
            prop_assert!(!normal.contains("//"), "{}", normal);
            prop_assert!(!normal.contains(';'), "{}", normal);
            let upper = normal.to_ascii_uppercase();
            prop_assert!(!upper.contains("%2F") && !upper.contains("%5C") && !upper.contains("%2E"));
            prop_assert!(normal.split('/').all(|s| s != "." && s != ".."), "{}", normal);
            prop_assert_eq!(path_part(&target).trim_end_matches('/').len().max(1), normal.len());
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(raw in prop::collection::vec(any::<u8>(), 0..64)) {
        let text = String::from_utf8_lossy(&raw);
        let _ = normalise_path(&text);
        let _ = Request::new(&text, &text, &text);
    }
}

/// The property above would hold vacuously if everything were refused: plain paths built from
/// the same alphabet must be accepted and agree with every reading.
#[test]
fn plain_paths_are_accepted_and_agree() {
    let snapshot = snapshot();
    let plain = [
        "/",
        "/admin",
        "/admin/x",
        "/orders",
        "/orders/1",
        "/orders/admin",
        "/orders/1/x",
        "/1/orders",
        "/x/orders",
        "/admin/orders/",
        "/1",
        "/a%20b/orders",
        // Upper case that picks the same rule under either reading.
        "/1/X",
        "/X/orders",
        "/admin/X",
        "/API/x",
        "/orders/X",
        // Non-ASCII that picks the same rule under every reading.
        "/files/caf%C3%A9",
        "/caf%C3%A9/orders",
        "/keys/%E2%84%AA",
        "/x/a%E2%80%A4b",
        "/x/a%C2%ADb",
        "/files/caf%C3%A9%C2%AD",
    ];
    let folded = folded_snapshot();
    for raw in plain {
        let chosen = scopegate_rule(&snapshot, raw).unwrap_or_else(|| panic!("{raw} refused"));
        for (name, theirs) in case_insensitive_rules(&folded, raw) {
            assert_eq!(chosen, theirs, "{name} (case-insensitive) {raw}");
        }
        for (name, read) in READINGS {
            assert_eq!(
                chosen,
                rule_for_segments(&snapshot, &read(raw)),
                "{name} {raw}"
            );
        }
    }
}

/// The examples from the security report, each against the reading that exposes it.
#[test]
fn reported_examples_are_refused() {
    let snapshot = snapshot();
    for raw in [
        "/admin//../orders/1",
        "/orders/;/../admin",
        "/orders/;x=1/../admin",
        "/admin;x=1/orders",
        "/1/..;/admin/x",
        "/1/%2e%2e/admin/x",
        // Letter case: IIS serves these from /admin/ and /API/.
        "/ADMIN/x",
        "/Admin",
        "/api/x",
        "/Orders/admin",
        "/1/Orders",
        // Unicode: Java/.NET serve these from /keys/, /admin/, /orders/; ICU from /files/.
        "/%E2%84%AAeys/x",
        "/adm%C4%B1n/x",
        "/1/order%C5%BF",
        "/%EF%BC%A1dmin",
        "/%EF%AC%81les/x",
        // NFKC: `／` is `/`, `‥` is `..`.
        "/1%EF%BC%8F..%EF%BC%8Fadmin",
        "/1/%E2%80%A5/admin",
        // Default-ignorables: culture-aware comparisons serve these from /admin/ and /keys/.
        "/ad%C2%ADmin/x",
        "/%E2%80%8Bkeys/x",
        "/1/..%C2%AD/admin",
    ] {
        assert_eq!(scopegate_rule(&snapshot, raw), None, "{raw} accepted");
    }
}
