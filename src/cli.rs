//! Command-line interface (clap derive). Every `serve` flag can also be set through an
//! environment variable `SCOPEGATE_…`; secrets are only ever read from files or the environment
//! (a password given as a command-line argument is refused). [`ServeArgs::into_config`] turns
//! the flags into a validated [`Config`]: nothing below this module sees clap. The change
//! commands (`rules apply|get|history|diff|rollback`, `lockdown`, `audit`, `revocations`) have
//! their flags in [`changes`].

pub mod changes;
pub mod idp;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use humantime::Duration as HumanDuration;

use crate::check::CheckSettings;
use crate::config::{self, CacheSettings, Config, ConfigError, EtcdInput, SourceConfig};
use crate::grpc::{DynamicMetadata, ResponseSettings};
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

impl Cli {
    /// Parses `argv` (the program name first), refusing secrets given as arguments.
    pub fn try_parse_args<I, T>(argv: I) -> Result<Cli, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let matches = Cli::command().try_get_matches_from(argv)?;
        // Every command that reaches etcd (serve and the change commands) has the flag.
        let mut leaf = &matches;
        while let Some((_, sub)) = leaf.subcommand() {
            leaf = sub;
        }
        let given = leaf.try_get_raw("etcd_password").ok().flatten().is_some();
        if given && leaf.value_source("etcd_password") == Some(ValueSource::CommandLine) {
            return Err(Cli::command().error(
                clap::error::ErrorKind::ArgumentConflict,
                "the etcd password is never taken from the command line: \
                 use --etcd-password-file or SCOPEGATE_ETCD_PASSWORD",
            ));
        }
        Cli::from_arg_matches(&matches)
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve Envoy's ext_authz gRPC API.
    Serve(Box<ServeArgs>),
    /// Work with rules files and versioned rule sets on etcd.
    #[command(subcommand)]
    Rules(RulesCommand),
    /// Incident lockdown: tighten matching requests on every replica at once.
    #[command(subcommand)]
    Lockdown(changes::LockdownCommand),
    /// The tamper-evident trail of version records.
    #[command(subcommand)]
    Audit(changes::AuditCommand),
    /// Maintain revocations.
    #[command(subcommand)]
    Revocations(changes::RevocationsCommand),
}

#[derive(Debug, Subcommand)]
pub enum RulesCommand {
    /// Validate a rules file: print every error and exit non-zero if there is one.
    Validate {
        /// The rules file (YAML, or JSON by extension).
        file: PathBuf,
    },
    /// Write a rules file to etcd in ONE transaction, with a version record.
    Apply(Box<changes::ApplyArgs>),
    /// Print the prefix as a rules file, now or as it was at a revision.
    Get(changes::GetArgs),
    /// The versions (etcd revisions) of the rule set, newest first.
    History(changes::HistoryArgs),
    /// Key-by-key differences between two revisions, or a revision and a file.
    Diff(changes::DiffArgs),
    /// Restore every rule key exactly as it was at a revision, in one transaction.
    Rollback(changes::RollbackArgs),
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormatArg {
    Json,
    Text,
}

/// Which answers carry dynamic metadata for Envoy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DynamicMetadataArg {
    /// Every answer.
    All,
    /// Denials and dry-run would-be denials only.
    Deny,
    /// None.
    Off,
}

