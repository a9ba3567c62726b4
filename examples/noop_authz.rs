//! A no-op Envoy ext_authz gRPC server that allows every request: the protocol floor that
//! scopegate is measured against (`scripts/bench-envoy.sh`). Same transport settings as
//! scopegate's server (tonic, TCP_NODELAY, HTTP/2 keep-alive) and the same allocator
//! (mimalloc), no policy, no logging.
//!
//! `--floor` adds the least work that scopegate's contract asks of every check, done by
//! scopegate's own functions: the SHA-256 of the bearer token (the claims cache's key, which a
//! forged token must not be able to collide with) and one decision-log line (every decision
//! is audited by default), JSON to stdout through scopegate's log writer thread. It measures
//! what part of scopegate's cost over the no-op no implementation of the contract can avoid
//! (`scripts/bench-cpu.sh`, variant F).
//!
//! NEVER run this in front of anything real: it authorizes everything.
//!
//! ```text
//! cargo run --release --example noop_authz -- --listen 127.0.0.1:9193
//! ```
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::disallowed_methods,
    clippy::disallowed_types,
    reason = "tests, benchmarks and examples: a failed step stops them with its message, and they read their own environment"
)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use clap::Parser;
use envoy_types::ext_authz::v3::pb::{
    Authorization, AuthorizationServer, CheckRequest, CheckResponse, HeaderAppendAction,
};
use envoy_types::ext_authz::v3::{CheckResponseExt, OkHttpResponseBuilder};
use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value};
use scopegate::authz::{Decision, Verdict};
use scopegate::check::DecisionId;
use scopegate::reason::Reason;
use scopegate::rules::Route;
use scopegate::telemetry::{DecisionLogMode, DecisionRecord, LogFormat};
use scopegate::token::Claims;
use tonic::{Request, Response, Status};

/// scopegate's allocator, so that the floor differs from scopegate by scopegate's work only.
#[global_allocator]
static ALLOCATOR: scopegate::allocator::Allocator = scopegate::allocator::Allocator;

#[derive(Parser)]
struct Args {
    /// gRPC listen address (loopback only).
    #[arg(long, default_value = "127.0.0.1:9193")]
    listen: SocketAddr,
    /// Answer with what scopegate answers on an allow (three identity headers overwritten and
    /// the dynamic metadata with its fields, fixed values), to measure Envoy's cost of that
    /// answer apart from scopegate's own work. Same as `--answer both`.
    #[arg(long, conflicts_with = "answer")]
    same_answer: bool,
    /// Which parts of scopegate's allow answer to send: none (bare OK), the identity headers,
    /// the dynamic metadata, or both.
    #[arg(long, value_enum, default_value_t = Answer::None)]
    answer: Answer,
    /// Per check, also hash the bearer token and write a decision-log line, as scopegate
    /// must (see the module doc).
    #[arg(long)]
    floor: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Answer {
    None,
    Headers,
    Metadata,
    Both,
}

struct AllowAll {
    answer: Answer,
    /// With `--floor`: the decision every log line reports (an allow, with claims).
    floor: Option<Decision>,
}

impl AllowAll {
    /// `--floor`'s work: the token's SHA-256 and the decision-log line.
    fn floor_work(&self, decision: &Decision, check: &CheckRequest) {
        let at = SystemTime::now();
        let started = Instant::now();
        let http = check
            .attributes
            .as_ref()
            .and_then(|a| a.request.as_ref())
            .and_then(|r| r.http.as_ref());
        let Some(http) = http else { return };
        let authorization = http.headers.get("authorization").map_or("", String::as_str);
        std::hint::black_box(scopegate::sha256::sha256(authorization.as_bytes()));
        let decision_id = DecisionId::random();
        scopegate::telemetry::log_decision(
            DecisionLogMode::All,
            &DecisionRecord {
                at,
                decision_id: &decision_id,
                decision,
                revision: Some(1),
                host: &http.host,
                method: &http.method,
                path: &http.path,
                elapsed: started.elapsed(),
            },
        );
    }
}

/// The allow that `--floor` logs: examples/rules.yaml's orders-read, alice's token.
fn floor_decision() -> Decision {
    Decision {
        verdict: Verdict::Allow {
            reason: Reason::Allowed,
            would_deny: None,
        },
        rule: Some(Arc::new(
            Route::from_json(
                "orders-read",
                &serde_json::json!({
                    "host": "api.example.com",
                    "path": "/orders/{id}",
                    "methods": ["GET", "HEAD"],
                    "require": {"all": ["orders:read"]},
                }),
            )
            .expect("a valid route"),
        )),
        claims: Some(Arc::new(Claims {
            iss: "https://idp.example".into(),
            sub: Some("alice".into()),
            client_id: Some("demo-client".into()),
            jti: None,
            iat: None,
            exp: i64::MAX,
            scopes: vec!["orders:read".into()],
            cnf: None,
        })),
    }
}

#[tonic::async_trait]
impl Authorization for AllowAll {
    async fn check(&self, check: Request<CheckRequest>) -> Result<Response<CheckResponse>, Status> {
        if let Some(decision) = &self.floor {
            self.floor_work(decision, check.get_ref());
        }
        let mut response = CheckResponse::with_status(Status::ok("allowed"));
        let mut ok = OkHttpResponseBuilder::new();
        if matches!(self.answer, Answer::Headers | Answer::Both) {
            for (name, value) in [
                ("x-scopegate-subject", "alice"),
                ("x-scopegate-client-id", "demo-client"),
                ("x-scopegate-scopes", "orders:read"),
            ] {
                ok.add_header(
                    name,
                    value,
                    Some(HeaderAppendAction::OverwriteIfExistsOrAdd),
                    false,
                );
            }
        }
        if matches!(self.answer, Answer::Metadata | Answer::Both) {
            response.dynamic_metadata = Some(scopegate_like_metadata());
        }
        response.set_http_response(ok);
        Ok(Response::new(response))
    }
}

fn scopegate_like_metadata() -> Struct {
    let text = |s: &str| Value {
        kind: Some(Kind::StringValue(s.to_string())),
    };
    let fields = [
        ("decision_id", text("0123456789abcdef0123456789abcdef")),
        ("decision", text("allow")),
        ("reason", text("allowed")),
        ("rule_id", text("orders-read")),
        (
            "revision",
            Value {
                kind: Some(Kind::NumberValue(1.0)),
            },
        ),
        ("subject", text("alice")),
        ("client_id", text("demo-client")),
    ];
    Struct {
        fields: fields
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    if !args.listen.ip().is_loopback() {
        return Err("noop_authz allows everything: it only listens on loopback".into());
    }
    eprintln!("noop_authz: allowing every Check on {}", args.listen);
    // Kept until exit: dropping it writes what is queued.
    let _log = if args.floor {
        Some(scopegate::telemetry::init_tracing(LogFormat::Json)?)
    } else {
        None
    };
    tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .add_service(AuthorizationServer::new(AllowAll {
            answer: if args.same_answer {
                Answer::Both
            } else {
                args.answer
            },
            floor: args.floor.then(floor_decision),
        }))
        .serve_with_shutdown(args.listen, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
