//! TLS on the gRPC listener (rustls on aws-lc-rs, the crate's one crypto stack): the server
//! certificate chain, its key and an optional client CA (then a client certificate is required)
//! are read from files and reloaded when they change, without dropping established connections.
//!
//! The whole rustls `ServerConfig` (certificate, key and client verifier from one reading of the
//! files) is published in an `ArcSwap`; the accept loop takes the current one for each new
//! handshake. A rotation (cert-manager renewing a Secret, the kubelet swapping the Secret
//! volume's `..data` symlink) therefore applies to the next handshake, while connections that
//! are already established keep their session. A reading that does not make a valid
//! configuration (a half-written file, a key that does not match the certificate) is rejected,
//! logged and counted, and the previous configuration stays in force.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_rustls::rustls::crypto::{aws_lc_rs, CryptoProvider};
use tokio_rustls::rustls::pki_types::pem::{self, PemObject};
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::danger::ClientCertVerifier;
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{self, RootCertStore, ServerConfig};
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;

use crate::sha256::Sha256;
use crate::telemetry::Metrics;

/// Fallback re-read interval of the certificate files (changes are normally seen at once).
pub const DEFAULT_TLS_RELOAD_INTERVAL: Duration = Duration::from_secs(10);
/// A client that has not completed its TLS handshake by then is disconnected.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Quiet time after a change notification before the files are read.
const SETTLE: Duration = Duration::from_millis(50);
/// Completed handshakes waiting for the gRPC server to take them.
const ACCEPTED_BACKLOG: usize = 64;

/// Which files make the listener's TLS configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// Server certificate chain (PEM), leaf first.
    pub cert_file: PathBuf,
    /// The certificate's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// CA certificates (PEM) that client certificates must chain to; `None`: no client
    /// certificate is asked for.
    pub client_ca_file: Option<PathBuf>,
    /// Fallback re-read interval (changes are normally seen at once through notifications).
    pub reload_interval: Duration,
}

/// Why the TLS files do not make a configuration.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not valid PEM: {source}")]
    Pem { path: PathBuf, source: pem::Error },
    #[error("{path}: no certificate in the file")]
    NoCertificate { path: PathBuf },
    #[error("client CA {path}: {message}")]
    ClientCa { path: PathBuf, message: String },
    #[error("certificate {cert} with key {key}: {source}")]
    Config {
        cert: PathBuf,
        key: PathBuf,
        source: rustls::Error,
    },
}

/// The files as read at one moment.
struct Reading {
    digest: [u8; 32],
    cert: Vec<u8>,
    key: Vec<u8>,
    client_ca: Option<Vec<u8>>,
}

/// What the last reload attempt saw, so that a persisting problem is reported once.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    Applied([u8; 32]),
    Rejected([u8; 32]),
    Unreadable(String),
}

