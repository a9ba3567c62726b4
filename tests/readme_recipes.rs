//! Every shell recipe in README's "Operating with etcd" and "Change management" sections, run in
//! order with bash against a real etcd 3.4 (Debian `etcd-server`) and the Debian `etcdctl`, with
//! the real `scopegate` binary on PATH. After each recipe, every value under the prefix must be
//! one the etcd source accepts (etcdctl mangles quoted values silently, so "it exited 0" is not
//! enough). README's `http://127.0.0.1:2379` is the test's etcd; `http://127.0.0.1:22379` a second
//! one (the mirror's destination). Each recipe runs in a fresh bash with the environment the
//! README exports once (`ETCDCTL_API`, `ETCDCTL_ENDPOINTS`, `SCOPEGATE_ETCD_ENDPOINTS`), as in a
//! reader's shell session, and within a time limit.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use etcd_client::{Client, GetOptions};
use scopegate::rules::{Entry, EntryKind, ParseContext};
use support::cli::{ChildGuard, BIN};
use support::etcd::EtcdServer;
use support::{repo_path, wait_until};

const P: &str = "/scopegate/";

/// The ```sh blocks of the README sections that hold recipes, in order.
fn recipes(readme: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut section = "";
    let mut block: Option<String> = None;
    for line in readme.lines() {
        if let Some(title) = line.strip_prefix("## ") {
            section = title;
        }
        let runnable = section == "Operating with etcd" || section == "Change management";
        match (&mut block, line) {
            (None, "```sh") if runnable => block = Some(String::new()),
            (Some(text), "```") => {
                blocks.push(std::mem::take(text));
                block = None;
            }
            (Some(text), line) => {
                text.push_str(line);
                text.push('\n');
            }
            _ => {}
        }
    }
    blocks
}

/// A working directory with what the recipes refer to: jwks.json, next-jwks.json, rules.yaml.
fn workdir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let jwks = std::fs::read_to_string(repo_path("examples/keys/demo-jwks.json")).unwrap();
    std::fs::write(dir.path().join("jwks.json"), &jwks).unwrap();
    std::fs::write(
        dir.path().join("next-jwks.json"),
        jwks.replace("\"kid\": \"", "\"kid\": \"next-"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("rules.yaml"),
        std::fs::read(repo_path("examples/rules.yaml")).unwrap(),
    )
    .unwrap();
    std::fs::create_dir(dir.path().join("keys")).unwrap();
    std::fs::copy(
        repo_path("examples/keys/demo-jwks.json"),
        dir.path().join("keys/demo-jwks.json"),
    )
    .unwrap();
    dir
}

// The recipes run with the test's PATH plus the scopegate binary.
#[allow(clippy::disallowed_methods)]
fn bash(script: &str, dir: &Path, endpoint: &str) -> Command {
    for tool in ["/usr/bin/etcdctl", "/usr/bin/jq"] {
        assert!(
            Path::new(tool).exists(),
            "{tool} is required: `apt-get install etcd-client jq` (or scripts/setup.sh --test)"
        );
    }
    let bin_dir = Path::new(BIN).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut command = Command::new("timeout");
    command
        .args(["120", "bash", "-euo", "pipefail", "-c", script])
        .current_dir(dir)
        .env("PATH", path)
        .env("USER", "readme")
        .env("ETCDCTL_API", "3")
        .env("ETCDCTL_ENDPOINTS", endpoint)
        .env("SCOPEGATE_ETCD_ENDPOINTS", endpoint);
    command
}

