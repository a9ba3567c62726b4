//! Outbound HTTPS to identity providers (JWKS, OIDC discovery, RFC 7662 introspection): one
//! `reqwest` client per trust configuration, rustls on aws-lc-rs, HTTPS only, no redirects, a
//! timeout on every request and a bound on every response body (read in chunks, refused as soon
//! as it passes the bound, before it is parsed). `Cache-Control: max-age` is handed back to the
//! caller, which decides what it means for its refresh schedule.

use std::time::Duration;

use reqwest::header::{HeaderMap, ACCEPT, CACHE_CONTROL, CONTENT_LENGTH};

/// Largest response body accepted from an identity provider (a JWKS, a discovery document, an
/// introspection answer): 1 MiB. Real key sets are a few KiB.
pub const MAX_RESPONSE_BYTES: usize = 1 << 20;

/// Why a request to an identity provider did not give a usable body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    #[error("{0:?} is not an https:// URL (identity providers are only reached over HTTPS)")]
    NotHttps(String),
    #[error("ca_file holds no PEM certificate")]
    NoCertificate,
    #[error("cannot build the HTTPS client: {0}")]
    Client(String),
    #[error("timed out")]
    Timeout,
    #[error("request failed: {0}")]
    Transport(String),
    #[error("answered HTTP {0}")]
    Status(u16),
    #[error("response is larger than {MAX_RESPONSE_BYTES} bytes")]
    TooLarge,
}

impl FetchError {
    /// The `result` label of `scopegate_jwks_fetch_total` for this failure.
    pub fn result_label(&self) -> &'static str {
        match self {
            FetchError::Timeout => "timeout",
            FetchError::Status(_) => "http_status",
            FetchError::TooLarge => "too_large",
            FetchError::NotHttps(_)
            | FetchError::NoCertificate
            | FetchError::Client(_)
            | FetchError::Transport(_) => "transport",
        }
    }
}

/// Refuses anything but an absolute `https://` URL with a host.
pub fn require_https(url: &str) -> Result<(), FetchError> {
    let parsed = reqwest::Url::parse(url).map_err(|_| FetchError::NotHttps(url.to_string()))?;
    if parsed.scheme() != "https" || parsed.host_str().is_none_or(str::is_empty) {
        return Err(FetchError::NotHttps(url.to_string()));
    }
    Ok(())
}

/// A successful (HTTP 200) answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    pub body: Vec<u8>,
    /// From `Cache-Control`: `max-age=N`, or zero for `no-cache`/`no-store`; `None` without one.
    pub max_age: Option<Duration>,
}

/// An HTTPS client for one trust configuration (a private CA, or the system roots).
#[derive(Debug, Clone)]
pub struct HttpsClient {
    inner: reqwest::Client,
}

impl HttpsClient {
    /// `ca_pem`: trust only these CAs (a private IdP); `None`: the system's roots. `timeout`
    /// bounds each whole request (connect, TLS, headers and body).
    pub fn new(ca_pem: Option<&[u8]>, timeout: Duration) -> Result<HttpsClient, FetchError> {
        let mut builder = reqwest::Client::builder()
            .https_only(true)
            .redirect(reqwest::redirect::Policy::none())
            .timeout(timeout)
            .connect_timeout(timeout)
            .pool_idle_timeout(Duration::from_secs(90))
            .user_agent(concat!("scopegate/", env!("CARGO_PKG_VERSION")));
        if let Some(pem) = ca_pem {
            let roots = parse_ca(pem)?;
            builder = builder.tls_certs_only(roots);
        }
        let inner = builder.build().map_err(|e| FetchError::Client(chain(&e)))?;
        Ok(HttpsClient { inner })
    }

    /// GET `url` (JSON expected).
    pub async fn get(&self, url: &str) -> Result<Fetched, FetchError> {
        require_https(url)?;
        let request = self.inner.get(url).header(ACCEPT, "application/json");
        read(request).await
    }

