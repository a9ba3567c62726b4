//! The request as the decision sees it: normalised host, method and path, and the bearer
//! credential parsed out of `Authorization`. Everything here is security-critical: the path that
//! is matched must be the path the upstream will serve, so anything ambiguous is refused (400).
//!
//! Path normalisation, in order: cut at `?`/`#`; percent-decode only unreserved characters
//! (`A-Z a-z 0-9 - . _ ~`), keeping other escapes upper-cased; refuse encoded `/` (`%2F`),
//! `\` (`%5C`), NUL, control characters, raw `\`, and `.`/`..` segments that were encoded or
//! carry a `;` parameter (`..;`); drop empty and `.` segments; resolve `..` (never above root).
//! A trailing slash is not significant for matching.

use std::fmt::Write;

/// Why a request was refused as malformed (answered 400 `invalid_request`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("path must start with '/'")]
    PathNotAbsolute,
    #[error("path contains an invalid percent-escape")]
    BadEscape,
    #[error("path contains an encoded '/', '\\' or NUL, or a control character")]
    ForbiddenEscape,
    #[error("path contains a raw backslash")]
    Backslash,
    #[error("path contains an encoded or parameterised dot segment")]
    AmbiguousDotSegment,
    #[error("path is too long")]
    PathTooLong,
    #[error("host is missing or invalid")]
    BadHost,
    #[error("method is missing or invalid")]
    BadMethod,
    #[error("Authorization header with Bearer scheme is malformed")]
    MalformedBearer,
}

/// Longest raw path accepted (Envoy's default `max_request_headers_kb` is 60 KiB).
const MAX_PATH_BYTES: usize = 16 * 1024;

/// A request ready for matching.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Lower-case, without port or trailing dot.
    pub host: String,
    pub method: String,
    /// Normalised path (no query), always starting with `/`, no trailing slash except root.
    pub path: String,
}

impl Request {
    pub fn new(host: &str, method: &str, raw_path: &str) -> Result<Request, RequestError> {
        Ok(Request {
            host: normalise_host(host)?,
            method: check_method(method)?,
            path: normalise_path(raw_path)?,
        })
    }

    /// The path's segments (empty for `/`).
    pub fn segments(&self) -> Vec<&str> {
        self.path.split('/').filter(|s| !s.is_empty()).collect()
    }
}

fn check_method(method: &str) -> Result<String, RequestError> {
    let ok = !method.is_empty()
        && method.len() <= 32
        && method.bytes().all(|b| b.is_ascii_alphabetic() || b == b'-');
    if ok {
        Ok(method.to_string())
    } else {
        Err(RequestError::BadMethod)
    }
}

/// Lower-cases, strips the port (also from `[v6]:port`) and a trailing dot.
pub fn normalise_host(raw: &str) -> Result<String, RequestError> {
    let without_port = if raw.starts_with('[') {
        let end = raw.find(']').ok_or(RequestError::BadHost)?;
        let rest = &raw[end + 1..];
        if !(rest.is_empty() || (rest.starts_with(':') && is_port(&rest[1..]))) {
            return Err(RequestError::BadHost);
        }
        &raw[..=end]
    } else {
        match raw.rsplit_once(':') {
            Some((name, port)) if is_port(port) => name,
            Some(_) => return Err(RequestError::BadHost),
            None => raw,
        }
    };
    let host = without_port.strip_suffix('.').unwrap_or(without_port);
    let ok = !host.is_empty()
        && host.len() <= 255
        && host.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'[' | b']' | b':')
        });
    if !ok {
        return Err(RequestError::BadHost);
    }
    Ok(host.to_ascii_lowercase())
}