/// Which decisions are written to the decision log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DecisionLogArg {
    /// Every decision.
    All,
    /// Denials and dry-run would-be denials only.
    Deny,
    /// No decision log.
    Off,
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Rules file (YAML or JSON), watched and hot-reloaded. The embedded default source.
    #[arg(
        long,
        env = "SCOPEGATE_RULES",
        required_unless_present = "etcd_endpoints",
        conflicts_with = "etcd_endpoints"
    )]
    pub rules: Option<PathBuf>,

    /// gRPC listen address (ext_authz and grpc.health.v1).
    #[arg(long, env = "SCOPEGATE_LISTEN", default_value_t = config::DEFAULT_LISTEN)]
    pub listen: SocketAddr,

    /// Admin HTTP listen address (/metrics, /healthz, /readyz, /status).
    #[arg(long, env = "SCOPEGATE_ADMIN_LISTEN", default_value_t = config::DEFAULT_ADMIN_LISTEN)]
    pub admin_listen: SocketAddr,

    #[command(flatten)]
    pub tls: TlsArgs,

    /// Remove the client's Authorization header from allowed requests before the upstream.
    #[arg(long, env = "SCOPEGATE_STRIP_AUTHORIZATION")]
    pub strip_authorization: bool,

    /// Realm in WWW-Authenticate challenges.
    #[arg(long, env = "SCOPEGATE_REALM", default_value = config::DEFAULT_REALM)]
    pub realm: String,

    /// Refuse Authorization values with tokens larger than this many bytes, before parsing.
    #[arg(long, env = "SCOPEGATE_MAX_TOKEN_BYTES", default_value_t = config::DEFAULT_MAX_TOKEN_BYTES)]
    pub max_token_bytes: usize,

    /// Largest accepted distance between a DPoP proof's iat and now, either way (1s to 5m); proof
    /// jtis are remembered that long after their iat.
    #[arg(long, env = "SCOPEGATE_DPOP_IAT_WINDOW", default_value_t = config::DEFAULT_DPOP_IAT_WINDOW.into())]
    pub dpop_iat_window: HumanDuration,

    /// DPoP proof jtis remembered per replica (replay detection); must cover two iat windows of
    /// DPoP requests.
    #[arg(long, env = "SCOPEGATE_DPOP_REPLAY_CAPACITY", default_value_t = config::DEFAULT_DPOP_REPLAY_CAPACITY,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub dpop_replay_capacity: u64,

    /// Longest time a verified token's claims are cached (never beyond the token's exp; 0 disables).
    #[arg(long, env = "SCOPEGATE_CACHE_MAX_TTL", default_value_t = config::DEFAULT_CACHE_MAX_TTL.into())]
    pub cache_max_ttl: HumanDuration,

    /// Most verified tokens kept in the cache.
    #[arg(long, env = "SCOPEGATE_CACHE_CAPACITY", default_value_t = config::DEFAULT_CACHE_CAPACITY)]
    pub cache_capacity: u64,

    /// Deny non-public routes (503, reason snapshot_stale) when the rules were last confirmed
    /// current longer ago than this. Off by default.
    #[arg(long, env = "SCOPEGATE_MAX_STALENESS")]
    pub max_staleness: Option<HumanDuration>,

    /// Which decisions go to the decision log.
    #[arg(
        long,
        env = "SCOPEGATE_DECISION_LOG",
        value_enum,
        default_value = "all"
    )]
    pub decision_log: DecisionLogArg,

    /// Which answers carry dynamic_metadata (decision, reason, rule_id, decision_id, revision,
    /// subject, client_id) for Envoy's access log: `all` costs Envoy a little on every allowed
    /// request; `deny` sends it on denials and dry-run would-be denials.
    #[arg(
        long,
        env = "SCOPEGATE_DYNAMIC_METADATA",
        value_enum,
        default_value = "deny"
    )]
    pub dynamic_metadata: DynamicMetadataArg,

    /// Log format.
    #[arg(long, env = "SCOPEGATE_LOG_FORMAT", value_enum, default_value = "json")]
    pub log_format: LogFormatArg,

    /// Upstream header carrying the token's subject.
    #[arg(
        long,
        env = "SCOPEGATE_SUBJECT_HEADER",
        default_value = config::DEFAULT_SUBJECT_HEADER
    )]
    pub subject_header: String,

    /// Upstream header carrying the token's client id.
    #[arg(
        long,
        env = "SCOPEGATE_CLIENT_ID_HEADER",
        default_value = config::DEFAULT_CLIENT_ID_HEADER
    )]
    pub client_id_header: String,

    /// Upstream header carrying the token's scopes (space-separated).
    #[arg(
        long,
        env = "SCOPEGATE_SCOPES_HEADER",
        default_value = config::DEFAULT_SCOPES_HEADER
    )]
    pub scopes_header: String,

    /// Fallback re-read interval of the rules file (changes are normally seen at once).
    #[arg(long, env = "SCOPEGATE_RULES_POLL_INTERVAL", default_value_t = config::DEFAULT_RULES_POLL_INTERVAL.into())]
    pub rules_poll_interval: HumanDuration,

    /// Runtime worker threads (default: one per CPU). 1 suits a sidecar with a 1-CPU limit.
    #[arg(long, env = "SCOPEGATE_WORKER_THREADS", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub worker_threads: Option<u16>,

    /// How long in-flight checks may take to finish after SIGTERM/SIGINT.
    #[arg(long, env = "SCOPEGATE_DRAIN_TIMEOUT", default_value_t = config::DEFAULT_DRAIN_TIMEOUT.into())]
    pub drain_timeout: HumanDuration,

    #[command(flatten)]
    pub etcd: EtcdArgs,

    #[command(flatten)]
    pub idp: idp::IdpArgs,
}

