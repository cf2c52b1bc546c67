//! The change feed: several handles on one file (standing in for processes,
//! each with its own memory) see each other's changes on their next call.
//! Every handle reads the same fake clock; nothing here sleeps. The real
//! two-process case runs in `soak.rs`.

mod common;

use std::path::Path;
use std::time::Duration;

use serde_json::json;
use statevault::{
    CacheConfig, CacheKey, ClientInfo, FakeClock, IssuedSession, Limit, LimitsConfig, NewSession,
    SessionConfig, SetOptions, Validation, Vault, VaultOptions, Window,
};

/// Sessions stay in memory for an hour unless the feed drops them, so a
/// stale read here can only come from memory.
fn sessions() -> SessionConfig {
    let mut config = SessionConfig::default();
    config.memory_ttl = Duration::from_secs(3600);
    config.max_per_user = 100;
    config
}

fn limits() -> LimitsConfig {
    LimitsConfig::empty().limit(
        "api",
        Limit::new().window(Window::per(Duration::from_secs(3600), 3.0)),
    )
}

fn options(db: &Path, clock: &FakeClock) -> VaultOptions {
    VaultOptions::new(db)
        .clock(clock.clone())
        .sessions(sessions())
        .limits(limits())
}

/// `n` handles on one new file, sharing one fake clock.
async fn handles(dir: &Path, n: usize) -> (Vec<Vault>, FakeClock) {
    let clock = FakeClock::default();
    let db = dir.join("shared.db");
    let mut vaults = Vec::new();
    for _ in 0..n {
        vaults.push(Vault::open(options(&db, &clock)).await.unwrap());
    }
    (vaults, clock)
}

async fn close(vaults: &[Vault]) {
    for vault in vaults {
        vault.close().await.unwrap();
    }
}

async fn login(vault: &Vault, user: &str) -> IssuedSession {
    vault
        .sessions()
        .create(NewSession::new(user))
        .await
        .unwrap()
}

async fn validate(vault: &Vault, issued: &IssuedSession) -> Validation {
    vault
        .sessions()
        .validate(issued.token.expose(), None)
        .await
        .unwrap()
}

fn is_valid(v: &Validation) -> bool {
    matches!(v, Validation::Valid(_))
}

#[tokio::test]
async fn a_revocation_refuses_the_token_in_every_other_handle_at_once() {
    let dir = common::tempdir();
    let (v, _clock) = handles(dir.path(), 3).await;
    let issued = login(&v[0], "alice").await;
    for vault in &v {
        assert!(is_valid(&validate(vault, &issued).await));
    }
    assert!(v[0].sessions().revoke(&issued.id).await.unwrap());
    for vault in &v[1..] {
        assert!(
            matches!(validate(vault, &issued).await, Validation::Revoked { .. }),
            "a handle still accepts a revoked token"
        );
    }
    close(&v).await;
}

#[tokio::test]
async fn log_out_everywhere_rotation_regeneration_and_erasure_reach_the_other_handle() {
    let dir = common::tempdir();
    let (v, _clock) = handles(dir.path(), 2).await;
    let (a, b) = (&v[0], &v[1]);

    let first = login(a, "bob").await;
    let second = login(a, "bob").await;
    assert!(is_valid(&validate(b, &first).await) && is_valid(&validate(b, &second).await));
    assert_eq!(a.sessions().revoke_user("bob").await.unwrap(), 2);
    assert!(!is_valid(&validate(b, &first).await));
    assert!(!is_valid(&validate(b, &second).await));

    let old = login(a, "carol").await;
    assert!(is_valid(&validate(b, &old).await));
    let rotated = a.sessions().rotate(old.token.expose(), None).await.unwrap();
    assert!(matches!(validate(b, &old).await, Validation::Unknown));
    assert!(is_valid(&validate(b, &rotated).await));
    let regenerated = a
        .sessions()
        .regenerate(rotated.token.expose(), None)
        .await
        .unwrap();
    assert!(!is_valid(&validate(b, &rotated).await));
    assert!(is_valid(&validate(b, &regenerated).await));

    a.sessions()
        .set_data(regenerated.token.expose(), &json!({"cart": 3}))
        .await
        .unwrap();
    match validate(b, &regenerated).await {
        Validation::Valid(session) => assert_eq!(
            session.data::<serde_json::Value>().unwrap(),
            json!({"cart": 3})
        ),
        other => panic!("{other:?}"),
    }

    a.erase_user("carol").await.unwrap();
    assert!(matches!(
        validate(b, &regenerated).await,
        Validation::Unknown
    ));
    close(&v).await;
}

