//! Crash safety (SPEC §8): a writer killed with SIGKILL at a random instant
//! loses no write it acknowledged under `synchronous=FULL`, and never leaves a
//! file that fails `check`.
//!
//! The writer is this test binary run again (test `writer`, selected by
//! `STATEVAULT_CRASH_DB`). It opens the vault with `Synchronous::Full` and, in
//! one to three tasks at once, makes durable writes: audit events
//! (`append_durable`), session creates and revokes, preference patches, cache
//! counter increments and whole-user erasures. It prints one line per write
//! *after* the call returned. The test reads those lines and kills the writer
//! with SIGKILL after a random number of them, or a few random milliseconds
//! after it started (while it opens the file). Then it checks the file and
//! looks for every acknowledged write.
//!
//! Every round reuses the file. Most rounds check it through read-only
//! connections, which leave the WAL as the kill left it, so the next writer
//! opens a hot WAL. Every fourth round opens it as a vault (which recovers
//! the WAL and checkpoints it on close) and walks the audit chain.
//!
//! A kill is not a power cut: what the OS had accepted from the process
//! survives either way. This proves that no acknowledged commit is lost and
//! that recovery always yields a sound file. `synchronous=FULL` is what
//! extends that to power cuts.
//!
//! A failing run prints its seed; `STATEVAULT_CRASH_SEED=<seed>` replays the
//! same kill points (the instants within each write still vary).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::json;
use statevault::{
    AuditEvent, CacheKey, EventKind, FakeClock, NewSession, Synchronous, Vault, VaultOptions,
};

/// The database the writer works on; set only in the writer process.
const DB_ENV: &str = "STATEVAULT_CRASH_DB";
/// Which round the writer is in: it picks the workload.
const ROUND_ENV: &str = "STATEVAULT_CRASH_ROUND";
/// Replays a failed run's kill points.
const SEED_ENV: &str = "STATEVAULT_CRASH_SEED";
const ROUNDS: u64 = 60;
/// Writes per writer task before it stops on its own (it is killed long before).
const MAX_WRITES: u64 = 500;

/// A small deterministic generator (xorshift64), so a seed replays a run.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// The writer: runs only when re-executed by the test below.
#[test]
fn writer() {
    let Some(db) = std::env::var_os(DB_ENV) else {
        return;
    };
    let round: u64 = std::env::var(ROUND_ENV).unwrap().parse().unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let options = VaultOptions::new(db)
            .synchronous(Synchronous::Full)
            .clock(FakeClock::default())
            .sweep_interval(None);
        let vault = match Vault::open(options).await {
            Ok(vault) => vault,
            Err(e) => {
                say(&format!("error open: {e}"));
                std::process::exit(1);
            }
        };
        let tasks: Vec<_> = (0..1 + round % 3)
            .map(|task| tokio::spawn(write_durably(vault.clone(), round, task)))
            .collect();
        for task in tasks {
            if let Err(e) = task.await.unwrap() {
                say(&format!("error: {e}"));
                std::process::exit(1);
            }
        }
        vault.close().await.unwrap();
    });
}

/// One line on the real stdout (the test harness captures `println!`), in
/// one `write`: a line is either wholly there or not at all.
fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    out.write_all(format!("{line}\n").as_bytes()).unwrap();
    out.flush().unwrap();
}

/// Durable writes, each acknowledged on stdout once the call has returned.
/// The round picks the mix.
async fn write_durably(vault: Vault, round: u64, task: u64) -> statevault::Result<()> {
    let mut rng = Rng::new(round * 1000 + task + 1);
    let user = format!("u{round}-{task}");
    let counter = CacheKey::new("crash", &format!("counter-{task}"))?;
    let mut live = Vec::new();
    for i in 0..MAX_WRITES {
        let pick = match round % 3 {
            0 => rng.below(6),                        // everything
            1 => [0, 0, 0, 5][rng.below(4) as usize], // audit-heavy, with erasures
            _ => 1 + rng.below(4),                    // sessions, prefs, counters
        };
        match pick {
            0 => {
                // A buffered event rides along in the durable commit.
                vault
                    .audit()
                    .append(AuditEvent::new(EventKind::ApiCall, "crash.buffered"))?;
                let event = AuditEvent::new(EventKind::Admin, "crash.durable")
                    .user(&user)
                    .details(json!({"round": round, "i": i}));
                let id = vault.audit().append_durable(event).await?;
                say(&format!("ack audit {id}"));
            }
            1 => {
                let issued = vault.sessions().create(NewSession::new(&user)).await?;
                say(&format!("ack session {}", issued.id));
                live.push(issued.id);
            }
            2 => match live.pop() {
                Some(id) => {
                    vault.sessions().revoke(&id).await?;
                    say(&format!("ack revoke {id}"));
                }
                None => {
                    let issued = vault.sessions().create(NewSession::new(&user)).await?;
                    say(&format!("ack session {}", issued.id));
                    live.push(issued.id);
                }
            },
            3 => {
                vault.preferences().patch(&user, &json!({"n": i})).await?;
                say(&format!("ack prefs {user} {i}"));
            }
            4 => {
                let value = vault.cache().incr(&counter, 1).await?;
                say(&format!("ack counter {} {value}", counter.as_str()));
            }
            _ => {
                let erased = format!("e{round}-{task}-{i}");
                vault.sessions().create(NewSession::new(&erased)).await?;
                vault.preferences().patch(&erased, &json!({"n": 0})).await?;
                let event = AuditEvent::new(EventKind::Auth, "login").user(&erased);
                vault.audit().append_durable(event).await?;
                vault.erase_user(&erased).await?;
                say(&format!("ack erase {erased}"));
            }
        }
    }
    Ok(())
}