/// Every value under the prefix is JSON the etcd source accepts.
async fn assert_all_valid(kv: &mut Client, recipe: &str) {
    let all = kv
        .get(P, Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    for entry in all.kvs() {
        let key = entry.key_str().unwrap().strip_prefix(P).unwrap();
        if key.starts_with("changes/") {
            continue;
        }
        let (kind, id) = EntryKind::parse_key(key)
            .unwrap_or_else(|| panic!("unknown key {key} after:\n{recipe}"));
        let value: serde_json::Value = serde_json::from_slice(entry.value()).unwrap_or_else(|e| {
            panic!(
                "{key} = {:?} is not JSON ({e}) after:\n{recipe}",
                entry.value_str()
            )
        });
        if let Err(e) = Entry::parse(kind, id, &value, ParseContext { base_dir: None }) {
            panic!("{key} is rejected ({e}) after:\n{recipe}");
        }
    }
}

async fn value(kv: &mut Client, key: &str) -> (String, i64) {
    let response = kv.get(format!("{P}{key}"), None).await.unwrap();
    let kv = response
        .kvs()
        .first()
        .unwrap_or_else(|| panic!("{key} is missing"));
    (kv.value_str().unwrap().to_string(), kv.mod_revision())
}

/// The make-mirror recipe runs until stopped: run it until the mirror holds the prefix.
async fn run_mirror(script: &str, dir: &Path, primary: &EtcdServer, regional: &EtcdServer) {
    let child = bash(script, dir, &primary.endpoint())
        .process_group(0)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut primary = primary.client().await;
    let group = ChildGuard(child);
    let expected = primary
        .get(P, Some(GetOptions::new().with_prefix()))
        .await
        .unwrap()
        .kvs()
        .len();
    let endpoint = regional.endpoint();
    wait_until(
        "make-mirror copied the prefix",
        Duration::from_secs(30),
        || {
            let endpoint = endpoint.clone();
            async move {
                let mut kv = Client::connect([endpoint], None).await.unwrap();
                kv.get(P, Some(GetOptions::new().with_prefix()))
                    .await
                    .unwrap()
                    .kvs()
                    .len()
                    == expected
            }
        },
    )
    .await;
    // Stop etcdctl too: it runs in the process group of the bash started above.
    let pgid = format!("-{}", group.0.id());
    let _ = Command::new("kill").args(["-TERM", "--", &pgid]).status();
}

#[tokio::test(flavor = "multi_thread")]
async fn every_etcdctl_recipe_in_the_readme_works_with_etcd_3_4() {
    let readme = std::fs::read_to_string(repo_path("README.md")).unwrap();
    let blocks = recipes(&readme);
    let with_etcdctl = readme
        .split("```sh\n")
        .skip(1)
        .filter(|b| b.split("```").next().unwrap().contains("etcdctl"))
        .count();
    assert_eq!(
        blocks.iter().filter(|b| b.contains("etcdctl")).count(),
        with_etcdctl,
        "every README block with etcdctl is in a section this test runs"
    );
    assert!(blocks.len() >= 8, "found {} recipes", blocks.len());

    let etcd = EtcdServer::start().await;
    let regional = EtcdServer::start().await;
    let mut kv = etcd.client().await;
    let dir = workdir();
    for block in &blocks {
        let script = block
            .replace("http://127.0.0.1:22379", &regional.endpoint())
            .replace("http://127.0.0.1:2379", &etcd.endpoint());
        if script.contains("make-mirror") {
            run_mirror(&script, dir.path(), &etcd, &regional).await;
            continue;
        }
        let output = tokio::task::spawn_blocking({
            let (script, dir, endpoint) =
                (script.clone(), dir.path().to_path_buf(), etcd.endpoint());
            move || bash(&script, &dir, &endpoint).output().unwrap()
        })
        .await
        .unwrap();
        assert!(
            output.status.success(),
            "recipe failed:\n{block}\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert_all_valid(&mut kv, block).await;
        if block.contains("etcdctl txn") {
            let (route, at) = value(&mut kv, "routes/reports").await;
            let (scope, scope_at) = value(&mut kv, "scopes/analyst").await;
            assert_eq!(
                route,
                r#"{"host":"api.example.com","path":"/reports/**","require":{"all":["reports:read"]}}"#
            );
            assert_eq!(scope, r#"{"implies":["reports:read"]}"#);
            assert_eq!(at, scope_at, "both keys in one revision");
        }
        if block.contains("GOOD_REVISION") {
            let (route, _) = value(&mut kv, "routes/orders-read").await;
            assert!(
                route.contains("orders:read") && !route.contains("orders:admin"),
                "rolled back: {route}"
            );
        }
    }
}
