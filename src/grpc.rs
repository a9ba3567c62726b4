//! The Envoy `envoy.service.auth.v3.Authorization` service. Translation only, no policy: a
//! `CheckRequest` becomes a [`CheckInput`], the [`Checker`] decides, and the [`Decision`] becomes
//! a `CheckResponse` (OK with upstream identity headers, or a denied HTTP response with the
//! RFC 6750 `WWW-Authenticate` challenge, or RFC 9449's `DPoP` one), with `dynamic_metadata` for
//! Envoy's access log on the answers [`DynamicMetadata`] selects. The `DPoP` header, the scheme and the client certificate
//! (`source.certificate`) are passed on for sender-constrained tokens. [`tls`]: the listener's TLS, reloaded when the certificate files change.

pub mod tls;

use std::sync::Arc;

use envoy_types::ext_authz::v3::pb::{
    Authorization, CheckRequest, CheckResponse, HeaderAppendAction, HttpStatusCode,
};
use envoy_types::ext_authz::v3::{
    CheckResponseExt, DeniedHttpResponseBuilder, OkHttpResponseBuilder,
};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::HttpRequest;
use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value};
use tonic::{Code, Request, Response, Status};

use crate::authz::request::OVERRIDE_HEADERS;
use crate::authz::{Decision, Denial, DenyStatus, Verdict};
use crate::check::{CheckInput, CheckOutcome, Checker, DecisionId, SingleHeader};
use crate::reason::Reason;

/// Realm in `WWW-Authenticate` challenges.
pub const DEFAULT_REALM: &str = "scopegate";
/// Upstream header names for the verified identity.
pub const DEFAULT_SUBJECT_HEADER: &str = "x-scopegate-subject";
pub const DEFAULT_CLIENT_ID_HEADER: &str = "x-scopegate-client-id";
pub const DEFAULT_SCOPES_HEADER: &str = "x-scopegate-scopes";

/// Which answers carry `dynamic_metadata` (the decision log's fields, for Envoy's access log).
///
/// Envoy pays for every field it parses and merges into the stream's metadata: measured through
/// Envoy 1.40 (`scripts/bench-envoy.sh`, docs/benchmarks-envoy.md), the eight-field Struct on an
/// allow cost Envoy more per request than the three identity headers. Like Envoy's RBAC filter
/// (shadow metadata only) and OPA's plugin (only what the policy asks for), the default sends it
/// where an operator reads it: on denials and dry-run would-be denials. An allowed request's
/// identity is in the headers scopegate sets (`%REQ(x-scopegate-subject)%`), and every decision,
/// allows included, is in the decision log under the same `decision_id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DynamicMetadata {
    /// Every answer.
    All,
    /// Denials and dry-run allows that enforcement would deny.
    #[default]
    Deny,
    /// No answer.
    Off,
}

impl DynamicMetadata {
    fn wanted(self, decision: &Decision) -> bool {
        match self {
            DynamicMetadata::All => true,
            DynamicMetadata::Deny => decision.denies_or_would_deny(),
            DynamicMetadata::Off => false,
        }
    }
}

/// Names of the headers scopegate sets on allowed requests for the upstream.
#[derive(Debug, Clone)]
pub struct ResponseSettings {
    pub realm: String,
    pub subject_header: String,
    pub client_id_header: String,
    pub scopes_header: String,
    /// Remove the client's `Authorization` header from allowed requests before the upstream.
    pub strip_authorization: bool,
    /// Which answers carry `dynamic_metadata`.
    pub dynamic_metadata: DynamicMetadata,
}

impl Default for ResponseSettings {
    fn default() -> Self {
        ResponseSettings {
            realm: DEFAULT_REALM.into(),
            subject_header: DEFAULT_SUBJECT_HEADER.into(),
            client_id_header: DEFAULT_CLIENT_ID_HEADER.into(),
            scopes_header: DEFAULT_SCOPES_HEADER.into(),
            strip_authorization: false,
            dynamic_metadata: DynamicMetadata::default(),
        }
    }
}

/// The gRPC service.
#[derive(Debug, Clone)]
pub struct AuthorizationService {
    checker: Arc<Checker>,
    settings: Arc<ResponseSettings>,
}

impl AuthorizationService {
    pub fn new(checker: Arc<Checker>, settings: ResponseSettings) -> Self {
        AuthorizationService {
            checker,
            settings: Arc::new(settings),
        }
    }

