//! [`DecisionId`]: the id that ties a decision's answer (`x-scopegate-decision-id`, dynamic
//! metadata), its decision-log line and Envoy's access log together. A random UUID v4 in its
//! 32-hex-digit simple form, kept inline: no allocation per check, and a value that never
//! needs escaping in JSON or a header.

use std::fmt;

/// A random UUID v4 as 32 lower-case hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct DecisionId([u8; uuid::fmt::Simple::LENGTH]);

impl DecisionId {
    /// A fresh id (uuid's fast thread-local generator).
    pub fn random() -> DecisionId {
        DecisionId::from(uuid::Uuid::new_v4())
    }

    pub fn as_str(&self) -> &str {
        // Hex digits only (see `From<Uuid>`): always UTF-8.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl From<uuid::Uuid> for DecisionId {
    fn from(id: uuid::Uuid) -> DecisionId {
        let mut digits = [0u8; uuid::fmt::Simple::LENGTH];
        id.simple().encode_lower(&mut digits);
        DecisionId(digits)
    }
}

impl std::ops::Deref for DecisionId {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl fmt::Display for DecisionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for DecisionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DecisionId({})", self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_is_the_uuids_simple_form_and_ids_differ() {
        let uuid = uuid::Uuid::new_v4();
        let id = DecisionId::from(uuid);
        assert_eq!(id.as_str(), uuid.simple().to_string());
        assert_eq!(id.len(), 32);
        assert!(id
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        assert_ne!(DecisionId::random(), DecisionId::random());
    }
}
