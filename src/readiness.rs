//! What "ready" means, in one place for the gRPC health service, `/readyz` and
//! `/readyz/serving`: a snapshot is loaded, it was confirmed current within two thirds of
//! `--max-staleness` ([`SnapshotStore::is_serving`]), and every issuer whose keys are fetched
//! from a JWKS URL has keys, or `--keys-ready-timeout` has passed since start-up. Envoy (through
//! the gRPC health check) and Kubernetes (through either probe) thus send checks only to a replica
//! that can verify its issuers' tokens from current rules.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::store::SnapshotStore;

/// The inputs of readiness; cheap to clone.
#[derive(Debug, Clone)]
pub struct Readiness {
    pub store: Arc<SnapshotStore>,
    pub max_staleness: Option<Duration>,
    /// Until then, readiness also waits for every remote-key issuer to have keys.
    pub keys_ready_deadline: Instant,
}

impl Readiness {
    /// Ready to take checks now.
    pub fn is_ready(&self) -> bool {
        let Some(snapshot) = self.store.current() else {
            return false;
        };
        let keys =
            snapshot.verifier.remote_keys_loaded() || Instant::now() >= self.keys_ready_deadline;
        keys && self.store.is_serving(self.max_staleness)
    }
}
