//! Scope semantics: `aliases` (other names for a scope) and `implies` (a scope that grants
//! others, transitively), compiled once per snapshot. Matching is exact string equality after
//! expansion: never substring, prefix or case folding.

use std::collections::{BTreeMap, HashSet};

use crate::lookup::HashMap;

use crate::rules::{Requirement, ScopeDef};

/// Compiled scope definitions.
#[derive(Debug, Default)]
pub struct ScopeGraph {
    /// alias → canonical scope name.
    canonical: HashMap<String, String>,
    /// canonical scope → itself and everything it implies, transitively (canonical names).
    closure: HashMap<String, Vec<String>>,
}

impl ScopeGraph {
    pub fn build(defs: &BTreeMap<String, ScopeDef>) -> ScopeGraph {
        let mut canonical = HashMap::default();
        for (name, def) in defs {
            for alias in &def.aliases {
                // A defined scope name is never re-pointed by someone else's alias; the first
                // definition (by name) that claims an alias keeps it.
                if !defs.contains_key(alias) {
                    canonical
                        .entry(alias.clone())
                        .or_insert_with(|| name.clone());
                }
            }
        }
        let canon = |s: &str| canonical.get(s).cloned().unwrap_or_else(|| s.to_string());
        let mut closure = HashMap::default();
        for name in defs.keys() {
            let mut seen: HashSet<String> = HashSet::new();
            let mut stack = vec![name.clone()];
            while let Some(scope) = stack.pop() {
                if !seen.insert(scope.clone()) {
                    continue;
                }
                if let Some(def) = defs.get(&scope) {
                    stack.extend(def.implies.iter().map(|s| canon(s)));
                }
            }
            let mut all: Vec<String> = seen.into_iter().collect();
            all.sort();
            closure.insert(name.clone(), all);
        }
        ScopeGraph { canonical, closure }
    }

    /// The canonical name of a scope (itself unless it is an alias).
    pub fn canonical<'a>(&'a self, scope: &'a str) -> &'a str {
        self.canonical.get(scope).map_or(scope, String::as_str)
    }

    /// Every scope that the token's scopes grant, canonical names.
    pub fn granted<'a>(&'a self, token_scopes: &'a [String]) -> Vec<&'a str> {
        let mut out: Vec<&str> = Vec::with_capacity(token_scopes.len() * 2);
        for scope in token_scopes {
            let name = self.canonical(scope);
            match self.closure.get(name) {
                Some(all) => out.extend(all.iter().map(String::as_str)),
                None => out.push(name),
            }
        }
        out
    }

    /// Whether the token's scopes meet a requirement.
    pub fn satisfies(&self, token_scopes: &[String], requirement: &Requirement) -> bool {
        let granted = self.granted(token_scopes);
        let has = |required: &String| granted.contains(&self.canonical(required));
        match requirement {
            Requirement::Public => true,
            Requirement::All(list) => list.iter().all(has),
            Requirement::Any(list) => list.iter().any(has),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph() -> ScopeGraph {
        let mut defs = BTreeMap::new();
        let def = |implies: &[&str], aliases: &[&str]| ScopeDef {
            implies: implies.iter().map(|s| s.to_string()).collect(),
            aliases: aliases.iter().map(|s| s.to_string()).collect(),
            description: None,
        };
        defs.insert("orders:admin".into(), def(&["orders:write"], &[]));
        defs.insert(
            "orders:write".into(),
            def(&["orders:read"], &["write:orders"]),
        );
        defs.insert("orders:read".into(), def(&[], &["read:orders"]));
        defs.insert("loop:a".into(), def(&["loop:b"], &[]));
        defs.insert("loop:b".into(), def(&["loop:a"], &[]));
        ScopeGraph::build(&defs)
    }

    fn scopes(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn all(list: &[&str]) -> Requirement {
        Requirement::All(scopes(list))
    }

    #[test]
    fn implies_is_transitive() {
        let g = graph();
        assert!(g.satisfies(&scopes(&["orders:admin"]), &all(&["orders:read"])));
        assert!(!g.satisfies(&scopes(&["orders:read"]), &all(&["orders:write"])));
    }

    #[test]
    fn aliases_work_both_ways() {
        let g = graph();
        assert!(g.satisfies(&scopes(&["read:orders"]), &all(&["orders:read"])));
        assert!(g.satisfies(&scopes(&["orders:read"]), &all(&["read:orders"])));
        assert!(g.satisfies(&scopes(&["write:orders"]), &all(&["orders:read"])));
    }

    #[test]
    fn matching_is_exact_never_substring_or_prefix() {
        let g = graph();
        for token in [
            "orders",
            "orders:rea",
            "orders:read2",
            "ORDERS:READ",
            "orders:read:x",
            "xorders:read",
        ] {
            assert!(
                !g.satisfies(&scopes(&[token]), &all(&["orders:read"])),
                "{token}"
            );
        }
    }

    #[test]
    fn any_and_all() {
        let g = graph();
        let any = Requirement::Any(scopes(&["x", "orders:read"]));
        assert!(g.satisfies(&scopes(&["orders:read"]), &any));
        assert!(!g.satisfies(&scopes(&["orders:read"]), &all(&["x", "orders:read"])));
        assert!(!g.satisfies(&[], &any));
    }

    #[test]
    fn cycles_terminate() {
        let g = graph();
        assert!(g.satisfies(&scopes(&["loop:a"]), &all(&["loop:b"])));
    }
}
