//! A no-op Envoy ext_authz gRPC server that allows every request: the protocol floor that
//! scopegate is measured against (`scripts/bench-envoy.sh`). Same transport settings as
//! scopegate's server (tonic, TCP_NODELAY, HTTP/2 keep-alive), no policy, no logging.
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
    reason = "tests, benchmarks and examples: a failed step stops them with its message, and they read their own environment"
)]

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use envoy_types::ext_authz::v3::pb::{
    Authorization, AuthorizationServer, CheckRequest, CheckResponse,
};
use envoy_types::ext_authz::v3::{CheckResponseExt, OkHttpResponseBuilder};
use tonic::{Request, Response, Status};

#[derive(Parser)]
struct Args {
    /// gRPC listen address (loopback only).
    #[arg(long, default_value = "127.0.0.1:9193")]
    listen: SocketAddr,
}

struct AllowAll;

#[tonic::async_trait]
impl Authorization for AllowAll {
    async fn check(&self, _: Request<CheckRequest>) -> Result<Response<CheckResponse>, Status> {
        let mut response = CheckResponse::with_status(Status::ok("allowed"));
        response.set_http_response(OkHttpResponseBuilder::new());
        Ok(Response::new(response))
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
        .add_service(AuthorizationServer::new(AllowAll))
        .serve_with_shutdown(args.listen, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
