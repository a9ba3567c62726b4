//! Runs the subcommands other than `serve`: `rules validate|apply|get|history|diff|rollback`,
//! `lockdown on|off|status`, `audit verify` and `revocations gc`. Each prints a human summary,
//! or one JSON document with `--output json`, and exits non-zero on failure: 1 refused or
//! failed, 2 bad flags, 3 the prefix changed since the revision the change was based on (read
//! the diff and try again).

use std::future::Future;
use std::path::Path;
use std::process::ExitCode;

use serde::Serialize;
use serde_json::{json, Value};

use crate::changes::apply::{load_file, ApplyOptions};
use crate::changes::controls::LockdownSpec;
use crate::changes::history::History;
use crate::changes::verify::VerifyReport;
use crate::changes::{self, ChangeError, Meta, Outcome, RecordKind, Repo};
use crate::cli::changes::{
    ApplyArgs, AuditCommand, Authorship, Common, DiffArgs, FormatArg, GcArgs, GetArgs, HistoryArgs,
    LockdownCommand, LockdownOnArgs, OutputArg, RevocationsCommand, RollbackArgs,
};
use crate::cli::RulesCommand;
use crate::config::ConfigError;
use crate::rules::document::{self, Format};

/// Exit code when the prefix changed since the change's base revision.
pub const EXIT_CONFLICT: u8 = 3;
/// Exit code for unusable flags or settings.
pub const EXIT_USAGE: u8 = 2;

/// What a command reports: for people, and for scripts.
struct Report {
    text: String,
    json: Value,
    /// `false`: the command ran but found a failure (e.g. `audit verify`).
    success: bool,
}

impl Report {
    fn ok(text: String, json: impl Serialize) -> Report {
        Report {
            text,
            json: serde_json::to_value(json).unwrap_or(Value::Null),
            success: true,
        }
    }
}

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Change(#[from] ChangeError),
}

impl Failure {
    fn code(&self) -> &'static str {
        match self {
            Failure::Usage(_) | Failure::Config(_) => "usage",
            Failure::Change(e) => e.code(),
        }
    }

    fn exit_code(&self) -> ExitCode {
        match self {
            Failure::Usage(_) | Failure::Config(_) => ExitCode::from(EXIT_USAGE),
            Failure::Change(ChangeError::Conflict { .. }) => ExitCode::from(EXIT_CONFLICT),
            Failure::Change(_) => ExitCode::FAILURE,
        }
    }
}

/// `scopegate rules …`.
pub fn rules(command: RulesCommand) -> ExitCode {
    match command {
        RulesCommand::Validate { file } => validate(&file),
        RulesCommand::Apply(args) => run(args.common.output, apply(*args)),
        RulesCommand::Get(args) => run(OutputArg::Text, get(args)),
        RulesCommand::History(args) => run(args.common.output, history(args)),
        RulesCommand::Diff(args) => run(args.common.output, diff(args)),
        RulesCommand::Rollback(args) => run(args.common.output, rollback(args)),
    }
}

/// `scopegate lockdown …`.
pub fn lockdown(command: LockdownCommand) -> ExitCode {
    match command {
        LockdownCommand::On(args) => run(args.common.output, lockdown_on(*args)),
        LockdownCommand::Off(args) => {
            let meta = meta(RecordKind::Lockdown, &args.who, "lockdown lifted");
            run(args.common.output, lockdown_off(args.common, meta))
        }
        LockdownCommand::Status(common) => run(common.output, lockdown_status(common)),
    }
}

/// `scopegate audit …`.
pub fn audit(command: AuditCommand) -> ExitCode {
    let AuditCommand::Verify(args) = command;
    run(args.common.output, verify(args.common, args.strict))
}

/// `scopegate revocations …`.
pub fn revocations(command: RevocationsCommand) -> ExitCode {
    let RevocationsCommand::Gc(args) = command;
    run(args.common.output, gc(args))
}

