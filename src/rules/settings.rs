//! Policy-wide settings (the single key `settings`, or the `settings:` section of a rules file):
//! `{"mode": "dry_run"}` runs every enforce rule in dry run (a shadow of the whole policy),
//! `{"mode": "enforce"}` (the default) leaves each rule's own mode alone.

use serde::Deserialize;
use serde_json::Value;

use super::route::Mode;

/// Validated settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Settings {
    /// `DryRun`: every enforce rule is evaluated in dry run. `Enforce`: rules keep their mode.
    pub mode: Mode,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSettings {
    #[serde(default)]
    mode: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    description: Option<String>,
}

impl Settings {
    /// Validates a settings value.
    pub fn from_json(value: &Value) -> Result<Settings, String> {
        let raw: RawSettings = super::deserialize_value(value)?;
        let mode = match raw.mode.as_deref() {
            None | Some("enforce") => Mode::Enforce,
            Some("dry_run") => Mode::DryRun,
            Some(other) => {
                return Err(format!(
                    "mode {other:?}: expected \"enforce\" or \"dry_run\""
                ))
            }
        };
        Ok(Settings { mode })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn settings_validate() {
        let dry = Settings::from_json(&json!({"mode": "dry_run"})).unwrap();
        assert_eq!(dry.mode, Mode::DryRun);
        assert_eq!(Settings::from_json(&json!({})).unwrap().mode, Mode::Enforce);
        assert!(Settings::from_json(&json!({"mode": "off"})).is_err());
        assert!(Settings::from_json(&json!({"mdoe": "dry_run"})).is_err());
    }
}
