//! The request as the decision sees it: normalised host, method and path, and the bearer
//! credential parsed out of `Authorization`. Everything here is security-critical: the rule
//! scopegate applies must be the rule the upstream serves, so anything that more than one kind of
//! upstream could read differently is refused (400 `invalid_request`) instead of resolved.
//!
//! # Why paths are refused rather than resolved
//! Upstreams disagree about the same bytes. For `/admin//../orders/1`, RFC 3986
//! `remove_dot_segments` (Envoy's `normalize_path`, most servers) lets `..` remove the empty
//! segment and serves `/admin/orders/1`; a server that merges slashes first serves `/orders/1`.
//! For `/orders/;/../admin`, RFC 3986 gives `/orders/admin`, while Tomcat and Spring strip
//! `;params`, merge the now-empty segment and serve `/admin`. For `/admin;x=1/orders`, Tomcat
//! serves `/admin/orders` but a matcher that keeps the parameter sees a segment `admin;x=1` that
//! no `/admin/**` rule names. For `/%2561dmin`, a server that decodes twice sees `/admin`. Any
//! choice scopegate made among these readings would be wrong for some upstream, and the wrong
//! reading is a false allow. So scopegate matches only paths that are already in normal form, in
//! which all those readings agree, and refuses every path that is not:
//! - an empty segment (`//`; one trailing `/` is allowed and not significant),
//! - a `.` or `..` segment, raw or percent-encoded (encoded unreserved characters are refused
//!   outright, so `%2e` can never become a dot after matching),
//! - a segment parameter: `;` raw or encoded (`%3B`), anywhere,
//! - an encoded `/`, `\`, `%` (double encoding), NUL or control character; a raw `\`, control
//!   character, non-ASCII byte or any other character that RFC 3986 does not allow in a path;
//!   percent-encoded bytes that are not valid UTF-8 (overlong forms such as `%C0%AE`),
//! - an escaped character that Unicode compatibility normalisation (NFKC) turns into path syntax:
//!   `%EF%BC%8F` (FULLWIDTH SOLIDUS, `/`), `%E2%80%A5` (TWO DOT LEADER, `..`), ... (see
//!   `rules::caseless`; an upstream that normalises decoded paths would see other segments).
//!
//! A normalising Envoy (`normalize_path`, `merge_slashes`, `path_with_escaped_slashes_action:
//! REJECT_REQUEST`, as in `examples/envoy/envoy.yaml`) resolves dot segments (also `%2e`),
//! merges slashes and rejects `%2F`/`%5C`; what it still forwards (`;` and `%3B`, `%25xx` and
//! other escapes, `..;` forms it does not resolve) is exactly what some upstream would read
//! differently, so refusing it costs a correctly configured deployment nothing. There is
//! deliberately no lenient mode.
//! A pinned rule (`scopegate.rule`) goes through the same check: it ignores the path for rule
//! selection but still refuses a path that is not in normal form.
//!
//! The normal form itself: the path without query or fragment, percent-escapes upper-cased,
//! without a trailing `/` (except the root).

use std::fmt::Write;

use crate::rules::caseless;
use crate::rules::route::{is_host, is_plain_segment_byte, MAX_NAME_BYTES};
use crate::token::binding::Scheme;

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
    #[error("path contains a '.' or '..' segment")]
    DotSegment,
    #[error("path contains an empty segment ('//')")]
    EmptySegment,
    #[error("path contains a segment parameter (';')")]
    SegmentParameter,
    #[error("path percent-encodes an unreserved character")]
    EncodedUnreserved,
    #[error("path contains an encoded '%' (double encoding)")]
    DoubleEncoding,
    #[error("path contains a character that is not allowed in a URI path")]
    ForbiddenCharacter,
    #[error("path has an escaped character that Unicode normalisation reads as path syntax")]
    DisguisedDelimiter,
    #[error("path is too long")]
    PathTooLong,
    /// The path picks one rule as written and another with its letters folded, as an upstream
    /// that routes case-insensitively reads it (see `rules::matcher`).
    #[error("path letter case changes which rule applies")]
    CaseAmbiguous,
    #[error("host is missing or invalid")]
    BadHost,
    #[error("method must be an upper-case token")]
    BadMethod,
    #[error("Authorization header is malformed or repeated")]
    MalformedBearer,
    #[error("DPoP header is repeated or unreadable")]
    MalformedDpop,
    /// A header some upstreams let override the method or the URL (see [`OVERRIDE_HEADERS`]).
    #[error("request carries {0}, which some upstreams let override the method or URL")]
    OverrideHeader(&'static str),
}

