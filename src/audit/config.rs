//! How long the log keeps events and how large their details may be.

use crate::{Error, Result};

/// Retention for the audit log.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct AuditConfig {
    /// [`Audit::sweep`](super::Audit::sweep) deletes events older than this (default 90 days).
    pub retention: std::time::Duration,
    /// The largest `details` JSON (default 64 KiB).
    pub max_details_bytes: usize,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            retention: std::time::Duration::from_secs(90 * 24 * 3600),
            max_details_bytes: 64 << 10,
        }
    }
}

impl AuditConfig {
    /// Refuses a retention under an hour and a details limit above 16 MiB.
    pub(crate) fn validate(&self) -> Result<()> {
        if self.retention < std::time::Duration::from_secs(3600) {
            return Err(Error::invalid("audit.retention", "shorter than an hour"));
        }
        if self.max_details_bytes > 16 << 20 {
            return Err(Error::invalid(
                "audit.max_details_bytes",
                "more than 16 MiB",
            ));
        }
        Ok(())
    }
}
