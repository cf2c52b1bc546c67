//! Shared by the integration tests: temporary vaults, the CLI, and the
//! external tools (which skip loudly when missing, and fail under
//! `STATEVAULT_REQUIRE_TOOLS=1`, as in CI).

#![allow(dead_code)] // each test file uses a different subset

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use statevault::{FakeClock, Vault, VaultOptions};

/// Every table SPEC §3 names.
pub const SPEC_TABLES: [&str; 10] = [
    "sessions",
    "cache_entries",
    "cache_tags",
    "token_buckets",
    "violations",
    "audit_events",
    "preferences",
    "metrics",
    "vault_meta",
    "_sqlx_migrations",
];

/// A fresh temporary directory (removed on drop).
pub fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}

/// Options for `dir/name` with a fake clock the test keeps a clone of.
pub fn options(dir: &Path, name: &str) -> (VaultOptions, FakeClock) {
    let clock = FakeClock::default();
    (
        VaultOptions::new(dir.join(name)).clock(clock.clone()),
        clock,
    )
}

/// A new encrypted vault (raw key in `<db>.key`) in `dir`, with a fake clock.
pub async fn vault(dir: &Path) -> (Vault, FakeClock) {
    let (options, clock) = options(dir, "vault.db");
    (Vault::open(options).await.expect("open vault"), clock)
}

/// The `statevault` binary, run in `cwd` with no key or path from the
/// environment unless the test sets them.
pub fn cli(cwd: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_statevault"));
    cmd.current_dir(cwd)
        .env_remove("STATEVAULT_KEY")
        .env_remove("STATEVAULT_DB")
        .env_remove("RUST_BACKTRACE");
    cmd
}

/// Runs the CLI with `args` in `cwd`.
pub fn run(cwd: &Path, args: &[&str]) -> Output {
    cli(cwd).args(args).output().expect("run statevault")
}

