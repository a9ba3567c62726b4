//! The incident lockdown entry (the single key `lockdown`): which requests it covers (hosts,
//! methods and/or route ids; none given: every request), the scope that still passes, why, and
//! until when. Validated here; applied by `authz::lockdown`, which can only tighten a decision.
//!
//! ```json
//! {"hosts":["api.example.com"],"methods":["POST","DELETE"],"bypass_scope":"incident:bypass",
//!  "reason":"INC-4711: token leak","expires_at":1764003600}
//! ```

use serde::Deserialize;
use serde_json::Value;

use super::route::HostPattern;
use super::validate_scope_token;

/// A validated lockdown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lockdown {
    /// Hosts covered (`*.example.com` and `*` allowed); empty: every host.
    pub hosts: Vec<HostPattern>,
    /// Methods covered (upper-case); empty: every method.
    pub methods: Vec<String>,
    /// Route ids covered; empty: every route.
    pub routes: Vec<String>,
    /// A token with this scope still passes, where the normal rule allows it. `None`: nobody.
    pub bypass_scope: Option<String>,
    pub reason: String,
    /// Unix seconds from which the lockdown no longer applies (`None`: until turned off).
    pub expires_at: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLockdown {
    #[serde(default)]
    hosts: Vec<String>,
    #[serde(default)]
    methods: Vec<String>,
    #[serde(default)]
    routes: Vec<String>,
    #[serde(default)]
    bypass_scope: Option<String>,
    reason: String,
    #[serde(default)]
    expires_at: Option<i64>,
    /// Informational (written by `scopegate lockdown on`).
    #[serde(default)]
    #[allow(dead_code)]
    started_at: Option<i64>,
}

impl Lockdown {
    /// Validates a lockdown value.
    pub fn from_json(value: &Value) -> Result<Lockdown, String> {
        let raw: RawLockdown = super::deserialize_value(value)?;
        if raw.reason.trim().is_empty() {
            return Err("reason must say why (it is logged with every denial)".into());
        }
        let hosts = raw
            .hosts
            .iter()
            .map(|h| HostPattern::parse(h).map_err(|e| format!("hosts: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        let methods = raw
            .methods
            .into_iter()
            .map(|m| {
                let ok = !m.is_empty() && m.bytes().all(|b| b.is_ascii_alphabetic() || b == b'-');
                ok.then(|| m.to_ascii_uppercase())
                    .ok_or(format!("methods: {m:?} is not an HTTP method token"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if raw.routes.iter().any(|r| r.is_empty() || r.contains('/')) {
            return Err("routes: route ids are non-empty and contain no '/'".into());
        }
        if let Some(scope) = &raw.bypass_scope {
            validate_scope_token(scope).map_err(|e| format!("bypass_scope: {e}"))?;
        }
        Ok(Lockdown {
            hosts,
            methods,
            routes: raw.routes,
            bypass_scope: raw.bypass_scope,
            reason: raw.reason,
            expires_at: raw.expires_at,
        })
    }

    /// Whether the lockdown applies at `now` (unix seconds).
    pub fn in_force(&self, now: i64) -> bool {
        super::in_force(self.expires_at, now)
    }

    /// Whether a request (normalised host, method, and the id of the rule that matched) is
    /// covered. Every given selector must match; an empty one matches everything.
    pub fn covers(&self, host: &str, method: &str, route_id: Option<&str>) -> bool {
        let host_ok = self.hosts.is_empty() || self.hosts.iter().any(|p| host_matches(p, host));
        let method_ok = self.methods.is_empty() || self.methods.iter().any(|m| m == method);
        let route_ok = self.routes.is_empty()
            || route_id.is_some_and(|id| self.routes.iter().any(|r| r == id));
        host_ok && method_ok && route_ok
    }
}

/// The same host semantics as routes: exact, `*.suffix` (names below it), `*`.
fn host_matches(pattern: &HostPattern, host: &str) -> bool {
    match pattern {
        HostPattern::Exact(h) => h == host,
        HostPattern::Suffix(suffix) => host.len() > suffix.len() && host.ends_with(suffix.as_str()),
        HostPattern::Any => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn selectors_must_all_match() {
        let l = Lockdown::from_json(&json!({
            "hosts": ["*.example.com"], "methods": ["post"], "reason": "INC-1"
        }))
        .unwrap();
        assert_eq!(l.methods, ["POST"]);
        assert!(l.covers("api.example.com", "POST", None));
        assert!(!l.covers("api.example.com", "GET", None));
        assert!(
            !l.covers("example.com", "POST", None),
            "a suffix covers names below it"
        );
        let by_route = Lockdown::from_json(&json!({"routes": ["orders"], "reason": "x"})).unwrap();
        assert!(by_route.covers("h", "GET", Some("orders")));
        assert!(!by_route.covers("h", "GET", Some("other")));
        assert!(!by_route.covers("h", "GET", None));
        let everything = Lockdown::from_json(&json!({"reason": "x"})).unwrap();
        assert!(everything.covers("any.host", "DELETE", None));
    }

    #[test]
    fn invalid_lockdowns_are_refused_and_expiry_is_exact() {
        for bad in [
            json!({"methods": ["POST"]}),
            json!({"reason": " "}),
            json!({"reason": "x", "bypass_scope": "has space"}),
            json!({"reason": "x", "hosts": ["a*b"]}),
            json!({"reason": "x", "methods": ["GE T"]}),
            json!({"reason": "x", "unknown": 1}),
        ] {
            assert!(Lockdown::from_json(&bad).is_err(), "{bad}");
        }
        let l = Lockdown::from_json(&json!({"reason": "x", "expires_at": 10})).unwrap();
        assert!(l.in_force(9));
        assert!(!l.in_force(10));
    }
}
