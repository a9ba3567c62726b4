//! The command line of the change-management commands (`rules apply|get|history|diff|rollback`,
//! `lockdown`, `audit verify`, `revocations gc`): they reach etcd with the same flags and
//! environment as `serve` ([`EtcdArgs`]), print for humans or (`--output json`) for scripts.

use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};
use humantime::Duration as HumanDuration;

use super::EtcdArgs;
use crate::config::ConfigError;
use crate::store::etcd::EtcdSettings;

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum OutputArg {
    /// For people.
    #[default]
    Text,
    /// One JSON document on stdout (errors too: `{"error":{"code","message"}}`).
    Json,
}

/// etcd connection and output format, shared by every change command.
#[derive(Debug, Clone, Args)]
pub struct Common {
    #[command(flatten)]
    pub etcd: EtcdArgs,

    /// Output format.
    #[arg(long, env = "SCOPEGATE_OUTPUT", value_enum, default_value = "text")]
    pub output: OutputArg,
}

impl Common {
    /// The etcd settings (files named by the flags are read here).
    pub fn etcd_settings(&self) -> Result<EtcdSettings, ConfigError> {
        if self.etcd.etcd_endpoints.is_empty() {
            return Err(ConfigError::Invalid(
                "--etcd-endpoints (or SCOPEGATE_ETCD_ENDPOINTS) is required".into(),
            ));
        }
        self.etcd.clone().into_input().into_settings()
    }
}

/// Who makes a change, and why (written to the version record).
#[derive(Debug, Clone, Args)]
pub struct Authorship {
    /// Who makes the change (default: the OS user).
    #[arg(long, env = "SCOPEGATE_AUTHOR")]
    pub author: Option<String>,

    /// Why: kept in the version record and shown by `rules history`.
    #[arg(short, long)]
    pub message: Option<String>,
}

impl Authorship {
    /// The author: `--author`, else the OS user, else "unknown".
    pub fn author(&self) -> String {
        self.author.clone().unwrap_or_else(os_user)
    }
}

// The command line is where the environment is read (see clippy.toml).
#[allow(clippy::disallowed_methods)]
fn os_user() -> String {
    ["USER", "LOGNAME", "USERNAME"]
        .iter()
        .find_map(|name| std::env::var(name).ok().filter(|v| !v.is_empty()))
        .unwrap_or_else(|| "unknown".into())
}

#[derive(Debug, Clone, Args)]
pub struct ApplyArgs {
    /// The rules file (YAML, or JSON by extension), validated as `rules validate` does.
    pub file: PathBuf,

    /// Also delete rule keys the file does not have (and expired revocations). Never deletes
    /// the lockdown or a revocation still in force.
    #[arg(long)]
    pub prune: bool,

    /// Refuse (and write nothing) if anything under the prefix changed after this revision.
    #[arg(long)]
    pub expect_revision: Option<i64>,

    #[command(flatten)]
    pub who: Authorship,

    #[command(flatten)]
    pub common: Common,
}

/// Document format of `rules get`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FormatArg {
    Yaml,
    Json,
}

#[derive(Debug, Clone, Args)]
pub struct GetArgs {
    /// The prefix as it was at this revision (default: now).
    #[arg(long)]
    pub revision: Option<i64>,

    /// Document format.
    #[arg(long, value_enum, default_value = "yaml")]
    pub format: FormatArg,

    #[command(flatten)]
    pub etcd: EtcdArgs,
}

#[derive(Debug, Clone, Args)]
pub struct HistoryArgs {
    /// Only the revisions that changed this key (relative to the prefix, e.g. routes/orders).
    pub key: Option<String>,

    /// At most this many versions, newest first.
    #[arg(long)]
    pub limit: Option<usize>,

    #[command(flatten)]
    pub common: Common,
}

#[derive(Debug, Clone, Args)]
pub struct DiffArgs {
    /// Compare from this revision (default with --file: now).
    #[arg(long, required_unless_present = "file")]
    pub from: Option<i64>,

    /// Compare to this revision (default: now).
    #[arg(long, conflicts_with = "file")]
    pub to: Option<i64>,

    /// Compare with what `rules apply FILE` would write.
    #[arg(long)]
    pub file: Option<PathBuf>,

    /// With --file: as `rules apply --prune` would.
    #[arg(long, requires = "file")]
    pub prune: bool,

    #[command(flatten)]
    pub common: Common,
}

#[derive(Debug, Clone, Args)]
pub struct RollbackArgs {
    /// Restore every rule key exactly as it was at this revision.
    #[arg(long)]
    pub to_revision: i64,

    #[command(flatten)]
    pub who: Authorship,

    #[command(flatten)]
    pub common: Common,
}

