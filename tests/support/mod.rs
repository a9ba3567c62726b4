//! Test harnesses shared by the integration tests: token minting with the demo keys, an
//! in-process scopegate on port 0 with a gRPC client, a real etcd on free loopback ports, and a
//! real OpenID provider (`idp`), the real binary's commands (`cli`).
#![allow(dead_code)]

pub mod binding;
pub mod cli;
pub mod envoy;
pub mod etcd;
pub mod etcd_scopegate;
pub mod idp;
pub mod path_readings;
pub mod pki;
pub mod proxy;
pub mod server;
pub mod tokens;

use std::time::{Duration, Instant};

/// Polls `condition` until it holds or `timeout` passes (then panics with `what`).
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if condition().await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A free loopback TCP port (bound then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free loopback port")
}

pub fn repo_path(relative: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

/// The value of an unlabelled metric in Prometheus/OpenMetrics text (`None`: not exposed).
pub fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}
