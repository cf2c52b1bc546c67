//! Health: each component of a vault healthy, warning or critical, with the
//! reason. One function per component; [`Vault::health`] runs them all.
//! Adding a component (the cache's hit ratio, say) is one more function and
//! one more line in [`Vault::health`].
//!
//! A report is cheap enough to serve on every load-balancer probe: every
//! component but one costs a lookup or a system call. The exception,
//! `PRAGMA quick_check`, reads the whole file; it runs at most once per
//! [`HealthConfig::integrity_interval`] on the vault's clock (on a reader
//! connection's thread), and the reports in between say how old its answer
//! is.

use std::path::Path;

use crate::metrics::file_sizes;
use crate::{Timestamp, Vault};

mod types;

pub(crate) use types::HealthState;
pub use types::{Component, HealthConfig, HealthReport, HealthStatus};
use types::{Integrity, worse_than};

/// A PostgreSQL database's own component: it answers and takes a
/// transaction.
#[cfg(feature = "postgres")]
async fn check_database(db: &crate::postgres::Database) -> Component {
    let name = "database";
    let answered = async {
        let mut tx = db.pool().begin().await?;
        sqlx::query("SELECT 1").execute(&mut *tx).await?;
        tx.rollback().await
    };
    match answered.await {
        Ok(()) => Component::new(
            name,
            HealthStatus::Healthy,
            "answers and takes a transaction",
        ),
        Err(e) => Component::new(
            name,
            HealthStatus::Critical,
            format!("{} does not answer: {e}", db.url()),
        ),
    }
}