#[tokio::test]
async fn evicting_the_oldest_session_reaches_the_other_handle() {
    let dir = common::tempdir();
    let clock = FakeClock::default();
    let db = dir.path().join("shared.db");
    let mut config = sessions();
    config.max_per_user = 1;
    let open = || Vault::open(options(&db, &clock).sessions(config.clone()));
    let (a, b) = (open().await.unwrap(), open().await.unwrap());
    let first = login(&a, "dave").await;
    assert!(is_valid(&validate(&b, &first).await));
    let second = login(&a, "dave").await;
    assert_eq!(second.evicted, std::slice::from_ref(&first.id));
    assert!(!is_valid(&validate(&b, &first).await));
    close(&[a, b]).await;
}

#[tokio::test]
async fn a_flushed_set_replaces_the_value_in_the_other_handles_l1() {
    let dir = common::tempdir();
    let (v, _clock) = handles(dir.path(), 3).await;
    let key = CacheKey::new("tracks", "42").unwrap();
    v[0].cache().set(&key, b"old").await.unwrap();
    v[0].flush().await.unwrap();
    for vault in &v[1..] {
        assert_eq!(
            vault.cache().get(&key).await.unwrap().as_deref(),
            Some(&b"old"[..])
        );
    }
    v[0].cache().set(&key, b"new").await.unwrap();
    v[0].flush().await.unwrap();
    for vault in &v[1..] {
        assert_eq!(
            vault.cache().get(&key).await.unwrap().as_deref(),
            Some(&b"new"[..])
        );
    }
    let counter = CacheKey::new("counters", "plays").unwrap();
    assert_eq!(v[1].cache().incr(&counter, 1).await.unwrap(), 1);
    assert_eq!(
        v[2].cache().get(&counter).await.unwrap().as_deref(),
        Some(&b"1"[..])
    );
    assert_eq!(v[0].cache().incr(&counter, 1).await.unwrap(), 2);
    assert_eq!(
        v[2].cache().get(&counter).await.unwrap().as_deref(),
        Some(&b"2"[..])
    );
    close(&v).await;
}

#[tokio::test]
async fn deletes_expiry_and_every_invalidation_reach_the_other_handles_l1() {
    let dir = common::tempdir();
    let (v, _clock) = handles(dir.path(), 2).await;
    let (a, b) = (&v[0], &v[1]);
    let key = |name: &str| CacheKey::new("search", name).unwrap();
    let cases: [(&str, CacheKey); 6] = [
        ("delete", key("d")),
        ("expire", key("e")),
        ("tag", key("t")),
        ("user", key("u").for_user("erin").unwrap()),
        ("namespace", CacheKey::new("metadata", "n").unwrap()),
        ("clear", key("c")),
    ];
    for (what, key) in &cases {
        let tag = format!("playlist:{what}");
        a.cache()
            .set_with(key, b"v", &SetOptions::new().tag(&tag))
            .await
            .unwrap();
        a.flush().await.unwrap();
        assert!(b.cache().get(key).await.unwrap().is_some(), "{what}");
        match *what {
            "delete" => assert!(a.cache().delete(key).await.unwrap()),
            "expire" => assert!(a.cache().expire(key, Duration::ZERO).await.unwrap()),
            "tag" => assert_eq!(a.cache().invalidate_tag(&tag).await.unwrap(), 1),
            "user" => assert_eq!(a.cache().clear_user("erin").await.unwrap(), 1),
            "namespace" => assert_eq!(a.cache().clear_namespace("metadata").await.unwrap(), 1),
            _ => assert!(a.cache().clear().await.unwrap() >= 1),
        }
        assert!(
            b.cache().get(key).await.unwrap().is_none(),
            "{what}: the other handle still serves the value"
        );
        assert!(!b.cache().exists(key).await.unwrap(), "{what}");
    }
    close(&v).await;
}

#[tokio::test]
async fn another_handles_set_keeps_this_handles_own_unflushed_set_but_an_invalidation_drops_it() {
    let dir = common::tempdir();
    let (v, _clock) = handles(dir.path(), 2).await;
    let (a, b) = (&v[0], &v[1]);
    let key = CacheKey::new("search", "mine").unwrap();
    let tagged = SetOptions::new().tag("t");
    b.cache().set_with(&key, b"b's", &tagged).await.unwrap();
    a.cache().set_with(&key, b"a's", &tagged).await.unwrap();
    a.flush().await.unwrap();
    assert_eq!(
        b.cache().get(&key).await.unwrap().as_deref(),
        Some(&b"b's"[..])
    );
    a.cache().invalidate_tag("t").await.unwrap();
    assert!(b.cache().get(&key).await.unwrap().is_none());
    b.flush().await.unwrap();
    assert!(
        a.cache().get(&key).await.unwrap().is_none(),
        "the dropped set was written"
    );
    close(&v).await;
}

