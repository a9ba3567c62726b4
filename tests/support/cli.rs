//! The real `scopegate` binary, driven as an operator would: change commands (`rules apply`,
//! `rollback`, `lockdown`, `audit verify`, …) run to completion, and `scopegate serve` as a child
//! process whose stdout (decision and audit logs) is collected line by line.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

/// The binary cargo built for this test run.
pub const BIN: &str = env!("CARGO_BIN_EXE_scopegate");

/// One finished run of the binary.
#[derive(Debug, Clone)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Stdout as JSON (for `--output json`).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}): {}\nstderr: {}",
                self.stdout, self.stderr
            )
        })
    }

    /// Asserts success and returns self.
    pub fn ok(self) -> Run {
        assert_eq!(
            self.code, 0,
            "scopegate failed:\nstdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        self
    }
}

/// Runs `scopegate ARGS…` to completion (off the async runtime's threads).
pub async fn scopegate(args: &[&str]) -> Run {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let output = Command::new(BIN)
            .args(&args)
            .env_remove("SCOPEGATE_ETCD_ENDPOINTS")
            .env("USER", "test-operator")
            .output()
            .expect("scopegate runs");
        Run {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    })
    .await
    .unwrap()
}

/// `scopegate serve` as a child process; killed when dropped.
pub struct ServeProcess {
    child: Child,
    lines: mpsc::Receiver<String>,
    /// Every stdout line received so far.
    pub seen: Vec<String>,
    pub grpc_addr: SocketAddr,
}

impl ServeProcess {
    /// Starts `scopegate serve ARGS… --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0` and waits
    /// for its "scopegate listening" line.
    pub async fn start(args: &[&str]) -> ServeProcess {
        let mut child = Command::new(BIN)
            .arg("serve")
            .args(args)
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("scopegate serve starts");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let mut serve = ServeProcess {
            child,
            lines,
            seen: Vec::new(),
            grpc_addr: "127.0.0.1:0".parse().unwrap(),
        };
        let listening = serve
            .wait_for_line(Duration::from_secs(20), |v| {
                v["message"] == "scopegate listening"
            })
            .await;
        serve.grpc_addr = listening["grpc_addr"].as_str().unwrap().parse().unwrap();
        serve
    }

    /// Waits until a JSON log line satisfies `matches`, and returns it.
    pub async fn wait_for_line(
        &mut self,
        timeout: Duration,
        matches: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        let mut checked = 0;
        loop {
            while let Ok(line) = self.lines.try_recv() {
                self.seen.push(line);
            }
            for line in &self.seen[checked..] {
                if let Ok(value) = serde_json::from_str::<Value>(line) {
                    if matches(&value) {
                        return value;
                    }
                }
            }
            checked = self.seen.len();
            assert!(
                Instant::now() < deadline,
                "no matching log line within {timeout:?}; saw:\n{}",
                self.seen.join("\n")
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A process started by a test (e.g. `etcdctl make-mirror`), killed when dropped.
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The Debian `etcdctl` (API v3) against `endpoint`; fails with how to install it if missing.
pub fn etcdctl(endpoint: &str) -> Command {
    let binary = ["/usr/bin/etcdctl", "/usr/local/bin/etcdctl"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .unwrap_or_else(|| {
            panic!(
                "etcdctl is required: `apt-get install etcd-client` (or scripts/setup.sh --test)"
            )
        });
    let mut command = Command::new(binary);
    command
        .env("ETCDCTL_API", "3")
        .env("ETCDCTL_ENDPOINTS", endpoint);
    command
}