/// `statevault init` in `dir`, which must succeed.
pub fn init(dir: &Path) {
    let out = run(dir, &["init"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts the CLI failed the way every failure must look: non-zero exit,
/// exactly one stderr line, starting `error:`, no panic or backtrace.
pub fn assert_one_error_line(out: &Output) -> String {
    let err = stderr(out);
    assert!(
        !out.status.success(),
        "expected failure, stdout: {}",
        stdout(out)
    );
    assert_eq!(err.lines().count(), 1, "one line on stderr, got: {err}");
    assert!(err.starts_with("error: "), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    err
}

fn tools_required() -> bool {
    std::env::var("STATEVAULT_REQUIRE_TOOLS").is_ok_and(|v| v == "1")
}

/// `Some(path)` of an external program on PATH, or `None` after saying
/// loudly that the test is skipped; under STATEVAULT_REQUIRE_TOOLS=1 a
/// missing tool fails the test instead.
pub fn tool(name: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        missing(name, "not on PATH");
    }
    found
}

/// Asserts that `promtool check metrics` accepts `text` (skipped loudly
/// without promtool; a failure under STATEVAULT_REQUIRE_TOOLS=1).
pub fn promtool_accepts(text: &str) {
    let Some(promtool) = tool("promtool") else {
        return;
    };
    let dir = tempdir();
    let path = dir.path().join("metrics.prom");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(std::fs::File::open(&path).unwrap())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}\n{text}",
        stdout(&out),
        stderr(&out)
    );
}

/// `statevault-bench` beside the `statevault` binary under test (where
/// `statevault bench` looks for it), or `None` after saying loudly that the
/// test is skipped; `cargo test --workspace` builds it.
pub fn bench_harness() -> Option<PathBuf> {
    let harness = Path::new(env!("CARGO_BIN_EXE_statevault")).with_file_name("statevault-bench");
    if harness.is_file() {
        return Some(harness);
    }
    missing(
        "statevault-bench",
        "build it with cargo build -p statevault-bench, or run cargo test --workspace",
    );
    None
}

/// A Python interpreter that can `import sqlcipher3` (PyPI
/// `sqlcipher3-binary`, SQLCipher 4): `$STATEVAULT_PYTHON`, else `python3`.
pub fn sqlcipher_python() -> Option<PathBuf> {
    python_with("sqlcipher3", "sqlcipher3-binary")
}

/// A Python interpreter that can `import cryptography` (PyPI
/// `cryptography`, whose Fernet the seeds' session files use):
/// `$STATEVAULT_PYTHON`, else `python3`.
pub fn cryptography_python() -> Option<PathBuf> {
    python_with("cryptography", "cryptography")
}

/// `$STATEVAULT_PYTHON` (else `python3`) if it can import `module`.
fn python_with(module: &str, package: &str) -> Option<PathBuf> {
    let python = std::env::var_os("STATEVAULT_PYTHON")
        .map_or_else(|| PathBuf::from("python3"), PathBuf::from);
    let ok = Command::new(&python)
        .args(["-c", &format!("import {module}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        Some(python)
    } else {
        missing(
            &format!("{module} (Python)"),
            &format!("pip install {package}, or point STATEVAULT_PYTHON at a python that has it"),
        );
        None
    }
}

fn missing(name: &str, how: &str) {
    let message = format!("external tool {name} is missing ({how})");
    if tools_required() {
        panic!("{message}, and STATEVAULT_REQUIRE_TOOLS=1");
    }
    // Straight to the stderr handle: libtest captures `eprintln!` of passing
    // tests, and a skip must be seen.
    let _ = writeln!(
        std::io::stderr(),
        "\n*** SKIPPED: {message}; this test did not run ***\n"
    );
}

/// The key file's text (`x'<hex>'`), for external clients.
pub fn key_text(db: &Path) -> String {
    std::fs::read_to_string(statevault::default_key_file(db))
        .expect("key file")
        .trim()
        .to_owned()
}

/// Opens the file with rusqlite and the vault's key, bypassing statevault:
/// what an attacker or a careless operator with the key could do.
pub fn raw_connection(db: &Path) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(db).expect("open raw");
    conn.execute_batch(&format!("PRAGMA key = \"{}\";", key_text(db)))
        .expect("key");
    conn
}

pub fn file_mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .expect("metadata")
        .permissions()
        .mode()
        & 0o777
}

pub fn chmod_private(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
}

/// A JSON value nested `levels` arrays deep.
pub fn nested(levels: usize) -> serde_json::Value {
    (0..levels).fold(serde_json::json!(1), |inner, _| serde_json::json!([inner]))
}

/// Opens a vault in `dir` (limit `api`: 1 per minute) and runs every
/// operation that has a tracing span, each outcome at least once, then
/// closes it. Returns the secrets it used (tokens, a cache value, session
/// data, a preference), which no log may show.
pub async fn every_operation(dir: &Path) -> Vec<String> {
    use statevault::{
        AuditEvent, CacheKey, ClientInfo, EventKind, Limit, LimitsConfig, NewSession, Window,
    };
    let (options, _clock) = options(dir, "every.db");
    let limits = LimitsConfig::empty().limit(
        "api",
        Limit::new().window(Window::per(std::time::Duration::from_secs(60), 1.0)),
    );
    let vault = Vault::open(options.limits(limits))
        .await
        .expect("open vault");
    let (value, data, preference) = (
        "cache-value-that-must-not-leak",
        "session-data-that-must-not-leak",
        "preference-that-must-not-leak",
    );
    let mut secrets = vec![value.to_owned(), data.to_owned(), preference.to_owned()];

    let sessions = vault.sessions();
    let issued = sessions.create(NewSession::new("ann")).await.unwrap();
    let token = issued.token.expose().to_owned();
    let _ = sessions.validate(&token, None).await.unwrap();
    sessions.set_data(&token, &data).await.unwrap();
    let rotated = sessions.rotate(&token, None).await.unwrap();
    let _ = sessions.validate(&token, None).await.unwrap(); // Unknown
    let regenerated = sessions
        .regenerate(rotated.token.expose(), None)
        .await
        .unwrap();
    let _ = sessions
        .validate(rotated.token.expose(), None)
        .await
        .unwrap(); // Revoked
    sessions.revoke(&regenerated.id).await.unwrap();
    sessions.revoke_user("ann").await.unwrap();
    for secret in [&issued, &rotated, &regenerated] {
        secrets.push(secret.token.expose().to_owned());
        secrets.push(secret.csrf_token.expose().to_owned());
    }

    let cache = vault.cache();
    let key = CacheKey::new("pages", "home").unwrap();
    cache.get(&key).await.unwrap(); // miss
    cache.set(&key, value.as_bytes()).await.unwrap();
    cache.get(&key).await.unwrap(); // hit
    cache.exists(&key).await.unwrap();
    cache.touch(&key, None).await.unwrap();
    cache
        .expire(&key, std::time::Duration::from_secs(60))
        .await
        .unwrap();
    cache.delete(&key).await.unwrap();
    cache.delete_many(std::slice::from_ref(&key)).await.unwrap();
    cache.invalidate_tag("t").await.unwrap();
    cache.clear_user("ann").await.unwrap();
    cache.clear_namespace("pages").await.unwrap();
    cache.clear().await.unwrap();

    let limits = vault.limits();
    let client = ClientInfo::none().ip("203.0.113.7");
    limits.check("ann", "api", 1, &client).await.unwrap(); // allowed
    limits.check("ann", "api", 1, &client).await.unwrap(); // refused
    limits.status("ann").await.unwrap();
    limits.reset("ann").await.unwrap();

    let audit = vault.audit();
    audit
        .append(AuditEvent::new(EventKind::Auth, "login").user("ann"))
        .unwrap();
    audit
        .append_durable(AuditEvent::new(EventKind::Auth, "logout").user("ann"))
        .await
        .unwrap();
    audit.verify().await.unwrap();

    let prefs = vault.preferences();
    prefs
        .patch("ann", &serde_json::json!({ "note": preference }))
        .await
        .unwrap();
    prefs.get("ann").await.unwrap();
    prefs.reset("ann").await.unwrap();

    vault.metrics().increment("jobs", &[], 1.0);
    vault.flush().await.unwrap();
    vault.metrics().sweep().await.unwrap();
    vault.sweep().await.unwrap();
    vault.backup(None).await.unwrap();
    vault.export_user("ann").await.unwrap();
    vault.erase_user("ann").await.unwrap();
    vault.close().await.unwrap();
    secrets
}

/// A database of its own on the PostgreSQL server that
/// `STATEVAULT_TEST_POSTGRES` names (read at run time; `.ci/run` starts a
/// throwaway server), dropped when this value is. Made and dropped with the
/// server's own client, `psql`.
pub struct PgDatabase {
    admin: String,
    /// The database's name.
    pub name: String,
    /// The URL of this database.
    pub url: String,
}

/// A fresh database on the test server, or `None` after saying loudly that
/// the test is skipped (no server named, or no `psql`); under
/// STATEVAULT_REQUIRE_TOOLS=1 either fails the test instead.
pub fn postgres_database() -> Option<PgDatabase> {
    let Ok(admin) = std::env::var("STATEVAULT_TEST_POSTGRES") else {
        missing(
            "PostgreSQL server",
            "set STATEVAULT_TEST_POSTGRES to a server's URL; .ci/run starts one",
        );
        return None;
    };
    tool("psql")?;
    static MADE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let made = MADE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = format!("statevault_test_{}_{made}", std::process::id());
    let (base, query) = admin.split_once('?').unwrap_or((&admin, ""));
    let (server, _) = base
        .rsplit_once('/')
        .expect("a database URL: postgres://…/DB");
    let url = if query.is_empty() {
        format!("{server}/{name}")
    } else {
        format!("{server}/{name}?{query}")
    };
    let db = PgDatabase { admin, name, url };
    // One left by a killed run with the same process id goes first.
    psql_ok(
        &db.admin,
        &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", db.name),
    );
    psql_ok(&db.admin, &format!("CREATE DATABASE {}", db.name));
    Some(db)
}

impl PgDatabase {
    /// Runs SQL with `psql` on this database; its output, unaligned, tuples
    /// only, fields split by `|`. Panics if psql fails.
    pub fn psql(&self, sql: &str) -> String {
        psql_ok(&self.url, sql)
    }

    /// Runs SQL with `psql` on this database, which must fail; its stderr.
    pub fn psql_fails(&self, sql: &str) -> String {
        let out = psql(&self.url, sql);
        assert!(!out.status.success(), "{sql} succeeded");
        stderr(&out)
    }

    /// This database's URL with `schema` first in the search path (as
    /// sqlx and libpq read the `options` parameter).
    pub fn url_in_schema(&self, schema: &str) -> String {
        let options = format!("options=-c%20search_path%3D{schema}");
        match self.url.contains('?') {
            true => format!("{}&{options}", self.url),
            false => format!("{}?{options}", self.url),
        }
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let _ = psql(
            &self.admin,
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        );
    }
}

fn psql(url: &str, sql: &str) -> Output {
    Command::new("psql")
        .args([
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            url,
            "-c",
            sql,
        ])
        .output()
        .expect("run psql")
}

fn psql_ok(url: &str, sql: &str) -> String {
    let out = psql(url, sql);
    assert!(out.status.success(), "psql {sql}: {}", stderr(&out));
    stdout(&out)
}

/// Waits, `within` at most, until `vault` no longer returns a value for
/// any of `keys`: on the file it applies another handle's change at its
/// next read, on PostgreSQL once the notification arrives. The vault's
/// clock does not move meanwhile, so nothing expires: only the change can
/// end the wait.
pub async fn until_gone(
    vault: &statevault::Vault,
    keys: &[&statevault::CacheKey],
    within: std::time::Duration,
) {
    tokio::time::timeout(within, async {
        for k in keys {
            while vault.cache().get(k).await.unwrap().is_some() {
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }
        }
    })
    .await
    .expect("an invalidated value was still served");
}
