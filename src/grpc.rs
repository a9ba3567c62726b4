//! The Envoy `envoy.service.auth.v3.Authorization` service. Translation only, no policy: a
//! `CheckRequest` becomes a [`CheckInput`], the [`Checker`] decides, and the [`Decision`] becomes
//! a `CheckResponse` (OK with upstream identity headers, or a denied HTTP response with the
//! RFC 6750 `WWW-Authenticate` challenge).

use std::sync::Arc;

use envoy_types::ext_authz::v3::pb::{
    Authorization, CheckRequest, CheckResponse, HeaderAppendAction, HttpStatusCode,
};
use envoy_types::ext_authz::v3::{
    CheckResponseExt, DeniedHttpResponseBuilder, OkHttpResponseBuilder,
};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::HttpRequest;
use tonic::{Code, Request, Response, Status};

use crate::authz::{Decision, Denial, DenyStatus, Verdict};
use crate::check::{AuthorizationHeader, CheckInput, CheckOutcome, Checker};

/// Realm in `WWW-Authenticate` challenges.
pub const DEFAULT_REALM: &str = "scopegate";
/// Upstream header names for the verified identity.
pub const DEFAULT_SUBJECT_HEADER: &str = "x-scopegate-subject";
pub const DEFAULT_CLIENT_ID_HEADER: &str = "x-scopegate-client-id";
pub const DEFAULT_SCOPES_HEADER: &str = "x-scopegate-scopes";

/// Names of the headers scopegate sets on allowed requests for the upstream.
#[derive(Debug, Clone)]
pub struct ResponseSettings {
    pub realm: String,
    pub subject_header: String,
    pub client_id_header: String,
    pub scopes_header: String,
}

impl Default for ResponseSettings {
    fn default() -> Self {
        ResponseSettings {
            realm: DEFAULT_REALM.into(),
            subject_header: DEFAULT_SUBJECT_HEADER.into(),
            client_id_header: DEFAULT_CLIENT_ID_HEADER.into(),
            scopes_header: DEFAULT_SCOPES_HEADER.into(),
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

    /// Decides one `CheckRequest` (what the gRPC method does, callable in-process).
    pub fn check_request(&self, request: &CheckRequest) -> CheckResponse {
        let attributes = request.attributes.as_ref();
        let http = attributes
            .and_then(|a| a.request.as_ref())
            .and_then(|r| r.http.as_ref());
        let Some(http) = http else {
            // Not an HTTP check (e.g. Envoy's network ext_authz filter): nothing to authorize.
            return denied_without_http();
        };
        let input = CheckInput {
            host: &http.host,
            method: &http.method,
            path: &http.path,
            authorization: authorization_header(http),
            context: attributes.map(|a| &a.context_extensions),
        };
        let outcome = self.checker.check(&input);
        build_response(&outcome, &self.settings)
    }
}

#[tonic::async_trait]
impl Authorization for AuthorizationService {
    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        Ok(Response::new(self.check_request(request.get_ref())))
    }
}

/// The `Authorization` header, from `headers` or (Envoy's `encode_raw_headers`) `header_map`.
/// Envoy joins repeated headers with ',' in `headers` (the bearer parser refuses that), but
/// lists each copy in `header_map`: more than one copy, in either field, is malformed.
fn authorization_header(http: &HttpRequest) -> AuthorizationHeader<'_> {
    let mut found: Option<&str> = None;
    let mut copies = 0usize;
    if let Some(value) = http.headers.get("authorization") {
        found = Some(value.as_str());
        copies += 1;
    }
    let listed = http.header_map.iter().flat_map(|map| map.headers.iter());
    for h in listed.filter(|h| h.key.eq_ignore_ascii_case("authorization")) {
        copies += 1;
        if h.value.is_empty() {
            match std::str::from_utf8(&h.raw_value) {
                Ok(value) => found = Some(value),
                Err(_) => return AuthorizationHeader::Malformed,
            }
        } else {
            found = Some(h.value.as_str());
        }
    }
    match (copies, found) {
        (0, _) | (_, None) => AuthorizationHeader::Absent,
        (1, Some(value)) => AuthorizationHeader::One(value),
        _ => AuthorizationHeader::Malformed,
    }
}

fn denied_without_http() -> CheckResponse {
    let mut response = CheckResponse::with_status(Status::invalid_argument(
        "scopegate authorizes HTTP requests only",
    ));
    let mut denied = DeniedHttpResponseBuilder::new();
    denied.set_http_status(HttpStatusCode::BadRequest);
    response.set_http_response(denied);
    response
}

/// Turns a decision into Envoy's response.
pub fn build_response(outcome: &CheckOutcome, settings: &ResponseSettings) -> CheckResponse {
    match &outcome.decision.verdict {
        Verdict::Allow { .. } => allow_response(&outcome.decision, settings),
        Verdict::Deny(denial) => deny_response(denial, &outcome.decision_id, settings),
    }
}

fn allow_response(decision: &Decision, settings: &ResponseSettings) -> CheckResponse {
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
            // Nothing to assert: make sure no client-forged copy reaches the upstream.
            None => {
                ok.remove_header(name.as_str());
            }
        }
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
