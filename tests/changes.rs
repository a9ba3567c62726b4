//! Versioned rule sets against a real etcd (Debian `etcd-server` 3.4, started on free loopback
//! ports), driven through the real binary's subcommands: apply in one guarded transaction with a
//! version record, history, get, diff, rollback (also while `scopegate serve` runs), audit verify
//! against tampering, lockdown on two replicas, global dry run, revocation expiry and gc, and a
//! one-way `etcdctl make-mirror` into a second etcd.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Instant;

use etcd_client::{Client, GetOptions};
use scopegate::app::RunningApp;
use scopegate::rules::document;
use serde_json::{json, Value};
use support::cli::{etcdctl, scopegate, ChildGuard, Run, ServeProcess};
use support::etcd::EtcdServer;
use support::etcd_scopegate::{ask, assert_status, start_scopegate, until_status, P, WAIT};
use support::server::Answer;
use support::tokens::{self, claims, sign, token};
use support::wait_until;

/// The rules: `orders` needs `orders_scope` for GET; POST on `/orders/**` needs orders:write.
fn rules(orders_scope: &str, extra: &str) -> String {
    format!(
        r#"issuers:
  test: {issuer}
scopes:
  orders:write: {{implies: [orders:read]}}
routes:
  health: {{host: "*", path: /healthz, require: {{public: true}}}}
  orders: {{host: api.example.com, path: "/orders/{{id}}", methods: [GET], require: {{all: [{orders_scope}]}}}}
  orders-write: {{host: api.example.com, path: "/orders/**", methods: [POST], require: {{all: [orders:write]}}}}
{extra}"#,
        issuer = tokens::issuer_json()
    )
}

/// A temp dir with rules files written into it.
struct Files(tempfile::TempDir);

impl Files {
    fn new() -> Files {
        Files(tempfile::tempdir().unwrap())
    }

    fn write(&self, name: &str, text: &str) -> String {
        let path = self.0.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_string()
    }

    /// Writes [`rules`]`(orders_scope, "")` as `name` and applies it (see [`apply`]).
    async fn apply(
        &self,
        etcd: &EtcdServer,
        name: &str,
        orders_scope: &str,
        extra: &[&str],
    ) -> Value {
        apply(etcd, &self.write(name, &rules(orders_scope, "")), extra).await
    }
}

/// `scopegate ARGS… --etcd-endpoints E`.
async fn sg(etcd: &EtcdServer, args: &[&str]) -> Run {
    let endpoint = etcd.endpoint();
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--etcd-endpoints", endpoint.as_str()]);
    scopegate(&all).await
}

/// `rules apply FILE --output json` that must succeed; returns the outcome.
async fn apply(etcd: &EtcdServer, file: &str, extra: &[&str]) -> Value {
    let mut args = vec!["rules", "apply", file, "--output", "json"];
    args.extend_from_slice(extra);
    sg(etcd, &args).await.ok().json()
}

fn revision_of(outcome: &Value) -> i64 {
    outcome["revision"]
        .as_i64()
        .unwrap_or_else(|| panic!("nothing written: {outcome}"))
}

