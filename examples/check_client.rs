//! Sends one ext_authz CheckRequest to scopegate, as Envoy would, and prints the decision.
//!
//! The token is read from the `TOKEN` environment variable (never from the command line, where
//! other users could see it in the process list):
//!
//! ```text
//! export TOKEN=$(cargo run -q --example mint_token -- --scope orders:read)
//! cargo run --example check_client -- GET api.example.com /orders/42
//! ```
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::disallowed_methods,
    clippy::disallowed_types,
    reason = "tests, benchmarks and examples: a failed step stops them with its message, and they read their own environment"
)]

use std::collections::HashMap;

use clap::Parser;
use envoy_types::ext_authz::v3::pb::{CheckRequest, HttpResponse};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::AttributeContext;

#[derive(Parser)]
struct Args {
    /// scopegate's gRPC address.
    #[arg(long, default_value = "http://127.0.0.1:9191")]
    addr: String,
    method: String,
    host: String,
    path: String,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let mut headers = HashMap::new();
    if let Some(token) = std::env::var("TOKEN").ok().filter(|t| !t.trim().is_empty()) {
        headers.insert(
            "authorization".to_string(),
            format!("Bearer {}", token.trim()),
        );
    }
    let request = CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Request {
                http: Some(HttpRequest {
                    method: args.method,
                    host: args.host,
                    path: args.path,
                    headers,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    };
    let mut client = AuthorizationClient::connect(args.addr).await?;
    let response = client.check(request).await?.into_inner();
    let code = response.status.as_ref().map_or(-1, |s| s.code);
    match response.http_response {
        Some(HttpResponse::OkResponse(ok)) => {
            println!("ALLOW (grpc status {code})");
            for h in ok.headers.iter().filter_map(|h| h.header.as_ref()) {
                println!("  upstream header  {}: {}", h.key, h.value);
            }
            for name in ok.headers_to_remove {
                println!("  upstream removes {name}");
            }
        }
        Some(HttpResponse::DeniedResponse(denied)) => {
            let status = denied.status.map_or(0, |s| s.code);
            println!("DENY {status} (grpc status {code})");
            for h in denied.headers.iter().filter_map(|h| h.header.as_ref()) {
                println!("  {}: {}", h.key, h.value);
            }
            println!("  body: {}", denied.body.trim_end());
        }
        _ => println!("no http response (grpc status {code})"),
    }
    Ok(())
}
