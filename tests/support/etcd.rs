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
        cmd.arg("--name")
            .arg("test")
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
            .arg(format!("test={peer_url}"))
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
