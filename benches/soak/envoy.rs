//! Envoy in front of the replicas: its configuration (health checks, retries, the access log and
//! the health-check event log), and reading back what it logged and counted.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::support::envoy::try_request;

/// Where Envoy writes what the driver reads back after the run.
pub(crate) struct EnvoyLogs {
    /// One line per request, see [`AccessEntry`].
    pub(crate) access: PathBuf,
    /// The scopegate cluster's health-check events (ejections, additions), JSON lines.
    pub(crate) health: PathBuf,
}

/// Envoy in front of both replicas: gRPC health checks eject a replica that is down or stale,
/// and a check that fails at the gRPC level is retried on the other host. The access log and
/// the health-check event log only record (see [`EnvoyLogs`]); they change no routing.
pub(crate) fn envoy_config(
    listener: u16,
    admin: u16,
    replicas: [u16; 2],
    upstream: u16,
    logs: &EnvoyLogs,
) -> String {
    format!(
        r#"
admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}}}
static_resources:
  listeners:
  - name: ingress
    address: {{socket_address: {{address: 127.0.0.1, port_value: {listener}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress_http
          normalize_path: true
          merge_slashes: true
          path_with_escaped_slashes_action: REJECT_REQUEST
          access_log:
          - name: envoy.access_loggers.file
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: {access}
              log_format:
                text_format_source:
                  inline_string: "{access_format}"
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{prefix: /}}
                route: {{cluster: upstream}}
          http_filters:
          - name: envoy.filters.http.ext_authz
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz
              transport_api_version: V3
              emit_filter_state_stats: true
              grpc_service:
                envoy_grpc: {{cluster_name: scopegate}}
                # On the GrpcService itself: `envoy_grpc.retry_policy` is for xDS streams only (an
                # ext_authz call ignores it), and a policy without `retry_on` retries nothing.
                # A Check is idempotent: retry a failed connection, a reset or an UNAVAILABLE
                # call, on another host. Envoy also makes `max_interval` the per-try timeout: at
                # 0.05 s a 50 ms CPU stall (an etcd member restarting) timed tries out in bursts
                # that overflowed the cluster's retry limit; 0.25 s lets two tries fit the 0.5 s.
                retry_policy:
                  retry_on: connect-failure,refused-stream,reset,unavailable,cancelled
                  num_retries: 2
                  retry_back_off: {{base_interval: 0.01s, max_interval: 0.25s}}
                  retry_host_predicate:
                  - name: envoy.retry_host_predicates.previous_hosts
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate
                  host_selection_retry_max_attempts: 3
                timeout: 0.5s
              failure_mode_allow: false
              status_on_error: {{code: ServiceUnavailable}}
              allowed_headers: {{patterns: [{{exact: authorization}}]}}
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: scopegate
    type: STATIC
    connect_timeout: 0.25s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{http2_protocol_options: {{}}}}
    health_checks:
    # `no_traffic_interval` (default 60 s) is Envoy's interval until a cluster has had traffic,
    # and the first check (at startup, before any) schedules the next with it: without this line
    # the first health check after startup comes 60 s later, and no replica is ejected before.
    - timeout: 0.25s
      interval: 0.25s
      no_traffic_interval: 0.25s
      unhealthy_threshold: 1
      healthy_threshold: 1
      event_logger:
      - name: envoy.health_check.event_sink.file
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.health_check.event_sinks.file.v3.HealthCheckEventFileSink
          event_log_path: {health}
      grpc_health_check: {{service_name: envoy.service.auth.v3.Authorization}}
    load_assignment:
      cluster_name: scopegate
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {a}}}}}}}
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {b}}}}}}}
  - name: upstream
    type: STATIC
    connect_timeout: 0.25s
    load_assignment:
      cluster_name: upstream
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {upstream}}}}}}}
"#,
        a = replicas[0],
        b = replicas[1],
        access = logs.access.display(),
        health = logs.health.display(),
        access_format = ACCESS_FORMAT,
    )
}