/// Everything the writers acknowledged, over all rounds.
#[derive(Default)]
struct Acked {
    audit: BTreeSet<String>,
    sessions: BTreeSet<String>,
    revoked: BTreeSet<String>,
    /// user → the highest `n` acknowledged.
    prefs: BTreeMap<String, i64>,
    /// key → the highest value acknowledged.
    counters: BTreeMap<String, i64>,
    erased: BTreeSet<String>,
    total: u64,
}

impl Acked {
    /// Records one line of writer output; says whether it acknowledged a write.
    fn record(&mut self, line: &str, context: &str) -> bool {
        let words: Vec<&str> = line.split_whitespace().collect();
        let number = |s: &str| s.parse::<i64>().unwrap();
        match words.as_slice() {
            ["ack", "audit", id] => self.audit.insert((*id).to_owned()),
            ["ack", "session", id] => self.sessions.insert((*id).to_owned()),
            ["ack", "revoke", id] => self.revoked.insert((*id).to_owned()),
            ["ack", "prefs", user, n] => {
                let best = self.prefs.entry((*user).to_owned()).or_default();
                *best = (*best).max(number(n));
                true
            }
            ["ack", "counter", key, value] => {
                let best = self.counters.entry((*key).to_owned()).or_default();
                *best = (*best).max(number(value));
                true
            }
            ["ack", "erase", user] => self.erased.insert((*user).to_owned()),
            ["error", ..] => panic!("the writer failed: {line} ({context})"),
            _ => return false, // the test harness's own lines
        };
        self.total += 1;
        true
    }
}

#[test]
fn acknowledged_writes_survive_kill_9() {
    if std::env::var_os(DB_ENV).is_some() {
        return;
    }
    let seed = std::env::var(SEED_ENV)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| getrandom::u64().unwrap());
    let mut rng = Rng::new(seed);
    let dir = common::tempdir();
    let db = dir.path().join("crash.db");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        Vault::open(options(&db))
            .await
            .unwrap()
            .close()
            .await
            .unwrap()
    });

    let mut acked = Acked::default();
    let mut kills = 0;
    let mut hot_starts = 0;
    for round in 0..ROUNDS {
        let context = format!("round {round}, {SEED_ENV}={seed}");
        // A WAL with frames in it: the writer must recover it.
        let wal = std::fs::metadata(dir.path().join("crash.db-wal")).map_or(0, |m| m.len());
        hot_starts += u32::from(wal > 32);
        let stderr_file = dir.path().join(format!("writer-{round}.stderr"));
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["writer", "--exact", "--nocapture", "--test-threads", "1"])
            .env(DB_ENV, &db)
            .env(ROUND_ENV, round.to_string())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr_file).unwrap())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        // One round in eight dies while it opens the file (recovering the
        // last round's WAL); the others after 1 to 40 acknowledged writes.
        let target = if rng.below(8) == 0 {
            0
        } else {
            1 + rng.below(40)
        };
        if target == 0 {
            std::thread::sleep(Duration::from_millis(rng.below(25)));
        }
        let mut seen = 0;
        while seen < target {
            match read_line(&mut out) {
                Some(line) => seen += u64::from(acked.record(&line, &context)),
                None => break,
            }
        }
        child.kill().unwrap();
        let status = child.wait().unwrap();
        // Lines written before the kill landed are acknowledged too.
        while let Some(line) = read_line(&mut out) {
            acked.record(&line, &context);
        }
        let stderr = std::fs::read_to_string(&stderr_file).unwrap();
        if status.signal() == Some(libc::SIGKILL) {
            kills += 1;
        } else {
            assert!(status.success(), "{context}: writer {status}: {stderr}");
        }
        assert!(!stderr.contains("panicked"), "{context}: {stderr}");

        check_read_only(&runtime, &db, &acked, &context);
        if round % 4 == 3 || round == ROUNDS - 1 {
            check_as_vault(&runtime, &db, &context);
        }
    }
    assert!(kills >= 50, "only {kills} kills landed");
    assert!(
        hot_starts >= 20,
        "only {hot_starts} writers started on a hot WAL"
    );
    assert!(
        acked.total > 100,
        "only {} acknowledged writes",
        acked.total
    );

    let out = common::run(dir.path(), &["--db", "crash.db", "check"]);
    assert!(
        out.status.success(),
        "{}{}",
        common::stdout(&out),
        common::stderr(&out)
    );
    assert!(common::stdout(&out).contains("ok    audit_chain"));
    let _ = writeln!(
        std::io::stderr(),
        "crash: {kills} kills, {hot_starts} writers started on a hot WAL, {} acknowledged writes, all present",
        acked.total
    );
}