/// Headers with which some upstreams let the client replace the request's method or URL after
/// the proxy: `X-HTTP-Method-Override` and its variants (ASP.NET Web API, Laravel, Express's
/// method-override, Google APIs: a `POST` executed as `DELETE`), `X-Original-URL` and
/// `X-Rewrite-URL` (IIS URL Rewrite set-ups, older Symfony: the path served is the header's).
/// scopegate decides on the method and path Envoy saw, so a request carrying one is refused
/// (400) whatever its rule, public ones included. Lower case, as Envoy sends header names.
pub const OVERRIDE_HEADERS: [&str; 5] = [
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "x-original-url",
    "x-rewrite-url",
];

/// Longest raw path accepted (Envoy's default `max_request_headers_kb` is 60 KiB).
const MAX_PATH_BYTES: usize = 16 * 1024;

/// Longest method accepted.
const MAX_METHOD_BYTES: usize = 32;

/// A request ready for matching.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Lower-case, without port or trailing dot.
    pub host: String,
    pub method: String,
    /// Normalised path (no query), always starting with `/`, no trailing slash except root.
    pub path: String,
    /// When the request is decided (unix seconds, read once per check): revocation and lockdown
    /// expiry are compared with it, so `decide()` itself reads no clock.
    pub now: i64,
}

impl Request {
    /// A request decided now.
    pub fn new(host: &str, method: &str, raw_path: &str) -> Result<Request, RequestError> {
        Request::at(host, method, raw_path, crate::store::unix_seconds())
    }

    /// A request decided at `now` (unix seconds).
    pub fn at(host: &str, method: &str, raw_path: &str, now: i64) -> Result<Request, RequestError> {
        Ok(Request {
            host: normalise_host(host)?,
            method: check_method(method)?,
            path: normalise_path(raw_path)?,
            now,
        })
    }

    /// The path's segments (empty for `/`); on the stack up to [`INLINE_SEGMENTS`] of them.
    pub fn segments(&self) -> Segments<'_> {
        self.path.split('/').filter(|s| !s.is_empty()).collect()
    }
}

/// A request path's segments, as [`Request::segments`] gives them.
pub type Segments<'a> = smallvec::SmallVec<[&'a str; INLINE_SEGMENTS]>;

/// Segments held without an allocation: most API paths have fewer.
pub const INLINE_SEGMENTS: usize = 8;

/// Methods are case-sensitive (RFC 9110 §9.1), but upstreams such as Werkzeug upper-case them:
/// a rule for `DELETE` must not be side-stepped with `delete`. So only upper-case tokens pass.
fn check_method(method: &str) -> Result<String, RequestError> {
    let ok = !method.is_empty()
        && method.len() <= MAX_METHOD_BYTES
        && method
            .bytes()
            .all(|b| b.is_ascii_uppercase() || matches!(b, b'-' | b'_'));
    if ok {
        Ok(method.to_string())
    } else {
        Err(RequestError::BadMethod)
    }
}

/// Lower-cases, strips the port (also from `[v6]:port`) and one trailing dot. The host itself
/// must have a shape every reading of an authority agrees on ([`is_host`], the rules' alphabet
/// too), with an optional `:port`. Refused: a colon or bracket anywhere else (`::1`
/// unbracketed, `a]b`), empty labels (`.example.com`, `api..example.com`, which a
/// `*.example.com` suffix would match), userinfo, escapes.
pub fn normalise_host(raw: &str) -> Result<String, RequestError> {
    if raw.len() > MAX_HOST_BYTES {
        return Err(RequestError::BadHost);
    }
    let (host, port) = if raw.starts_with('[') {
        let end = raw.find(']').ok_or(RequestError::BadHost)?;
        (&raw[..=end], &raw[end + 1..])
    } else {
        // A byte search: the `char` searcher of `split_once` costs more than the short name.
        let (name, port) = match raw.bytes().position(|b| b == b':') {
            Some(colon) => (&raw[..colon], &raw[colon..]),
            None => (raw, ""),
        };
        (name.strip_suffix('.').unwrap_or(name), port)
    };
    let port_ok = port.is_empty() || port.strip_prefix(':').is_some_and(is_port);
    if !is_host(host) || !port_ok {
        return Err(RequestError::BadHost);
    }
    Ok(host.to_ascii_lowercase())
}

