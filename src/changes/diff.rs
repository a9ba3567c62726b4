//! `rules diff`: a key-by-key comparison of two rule sets (two revisions, or a revision and what
//! `rules apply FILE` would make of it), with a line diff of the pretty-printed JSON values.
//! Values that are the same JSON are the same, however they are formatted.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use super::apply::{plan_apply, ApplyOptions};
use super::commit::{Op, Plan};
use super::record::Action;
use super::state::State;
use super::{ChangeError, Repo};
use crate::rules::document::Entries;

/// One key that differs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KeyDiff {
    pub key: String,
    pub action: Action,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<Value>,
}

/// `rules diff`.
#[derive(Debug, Clone, Serialize)]
pub struct DiffReport {
    pub from_revision: i64,
    /// The revision compared with, or `None` when comparing with a file.
    pub to_revision: Option<i64>,
    pub changes: Vec<KeyDiff>,
}

/// A state's values as JSON (a value that is not JSON becomes a string of its bytes).
fn values(state: &State) -> BTreeMap<String, Value> {
    state
        .keys
        .iter()
        .map(|(key, stored)| (key.clone(), as_json(&stored.value)))
        .collect()
}

fn as_json(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into_owned()))
}

/// The keys that differ between two rule sets, in key order.
pub fn diff(from: &BTreeMap<String, Value>, to: &BTreeMap<String, Value>) -> Vec<KeyDiff> {
    let mut keys: Vec<&String> = from.keys().chain(to.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter_map(|key| {
            let (a, b) = (from.get(key), to.get(key));
            let action = match (a, b) {
                (None, Some(_)) => Action::Added,
                (Some(_), None) => Action::Deleted,
                (Some(a), Some(b)) if a != b => Action::Changed,
                _ => return None,
            };
            Some(KeyDiff {
                key: key.clone(),
                action,
                from: a.cloned(),
                to: b.cloned(),
            })
        })
        .collect()
}

/// The values after a plan is applied to its base.
fn after(plan: &Plan) -> BTreeMap<String, Value> {
    let mut out = values(&plan.base);
    for (key, op) in &plan.ops {
        match op {
            Op::Put(bytes) => out.insert(key.clone(), as_json(bytes)),
            Op::Delete => out.remove(key),
        };
    }
    out
}

impl Repo {
    /// Two revisions (`to`: `None` is now).
    pub async fn diff_revisions(
        &mut self,
        from: i64,
        to: Option<i64>,
    ) -> Result<DiffReport, ChangeError> {
        let a = self.read(Some(from)).await?;
        let b = self.read(to).await?;
        Ok(DiffReport {
            from_revision: a.revision,
            to_revision: Some(b.revision),
            changes: diff(&values(&a), &values(&b)),
        })
    }

    /// What `rules apply` of `desired` would change (against `options.expect_revision` or now).
    pub async fn diff_file(
        &mut self,
        desired: &Entries,
        options: &ApplyOptions,
    ) -> Result<DiffReport, ChangeError> {
        let base = self.read(options.expect_revision).await?;
        let plan = plan_apply(base, desired, options.prune, super::now());
        Ok(DiffReport {
            from_revision: plan.base.revision,
            to_revision: None,
            changes: diff(&values(&plan.base), &after(&plan)),
        })
    }
}

/// A human-readable rendering: one header per key (`+`, `~`, `-`) and a line diff of the values.
pub fn render(changes: &[KeyDiff]) -> String {
    let mut out = String::new();
    for change in changes {
        out.push_str(&format!("{} {}\n", change.action.sign(), change.key));
        let lines = |v: &Option<Value>| -> Vec<String> {
            v.as_ref()
                .map(|v| {
                    let text = serde_json::to_string_pretty(v).unwrap_or_default();
                    text.lines().map(str::to_string).collect()
                })
                .unwrap_or_default()
        };
        for (sign, line) in line_diff(&lines(&change.from), &lines(&change.to)) {
            out.push_str(&format!("    {sign} {line}\n"));
        }
    }
    out
}

/// A longest-common-subsequence line diff: (' ' | '-' | '+', line).
pub fn line_diff(a: &[String], b: &[String]) -> Vec<(char, String)> {
    let (n, m) = (a.len(), b.len());
    let mut lcs = vec![vec![0u32; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = match a[i] == b[j] {
                true => lcs[i + 1][j + 1] + 1,
                false => lcs[i + 1][j].max(lcs[i][j + 1]),
            };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, Vec::new());
    while i < n || j < m {
        if i < n && j < m && a[i] == b[j] {
            out.push((' ', a[i].clone()));
            (i, j) = (i + 1, j + 1);
        } else if i < n && (j == m || lcs[i + 1][j] >= lcs[i][j + 1]) {
            out.push(('-', a[i].clone()));
            i += 1;
        } else {
            out.push(('+', b[j].clone()));
            j += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_are_compared_as_json() {
        let from = BTreeMap::from([
            ("routes/a".to_string(), json!({"x": 1, "y": 2})),
            ("routes/b".to_string(), json!(1)),
        ]);
        let to = BTreeMap::from([
            ("routes/a".to_string(), json!({"y": 2, "x": 1})),
            ("routes/c".to_string(), json!(2)),
        ]);
        let d = diff(&from, &to);
        let keys: Vec<(&str, Action)> = d.iter().map(|c| (c.key.as_str(), c.action)).collect();
        assert_eq!(
            keys,
            [("routes/b", Action::Deleted), ("routes/c", Action::Added)]
        );
    }

    #[test]
    fn line_diff_keeps_common_lines() {
        let a: Vec<String> = ["{", "  \"a\": 1,", "  \"b\": 2", "}"]
            .map(String::from)
            .into();
        let b: Vec<String> = ["{", "  \"a\": 1,", "  \"b\": 3", "}"]
            .map(String::from)
            .into();
        let signs: String = line_diff(&a, &b).iter().map(|(s, _)| *s).collect();
        assert_eq!(signs, "  -+ ");
        let text = render(&[KeyDiff {
            key: "routes/a".into(),
            action: Action::Changed,
            from: Some(json!({"a": 1, "b": 2})),
            to: Some(json!({"a": 1, "b": 3})),
        }]);
        assert!(text.starts_with("~ routes/a\n"), "{text}");
        assert!(
            text.contains("    -   \"b\": 2\n    +   \"b\": 3\n"),
            "{text}"
        );
    }
}
