//! An in-process scopegate that reads its rules from etcd, and Checks against any scopegate's
//! gRPC address for `api.example.com` with an optional bearer token: one answer, one asserted
//! status, or waiting for a status (a write to etcd applies some time later).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test harness: a step that fails must fail the calling test, with its message"
)]

use std::net::SocketAddr;
use std::time::Duration;

use scopegate::app::{self, RunningApp};

use super::server::{check_request, connect, serve_args, Answer};
use super::wait_until;

/// The key prefix scopegate reads by default.
pub const P: &str = "/scopegate/";
/// How long a change in etcd may take to reach a decision.
pub const WAIT: Duration = Duration::from_secs(20);

/// `scopegate serve --etcd-endpoints <endpoint> <extra…>`, in process.
pub async fn start_scopegate(endpoint: &str, extra: &[&str]) -> RunningApp {
    let mut flags = vec!["--etcd-endpoints", endpoint];
    flags.extend_from_slice(extra);
    app::start(&serve_args(&flags))
        .await
        .expect("scopegate starts")
}

/// One Check of `method` `path` on `api.example.com`, with `Authorization: Bearer <token>` if given.
pub async fn ask(addr: SocketAddr, method: &str, path: &str, token: Option<&str>) -> Answer {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
    let request = check_request(method, "api.example.com", path, &headers);
    Answer::from_response(
        connect(addr)
            .await
            .check(request)
            .await
            .unwrap()
            .into_inner(),
    )
}

/// One Check (as [`ask`]) that must answer `status` now (`what`: why, for the failure message).
pub async fn assert_status(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    status: u16,
    what: &str,
) {
    let answer = ask(addr, method, path, token).await;
    assert_eq!(
        answer.status, status,
        "{what}: {method} {path} answered {answer:?}"
    );
}

/// Waits (up to [`WAIT`]) until a Check of `GET path` answers `status`.
pub async fn until_status(
    addr: SocketAddr,
    path: &str,
    token: Option<&str>,
    status: u16,
    what: &str,
) {
    let token = token.map(str::to_string);
    let path = path.to_string();
    wait_until(what, WAIT, || {
        let token = token.clone();
        let path = path.clone();
        async move { ask(addr, "GET", &path, token.as_deref()).await.status == status }
    })
    .await;
}
