//! Many processes on one file at once (SPEC §8): two server-like processes
//! and a stream of CLI commands, for a few seconds. No caller may see
//! "database is locked" (or any other error), no acknowledged write may be
//! lost, and the file must check clean afterwards.
//!
//! A server is this test binary run again (test `server`, selected by
//! `STATEVAULT_SOAK_DB`). In four tasks it loops: create a session and
//! validate its token, set a cache entry and read it back, check a shared
//! rate limit (one statement in the file per check), patch a preference,
//! append an audit event (every tenth durably). Once its time is up it
//! closes the vault (which writes what is buffered) and prints what it did.
//! Meanwhile the test runs `statevault info`, `sql`, `audit verify`,
//! `cache stats`, `limits status` and `sweep` over and over, each of which
//! must exit 0 with nothing on stderr.
//!
//! Each server also probes the change feed with the other, in rounds: the
//! sender makes a session and a cache entry; the receiver validates the
//! token and reads the entry (both now in its memory); the sender revokes
//! the session and replaces the entry; the receiver must refuse the token
//! and read the new value at once. They pass each other the round's state
//! through preferences, which every process reads from the file.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::json;
use statevault::{
    AuditEvent, CacheKey, ClientInfo, EventKind, Limit, LimitsConfig, NewSession, SessionConfig,
    Validation, Vault, VaultOptions, Window,
};

/// The database a server works on; set only in server processes.
const DB_ENV: &str = "STATEVAULT_SOAK_DB";
/// The server's name, which prefixes its users and keys.
const NAME_ENV: &str = "STATEVAULT_SOAK_NAME";
/// The other server's name, whose feed probes this one receives.
const PEER_ENV: &str = "STATEVAULT_SOAK_PEER";
/// How long the servers run.
const LOAD: Duration = Duration::from_secs(8);
const SERVERS: usize = 2;
const TASKS: usize = 4;
/// The shared limit's budget: large, so that every check is allowed and
/// writes; over ten years, so that a few seconds refill almost nothing.
const BUDGET: f64 = 1_000_000.0;
const SUBJECT: &str = "soak-subject";

/// What a server did, all of it acknowledged (its `close` returned).
#[derive(Debug, Default, Serialize, Deserialize)]
struct Done {
    sessions: u64,
    cache_sets: u64,
    checks_allowed: u64,
    audit: u64,
    /// user → the last `n` patched in.
    prefs: BTreeMap<String, u64>,
    /// Feed rounds this server checked as the receiver.
    probes: u64,
}

fn limits() -> LimitsConfig {
    let window = Window::per(Duration::from_secs(3650 * 86_400), BUDGET);
    LimitsConfig::empty()
        .limit("soak", Limit::new().window(window))
        .shared(true)
}

/// Sessions stay in memory for an hour unless the change feed drops them,
/// so the probes' stale reads can only come from memory.
fn options(db: &Path) -> VaultOptions {
    let mut sessions = SessionConfig::default();
    sessions.memory_ttl = Duration::from_secs(3600);
    VaultOptions::new(db).limits(limits()).sessions(sessions)
}