#[tokio::test]
async fn a_handle_keeps_its_own_writes_in_l1() {
    let dir = common::tempdir();
    let (v, _clock) = handles(dir.path(), 2).await;
    let a = &v[0];
    let key = CacheKey::new("tracks", "own").unwrap();
    a.cache().set(&key, b"mine").await.unwrap();
    a.flush().await.unwrap();
    let before = a.cache().stats().await.unwrap().l1.hits;
    assert!(a.cache().get(&key).await.unwrap().is_some());
    assert_eq!(a.cache().stats().await.unwrap().l1.hits, before + 1);
    close(&v).await;
}

#[tokio::test]
async fn a_limit_reset_and_an_erasure_reach_the_other_handles_buckets() {
    let dir = common::tempdir();
    let (v, _clock) = handles(dir.path(), 2).await;
    let (a, b) = (&v[0], &v[1]);
    let check = async |vault: &Vault, subject: &str| {
        vault
            .limits()
            .check(subject, "api", 1, &ClientInfo::none())
            .await
            .unwrap()
            .allowed
    };
    for subject in ["frank", "gina"] {
        for _ in 0..3 {
            assert!(check(b, subject).await);
        }
        assert!(!check(b, subject).await);
    }
    a.limits().reset("frank").await.unwrap();
    assert!(
        check(b, "frank").await,
        "the reset did not reach the other handle"
    );
    let status = b.limits().status("frank").await.unwrap();
    assert!(
        (status[0].windows[0].tokens - 2.0).abs() < 1e-6,
        "{status:?}"
    );
    a.erase_user("gina").await.unwrap();
    assert!(
        check(b, "gina").await,
        "the erasure did not reach the other handle"
    );
    close(&v).await;
}

#[tokio::test]
async fn a_preference_patch_is_read_by_the_other_handle_at_once() {
    let dir = common::tempdir();
    let (v, _clock) = handles(dir.path(), 2).await;
    let (a, b) = (&v[0], &v[1]);
    assert_eq!(
        b.preferences().get("hana").await.unwrap()["theme"],
        json!(null)
    );
    a.preferences()
        .patch("hana", &json!({"theme": "dark"}))
        .await
        .unwrap();
    assert_eq!(
        b.preferences().get("hana").await.unwrap()["theme"],
        json!("dark")
    );
    a.preferences().reset("hana").await.unwrap();
    assert_eq!(
        b.preferences().get("hana").await.unwrap()["theme"],
        json!(null)
    );
    close(&v).await;
}

#[tokio::test]
async fn a_bounded_check_interval_lets_a_change_wait_that_long_and_no_longer() {
    let dir = common::tempdir();
    let clock = FakeClock::default();
    let db = dir.path().join("shared.db");
    let mut bounded = sessions();
    bounded.feed_check_interval = Duration::from_secs(1);
    let a = Vault::open(options(&db, &clock)).await.unwrap();
    let cache = CacheConfig::default().feed_check_interval(Duration::from_secs(1));
    let b = Vault::open(options(&db, &clock).sessions(bounded).cache(cache))
        .await
        .unwrap();
    let issued = login(&a, "ivan").await;
    let key = CacheKey::new("tracks", "b").unwrap();
    a.cache().set(&key, b"old").await.unwrap();
    a.flush().await.unwrap();
    assert!(is_valid(&validate(&b, &issued).await));
    assert!(b.cache().get(&key).await.unwrap().is_some());

    a.sessions().revoke(&issued.id).await.unwrap();
    a.cache().delete(&key).await.unwrap();
    clock.advance(Duration::from_millis(999));
    assert!(
        is_valid(&validate(&b, &issued).await),
        "checked before its interval"
    );
    assert!(b.cache().get(&key).await.unwrap().is_some());
    clock.advance(Duration::from_millis(1));
    assert!(!is_valid(&validate(&b, &issued).await));
    assert!(b.cache().get(&key).await.unwrap().is_none());
    close(&[a, b]).await;
}

