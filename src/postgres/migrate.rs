//! The PostgreSQL schema's migrations (`migrations/postgres`), applied with
//! no advisory lock: instances migrating at once clash, wait a moment and
//! try again, skipping what another finished.

use std::sync::LazyLock;
use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::postgres::PgPool;

use crate::Result;
use crate::store::Applied;

/// `migrations/postgres`, run without sqlx's advisory lock (see the module
/// docs).
static MIGRATOR: LazyLock<Migrator> = LazyLock::new(|| {
    let mut migrator = sqlx::migrate!("./migrations/postgres");
    migrator.set_locking(false);
    migrator
});

/// What the schema has applied, against `migrations/postgres`.
pub(super) async fn applied(pool: &PgPool) -> Result<Applied> {
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
        .fetch_one(pool)
        .await?;
    let rows = if exists {
        sqlx::query_as("SELECT version, checksum, success FROM _sqlx_migrations ORDER BY version")
            .fetch_all(pool)
            .await?
    } else {
        Vec::new()
    };
    Ok(Applied::of(rows, &MIGRATOR))
}

/// Applies what is pending, after refusing a schema from a newer build or
/// with a migration that differs. With no advisory lock, an instance that
/// migrates at the same time as another clashes with what the other is
/// creating; it waits a moment and tries again, skipping what the other
/// finished, for up to [`CLASH_TIMEOUT`].
pub(super) async fn migrate(pool: &PgPool) -> Result<()> {
    let started = std::time::Instant::now();
    let mut pause = Duration::from_millis(10);
    loop {
        applied(pool).await?.validate()?;
        match MIGRATOR.run(pool).await {
            Ok(()) => return Ok(()),
            Err(e) if clash(&e) && started.elapsed() < CLASH_TIMEOUT => {}
            Err(e) => return Err(e.into()),
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(500));
    }
}

/// How long [`migrate`] keeps trying while another instance migrates.
const CLASH_TIMEOUT: Duration = Duration::from_secs(30);

/// Whether a migration failed on something another instance created at the
/// same time: a unique violation (sqlx's bookkeeping, the catalog), a
/// duplicate table or object, a serialization failure or a deadlock.
fn clash(e: &sqlx::migrate::MigrateError) -> bool {
    use sqlx::migrate::MigrateError;
    let (MigrateError::Execute(e) | MigrateError::ExecuteMigration(e, _)) = e else {
        return false;
    };
    e.as_database_error()
        .and_then(|db| db.code())
        .is_some_and(|code| {
            matches!(
                &*code,
                "23505" | "42P06" | "42P07" | "42710" | "40001" | "40P01"
            )
        })
}
