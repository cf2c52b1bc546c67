//! Group commit: writes a request waits on that arrive together share one
//! commit, each caller is acknowledged only once its write is committed, a
//! failing write fails only its own caller, and a cancelled caller never
//! strands the others.

mod common;

use std::path::Path;

use common::{raw_connection, tempdir};
use statevault::{
    AuditEvent, Error, EventKind, NewSession, SessionConfig, Vault, WhenFull, WriteCounts,
};

async fn open(dir: &Path) -> Vault {
    let mut config = SessionConfig::default();
    config.max_per_user = 1;
    config.when_full = WhenFull::Refuse;
    let (options, _clock) = common::options(dir, "vault.db");
    Vault::open(options.sessions(config)).await.unwrap()
}

/// Spawns one session create per user, while another connection holds the
/// write lock, so that every create is waiting when the lock comes free.
async fn create_while_locked(
    vault: &Vault,
    users: &[String],
) -> Vec<tokio::task::JoinHandle<statevault::Result<statevault::IssuedSession>>> {
    let raw = raw_connection(vault.path());
    raw.execute_batch("BEGIN IMMEDIATE").unwrap();
    let tasks: Vec<_> = users
        .iter()
        .map(|user| {
            let (vault, user) = (vault.clone(), user.clone());
            tokio::spawn(async move { vault.sessions().create(NewSession::new(user)).await })
        })
        .collect();
    // Every task runs until it waits: for the lock, or for its turn.
    for _ in 0..8 {
        tokio::task::yield_now().await;
    }
    raw.execute_batch("COMMIT").unwrap();
    tasks
}

#[tokio::test]
async fn writes_that_arrive_together_share_one_commit() {
    let dir = tempdir();
    let vault = open(dir.path()).await;
    let mut users: Vec<String> = (0..32).map(|i| format!("user-{i}")).collect();
    // The cap is one session: the second create for "twice" fails, alone.
    users.extend(["twice".to_owned(), "twice".to_owned()]);
    let tasks = create_while_locked(&vault, &users).await;
    let (mut created, mut refused) = (0, 0);
    for task in tasks {
        match task.await.unwrap() {
            Ok(_) => created += 1,
            Err(Error::SessionLimit { .. }) => refused += 1,
            Err(e) => panic!("{e:?}"),
        }
    }
    assert_eq!((created, refused), (33, 1));
    let WriteCounts { writes, commits } = vault.write_counts();
    assert_eq!(writes, 33, "a refused create writes nothing");
    assert_eq!(commits, 1, "33 creates waiting together share one commit");

    // Acknowledged means committed: all of them are in the file.
    vault.close().await.unwrap();
    let vault = open(dir.path()).await;
    for user in &users[..33] {
        assert_eq!(
            vault.sessions().list(user).await.unwrap().len(),
            1,
            "{user}"
        );
    }
    vault.close().await.unwrap();
}

#[tokio::test]
async fn a_cancelled_caller_does_not_strand_the_others() {
    let dir = tempdir();
    let vault = open(dir.path()).await;
    let users: Vec<String> = (0..6).map(|i| format!("user-{i}")).collect();
    let mut tasks = create_while_locked(&vault, &users).await;
    // The last callers give up while they wait for their turn: nobody else
    // is coming, so the group they were expected to join still commits.
    // All of them before any is awaited: awaiting one lets the others run.
    for task in &tasks[4..] {
        task.abort();
    }
    for task in tasks.drain(4..) {
        assert!(task.await.unwrap_err().is_cancelled());
    }
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    for user in &users[..4] {
        assert_eq!(
            vault.sessions().list(user).await.unwrap().len(),
            1,
            "{user}"
        );
    }
    // The writer is free for the next caller.
    vault
        .sessions()
        .create(NewSession::new("later"))
        .await
        .unwrap();
    vault.close().await.unwrap();
}