fn is_port(s: &str) -> bool {
    !s.is_empty() && s.len() <= 5 && s.bytes().all(|b| b.is_ascii_digit())
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// One decoded segment and whether any `.` in it came from an escape.
struct DecodedSegment {
    text: String,
    encoded_dot: bool,
}

fn decode_segment(raw: &str) -> Result<DecodedSegment, RequestError> {
    let bytes = raw.as_bytes();
    let mut text = String::with_capacity(raw.len());
    let mut encoded_dot = false;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let (hi, lo) = match (
                bytes.get(i + 1).and_then(|b| hex(*b)),
                bytes.get(i + 2).and_then(|b| hex(*b)),
            ) {
                (Some(hi), Some(lo)) => (hi, lo),
                _ => return Err(RequestError::BadEscape),
            };
            let decoded = hi << 4 | lo;
            if matches!(decoded, b'/' | b'\\') || decoded < 0x20 || decoded == 0x7F {
                return Err(RequestError::ForbiddenEscape);
            }
            if is_unreserved(decoded) {
                encoded_dot |= decoded == b'.';
                text.push(decoded as char);
            } else {
                let _ = write!(text, "%{decoded:02X}");
            }
            i += 3;
            continue;
        }
        if b == b'\\' {
            return Err(RequestError::Backslash);
        }
        if b < 0x20 || b == 0x7F {
            return Err(RequestError::ForbiddenEscape);
        }
        // Copy one UTF-8 character (or byte run) as it is.
        let start = i;
        i += 1;
        while i < bytes.len()
            && !matches!(bytes[i], b'%' | b'\\')
            && bytes[i] >= 0x20
            && bytes[i] != 0x7F
        {
            i += 1;
        }
        text.push_str(&raw[start..i]);
    }
    Ok(DecodedSegment { text, encoded_dot })
}

fn is_dot_segment(s: &str) -> bool {
    s == "." || s == ".."
}

/// Normalises a request path (see the module docs). Query and fragment are dropped.
pub fn normalise_path(raw: &str) -> Result<String, RequestError> {
    if raw.len() > MAX_PATH_BYTES {
        return Err(RequestError::PathTooLong);
    }
    let path = raw.split(['?', '#']).next().unwrap_or("");
    if !path.starts_with('/') {
        return Err(RequestError::PathNotAbsolute);
    }
    if is_already_normal(path) {
        let trimmed = path.trim_end_matches('/');
        return Ok(if trimmed.is_empty() {
            "/".to_string()
        } else {
            trimmed.to_string()
        });
    }
    let mut out: Vec<String> = Vec::new();
    for raw_segment in path.split('/') {
        let segment = decode_segment(raw_segment)?;
        let before_params = segment.text.split(';').next().unwrap_or("");
        let dotty = is_dot_segment(&segment.text) || is_dot_segment(before_params);
        if dotty && (segment.encoded_dot || segment.text.contains(';')) {
            return Err(RequestError::AmbiguousDotSegment);
        }
        match segment.text.as_str() {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            _ => out.push(segment.text),
        }
    }
    let mut normalised = String::with_capacity(path.len());
    for segment in &out {
        normalised.push('/');
        normalised.push_str(segment);
    }
    if normalised.is_empty() {
        normalised.push('/');
    }
    Ok(normalised)
}

/// Fast path for the common case: nothing to decode, resolve or refuse.
fn is_already_normal(path: &str) -> bool {
    let plain = path
        .bytes()
        .all(|b| b >= 0x20 && b != 0x7F && !matches!(b, b'%' | b'\\' | b';'));
    plain && !path.contains("//") && path.split('/').all(|s| s != "." && s != "..")
}

/// The bearer token in an `Authorization` header value (RFC 6750 §2.1).
/// `Ok(None)`: no header, or another scheme (that is not a bearer credential).
pub fn bearer_token(authorization: Option<&str>) -> Result<Option<&str>, RequestError> {
    let Some(value) = authorization else {
        return Ok(None);
    };
    let value = value.trim_matches(' ');
    let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Ok(None);
    }
    let token = rest.trim_start_matches(' ');
    if is_b64token(token) {
        Ok(Some(token))
    } else {
        Err(RequestError::MalformedBearer)
    }
}

