//! A real etcd (Debian's `etcd-server`, etcd 3.4) on free loopback ports with a temp data dir,
//! started and stopped by the test. Missing etcd fails the test with how to install it.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use etcd_client::Client;

use super::{free_port, wait_until};

const INSTALL_HINT: &str =
    "etcd is required for this test: run `scripts/test-all.sh` (installs it), \
     or `apt-get install etcd-server etcd-client` on Debian";

pub fn etcd_binary() -> PathBuf {
    for candidate in ["/usr/bin/etcd", "/usr/local/bin/etcd"] {
        if std::path::Path::new(candidate).exists() {
            return candidate.into();
        }
    }
    panic!("{INSTALL_HINT}");
}

/// TLS material for an etcd with client-certificate authentication.
#[derive(Clone)]
pub struct EtcdTls {
    pub ca_file: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
}

pub struct EtcdServer {
    pub client_port: u16,
    peer_port: u16,
    name: String,
    /// `name=peer_url,…` for a multi-member cluster; `None` for a single member.
    initial_cluster: Option<String>,
    pub data_dir: tempfile::TempDir,
    child: Option<Child>,
    tls: Option<EtcdTls>,
}

impl EtcdServer {
    pub async fn start() -> EtcdServer {
        Self::start_with(None).await
    }

    /// Starts on a given client port (e.g. one a scopegate is already trying to reach).
    pub async fn start_on(client_port: u16) -> EtcdServer {
        let mut server = EtcdServer {
            client_port,
            peer_port: free_port(),
            name: "test".into(),
            initial_cluster: None,
            data_dir: tempfile::tempdir().unwrap(),
            child: None,
            tls: None,
        };
        server.spawn().await;
        server
    }

    pub async fn start_with(tls: Option<EtcdTls>) -> EtcdServer {
        let mut server = EtcdServer {
            client_port: free_port(),
            peer_port: free_port(),
            name: "test".into(),
            initial_cluster: None,
            data_dir: tempfile::tempdir().unwrap(),
            child: None,
            tls,
        };
        server.spawn().await;
        server
    }

    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    pub fn endpoint(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme(), self.client_port)
    }

    async fn spawn(&mut self) {
        let client_url = self.endpoint();
        let peer_url = format!("http://127.0.0.1:{}", self.peer_port);
        let mut cmd = Command::new(etcd_binary());
        let initial_cluster = self
            .initial_cluster
            .clone()
            .unwrap_or(format!("{}={peer_url}", self.name));
        cmd.arg("--name")
            .arg(&self.name)
            .arg("--data-dir")
            .arg(self.data_dir.path())
            .arg("--listen-client-urls")
            .arg(&client_url)
            .arg("--advertise-client-urls")
            .arg(&client_url)
            .arg("--listen-peer-urls")
            .arg(&peer_url)
            .arg("--initial-advertise-peer-urls")
            .arg(&peer_url)
            .arg("--initial-cluster")
            .arg(initial_cluster)
            .arg("--log-level")
            .arg("error")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(tls) = &self.tls {
            cmd.arg("--cert-file")
                .arg(&tls.server_cert)
                .arg("--key-file")
                .arg(&tls.server_key)
                .arg("--trusted-ca-file")
                .arg(&tls.ca_file)
                .arg("--client-cert-auth");
        }
        self.child = Some(
            cmd.spawn()
                .unwrap_or_else(|e| panic!("cannot start etcd ({e}); {INSTALL_HINT}")),
        );
        if self.initial_cluster.is_some() {
            return; // members of a cluster answer only once a quorum is up: see EtcdCluster
        }
        if self.tls.is_none() {
            let endpoint = self.endpoint();
            wait_until("etcd answers", Duration::from_secs(30), || {
                let endpoint = endpoint.clone();
                async move {
                    match Client::connect([endpoint], None).await {
                        Ok(mut c) => c.get("/", None).await.is_ok(),
                        Err(_) => false,
                    }
                }
            })
            .await;
        } else {
            let port = self.client_port;
            wait_until("etcd listens", Duration::from_secs(30), || async move {
                tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .is_ok()
            })
            .await;
        }
    }

    /// Freezes (SIGSTOP) or thaws (SIGCONT) the member: a hung process, not a dead one.
    pub fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("member is running").id();
        let status = std::process::Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .expect("kill(1) runs");
        assert!(status.success(), "kill {signal} {pid}");
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts again on the same ports and data dir.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }

    /// A plain client (no TLS).
    pub async fn client(&self) -> Client {
        Client::connect([self.endpoint()], None)
            .await
            .expect("etcd client connects")
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A multi-member etcd cluster on loopback (for leader loss).
pub struct EtcdCluster {
    pub members: Vec<EtcdServer>,
}

impl EtcdCluster {
    pub async fn start(size: usize) -> EtcdCluster {
        let ports: Vec<(u16, u16)> = (0..size).map(|_| (free_port(), free_port())).collect();
        let initial = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("m{i}=http://127.0.0.1:{peer}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut members = Vec::new();
        for (i, (client_port, peer_port)) in ports.into_iter().enumerate() {
            let mut member = EtcdServer {
                client_port,
                peer_port,
                name: format!("m{i}"),
                initial_cluster: Some(initial.clone()),
                data_dir: tempfile::tempdir().unwrap(),
                child: None,
                tls: None,
            };
            member.spawn().await;
            members.push(member);
        }
        let cluster = EtcdCluster { members };
        cluster.wait_healthy().await;
        cluster
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(EtcdServer::endpoint).collect()
    }

    /// Waits until every live member answers and a write succeeds (a leader exists).
    pub async fn wait_healthy(&self) {
        let endpoints: Vec<String> = self
            .members
            .iter()
            .filter(|m| m.child.is_some())
            .map(EtcdServer::endpoint)
            .collect();
        wait_until(
            "etcd cluster has a leader and every live member answers",
            Duration::from_secs(60),
            || {
                let endpoints = endpoints.clone();
                async move {
                    for endpoint in &endpoints {
                        let Ok(mut c) = Client::connect([endpoint], None).await else {
                            return false;
                        };
                        if c.status().await.is_err() {
                            return false;
                        }
                    }
                    match Client::connect([&endpoints[0]], None).await {
                        Ok(mut c) => c.put("/health-probe", "x", None).await.is_ok(),
                        Err(_) => false,
                    }
                }
            },
        )
        .await;
    }

    /// Index of the current leader.
    pub async fn leader(&self) -> usize {
        let mut ids = Vec::new();
        let mut leader = None;
        for m in &self.members {
            let mut c = Client::connect([m.endpoint()], None).await.unwrap();
            let status = c.status().await.expect("member answers status");
            leader = Some(status.leader());
            ids.push(status.header().map(|h| h.member_id()));
        }
        ids.iter()
            .position(|id| *id == leader)
            .expect("no member is the leader")
    }
}