/// A server: runs only when re-executed by the test below.
#[test]
fn server() {
    let Some(db) = std::env::var_os(DB_ENV) else {
        return;
    };
    let name = std::env::var(NAME_ENV).unwrap();
    let peer = std::env::var(PEER_ENV).unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let result = runtime.block_on(async {
        let vault = Vault::open(options(Path::new(&db))).await?;
        let until = Instant::now() + LOAD;
        let tasks: Vec<_> = (0..TASKS)
            .map(|task| tokio::spawn(serve(vault.clone(), format!("{name}-{task}"), until)))
            .collect();
        let sender = tokio::spawn(send_probes(vault.clone(), name.clone(), until));
        let receiver = tokio::spawn(receive_probes(vault.clone(), peer, until));
        let mut done = Done::default();
        let mut failed = None;
        for task in tasks {
            match task.await.unwrap() {
                Ok(d) => {
                    done.sessions += d.sessions;
                    done.cache_sets += d.cache_sets;
                    done.checks_allowed += d.checks_allowed;
                    done.audit += d.audit;
                    done.prefs.extend(d.prefs);
                }
                Err(e) => failed = Some(e),
            }
        }
        if let Err(e) = sender.await.unwrap() {
            failed = Some(e);
        }
        match receiver.await.unwrap() {
            Ok(probes) => done.probes = probes,
            Err(e) => failed = Some(e),
        }
        let closed = vault.close().await;
        match failed {
            Some(e) => Err(e),
            None => closed.map(|()| done),
        }
    });
    let mut out = std::io::stdout().lock();
    match result {
        // On a line of its own: the harness has printed "test server ... ".
        Ok(done) => writeln!(out, "\ndone {}", serde_json::to_string(&done).unwrap()).unwrap(),
        Err(e) => {
            writeln!(out, "\nerror: {e}").unwrap();
            out.flush().unwrap();
            std::process::exit(1);
        }
    }
}

/// One task's request loop.
async fn serve(vault: Vault, user: String, until: Instant) -> statevault::Result<Done> {
    let mut done = Done::default();
    let mut i = 0;
    while Instant::now() < until {
        i += 1;
        let issued = vault.sessions().create(NewSession::new(&user)).await?;
        done.sessions += 1;
        match vault
            .sessions()
            .validate(issued.token.expose(), None)
            .await?
        {
            Validation::Valid(_) => {}
            other => panic!("a session just made is {other:?}"),
        }

        let key = CacheKey::new("soak", &format!("{user}-{i}"))?;
        let value = format!("value {i} of {user}");
        vault.cache().set(&key, value.as_bytes()).await?;
        done.cache_sets += 1;
        let got = vault.cache().get(&key).await?;
        assert_eq!(got.as_deref(), Some(value.as_bytes()), "read back {key:?}");

        let decision = vault
            .limits()
            .check(SUBJECT, "soak", 1, &ClientInfo::none())
            .await?;
        assert!(decision.allowed, "{decision:?}");
        done.checks_allowed += 1;

        vault.preferences().patch(&user, &json!({"n": i})).await?;
        done.prefs.insert(user.clone(), i);

        let event = AuditEvent::new(EventKind::ApiCall, "soak").user(&user);
        if i % 10 == 0 {
            vault.audit().append_durable(event).await?;
        } else {
            vault.audit().append(event)?;
        }
        done.audit += 1;
    }
    Ok(done)
}

/// How long past the load a probe waits for its peer before it fails.
const PROBE_GRACE: Duration = Duration::from_secs(20);

/// The sender's side of the feed probe (see the module docs), until `until`.
async fn send_probes(vault: Vault, name: String, until: Instant) -> statevault::Result<()> {
    let prefs = vault.preferences();
    let mailbox = format!("mail-{name}");
    let key = CacheKey::new("probe", &name)?;
    let mut round = 0;
    while Instant::now() < until {
        round += 1;
        let issued = vault
            .sessions()
            .create(NewSession::new(format!("probe-{name}")))
            .await?;
        vault
            .cache()
            .set(&key, format!("{round} old").as_bytes())
            .await?;
        vault.flush().await?;
        let mail = json!({"round": round, "token": issued.token.expose(), "state": "ready"});
        prefs.patch(&mailbox, &mail).await?;
        wait_for(
            &vault,
            &format!("ack-{name}"),
            json!({"round": round, "checked": false}),
            until,
        )
        .await?;
        vault.sessions().revoke(&issued.id).await?;
        vault
            .cache()
            .set(&key, format!("{round} new").as_bytes())
            .await?;
        vault.flush().await?;
        prefs.patch(&mailbox, &json!({"state": "changed"})).await?;
        wait_for(
            &vault,
            &format!("ack-{name}"),
            json!({"round": round, "checked": true}),
            until,
        )
        .await?;
    }
    prefs.patch(&mailbox, &json!({"state": "done"})).await?;
    Ok(())
}