impl Vault {
    /// Checks every component: the file opens and takes a write, `PRAGMA
    /// quick_check`, the key file's mode, the key's age, free disk, WAL
    /// size, the recent violation rate, the cache hit ratio.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> statevault::Result<()> {
    /// use statevault::{HealthStatus, Vault, VaultOptions};
    ///
    /// let dir = tempfile::tempdir().unwrap();
    /// let vault = Vault::open(VaultOptions::new(dir.path().join("v.db"))).await?;
    /// let report = vault.health().await;
    /// assert_eq!(report.component("key_file").unwrap().status, HealthStatus::Healthy);
    /// vault.close().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn health(&self) -> HealthReport {
        let config = &self.health_state().config;
        #[cfg(feature = "postgres")]
        if let crate::core::Storage::Postgres(db) = self.core().storage() {
            let components = vec![
                check_database(db).await,
                self.check_violations(config).await,
                self.check_cache(config).await,
            ];
            return HealthReport::of(Some(self.now()), components);
        }
        let components = vec![
            self.check_writable().await,
            self.check_integrity(config).await,
            self.check_key_file(),
            self.check_key_age(config).await,
            self.check_disk(config),
            self.check_wal(config),
            self.check_violations(config).await,
            self.check_cache(config).await,
        ];
        HealthReport::of(Some(self.now()), components)
    }

    async fn check_writable(&self) -> Component {
        let name = "file";
        if let Err(e) = std::fs::OpenOptions::new().append(true).open(self.path()) {
            return Component::new(name, HealthStatus::Critical, format!("not writable: {e}"));
        }
        let began = match self.store() {
            Ok(store) => store.sqlx_transaction().await,
            Err(e) => Err(e),
        };
        match began {
            // Dropping the transaction rolls it back: nothing is written.
            Ok(tx) => {
                drop(tx);
                Component::new(
                    name,
                    HealthStatus::Healthy,
                    "opens and takes the write lock",
                )
            }
            Err(e) => Component::new(name, HealthStatus::Critical, format!("cannot write: {e}")),
        }
    }

    /// `quick_check`'s answer, at most `integrity_interval` old.
    async fn check_integrity(&self, config: &HealthConfig) -> Component {
        let name = "integrity";
        let mut last = self.health_state().integrity.lock().await;
        let now = self.now();
        let fresh = last
            .as_ref()
            .filter(|c| c.at <= now && now.duration_since(c.at) < config.integrity_interval);
        let checked = match fresh {
            Some(checked) => checked.clone(),
            None => match self.quick_check().await {
                Ok(lines) => last.insert(Integrity { at: now, lines }).clone(),
                Err(e) => {
                    return Component::new(
                        name,
                        HealthStatus::Critical,
                        format!("quick_check failed: {e}"),
                    );
                }
            },
        };
        let age = match now.duration_since(checked.at).as_secs() {
            0 => "checked just now".to_owned(),
            secs => format!("checked {secs} s ago"),
        };
        let every = config.integrity_interval.as_secs();
        match checked.lines.as_slice() {
            [ok] if ok == "ok" => Component::new(
                name,
                HealthStatus::Healthy,
                format!("quick_check: ok ({age}; at most every {every} s)"),
            ),
            lines => Component::new(
                name,
                HealthStatus::Critical,
                format!("quick_check: {} ({age})", lines.join("; ")),
            ),
        }
    }

    fn check_key_file(&self) -> Component {
        use std::os::unix::fs::PermissionsExt;
        let name = "key_file";
        if !self.is_encrypted() {
            return Component::new(name, HealthStatus::Warning, "the file is not encrypted");
        }
        let Some(path) = self.key_file() else {
            return Component::new(name, HealthStatus::Healthy, "key not read from a file");
        };
        match std::fs::metadata(path) {
            Ok(meta) => {
                let mode = meta.permissions().mode() & 0o777;
                if mode & 0o077 == 0 {
                    Component::new(name, HealthStatus::Healthy, format!("mode {mode:04o}"))
                } else {
                    Component::new(
                        name,
                        HealthStatus::Critical,
                        format!("{} has mode {mode:04o}; want 0600", display(path)),
                    )
                }
            }
            Err(e) => Component::new(
                name,
                HealthStatus::Critical,
                format!("cannot read {}: {e}", display(path)),
            ),
        }
    }

    async fn quick_check(&self) -> crate::Result<Vec<String>> {
        self.store()?.quick_check().await
    }

    async fn check_key_age(&self, config: &HealthConfig) -> Component {
        let name = "key_age";
        if !self.is_encrypted() {
            return Component::new(name, HealthStatus::Healthy, "no key");
        }
        let created = match self.meta("key_created_at").await {
            Ok(Some(text)) => Timestamp::parse(&text),
            Ok(None) => {
                return Component::new(name, HealthStatus::Warning, "key creation time unknown");
            }
            Err(e) => Err(e),
        };
        match created {
            Ok(created) => {
                let age = self.now().duration_since(created);
                let days = age.as_secs() / 86_400;
                let period = config.key_rotation.as_secs() / 86_400;
                if age > config.key_rotation {
                    Component::new(
                        name,
                        HealthStatus::Warning,
                        format!(
                            "key is {days} days old; rotate every {period} days (statevault rekey)"
                        ),
                    )
                } else {
                    Component::new(
                        name,
                        HealthStatus::Healthy,
                        format!("key is {days} days old (rotation period {period} days)"),
                    )
                }
            }
            Err(e) => Component::new(name, HealthStatus::Warning, format!("key age unknown: {e}")),
        }
    }

    fn check_disk(&self, config: &HealthConfig) -> Component {
        let name = "disk";
        let dir = self
            .path()
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        match rustix::fs::statvfs(dir) {
            Ok(st) => {
                let total = st.f_blocks.saturating_mul(st.f_frsize);
                let free = st.f_bavail.saturating_mul(st.f_frsize);
                let fraction = if total == 0 {
                    1.0
                } else {
                    free as f64 / total as f64
                };
                let status = if fraction < config.disk_critical_free {
                    HealthStatus::Critical
                } else if fraction < config.disk_warning_free {
                    HealthStatus::Warning
                } else {
                    HealthStatus::Healthy
                };
                Component::new(
                    name,
                    status,
                    format!(
                        "{} MiB free of {} MiB ({:.1} %)",
                        free >> 20,
                        total >> 20,
                        fraction * 100.0
                    ),
                )
            }
            Err(e) => Component::new(name, HealthStatus::Warning, format!("statvfs failed: {e}")),
        }
    }

    fn check_wal(&self, config: &HealthConfig) -> Component {
        let wal = file_sizes(self.path()).wal_bytes;
        Component::new(
            "wal",
            worse_than(
                wal as f64,
                config.wal_warning_bytes as f64,
                config.wal_critical_bytes as f64,
            ),
            format!(
                "{wal} bytes (warning above {}, critical above {})",
                config.wal_warning_bytes, config.wal_critical_bytes
            ),
        )
    }

    async fn check_violations(&self, config: &HealthConfig) -> Component {
        let name = "violations";
        let since = self.now().saturating_sub(config.violation_window);
        match crate::limits::violations_since(self.core(), since).await {
            Ok(n) => Component::new(
                name,
                worse_than(
                    n as f64,
                    config.violation_warning as f64,
                    config.violation_critical as f64,
                ),
                format!(
                    "{n} rate-limit violations in the last {} s (warning above {}, critical above {})",
                    config.violation_window.as_secs(),
                    config.violation_warning,
                    config.violation_critical
                ),
            ),
            Err(e) => Component::new(name, HealthStatus::Warning, format!("cannot count: {e}")),
        }
    }
}

impl Vault {
    /// This process's cache hit ratio, once it has seen enough lookups.
    async fn check_cache(&self, config: &HealthConfig) -> Component {
        let name = "cache";
        let stats = match self.cache().stats().await {
            Ok(stats) => stats,
            Err(e) => return Component::new(name, HealthStatus::Warning, format!("no stats: {e}")),
        };
        let lookups = stats.l1.hits + stats.l1.misses;
        if lookups < config.cache_min_lookups {
            return Component::new(
                name,
                HealthStatus::Healthy,
                format!("{lookups} lookups so far, too few to judge the hit ratio"),
            );
        }
        let status = if stats.hit_ratio < config.cache_hit_ratio_warning {
            HealthStatus::Warning
        } else {
            HealthStatus::Healthy
        };
        Component::new(
            name,
            status,
            format!(
                "hit ratio {:.1} % over {lookups} lookups (warning below {:.0} %)",
                100.0 * stats.hit_ratio,
                100.0 * config.cache_hit_ratio_warning
            ),
        )
    }
}

fn display(path: &Path) -> std::path::Display<'_> {
    path.display()
}