#[tokio::test]
async fn records_trimmed_before_a_handle_read_them_drop_its_memory_instead() {
    let dir = common::tempdir();
    let clock = FakeClock::default();
    let db = dir.path().join("shared.db");
    let open = || Vault::open(options(&db, &clock).feed_retention(Duration::from_secs(1)));
    let (a, b) = (open().await.unwrap(), open().await.unwrap());
    let revoked = login(&a, "jo").await;
    let kept = login(&a, "jo").await;
    let key = CacheKey::new("tracks", "t").unwrap();
    a.cache().set(&key, b"old").await.unwrap();
    a.flush().await.unwrap();
    assert!(is_valid(&validate(&b, &revoked).await) && is_valid(&validate(&b, &kept).await));
    assert!(b.cache().get(&key).await.unwrap().is_some());

    a.sessions().revoke(&revoked.id).await.unwrap();
    a.cache().set(&key, b"new").await.unwrap();
    a.flush().await.unwrap();
    clock.advance(Duration::from_secs(2));
    // Publishing again trims what is older than a second: every record
    // above; the two written after the clock moved stay.
    let other = login(&a, "kim").await;
    a.sessions().revoke(&other.id).await.unwrap();
    a.cache()
        .delete(&CacheKey::new("tracks", "x").unwrap())
        .await
        .unwrap();
    let left = a
        .query_read_only("SELECT count(*) FROM changes")
        .await
        .unwrap();
    assert_eq!(left.rows[0][0], json!(2), "the feed was not trimmed");

    assert!(matches!(
        validate(&b, &revoked).await,
        Validation::Revoked { .. }
    ));
    assert!(is_valid(&validate(&b, &kept).await));
    assert_eq!(
        b.cache().get(&key).await.unwrap().as_deref(),
        Some(&b"new"[..])
    );
    close(&[a, b]).await;
}

#[tokio::test]
async fn sweep_trims_the_feed_and_says_so() {
    let dir = common::tempdir();
    let (v, clock) = handles(dir.path(), 1).await;
    let issued = login(&v[0], "lee").await;
    v[0].sessions().revoke(&issued.id).await.unwrap();
    let again = login(&v[0], "lee").await;
    v[0].sessions().revoke(&again.id).await.unwrap();
    clock.advance(Duration::from_secs(120));
    let report = v[0].sweep().await.unwrap();
    assert_eq!(report.removed["changes"], 1, "{report:?}");
    close(&v).await;
}

#[tokio::test]
async fn cli_commands_reach_a_running_handle() {
    let dir = common::tempdir();
    let (v, _clock) = handles(dir.path(), 1).await;
    let b = &v[0];
    let issued = login(b, "mo").await;
    assert!(is_valid(&validate(b, &issued).await));
    let key = CacheKey::new("tracks", "cli")
        .unwrap()
        .for_user("mo")
        .unwrap();
    b.cache()
        .set_with(&key, b"v", &SetOptions::new().tag("album:1"))
        .await
        .unwrap();
    b.flush().await.unwrap();
    for _ in 0..3 {
        assert!(
            b.limits()
                .check("mo", "api", 1, &ClientInfo::none())
                .await
                .unwrap()
                .allowed
        );
    }

    let cli = |args: &[&str]| {
        let out = common::run(dir.path(), &[&["--db", "shared.db"], args].concat());
        assert!(out.status.success(), "{args:?}: {}", common::stderr(&out));
    };
    cli(&["session", "revoke", &issued.id]);
    assert!(matches!(
        validate(b, &issued).await,
        Validation::Revoked { .. }
    ));

    assert!(b.cache().get(&key).await.unwrap().is_some());
    cli(&["cache", "invalidate", "--tag", "album:1"]);
    assert!(b.cache().get(&key).await.unwrap().is_none());

    assert!(
        !b.limits()
            .check("mo", "api", 1, &ClientInfo::none())
            .await
            .unwrap()
            .allowed
    );
    cli(&["limits", "reset", "mo"]);
    assert!(
        b.limits()
            .check("mo", "api", 1, &ClientInfo::none())
            .await
            .unwrap()
            .allowed
    );

    cli(&["prefs", "set", "mo", r#"{"theme": "dark"}"#]);
    assert_eq!(
        b.preferences().get("mo").await.unwrap()["theme"],
        json!("dark")
    );
    close(&v).await;
}

#[tokio::test]
async fn the_feed_names_keys_users_and_subjects_by_digest_never_by_text() {
    let dir = common::tempdir();
    let (v, _clock) = handles(dir.path(), 1).await;
    let vault = &v[0];
    let key = CacheKey::new("tracks", "nina-secret-key")
        .unwrap()
        .for_user("nina-secret")
        .unwrap();
    vault
        .cache()
        .set_with(&key, b"v", &SetOptions::new().tag("nina-secret-tag"))
        .await
        .unwrap();
    vault.flush().await.unwrap();
    vault.cache().delete(&key).await.unwrap();
    vault
        .cache()
        .invalidate_tag("nina-secret-tag")
        .await
        .unwrap();
    vault.cache().clear_user("nina-secret").await.unwrap();
    vault.limits().reset("nina-secret").await.unwrap();
    let rows = vault
        .query_read_only(
            "SELECT count(*), sum(instr(CAST(target AS TEXT), 'nina-secret') > 0) FROM changes",
        )
        .await
        .unwrap()
        .rows;
    assert!(rows[0][0].as_u64().unwrap() >= 5, "{rows:?}");
    assert_eq!(rows[0][1], json!(0), "a name in clear in the feed");
    close(&v).await;
}