/// Waits until `user`'s preferences are `expected`, reading the file.
async fn wait_for(
    vault: &Vault,
    user: &str,
    expected: serde_json::Value,
    until: Instant,
) -> statevault::Result<()> {
    while vault.preferences().get(user).await? != expected {
        assert!(
            Instant::now() < until + PROBE_GRACE,
            "{user} never became {expected}"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(())
}

/// The receiver's side: checks each of `peer`'s rounds until it is done;
/// returns how many rounds it checked.
async fn receive_probes(vault: Vault, peer: String, until: Instant) -> statevault::Result<u64> {
    let prefs = vault.preferences();
    let (mailbox, ack) = (format!("mail-{peer}"), format!("ack-{peer}"));
    let key = CacheKey::new("probe", &peer)?;
    let mut checked = 0;
    let mut seen = 0;
    loop {
        assert!(
            Instant::now() < until + PROBE_GRACE,
            "{peer} stopped sending"
        );
        let mail = prefs.get(&mailbox).await?;
        let round = mail["round"].as_u64().unwrap_or(0);
        let token = mail["token"].as_str().unwrap_or_default();
        match mail["state"].as_str() {
            Some("done") => return Ok(checked),
            Some("ready") if round > seen => {
                let valid = vault.sessions().validate(token, None).await?;
                assert!(
                    matches!(valid, Validation::Valid(_)),
                    "round {round}: {valid:?}"
                );
                let value = vault.cache().get(&key).await?;
                assert_eq!(value.as_deref(), Some(format!("{round} old").as_bytes()));
                seen = round;
                prefs
                    .patch(&ack, &json!({"round": round, "checked": false}))
                    .await?;
            }
            Some("changed") if round == seen && round > checked => {
                let refused = vault.sessions().validate(token, None).await?;
                assert!(
                    matches!(refused, Validation::Revoked { .. }),
                    "round {round}: another process's revocation was not seen: {refused:?}"
                );
                let value = vault.cache().get(&key).await?;
                assert_eq!(
                    value.as_deref(),
                    Some(format!("{round} new").as_bytes()),
                    "round {round}: another process's flushed set was not seen"
                );
                checked = round;
                prefs.patch(&ack, &json!({"checked": true})).await?;
            }
            _ => tokio::time::sleep(Duration::from_millis(1)).await,
        }
    }
}

/// The CLI commands run against the file while the servers work.
const READERS: [&[&str]; 6] = [
    &["info", "--json"],
    &["sql", "SELECT count(*) FROM sessions"],
    &["audit", "verify"],
    &["cache", "stats"],
    &["limits", "status", SUBJECT],
    &["sql", "--json", "SELECT user_id, document FROM preferences"],
];

/// Runs the CLI over and over until told to stop; returns how many runs,
/// and each failure (non-zero exit, or anything on stderr) as a line.
fn cli_loop(dir: &Path, commands: &[&[&str]], stop: &AtomicBool) -> (u64, Vec<String>) {
    let mut runs = 0;
    let mut failures = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        let args = commands[runs as usize % commands.len()];
        let out = common::run(dir, &[&["--db", "soak.db"], args].concat());
        runs += 1;
        let stderr = common::stderr(&out);
        if !out.status.success() || !stderr.is_empty() {
            failures.push(format!(
                "statevault {}: {}: {}{}",
                args.join(" "),
                out.status,
                stderr,
                common::stdout(&out)
            ));
        }
    }
    (runs, failures)
}

#[test]
fn servers_and_cli_share_one_file() {
    if std::env::var_os(DB_ENV).is_some() {
        return;
    }
    let dir = common::tempdir();
    let db: PathBuf = dir.path().join("soak.db");
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

    let started = Instant::now();
    let servers: Vec<_> = (0..SERVERS)
        .map(|n| {
            Command::new(std::env::current_exe().unwrap())
                .args(["server", "--exact", "--nocapture", "--test-threads", "1"])
                .env(DB_ENV, &db)
                .env(NAME_ENV, format!("s{n}"))
                .env(PEER_ENV, format!("s{}", (n + 1) % SERVERS))
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let stop = AtomicBool::new(false);
    let (outputs, cli) = std::thread::scope(|scope| {
        let readers: Vec<_> = [&READERS[..3], &READERS[3..]]
            .into_iter()
            .map(|commands| scope.spawn(|| cli_loop(dir.path(), commands, &stop)))
            .collect();
        let sweeper = scope.spawn(|| cli_loop(dir.path(), &[&["sweep"]], &stop));
        let outputs: Vec<_> = servers
            .into_iter()
            .map(|s| s.wait_with_output().unwrap())
            .collect();
        stop.store(true, Ordering::SeqCst);
        let cli: Vec<_> = readers
            .into_iter()
            .chain([sweeper])
            .map(|t| t.join().unwrap())
            .collect();
        (outputs, cli)
    });

    let mut total = Done::default();
    for out in &outputs {
        let text = common::stdout(out);
        assert!(
            out.status.success(),
            "a server failed: {}\n{text}\n{}",
            out.status,
            common::stderr(out)
        );
        let line = text
            .lines()
            .find_map(|l| l.strip_prefix("done "))
            .unwrap_or_else(|| panic!("no report from a server: {text}"));
        let done: Done = serde_json::from_str(line).unwrap();
        total.sessions += done.sessions;
        total.cache_sets += done.cache_sets;
        total.checks_allowed += done.checks_allowed;
        total.audit += done.audit;
        total.prefs.extend(done.prefs);
        assert!(done.probes >= 1, "no feed round checked: {text}");
        total.probes += done.probes;
    }
    let failures: Vec<_> = cli.iter().flat_map(|(_, f)| f).collect();
    assert!(failures.is_empty(), "CLI runs failed: {failures:#?}");
    let runs: u64 = cli.iter().map(|(n, _)| n).sum();
    assert!(runs >= 20, "only {runs} CLI runs");
    let sweeps = cli[2].0;
    assert!(sweeps >= 2, "only {sweeps} sweeps");

    runtime.block_on(async {
        let vault = Vault::open(options(&db)).await.unwrap();
        let count = async |sql: &str| {
            vault.query_read_only(sql).await.unwrap().rows[0][0]
                .as_u64()
                .unwrap()
        };
        assert_eq!(
            count("SELECT count(*) FROM sessions WHERE user_id NOT LIKE 'probe-%'").await,
            total.sessions
        );
        assert_eq!(
            count("SELECT count(*) FROM cache_entries WHERE namespace = 'soak'").await,
            total.cache_sets
        );
        assert_eq!(
            count("SELECT count(*) FROM audit_events WHERE action = 'soak'").await,
            total.audit
        );
        for (user, n) in &total.prefs {
            let stored = vault.preferences().get(user).await.unwrap();
            assert_eq!(stored["n"], *n, "{user}");
        }
        let status = vault.limits().status(SUBJECT).await.unwrap();
        let tokens = status[0].windows[0].tokens;
        let expected = BUDGET - total.checks_allowed as f64;
        assert!(
            (expected..expected + 1.0).contains(&tokens),
            "{} checks allowed, {tokens} tokens left of {BUDGET}",
            total.checks_allowed
        );
        let report = vault.check().await.unwrap();
        assert!(report.ok(), "{report:?}");
        let chain = vault.audit().verify().await.unwrap();
        assert!(chain.ok, "{chain:?}");
        vault.close().await.unwrap();
    });
    let _ = writeln!(
        std::io::stderr(),
        "soak: {:.1} s, {SERVERS} servers: {} sessions, {} cache sets, {} shared checks, {} audit events, {} feed rounds across processes; {runs} CLI runs, {sweeps} of them sweeps",
        started.elapsed().as_secs_f64(),
        total.sessions,
        total.cache_sets,
        total.checks_allowed,
        total.audit,
        total.probes,
    );
}