    /// Decides one `CheckRequest` (what the gRPC method does, callable in-process). Awaits only
    /// when the credential needs an identity provider (kid-miss refetch, introspection).
    pub async fn check_request(&self, request: &CheckRequest) -> CheckResponse {
        let attributes = request.attributes.as_ref();
        let http = attributes
            .and_then(|a| a.request.as_ref())
            .and_then(|r| r.http.as_ref());
        let Some(http) = http else {
            // Not an HTTP check (e.g. Envoy's network ext_authz filter): nothing to authorize.
            return denied_without_http(&self.settings);
        };
        let input = CheckInput {
            host: &http.host,
            method: &http.method,
            path: &http.path,
            authorization: single_header(http, "authorization"),
            dpop: single_header(http, "dpop"),
            scheme: &http.scheme,
            // URL-encoded PEM; empty unless Envoy sets `include_peer_certificate: true` and the
            // client presented a certificate.
            peer_certificate: attributes
                .and_then(|a| a.source.as_ref())
                .map(|peer| peer.certificate.as_str())
                .filter(|pem| !pem.is_empty()),
            context: attributes.map(|a| &a.context_extensions),
            override_header: SentHeaders(Some(http)).first_of(&OVERRIDE_HEADERS),
        };
        let outcome = self.checker.check(&input).await;
        build_response(&outcome, &self.settings, SentHeaders(Some(http)))
    }
}

#[tonic::async_trait]
impl Authorization for AuthorizationService {
    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        Ok(Response::new(self.check_request(request.get_ref()).await))
    }
}

/// A header that may appear once (`authorization`, `dpop`; `name` lower-case), from `headers`
/// or (Envoy's `encode_raw_headers`) `header_map`. Envoy joins repeated headers with ',' in
/// `headers` (the credential parsers refuse that), but lists each copy in `header_map`: more
/// than one copy, in either field, is malformed.
fn single_header<'a>(http: &'a HttpRequest, name: &str) -> SingleHeader<'a> {
    let mut found: Option<&str> = None;
    let mut copies = 0usize;
    if let Some(value) = http.headers.get(name) {
        found = Some(value.as_str());
        copies += 1;
    }
    let listed = http.header_map.iter().flat_map(|map| map.headers.iter());
    for h in listed.filter(|h| h.key.eq_ignore_ascii_case(name)) {
        copies += 1;
        if h.value.is_empty() {
            match std::str::from_utf8(&h.raw_value) {
                Ok(value) => found = Some(value),
                Err(_) => return SingleHeader::Malformed,
            }
        } else {
            found = Some(h.value.as_str());
        }
    }
    match (copies, found) {
        (0, _) | (_, None) => SingleHeader::Absent,
        (1, Some(value)) => SingleHeader::One(value),
        _ => SingleHeader::Malformed,
    }
}

fn denied_without_http(settings: &ResponseSettings) -> CheckResponse {
    // Not a decision of the checker (nothing to log there): the id ties the answer to this line.
    let decision_id = DecisionId::random();
    tracing::warn!(%decision_id, "CheckRequest without HTTP attributes refused");
    let mut response = CheckResponse::with_status(Status::invalid_argument(
        "scopegate authorizes HTTP requests only",
    ));
    let mut denied = DeniedHttpResponseBuilder::new();
    denied.set_http_status(HttpStatusCode::BadRequest);
    response.set_http_response(denied);
    if settings.dynamic_metadata != DynamicMetadata::Off {
        let mut metadata = Metadata::default();
        metadata.text("decision_id", &decision_id);
        metadata.text("decision", "deny");
        metadata.text("reason", Reason::InvalidRequest.as_str());
        response.set_dynamic_metadata(Some(metadata.0));
    }
    response
}

/// Which headers the client sent, as far as Envoy forwarded them to the check (`headers`, or
/// `header_map` with `encode_raw_headers`; Envoy sends only what `allowed_headers` lets through).
#[derive(Debug, Clone, Copy, Default)]
pub struct SentHeaders<'a>(pub Option<&'a HttpRequest>);

