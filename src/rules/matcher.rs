//! The compiled route index: routes bucketed by host pattern, each bucket a trie of path
//! segments, answering "which rule is the most specific match for host, method, path?" without
//! scanning every rule.
//!
//! Precedence: exact host, then the longest `*.suffix`, then `*`; within a host bucket the
//! path's specificity ([`PathPattern::specificity_cmp`]), then a listed method over any, then the
//! lowest id. A bucket with no match falls through to the next less specific host bucket.
//!
//! Case: paths match case-sensitively (RFC 3986), but some upstreams route case-insensitively
//! (IIS, some ASP.NET and Spring set-ups) and serve `/ADMIN/x` as `/admin/x`, some after
//! decoding and folding Unicode too (`/%E2%84%AAeys`, KELVIN SIGN, as `/keys`).
//! [`RouteIndex::find_case_checked`] also matches the path's caseless reading
//! ([`caseless::read`]) against the rules with their letters folded, and reports
//! [`CaseAmbiguity`] when the two readings pick different rules, so such a request is refused
//! instead of being decided by a rule the upstream will not apply.

use crate::lookup::HashMap;
use std::cmp::Ordering;
use std::sync::Arc;

use super::caseless;
use super::route::{HostPattern, Route, Segment};

/// Routes compiled for lookup. Cheap to query, rebuilt whole on every snapshot.
#[derive(Debug, Default)]
pub struct RouteIndex {
    exact: HostBuckets,
    /// The same routes with their literal segments in lower case; only built when a literal
    /// has an upper-case letter (otherwise `exact` is its own folded index).
    folded: Option<HostBuckets>,
    len: usize,
}

/// A request whose path picks one rule as written and another with its letters folded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("path letter case changes which rule applies")]
pub struct CaseAmbiguity;

#[derive(Debug, Default)]
struct HostBuckets {
    exact_hosts: HashMap<Box<str>, PathTrie>,
    suffix_hosts: HashMap<Box<str>, PathTrie>,
    any_host: PathTrie,
}

#[derive(Debug, Default)]
struct PathTrie {
    root: Node,
}

#[derive(Debug, Default)]
struct Node {
    literal: HashMap<Box<str>, Node>,
    param: Option<Box<Node>>,
    /// Routes whose pattern ends exactly here, best first.
    terminal: Vec<Candidate>,
    /// Routes whose pattern is this node followed by `/**`, best first.
    prefix: Vec<Candidate>,
}

#[derive(Debug)]
struct Candidate {
    /// Position in the global precedence order: lower wins.
    rank: u32,
    methods: Option<Box<[Box<str>]>>,
    route: Arc<Route>,
}

impl Candidate {
    fn allows(&self, method: &str) -> bool {
        self.methods
            .as_ref()
            .is_none_or(|m| m.iter().any(|x| &**x == method))
    }
}

/// How literal segments are keyed in a trie.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Keys {
    AsWritten,
    Folded,
}

impl Keys {
    fn literal(self, literal: &str) -> Box<str> {
        match self {
            Keys::AsWritten => literal.into(),
            Keys::Folded => literal.to_ascii_lowercase().into(),
        }
    }
}

