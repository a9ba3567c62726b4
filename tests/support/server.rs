//! An in-process scopegate on port 0 (real gRPC over loopback), with a client that sends
//! CheckRequests the way Envoy does and reads the answer back.

use std::collections::HashMap;
use std::path::PathBuf;

use envoy_types::ext_authz::v3::pb::{CheckRequest, CheckResponse, HttpResponse};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::AttributeContext;
use scopegate::app::{self, RunningApp};
use scopegate::cli::{Cli, Command};
use scopegate::config::Config;
use tonic::transport::Channel;

/// The HTTP-level answer Envoy would act on.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub grpc_code: i32,
    /// Denied: response headers. Allowed: headers set on the upstream request.
    pub headers: HashMap<String, String>,
    /// Allowed: headers removed from the upstream request.
    pub removed: Vec<String>,
    pub body: String,
}

impl Answer {
    pub fn from_response(response: CheckResponse) -> Answer {
        let grpc_code = response.status.as_ref().map_or(-1, |s| s.code);
        let mut answer = Answer {
            status: 0,
            grpc_code,
            headers: HashMap::new(),
            removed: vec![],
            body: String::new(),
        };
        match response.http_response {
            Some(HttpResponse::OkResponse(ok)) => {
                answer.status = 200;
                for h in ok.headers.into_iter().filter_map(|h| h.header) {
                    answer.headers.insert(h.key, h.value);
                }
                answer.removed = ok.headers_to_remove;
            }
            Some(HttpResponse::DeniedResponse(denied)) => {
                answer.status = denied.status.map_or(0, |s| s.code as u16);
                for h in denied.headers.into_iter().filter_map(|h| h.header) {
                    answer.headers.insert(h.key, h.value);
                }
                answer.body = denied.body;
            }
            _ => {}
        }
        answer
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }

    /// The `reason` code from a denial body.
    pub fn reason(&self) -> Option<String> {
        let v: serde_json::Value = serde_json::from_str(&self.body).ok()?;
        v["reason"].as_str().map(str::to_string)
    }
}

/// Builds a CheckRequest as Envoy would send it.
pub fn check_request(
    method: &str,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> CheckRequest {
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Request {
                http: Some(HttpRequest {
                    method: method.into(),
                    host: host.into(),
                    path: path.into(),
                    headers: headers
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

/// Parses `serve` flags into the configuration, as the binary does.
pub fn serve_args(extra: &[&str]) -> Config {
    let mut argv = vec![
        "scopegate",
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
    ];
    argv.extend_from_slice(extra);
    match Cli::try_parse_args(argv).expect("valid flags").command {
        Command::Serve(args) => args.into_config().expect("valid configuration"),
        _ => unreachable!(),
    }
}

/// A running in-process scopegate and a connected client.
pub struct TestServer {
    pub app: RunningApp,
    pub client: AuthorizationClient<Channel>,
    pub dir: tempfile::TempDir,
    pub rules_path: PathBuf,
}

impl TestServer {
    /// Writes `rules_yaml` to a temp file and serves it (re-read every 200 ms as well).
    pub async fn with_rules(rules_yaml: &str, extra: &[&str]) -> TestServer {
        TestServer::with_rules_polled(rules_yaml, "200ms", extra).await
    }

    /// [`with_rules`](Self::with_rules) with the fallback re-read every `poll`.
    pub async fn with_rules_polled(rules_yaml: &str, poll: &str, extra: &[&str]) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let rules_path = dir.path().join("rules.yaml");
        std::fs::write(&rules_path, rules_yaml).unwrap();
        let path = rules_path.to_str().unwrap().to_string();
        let mut flags = vec!["--rules", path.as_str(), "--rules-poll-interval", poll];
        flags.extend_from_slice(extra);
        let app = app::start(&serve_args(&flags))
            .await
            .expect("scopegate starts");
        let client = connect(app.grpc_addr).await;
        TestServer {
            app,
            client,
            dir,
            rules_path,
        }
    }

    pub async fn check(
        &mut self,
        method: &str,
        host: &str,
        path: &str,
        token: Option<&str>,
    ) -> Answer {
        let auth = token.map(|t| format!("Bearer {t}"));
        let mut headers = vec![];
        if let Some(a) = auth.as_deref() {
            headers.push(("authorization", a));
        }
        self.check_with(check_request(method, host, path, &headers))
            .await
    }

    pub async fn check_with(&mut self, request: CheckRequest) -> Answer {
        Answer::from_response(
            self.client
                .check(request)
                .await
                .expect("Check succeeds")
                .into_inner(),
        )
    }

    pub async fn admin_get(&self, path: &str) -> String {
        http_get(self.app.admin_addr, path).await
    }
}

pub async fn connect(addr: std::net::SocketAddr) -> AuthorizationClient<Channel> {
    AuthorizationClient::connect(format!("http://{addr}"))
        .await
        .expect("gRPC connect")
}

/// What the gRPC health service says for the ext_authz service (`None`: no answer).
pub async fn grpc_health(addr: std::net::SocketAddr) -> Option<ServingStatus> {
    grpc_health_of(addr, "envoy.service.auth.v3.Authorization").await
}

/// What the gRPC health service says for `service` (`""`: the server as a whole).
pub async fn grpc_health_of(addr: std::net::SocketAddr, service: &str) -> Option<ServingStatus> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .ok()?
        .connect()
        .await
        .ok()?;
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let request = tonic_health::pb::HealthCheckRequest {
        service: service.into(),
    };
    let status = health.check(request).await.ok()?.into_inner().status;
    ServingStatus::try_from(status).ok()
}

pub use tonic_health::pb::health_check_response::ServingStatus;

/// A minimal HTTP/1.0 GET (admin endpoints), returning the body.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    http_get_status(addr, path).await.1
}

/// A minimal HTTP/1.0 GET, returning the status code and the body.
pub async fn http_get_status(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    try_http_get(addr, path)
        .await
        .unwrap_or_else(|e| panic!("GET http://{addr}{path}: {e}"))
}

/// [`http_get_status`] that reports a connection failure instead of panicking.
pub async fn try_http_get(
    addr: std::net::SocketAddr,
    path: &str,
) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: admin\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}