/// TLS on the gRPC listener (the admin listener stays plain HTTP). The files are reloaded when
/// they change (cert-manager renewals, Secret symlink swaps); open connections are kept.
#[derive(Debug, Clone, Args, Default)]
pub struct TlsArgs {
    /// Serve gRPC over TLS with this certificate chain (PEM, leaf first).
    #[arg(long, env = "SCOPEGATE_TLS_CERT_FILE", requires = "tls_key_file")]
    pub tls_cert_file: Option<PathBuf>,

    /// The certificate's private key (PEM).
    #[arg(long, env = "SCOPEGATE_TLS_KEY_FILE", requires = "tls_cert_file")]
    pub tls_key_file: Option<PathBuf>,

    /// Require client certificates issued by these CAs (PEM), so that only Envoy can ask.
    #[arg(long, env = "SCOPEGATE_TLS_CLIENT_CA_FILE", requires = "tls_cert_file")]
    pub tls_client_ca_file: Option<PathBuf>,

    /// Fallback re-read interval of the TLS files (changes are normally seen at once).
    #[arg(long, env = "SCOPEGATE_TLS_RELOAD_INTERVAL", default_value_t = config::DEFAULT_TLS_RELOAD_INTERVAL.into())]
    pub tls_reload_interval: HumanDuration,
}

/// etcd source settings (production). Passwords come from a file or the environment only.
#[derive(Debug, Clone, Args, Default)]
pub struct EtcdArgs {
    /// etcd endpoints, comma-separated (e.g. http://127.0.0.1:2379). Selects the etcd source.
    #[arg(
        long = "etcd-endpoints",
        env = "SCOPEGATE_ETCD_ENDPOINTS",
        value_delimiter = ','
    )]
    pub etcd_endpoints: Vec<String>,

    /// Key prefix holding the rules.
    #[arg(long, env = "SCOPEGATE_ETCD_PREFIX", default_value = config::DEFAULT_ETCD_PREFIX)]
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
    #[arg(
        long,
        env = "SCOPEGATE_ETCD_PASSWORD_FILE",
        conflicts_with = "etcd_password"
    )]
    pub etcd_password_file: Option<PathBuf>,

    /// The etcd password, from the environment only (refused as an argument).
    #[arg(
        long,
        env = "SCOPEGATE_ETCD_PASSWORD",
        hide = true,
        hide_env_values = true
    )]
    pub etcd_password: Option<String>,

    /// Timeout for connecting to etcd and for each request.
    #[arg(long, env = "SCOPEGATE_ETCD_TIMEOUT", default_value_t = config::DEFAULT_ETCD_TIMEOUT.into())]
    pub etcd_timeout: HumanDuration,
}

/// A rules file is confirmed current each time it is re-read (every `poll`): with a staleness
/// bound, the health bound ([`crate::store::health_bound`], two thirds of it) must leave room for
/// two re-reads, or the replica would leave rotation between re-reads of an unchanged file.
fn check_file_staleness(
    poll: Duration,
    max_staleness: Option<Duration>,
) -> Result<(), ConfigError> {
    match max_staleness {
        Some(max) if crate::store::health_bound(max) < poll * 2 => {
            Err(ConfigError::Invalid(format!(
                "--max-staleness {} is too short for --rules-poll-interval {}: a rules file is \
             confirmed current only when it is re-read, so give at least three poll intervals",
                humantime::format_duration(max),
                humantime::format_duration(poll),
            )))
        }
        _ => Ok(()),
    }
}