/// The listener's TLS configuration and the task-side state that keeps it current.
#[derive(Debug)]
pub struct ServerTls {
    settings: TlsSettings,
    current: Arc<ArcSwap<ServerConfig>>,
    seen: Seen,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(aws_lc_rs::default_provider())
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn certificates(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem {
            path: path.to_path_buf(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

impl TlsSettings {
    /// The files, certificate and key first.
    fn files(&self) -> impl Iterator<Item = &Path> {
        [self.cert_file.as_path(), self.key_file.as_path()]
            .into_iter()
            .chain(self.client_ca_file.as_deref())
    }

    fn read(&self) -> Result<Reading, TlsError> {
        let cert = read(&self.cert_file)?;
        let key = read(&self.key_file)?;
        let client_ca = self.client_ca_file.as_deref().map(read).transpose()?;
        let mut hash = Sha256::new();
        for part in [Some(&cert), Some(&key), client_ca.as_ref()] {
            // Length-prefixed, so that moving bytes between files changes the digest.
            let part = part.map_or(&[][..], Vec::as_slice);
            hash.update((part.len() as u64).to_be_bytes());
            hash.update(part);
        }
        Ok(Reading {
            digest: hash.finish(),
            cert,
            key,
            client_ca,
        })
    }

    fn client_verifier(&self, pem: &[u8]) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
        let path = self.client_ca_file.clone().unwrap_or_default();
        let mut roots = RootCertStore::empty();
        for cert in certificates(&path, pem)? {
            roots.add(cert).map_err(|e| TlsError::ClientCa {
                path: path.clone(),
                message: e.to_string(),
            })?;
        }
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .map_err(|e| TlsError::ClientCa {
                path,
                message: e.to_string(),
            })
    }

    /// A server configuration from one reading of the files.
    fn build(&self, reading: &Reading) -> Result<ServerConfig, TlsError> {
        let config_error = |source| TlsError::Config {
            cert: self.cert_file.clone(),
            key: self.key_file.clone(),
            source,
        };
        let chain = certificates(&self.cert_file, &reading.cert)?;
        let key = PrivateKeyDer::from_pem_slice(&reading.key).map_err(|source| TlsError::Pem {
            path: self.key_file.clone(),
            source,
        })?;
        let builder = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(config_error)?;
        let builder = match &reading.client_ca {
            Some(pem) => builder.with_client_cert_verifier(self.client_verifier(pem)?),
            None => builder.with_no_client_auth(),
        };
        // Also checks that the key belongs to the certificate.
        let mut config = builder.with_single_cert(chain, key).map_err(config_error)?;
        // gRPC is HTTP/2; a client that offers ALPN must offer h2.
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(config)
    }
}

impl ServerTls {
    /// Reads the files and builds the first configuration (an error here stops start-up).
    pub fn load(settings: TlsSettings) -> Result<ServerTls, TlsError> {
        let reading = settings.read()?;
        let config = settings.build(&reading)?;
        Ok(ServerTls {
            settings,
            current: Arc::new(ArcSwap::from_pointee(config)),
            seen: Seen::Applied(reading.digest),
        })
    }

    /// The published configuration (what the accept loop reads for each handshake).
    pub fn config(&self) -> Arc<ArcSwap<ServerConfig>> {
        self.current.clone()
    }

    /// Re-reads the files. `Ok(true)`: a new configuration is in force; `Ok(false)`: nothing
    /// changed, or the change was already reported as rejected; `Err`: a new reading was
    /// rejected (the previous configuration stays).
    pub fn reload_if_changed(&mut self) -> Result<bool, TlsError> {
        let reading = match self.settings.read() {
            Ok(reading) => reading,
            Err(e) => {
                let seen = Seen::Unreadable(e.to_string());
                let repeated = self.seen == seen;
                self.seen = seen;
                return if repeated { Ok(false) } else { Err(e) };
            }
        };
        if matches!(&self.seen, Seen::Applied(d) | Seen::Rejected(d) if *d == reading.digest) {
            return Ok(false);
        }
        match self.settings.build(&reading) {
            Ok(config) => {
                self.current.store(Arc::new(config));
                self.seen = Seen::Applied(reading.digest);
                Ok(true)
            }
            Err(e) => {
                self.seen = Seen::Rejected(reading.digest);
                Err(e)
            }
        }
    }

    /// Keeps the configuration current until the task is dropped: on file notifications for
    /// the files' directories (which see Secret and ConfigMap symlink swaps), and every
    /// `reload_interval` as a fallback.
    pub async fn watch(mut self, metrics: Arc<Metrics>) {
        let (tx, mut rx) = mpsc::channel::<()>(1);
        // Held for as long as this task runs: dropping it stops the notifications.
        let _watcher = self.start_notify(tx);
        let mut ticker = tokio::time::interval(self.settings.reload_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                Some(()) = rx.recv() => {
                    tokio::time::sleep(SETTLE).await;
                    while rx.try_recv().is_ok() {}
                }
                _ = ticker.tick() => {}
            }
            match self.reload_if_changed() {
                Ok(false) => {}
                Ok(true) => {
                    metrics.tls.record_reload(true);
                    tracing::info!(cert = %self.settings.cert_file.display(), "TLS certificate reloaded");
                }
                Err(e) => {
                    metrics.tls.record_reload(false);
                    tracing::error!(error = %e, "TLS files rejected; the previous certificate stays in force");
                }
            }
        }
    }

    fn start_notify(&self, tx: mpsc::Sender<()>) -> Option<notify::RecommendedWatcher> {
        use notify::Watcher;
        let mut dirs: Vec<PathBuf> = self
            .settings
            .files()
            .map(|f| match f.parent() {
                Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
                _ => PathBuf::from("."),
            })
            .collect();
        dirs.sort();
        dirs.dedup();
        let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            if event.is_ok() {
                // Full channel: a reload is already pending, which will see this change.
                let _ = tx.try_send(());
            }
        });
        let watching = watcher.and_then(|mut w| {
            for dir in &dirs {
                w.watch(dir, notify::RecursiveMode::NonRecursive)?;
            }
            Ok(w)
        });
        match watching {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(error = %e, "certificate file notifications unavailable; polling only");
                None
            }
        }
    }
}

/// The stream of TLS connections that the gRPC server serves.
pub type TlsIncoming = ReceiverStream<Result<TlsStream<TcpStream>, std::io::Error>>;