/// `b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="`
fn is_b64token(token: &str) -> bool {
    let body = token.trim_end_matches('=');
    !body.is_empty()
        && body.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_normalised() {
        let cases = [
            ("/", "/"),
            ("", ""),
            ("/a/b", "/a/b"),
            ("/a//b///c", "/a/b/c"),
            ("/a/./b", "/a/b"),
            ("/a/b/../c", "/a/c"),
            ("/../../a", "/a"),
            ("/a/b/", "/a/b"),
            ("/a?x=/admin", "/a"),
            ("/a#frag", "/a"),
            ("/%61%62c", "/abc"),
            ("/a%7e", "/a~"),
            ("/a%20b", "/a%20b"),
            ("/a%3f", "/a%3F"),
            ("/caf\u{e9}", "/caf\u{e9}"),
        ];
        for (raw, want) in cases {
            if want.is_empty() {
                assert_eq!(
                    normalise_path(raw),
                    Err(RequestError::PathNotAbsolute),
                    "{raw}"
                );
            } else {
                assert_eq!(normalise_path(raw).as_deref(), Ok(want), "{raw}");
            }
        }
    }

    #[test]
    fn hostile_paths_are_refused() {
        let cases = [
            ("/public/%2e%2e/admin", RequestError::AmbiguousDotSegment),
            ("/public/%2E%2E/admin", RequestError::AmbiguousDotSegment),
            ("/public/.%2e/admin", RequestError::AmbiguousDotSegment),
            ("/public/%2e/admin", RequestError::AmbiguousDotSegment),
            ("/public/..;/admin", RequestError::AmbiguousDotSegment),
            ("/public/..;x=1/admin", RequestError::AmbiguousDotSegment),
            ("/public%2f..%2fadmin", RequestError::ForbiddenEscape),
            ("/public%2F..%2Fadmin", RequestError::ForbiddenEscape),
            ("/public%5c..%5cadmin", RequestError::ForbiddenEscape),
            ("/public\\..\\admin", RequestError::Backslash),
            ("/a%00", RequestError::ForbiddenEscape),
            ("/a\u{0}", RequestError::ForbiddenEscape),
            ("/a%0a", RequestError::ForbiddenEscape),
            ("/a%zz", RequestError::BadEscape),
            ("/a%2", RequestError::BadEscape),
            ("admin", RequestError::PathNotAbsolute),
            ("*", RequestError::PathNotAbsolute),
        ];
        for (raw, want) in cases {
            assert_eq!(normalise_path(raw), Err(want), "{raw}");
        }
        assert_eq!(
            normalise_path(&"/a".repeat(10_000)),
            Err(RequestError::PathTooLong)
        );
    }

    #[test]
    fn plain_dot_segments_resolve_and_cannot_escape() {
        // Raw dots are resolved (as every server does), so the matched path is the served path.
        assert_eq!(normalise_path("/public/../admin").as_deref(), Ok("/admin"));
        assert_eq!(normalise_path("/a;v=1/b").as_deref(), Ok("/a;v=1/b"));
    }

    #[test]
    fn hosts_are_normalised() {
        assert_eq!(
            normalise_host("API.Example.COM:8443").unwrap(),
            "api.example.com"
        );
        assert_eq!(
            normalise_host("api.example.com.").unwrap(),
            "api.example.com"
        );
        assert_eq!(normalise_host("[::1]:80").unwrap(), "[::1]");
        for bad in [
            "",
            ":80",
            "a b",
            "api.example.com:x",
            "[::1",
            "ex\u{0}ample",
            "a/b",
        ] {
            assert_eq!(normalise_host(bad), Err(RequestError::BadHost), "{bad:?}");
        }
    }

    #[test]
    fn bearer_parsing() {
        assert_eq!(bearer_token(None), Ok(None));
        assert_eq!(
            bearer_token(Some("Bearer abc.def.ghi")),
            Ok(Some("abc.def.ghi"))
        );
        assert_eq!(bearer_token(Some("bearer abc")), Ok(Some("abc")));
        assert_eq!(bearer_token(Some("BEARER  abc==")), Ok(Some("abc==")));
        assert_eq!(bearer_token(Some("Basic dXNlcjpwYXNz")), Ok(None));
        for bad in [
            "Bearer",
            "Bearer ",
            "Bearer a b",
            "Bearer a,Bearer b",
            "Bearer ===",
            "Bearer a\"b",
        ] {
            assert_eq!(
                bearer_token(Some(bad)),
                Err(RequestError::MalformedBearer),
                "{bad}"
            );
        }
    }

    #[test]
    fn methods_are_tokens() {
        assert!(Request::new("h", "GET", "/").is_ok());
        assert_eq!(Request::new("h", "", "/"), Err(RequestError::BadMethod));
        assert_eq!(Request::new("h", "G T", "/"), Err(RequestError::BadMethod));
    }
}
