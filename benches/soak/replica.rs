//! One scopegate replica: the real binary with the etcd source, started, restarted and killed
//! by the soak, its log kept per process.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::support::server::try_http_get;
use crate::support::{free_port, wait_until};

use crate::MAX_STALENESS;

/// One scopegate process.
pub(crate) struct Replica {
    pub(crate) name: &'static str,
    pub(crate) grpc: u16,
    pub(crate) admin: u16,
    pub(crate) endpoints: String,
    pub(crate) dir: PathBuf,
    /// Each process's log, `<name>-<incarnation>.log` (a restart does not overwrite the last).
    pub(crate) logs: Vec<PathBuf>,
    pub(crate) child: Option<Child>,
}

impl Replica {
    pub(crate) fn new(name: &'static str, endpoints: String, dir: &Path) -> Replica {
        Replica {
            name,
            grpc: free_port(),
            admin: free_port(),
            endpoints,
            dir: dir.to_path_buf(),
            logs: Vec::new(),
            child: None,
        }
    }

    pub(crate) fn spawn(&mut self) {
        let path = self
            .dir
            .join(format!("{}-{}.log", self.name, self.logs.len()));
        let log = std::fs::File::create(&path).unwrap();
        self.logs.push(path);
        let child = Command::new(env!("CARGO_BIN_EXE_scopegate"))
            .args(["serve", "--listen", &format!("127.0.0.1:{}", self.grpc)])
            .args(["--admin-listen", &format!("127.0.0.1:{}", self.admin)])
            .args([
                "--etcd-endpoints",
                &self.endpoints,
                "--max-staleness",
                MAX_STALENESS,
            ])
            // Denials in the decision log (to name the replica behind a failed request by its
            // decision id), and the etcd source's reconnects, for the timeline.
            .args(["--decision-log", "deny"])
            .env(
                "RUST_LOG",
                "warn,scopegate=info,scopegate::audit=warn,scopegate::store::etcd=debug",
            )
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("scopegate binary starts");
        self.child = Some(child);
    }

    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub(crate) fn admin_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.admin))
    }

    pub(crate) async fn wait_ready(&self) {
        let admin = self.admin_addr();
        let what = format!("replica {} ready", self.name);
        wait_until(&what, Duration::from_secs(30), || async move {
            try_http_get(admin, "/readyz")
                .await
                .is_ok_and(|(status, _)| status == 200)
        })
        .await;
    }

    pub(crate) async fn is_ready(&self) -> bool {
        try_http_get(self.admin_addr(), "/readyz")
            .await
            .is_ok_and(|(status, _)| status == 200)
    }

    pub(crate) fn rss_bytes(&self) -> u64 {
        let pid = self.child.as_ref().map(Child::id).unwrap_or(0);
        let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).unwrap_or_default();
        statm
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse::<u64>().ok())
            .unwrap_or(0)
            * 4096
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill();
    }
}