    /// POST an `application/x-www-form-urlencoded` body with HTTP Basic client authentication
    /// (RFC 6749 §2.3.1: id and secret form-encoded before base64).
    pub async fn post_form(
        &self,
        url: &str,
        client_id: &str,
        client_secret: &str,
        form: &[(&str, &str)],
    ) -> Result<Fetched, FetchError> {
        require_https(url)?;
        let request = self
            .inner
            .post(url)
            .header(ACCEPT, "application/json")
            .basic_auth(form_encode(client_id), Some(form_encode(client_secret)))
            .form(form);
        read(request).await
    }
}

/// The certificates of a PEM bundle (at least one).
pub fn parse_ca(pem: &[u8]) -> Result<Vec<reqwest::Certificate>, FetchError> {
    let roots = reqwest::Certificate::from_pem_bundle(pem)
        .map_err(|e| FetchError::Client(format!("ca_file: {}", chain(&e))))?;
    if roots.is_empty() {
        return Err(FetchError::NoCertificate);
    }
    Ok(roots)
}

async fn read(request: reqwest::RequestBuilder) -> Result<Fetched, FetchError> {
    let mut response = request.send().await.map_err(transport)?;
    let status = response.status().as_u16();
    if status != 200 {
        return Err(FetchError::Status(status));
    }
    let max_age = max_age(response.headers());
    if declared_length(response.headers()).is_some_and(|n| n > MAX_RESPONSE_BYTES as u64) {
        return Err(FetchError::TooLarge);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(transport)? {
        if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Err(FetchError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Fetched { body, max_age })
}

fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

/// `max-age` from `Cache-Control`; `no-cache` and `no-store` count as zero.
fn max_age(headers: &HeaderMap) -> Option<Duration> {
    let mut found = None;
    for value in headers.get_all(CACHE_CONTROL) {
        let Ok(value) = value.to_str() else { continue };
        for directive in value.split(',').map(str::trim) {
            let lower = directive.to_ascii_lowercase();
            if lower == "no-cache" || lower == "no-store" {
                return Some(Duration::ZERO);
            }
            if let Some(seconds) = lower.strip_prefix("max-age=") {
                let seconds = seconds.trim_matches('"').parse::<u64>().ok()?;
                found = Some(Duration::from_secs(seconds));
            }
        }
    }
    found
}

fn transport(e: reqwest::Error) -> FetchError {
    if e.is_timeout() {
        FetchError::Timeout
    } else {
        FetchError::Transport(chain(&e))
    }
}

/// An error and its sources, one line (reqwest's own message hides the TLS or DNS cause).
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// `application/x-www-form-urlencoded` of one value (RFC 6749 Appendix B).
fn form_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for v in values {
            map.append(CACHE_CONTROL, HeaderValue::from_str(v).unwrap());
        }
        map
    }

    #[test]
    fn cache_control_max_age() {
        let secs = |v: &[&str]| max_age(&headers(v)).map(|d| d.as_secs());
        assert_eq!(secs(&["public, max-age=600"]), Some(600));
        assert_eq!(secs(&["Max-Age=60, must-revalidate"]), Some(60));
        assert_eq!(secs(&["no-cache"]), Some(0));
        assert_eq!(secs(&["max-age=600", "no-store"]), Some(0));
        assert_eq!(secs(&["private"]), None);
        assert_eq!(secs(&["max-age=soon"]), None);
        assert_eq!(secs(&[]), None);
    }

    #[test]
    fn only_https_urls() {
        assert!(require_https("https://idp.example.com/jwks").is_ok());
        for bad in [
            "http://idp.example.com/jwks",
            "ftp://idp/x",
            "https://",
            "idp.example.com/jwks",
            "",
        ] {
            assert!(
                matches!(require_https(bad), Err(FetchError::NotHttps(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn client_credentials_are_form_encoded() {
        assert_eq!(form_encode("scope gate:1/2"), "scope+gate%3A1%2F2");
        assert_eq!(form_encode("a-b.c_d*"), "a-b.c_d*");
    }

    #[test]
    fn a_ca_file_without_certificates_is_refused() {
        assert_eq!(parse_ca(b"not pem").unwrap_err(), FetchError::NoCertificate);
    }
}