fn options(db: &Path) -> VaultOptions {
    VaultOptions::new(db).sweep_interval(None)
}

/// One whole line, or `None` at the end (a cut-off last line is no line).
fn read_line(out: &mut impl BufRead) -> Option<String> {
    let mut line = String::new();
    match out.read_line(&mut line) {
        Ok(n) if n > 0 && line.ends_with('\n') => Some(line),
        _ => None,
    }
}

/// `check` (cipher integrity, integrity, foreign keys) and every
/// acknowledged write, through read-only connections that leave the WAL for
/// the next writer to recover.
fn check_read_only(runtime: &tokio::runtime::Runtime, db: &Path, acked: &Acked, context: &str) {
    let report = runtime.block_on(Vault::check_file(&options(db))).unwrap();
    assert!(report.ok(), "{context}: {report:?}");

    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    conn.execute_batch(&format!("PRAGMA key = \"{}\";", common::key_text(db)))
        .unwrap();
    let strings = |sql: &str| -> BTreeSet<String> {
        let mut stmt = conn.prepare(sql).unwrap();
        stmt.query_map([], |row| row.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap()
    };
    let pairs = |sql: &str| -> BTreeMap<String, i64> {
        let mut stmt = conn.prepare(sql).unwrap();
        stmt.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap()
    };

    let events = strings("SELECT id FROM audit_events");
    let lost: Vec<_> = acked.audit.difference(&events).collect();
    assert!(lost.is_empty(), "{context}: audit events lost: {lost:?}");
    let sessions = strings("SELECT id FROM sessions");
    let lost: Vec<_> = acked.sessions.difference(&sessions).collect();
    assert!(lost.is_empty(), "{context}: sessions lost: {lost:?}");
    let revoked = strings("SELECT id FROM sessions WHERE revoked_at IS NOT NULL");
    let lost: Vec<_> = acked.revoked.difference(&revoked).collect();
    assert!(lost.is_empty(), "{context}: revocations lost: {lost:?}");

    let prefs = pairs("SELECT user_id, json_extract(document, '$.n') FROM preferences");
    for (user, n) in &acked.prefs {
        let stored = prefs.get(user).copied().unwrap_or(-1);
        assert!(
            stored >= *n,
            "{context}: {user}'s n is {stored}, {n} was acknowledged"
        );
    }
    let counters = pairs(
        "SELECT key, CAST(CAST(value AS TEXT) AS INTEGER) FROM cache_entries WHERE namespace = 'crash'",
    );
    for (key, value) in &acked.counters {
        let stored = counters.get(key).copied().unwrap_or(-1);
        assert!(
            stored >= *value,
            "{context}: {key} is {stored}, {value} was acknowledged"
        );
    }
    let named = strings(
        "SELECT user_id FROM sessions UNION SELECT user_id FROM preferences
         UNION SELECT user_id FROM audit_events WHERE user_id IS NOT NULL",
    );
    let kept: Vec<_> = acked.erased.intersection(&named).collect();
    assert!(
        kept.is_empty(),
        "{context}: erased users still named: {kept:?}"
    );
}

/// Opens the file as a vault (recovering the WAL), checks it and walks the
/// audit chain; closing it checkpoints the WAL away.
fn check_as_vault(runtime: &tokio::runtime::Runtime, db: &Path, context: &str) {
    runtime.block_on(async {
        let vault = Vault::open(options(db).create_if_missing(false))
            .await
            .unwrap();
        let report = vault.check().await.unwrap();
        assert!(report.ok(), "{context}: {report:?}");
        let chain = vault.audit().verify().await.unwrap();
        assert!(chain.ok, "{context}: {chain:?}");
        vault.close().await.unwrap();
    });
}