/// Tab-separated, in [`AccessEntry`]'s order (YAML double-quoted escapes).
pub(crate) const ACCESS_FORMAT: &str = concat!(
    "%REQ(X-SOAK-ID)%\\t%START_TIME(%s.%3f)%\\t%RESPONSE_CODE%\\t%RESPONSE_FLAGS%",
    "\\t%RESPONSE_CODE_DETAILS%\\t%DURATION%",
    "\\t%FILTER_STATE(envoy.filters.http.ext_authz:FIELD:latency_us)%",
    "\\t%FILTER_STATE(envoy.filters.http.ext_authz:FIELD:bytesReceived)%",
    "\\t%DYNAMIC_METADATA(envoy.filters.http.ext_authz:decision_id)%",
    "\\t%DYNAMIC_METADATA(envoy.filters.http.ext_authz:reason)%\\n"
);

/// One line of the soak's Envoy access log.
pub(crate) struct AccessEntry {
    /// When Envoy started the request.
    pub(crate) start: SystemTime,
    pub(crate) status: u16,
    pub(crate) flags: String,
    pub(crate) details: String,
    pub(crate) duration_ms: String,
    /// The ext_authz call as Envoy saw it (`-` when not recorded).
    pub(crate) authz_latency_us: String,
    pub(crate) authz_bytes_received: String,
    pub(crate) decision_id: String,
    pub(crate) reason: String,
}

pub(crate) fn read_access_log(path: &Path) -> HashMap<u64, AccessEntry> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split('\t').collect();
            let [id, start, status, flags, details, duration, latency, received, decision, reason] =
                f[..]
            else {
                return None;
            };
            let start = Duration::from_secs_f64(start.parse::<f64>().ok()?);
            Some((
                id.parse().ok()?,
                AccessEntry {
                    start: SystemTime::UNIX_EPOCH + start,
                    status: status.parse().unwrap_or(0),
                    flags: flags.to_string(),
                    details: details.to_string(),
                    duration_ms: duration.to_string(),
                    authz_latency_us: latency.to_string(),
                    authz_bytes_received: received.to_string(),
                    decision_id: decision.to_string(),
                    reason: reason.to_string(),
                },
            ))
        })
        .collect()
}

/// Envoy's counters that say how ext_authz calls fared (non-zero only): the filter's, the
/// scopegate cluster's retries, timeouts, resets and health checks, and per-host errors.
pub(crate) async fn envoy_stats(admin: SocketAddr) -> Vec<String> {
    let mut out = Vec::new();
    let get = |path: &'static str| async move {
        try_request(admin, "GET", path, &[], Duration::from_secs(5))
            .await
            .map(|r| r.body)
            .unwrap_or_default()
    };
    let interesting = [
        "retry",
        "timeout",
        "reset",
        "connect_fail",
        "pending_failure_eject",
        "with_active_rq",
        "health_check.",
        "upstream_rq_5",
    ];
    for line in get("/stats").await.lines() {
        let Some((name, value)) = line.split_once(": ") else {
            continue;
        };
        if value.trim() == "0" || value.contains("P0(") {
            continue;
        }
        let authz = name.contains("ext_authz");
        let cluster =
            name.starts_with("cluster.scopegate.") && interesting.iter().any(|i| name.contains(i));
        if authz || cluster {
            out.push(line.to_string());
        }
    }
    for line in get("/clusters").await.lines() {
        let Some(rest) = line.strip_prefix("scopegate::") else {
            continue;
        };
        let wanted = [
            "::rq_error::",
            "::rq_timeout::",
            "::cx_connect_fail::",
            "::health_flags::",
        ];
        if wanted.iter().any(|w| rest.contains(w)) && !rest.ends_with("::0") {
            out.push(line.to_string());
        }
    }
    out
}