impl<'a> SentHeaders<'a> {
    /// The names of the headers that reached the check, in either field.
    fn names(self) -> impl Iterator<Item = &'a String> {
        self.0.into_iter().flat_map(|http| {
            let listed = http.header_map.iter().flat_map(|map| map.headers.iter());
            http.headers.keys().chain(listed.map(|h| &h.key))
        })
    }

    /// Whether a header `name` (lower-case) reached the check.
    pub fn contains(&self, name: &str) -> bool {
        self.names().any(|k| k.eq_ignore_ascii_case(name))
    }

    /// The first header among those sent (in one pass over them) that is one of `wanted`.
    pub fn first_of(&self, wanted: &[&'static str]) -> Option<&'static str> {
        self.names()
            .find_map(|k| wanted.iter().copied().find(|w| w.eq_ignore_ascii_case(k)))
    }
}

/// Turns a decision into Envoy's response; `sent` tells which headers the request carries, so
/// that removals are only asked for headers that are there.
pub fn build_response(
    outcome: &CheckOutcome,
    settings: &ResponseSettings,
    sent: SentHeaders<'_>,
) -> CheckResponse {
    let mut response = match &outcome.decision.verdict {
        Verdict::Allow { .. } => allow_response(&outcome.decision, settings, sent),
        Verdict::Deny(denial) => deny_response(denial, &outcome.decision_id, settings),
    };
    if settings.dynamic_metadata.wanted(&outcome.decision) {
        response.set_dynamic_metadata(Some(dynamic_metadata(outcome)));
    }
    response
}

/// `google.protobuf.Struct` under Envoy's `envoy.filters.http.ext_authz` namespace.
#[derive(Debug, Default)]
struct Metadata(Struct);

impl Metadata {
    fn text(&mut self, key: &str, value: &str) {
        let value = Value {
            kind: Some(Kind::StringValue(value.to_string())),
        };
        self.0.fields.insert(key.to_string(), value);
    }

    fn number(&mut self, key: &str, value: f64) {
        let value = Value {
            kind: Some(Kind::NumberValue(value)),
        };
        self.0.fields.insert(key.to_string(), value);
    }
}

/// What Envoy's access log and later filters may read
/// (`%DYNAMIC_METADATA(envoy.filters.http.ext_authz:reason)%`): the same fields as the
/// decision log line, never the token. `subject` and `client_id` come from verified claims
/// only (also on a denial of a verified token, e.g. `insufficient_scope`), as in the log.
fn dynamic_metadata(outcome: &CheckOutcome) -> Struct {
    let decision = &outcome.decision;
    let mut metadata = Metadata::default();
    metadata.text("decision_id", &outcome.decision_id);
    let allowed = matches!(decision.verdict, Verdict::Allow { .. });
    metadata.text("decision", if allowed { "allow" } else { "deny" });
    metadata.text("reason", decision.reason().as_str());
    if let Verdict::Allow {
        would_deny: Some(would),
        ..
    } = &decision.verdict
    {
        metadata.text("would_deny", would.as_str());
    }
    if let Some(rule) = &decision.rule {
        metadata.text("rule_id", &rule.id);
    }
    if let Some(revision) = outcome.revision {
        // A JSON number: exact up to 2^53, far beyond any etcd revision.
        metadata.number("revision", revision as f64);
    }
    let claims = decision.claims.as_deref();
    if let Some(sub) = claims.and_then(|c| c.sub.as_deref()) {
        metadata.text("subject", sub);
    }
    if let Some(client_id) = claims.and_then(|c| c.client_id.as_deref()) {
        metadata.text("client_id", client_id);
    }
    metadata.0
}

fn allow_response(
    decision: &Decision,
    settings: &ResponseSettings,
    sent: SentHeaders<'_>,
) -> CheckResponse {
    let mut ok = OkHttpResponseBuilder::new();
    let claims = decision.upstream_identity();
    let scopes = claims.map(|c| c.scopes.join(" "));
    let identity = [
        (
            &settings.subject_header,
            claims.and_then(|c| c.sub.as_deref()),
        ),
        (
            &settings.client_id_header,
            claims.and_then(|c| c.client_id.as_deref()),
        ),
        (&settings.scopes_header, scopes.as_deref()),
    ];
    for (name, value) in identity {
        match value.filter(|v| !v.is_empty() && is_header_safe(v)) {
            // Overwrite replaces every copy the client sent under this name.
            Some(v) => {
                ok.add_header(
                    name.as_str(),
                    v,
                    Some(HeaderAppendAction::OverwriteIfExistsOrAdd),
                    false,
                );
            }
            // Nothing to assert: a client-forged copy must not reach the upstream. Only a
            // header the request carries is removed (Envoy must forward these headers to the
            // check: `allowed_headers` in its ext_authz filter).
            None if sent.contains(name) => {
                ok.remove_header(name.as_str());
            }
            None => {}
        }
    }
    if settings.strip_authorization && sent.contains("authorization") {
        ok.remove_header("authorization");
    }
    let mut response = CheckResponse::with_status(Status::ok("allowed"));
    response.set_http_response(ok);
    response
}

/// Header values come from token claims: refuse anything that could split or smuggle headers.
fn is_header_safe(value: &str) -> bool {
    value.len() <= 4096 && value.bytes().all(|b| (0x20..0x7F).contains(&b))
}

fn deny_response(denial: &Denial, decision_id: &str, settings: &ResponseSettings) -> CheckResponse {
    let (code, http) = match denial.status {
        DenyStatus::BadRequest => (Code::InvalidArgument, HttpStatusCode::BadRequest),
        DenyStatus::Unauthorized => (Code::Unauthenticated, HttpStatusCode::Unauthorized),
        DenyStatus::Forbidden => (Code::PermissionDenied, HttpStatusCode::Forbidden),
        DenyStatus::ServiceUnavailable => (Code::Unavailable, HttpStatusCode::ServiceUnavailable),
    };
    let mut denied = DeniedHttpResponseBuilder::new();
    denied.set_http_status(http);
    if let Some(challenge) = denial.challenge.header_value(&settings.realm) {
        denied.add_header("www-authenticate", challenge, None, false);
    }
    denied.add_header("content-type", "application/json", None, false);
    denied.add_header("x-scopegate-decision-id", decision_id, None, false);
    denied.set_body(format!(
        "{{\"error\":\"{}\",\"reason\":\"{}\",\"decision_id\":\"{decision_id}\"}}\n",
        denial.error_code(),
        denial.reason.as_str()
    ));
    let mut response = CheckResponse::with_status(Status::new(code, denial.reason.as_str()));
    response.set_http_response(denied);
    response
}
