//! Command-line interface (clap derive). Every `serve` flag can also be set through an
//! environment variable `SCOPEGATE_…`; secrets are only ever read from files or the environment.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::telemetry::{DecisionLogMode, LogFormat};

#[derive(Debug, Parser)]
#[command(
    name = "scopegate",
    version,
    about = "Envoy ext_authz server for OAuth 2.0 JWT scopes"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve Envoy's ext_authz gRPC API.
    Serve(Box<ServeArgs>),
    /// Work with rules files.
    #[command(subcommand)]
    Rules(RulesCommand),
}

#[derive(Debug, Subcommand)]
pub enum RulesCommand {
    /// Validate a rules file: print every error and exit non-zero if there is one.
    Validate {
        /// The rules file (YAML, or JSON by extension).
        file: PathBuf,
    },
}

fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| e.to_string())
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Rules file (YAML or JSON), watched and hot-reloaded. The embedded default source.
    #[arg(
        long,
        env = "SCOPEGATE_RULES",
        required_unless_present = "etcd_endpoints"
    )]
    pub rules: Option<PathBuf>,

    /// gRPC listen address (ext_authz and grpc.health.v1).
    #[arg(long, env = "SCOPEGATE_LISTEN", default_value = "127.0.0.1:9191")]
    pub listen: SocketAddr,

    /// Admin HTTP listen address (/metrics, /healthz, /readyz, /status).
    #[arg(long, env = "SCOPEGATE_ADMIN_LISTEN", default_value = "127.0.0.1:9192")]
    pub admin_listen: SocketAddr,

    /// Realm in WWW-Authenticate challenges.
    #[arg(long, env = "SCOPEGATE_REALM", default_value = "scopegate")]
    pub realm: String,

    /// Refuse Authorization values with tokens larger than this many bytes, before parsing.
    #[arg(long, env = "SCOPEGATE_MAX_TOKEN_BYTES", default_value_t = 8192)]
    pub max_token_bytes: usize,

    /// Longest time a verified token's claims are cached (never beyond the token's exp; 0 disables).
    #[arg(long, env = "SCOPEGATE_CACHE_MAX_TTL", default_value = "5m", value_parser = duration)]
    pub cache_max_ttl: Duration,

    /// Most verified tokens kept in the cache.
    #[arg(long, env = "SCOPEGATE_CACHE_CAPACITY", default_value_t = 100_000)]
    pub cache_capacity: u64,

    /// Deny non-public routes (503, reason snapshot_stale) when the rules were last confirmed
    /// current longer ago than this. Off by default.
    #[arg(long, env = "SCOPEGATE_MAX_STALENESS", value_parser = duration)]
    pub max_staleness: Option<Duration>,

    /// Which decisions go to the decision log.
    #[arg(
        long,
        env = "SCOPEGATE_DECISION_LOG",
        value_enum,
        default_value = "all"
    )]
    pub decision_log: DecisionLogMode,

    /// Log format.
    #[arg(long, env = "SCOPEGATE_LOG_FORMAT", value_enum, default_value = "json")]
    pub log_format: LogFormat,

    /// Upstream header carrying the token's subject.
    #[arg(
        long,
        env = "SCOPEGATE_SUBJECT_HEADER",
        default_value = "x-scopegate-subject"
    )]
    pub subject_header: String,

    /// Upstream header carrying the token's client id.
    #[arg(
        long,
        env = "SCOPEGATE_CLIENT_ID_HEADER",
        default_value = "x-scopegate-client-id"
    )]
    pub client_id_header: String,

    /// Upstream header carrying the token's scopes (space-separated).
    #[arg(
        long,
        env = "SCOPEGATE_SCOPES_HEADER",
        default_value = "x-scopegate-scopes"
    )]
    pub scopes_header: String,

    /// Fallback re-read interval of the rules file (changes are normally seen at once).
    #[arg(long, env = "SCOPEGATE_RULES_POLL_INTERVAL", default_value = "2s", value_parser = duration)]
    pub rules_poll_interval: Duration,

    /// Runtime worker threads (default: one per CPU). 1 suits a sidecar with a 1-CPU limit.
    #[arg(long, env = "SCOPEGATE_WORKER_THREADS", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub worker_threads: Option<u16>,

    /// How long in-flight checks may take to finish after SIGTERM/SIGINT.
    #[arg(long, env = "SCOPEGATE_DRAIN_TIMEOUT", default_value = "10s", value_parser = duration)]
    pub drain_timeout: Duration,

    #[command(flatten)]
    pub etcd: EtcdArgs,
}

/// etcd source settings (production). Passwords come from a file or the environment only.
#[derive(Debug, Clone, Args, Default)]
pub struct EtcdArgs {
    /// etcd endpoints, comma-separated (e.g. http://127.0.0.1:2379). Selects the etcd source.
    #[arg(
        long = "etcd-endpoints",
        env = "SCOPEGATE_ETCD_ENDPOINTS",
        value_delimiter = ',',
        conflicts_with = "rules"
    )]
    pub etcd_endpoints: Vec<String>,

    /// Key prefix holding the rules.
    #[arg(long, env = "SCOPEGATE_ETCD_PREFIX", default_value = "/scopegate/")]
    pub etcd_prefix: String,

    /// CA certificate (PEM) to verify etcd's server certificate; enables TLS.
    #[arg(long, env = "SCOPEGATE_ETCD_CA_FILE")]
    pub etcd_ca_file: Option<PathBuf>,

    /// Client certificate (PEM) for mutual TLS with etcd.
    #[arg(long, env = "SCOPEGATE_ETCD_CERT_FILE", requires = "etcd_key_file")]
    pub etcd_cert_file: Option<PathBuf>,

    /// Client private key (PEM) for mutual TLS with etcd.
    #[arg(long, env = "SCOPEGATE_ETCD_KEY_FILE", requires = "etcd_cert_file")]
    pub etcd_key_file: Option<PathBuf>,

    /// etcd user name (password from --etcd-password-file or SCOPEGATE_ETCD_PASSWORD).
    #[arg(long, env = "SCOPEGATE_ETCD_USER")]
    pub etcd_user: Option<String>,

    /// File holding the etcd password.
    #[arg(long, env = "SCOPEGATE_ETCD_PASSWORD_FILE")]
    pub etcd_password_file: Option<PathBuf>,

    /// Timeout for connecting to etcd and for each request.
    #[arg(long, env = "SCOPEGATE_ETCD_TIMEOUT", default_value = "5s", value_parser = duration)]
    pub etcd_timeout: Duration,
}