/// Runs one command on a current-thread runtime and prints its report or failure.
fn run(output: OutputArg, command: impl Future<Output = Result<Report, Failure>>) -> ExitCode {
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Usage(format!("cannot start the runtime: {e}")))
        .and_then(|runtime| runtime.block_on(command));
    match (result, output) {
        (Ok(report), OutputArg::Text) => {
            print!("{}", report.text);
            exit(report.success)
        }
        (Ok(report), OutputArg::Json) => {
            println!("{}", pretty(&report.json));
            exit(report.success)
        }
        (Err(failure), output) => {
            if output == OutputArg::Json {
                let error =
                    json!({"error": {"code": failure.code(), "message": failure.to_string()}});
                println!("{}", pretty(&error));
            }
            eprintln!("scopegate: {failure}");
            failure.exit_code()
        }
    }
}

fn exit(success: bool) -> ExitCode {
    match success {
        true => ExitCode::SUCCESS,
        false => ExitCode::FAILURE,
    }
}

fn pretty(value: &Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_default()
}

async fn connect(common: &Common) -> Result<Repo, Failure> {
    Ok(Repo::connect(&common.etcd_settings()?).await?)
}

fn meta(kind: RecordKind, who: &Authorship, default_message: &str) -> Meta {
    Meta {
        kind,
        author: who.author(),
        message: who
            .message
            .clone()
            .unwrap_or_else(|| default_message.to_string()),
        rollback_to: None,
    }
}