/// The longest `Host` accepted: a name, a trailing dot and a port.
const MAX_HOST_BYTES: usize = MAX_NAME_BYTES + ".:65535".len();

/// A TCP port: 1 to 5 digits, at most 65535.
fn is_port(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 5
        && s.bytes().all(|b| b.is_ascii_digit())
        && s.parse::<u16>().is_ok()
}

use crate::rules::route::{hex_digit, is_unreserved};

/// Checks a request path and returns its normal form (see the module docs for what is refused
/// and why). Query and fragment are dropped.
pub fn normalise_path(raw: &str) -> Result<String, RequestError> {
    if raw.len() > MAX_PATH_BYTES {
        return Err(RequestError::PathTooLong);
    }
    let path = raw.split(['?', '#']).next().unwrap_or("");
    if !path.starts_with('/') {
        return Err(RequestError::PathNotAbsolute);
    }
    // One trailing slash is not significant; a second one is an empty segment.
    let body = path.strip_suffix('/').unwrap_or(path);
    let mut out = String::with_capacity(body.len().max(1));
    for segment in body.split('/').skip(1) {
        out.push('/');
        let start = out.len();
        if push_segment(segment, &mut out)? == SegmentForm::Escaped {
            check_caseless_reading(&out[start..])?;
        }
    }
    if out.is_empty() {
        out.push('/');
    }
    Ok(out)
}

/// What [`push_segment`] wrote: a segment of plain bytes, or one with percent-escapes (only
/// those can hide a disguised delimiter, [`check_caseless_reading`]).
#[derive(Debug, PartialEq, Eq)]
enum SegmentForm {
    Plain,
    Escaped,
}

/// Appends one segment in normal form, or refuses it.
fn push_segment(segment: &str, out: &mut String) -> Result<SegmentForm, RequestError> {
    match segment {
        "" => return Err(RequestError::EmptySegment),
        "." | ".." => return Err(RequestError::DotSegment),
        _ => {}
    }
    // Most segments are plain bytes only: the loop below would copy them one by one, unchanged.
    if segment.bytes().all(is_plain_segment_byte) {
        out.push_str(segment);
        return Ok(SegmentForm::Plain);
    }
    let bytes = segment.as_bytes();
    // Bytes decoded from consecutive escapes: they must form valid UTF-8 (no overlong dots).
    let mut escaped_run: Vec<u8> = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let decoded = match (
                bytes.get(i + 1).and_then(|b| hex_digit(*b)),
                bytes.get(i + 2).and_then(|b| hex_digit(*b)),
            ) {
                (Some(hi), Some(lo)) => hi << 4 | lo,
                _ => return Err(RequestError::BadEscape),
            };
            check_escaped_byte(decoded)?;
            escaped_run.push(decoded);
            let _ = write!(out, "%{decoded:02X}");
            i += 3;
            continue;
        }
        check_escaped_run(&mut escaped_run)?;
        match b {
            b';' => return Err(RequestError::SegmentParameter),
            b'\\' => return Err(RequestError::Backslash),
            0..=0x1F | 0x7F => return Err(RequestError::ForbiddenEscape),
            _ if is_plain_segment_byte(b) => out.push(b as char),
            _ => return Err(RequestError::ForbiddenCharacter),
        }
        i += 1;
    }
    check_escaped_run(&mut escaped_run)?;
    Ok(SegmentForm::Escaped)
}

/// Refuses a normal-form segment with an escaped character that an upstream normalising decoded
/// paths (NFKC) reads as `/`, `..`, `;`, ... ([`caseless::read`]).
fn check_caseless_reading(segment: &str) -> Result<(), RequestError> {
    if caseless::has_escaped_non_ascii(segment) && caseless::read(segment).is_err() {
        return Err(RequestError::DisguisedDelimiter);
    }
    Ok(())
}

fn check_escaped_byte(decoded: u8) -> Result<(), RequestError> {
    match decoded {
        b'/' | b'\\' | 0..=0x1F | 0x7F => Err(RequestError::ForbiddenEscape),
        b';' => Err(RequestError::SegmentParameter),
        b'%' => Err(RequestError::DoubleEncoding),
        _ if is_unreserved(decoded) => Err(RequestError::EncodedUnreserved),
        _ => Ok(()),
    }
}

