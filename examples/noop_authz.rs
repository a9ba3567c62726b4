//! A no-op Envoy ext_authz gRPC server that allows every request: the protocol floor that
//! scopegate is measured against (`scripts/bench-envoy.sh`). Same transport settings as
//! scopegate's server (tonic, TCP_NODELAY, HTTP/2 keep-alive) and the same allocator
//! (mimalloc), no policy, no logging.
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
use std::time::Duration;

use clap::Parser;
use envoy_types::ext_authz::v3::pb::{
    Authorization, AuthorizationServer, CheckRequest, CheckResponse, HeaderAppendAction,
};
use envoy_types::ext_authz::v3::{CheckResponseExt, OkHttpResponseBuilder};
use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value};
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
}

#[tonic::async_trait]
impl Authorization for AllowAll {
    async fn check(&self, _: Request<CheckRequest>) -> Result<Response<CheckResponse>, Status> {
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
    tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .add_service(AuthorizationServer::new(AllowAll {
            answer: if args.same_answer {
                Answer::Both
            } else {
                args.answer
            },
        }))
        .serve_with_shutdown(args.listen, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