fn validate(file: &Path) -> ExitCode {
    match document::load_file(file) {
        Ok(rules) => {
            println!("{}: ok ({})", file.display(), rules.summary());
            for (id, issuer) in &rules.issuers {
                for key in issuer.skipped_keys.iter().filter(|k| !k.is_expected()) {
                    println!("{}: issuers/{id}: skipped {key}", file.display());
                }
            }
            for (kept, refused) in crate::rules::matcher::case_collisions(rules.routes.values()) {
                println!(
                    "{}: routes/{kept} and routes/{refused}: paths differ only in letter case; \
                     requests spelled as routes/{refused} are refused (400), as a case-insensitive \
                     upstream would serve them from routes/{kept}",
                    file.display()
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

async fn apply(args: ApplyArgs) -> Result<Report, Failure> {
    // Validate before connecting: an invalid file fails the same way with or without etcd.
    let desired = load_file(&args.file)?;
    let mut repo = connect(&args.common).await?;
    let options = ApplyOptions {
        prune: args.prune,
        expect_revision: args.expect_revision,
    };
    let outcome = repo
        .apply(&desired, &options, meta(RecordKind::Apply, &args.who, ""))
        .await?;
    let what = format!("applied {}", args.file.display());
    Ok(Report::ok(describe_outcome(&what, &outcome), &outcome))
}

async fn rollback(args: RollbackArgs) -> Result<Report, Failure> {
    let mut repo = connect(&args.common).await?;
    let default = format!("rollback to revision {}", args.to_revision);
    let meta = meta(RecordKind::Rollback, &args.who, &default);
    let outcome = repo.rollback(args.to_revision, meta).await?;
    let what = format!("rolled back to revision {}", args.to_revision);
    let mut text = describe_outcome(&what, &outcome);
    text.push_str("revocations and the lockdown were left as they are\n");
    Ok(Report::ok(text, &outcome))
}

/// `applied FILE at revision R (version V): …` and the keys, or that nothing was written.
fn describe_outcome(what: &str, outcome: &Outcome) -> String {
    let Some(revision) = outcome.revision else {
        return format!(
            "nothing to change at revision {}: nothing was written\n",
            outcome.base_revision
        );
    };
    let mut text = format!(
        "{what} at revision {revision} (version {}): {} added, {} changed, {} deleted\n",
        outcome.version.unwrap_or(0),
        outcome.added.len(),
        outcome.changed.len(),
        outcome.deleted.len()
    );
    let groups = [
        ('+', &outcome.added),
        ('~', &outcome.changed),
        ('-', &outcome.deleted),
    ];
    for (sign, keys) in groups {
        for key in keys {
            text.push_str(&format!("  {sign} {key}\n"));
        }
    }
    text.push_str(&format!("rule-set digest {}\n", outcome.digest));
    text
}

async fn get(args: GetArgs) -> Result<Report, Failure> {
    let common = Common {
        etcd: args.etcd,
        output: OutputArg::Text,
    };
    let mut repo = connect(&common).await?;
    let state = repo.read(args.revision).await?;
    let (entries, not_json) = state.entries();
    let format = match args.format {
        FormatArg::Yaml => Format::Yaml,
        FormatArg::Json => Format::Json,
    };
    let (text, skipped) = document::render(&entries, format).map_err(Failure::Usage)?;
    for key in not_json.iter().chain(&skipped) {
        let why = match key.as_str() {
            "lockdown" => "managed by `scopegate lockdown`",
            _ => "not a rules-file entry",
        };
        eprintln!("scopegate: left out {}{key}: {why}", repo.prefix());
    }
    eprintln!(
        "scopegate: {} at revision {}",
        repo.prefix(),
        state.revision
    );
    Ok(Report::ok(text, Value::Null))
}

async fn history(args: HistoryArgs) -> Result<Report, Failure> {
    let mut repo = connect(&args.common).await?;
    let history = repo.history(args.key.as_deref(), args.limit).await?;
    Ok(Report::ok(describe_history(&history), &history))
}

fn describe_history(history: &History) -> String {
    let mut text = format!(
        "{:>9}  {:<20}  {:<14}  {:<14}  MESSAGE\n",
        "REVISION", "TIME", "AUTHOR", "KIND"
    );
    for version in &history.versions {
        let (time, author, kind, message) = match &version.record {
            Some(r) => (
                r.time.clone(),
                r.author.clone(),
                serde_json::to_value(r.kind)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default(),
                r.message.clone(),
            ),
            None => (
                "-".into(),
                "(unrecorded)".into(),
                "-".into(),
                "changed without a version record (plain etcdctl, or a lease expired)".into(),
            ),
        };
        text.push_str(&format!(
            "{:>9}  {time:<20}  {author:<14}  {kind:<14}  {message}\n",
            version.revision
        ));
        let changes: Vec<String> = version
            .changes
            .iter()
            .map(|c| format!("{} {}", c.action.sign(), c.key))
            .collect();
        text.push_str(&format!("{:>11}{}\n", "", changes.join("  ")));
    }
    text.push_str(&format!(
        "etcd keeps history from revision {}; older versions are listed from their records\n",
        history.oldest_revision
    ));
    text
}

async fn diff(args: DiffArgs) -> Result<Report, Failure> {
    let desired = args.file.as_deref().map(load_file).transpose()?;
    let mut repo = connect(&args.common).await?;
    let report = match (&desired, args.from) {
        (Some(desired), from) => {
            let options = ApplyOptions {
                prune: args.prune,
                expect_revision: from,
            };
            repo.diff_file(desired, &options).await?
        }
        (None, Some(from)) => repo.diff_revisions(from, args.to).await?,
        (None, None) => return Err(Failure::Usage("give --from REV or --file FILE".into())),
    };
    let to = match (&args.file, report.to_revision) {
        (Some(file), _) => format!("{} (as `rules apply` would write it)", file.display()),
        (None, revision) => format!("revision {}", revision.unwrap_or(0)),
    };
    let mut text = changes::diff::render(&report.changes);
    text.push_str(&format!(
        "{} key(s) differ between revision {} and {to}\n",
        report.changes.len(),
        report.from_revision
    ));
    Ok(Report::ok(text, &report))
}

async fn verify(common: Common, strict: bool) -> Result<Report, Failure> {
    let mut repo = connect(&common).await?;
    let report = repo.verify(strict).await?;
    Ok(Report {
        text: describe_verify(&report),
        success: report.ok,
        json: serde_json::to_value(&report).unwrap_or(Value::Null),
    })
}

fn describe_verify(report: &VerifyReport) -> String {
    let mut text = match report.problems.first() {
        None => format!(
            "audit verify: ok: {} version record(s), chain intact, {} digest(s) checked against \
             etcd's history (kept from revision {}), no unrecorded rule change\n",
            report.records, report.digests_checked, report.oldest_revision
        ),
        Some(first) => {
            let at = first
                .record
                .map_or(String::new(), |r| format!(", record {r}"));
            format!(
                "audit verify: FAILED at revision {}{at}: {}\n",
                first.revision, first.message
            )
        }
    };
    for problem in report.problems.iter().skip(1) {
        text.push_str(&format!(
            "  also at revision {}: {}\n",
            problem.revision, problem.message
        ));
    }
    for note in &report.notes {
        text.push_str(&format!("  note: {note}\n"));
    }
    text
}

async fn lockdown_on(args: LockdownOnArgs) -> Result<Report, Failure> {
    if !args.all && args.hosts.is_empty() && args.methods.is_empty() && args.routes.is_empty() {
        return Err(Failure::Usage(
            "say what to lock down: --host, --method and/or --route, or --all".into(),
        ));
    }
    let now = changes::now();
    let spec = LockdownSpec {
        hosts: args.hosts,
        methods: args.methods,
        routes: args.routes,
        bypass_scope: args.bypass_scope,
        reason: args.reason.clone(),
        expires_at: args
            .expires_at
            .or(args.expires_in.map(|d| now + d.as_secs() as i64)),
    };
    let value = spec.to_value(now)?;
    let mut repo = connect(&args.common).await?;
    let meta = meta(
        RecordKind::Lockdown,
        &args.who,
        &format!("lockdown: {}", args.reason),
    );
    let outcome = repo.lockdown_on(&value, meta).await?;
    let text = match outcome.revision {
        Some(revision) => format!(
            "lockdown on at revision {revision} (version {}): {}\n",
            outcome.version.unwrap_or(0),
            describe_lockdown(&value)
        ),
        None => format!(
            "this lockdown is already set: {}\n",
            describe_lockdown(&value)
        ),
    };
    Ok(Report::ok(
        text,
        json!({"outcome": outcome, "lockdown": value}),
    ))
}

async fn lockdown_off(common: Common, meta: Meta) -> Result<Report, Failure> {
    let mut repo = connect(&common).await?;
    let outcome = repo.lockdown_off(meta).await?;
    let text = match outcome.revision {
        Some(revision) => format!("lockdown off at revision {revision}\n"),
        None => "no lockdown is set: nothing was written\n".to_string(),
    };
    Ok(Report::ok(text, &outcome))
}

async fn lockdown_status(common: Common) -> Result<Report, Failure> {
    let mut repo = connect(&common).await?;
    let status = repo.lockdown_status(changes::now()).await?;
    let text = match (&status.lockdown, &status.problem) {
        _ if !status.on => format!("lockdown: off (revision {})\n", status.revision),
        (Some(value), None) => {
            let by = status
                .record
                .as_ref()
                .map_or(String::from(" (set without a version record)"), |r| {
                    format!(", set by {} at {}", r.author, r.time)
                });
            format!(
                "lockdown: ON since revision {}{by}: {}\n",
                status.since_revision.unwrap_or(0),
                describe_lockdown(value)
            )
        }
        (_, problem) => format!(
            "lockdown: set but NOT in force: {}\n",
            problem.as_deref().unwrap_or("invalid")
        ),
    };
    Ok(Report::ok(text, &status))
}

/// One line saying what a lockdown covers.
fn describe_lockdown(value: &Value) -> String {
    let list = |name: &str| -> String {
        value[name].as_array().map_or("any".into(), |items| {
            items
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        })
    };
    let bypass = value["bypass_scope"]
        .as_str()
        .unwrap_or("none (nobody passes)");
    let until = value["expires_at"]
        .as_i64()
        .map_or("until turned off".into(), |at| format!("until {at} (unix)"));
    format!(
        "methods {} on hosts {} (routes {}); bypass scope {bypass}; {until}; reason: {}",
        list("methods"),
        list("hosts"),
        list("routes"),
        value["reason"].as_str().unwrap_or("")
    )
}

async fn gc(args: GcArgs) -> Result<Report, Failure> {
    let mut repo = connect(&args.common).await?;
    let meta = meta(
        RecordKind::RevocationsGc,
        &args.who,
        "delete expired revocations",
    );
    let outcome = repo
        .gc_revocations(changes::now(), args.dry_run, meta)
        .await?;
    let mut text = match (outcome.revision, args.dry_run) {
        _ if outcome.deleted.is_empty() => "no expired revocations: nothing was written\n".into(),
        (_, true) => format!(
            "would delete {} expired revocation(s):\n",
            outcome.deleted.len()
        ),
        (revision, false) => format!(
            "deleted {} expired revocation(s) at revision {}:\n",
            outcome.deleted.len(),
            revision.unwrap_or(0)
        ),
    };
    for key in &outcome.deleted {
        text.push_str(&format!("  - {key}\n"));
    }
    Ok(Report::ok(text, &outcome))
}
