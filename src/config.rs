//! The typed, validated configuration of `scopegate serve`: what `cli` produces and `app`
//! builds from. Files named by the configuration (etcd certificates, the etcd password file)
//! are read here, once, so nothing below `app` reads files for settings or the environment.
//! Defaults are named constants, used by both the command line and `Default` impls.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use crate::check::DEFAULT_MAX_TOKEN_BYTES;
pub use crate::grpc::{
    DEFAULT_CLIENT_ID_HEADER, DEFAULT_REALM, DEFAULT_SCOPES_HEADER, DEFAULT_SUBJECT_HEADER,
};
pub use crate::token::dpop::{
    DEFAULT_IAT_WINDOW as DEFAULT_DPOP_IAT_WINDOW,
    DEFAULT_REPLAY_CAPACITY as DEFAULT_DPOP_REPLAY_CAPACITY,
};

use crate::check::CheckSettings;
pub use crate::grpc::tls::{TlsSettings, DEFAULT_TLS_RELOAD_INTERVAL};
use crate::grpc::ResponseSettings;
use crate::store::etcd::{EtcdSettings, EtcdTls};
use crate::telemetry::LogFormat;
use crate::token::dpop::DpopSettings;
pub use crate::token::introspect::{
    IntrospectionSettings, DEFAULT_INTROSPECTION_CACHE_TTL, DEFAULT_INTROSPECTION_TIMEOUT,
};
pub use crate::token::remote::{
    RemoteKeySettings, DEFAULT_FETCH_TIMEOUT, DEFAULT_KID_MISS_INTERVAL, DEFAULT_KID_MISS_WAIT,
    DEFAULT_REFRESH_MAX, DEFAULT_REFRESH_MIN,
};

/// gRPC listen address (ext_authz and grpc.health.v1).
pub const DEFAULT_LISTEN: SocketAddr = loopback(9191);
/// Admin HTTP listen address.
pub const DEFAULT_ADMIN_LISTEN: SocketAddr = loopback(9192);
/// Longest time verified claims are cached (never beyond `exp`).
pub const DEFAULT_CACHE_MAX_TTL: Duration = Duration::from_secs(300);
/// Most verified tokens kept in the cache.
pub const DEFAULT_CACHE_CAPACITY: u64 = 100_000;
/// Fallback re-read interval of a rules file.
pub const DEFAULT_RULES_POLL_INTERVAL: Duration = Duration::from_secs(2);
/// Time in-flight checks get to finish after SIGTERM/SIGINT.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// etcd key prefix holding the rules.
pub const DEFAULT_ETCD_PREFIX: &str = "/scopegate/";
/// Timeout for connecting to etcd and for each request.
pub const DEFAULT_ETCD_TIMEOUT: Duration = Duration::from_secs(5);
/// How long readiness waits, from start-up, for every remote-key issuer to have keys.
pub const DEFAULT_KEYS_READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a configuration is not usable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    ReadFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
}

/// Where the rules come from.
#[derive(Debug, Clone)]
pub enum SourceConfig {
    /// The embedded default: a rules file, hot-reloaded.
    File {
        path: PathBuf,
        poll_interval: Duration,
    },
    /// Production: an etcd prefix, watched.
    Etcd(EtcdSettings),
}

/// The verified-claims cache.
#[derive(Debug, Clone, Copy)]
pub struct CacheSettings {
    pub capacity: u64,
    pub max_ttl: Duration,
}

impl Default for CacheSettings {
    fn default() -> Self {
        CacheSettings {
            capacity: DEFAULT_CACHE_CAPACITY,
            max_ttl: DEFAULT_CACHE_MAX_TTL,
        }
    }
}

/// Everything `scopegate serve` needs, validated.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    /// TLS on the gRPC listener (`None`: plain text, e.g. loopback in a sidecar). The files are
    /// read by `grpc::tls` when the app starts and again whenever they change.
    pub tls: Option<TlsSettings>,
    pub source: SourceConfig,
    pub check: CheckSettings,
    pub response: ResponseSettings,
    pub cache: CacheSettings,
    pub log_format: LogFormat,
    /// Runtime worker threads; `None`: one per CPU.
    pub worker_threads: Option<usize>,
    pub drain_timeout: Duration,
    /// Remote keys (JWKS fetched from identity providers) and introspection requests.
    pub keys: RemoteKeySettings,
    /// Readiness waits this long for every remote-key issuer to have keys; after it, ready with
    /// the issuers that have them (the others answer `unknown_key`).
    pub keys_ready_timeout: Duration,
}

impl Config {
    /// A configuration with every default, serving `source`.
    pub fn new(source: SourceConfig) -> Config {
        Config {
            listen: DEFAULT_LISTEN,
            admin_listen: DEFAULT_ADMIN_LISTEN,
            tls: None,
            source,
            check: CheckSettings::default(),
            response: ResponseSettings::default(),
            cache: CacheSettings::default(),
            log_format: LogFormat::Json,
            worker_threads: None,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            keys: RemoteKeySettings::default(),
            keys_ready_timeout: DEFAULT_KEYS_READY_TIMEOUT,
        }
    }
}

/// Remote-key defaults from the flags: the refresh bounds must be ordered and positive.
pub fn remote_key_settings(settings: RemoteKeySettings) -> Result<RemoteKeySettings, ConfigError> {
    if settings.refresh_min < Duration::from_secs(1) {
        return Err(ConfigError::Invalid(
            "--jwks-refresh-min must be at least 1s".into(),
        ));
    }
    if settings.refresh_min > settings.refresh_max {
        return Err(ConfigError::Invalid(
            "--jwks-refresh-min must not exceed --jwks-refresh-max".into(),
        ));
    }
    let zero = [
        ("--idp-timeout", settings.fetch_timeout),
        ("--introspection-timeout", settings.introspection_timeout),
    ];
    if let Some((flag, _)) = zero.iter().find(|(_, d)| d.is_zero()) {
        return Err(ConfigError::Invalid(format!("{flag} must be positive")));
    }
    Ok(settings)
}