impl RouteIndex {
    /// Compiles routes; their order does not matter.
    pub fn build<I: IntoIterator<Item = Arc<Route>>>(routes: I) -> RouteIndex {
        let mut routes: Vec<Arc<Route>> = routes.into_iter().collect();
        routes.sort_by(|a, b| b.precedence_cmp(a));
        let has_upper = routes.iter().any(|r| {
            r.path.segments.iter().any(
                |s| matches!(s, Segment::Literal(l) if l.bytes().any(|b| b.is_ascii_uppercase())),
            )
        });
        RouteIndex {
            exact: HostBuckets::build(&routes, Keys::AsWritten),
            folded: has_upper.then(|| HostBuckets::build(&routes, Keys::Folded)),
            len: routes.len(),
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The winning route for a normalised host (lower-case, no port), method and path segments,
    /// matched as written.
    pub fn find(&self, host: &str, method: &str, segments: &[&str]) -> Option<&Arc<Route>> {
        self.exact.find(host, method, segments)
    }

    /// [`find`](Self::find), provided that the path's caseless reading ([`caseless::read`]),
    /// against the rules with their letters folded, picks the same route (or none either way).
    /// Costs a second lookup only when a rule has an upper-case letter or the path has one or an
    /// escaped non-ASCII character.
    pub fn find_case_checked(
        &self,
        host: &str,
        method: &str,
        segments: &[&str],
    ) -> Result<Option<&Arc<Route>>, CaseAmbiguity> {
        let found = self.find(host, method, segments);
        let path_may_differ = segments.iter().any(|s| caseless::may_differ(s));
        let other = match (&self.folded, path_may_differ) {
            // Nothing to fold on either side: the caseless reading is this one.
            (None, false) => return Ok(found),
            // Only the rules have upper case: the path as it is, against the folded rules.
            (Some(folded), false) => folded.find(host, method, segments),
            (folded, true) => {
                // A segment the normaliser let through always has a reading; one that had none
                // could not be matched as the upstream matches it.
                let read = segments
                    .iter()
                    .map(|s| caseless::read(s))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|_| CaseAmbiguity)?;
                let read: Vec<&str> = read.iter().map(|s| &**s).collect();
                folded
                    .as_ref()
                    .unwrap_or(&self.exact)
                    .find(host, method, &read)
            }
        };
        let same = match (found, other) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        };
        if same {
            Ok(found)
        } else {
            Err(CaseAmbiguity)
        }
    }
}

impl HostBuckets {
    /// `routes` in precedence order, best first.
    fn build(routes: &[Arc<Route>], keys: Keys) -> HostBuckets {
        let mut buckets = HostBuckets::default();
        for (rank, route) in routes.iter().enumerate() {
            let trie = match &route.host {
                HostPattern::Exact(h) => buckets.exact_hosts.entry(h.as_str().into()).or_default(),
                HostPattern::Suffix(s) => {
                    buckets.suffix_hosts.entry(s.as_str().into()).or_default()
                }
                HostPattern::Any => &mut buckets.any_host,
            };
            trie.insert(rank as u32, route.clone(), keys);
        }
        buckets
    }

    fn find(&self, host: &str, method: &str, segments: &[&str]) -> Option<&Arc<Route>> {
        if let Some(found) = self
            .exact_hosts
            .get(host)
            .and_then(|t| t.find(method, segments))
        {
            return Some(found);
        }
        if !self.suffix_hosts.is_empty() {
            // Longest suffix first: ".b.example.com" before ".example.com".
            for (i, _) in host.match_indices('.') {
                let found = self
                    .suffix_hosts
                    .get(&host[i..])
                    .and_then(|t| t.find(method, segments));
                if found.is_some() {
                    return found;
                }
            }
        }
        self.any_host.find(method, segments)
    }
}

impl PathTrie {
    fn insert(&mut self, rank: u32, route: Arc<Route>, keys: Keys) {
        let mut node = &mut self.root;
        for segment in &route.path.segments {
            node = match segment {
                Segment::Literal(lit) => node.literal.entry(keys.literal(lit)).or_default(),
                Segment::Param(_) => node.param.get_or_insert_with(Box::default),
            };
        }
        let candidate = Candidate {
            rank,
            methods: route
                .methods
                .as_ref()
                .map(|m| m.iter().map(|s| s.as_str().into()).collect()),
            route: route.clone(),
        };
        // Inserted in rank order, so each list stays sorted best first.
        if route.path.prefix {
            node.prefix.push(candidate);
        } else {
            node.terminal.push(candidate);
        }
    }

