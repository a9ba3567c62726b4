//! `serve` flags for identity providers: remote keys (JWKS refresh bounds, kid-miss wait and
//! rate limit, request timeout, start-up readiness bound) and RFC 7662 introspection. Per-issuer
//! `refresh_min`/`refresh_max` override the refresh flags.

use std::time::Duration;

use clap::Args;
use humantime::Duration as HumanDuration;

use crate::config::{
    self, ConfigError, IntrospectionSettings, RemoteKeySettings, DEFAULT_INTROSPECTION_CACHE_TTL,
};

#[derive(Debug, Clone, Args)]
pub struct IdpArgs {
    /// Shortest JWKS refresh interval (a Cache-Control max-age below it is raised to it; no
    /// max-age: this).
    #[arg(long, env = "SCOPEGATE_JWKS_REFRESH_MIN", default_value_t = config::DEFAULT_REFRESH_MIN.into())]
    pub jwks_refresh_min: HumanDuration,

    /// Longest JWKS refresh interval (a Cache-Control max-age above it is lowered to it).
    #[arg(long, env = "SCOPEGATE_JWKS_REFRESH_MAX", default_value_t = config::DEFAULT_REFRESH_MAX.into())]
    pub jwks_refresh_max: HumanDuration,

    /// How long a request whose token names an unknown kid waits for a JWKS refetch.
    #[arg(long, env = "SCOPEGATE_JWKS_KID_MISS_WAIT", default_value_t = config::DEFAULT_KID_MISS_WAIT.into())]
    pub jwks_kid_miss_wait: HumanDuration,

    /// At most one unknown-kid refetch per issuer per this interval.
    #[arg(long, env = "SCOPEGATE_JWKS_KID_MISS_INTERVAL", default_value_t = config::DEFAULT_KID_MISS_INTERVAL.into())]
    pub jwks_kid_miss_interval: HumanDuration,

    /// Timeout of one request to an identity provider for keys or discovery.
    #[arg(long, env = "SCOPEGATE_IDP_TIMEOUT", default_value_t = config::DEFAULT_FETCH_TIMEOUT.into())]
    pub idp_timeout: HumanDuration,

    /// Readiness waits at most this long, from start-up, for every remote-key issuer to have
    /// keys; then it is ready with those that have them (the others answer unknown_key).
    #[arg(long, env = "SCOPEGATE_KEYS_READY_TIMEOUT", default_value_t = config::DEFAULT_KEYS_READY_TIMEOUT.into())]
    pub keys_ready_timeout: HumanDuration,

    /// Timeout of one RFC 7662 introspection request (on the request path: keep it below
    /// Envoy's ext_authz timeout). Timeouts and errors deny (introspection_failed, 503).
    #[arg(long, env = "SCOPEGATE_INTROSPECTION_TIMEOUT", default_value_t = config::DEFAULT_INTROSPECTION_TIMEOUT.into())]
    pub introspection_timeout: HumanDuration,

    /// Longest time an introspection answer (active or not) is reused; never past the token's exp.
    #[arg(long, env = "SCOPEGATE_INTROSPECTION_CACHE_TTL", default_value_t = DEFAULT_INTROSPECTION_CACHE_TTL.into())]
    pub introspection_cache_ttl: HumanDuration,
}

impl IdpArgs {
    /// The remote-key settings, validated.
    pub fn keys(&self) -> Result<RemoteKeySettings, ConfigError> {
        config::remote_key_settings(RemoteKeySettings {
            refresh_min: self.jwks_refresh_min.into(),
            refresh_max: self.jwks_refresh_max.into(),
            kid_miss_wait: self.jwks_kid_miss_wait.into(),
            kid_miss_interval: self.jwks_kid_miss_interval.into(),
            fetch_timeout: self.idp_timeout.into(),
            introspection_timeout: self.introspection_timeout.into(),
        })
    }

    /// The introspection cache settings.
    pub fn introspection(&self) -> IntrospectionSettings {
        IntrospectionSettings {
            cache_ttl: Duration::from(self.introspection_cache_ttl),
            ..IntrospectionSettings::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{self, Config};

    fn serve(extra: &[&str]) -> Result<Config, String> {
        let mut argv = vec!["--rules", "r.yaml"];
        argv.extend_from_slice(extra);
        crate::cli::tests::serve(&argv)
    }

    #[test]
    fn defaults_come_from_the_named_constants() {
        let config = serve(&[]).unwrap();
        assert_eq!(config.keys, config::RemoteKeySettings::default());
        assert_eq!(config.keys.refresh_min, config::DEFAULT_REFRESH_MIN);
        assert_eq!(config.keys.kid_miss_wait, config::DEFAULT_KID_MISS_WAIT);
        assert_eq!(
            config.keys_ready_timeout,
            config::DEFAULT_KEYS_READY_TIMEOUT
        );
        assert_eq!(
            config.check.introspection.cache_ttl,
            config::DEFAULT_INTROSPECTION_CACHE_TTL
        );
    }

    #[test]
    fn refresh_bounds_are_checked() {
        let config = serve(&[
            "--jwks-refresh-min",
            "30s",
            "--jwks-kid-miss-interval",
            "1m",
        ]);
        let keys = config.unwrap().keys;
        assert_eq!(keys.refresh_min.as_secs(), 30);
        assert_eq!(keys.kid_miss_interval.as_secs(), 60);
        for (flags, want) in [
            (
                &["--jwks-refresh-min", "2h"][..],
                "must not exceed --jwks-refresh-max",
            ),
            (&["--jwks-refresh-min", "0s"][..], "at least 1s"),
            (
                &["--introspection-timeout", "0s"][..],
                "--introspection-timeout must be positive",
            ),
        ] {
            let err = serve(flags).unwrap_err();
            assert!(err.contains(want), "{flags:?}: {err}");
        }
    }
}