impl ServeArgs {
    /// The validated configuration these flags describe (files named by them are read here).
    pub fn into_config(self) -> Result<Config, ConfigError> {
        let source = if self.etcd.etcd_endpoints.is_empty() {
            let path = self.rules.ok_or_else(|| {
                ConfigError::Invalid(
                    "no rule source: give --rules FILE or --etcd-endpoints URL".into(),
                )
            })?;
            let poll_interval: Duration = self.rules_poll_interval.into();
            check_file_staleness(poll_interval, self.max_staleness.map(Duration::from))?;
            SourceConfig::File {
                path,
                poll_interval,
            }
        } else {
            SourceConfig::Etcd(self.etcd.into_input().into_settings()?)
        };
        Ok(Config {
            listen: self.listen,
            admin_listen: self.admin_listen,
            tls: config::listener_tls(
                self.tls.tls_cert_file,
                self.tls.tls_key_file,
                self.tls.tls_client_ca_file,
                self.tls.tls_reload_interval.into(),
            )?,
            source,
            check: CheckSettings {
                max_token_bytes: self.max_token_bytes,
                max_staleness: self.max_staleness.map(Duration::from),
                decision_log: match self.decision_log {
                    DecisionLogArg::All => DecisionLogMode::All,
                    DecisionLogArg::Deny => DecisionLogMode::Deny,
                    DecisionLogArg::Off => DecisionLogMode::Off,
                },
                dpop: config::dpop_settings(
                    self.dpop_iat_window.into(),
                    self.dpop_replay_capacity,
                )?,
                introspection: self.idp.introspection(),
            },
            response: ResponseSettings {
                realm: self.realm,
                subject_header: config::header_name("--subject-header", &self.subject_header)?,
                client_id_header: config::header_name(
                    "--client-id-header",
                    &self.client_id_header,
                )?,
                scopes_header: config::header_name("--scopes-header", &self.scopes_header)?,
                strip_authorization: self.strip_authorization,
                dynamic_metadata: match self.dynamic_metadata {
                    DynamicMetadataArg::All => DynamicMetadata::All,
                    DynamicMetadataArg::Deny => DynamicMetadata::Deny,
                    DynamicMetadataArg::Off => DynamicMetadata::Off,
                },
            },
            cache: CacheSettings {
                capacity: self.cache_capacity,
                max_ttl: self.cache_max_ttl.into(),
            },
            log_format: match self.log_format {
                LogFormatArg::Json => LogFormat::Json,
                LogFormatArg::Text => LogFormat::Text,
            },
            worker_threads: self.worker_threads.map(usize::from),
            drain_timeout: self.drain_timeout.into(),
            keys: self.idp.keys()?,
            keys_ready_timeout: self.idp.keys_ready_timeout.into(),
        })
    }
}

impl EtcdArgs {
    fn into_input(self) -> EtcdInput {
        EtcdInput {
            endpoints: self.etcd_endpoints,
            prefix: self.etcd_prefix,
            ca_file: self.etcd_ca_file,
            cert_file: self.etcd_cert_file,
            key_file: self.etcd_key_file,
            user: self.etcd_user,
            password_file: self.etcd_password_file,
            password: self.etcd_password,
            timeout: self.etcd_timeout.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `scopegate serve ARGV…` parsed and turned into the configuration, as the binary does.
    pub(in crate::cli) fn serve(argv: &[&str]) -> Result<Config, String> {
        let mut full = vec!["scopegate", "serve"];
        full.extend_from_slice(argv);
        let cli = Cli::try_parse_args(full).map_err(|e| e.to_string())?;
        let Command::Serve(args) = cli.command else {
            return Err("not serve".into());
        };
        args.into_config().map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_come_from_config_constants() {
        let config = serve(&["--rules", "r.yaml"]).unwrap();
        assert_eq!(config.listen, config::DEFAULT_LISTEN);
        assert_eq!(
            config.check.max_token_bytes,
            config::DEFAULT_MAX_TOKEN_BYTES
        );
        assert_eq!(config.cache.max_ttl, config::DEFAULT_CACHE_MAX_TTL);
        assert_eq!(config.drain_timeout, config::DEFAULT_DRAIN_TIMEOUT);
        assert_eq!(
            config.response.subject_header,
            config::DEFAULT_SUBJECT_HEADER
        );
    }

    #[test]
    fn a_staleness_bound_shorter_than_three_file_re_reads_is_refused() {
        let err = serve(&["--rules", "r.yaml", "--max-staleness", "5s"]).unwrap_err();
        assert!(err.contains("--max-staleness 5s is too short"), "{err}");
        assert!(serve(&["--rules", "r.yaml", "--max-staleness", "6s"]).is_ok());
        let fast = ["--rules-poll-interval", "200ms", "--max-staleness", "1s"];
        assert!(serve(&[&["--rules", "r.yaml"], &fast[..]].concat()).is_ok());
        // etcd confirms on its own schedule (progress notifications): not this check's business.
        let etcd = [
            "--etcd-endpoints",
            "http://127.0.0.1:2379",
            "--max-staleness",
            "1s",
        ];
        assert!(serve(&etcd).is_ok());
    }

    #[test]
    fn a_password_argument_is_refused() {
        let err = serve(&[
            "--etcd-endpoints",
            "http://127.0.0.1:2379",
            "--etcd-user",
            "u",
            "--etcd-password",
            "secret",
        ])
        .unwrap_err();
        assert!(err.contains("never taken from the command line"), "{err}");
        assert!(
            !err.contains("secret"),
            "the refused value is not echoed: {err}"
        );
    }

    #[test]
    fn bad_header_names_are_refused() {
        let err = serve(&["--rules", "r", "--scopes-header", "x scopes"]).unwrap_err();
        assert!(err.contains("--scopes-header"), "{err}");
    }
}