    fn find(&self, method: &str, segments: &[&str]) -> Option<&Arc<Route>> {
        let mut best: Option<&Candidate> = None;
        walk(&self.root, segments, method, &mut best);
        best.map(|c| &c.route)
    }
}

fn walk<'a>(node: &'a Node, rest: &[&str], method: &str, best: &mut Option<&'a Candidate>) {
    consider(&node.prefix, method, best);
    let Some((head, tail)) = rest.split_first() else {
        consider(&node.terminal, method, best);
        return;
    };
    if let Some(child) = node.literal.get(*head) {
        walk(child, tail, method, best);
    }
    if let Some(child) = &node.param {
        walk(child, tail, method, best);
    }
}

fn consider<'a>(list: &'a [Candidate], method: &str, best: &mut Option<&'a Candidate>) {
    if let Some(c) = list.iter().find(|c| c.allows(method)) {
        let better = best.is_none_or(|b| c.rank.cmp(&b.rank) == Ordering::Less);
        if better {
            *best = Some(c);
        }
    }
}

/// Pairs of routes (ids, the one the folded reading keeps first) whose host and path patterns
/// differ only in letter case: to a case-insensitive upstream they are one route, and
/// [`RouteIndex::find_case_checked`] refuses requests spelled as the second. `rules validate`
/// warns about them.
pub fn case_collisions<'a, I>(routes: I) -> Vec<(&'a str, &'a str)>
where
    I: IntoIterator<Item = &'a Arc<Route>>,
{
    // A route's place in a trie keyed `keys`: its literals so keyed, any parameter alike.
    let place = |route: &Route, keys: Keys| -> Vec<Option<Box<str>>> {
        let segments = route.path.segments.iter();
        segments
            .map(|s| match s {
                Segment::Literal(lit) => Some(keys.literal(lit)),
                Segment::Param(_) => None,
            })
            .collect()
    };
    type Place = (HostPattern, Vec<Option<Box<str>>>, bool);
    let mut by_folded: HashMap<Place, Vec<&Route>> = HashMap::default();
    for route in routes {
        let key = (
            route.host.clone(),
            place(route, Keys::Folded),
            route.path.prefix,
        );
        by_folded.entry(key).or_default().push(route);
    }
    let mut pairs = Vec::new();
    for group in by_folded.values_mut() {
        group.sort_by(|a, b| b.precedence_cmp(a));
        let first = group[0];
        let first_place = place(first, Keys::AsWritten);
        pairs.extend(
            group[1..]
                .iter()
                .filter(|r| place(r, Keys::AsWritten) != first_place)
                .map(|r| (first.id.as_str(), r.id.as_str())),
        );
    }
    pairs.sort_unstable();
    pairs
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn route(id: &str, host: &str, path: &str, methods: Option<&[&str]>) -> Arc<Route> {
        let mut v = json!({"host": host, "path": path, "require": {"public": true}});
        if let Some(m) = methods {
            v["methods"] = json!(m);
        }
        Arc::new(Route::from_json(id, &v).unwrap())
    }

    fn find<'a>(index: &'a RouteIndex, host: &str, method: &str, path: &str) -> Option<&'a str> {
        let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        index.find(host, method, &segs).map(|r| r.id.as_str())
    }

    #[test]
    fn exact_path_over_param_over_prefix() {
        let index = RouteIndex::build([
            route("prefix", "*", "/orders/**", None),
            route("param", "*", "/orders/{id}", None),
            route("exact", "*", "/orders/special", None),
        ]);
        assert_eq!(find(&index, "h", "GET", "/orders/special"), Some("exact"));
        assert_eq!(find(&index, "h", "GET", "/orders/42"), Some("param"));
        assert_eq!(find(&index, "h", "GET", "/orders/42/items"), Some("prefix"));
        assert_eq!(find(&index, "h", "GET", "/orders"), Some("prefix"));
        assert_eq!(find(&index, "h", "GET", "/other"), None);
    }

    #[test]
    fn longer_prefix_and_literal_first_win() {
        let index = RouteIndex::build([
            route("all", "*", "/**", None),
            route("api", "*", "/api/**", None),
            route("left-literal", "*", "/a/b/{x}", None),
            route("right-literal", "*", "/a/{y}/c", None),
        ]);
        assert_eq!(find(&index, "h", "GET", "/api/v1/x"), Some("api"));
        assert_eq!(find(&index, "h", "GET", "/"), Some("all"));
        assert_eq!(find(&index, "h", "GET", "/a/b/c"), Some("left-literal"));
        assert_eq!(find(&index, "h", "GET", "/a/z/c"), Some("right-literal"));
    }

    #[test]
    fn host_precedence_and_fallthrough() {
        let index = RouteIndex::build([
            route("any", "*", "/**", None),
            route("wild", "*.example.com", "/x", None),
            route("deep-wild", "*.b.example.com", "/x", None),
            route("exact", "a.b.example.com", "/y", None),
        ]);
        assert_eq!(find(&index, "a.b.example.com", "GET", "/y"), Some("exact"));
        // The exact bucket has no /x: fall through to the longest matching suffix.
        assert_eq!(
            find(&index, "a.b.example.com", "GET", "/x"),
            Some("deep-wild")
        );
        assert_eq!(find(&index, "c.example.com", "GET", "/x"), Some("wild"));
        // `*.example.com` does not cover `example.com` itself.
        assert_eq!(find(&index, "example.com", "GET", "/x"), Some("any"));
    }

    #[test]
    fn listed_method_beats_any_and_filters() {
        let index = RouteIndex::build([
            route("any-method", "*", "/r", None),
            route("get-only", "*", "/r", Some(&["GET"])),
            route("post-only", "*", "/w", Some(&["POST"])),
        ]);
        assert_eq!(find(&index, "h", "GET", "/r"), Some("get-only"));
        assert_eq!(find(&index, "h", "DELETE", "/r"), Some("any-method"));
        assert_eq!(find(&index, "h", "GET", "/w"), None);
    }

    #[test]
    fn ties_break_by_lowest_id_whatever_the_insertion_order() {
        let a = route("a", "*", "/t/{x}", None);
        let b = route("b", "*", "/t/{y}", None);
        let one = RouteIndex::build([a.clone(), b.clone()]);
        let two = RouteIndex::build([b, a]);
        assert_eq!(find(&one, "h", "GET", "/t/1"), Some("a"));
        assert_eq!(find(&two, "h", "GET", "/t/1"), Some("a"));
    }

    fn checked<'a>(index: &'a RouteIndex, path: &str) -> Result<Option<&'a str>, CaseAmbiguity> {
        let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let found = index.find_case_checked("h", "GET", &segs)?;
        Ok(found.map(|r| r.id.as_str()))
    }

    #[test]
    fn a_path_whose_case_changes_the_rule_is_ambiguous() {
        let index = RouteIndex::build([
            route("admin", "*", "/admin/**", None),
            route("user", "*", "/users/{id}", None),
            route("me", "*", "/users/me", None),
            route("root", "*", "/**", None),
        ]);
        assert!(index.folded.is_none(), "no upper-case literal: one index");
        assert_eq!(checked(&index, "/admin/x"), Ok(Some("admin")));
        // A case-insensitive upstream serves /ADMIN/x as /admin/x: refused.
        assert_eq!(checked(&index, "/ADMIN/x"), Err(CaseAmbiguity));
        assert_eq!(checked(&index, "/aDmin"), Err(CaseAmbiguity));
        assert_eq!(checked(&index, "/users/ME"), Err(CaseAmbiguity));
        // Upper case that picks the same rule either way is fine.
        assert_eq!(checked(&index, "/users/JohnDoe"), Ok(Some("user")));
        assert_eq!(checked(&index, "/Files/ReadMe.txt"), Ok(Some("root")));
        assert_eq!(checked(&index, "/admin/Reports"), Ok(Some("admin")));
    }

    #[test]
    fn upper_case_rule_literals_are_folded_for_the_second_reading() {
        let index = RouteIndex::build([
            route("api", "*", "/API/**", None),
            route("root", "*", "/**", None),
            route("none", "*", "/Only/{x}", Some(&["POST"])),
        ]);
        assert!(index.folded.is_some());
        assert_eq!(checked(&index, "/API/x"), Ok(Some("api")));
        // Matched as written, /api/x is the root rule; a case-insensitive upstream serves the
        // /API/ resources there.
        assert_eq!(checked(&index, "/api/x"), Err(CaseAmbiguity));
        assert_eq!(checked(&index, "/Api/x"), Err(CaseAmbiguity));
        assert_eq!(checked(&index, "/other"), Ok(Some("root")));
        // The method filter applies to both readings.
        assert_eq!(checked(&index, "/only/1"), Ok(Some("root")));
    }

    #[test]
    fn escaped_characters_that_fold_to_ascii_letters_are_read_as_those_letters() {
        let index = RouteIndex::build([
            route("keys", "*", "/keys/**", None),
            route("admin", "*", "/admin/**", None),
            route("files", "*", "/files/{name}", None),
            route("root", "*", "/**", None),
        ]);
        assert!(index.folded.is_none(), "no upper-case literal: one index");
        // As written these are the root rule; .NET, Java or ICU reads them as /keys, /admin,
        // /files: refused.
        for path in [
            "/%E2%84%AAeys/x",  // KELVIN SIGN
            "/adm%C4%B1n",      // DOTLESS I
            "/%EF%BC%A1dmin/x", // FULLWIDTH A
            "/%EF%AC%81les/a",  // LIGATURE FI
            "/%E2%84%AAEYS",
        ] {
            assert_eq!(checked(&index, path), Err(CaseAmbiguity), "{path}");
        }
        // Non-ASCII that picks the same rule either way is decided as written.
        assert_eq!(checked(&index, "/files/caf%C3%A9"), Ok(Some("files")));
        assert_eq!(checked(&index, "/keys/%E2%84%AA"), Ok(Some("keys")));
        assert_eq!(checked(&index, "/caf%C3%A9/x"), Ok(Some("root")));
    }

    #[test]
    fn rules_that_differ_only_in_case_are_ambiguous_for_one_of_them() {
        // Under a case-insensitive reading these are one path: the lowest id wins there, so the
        // other rule's own spelling is refused (such rule sets cannot be served safely by a
        // case-insensitive upstream).
        let index = RouteIndex::build([
            route("a-upper", "*", "/Admin", None),
            route("b-lower", "*", "/admin", None),
        ]);
        assert_eq!(checked(&index, "/Admin"), Ok(Some("a-upper")));
        assert_eq!(checked(&index, "/admin"), Err(CaseAmbiguity));
        let routes = [
            route("a-upper", "*", "/Admin", None),
            route("b-lower", "*", "/admin", None),
            route("c-other-host", "api.test", "/ADMIN", None),
            route("d-same", "*", "/same", None),
            route("e-same", "*", "/same", Some(&["GET"])),
            // Parameter names do not matter to either reading.
            route("f-param", "*", "/p/{Id}", None),
            route("g-param", "*", "/p/{id}", None),
        ];
        assert_eq!(case_collisions(&routes), vec![("a-upper", "b-lower")]);
    }

    #[test]
    fn params_match_exactly_one_segment() {
        let index = RouteIndex::build([route("p", "*", "/u/{id}", None)]);
        assert_eq!(find(&index, "h", "GET", "/u/1"), Some("p"));
        assert_eq!(find(&index, "h", "GET", "/u"), None);
        assert_eq!(find(&index, "h", "GET", "/u/1/2"), None);
    }
}