/// 64 callers create and revoke sessions while flushes and durable audit
/// appends take the write lock between their groups: everything completes,
/// and everything acknowledged is in the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_callers_at_once_lose_nothing() {
    let dir = tempdir();
    let vault = open(dir.path()).await;
    let auditor = {
        let vault = vault.clone();
        tokio::spawn(async move {
            for _ in 0..50 {
                vault
                    .audit()
                    .append(AuditEvent::new(EventKind::Auth, "buffered"))?;
                vault
                    .audit()
                    .append_durable(AuditEvent::new(EventKind::Auth, "durable"))
                    .await?;
                vault.flush().await?;
            }
            Ok::<_, Error>(())
        })
    };
    let tasks: Vec<_> = (0..64)
        .map(|t| {
            let vault = vault.clone();
            tokio::spawn(async move {
                for i in 0..10 {
                    let user = format!("user-{t}-{i}");
                    let issued = vault.sessions().create(NewSession::new(&user)).await?;
                    vault.sessions().revoke(&issued.id).await?;
                    vault.sessions().create(NewSession::new(&user)).await?;
                }
                Ok::<_, Error>(())
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    auditor.await.unwrap().unwrap();
    let WriteCounts { writes, commits } = vault.write_counts();
    assert_eq!(writes, 64 * 10 * 3);
    assert!(commits >= 1 && commits <= writes);
    vault.close().await.unwrap();
    let vault = open(dir.path()).await;
    for t in 0..64 {
        for i in 0..10 {
            let sessions = vault
                .sessions()
                .list(&format!("user-{t}-{i}"))
                .await
                .unwrap();
            assert_eq!(sessions.len(), 1);
        }
    }
    vault.close().await.unwrap();
}

/// The hot writer checkpoints in the background and, once the WAL is long,
/// itself: a stream of request writes with no flush between them keeps the
/// WAL within about 16 MiB (4,000 frames) instead of growing with every
/// write.
#[tokio::test]
async fn request_writes_alone_keep_the_wal_short() {
    let dir = tempdir();
    let vault = open(dir.path()).await;
    let wal = dir.path().join("vault.db-wal");
    let frame = 4096 + 24;
    let mut longest = 0;
    // About five pages change per create: some 15,000 frames in all.
    for i in 0..3_000 {
        vault
            .sessions()
            .create(NewSession::new(format!("user-{i}")))
            .await
            .unwrap();
        longest = longest.max(std::fs::metadata(&wal).map_or(0, |m| m.len()));
    }
    let WriteCounts { commits, .. } = vault.write_counts();
    assert_eq!(commits, 3_000, "one caller at a time: a commit each");
    assert!(
        longest <= 4_100 * frame,
        "the WAL grew to {longest} bytes ({} frames)",
        longest / frame
    );
    vault.close().await.unwrap();
    assert!(!wal.exists(), "closing checkpoints the WAL and removes it");
    let vault = open(dir.path()).await;
    assert_eq!(vault.info().await.unwrap().tables["sessions"], 3_000);
    vault.close().await.unwrap();
}

/// A caller's code that panics inside a request write (here a preferences
/// upgrade, the caller's own function) undoes that write and gives the
/// write lock back: before, the transaction stayed open, holding the lock
/// against every other connection until the next request write came.
#[tokio::test]
async fn a_panic_inside_a_request_write_leaves_no_transaction_open() {
    use statevault::PreferencesConfig;
    let dir = tempdir();
    let defaults = serde_json::json!({"theme": "light", "size": 1});
    let (options, _clock) = common::options(dir.path(), "vault.db");
    let vault = Vault::open(options.preferences(PreferencesConfig::new(defaults.clone())))
        .await
        .unwrap();
    vault
        .preferences()
        .patch("alice", &serde_json::json!({"theme": "dark"}))
        .await
        .unwrap();
    vault.close().await.unwrap();

    let upgrade =
        |_: &mut serde_json::Value| -> Result<(), String> { panic!("a bug in an upgrade") };
    let (options, _clock) = common::options(dir.path(), "vault.db");
    let vault = Vault::open(options.preferences(PreferencesConfig::new(defaults).upgrade(upgrade)))
        .await
        .unwrap();
    let panicking = vault.clone();
    let patch = tokio::spawn(async move {
        panicking
            .preferences()
            .patch("alice", &serde_json::json!({"size": 2}))
            .await
    });
    assert!(patch.await.unwrap_err().is_panic());

    // Another connection takes the write lock at once.
    let raw = raw_connection(vault.path());
    raw.busy_timeout(std::time::Duration::from_millis(500))
        .unwrap();
    raw.execute_batch("BEGIN IMMEDIATE; COMMIT;")
        .expect("the write lock was left taken");
    // The vault writes on, and the panicking patch wrote nothing.
    vault
        .preferences()
        .patch("bob", &serde_json::json!({"size": 3}))
        .await
        .unwrap();
    let (version, document): (i64, String) = raw
        .query_row(
            "SELECT schema_version, document FROM preferences WHERE user_id = 'alice'",
            [],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .unwrap();
    assert_eq!((version, document.as_str()), (1, r#"{"theme":"dark"}"#));
    vault.close().await.unwrap();
}