fn check_escaped_run(run: &mut Vec<u8>) -> Result<(), RequestError> {
    let valid = std::str::from_utf8(run).is_ok();
    run.clear();
    if valid {
        Ok(())
    } else {
        Err(RequestError::BadEscape)
    }
}

/// The bearer token in an `Authorization` header value (RFC 6750 §2.1).
/// `Ok(None)`: no header, or another scheme (that is not a bearer credential); a malformed
/// `DPoP` credential is an error too (see [`access_token`]).
pub fn bearer_token(authorization: Option<&str>) -> Result<Option<&str>, RequestError> {
    match access_token(authorization)? {
        Some((Scheme::Bearer, token)) => Ok(Some(token)),
        _ => Ok(None),
    }
}

/// The access token and its scheme: `Bearer` (RFC 6750 §2.1) or `DPoP` (RFC 9449 §7.1, the
/// same token68 syntax), scheme names compared case-insensitively. `Ok(None)`: no header, or
/// another scheme (that is not an access-token credential).
pub fn access_token(authorization: Option<&str>) -> Result<Option<(Scheme, &str)>, RequestError> {
    match presented_token(authorization) {
        Some((_, token)) if !is_b64token(token) => Err(RequestError::MalformedBearer),
        found => Ok(found),
    }
}

/// [`access_token`] without its syntax check: the scheme and what follows it, to be held to
/// [`is_b64token`] before any use but a claims-cache lookup (see `Checker::credential`).
pub fn presented_token(authorization: Option<&str>) -> Option<(Scheme, &str)> {
    let value = authorization?.trim_matches(' ');
    let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
    let scheme = if scheme.eq_ignore_ascii_case("bearer") {
        Scheme::Bearer
    } else if scheme.eq_ignore_ascii_case("dpop") {
        Scheme::Dpop
    } else {
        return None;
    };
    Some((scheme, rest.trim_start_matches(' ')))
}

/// `b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="`
pub fn is_b64token(token: &str) -> bool {
    let body = token.trim_end_matches('=');
    // Every byte of every token is checked on every request. Folded without an early exit
    // (valid tokens are read whole anyway) and written as range comparisons, the loop is
    // vectorised: 16 bytes per step instead of a table lookup per byte (~3,200 instructions
    // for a 700-byte token before, scripts/bench-instructions.sh).
    !body.is_empty() && body.bytes().fold(true, |ok, b| ok & is_b64token_byte(b))
}

