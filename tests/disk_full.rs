//! A full disk (SPEC §8): a write that finds no room fails with a typed
//! error, the CLI says so in one line, and the file, reopened with room to
//! spare, checks clean and holds every write acknowledged before the failure.
//!
//! The disk is "filled" with `RLIMIT_FSIZE` in the child process: a write
//! past the limit fails with `EFBIG` (SIGXFSZ is ignored, so the process is
//! not killed for it), which SQLite reports as `SQLITE_IOERR_WRITE`, so
//! statevault as [`Error::StorageIo`]. A truly full disk (`ENOSPC`) is
//! `SQLITE_FULL`, [`Error::DiskFull`]: unit-tested in `src/error.rs` through
//! SQLite's `max_page_count`, since filling a real disk needs a file system
//! of one's own (root).

mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use serde_json::json;
use statevault::{AuditEvent, Error, EventKind, NewSession, Synchronous, Vault, VaultOptions};

/// The database the writer fills; set only in the writer process.
const DB_ENV: &str = "STATEVAULT_FULL_DB";
/// The largest file the children may write: the WAL reaches it after a few
/// dozen commits (a vault checkpoints at 4 MiB of WAL).
const LIMIT: u64 = 1 << 20;

/// Makes `cmd`'s process unable to write any file past `bytes`, the way a
/// full disk would refuse it: `write` fails with `EFBIG`.
fn limit_file_size(cmd: &mut Command, bytes: u64) -> &mut Command {
    // SAFETY: the closure runs in the forked child before exec and calls
    // only async-signal-safe functions (signal, setrlimit).
    unsafe {
        cmd.pre_exec(move || {
            // Ignored signals stay ignored across exec.
            if libc::signal(libc::SIGXFSZ, libc::SIG_IGN) == libc::SIG_ERR {
                return Err(std::io::Error::last_os_error());
            }
            let limit = libc::rlimit {
                rlim_cur: bytes,
                rlim_max: bytes,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    }
}

/// The variant's name, from its `Debug` form.
fn variant(e: &Error) -> String {
    format!("{e:?}")
        .split([' ', '('])
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// The writer: runs only when re-executed by the test below, under the limit.
#[test]
fn writer() {
    let Some(db) = std::env::var_os(DB_ENV) else {
        return;
    };
    let say = |line: String| {
        let mut out = std::io::stdout().lock();
        out.write_all(format!("\n{line}\n").as_bytes()).unwrap();
        out.flush().unwrap();
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let options = VaultOptions::new(db)
            .synchronous(Synchronous::Full)
            .sweep_interval(None);
        let vault = Vault::open(options).await.unwrap();
        let pad = "x".repeat(3000);
        for i in 0..10_000 {
            let written = if i % 2 == 0 {
                let event = AuditEvent::new(EventKind::Admin, "fill").details(json!({"pad": pad}));
                vault
                    .audit()
                    .append_durable(event)
                    .await
                    .map(|id| format!("audit {id}"))
            } else {
                let session = NewSession::new(format!("u{i}"))
                    .data(&json!({"pad": pad}))
                    .unwrap();
                vault
                    .sessions()
                    .create(session)
                    .await
                    .map(|s| format!("session {}", s.id))
            };
            match written {
                Ok(what) => say(format!("ack {what}")),
                Err(e) => {
                    say(format!("failed {} {e}", variant(&e)));
                    let again = vault.sessions().create(NewSession::new("again")).await;
                    say(format!(
                        "again {}",
                        again.err().map_or("ok".into(), |e| variant(&e))
                    ));
                    let closed = vault.close().await;
                    say(format!(
                        "closed {}",
                        closed.err().map_or("ok".into(), |e| variant(&e))
                    ));
                    return;
                }
            }
        }
        panic!("10 000 writes fitted under the limit");
    });
}

#[test]
fn a_full_disk_is_a_typed_error_and_loses_nothing_acknowledged() {
    if std::env::var_os(DB_ENV).is_some() {
        return;
    }
    let dir = common::tempdir();
    let db = dir.path().join("full.db");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        Vault::open(VaultOptions::new(&db))
            .await
            .unwrap()
            .close()
            .await
            .unwrap()
    });

    let out = limit_file_size(
        Command::new(std::env::current_exe().unwrap())
            .args(["writer", "--exact", "--nocapture", "--test-threads", "1"])
            .env(DB_ENV, &db),
        LIMIT,
    )
    .output()
    .unwrap();
    let text = common::stdout(&out);
    assert!(
        out.status.success(),
        "{}\n{text}\n{}",
        out.status,
        common::stderr(&out)
    );
    let (mut audit, mut sessions) = (BTreeSet::new(), BTreeSet::new());
    let mut failed = None;
    for line in text.lines() {
        match line.split_whitespace().collect::<Vec<_>>().as_slice() {
            ["ack", "audit", id] => audit.insert((*id).to_owned()),
            ["ack", "session", id] => sessions.insert((*id).to_owned()),
            ["failed", ..] => {
                failed = Some(line.to_owned());
                true
            }
            _ => false,
        };
    }
    let failed = failed.unwrap_or_else(|| panic!("no write failed: {text}"));
    assert!(
        failed.starts_with("failed StorageIo storage I/O failed"),
        "{failed}"
    );
    assert!(audit.len() + sessions.len() >= 10, "{text}");
    assert!(
        text.contains("\nagain StorageIo\n"),
        "later writes fail alike: {text}"
    );

    runtime.block_on(async {
        let vault = Vault::open(VaultOptions::new(&db)).await.unwrap();
        let report = vault.check().await.unwrap();
        assert!(report.ok(), "{report:?}");
        let chain = vault.audit().verify().await.unwrap();
        assert!(chain.ok, "{chain:?}");
        let ids = async |sql: &str| -> BTreeSet<String> {
            let rows = vault.query_read_only(sql).await.unwrap().rows;
            rows.into_iter()
                .map(|r| r[0].as_str().unwrap().to_owned())
                .collect()
        };
        let stored = ids("SELECT id FROM audit_events").await;
        assert!(audit.is_subset(&stored), "acknowledged events lost");
        let stored = ids("SELECT id FROM sessions").await;
        assert!(sessions.is_subset(&stored), "acknowledged sessions lost");
        vault.close().await.unwrap();
    });
}

#[test]
fn the_cli_says_disk_full_in_one_line() {
    if std::env::var_os(DB_ENV).is_some() {
        return;
    }
    let dir = common::tempdir();
    let out = common::run(dir.path(), &["init"]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    let db = dir.path().join("statevault.db");
    let limit = 64 << 10;
    assert!(
        std::fs::metadata(&db).unwrap().len() > limit,
        "the backup cannot fit"
    );

    // A patch whose pages do not fit in the WAL.
    let patch = json!({"blob": "y".repeat(100_000)}).to_string();
    let out = limit_file_size(
        common::cli(dir.path()).args(["prefs", "set", "ann", &patch]),
        limit,
    )
    .output()
    .unwrap();
    let err = common::assert_one_error_line(&out);
    assert!(
        err.starts_with("error: storage I/O failed (disk I/O error (SQLite code 778))"),
        "{err}"
    );

    // A backup that does not fit: no file, no leftover temporary file.
    let out = limit_file_size(
        common::cli(dir.path()).args(["backup", "--out", "copy.db"]),
        limit,
    )
    .output()
    .unwrap();
    let err = common::assert_one_error_line(&out);
    assert!(
        err.starts_with("error: storage I/O failed (disk I/O error (SQLite code 778))"),
        "{err}"
    );
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.contains("copy"))
        .collect();
    assert!(names.is_empty(), "{names:?}");

    // With room again, nothing of either is there and the file is sound.
    let out = common::run(dir.path(), &["prefs", "get", "ann"]);
    assert!(
        !common::stdout(&out).contains("blob"),
        "{}",
        common::stdout(&out)
    );
    let out = common::run(dir.path(), &["check"]);
    assert!(out.status.success(), "{}", common::stdout(&out));
    assert!(Path::new(&db).exists());
}
