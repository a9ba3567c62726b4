//! Test-only helpers shared by the unit tests of several modules.

use std::sync::Arc;

/// An in-memory `Write` that keeps everything written to it (log capture); clones share it.
#[derive(Clone, Default)]
#[allow(
    clippy::disallowed_types,
    reason = "a test's log capture, not the check path"
)]
pub struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl Captured {
    /// Everything written so far.
    pub fn bytes(&self) -> Vec<u8> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Everything written so far, as UTF-8 text.
    pub fn text(&self) -> String {
        String::from_utf8(self.bytes()).expect("UTF-8 log output")
    }
}

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