const fn loopback(port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port))
}

/// What the command line says about etcd, before files are read.
#[derive(Debug, Clone, Default)]
pub struct EtcdInput {
    pub endpoints: Vec<String>,
    pub prefix: String,
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub user: Option<String>,
    pub password_file: Option<PathBuf>,
    /// From the environment (`SCOPEGATE_ETCD_PASSWORD`), never from an argument.
    pub password: Option<String>,
    pub timeout: Duration,
}

impl EtcdInput {
    /// Validates the prefix and reads certificates and the password.
    pub fn into_settings(self) -> Result<EtcdSettings, ConfigError> {
        if !self.prefix.starts_with('/') || !self.prefix.ends_with('/') {
            return Err(ConfigError::Invalid(
                "--etcd-prefix must start and end with '/'".into(),
            ));
        }
        if self.endpoints.iter().any(|e| e.trim().is_empty()) {
            return Err(ConfigError::Invalid(
                "--etcd-endpoints has an empty entry".into(),
            ));
        }
        let mut settings = EtcdSettings::new(self.endpoints, &self.prefix);
        settings.timeout = self.timeout;
        if self.ca_file.is_some() || self.cert_file.is_some() {
            settings.tls = Some(EtcdTls {
                ca_pem: self.ca_file.as_deref().map(read).transpose()?,
                identity_pem: match (&self.cert_file, &self.key_file) {
                    (Some(cert), Some(key)) => Some((read(cert)?, read(key)?)),
                    (None, None) => None,
                    _ => {
                        return Err(ConfigError::Invalid(
                            "--etcd-cert-file and --etcd-key-file go together".into(),
                        ))
                    }
                },
            });
        }
        if let Some(user) = self.user {
            let password = match (&self.password_file, self.password) {
                (Some(file), _) => String::from_utf8_lossy(&read(file)?).trim_end().to_string(),
                (None, Some(password)) => password,
                (None, None) => {
                    return Err(ConfigError::Invalid(
                        "--etcd-user needs --etcd-password-file or SCOPEGATE_ETCD_PASSWORD".into(),
                    ))
                }
            };
            settings.user = Some((user, password));
        }
        Ok(settings)
    }
}

/// The listener's TLS from the flags: certificate and key go together; a client CA needs them.
pub fn listener_tls(
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    client_ca_file: Option<PathBuf>,
    reload_interval: Duration,
) -> Result<Option<TlsSettings>, ConfigError> {
    match (cert_file, key_file) {
        (Some(cert_file), Some(key_file)) => Ok(Some(TlsSettings {
            cert_file,
            key_file,
            client_ca_file,
            reload_interval,
        })),
        (None, None) if client_ca_file.is_none() => Ok(None),
        (None, None) => Err(ConfigError::Invalid(
            "--tls-client-ca-file needs --tls-cert-file and --tls-key-file".into(),
        )),
        _ => Err(ConfigError::Invalid(
            "--tls-cert-file and --tls-key-file go together".into(),
        )),
    }
}

/// Largest DPoP `iat` window accepted: a longer one keeps stolen proofs usable longer.
pub const MAX_DPOP_IAT_WINDOW: Duration = Duration::from_secs(300);

/// DPoP settings from the flags: a window of 1 s to [`MAX_DPOP_IAT_WINDOW`].
pub fn dpop_settings(
    iat_window: Duration,
    replay_capacity: u64,
) -> Result<DpopSettings, ConfigError> {
    if iat_window < Duration::from_secs(1) || iat_window > MAX_DPOP_IAT_WINDOW {
        return Err(ConfigError::Invalid(
            "--dpop-iat-window must be between 1s and 5m".into(),
        ));
    }
    Ok(DpopSettings {
        iat_window,
        replay_capacity,
    })
}

/// Header names must be valid, lower-case HTTP field names (Envoy compares them lower-case).
pub fn header_name(flag: &str, name: &str) -> Result<String, ConfigError> {
    let valid = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if valid {
        Ok(name.to_ascii_lowercase())
    } else {
        Err(ConfigError::Invalid(format!(
            "{flag} {name:?} is not an HTTP header name"
        )))
    }
}

fn read(path: &Path) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path).map_err(|source| ConfigError::ReadFile {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etcd_input_is_validated() {
        let input = |prefix: &str| EtcdInput {
            endpoints: vec!["http://127.0.0.1:2379".into()],
            prefix: prefix.into(),
            timeout: DEFAULT_ETCD_TIMEOUT,
            ..EtcdInput::default()
        };
        assert!(input("/scopegate/").into_settings().is_ok());
        for bad in ["scopegate/", "/scopegate", ""] {
            let err = input(bad).into_settings().unwrap_err().to_string();
            assert_eq!(err, "--etcd-prefix must start and end with '/'", "{bad}");
        }
        let mut with_user = input("/s/");
        with_user.user = Some("u".into());
        let err = with_user.clone().into_settings().unwrap_err().to_string();
        assert!(err.contains("SCOPEGATE_ETCD_PASSWORD"), "{err}");
        with_user.password = Some("pw".into());
        let settings = with_user.into_settings().unwrap();
        assert_eq!(settings.user, Some(("u".into(), "pw".into())));
    }

    #[test]
    fn header_names_are_checked_and_lower_cased() {
        assert_eq!(header_name("--x", "X-Sub").unwrap(), "x-sub");
        for bad in ["", "a b", "a:b", "a\nb"] {
            assert!(header_name("--x", bad).is_err(), "{bad:?}");
        }
    }
}