async fn current_revision(kv: &mut Client) -> i64 {
    kv.get("/", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision()
}

/// Every key under the prefix (relative) → value, at a revision (0: now).
async fn keys_at(kv: &mut Client, revision: i64) -> Vec<(String, String)> {
    let options = GetOptions::new().with_prefix().with_revision(revision);
    let response = kv.get(P, Some(options)).await.unwrap();
    response
        .kvs()
        .iter()
        .map(|kv| {
            let key = kv.key_str().unwrap().strip_prefix(P).unwrap().to_string();
            (key, kv.value_str().unwrap().to_string())
        })
        .collect()
}

/// The rule keys (no version records, revocations or lockdown).
fn rule_keys(keys: Vec<(String, String)>) -> Vec<(String, String)> {
    keys.into_iter()
        .filter(|(k, _)| {
            !k.starts_with("changes/") && !k.starts_with("revoked/") && k != "lockdown"
        })
        .collect()
}

/// `/orders/1` (of `api.example.com`) on one scopegate, by its gRPC address: asked once, asserted
/// once, or waited for.
#[derive(Clone, Copy)]
struct Orders(SocketAddr);

impl Orders {
    /// Asks `METHOD /orders/1` with `token` once.
    async fn ask(self, method: &str, token: Option<&str>) -> Answer {
        ask(self.0, method, "/orders/1", token).await
    }

    /// Asks `METHOD /orders/1` with `token` once: it must answer `status` (`what`: why).
    async fn assert(self, method: &str, token: Option<&str>, status: u16, what: &str) {
        assert_status(self.0, method, "/orders/1", token, status, what).await;
    }

    /// Waits until `GET /orders/1` with `token` answers `status`.
    async fn until(self, token: &str, status: u16, what: &str) {
        until_status(self.0, "/orders/1", Some(token), status, what).await;
    }
}

async fn replica(etcd: &EtcdServer) -> RunningApp {
    start_scopegate(&etcd.endpoint(), &[]).await
}

async fn until_revision(app: &RunningApp, revision: i64) {
    let store = app.store.clone();
    wait_until("the replica applied the revision", WAIT, || {
        let store = store.clone();
        async move { store.current().is_some_and(|s| s.revision >= revision) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn apply_is_recorded_in_history_and_get_round_trips_the_file() {
    let etcd = EtcdServer::start().await;
    let files = Files::new();
    let v1 = files.write(
        "v1.yaml",
        &rules("orders:read", "settings: {mode: enforce}\n"),
    );
    let v2 = files.write("v2.yaml", &rules("orders:admin", ""));
    let first = apply(
        &etcd,
        &v1,
        &["-m", "orders need orders:read", "--author", "alice"],
    )
    .await;
    assert_eq!(first["version"], 1);
    assert_eq!(first["added"].as_array().unwrap().len(), 6, "{first}");
    let second = apply(&etcd, &v2, &["-m", "tighten orders"]).await;
    assert_eq!(second["changed"], json!(["routes/orders"]));

    let history = sg(&etcd, &["rules", "history", "--output", "json"])
        .await
        .ok()
        .json();
    let versions = history["versions"].as_array().unwrap();
    assert_eq!(versions.len(), 2, "{history}");
    let (newest, oldest) = (&versions[0], &versions[1]);
    assert_eq!(newest["revision"], second["revision"]);
    assert_eq!(
        newest["record"]["author"], "test-operator",
        "default author: the OS user"
    );
    assert_eq!(newest["record"]["message"], "tighten orders");
    assert_eq!(
        newest["changes"],
        json!([{"key": "routes/orders", "action": "changed"}])
    );
    assert_eq!(oldest["record"]["author"], "alice");
    assert_eq!(oldest["record"]["message"], "orders need orders:read");
    assert_eq!(oldest["recorded"], true);
    let text = sg(&etcd, &["rules", "history"]).await.ok().stdout;
    assert!(
        text.contains("alice") && text.contains("tighten orders"),
        "{text}"
    );
    let one_key = sg(
        &etcd,
        &[
            "rules",
            "history",
            "scopes/orders:write",
            "--output",
            "json",
        ],
    )
    .await
    .ok()
    .json();
    assert_eq!(
        one_key["versions"].as_array().unwrap().len(),
        1,
        "{one_key}"
    );

    // `get` prints the file back (now and as it was at the first revision), YAML or JSON.
    let at_first = first["revision"].to_string();
    for (format, name) in [("yaml", "got.yaml"), ("json", "got.json")] {
        let got = sg(
            &etcd,
            &["rules", "get", "--revision", &at_first, "--format", format],
        )
        .await
        .ok();
        let path = files.write(name, &got.stdout);
        let entries = document::read_entries(&got.stdout, Path::new(&path)).unwrap();
        let original = document::read_entries(
            &rules("orders:read", "settings: {mode: enforce}\n"),
            Path::new(&v1),
        )
        .unwrap();
        assert_eq!(entries, original, "{format} round trip");
    }
    let now = sg(&etcd, &["rules", "get"]).await.ok().stdout;
    let entries = document::read_entries(&now, Path::new("now.yaml")).unwrap();
    assert_eq!(
        entries,
        document::read_entries(&rules("orders:admin", ""), Path::new(&v2))
            .unwrap()
            .into_iter()
            .chain([("settings".to_string(), json!({"mode": "enforce"}))])
            .collect()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stale_expect_revision_is_refused_and_changes_nothing() {
    let etcd = EtcdServer::start().await;
    let mut kv = etcd.client().await;
    let files = Files::new();
    let v1 = files.write("v1.yaml", &rules("orders:read", ""));
    let v2 = files.write("v2.yaml", &rules("orders:admin", ""));
    let v3 = files.write("v3.yaml", &rules("orders:write", ""));
    let r1 = revision_of(&apply(&etcd, &v1, &[]).await);
    let r2 = revision_of(&apply(&etcd, &v2, &["--expect-revision", &r1.to_string()]).await);
    let before = keys_at(&mut kv, 0).await;

    let stale = sg(
        &etcd,
        &["rules", "apply", &v3, "--expect-revision", &r1.to_string()],
    )
    .await;
    assert_eq!(stale.code, 3, "{stale:?}");
    assert!(
        stale
            .stderr
            .contains(&format!("the prefix changed since revision {r1}")),
        "{}",
        stale.stderr
    );
    assert_eq!(current_revision(&mut kv).await, r2, "nothing was written");
    assert_eq!(keys_at(&mut kv, 0).await, before);

    // A delete with plain etcdctl leaves no key for a range compare to see: still refused.
    kv.delete(format!("{P}routes/health"), None).await.unwrap();
    let after_delete = current_revision(&mut kv).await;
    let refused = sg(
        &etcd,
        &[
            "rules",
            "apply",
            &v3,
            "--expect-revision",
            &r2.to_string(),
            "--output",
            "json",
        ],
    )
    .await;
    assert_eq!(refused.code, 3);
    assert_eq!(refused.json()["error"]["code"], "conflict");
    assert_eq!(current_revision(&mut kv).await, after_delete);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_apply_with_one_invalid_entry_writes_nothing() {
    let etcd = EtcdServer::start().await;
    let mut kv = etcd.client().await;
    let files = Files::new();
    let bad = files.write(
        "bad.yaml",
        &rules(
            "orders:read",
            "  broken: {host: api.example.com, path: no-slash, require: {all: [x]}}\n",
        ),
    );
    let before = current_revision(&mut kv).await;
    let run = sg(&etcd, &["rules", "apply", &bad]).await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.contains("routes/broken: path \"no-slash\""),
        "{}",
        run.stderr
    );
    assert_eq!(
        current_revision(&mut kv).await,
        before,
        "nothing was written"
    );
    assert!(keys_at(&mut kv, 0).await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_apply_that_changes_nothing_writes_nothing() {
    let etcd = EtcdServer::start().await;
    let mut kv = etcd.client().await;
    let files = Files::new();
    let v1 = files.write("v1.yaml", &rules("orders:read", ""));
    let r1 = revision_of(&apply(&etcd, &v1, &[]).await);
    // The same rules, written differently: the same JSON is the same rule.
    kv.put(
        format!("{P}routes/health"),
        r#"{ "require": {"public": true}, "path": "/healthz", "host": "*" }"#,
        None,
    )
    .await
    .unwrap();
    let r2 = current_revision(&mut kv).await;
    let again = apply(&etcd, &v1, &[]).await;
    assert_eq!(again["revision"], Value::Null, "{again}");
    assert_eq!(again["base_revision"], r2);
    assert_eq!(current_revision(&mut kv).await, r2, "nothing was written");
    let text = sg(&etcd, &["rules", "apply", &v1]).await.ok().stdout;
    assert!(text.starts_with("nothing to change"), "{text}");
    assert!(r2 > r1);
}

#[tokio::test(flavor = "multi_thread")]
async fn prune_deletes_exactly_the_keys_not_in_the_file() {
    let etcd = EtcdServer::start().await;
    let mut kv = etcd.client().await;
    let files = Files::new();
    let v1 = files.write("v1.yaml", &rules("orders:read", ""));
    apply(&etcd, &v1, &[]).await;
    let later = tokens::now() + 3600;
    for (key, value) in [
        (
            "routes/stale",
            r#"{"host":"*","path":"/stale","require":{"public":true}}"#.to_string(),
        ),
        ("scopes/stale", r#"{"implies":[]}"#.to_string()),
        ("revoked/jti/live", format!(r#"{{"expires_at":{later}}}"#)),
        ("revoked/jti/forever", r#"{"reason":"leak"}"#.to_string()),
        ("revoked/jti/expired", r#"{"expires_at":1000}"#.to_string()),
        ("lockdown", r#"{"reason":"INC-7"}"#.to_string()),
    ] {
        kv.put(format!("{P}{key}"), value, None).await.unwrap();
    }
    let without = apply(&etcd, &v1, &[]).await;
    assert_eq!(
        without["revision"],
        Value::Null,
        "no --prune: nothing to delete"
    );
    let before: Vec<String> = keys_at(&mut kv, 0)
        .await
        .into_iter()
        .map(|(k, _)| k)
        .collect();

    let pruned = apply(&etcd, &v1, &["--prune"]).await;
    assert_eq!(
        pruned["deleted"],
        json!(["revoked/jti/expired", "routes/stale", "scopes/stale"])
    );
    assert_eq!(pruned["added"], json!([]));
    assert_eq!(pruned["changed"], json!([]));
    let after: Vec<String> = keys_at(&mut kv, 0)
        .await
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    let expected: Vec<String> = before
        .into_iter()
        .filter(|k| !["revoked/jti/expired", "routes/stale", "scopes/stale"].contains(&k.as_str()))
        .chain(["changes/00000000000000000002".to_string()])
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(
        after, expected,
        "the lockdown and revocations in force stay"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn rollback_restores_the_exact_prior_state() {
    let etcd = EtcdServer::start().await;
    let mut kv = etcd.client().await;
    let files = Files::new();
    let v1 = files.write("v1.yaml", &rules("orders:read", ""));
    let v2 = files.write(
        "v2.yaml",
        &rules("orders:admin", "  new: {host: api.example.com, path: /new, require: {all: [x]}}\n")
            .replace("  orders-write: {host: api.example.com, path: \"/orders/**\", methods: [POST], require: {all: [orders:write]}}\n", ""),
    );
    let r1 = revision_of(&apply(&etcd, &v1, &[]).await);
    apply(&etcd, &v2, &["--prune"]).await;
    // Changes behind scopegate's back, and incident controls set since.
    kv.put(format!("{P}settings"), r#"{"mode":"dry_run"}"#, None)
        .await
        .unwrap();
    kv.put(format!("{P}revoked/jti/j1"), r#"{"reason":"leak"}"#, None)
        .await
        .unwrap();
    sg(
        &etcd,
        &["lockdown", "on", "--method", "POST", "--reason", "INC-1"],
    )
    .await
    .ok();
    let at_r1 = rule_keys(keys_at(&mut kv, r1).await);
    assert_ne!(rule_keys(keys_at(&mut kv, 0).await), at_r1);

    let rolled = sg(
        &etcd,
        &[
            "rules",
            "rollback",
            "--to-revision",
            &r1.to_string(),
            "-m",
            "undo v2",
            "--output",
            "json",
        ],
    )
    .await
    .ok()
    .json();
    assert_eq!(rolled["added"], json!(["routes/orders-write"]));
    assert_eq!(rolled["changed"], json!(["routes/orders"]));
    assert_eq!(rolled["deleted"], json!(["routes/new", "settings"]));
    assert_eq!(
        rule_keys(keys_at(&mut kv, 0).await),
        at_r1,
        "every rule key and value as at r1"
    );
    let get_now = sg(&etcd, &["rules", "get"]).await.ok().stdout;
    let get_then = sg(&etcd, &["rules", "get", "--revision", &r1.to_string()])
        .await
        .ok()
        .stdout;
    let (now, then) = (
        document::read_entries(&get_now, Path::new("a.yaml")).unwrap(),
        document::read_entries(&get_then, Path::new("b.yaml")).unwrap(),
    );
    let without_revocations = |e: &document::Entries| -> Vec<String> {
        e.iter()
            .filter(|(k, _)| !k.starts_with("revoked/"))
            .map(|(k, v)| format!("{k}={v}"))
            .collect()
    };
    assert_eq!(without_revocations(&now), without_revocations(&then));
    let keys: Vec<String> = keys_at(&mut kv, 0)
        .await
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert!(
        keys.contains(&"revoked/jti/j1".to_string()) && keys.contains(&"lockdown".to_string()),
        "incident controls stay: {keys:?}"
    );

    let history = sg(&etcd, &["rules", "history", "--output", "json"])
        .await
        .ok()
        .json();
    let versions = history["versions"].as_array().unwrap();
    assert_eq!(versions[0]["record"]["kind"], "rollback");
    assert_eq!(versions[0]["record"]["rollback_to"], r1);
    assert_eq!(versions[0]["record"]["message"], "undo v2");
    let unrecorded: Vec<&Value> = versions.iter().filter(|v| v["recorded"] == false).collect();
    assert_eq!(unrecorded.len(), 2, "the two etcdctl-style puts: {history}");
    assert_eq!(
        unrecorded[1]["changes"],
        json!([{"key": "settings", "action": "added"}])
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn rollback_to_a_compacted_revision_names_the_oldest_available() {
    let etcd = EtcdServer::start().await;
    let mut kv = etcd.client().await;
    let files = Files::new();
    let r1 = revision_of(&files.apply(&etcd, "v1.yaml", "orders:read", &[]).await);
    let r2 = revision_of(&files.apply(&etcd, "v2.yaml", "orders:admin", &[]).await);
    kv.compact(r2, None).await.unwrap();
    let run = sg(
        &etcd,
        &["rules", "rollback", "--to-revision", &r1.to_string()],
    )
    .await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.contains(&format!(
            "revision {r1} was compacted: the oldest revision still available is {r2}"
        )),
        "{}",
        run.stderr
    );
    let json = sg(
        &etcd,
        &[
            "rules",
            "rollback",
            "--to-revision",
            &r1.to_string(),
            "--output",
            "json",
        ],
    )
    .await
    .json();
    assert_eq!(json["error"]["code"], "compacted");
    assert_eq!(current_revision(&mut kv).await, r2, "nothing was written");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rollback_while_serve_runs_flips_its_decisions_and_it_logs_the_version() {
    let etcd = EtcdServer::start().await;
    let files = Files::new();
    let r1 = revision_of(&files.apply(&etcd, "v1.yaml", "orders:read", &[]).await);
    let mut serve = ServeProcess::start(&["--etcd-endpoints", &etcd.endpoint()]).await;
    let orders = Orders(serve.grpc_addr);
    let reader = token("alice", "orders:read");
    orders.until(&reader, 200, "v1 loaded").await;
    files
        .apply(&etcd, "v2.yaml", "orders:admin", &["-m", "tighten"])
        .await;
    orders.until(&reader, 403, "v2 denies readers").await;

    let started = Instant::now();
    let rolled = sg(
        &etcd,
        &[
            "rules",
            "rollback",
            "--to-revision",
            &r1.to_string(),
            "--author",
            "oncall",
            "-m",
            "v2 broke readers",
            "--output",
            "json",
        ],
    )
    .await
    .ok()
    .json();
    orders
        .until(&reader, 200, "rollback flips the decision")
        .await;
    eprintln!("rollback command + flip: {:?}", started.elapsed());

    let revision = revision_of(&rolled);
    let audit = serve
        .wait_for_line(WAIT, |v| {
            v["target"] == "scopegate::audit" && v["revision"] == revision
        })
        .await;
    assert_eq!(audit["version_kind"], "rollback");
    assert_eq!(audit["version_author"], "oncall");
    assert_eq!(audit["version_message"], "v2 broke readers");
    assert_eq!(audit["rule_set_digest"], rolled["digest"]);
    assert_eq!(audit["version_digest_matches"], true);
    let changes: Value = serde_json::from_str(audit["changes"].as_str().unwrap()).unwrap();
    assert_eq!(changes[0]["key"], "routes/orders");
    assert_eq!(changes[0]["action"], "put");
    let decision = serve
        .wait_for_line(WAIT, |v| {
            v["target"] == "scopegate::decision" && v["revision"] == revision
        })
        .await;
    assert_eq!(
        decision["decision"], "allow",
        "the decision log names the revision the audit line describes"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn audit_verify_passes_on_an_honest_history_and_names_a_record_changed_behind_its_back() {
    let etcd = EtcdServer::start().await;
    let files = Files::new();
    let v1 = files.write("v1.yaml", &rules("orders:read", ""));
    apply(&etcd, &v1, &[]).await;
    files
        .apply(&etcd, "v2.yaml", "orders:admin", &["-m", "second"])
        .await;
    let r3 = revision_of(&apply(&etcd, &v1, &["-m", "third"]).await);
    sg(&etcd, &["lockdown", "on", "--all", "--reason", "drill"])
        .await
        .ok();
    sg(&etcd, &["lockdown", "off"]).await.ok();
    sg(
        &etcd,
        &["rules", "rollback", "--to-revision", &r3.to_string()],
    )
    .await
    .ok();
    etcdctl(&etcd.endpoint())
        .args(["put", &format!("{P}revoked/jti/j9"), r#"{"reason":"leak"}"#])
        .output()
        .unwrap();
    let honest = sg(&etcd, &["audit", "verify", "--output", "json"]).await;
    assert_eq!(honest.code, 0, "{}", honest.stdout);
    let report = honest.json();
    assert_eq!(report["ok"], true);
    assert_eq!(report["records"], 5);
    assert_eq!(report["digests_checked"], 5);
    assert!(
        report["notes"][0]
            .as_str()
            .unwrap()
            .contains("revoked/jti/j9"),
        "{report}"
    );
    assert_eq!(
        sg(&etcd, &["audit", "verify", "--strict"]).await.code,
        1,
        "--strict counts revocations too"
    );

    // Change record 2's message with plain etcdctl.
    let key = format!("{P}changes/00000000000000000002");
    let out = etcdctl(&etcd.endpoint())
        .args(["get", &key, "--print-value-only"])
        .output()
        .unwrap();
    let forged = String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .replace("\"second\"", "\"innocent\"");
    let put = etcdctl(&etcd.endpoint())
        .args(["put", &key, &forged])
        .output()
        .unwrap();
    assert!(put.status.success());
    let run = sg(&etcd, &["audit", "verify"]).await;
    assert_eq!(run.code, 1, "{run:?}");
    let first = run.stdout.lines().next().unwrap();
    assert!(first.contains("record 2 was modified"), "{}", run.stdout);
    let json = sg(&etcd, &["audit", "verify", "--output", "json"])
        .await
        .json();
    assert_eq!(json["problems"][0]["record"], 2);
    assert!(
        json["problems"][1]["message"]
            .as_str()
            .unwrap()
            .contains("record 3 does not chain to record 2"),
        "{json}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn audit_verify_names_a_rule_value_changed_behind_its_back() {
    let etcd = EtcdServer::start().await;
    let files = Files::new();
    files.apply(&etcd, "v1.yaml", "orders:read", &[]).await;
    files.apply(&etcd, "v2.yaml", "orders:admin", &[]).await;
    assert_eq!(sg(&etcd, &["audit", "verify"]).await.code, 0);
    let out = etcdctl(&etcd.endpoint())
        .args([
            "put",
            &format!("{P}routes/orders"),
            r#"{"host":"api.example.com","path":"/orders/{id}","require":{"public":true}}"#,
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let mut kv = etcd.client().await;
    let tampered = current_revision(&mut kv).await;
    let run = sg(&etcd, &["audit", "verify"]).await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stdout.starts_with(&format!("audit verify: FAILED at revision {tampered}: revision {tampered} changed routes/orders without a version record (after record 2)")),
        "{}",
        run.stdout
    );
    // Once etcd compacted that revision away, the digests still tell.
    let later = kv
        .put("/elsewhere", "x", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    kv.compact(later, None).await.unwrap();
    let json = sg(&etcd, &["audit", "verify", "--output", "json"])
        .await
        .json();
    assert_eq!(json["ok"], false);
    let message = json["problems"][0]["message"].as_str().unwrap();
    assert!(message.starts_with("the rule set now (digest"), "{message}");
    assert!(
        message.contains("is not the one record 2 describes"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn lockdown_denies_at_once_on_two_replicas_and_off_restores() {
    let etcd = EtcdServer::start().await;
    let files = Files::new();
    let r1 = revision_of(&files.apply(&etcd, "v1.yaml", "orders:read", &[]).await);
    let (a, b) = (replica(&etcd).await, replica(&etcd).await);
    until_revision(&a, r1).await;
    until_revision(&b, r1).await;
    let writer = token("alice", "orders:write");
    let bypass = token("oncall", "orders:write incident:bypass");
    let bypass_only = token("oncall", "incident:bypass");
    for app in [&a, &b] {
        let orders = Orders(app.grpc_addr);
        orders
            .assert("POST", Some(&writer), 200, "writers may POST")
            .await;
    }

    let on = sg(
        &etcd,
        &[
            "lockdown",
            "on",
            "--host",
            "api.example.com",
            "--method",
            "POST",
            "--bypass-scope",
            "incident:bypass",
            "--reason",
            "INC-42: leaked key",
            "--output",
            "json",
        ],
    )
    .await
    .ok()
    .json();
    let revision = on["outcome"]["revision"].as_i64().unwrap();
    for app in [&a, &b] {
        until_revision(app, revision).await;
        let orders = Orders(app.grpc_addr);
        // The same snapshot that carries the lockdown decides: no further wait.
        let denied = orders.ask("POST", Some(&writer)).await;
        assert_eq!(
            (denied.status, denied.reason().as_deref()),
            (403, Some("lockdown"))
        );
        orders
            .assert("GET", Some(&writer), 200, "GET is not covered")
            .await;
        orders
            .assert("POST", Some(&bypass), 200, "bypass where the rule allows")
            .await;
        let no_rule_scope = orders.ask("POST", Some(&bypass_only)).await;
        assert_eq!(
            (no_rule_scope.status, no_rule_scope.reason().as_deref()),
            (403, Some("insufficient_scope")),
            "the bypass scope never replaces the rule's own"
        );
        orders
            .assert("POST", None, 401, "a denial stays what it was")
            .await;
    }
    let status = sg(&etcd, &["lockdown", "status", "--output", "json"])
        .await
        .ok()
        .json();
    assert_eq!(status["in_force"], true);
    assert_eq!(status["since_revision"], revision);
    assert_eq!(status["record"]["author"], "test-operator");
    assert_eq!(status["lockdown"]["reason"], "INC-42: leaked key");
    let text = sg(&etcd, &["lockdown", "status"]).await.ok().stdout;
    assert!(
        text.starts_with(&format!(
            "lockdown: ON since revision {revision}, set by test-operator"
        )),
        "{text}"
    );

    let off = sg(&etcd, &["lockdown", "off", "--output", "json"])
        .await
        .ok()
        .json();
    let revision = revision_of(&off);
    for app in [&a, &b] {
        until_revision(app, revision).await;
        let orders = Orders(app.grpc_addr);
        orders
            .assert("POST", Some(&writer), 200, "off restores writes")
            .await;
    }
    let again = sg(&etcd, &["lockdown", "off"]).await.ok().stdout;
    assert!(again.starts_with("no lockdown is set"), "{again}");
    for app in [&a, &b] {
        assert!(
            app.store.rejections().is_empty(),
            "version records are skipped, not rejected as unknown keys"
        );
        let errors = support::metric_value(&app.metrics.encode(), "scopegate_rule_errors_total");
        assert_eq!(errors, Some(0.0));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn global_dry_run_allows_and_counts_what_enforce_would_deny() {
    let etcd = EtcdServer::start().await;
    let files = Files::new();
    let r1 = revision_of(
        &apply(
            &etcd,
            &files.write(
                "dry.yaml",
                &rules("orders:admin", "settings: {mode: dry_run}\n"),
            ),
            &[],
        )
        .await,
    );
    let app = replica(&etcd).await;
    until_revision(&app, r1).await;
    let reader = token("alice", "orders:read");
    let orders = Orders(app.grpc_addr);
    let allowed = orders.ask("GET", Some(&reader)).await;
    assert_eq!(
        allowed.status, 200,
        "enforce would deny: insufficient scope"
    );
    assert_eq!(
        allowed.header("x-scopegate-subject"),
        Some("alice"),
        "the token itself passed"
    );
    let forged = orders.ask("GET", Some("not.a.token")).await;
    assert_eq!(forged.status, 200);
    assert_eq!(
        forged.header("x-scopegate-subject"),
        None,
        "no identity for a token that failed"
    );
    assert_status(
        app.grpc_addr,
        "GET",
        "/nothing",
        Some(&reader),
        403,
        "no rule still denies",
    )
    .await;
    let metrics = app.metrics.encode();
    assert!(
        metrics.contains(r#"scopegate_dry_run_would_deny_total{reason="insufficient_scope"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"scopegate_decisions_total{decision="allow",reason="dry_run"} 2"#),
        "{metrics}"
    );

    let r2 = revision_of(
        &files
            .apply(&etcd, "enforce.yaml", "orders:admin", &["--prune"])
            .await,
    );
    until_revision(&app, r2).await;
    orders
        .assert("GET", Some(&reader), 403, "enforced again")
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn revocations_gc_deletes_only_expired_entries() {
    let etcd = EtcdServer::start().await;
    let mut kv = etcd.client().await;
    let later = tokens::now() + 3600;
    for (key, value) in [
        ("revoked/jti/expired", r#"{"expires_at":1000}"#.to_string()),
        (
            "revoked/sub/gone",
            r#"{"issued_before":5,"expires_at":1000}"#.to_string(),
        ),
        ("revoked/jti/live", format!(r#"{{"expires_at":{later}}}"#)),
        (
            "revoked/client/forever",
            r#"{"issued_before":5}"#.to_string(),
        ),
    ] {
        kv.put(format!("{P}{key}"), value, None).await.unwrap();
    }
    let dry = sg(
        &etcd,
        &["revocations", "gc", "--dry-run", "--output", "json"],
    )
    .await
    .ok()
    .json();
    assert_eq!(dry["revision"], Value::Null);
    assert_eq!(
        dry["deleted"],
        json!(["revoked/jti/expired", "revoked/sub/gone"])
    );
    let gc = sg(&etcd, &["revocations", "gc", "--output", "json"])
        .await
        .ok()
        .json();
    assert_eq!(
        gc["deleted"],
        json!(["revoked/jti/expired", "revoked/sub/gone"])
    );
    let keys: Vec<String> = keys_at(&mut kv, 0)
        .await
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(
        keys,
        [
            "changes/00000000000000000001",
            "revoked/client/forever",
            "revoked/jti/live"
        ]
    );
    let history = sg(&etcd, &["rules", "history", "--output", "json"])
        .await
        .ok()
        .json();
    assert_eq!(history["versions"][0]["record"]["kind"], "revocations_gc");
}

#[tokio::test(flavor = "multi_thread")]
async fn diff_is_key_by_key_between_revisions_and_against_a_file() {
    let etcd = EtcdServer::start().await;
    let files = Files::new();
    let v1 = files.write("v1.yaml", &rules("orders:read", ""));
    let r1 = revision_of(&apply(&etcd, &v1, &[]).await);
    let v2 = files.write(
        "v2.yaml",
        &rules(
            "orders:admin",
            "  new: {host: api.example.com, path: /new, require: {all: [x]}}\n",
        ),
    );
    let planned = sg(&etcd, &["rules", "diff", "--file", &v2, "--output", "json"])
        .await
        .ok()
        .json();
    assert_eq!(planned["from_revision"], r1);
    let summary = |report: &Value| -> Vec<(String, String)> {
        report["changes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c["key"].as_str().unwrap().to_string(),
                    c["action"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    assert_eq!(
        summary(&planned),
        [
            ("routes/new".into(), "added".into()),
            ("routes/orders".into(), "changed".into())
        ]
    );
    let r2 = revision_of(&apply(&etcd, &v2, &["--expect-revision", &r1.to_string()]).await);
    let diff = sg(
        &etcd,
        &[
            "rules",
            "diff",
            "--from",
            &r1.to_string(),
            "--to",
            &r2.to_string(),
            "--output",
            "json",
        ],
    )
    .await
    .ok()
    .json();
    assert_eq!(
        summary(&diff),
        summary(&planned),
        "the diff of the apply is what was planned"
    );
    assert_eq!(
        diff["changes"][1]["from"]["require"],
        json!({"all": ["orders:read"]})
    );
    assert_eq!(
        diff["changes"][1]["to"]["require"],
        json!({"all": ["orders:admin"]})
    );
    let text = sg(&etcd, &["rules", "diff", "--from", &r1.to_string()])
        .await
        .ok()
        .stdout;
    assert!(text.contains("+ routes/new\n"), "{text}");
    assert!(text.contains("~ routes/orders\n"), "{text}");
    assert!(
        text.contains("    -       \"orders:read\"\n    +       \"orders:admin\"\n"),
        "{text}"
    );
    assert!(
        text.ends_with(&format!(
            "2 key(s) differ between revision {r1} and revision {r2}\n"
        )),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_mirror_follows_applies_and_rollbacks_and_expiring_revocations_stop_applying() {
    let primary = EtcdServer::start().await;
    let mirror = EtcdServer::start().await;
    let _make_mirror = ChildGuard(
        etcdctl(&primary.endpoint())
            .args(["make-mirror", "--prefix", P, &mirror.endpoint()])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("etcdctl make-mirror starts"),
    );
    let files = Files::new();
    let r1 = revision_of(&files.apply(&primary, "v1.yaml", "orders:read", &[]).await);
    let regional = replica(&mirror).await;
    let orders = Orders(regional.grpc_addr);
    let reader = token("alice", "orders:read");
    orders.until(&reader, 200, "the mirror has v1").await;
    files.apply(&primary, "v2.yaml", "orders:admin", &[]).await;
    orders.until(&reader, 403, "the mirror has v2").await;
    sg(
        &primary,
        &["rules", "rollback", "--to-revision", &r1.to_string()],
    )
    .await
    .ok();
    orders
        .until(&reader, 200, "the mirror has the rollback")
        .await;

    // A revocation with expires_at and no lease: the mirror stops applying it exactly then.
    let mut c = claims("alice", "orders:read");
    c["jti"] = json!("mirror-jti");
    let revocable = sign(jsonwebtoken::Algorithm::RS256, &c);
    let expires_at = tokens::now() + 4;
    let value = format!(r#"{{"reason":"laptop stolen","expires_at":{expires_at}}}"#);
    let out = etcdctl(&primary.endpoint())
        .args(["put", &format!("{P}revoked/jti/mirror-jti"), &value])
        .output()
        .unwrap();
    assert!(out.status.success());
    orders.until(&revocable, 401, "the mirror revokes").await;
    orders
        .until(&revocable, 200, "the revocation expired")
        .await;
    assert!(tokens::now() >= expires_at, "not before expires_at");
    let mut kv = mirror.client().await;
    let still_there = kv
        .get(format!("{P}revoked/jti/mirror-jti"), None)
        .await
        .unwrap();
    assert_eq!(
        still_there.kvs().len(),
        1,
        "the key is still on the mirror: expiry, not deletion"
    );
    let gc = sg(&primary, &["revocations", "gc", "--output", "json"])
        .await
        .ok()
        .json();
    assert_eq!(gc["deleted"], json!(["revoked/jti/mirror-jti"]));
    wait_until("gc reaches the mirror", WAIT, || {
        let mirror = mirror.endpoint();
        async move {
            let mut kv = Client::connect([mirror], None).await.unwrap();
            kv.get(format!("{P}revoked/jti/mirror-jti"), None)
                .await
                .unwrap()
                .kvs()
                .is_empty()
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn commands_fail_with_a_message_and_a_non_zero_exit() {
    let port = support::free_port();
    let nowhere = format!("http://127.0.0.1:{port}");
    let run = scopegate(&[
        "rules",
        "history",
        "--etcd-endpoints",
        &nowhere,
        "--etcd-timeout",
        "1s",
    ])
    .await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.starts_with("scopegate: etcd: "),
        "{}",
        run.stderr
    );
    let run = scopegate(&["rules", "history"]).await;
    assert_eq!(run.code, 2);
    assert!(
        run.stderr
            .contains("--etcd-endpoints (or SCOPEGATE_ETCD_ENDPOINTS) is required"),
        "{}",
        run.stderr
    );
    let run = scopegate(&[
        "lockdown",
        "on",
        "--reason",
        "x",
        "--etcd-endpoints",
        &nowhere,
    ])
    .await;
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.contains("say what to lock down"),
        "{}",
        run.stderr
    );
    let run = scopegate(&[
        "rules",
        "apply",
        "f.yaml",
        "--etcd-endpoints",
        &nowhere,
        "--etcd-user",
        "u",
        "--etcd-password",
        "pw",
    ])
    .await;
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.contains("never taken from the command line"),
        "{}",
        run.stderr
    );
    let missing: PathBuf = std::env::temp_dir().join("scopegate-no-such-file.yaml");
    let run = scopegate(&[
        "rules",
        "apply",
        missing.to_str().unwrap(),
        "--etcd-endpoints",
        &nowhere,
        "--output",
        "json",
    ])
    .await;
    assert_eq!(run.code, 1);
    assert_eq!(run.json()["error"]["code"], "read");
}
