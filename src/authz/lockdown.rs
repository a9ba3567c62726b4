//! Incident lockdown, applied after the normal decision: it can only tighten. A request the
//! lockdown covers is denied (403 `lockdown`) unless the normal rule allows it outright AND the
//! token carries the bypass scope. A denial stays exactly the denial it was; a dry-run allow of a
//! request the rule would have denied is denied (a lockdown is never shadowed by dry run).

use super::{
    Challenge, Credential, Decision, Denial, DenyStatus, LazyCredential, Request, Verdict,
};
use crate::reason::Reason;
use crate::rules::{Lockdown, Requirement};
use crate::store::Snapshot;

/// The decision with the snapshot's lockdown applied.
pub(super) fn tighten<F: FnOnce() -> Credential>(
    snapshot: &Snapshot,
    request: &Request,
    decision: Decision,
    credential: &mut LazyCredential<F>,
) -> Decision {
    let Some(lockdown) = snapshot.rules.lockdown.as_deref() else {
        return decision;
    };
    let route_id = decision.rule.as_ref().map(|r| r.id.as_str());
    if !lockdown.in_force(request.now) || !lockdown.covers(&request.host, &request.method, route_id)
    {
        return decision;
    }
    match &decision.verdict {
        // Only tightens: a denial is never turned into anything else.
        Verdict::Deny(_) => decision,
        Verdict::Allow {
            would_deny: None, ..
        } if bypassed(snapshot, lockdown, request.now, credential) => decision,
        Verdict::Allow { .. } => Decision {
            verdict: Verdict::Deny(Denial::new(
                DenyStatus::Forbidden,
                Reason::Lockdown,
                Challenge::None,
            )),
            rule: decision.rule,
            claims: decision.claims,
        },
    }
}

/// Whether the request's token is valid, not revoked, and carries the bypass scope (through
/// `implies` and `aliases`, as rules see scopes). For a public route this is where the token is
/// first verified.
fn bypassed<F: FnOnce() -> Credential>(
    snapshot: &Snapshot,
    lockdown: &Lockdown,
    now: i64,
    credential: &mut LazyCredential<F>,
) -> bool {
    let Some(scope) = &lockdown.bypass_scope else {
        return false;
    };
    let Credential::Valid(claims) = credential.get() else {
        return false;
    };
    !super::is_revoked(snapshot, claims, now)
        && snapshot
            .scopes
            .satisfies(&claims.scopes, &Requirement::All(vec![scope.clone()]))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::json;

    use super::super::{decide, Credential, Request, Verdict};
    use crate::reason::Reason;
    use crate::rules::{Entry, EntryKind, ParseContext, RuleSet};
    use crate::store::Snapshot;
    use crate::token::Claims;

    fn snapshot(lockdown: serde_json::Value, dry_run: bool) -> Snapshot {
        let mut set = RuleSet::default();
        let ctx = ParseContext { base_dir: None };
        let mut add = |kind, id: &str, value: serde_json::Value| {
            set.insert(id, Entry::parse(kind, id, &value, ctx).unwrap());
        };
        add(
            EntryKind::Route,
            "write",
            json!({"host":"api.test","path":"/w","require":{"all":["w"]}}),
        );
        add(
            EntryKind::Route,
            "open",
            json!({"host":"api.test","path":"/open","require":{"public":true}}),
        );
        add(EntryKind::Lockdown, "", lockdown);
        if dry_run {
            add(EntryKind::Settings, "", json!({"mode": "dry_run"}));
        }
        Snapshot::build(set, 1, None)
    }

    fn token(scopes: &[&str]) -> Credential {
        Credential::Valid(Arc::new(Claims {
            iss: "i".into(),
            sub: Some("s".into()),
            client_id: None,
            jti: None,
            iat: Some(1),
            exp: i64::MAX,
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            cnf: None,
        }))
    }

    fn reason(s: &Snapshot, method: &str, path: &str, credential: Credential) -> Reason {
        let request = Request::new("api.test", method, path).unwrap();
        decide(s, &request, || credential).reason()
    }

    #[test]
    fn covered_requests_need_the_bypass_scope_and_an_allowing_rule() {
        let s = snapshot(
            json!({"methods":["POST"],"bypass_scope":"incident:bypass","reason":"INC-1"}),
            false,
        );
        assert_eq!(
            reason(&s, "GET", "/w", token(&["w"])),
            Reason::Allowed,
            "not covered"
        );
        assert_eq!(reason(&s, "POST", "/w", token(&["w"])), Reason::Lockdown);
        assert_eq!(
            reason(&s, "POST", "/w", token(&["w", "incident:bypass"])),
            Reason::Allowed
        );
        assert_eq!(
            reason(&s, "POST", "/w", token(&["incident:bypass"])),
            Reason::InsufficientScope,
            "the bypass scope never replaces the rule's own scope"
        );
        assert_eq!(
            reason(&s, "POST", "/w", Credential::Absent),
            Reason::MissingCredential
        );
        assert_eq!(
            reason(&s, "POST", "/open", Credential::Absent),
            Reason::Lockdown
        );
        assert_eq!(
            reason(&s, "POST", "/open", token(&["incident:bypass"])),
            Reason::Public
        );
        assert_eq!(reason(&s, "POST", "/none", token(&["w"])), Reason::NoRule);
    }

    #[test]
    fn dry_run_never_shadows_a_lockdown_and_expired_lockdowns_do_nothing() {
        let s = snapshot(json!({"bypass_scope":"b","reason":"INC-2"}), true);
        assert_eq!(reason(&s, "GET", "/w", token(&[])), Reason::Lockdown);
        assert_eq!(reason(&s, "GET", "/w", token(&["b"])), Reason::Lockdown);
        assert_eq!(reason(&s, "GET", "/w", token(&["b", "w"])), Reason::Allowed);
        let expired = snapshot(json!({"reason":"old","expires_at": 1}), true);
        let request = Request::new("api.test", "GET", "/w").unwrap();
        let d = decide(&expired, &request, || token(&[]));
        assert!(matches!(
            d.verdict,
            Verdict::Allow {
                reason: Reason::DryRun,
                would_deny: Some(Reason::InsufficientScope)
            }
        ));
    }
}
