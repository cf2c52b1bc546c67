//! The facets' contracts, one suite run unchanged against each backend: the
//! SQLite file, and (feature `postgres`, with `STATEVAULT_TEST_POSTGRES`
//! naming a server) a PostgreSQL database of the test's own. Each facet's
//! file lists its tests once in [`contract!`], which makes a `sqlite::` and
//! a `postgres::` test of each.

#[path = "../common/mod.rs"]
mod common;

mod audit;
mod cache;
mod limits;
mod metrics;
mod prefs;
mod sessions;
mod vault;

use statevault::{FakeClock, Vault, VaultOptions};

/// Where a contract test keeps the vault's state.
#[derive(Clone, Copy, Debug)]
pub enum Backend {
    Sqlite,
    #[cfg(feature = "postgres")]
    Postgres,
}

/// A vault under test, on one backend, with the clock the test moves.
pub struct Subject {
    pub vault: Vault,
    pub clock: FakeClock,
    /// What opened `vault`: [`Subject::another`] opens the same state again.
    options: VaultOptions,
    _dir: tempfile::TempDir,
    #[cfg(feature = "postgres")]
    _db: Option<common::PgDatabase>,
}

impl Backend {
    /// A new, empty vault with `configure`d options, or `None` when the
    /// backend's server is missing (a loud skip; a failure in CI).
    pub async fn open(
        self,
        configure: impl FnOnce(VaultOptions) -> VaultOptions,
    ) -> Option<Subject> {
        let dir = common::tempdir();
        let clock = FakeClock::default();
        #[cfg(feature = "postgres")]
        let mut db = None;
        let options = match self {
            Backend::Sqlite => VaultOptions::new(dir.path().join("vault.db")),
            #[cfg(feature = "postgres")]
            Backend::Postgres => {
                let made = db.insert(common::postgres_database()?);
                VaultOptions::new(&made.url)
                    .key_source(statevault::KeySource::File(dir.path().join("vault.key")))
            }
        };
        let options = configure(options.clock(clock.clone()));
        let vault = Vault::open(options.clone()).await.expect("open the vault");
        Some(Subject {
            vault,
            clock,
            options,
            _dir: dir,
            #[cfg(feature = "postgres")]
            _db: db,
        })
    }
}

impl Subject {
    /// Another handle on the same state, as another instance of the service
    /// would open it (same key, same clock).
    pub async fn another(&self) -> Vault {
        Vault::open(self.options.clone()).await.expect("open again")
    }

    /// The same state opened with options changed by `configure`, as a new
    /// release of the service would (the test closes `vault` first).
    pub async fn reopen_with(&self, configure: impl FnOnce(VaultOptions) -> VaultOptions) -> Vault {
        Vault::open(configure(self.options.clone()))
            .await
            .expect("reopen")
    }
}

/// Makes `sqlite::NAME` and `postgres::NAME` tests calling `NAME(backend)`
/// for each listed contract test.
#[macro_export]
macro_rules! contract {
    ($($test:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $test() {
                    super::$test($crate::Backend::Sqlite).await
                }
            )*
        }
        #[cfg(feature = "postgres")]
        mod postgres {
            $(
                #[tokio::test]
                async fn $test() {
                    super::$test($crate::Backend::Postgres).await
                }
            )*
        }
    };
}