/// One byte of the `b64token` alphabet (RFC 6750 §2.1), the trailing `=` excluded.
#[inline(always)]
fn is_b64token_byte(b: u8) -> bool {
    // `b | 0x20` lower-cases letters; of the bytes it moves, none lands in `a..=z`.
    let letter = (b | 0x20).wrapping_sub(b'a') < 26;
    let digit = b.wrapping_sub(b'0') < 10;
    // `-`, `.` and `/` are 0x2D..=0x2F.
    let dash_dot_slash = b.wrapping_sub(b'-') < 3;
    letter | digit | dash_dot_slash | (b == b'_') | (b == b'~') | (b == b'+')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_b64token_alphabet_is_rfc_6750s_for_every_byte() {
        for b in 0..=u8::MAX {
            let rfc = matches!(
                b,
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'+' | b'/'
            );
            assert_eq!(is_b64token_byte(b), rfc, "byte {b:#04x}");
        }
    }

    #[test]
    fn normal_paths_are_kept() {
        let cases = [
            ("/", "/"),
            ("/a/b", "/a/b"),
            ("/a/b/", "/a/b"),
            ("/a?x=/../admin;x", "/a"),
            ("/a#frag/../..", "/a"),
            ("/a%20b", "/a%20b"),
            ("/a%3f", "/a%3F"),
            ("/caf%C3%A9", "/caf%C3%A9"),
            ("/a/b:c@d!$&'()*+,=", "/a/b:c@d!$&'()*+,="),
            ("/orders/1.json", "/orders/1.json"),
            ("/.well-known/x", "/.well-known/x"),
            ("/a/...", "/a/..."),
            ("/a/..b", "/a/..b"),
        ];
        for (raw, want) in cases {
            assert_eq!(normalise_path(raw).as_deref(), Ok(want), "{raw}");
        }
        assert_eq!(normalise_path("/a%2a").as_deref(), Ok("/a%2A"));
    }

    /// Every way of writing an empty segment, in every position, is refused.
    #[test]
    fn empty_segments_are_refused_everywhere() {
        let cases = [
            "//",
            "//admin",
            "/admin//",
            "/admin//x",
            "/admin//../orders/1",
            "/admin///../../orders/1",
            "/a/b//c/d",
            "///",
            "/admin//..",
            "/admin/x//?q",
        ];
        for raw in cases {
            assert_eq!(
                normalise_path(raw),
                Err(RequestError::EmptySegment),
                "{raw}"
            );
        }
    }

    #[test]
    fn dot_segments_are_refused_raw_or_encoded() {
        let dots = ["..", ".", "%2e%2e", "%2E%2E", ".%2e", "%2e.", "%2e", "%2E"];
        for dot in dots {
            for template in ["/{}", "/{}/admin", "/public/{}/admin", "/a/{}", "/a/b/{}/"] {
                let raw = template.replace("{}", dot);
                let got = normalise_path(&raw);
                assert!(
                    matches!(
                        got,
                        Err(RequestError::DotSegment) | Err(RequestError::EncodedUnreserved)
                    ),
                    "{raw}: {got:?}"
                );
            }
        }
        assert_eq!(
            normalise_path("/public/../admin"),
            Err(RequestError::DotSegment)
        );
        assert_eq!(
            normalise_path("/public/%2e%2e/admin"),
            Err(RequestError::EncodedUnreserved)
        );
    }

    /// `;` anywhere: `;`, `;x=1`, `..;`, `;/`, repeated, encoded, at the start and the end.
    #[test]
    fn segment_parameters_are_refused_everywhere() {
        let cases = [
            "/orders/;/../admin",
            "/orders/;x=1/../admin",
            "/orders/;x=1;y=2/../admin",
            "/public/..;/admin",
            "/public/..;x=1/admin",
            "/public/.;/admin",
            "/admin;x=1/orders",
            "/admin;/orders",
            "/;/admin",
            "/;",
            "/orders;",
            "/orders/1;",
            "/orders/1;jsessionid=abc",
            "/orders/;/",
            "/orders/%3b/../admin",
            "/orders/%3B",
            "/admin%3Bx=1/orders",
        ];
        for raw in cases {
            assert_eq!(
                normalise_path(raw),
                Err(RequestError::SegmentParameter),
                "{raw}"
            );
        }
        // Mixed with an encoded dot, the first offence found wins; either way it is refused.
        for raw in ["/a/%2e;/admin", "/a/;%2e/admin", "/a/;/%2e%2e/admin"] {
            assert!(normalise_path(raw).is_err(), "{raw}");
        }
    }

    #[test]
    fn escapes_that_could_change_meaning_are_refused() {
        let cases = [
            ("/public%2f..%2fadmin", RequestError::ForbiddenEscape),
            ("/public%2F..%2Fadmin", RequestError::ForbiddenEscape),
            ("/public%5c..%5cadmin", RequestError::ForbiddenEscape),
            ("/a%00", RequestError::ForbiddenEscape),
            ("/a%0a", RequestError::ForbiddenEscape),
            ("/a%7F", RequestError::ForbiddenEscape),
            ("/%2561dmin", RequestError::DoubleEncoding),
            ("/public/%252e%252e/admin", RequestError::DoubleEncoding),
            ("/%61dmin", RequestError::EncodedUnreserved),
            ("/a%7e", RequestError::EncodedUnreserved),
            ("/a%zz", RequestError::BadEscape),
            ("/a%2", RequestError::BadEscape),
            ("/a%", RequestError::BadEscape),
            ("/%c0%ae%c0%ae/admin", RequestError::BadEscape),
            ("/%e0%80%ae", RequestError::BadEscape),
            ("/a%80", RequestError::BadEscape),
            ("/caf%C3", RequestError::BadEscape),
        ];
        for (raw, want) in cases {
            assert_eq!(normalise_path(raw), Err(want), "{raw}");
        }
    }

    /// An upstream that decodes and NFKC-normalises the path would see `/`, `..` or `;` here.
    #[test]
    fn escapes_that_normalise_to_path_syntax_are_refused() {
        for raw in [
            "/public%EF%BC%8F..%EF%BC%8Fadmin",
            "/public/%E2%80%A5/admin",
            "/public/%EF%BC%8E%EF%BC%8E/admin",
            "/public/.%E2%80%A4/admin",
            "/orders%EF%BC%9Bx=1",
            "/a%EF%BC%BCb",
            "/a%C2%85",
        ] {
            assert_eq!(
                normalise_path(raw),
                Err(RequestError::DisguisedDelimiter),
                "{raw}"
            );
        }
        // Non-ASCII text that stays text, or folds to letters, is a normal path.
        for raw in ["/caf%C3%A9", "/%E2%84%AAeys", "/a%E2%80%A4b"] {
            assert_eq!(normalise_path(raw).as_deref(), Ok(raw), "{raw}");
        }
    }

    #[test]
    fn raw_characters_outside_a_uri_path_are_refused() {
        let cases = [
            ("/public\\..\\admin", RequestError::Backslash),
            ("/a\\b", RequestError::Backslash),
            ("/a\u{0}", RequestError::ForbiddenEscape),
            ("/a\tb", RequestError::ForbiddenEscape),
            ("/a\u{7f}", RequestError::ForbiddenEscape),
            ("/a b", RequestError::ForbiddenCharacter),
            ("/caf\u{e9}", RequestError::ForbiddenCharacter),
            ("/a\"b", RequestError::ForbiddenCharacter),
            ("/a<b>", RequestError::ForbiddenCharacter),
            ("/a{b}", RequestError::ForbiddenCharacter),
            ("/a|b", RequestError::ForbiddenCharacter),
            ("/a^b", RequestError::ForbiddenCharacter),
            ("/a`b", RequestError::ForbiddenCharacter),
            ("/\u{ff0f}admin", RequestError::ForbiddenCharacter),
            ("admin", RequestError::PathNotAbsolute),
            ("*", RequestError::PathNotAbsolute),
            ("", RequestError::PathNotAbsolute),
            (
                "http://api.example.com/static/../admin/x",
                RequestError::PathNotAbsolute,
            ),
        ];
        for (raw, want) in cases {
            assert_eq!(normalise_path(raw), Err(want), "{raw:?}");
        }
        assert_eq!(
            normalise_path(&"/a".repeat(10_000)),
            Err(RequestError::PathTooLong)
        );
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
        assert_eq!(normalise_host("10.0.0.1:80").unwrap(), "10.0.0.1");
        assert_eq!(
            normalise_host("[::FFFF:10.0.0.1]").unwrap(),
            "[::ffff:10.0.0.1]"
        );
        for bad in [
            "",
            ":80",
            "a b",
            "api.example.com:x",
            "api.example.com:",
            "api.example.com:80:80",
            "api.example.com:65536",
            "api.example.com:+80",
            "[::1",
            "[::1]x",
            "[]",
            "[..]",
            "[::1::2]",
            "[::1%25eth0]",
            "::1",
            "a]b",
            "a[b",
            ".example.com",
            "api..example.com",
            "api.example.com..",
            ".",
            "alice@api.example.com",
            "api%2eexample.com",
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
    fn dpop_scheme_parsing() {
        assert_eq!(
            access_token(Some("DPoP abc.def.ghi")),
            Ok(Some((Scheme::Dpop, "abc.def.ghi")))
        );
        assert_eq!(
            access_token(Some("dpop abc")),
            Ok(Some((Scheme::Dpop, "abc")))
        );
        assert_eq!(
            access_token(Some("Bearer abc")),
            Ok(Some((Scheme::Bearer, "abc")))
        );
        // A DPoP credential is not a bearer credential.
        assert_eq!(bearer_token(Some("DPoP abc")), Ok(None));
        for bad in ["DPoP", "DPoP a b", "DPoP a,DPoP b"] {
            assert_eq!(
                access_token(Some(bad)),
                Err(RequestError::MalformedBearer),
                "{bad}"
            );
        }
        assert_eq!(access_token(Some("DPoPx abc")), Ok(None));
    }

    #[test]
    fn methods_are_upper_case_tokens() {
        for good in ["GET", "DELETE", "VERSION-CONTROL", "M_SEARCH"] {
            assert!(Request::new("h", good, "/").is_ok(), "{good}");
        }
        for bad in [
            "", "G T", "delete", "Delete", "gEt", "GET\u{0}", "GET1", "G\u{c9}T",
        ] {
            assert_eq!(
                Request::new("h", bad, "/"),
                Err(RequestError::BadMethod),
                "{bad:?}"
            );
        }
        assert_eq!(
            Request::new("h", &"A".repeat(33), "/"),
            Err(RequestError::BadMethod)
        );
    }
}