/// Accepts TCP connections on `listener` (with TCP_NODELAY) and completes their TLS handshakes
/// with the configuration current at that moment, each in its own task (a slow or silent client
/// holds up nobody, and is dropped after [`HANDSHAKE_TIMEOUT`]). The loop ends when the returned
/// stream is dropped (the server stopped accepting).
pub fn incoming(
    listener: TcpListener,
    config: Arc<ArcSwap<ServerConfig>>,
    metrics: Arc<Metrics>,
) -> (TlsIncoming, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(ACCEPTED_BACKLOG);
    let task = tokio::spawn(accept_loop(listener, config, metrics, tx));
    (ReceiverStream::new(rx), task)
}

type Accepted = mpsc::Sender<Result<TlsStream<TcpStream>, std::io::Error>>;

async fn accept_loop(
    listener: TcpListener,
    config: Arc<ArcSwap<ServerConfig>>,
    metrics: Arc<Metrics>,
    tx: Accepted,
) {
    loop {
        let accepted = tokio::select! {
            () = tx.closed() => return,
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // E.g. out of file descriptors: do not spin; the listener itself stays.
                tracing::warn!(error = %e, "gRPC listener: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Without TCP_NODELAY every Check waits ~40 ms for a delayed ACK (Nagle).
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(%peer, error = %e, "cannot set TCP_NODELAY");
        }
        let acceptor = tokio_rustls::TlsAcceptor::from(config.load_full());
        let (tx, metrics) = (tx.clone(), metrics.clone());
        tokio::spawn(async move {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => {
                    // The server has stopped: the connection is dropped.
                    let _ = tx.send(Ok(stream)).await;
                }
                Ok(Err(e)) => {
                    metrics.tls.handshake_failures.inc();
                    tracing::debug!(%peer, error = %e, "TLS handshake refused");
                }
                Err(_elapsed) => {
                    metrics.tls.handshake_failures.inc();
                    tracing::debug!(%peer, "TLS handshake timed out");
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Pair {
        cert: String,
        key: String,
    }

    fn self_signed(name: &str) -> Pair {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
        let cert = params.self_signed(&key).unwrap();
        Pair {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }

    fn settings(dir: &Path) -> TlsSettings {
        TlsSettings {
            cert_file: dir.join("tls.crt"),
            key_file: dir.join("tls.key"),
            client_ca_file: None,
            reload_interval: DEFAULT_TLS_RELOAD_INTERVAL,
        }
    }

    fn write(dir: &Path, pair: &Pair) {
        std::fs::write(dir.join("tls.crt"), &pair.cert).unwrap();
        std::fs::write(dir.join("tls.key"), &pair.key).unwrap();
    }

    #[test]
    fn a_key_that_does_not_match_is_rejected_once_and_the_old_config_stays() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &self_signed("one"));
        let mut tls = ServerTls::load(settings(dir.path())).unwrap();
        let first = tls.config().load_full();
        assert!(!tls.reload_if_changed().unwrap(), "nothing changed");

        let (a, b) = (self_signed("two"), self_signed("three"));
        std::fs::write(dir.path().join("tls.crt"), &a.cert).unwrap();
        std::fs::write(dir.path().join("tls.key"), &b.key).unwrap();
        let err = tls.reload_if_changed().unwrap_err().to_string();
        assert!(err.contains("tls.crt") && err.contains("tls.key"), "{err}");
        assert!(Arc::ptr_eq(&first, &tls.config().load_full()));
        assert!(!tls.reload_if_changed().unwrap(), "reported once");

        std::fs::write(dir.path().join("tls.key"), &a.key).unwrap();
        assert!(tls.reload_if_changed().unwrap());
        assert!(!Arc::ptr_eq(&first, &tls.config().load_full()));
    }

    #[test]
    fn missing_or_empty_files_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let err = ServerTls::load(settings(dir.path())).unwrap_err();
        assert!(matches!(err, TlsError::Read { .. }), "{err}");
        std::fs::write(dir.path().join("tls.crt"), "").unwrap();
        std::fs::write(dir.path().join("tls.key"), "").unwrap();
        let err = ServerTls::load(settings(dir.path())).unwrap_err();
        assert!(matches!(err, TlsError::NoCertificate { .. }), "{err}");

        write(dir.path(), &self_signed("one"));
        let mut tls = ServerTls::load(settings(dir.path())).unwrap();
        std::fs::remove_file(dir.path().join("tls.key")).unwrap();
        assert!(tls.reload_if_changed().is_err());
        assert!(!tls.reload_if_changed().unwrap(), "reported once");
    }

    #[test]
    fn a_client_ca_file_without_certificates_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &self_signed("one"));
        std::fs::write(dir.path().join("ca.crt"), "not pem\n").unwrap();
        let mut s = settings(dir.path());
        s.client_ca_file = Some(dir.path().join("ca.crt"));
        let err = ServerTls::load(s).unwrap_err().to_string();
        assert!(err.contains("ca.crt"), "{err}");
    }
}