#[derive(Debug, Subcommand)]
pub enum LockdownCommand {
    /// Tighten matching requests on every replica at once (403 `lockdown`).
    On(Box<LockdownOnArgs>),
    /// Lift the lockdown.
    Off(LockdownOffArgs),
    /// Show the lockdown in force, who set it and why.
    Status(Common),
}

#[derive(Debug, Clone, Args)]
pub struct LockdownOnArgs {
    /// Hosts covered (repeatable; `*.example.com` allowed).
    #[arg(long = "host")]
    pub hosts: Vec<String>,

    /// Methods covered (repeatable or comma-separated).
    #[arg(long = "method", value_delimiter = ',')]
    pub methods: Vec<String>,

    /// Route ids covered (repeatable).
    #[arg(long = "route")]
    pub routes: Vec<String>,

    /// Cover every request (required when no --host, --method or --route is given).
    #[arg(long, conflicts_with_all = ["hosts", "methods", "routes"])]
    pub all: bool,

    /// A token with this scope still passes, where its normal rule allows it.
    #[arg(long)]
    pub bypass_scope: Option<String>,

    /// Why (logged by every replica, shown by `lockdown status`).
    #[arg(long)]
    pub reason: String,

    /// Lift the lockdown by itself after this long (e.g. 2h).
    #[arg(long, conflicts_with = "expires_at")]
    pub expires_in: Option<HumanDuration>,

    /// Lift the lockdown by itself at this time (unix seconds).
    #[arg(long)]
    pub expires_at: Option<i64>,

    #[command(flatten)]
    pub who: Authorship,

    #[command(flatten)]
    pub common: Common,
}

#[derive(Debug, Clone, Args)]
pub struct LockdownOffArgs {
    #[command(flatten)]
    pub who: Authorship,

    #[command(flatten)]
    pub common: Common,
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check the version records' hash chain and digests against etcd's history.
    Verify(VerifyArgs),
}

#[derive(Debug, Clone, Args)]
pub struct VerifyArgs {
    /// Also fail on revocations changed without a version record.
    #[arg(long)]
    pub strict: bool,

    #[command(flatten)]
    pub common: Common,
}

#[derive(Debug, Subcommand)]
pub enum RevocationsCommand {
    /// Delete revocations whose `expires_at` has passed (they no longer apply).
    Gc(GcArgs),
}

#[derive(Debug, Clone, Args)]
pub struct GcArgs {
    /// Only list what would be deleted.
    #[arg(long)]
    pub dry_run: bool,

    #[command(flatten)]
    pub who: Authorship,

    #[command(flatten)]
    pub common: Common,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::super::{Cli, Command, RulesCommand};
    use super::*;

    fn parse(argv: &[&str]) -> Result<Command, String> {
        let mut full = vec!["scopegate"];
        full.extend_from_slice(argv);
        Cli::try_parse_args(full)
            .map(|cli| cli.command)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn every_subcommand_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn change_commands_share_the_etcd_flags_of_serve() {
        let Ok(Command::Rules(RulesCommand::Apply(args))) = parse(&[
            "rules",
            "apply",
            "r.yaml",
            "--etcd-endpoints",
            "http://a:2379,http://b:2379",
            "--etcd-prefix",
            "/p/",
            "--expect-revision",
            "7",
            "-m",
            "why",
        ]) else {
            panic!("not rules apply")
        };
        let settings = args.common.etcd_settings().unwrap();
        assert_eq!(settings.endpoints, ["http://a:2379", "http://b:2379"]);
        assert_eq!(settings.prefix, "/p/");
        assert_eq!(args.expect_revision, Some(7));
        assert_eq!(args.who.message.as_deref(), Some("why"));
        assert_eq!(args.common.output, OutputArg::Text);
    }

    #[test]
    fn a_password_argument_is_refused_by_every_command() {
        for argv in [
            &["rules", "history", "--etcd-password", "pw"][..],
            &["lockdown", "status", "--etcd-password", "pw"],
            &["audit", "verify", "--etcd-password", "pw"],
        ] {
            let err = parse(argv).map(|_| ()).unwrap_err();
            assert!(err.contains("never taken from the command line"), "{err}");
        }
    }

    #[test]
    fn endpoints_are_required_and_lockdown_flags_parse() {
        let Ok(Command::Lockdown(LockdownCommand::On(args))) = parse(&[
            "lockdown",
            "on",
            "--method",
            "POST,DELETE",
            "--host",
            "api.example.com",
            "--reason",
            "INC-1",
            "--expires-in",
            "2h",
        ]) else {
            panic!("not lockdown on")
        };
        assert_eq!(args.methods, ["POST", "DELETE"]);
        assert_eq!(args.expires_in.map(|d| d.as_secs()), Some(7200));
        let err = args.common.etcd_settings().unwrap_err().to_string();
        assert!(err.contains("--etcd-endpoints"), "{err}");
        assert!(parse(&["lockdown", "on", "--all", "--host", "h", "--reason", "x"]).is_err());
    }
}
