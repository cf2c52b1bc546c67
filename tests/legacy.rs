//! `import-legacy`: the seeds' old layout (`~/.tidal-mcp/`) into the vault.
//! Each kind imported and visible through the facets and the CLI, a second
//! run importing nothing, every malformed kind skipped with its reason and
//! nothing partial, Fernet tokens from Python's `cryptography` and from the
//! Fernet spec, expiry by the fake clock, and a proptest feeding arbitrary
//! bytes and JSON as each kind of file.

mod common;

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use chrono::{Local, TimeZone};
use serde_json::{Value, json};
use statevault::{
    CacheKey, Clock, FakeClock, ImportOutcome, ImportReport, LegacyKind, PreferencesConfig,
    SystemClock, Timestamp, Validation, Vault,
};

/// `FakeClock::default()`'s time, 2026-01-01T00:00:00Z, in ms.
const T0: i64 = 1_767_225_600_000;

const SEARCH_KEY: &str = "search:tracks:0123456789abcdef:alice";
const ALBUM_KEY: &str = "metadata:album:7";
const OLD_KEY: &str = "search:tracks:fedcba9876543210:alice";

/// RFC 3339 time `secs` after `base`.
fn at(base: Timestamp, secs: i64) -> String {
    Timestamp::from_millis(base.as_millis() + secs * 1000).to_rfc3339()
}

/// The same time as Python's `datetime.now().isoformat()` wrote it: local,
/// no offset, microseconds.
fn naive_local(base: Timestamp, secs: i64) -> String {
    Local
        .timestamp_millis_opt(base.as_millis() + secs * 1000)
        .unwrap()
        .naive_local()
        .format("%Y-%m-%dT%H:%M:%S%.6f")
        .to_string()
}

fn put(dir: &Path, rel: &str, bytes: impl AsRef<[u8]>) {
    let path = dir.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

/// `cache/l2/<key>.cache` (gzip JSON) and `<key>.meta` as the seed wrote
/// them, `size_bytes` included.
fn put_cache(dir: &Path, key: &str, value: &Value, mut meta: Value) {
    let compressed = gzip(value.to_string().as_bytes());
    meta["key"] = json!(key);
    meta["size_bytes"] = json!(compressed.len());
    put(dir, &format!("cache/l2/{key}.cache"), &compressed);
    put(dir, &format!("cache/l2/{key}.meta"), meta.to_string());
}

/// The legacy session the seeds' `SecureSessionManager` saved.
fn session_doc(base: Timestamp) -> Value {
    json!({
        "access_token": "legacy-access-token",
        "refresh_token": "legacy-refresh-token",
        "session_id": "tidal-session-1",
        "user_id": 4242,
        "country_code": "NO",
        "expires_at": at(base, 7200),
        "schema_version": "2.0",
        "device_fingerprint": "fp-of-the-old-laptop",
        "saved_at": naive_local(base, -3600),
        "rotation_due": naive_local(base, 20 * 3600),
    })
}

/// One file of every kind, times relative to `base`.
fn seed_layout(dir: &Path, base: Timestamp) {
    put(dir, "session.json", session_doc(base).to_string());
    put(dir, "backups/session_20251231_120000.enc", "gAAAAA-older");
    put(
        dir,
        "rate_limits/alice.json",
        json!({
            "buckets": {
                "api_calls": {"current_tokens": 30.0, "last_refill": at(base, -6), "capacity": 100, "refill_rate": 1.67},
                "auth_attempts": {"current_tokens": 1.0, "last_refill": at(base, -60), "capacity": 5, "refill_rate": 0.0056},
            },
            "violations": [
                {"timestamp": at(base, -120), "limit_type": "api_calls", "attempted_calls": 5,
                 "client_info": {"ip": "203.0.113.7", "user_agent": "curl/8.0"}},
                {"timestamp": naive_local(base, -60), "limit_type": "api_calls", "attempted_calls": 1, "client_info": {}},
                {"timestamp": at(base, -2 * 86_400), "limit_type": "auth_attempts", "attempted_calls": 1, "client_info": {}},
            ],
        })
        .to_string(),
    );
    put_cache(
        dir,
        SEARCH_KEY,
        &json!([{"id": 1, "title": "Blue Monday"}]),
        json!({"created_at": at(base, -600), "ttl_seconds": 3600, "tags": ["search", "user:alice"]}),
    );
    put_cache(
        dir,
        ALBUM_KEY,
        &json!({"title": "Power, Corruption & Lies"}),
        json!({"created_at": naive_local(base, -60), "ttl_seconds": 86_400, "tags": []}),
    );
    put_cache(
        dir,
        OLD_KEY,
        &json!([]),
        json!({"created_at": at(base, -7200), "ttl_seconds": 300, "tags": ["search"]}),
    );
    put(
        dir,
        "preferences/alice.json",
        json!({
            "user_id": "alice",
            "created_at": naive_local(base, -86_400),
            "updated_at": naive_local(base, -3600),
            "preferences": {"audio_quality": "LOSSLESS", "search_defaults": {"limit": 50, "include_explicit": false}},
        })
        .to_string(),
    );
}

/// A vault with the seeds' preference defaults and a fake clock at T0.
async fn open(dir: &Path) -> (Vault, FakeClock) {
    let (options, clock) = common::options(dir, "vault.db");
    let vault = Vault::open(options.preferences(PreferencesConfig::seeds()))
        .await
        .unwrap();
    (vault, clock)
}

/// The outcome and detail of the file at `rel`.
fn line<'a>(report: &'a ImportReport, rel: &str) -> (ImportOutcome, &'a str) {
    let file = report
        .files
        .iter()
        .find(|f| f.path == Path::new(rel))
        .unwrap_or_else(|| panic!("{rel} not in the report: {report:#?}"));
    (file.outcome, &file.detail)
}

async fn count(vault: &Vault, sql: &str) -> i64 {
    vault.query_read_only(sql).await.unwrap().rows[0][0]
        .as_i64()
        .unwrap()
}

/// Rows of every table an import writes, and the ledger.
async fn rows(vault: &Vault) -> Vec<i64> {
    let mut out = Vec::new();
    for table in [
        "sessions",
        "token_buckets",
        "violations",
        "cache_entries",
        "cache_tags",
        "preferences",
        "audit_events",
    ] {
        out.push(count(vault, &format!("SELECT count(*) FROM {table}")).await);
    }
    out.push(
        count(
            vault,
            "SELECT count(*) FROM vault_meta WHERE key LIKE 'legacy_import:%'",
        )
        .await,
    );
    out
}

#[tokio::test]
async fn each_kind_is_imported_and_visible_through_the_facets() {
    let (legacy, dir) = (common::tempdir(), common::tempdir());
    let base = Timestamp::from_millis(T0);
    seed_layout(legacy.path(), base);
    let (vault, clock) = open(dir.path()).await;

    let report = vault.import_legacy(legacy.path()).await.unwrap();
    assert_eq!(
        (report.imported, report.already_imported, report.skipped),
        (5, 0, 2),
        "{report:#?}"
    );
    let (outcome, detail) = line(&report, "session.json");
    assert_eq!(outcome, ImportOutcome::Imported, "{detail}");
    assert!(detail.contains("for user 4242"), "{detail}");
    assert!(
        detail.contains("bound to the legacy device fingerprint"),
        "{detail}"
    );
    let (outcome, detail) = line(&report, "backups/session_20251231_120000.enc");
    assert_eq!(outcome, ImportOutcome::Skipped);
    assert!(detail.contains("older copy"), "{detail}");
    let (outcome, detail) = line(&report, &format!("cache/l2/{OLD_KEY}.cache"));
    assert_eq!(outcome, ImportOutcome::Skipped);
    assert!(detail.starts_with("expired"), "{detail}");
    assert_eq!(
        report.files.iter().map(|f| f.kind).collect::<Vec<_>>(),
        [
            LegacyKind::Session,
            LegacyKind::SessionBackup,
            LegacyKind::RateLimits,
            LegacyKind::CacheEntry,
            LegacyKind::CacheEntry,
            LegacyKind::CacheEntry,
            LegacyKind::Preferences,
        ]
    );

    // Session: the access token is the bearer token, bound to the old device,
    // due for rotation at once; the rest of the document is its data.
    let sessions = vault.sessions();
    assert!(matches!(
        sessions
            .validate("legacy-access-token", None)
            .await
            .unwrap(),
        Validation::FingerprintMismatch { .. }
    ));
    let session = sessions
        .validate("legacy-access-token", Some("fp-of-the-old-laptop"))
        .await
        .unwrap()
        .valid()
        .unwrap();
    assert_eq!(session.user_id, "4242");
    assert!(session.rotation_due);
    assert_eq!(session.expires_at.to_rfc3339(), at(base, 7200));
    let data: Value = session.data().unwrap();
    assert_eq!(data["refresh_token"], "legacy-refresh-token");
    assert_eq!(data["country_code"], "NO");
    assert!(data.get("access_token").is_none());
    assert!(data.get("device_fingerprint").is_none());
    let stored = vault
        .query_read_only("SELECT data || client_meta FROM sessions")
        .await
        .unwrap();
    assert!(
        !stored.rows[0][0]
            .to_string()
            .contains("legacy-access-token")
    );
    let rotated = sessions
        .rotate("legacy-access-token", Some("fp-of-the-old-laptop"))
        .await
        .unwrap();
    assert!(matches!(
        sessions
            .validate("legacy-access-token", Some("fp-of-the-old-laptop"))
            .await
            .unwrap(),
        Validation::Unknown
    ));
    assert!(matches!(
        sessions
            .validate(rotated.token.expose(), Some("fp-of-the-old-laptop"))
            .await
            .unwrap(),
        Validation::Valid(_)
    ));

    // Rate limits: the legacy bucket is the shortest window's state.
    let status = vault.limits().status("alice").await.unwrap();
    let api = status.iter().find(|l| l.limit == "api_calls").unwrap();
    assert!((api.windows[0].tokens - 40.0).abs() < 1e-6, "{api:?}");
    assert_eq!(api.windows[1].tokens, 1000.0);
    assert_eq!(api.recent_violations, 2);
    assert_eq!(api.penalty_until.as_deref(), Some(at(base, 60).as_str()));
    let auth = status.iter().find(|l| l.limit == "auth_attempts").unwrap();
    assert!((auth.windows[0].tokens - (1.0 + 60.0 * 5.0 / 900.0)).abs() < 1e-6);
    assert_eq!(
        vault.limits().violations_of("alice").await.unwrap().len(),
        3
    );
    let info = vault
        .query_read_only("SELECT client_info FROM violations WHERE cost = 5")
        .await
        .unwrap();
    let info: Value = serde_json::from_str(info.rows[0][0].as_str().unwrap()).unwrap();
    assert_eq!(info["ip"].as_str().unwrap().len(), 64, "{info}");
    assert!(!info.to_string().contains("203.0.113.7"));

    // Cache: both live entries, with their expiry, tags and user.
    let cache = vault.cache();
    let search = CacheKey::parse(SEARCH_KEY).unwrap();
    let hit: Value = cache.get_json(&search).await.unwrap().unwrap();
    assert_eq!(hit, json!([{"id": 1, "title": "Blue Monday"}]));
    let album: Value = cache
        .get_json(&CacheKey::parse(ALBUM_KEY).unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(album["title"], "Power, Corruption & Lies");
    assert_eq!(cache.keys_of_user("alice").await.unwrap(), [SEARCH_KEY]);
    assert!(
        cache
            .get(&CacheKey::parse(OLD_KEY).unwrap())
            .await
            .unwrap()
            .is_none()
    );
    clock.advance(Duration::from_secs(3000 + 1));
    assert!(
        cache.get(&search).await.unwrap().is_none(),
        "created 600 s before, TTL 3600 s"
    );
    clock.set(base);
    assert_eq!(cache.invalidate_tag("search").await.unwrap(), 1);

    // Preferences: checked against the defaults, merged over them.
    let prefs = vault.preferences().get("alice").await.unwrap();
    assert_eq!(prefs["audio_quality"], "LOSSLESS");
    assert_eq!(
        prefs["search_defaults"],
        json!({"limit": 50, "include_explicit": false})
    );
    assert_eq!(prefs["privacy"]["share_usage_data"], false);

    // One audit event for the run, no user in it.
    let tail = vault.audit().tail(1).await.unwrap();
    assert_eq!(tail[0].action, "legacy.import");
    assert!(vault.check().await.unwrap().ok());
    vault.close().await.unwrap();
}

#[tokio::test]
async fn a_second_run_imports_nothing_and_brings_nothing_back() {
    let (legacy, dir) = (common::tempdir(), common::tempdir());
    let base = Timestamp::from_millis(T0);
    seed_layout(legacy.path(), base);
    let (vault, _clock) = open(dir.path()).await;
    vault.import_legacy(legacy.path()).await.unwrap();
    // The service rotates the legacy token away and erases a user.
    vault
        .sessions()
        .rotate("legacy-access-token", Some("fp-of-the-old-laptop"))
        .await
        .unwrap();
    vault.erase_user("alice").await.unwrap();
    let before = rows(&vault).await;

    let again = vault.import_legacy(legacy.path()).await.unwrap();
    assert_eq!(
        (again.imported, again.already_imported, again.skipped),
        (0, 5, 2),
        "{again:#?}"
    );
    assert!(line(&again, "session.json").1.contains("earlier run"));
    assert_eq!(rows(&vault).await, before, "nothing written");
    assert!(matches!(
        vault
            .sessions()
            .validate("legacy-access-token", Some("fp-of-the-old-laptop"))
            .await
            .unwrap(),
        Validation::Unknown
    ));
    assert!(vault.preferences().stored("alice").await.unwrap().is_none());

    // A changed file is a new file, but what the vault has is kept.
    put(
        legacy.path(),
        "preferences/alice.json",
        json!({"preferences": {"audio_quality": "LOW"}}).to_string(),
    );
    vault
        .preferences()
        .patch("alice", &json!({"audio_quality": "HIGH"}))
        .await
        .unwrap();
    let third = vault.import_legacy(legacy.path()).await.unwrap();
    let (outcome, detail) = line(&third, "preferences/alice.json");
    assert_eq!(outcome, ImportOutcome::Skipped);
    assert!(detail.contains("already has preferences"), "{detail}");
    assert_eq!(
        vault.preferences().get("alice").await.unwrap()["audio_quality"],
        "HIGH"
    );
    vault.close().await.unwrap();
}

#[tokio::test]
async fn malformed_files_are_skipped_with_their_reason_and_nothing_partial() {
    let (legacy, dir) = (common::tempdir(), common::tempdir());
    let base = Timestamp::from_millis(T0);
    let d = legacy.path();
    let mut expected: Vec<(String, &str)> = Vec::new();
    let mut case = |rel: &str, bytes: Vec<u8>, reason: &'static str| {
        put(d, rel, bytes);
        expected.push((rel.to_owned(), reason));
    };
    case("session.json", b"{\"user_id\": 1, ".to_vec(), "not JSON");
    let key = fernet::Fernet::generate_key();
    case(
        "session.enc",
        fernet::Fernet::new(&key)
            .unwrap()
            .encrypt(json!({"user_id": "u"}).to_string().as_bytes())
            .into_bytes(),
        "decrypted, but missing field access_token",
    );
    put(d, "session.key", &key);
    let limits = |v: Value| v.to_string().into_bytes();
    case(
        "rate_limits/negative.json",
        limits(
            json!({"buckets": {"api_calls": {"current_tokens": -3, "last_refill": at(base, -1)}}}),
        ),
        "buckets.api_calls.current_tokens: -3 is not a number",
    );
    case(
        "rate_limits/future.json",
        limits(
            json!({"buckets": {"api_calls": {"current_tokens": 3, "last_refill": at(base, 86_400)}}}),
        ),
        "is in the future",
    );
    case(
        "rate_limits/notime.json",
        limits(
            json!({"violations": [{"timestamp": "last tuesday", "limit_type": "api_calls", "attempted_calls": 1}]}),
        ),
        "violations[0].timestamp: \"last tuesday\" is not an ISO 8601 time",
    );
    // A valid bucket, then a violation of a limit this vault does not have:
    // the bucket is written first inside the transaction, then rolled back.
    case(
        "rate_limits/partial.json",
        limits(json!({
            "buckets": {"api_calls": {"current_tokens": 3, "last_refill": at(base, -1)}},
            "violations": [{"timestamp": at(base, -1), "limit_type": "downloads", "attempted_calls": 1}],
        })),
        "unknown limit \"downloads\"",
    );
    case(
        "rate_limits/huge.json",
        limits(
            json!({"violations": [{"timestamp": at(base, -1), "limit_type": "api_calls", "attempted_calls": 1e300}]}),
        ),
        "attempted_calls",
    );
    case(
        "rate_limits/empty.json",
        b"{}".to_vec(),
        "missing field buckets",
    );
    let gz = |v: Value| gzip(v.to_string().as_bytes());
    let meta = |extra: Value| {
        let mut m = json!({"created_at": at(base, -60), "ttl_seconds": 3600});
        for (k, v) in extra.as_object().unwrap() {
            m[k] = v.clone();
        }
        m.to_string().into_bytes()
    };
    case(
        "cache/l2/a:notgzip.cache",
        b"{\"plain\": true}".to_vec(),
        "not gzip",
    );
    put(d, "cache/l2/a:notgzip.meta", meta(json!({})));
    case(
        "cache/l2/a:notjson.cache",
        gzip(b"<html>"),
        "the value is not JSON",
    );
    put(d, "cache/l2/a:notjson.meta", meta(json!({})));
    case(
        "cache/l2/a:nocreated.cache",
        gz(json!(1)),
        ".meta: missing field created_at",
    );
    put(
        d,
        "cache/l2/a:nocreated.meta",
        json!({"ttl_seconds": 60}).to_string(),
    );
    case(
        "cache/l2/a:ttl.cache",
        gz(json!(1)),
        "ttl_seconds: -5 is not a number",
    );
    put(d, "cache/l2/a:ttl.meta", meta(json!({"ttl_seconds": -5})));
    case(
        "cache/l2/a:truncated.cache",
        gz(json!([1, 2, 3]))[..12].to_vec(),
        "size_bytes says 999",
    );
    put(
        d,
        "cache/l2/a:truncated.meta",
        meta(json!({"size_bytes": 999})),
    );
    case("cache/l2/a:badmeta.cache", gz(json!(1)), ".meta: not JSON");
    put(d, "cache/l2/a:badmeta.meta", b"\x00\x01");
    case(
        "cache/l2/a:nometa.cache",
        gz(json!(1)),
        "no .meta file beside it",
    );
    case(
        "cache/l2/a:novalue.meta",
        meta(json!({})),
        "no .cache file beside it",
    );
    case(
        "cache/l2/a:otherkey.cache",
        gz(json!(1)),
        ".meta names key \"b:other\"",
    );
    put(
        d,
        "cache/l2/a:otherkey.meta",
        meta(json!({"key": "b:other"})),
    );
    let prefs = |v: Value| v.to_string().into_bytes();
    // Type-checked inside the transaction, after the ledger row: rolled back.
    case(
        "preferences/typed.json",
        prefs(json!({"preferences": {"search_defaults": {"limit": "many"}}})),
        "search_defaults.limit: expected a number, found a string",
    );
    case(
        "preferences/unknown.json",
        prefs(json!({"preferences": {"colour": "red"}})),
        "colour: not a known preference",
    );
    case(
        "preferences/mismatch.json",
        prefs(json!({"user_id": "mallory", "preferences": {}})),
        "does not match the file name",
    );
    case(
        "preferences/list.json",
        b"[1, 2]".to_vec(),
        "not a JSON object but an array",
    );

    let (vault, _clock) = open(dir.path()).await;
    let report = vault.import_legacy(d).await.unwrap();
    assert_eq!(report.imported, 0, "{report:#?}");
    assert_eq!(report.skipped, expected.len(), "{report:#?}");
    for (rel, reason) in &expected {
        let (outcome, detail) = line(&report, rel);
        assert_eq!(outcome, ImportOutcome::Skipped, "{rel}");
        assert!(
            detail.contains(reason),
            "{rel}: {detail:?} lacks {reason:?}"
        );
    }
    assert_eq!(
        rows(&vault).await,
        [0; 8],
        "nothing partial, no ledger rows"
    );
    assert!(vault.check().await.unwrap().ok());
    vault.close().await.unwrap();
}

#[tokio::test]
async fn expiry_is_judged_by_the_vault_clock() {
    let (legacy, dir) = (common::tempdir(), common::tempdir());
    let base = Timestamp::from_millis(T0);
    seed_layout(legacy.path(), base);
    let (vault, clock) = open(dir.path()).await;
    // Two hours later: the session (2 h) and the search entry (600 s into
    // 3600 s) have expired; the album entry (1 day) has not.
    clock.advance(Duration::from_secs(7200));
    let report = vault.import_legacy(legacy.path()).await.unwrap();
    let (outcome, detail) = line(&report, "session.json");
    assert_eq!(outcome, ImportOutcome::Skipped);
    assert_eq!(detail, format!("expired at {}", at(base, 7200)));
    let (outcome, detail) = line(&report, &format!("cache/l2/{SEARCH_KEY}.cache"));
    assert_eq!(outcome, ImportOutcome::Skipped);
    assert_eq!(detail, format!("expired at {}", at(base, 3000)));
    assert_eq!(
        line(&report, &format!("cache/l2/{ALBUM_KEY}.cache")).0,
        ImportOutcome::Imported
    );
    assert_eq!(count(&vault, "SELECT count(*) FROM sessions").await, 0);
    assert_eq!(count(&vault, "SELECT count(*) FROM cache_entries").await, 1);
    // The rate-limit file is history by now: it is still imported.
    assert_eq!(
        line(&report, "rate_limits/alice.json").0,
        ImportOutcome::Imported
    );
    vault.close().await.unwrap();
}

/// A `session.enc` + `session.key` pair.
fn put_encrypted(dir: &Path, key: &str, token: &str) {
    put(dir, "session.key", key);
    put(dir, "session.enc", token);
}

#[tokio::test]
async fn fernet_spec_token_decrypts_and_a_wrong_key_is_named() {
    // https://github.com/fernet/spec/blob/master/generate.json: "hello".
    const SECRET: &str = "cw_0x689RpI-jtRR7oE8h_eQsKImvJapLeSbXpwF4e4=";
    const TOKEN: &str = "gAAAAAAdwJ6wAAECAwQFBgcICQoLDA0ODy021cpGVWKZ_eEwCGM4BLLF_5CV9dOPmrhuVUPgJobwOz7JcbmrR64jVmpU4IwqDA==";
    let (legacy, dir) = (common::tempdir(), common::tempdir());
    let (vault, _clock) = open(dir.path()).await;
    let detail = |report: &ImportReport| line(report, "session.enc").1.to_owned();

    put_encrypted(legacy.path(), SECRET, TOKEN);
    let report = vault.import_legacy(legacy.path()).await.unwrap();
    assert!(
        detail(&report).starts_with("decrypted, but not JSON"),
        "the spec token decrypts to \"hello\": {}",
        detail(&report)
    );

    let other = fernet::Fernet::generate_key();
    put_encrypted(legacy.path(), &other, TOKEN);
    let report = vault.import_legacy(legacy.path()).await.unwrap();
    assert!(
        detail(&report).contains("does not decrypt with session.key"),
        "{}",
        detail(&report)
    );
    for (key, token, reason) in [
        ("not a key", TOKEN, "session.key is not a Fernet key"),
        (
            SECRET,
            "gAAAAAAdwJ6xAAECAwQFBgcICQoLDA0ODy021cpGVWKZ_eEwCGM4BLLF_5CV9dOPmrhuVUPgJobwOz7JcbmrR64jVmpU4IwqDA==",
            "does not decrypt",
        ),
        (SECRET, "%%%", "does not decrypt"),
    ] {
        put_encrypted(legacy.path(), key, token);
        let report = vault.import_legacy(legacy.path()).await.unwrap();
        assert!(detail(&report).contains(reason), "{}", detail(&report));
    }
    std::fs::remove_file(legacy.path().join("session.key")).unwrap();
    let report = vault.import_legacy(legacy.path()).await.unwrap();
    assert_eq!(detail(&report), "no session.key beside it");

    // A token of a JSON session under its own key (trailing newlines, as an
    // editor leaves them) imports.
    let key = fernet::Fernet::generate_key();
    let doc = session_doc(Timestamp::from_millis(T0));
    let token = fernet::Fernet::new(&key)
        .unwrap()
        .encrypt(doc.to_string().as_bytes());
    put_encrypted(legacy.path(), &format!("{key}\n"), &format!("{token}\n"));
    let report = vault.import_legacy(legacy.path()).await.unwrap();
    assert_eq!(
        line(&report, "session.enc").0,
        ImportOutcome::Imported,
        "{report:#?}"
    );
    assert_eq!(count(&vault, "SELECT count(*) FROM sessions").await, 1);
    assert_eq!(rows(&vault).await[0], 1, "nothing but that session");
    vault.close().await.unwrap();
}

/// The seed's `SecureSessionManager.save_session`, run by Python's
/// `cryptography`: a device key file and a Fernet token of the session.
const PYTHON_SAVE_SESSION: &str = r#"
import json, sys
from datetime import datetime, timedelta
from pathlib import Path
from cryptography.fernet import Fernet

out, expires_at, wrong = Path(sys.argv[1]), sys.argv[2], sys.argv[3] == "wrong"
key = Fernet.generate_key()
session = {
    "access_token": "py-access", "refresh_token": "py-refresh", "session_id": "py-session",
    "user_id": "py-user", "country_code": "SE", "expires_at": expires_at,
    "schema_version": "2.0", "device_fingerprint": "py-device",
    "saved_at": datetime.now().isoformat(),
    "rotation_due": (datetime.now() + timedelta(hours=24)).isoformat(),
}
(out / "session.key").write_bytes(Fernet.generate_key() if wrong else key)
(out / "session.enc").write_bytes(Fernet(key).encrypt(json.dumps(session).encode()))
"#;

#[tokio::test]
async fn a_session_encrypted_by_python_cryptography_imports() {
    let Some(python) = common::cryptography_python() else {
        return;
    };
    let (legacy, dir) = (common::tempdir(), common::tempdir());
    let (vault, _clock) = open(dir.path()).await;
    let save = |wrong: &str| {
        let out = std::process::Command::new(&python)
            .args(["-c", PYTHON_SAVE_SESSION])
            .arg(legacy.path())
            .arg(at(Timestamp::from_millis(T0), 3600))
            .arg(wrong)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", common::stderr(&out));
    };

    save("wrong");
    let report = vault.import_legacy(legacy.path()).await.unwrap();
    let (outcome, detail) = line(&report, "session.enc");
    assert_eq!(outcome, ImportOutcome::Skipped);
    assert!(
        detail.contains("does not decrypt with session.key"),
        "{detail}"
    );

    save("right");
    let report = vault.import_legacy(legacy.path()).await.unwrap();
    let (outcome, detail) = line(&report, "session.enc");
    assert_eq!(outcome, ImportOutcome::Imported, "{detail}");
    let session = vault
        .sessions()
        .validate("py-access", Some("py-device"))
        .await
        .unwrap()
        .valid()
        .unwrap();
    assert_eq!(session.user_id, "py-user");
    assert_eq!(
        session.data::<Value>().unwrap()["refresh_token"],
        "py-refresh"
    );
    vault.close().await.unwrap();
}

#[test]
fn the_cli_imports_reports_and_says_so_the_second_time() {
    let (legacy, dir) = (common::tempdir(), common::tempdir());
    seed_layout(legacy.path(), SystemClock.now());
    let d = dir.path();
    assert!(common::run(d, &["init"]).status.success());
    let legacy_dir = legacy.path().to_str().unwrap();

    let out = common::run(d, &["import-legacy", legacy_dir]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    let text = common::stdout(&out);
    assert!(text.contains("imported         session"), "{text}");
    assert!(text.contains("skipped          session_backup"), "{text}");
    assert!(
        text.contains(": 5 imported, 0 already imported, 2 skipped"),
        "{text}"
    );

    let out = common::run(d, &["import-legacy", legacy_dir, "--json"]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["imported"], 0);
    assert_eq!(report["already_imported"], 5);
    assert_eq!(report["files"][0]["path"], "session.json");
    assert_eq!(report["files"][0]["kind"], "session");
    assert_eq!(report["files"][0]["outcome"], "already_imported");

    let out = common::run(d, &["session", "list", "4242"]);
    let list = common::stdout(&out);
    assert_eq!(list.lines().count(), 2, "a header and the session: {list}");
    let out = common::run(d, &["prefs", "get", "alice"]);
    assert!(
        common::stdout(&out).contains("LOSSLESS"),
        "{}",
        common::stdout(&out)
    );
    let out = common::run(d, &["limits", "status", "alice", "--json"]);
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["limits"][0]["limit"], "api_calls");
    assert_eq!(status["limits"][0]["recent_violations"], 2);
    let out = common::run(d, &["cache", "stats", "--json"]);
    assert!(
        common::stdout(&out).contains("\"metadata\""),
        "{}",
        common::stdout(&out)
    );

    let out = common::run(d, &["import-legacy", d.join("missing").to_str().unwrap()]);
    let err = common::assert_one_error_line(&out);
    assert!(err.contains("missing"), "{err}");
}

/// Times around the vault's clock: past, future, naive local, impossible.
fn times() -> Vec<Value> {
    let base = Timestamp::from_millis(T0);
    [-86_400, -600, -60, 0, 60, 7200, 86_400 * 4000]
        .into_iter()
        .map(|s| json!(at(base, s)))
        .chain([json!(naive_local(base, -30)), json!("2026-02-30T00:00:00")])
        .collect()
}

/// Any JSON scalar, leaning on names and times the legacy files use.
fn leaf() -> proptest::strategy::BoxedStrategy<Value> {
    use proptest::prelude::*;
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        (-1e12f64..1e12).prop_map(Value::from),
        Just(json!(f64::MAX)),
        proptest::sample::select(times()),
        proptest::sample::select(vec!["api_calls", "search", "user:p", "", "-"])
            .prop_map(Value::from),
        any::<String>().prop_map(Value::from),
    ]
    .boxed()
}

/// Arbitrary JSON of any shape.
fn arbitrary_json() -> proptest::strategy::BoxedStrategy<Value> {
    use proptest::prelude::*;
    leaf()
        .prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                proptest::collection::btree_map(any::<String>(), inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
        .boxed()
}

/// An object with these fields, each usually plausible, sometimes any
/// scalar, sometimes missing: the legacy file's shape, bent.
fn shaped(
    fields: Vec<(&'static str, proptest::strategy::BoxedStrategy<Value>)>,
) -> proptest::strategy::BoxedStrategy<Value> {
    use proptest::prelude::*;
    fields
        .into_iter()
        .map(|(name, plausible)| {
            prop_oneof![
                12 => plausible.prop_map(Some),
                1 => leaf().prop_map(Some),
                1 => Just(None),
            ]
            .prop_map(move |v| v.map(|v| (name.to_owned(), v)))
        })
        .collect::<Vec<_>>()
        .prop_map(|fields| Value::Object(fields.into_iter().flatten().collect()))
        .boxed()
}

fn pick(values: &[&'static str]) -> proptest::strategy::BoxedStrategy<Value> {
    use proptest::prelude::*;
    proptest::sample::select(values.to_vec())
        .prop_map(Value::from)
        .boxed()
}

/// Mostly a past time, as a bucket, violation or cache entry has.
fn time() -> proptest::strategy::BoxedStrategy<Value> {
    use proptest::prelude::*;
    let base = Timestamp::from_millis(T0);
    prop_oneof![
        6 => (-86_400i64..0).prop_map(move |s| json!(at(base, s))),
        2 => (-86_400i64..0).prop_map(move |s| json!(naive_local(base, s))),
        1 => proptest::sample::select(times()),
    ]
    .boxed()
}

/// Mostly a future time, as a session's expiry has.
fn expiry() -> proptest::strategy::BoxedStrategy<Value> {
    use proptest::prelude::*;
    let base = Timestamp::from_millis(T0);
    prop_oneof![
        6 => (1i64..86_400).prop_map(move |s| json!(at(base, s))),
        1 => proptest::sample::select(times()),
    ]
    .boxed()
}

fn amount() -> proptest::strategy::BoxedStrategy<Value> {
    use proptest::prelude::*;
    prop_oneof![
        (0.0f64..200.0).prop_map(Value::from),
        (-5i64..3).prop_map(Value::from)
    ]
    .boxed()
}

/// A legacy document of each kind, bent: [session, rate limits, cache
/// `.meta`, preferences].
fn shaped_documents() -> impl proptest::strategy::Strategy<Value = [Value; 4]> {
    use proptest::prelude::*;
    let session = shaped(vec![
        (
            "user_id",
            prop_oneof![3 => pick(&["p", "q"]), 1 => (0i64..5).prop_map(Value::from).boxed()]
                .boxed(),
        ),
        (
            "access_token",
            pick(&["tok-a", "tok-b", "tok-c", "tok-d", ""]),
        ),
        ("expires_at", expiry()),
        (
            "device_fingerprint",
            pick(&["fp", "fp", "fp", "fp", "fp", ""]),
        ),
        ("refresh_token", pick(&["r"])),
    ]);
    let bucket = shaped(vec![
        ("current_tokens", amount()),
        ("last_refill", time()),
        ("capacity", amount()),
    ]);
    let violation = shaped(vec![
        ("timestamp", time()),
        (
            "limit_type",
            pick(&["api_calls", "auth_attempts", "search_queries", "downloads"]),
        ),
        ("attempted_calls", amount()),
        (
            "client_info",
            Just(json!({"ip": "203.0.113.7", "user_agent": "ua"})).boxed(),
        ),
    ]);
    let limits = shaped(vec![
        (
            "buckets",
            proptest::collection::btree_map(
                proptest::sample::select(vec![
                    "api_calls",
                    "auth_attempts",
                    "playlist_ops",
                    "search_queries",
                    "downloads",
                ])
                .prop_map(str::to_owned),
                bucket,
                0..3,
            )
            .prop_map(|m| Value::Object(m.into_iter().collect()))
            .boxed(),
        ),
        (
            "violations",
            proptest::collection::vec(violation, 0..4)
                .prop_map(Value::from)
                .boxed(),
        ),
    ]);
    let meta = shaped(vec![
        (
            "key",
            pick(&["ns:op:h:p", "ns:op:h:p", "ns:op:h:p", "ns:other"]),
        ),
        ("created_at", time()),
        (
            "ttl_seconds",
            prop_oneof![amount(), (1i64..1_000_000).prop_map(Value::from).boxed()].boxed(),
        ),
        (
            "tags",
            proptest::collection::vec(pick(&["search", "user:p", "playlist:1", ""]), 0..3)
                .prop_map(Value::from)
                .boxed(),
        ),
    ]);
    let prefs = shaped(vec![
        ("user_id", pick(&["p", "p", "p", "q"])),
        (
            "preferences",
            proptest::collection::btree_map(
                proptest::sample::select(vec![
                    "audio_quality",
                    "search_defaults",
                    "privacy",
                    "colour",
                ])
                .prop_map(str::to_owned),
                prop_oneof![
                    1 => leaf(),
                    2 => Just(json!({"limit": 10})),
                    2 => Just(json!("LOW")),
                    1 => Just(json!({"limit": "x"})),
                ],
                0..4,
            )
            .prop_map(|m| Value::Object(m.into_iter().collect()))
            .boxed(),
        ),
    ]);
    (session, limits, meta, prefs).prop_map(|(a, b, c, d)| [a, b, c, d])
}

/// What one case writes, as one kind of legacy file.
#[derive(Debug, Clone)]
struct Case {
    kind: usize,
    /// 0: raw bytes, 1: arbitrary JSON, 2: the kind's own shape, bent.
    mode: usize,
    bytes: Vec<u8>,
    json: Value,
    shaped: [Value; 4],
}

impl Case {
    /// The main file's contents: bytes, arbitrary JSON, or document `doc`'s shape.
    fn contents(&self, doc: usize) -> Vec<u8> {
        match self.mode {
            0 => self.bytes.clone(),
            1 => self.json.to_string().into_bytes(),
            _ => self.shaped[doc].to_string().into_bytes(),
        }
    }
}

#[test]
fn arbitrary_legacy_files_never_panic_and_leave_a_clean_vault() {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dir = common::tempdir();
    let (vault, _clock) = runtime.block_on(open(dir.path()));
    let key = fernet::Fernet::generate_key();
    let fernet = fernet::Fernet::new(&key).unwrap();
    let cases = (
        0..6usize,
        prop_oneof![1 => Just(0usize), 1 => Just(1), 4 => Just(2)],
        proptest::collection::vec(any::<u8>(), 0..256),
        arbitrary_json(),
        shaped_documents(),
    )
        .prop_map(|(kind, mode, bytes, json, shaped)| Case {
            kind,
            mode,
            bytes,
            json,
            shaped,
        });
    let mut runner = TestRunner::new(Config {
        cases: 256,
        failure_persistence: None,
        ..Config::default()
    });
    let outcomes = std::cell::RefCell::new([0usize; 3]);
    runner
        .run(&cases, |case| {
            let legacy = common::tempdir();
            let d = legacy.path();
            match case.kind {
                0 => put(d, "session.json", case.contents(0)),
                1 => {
                    // Raw bytes as the token, or JSON encrypted under the key.
                    let token = match case.mode {
                        0 => case.bytes.clone(),
                        _ => fernet.encrypt(&case.contents(0)).into_bytes(),
                    };
                    put_encrypted(d, &key, &String::from_utf8_lossy(&token));
                }
                2 => put(d, "rate_limits/p.json", case.contents(1)),
                3 => {
                    // Raw bytes, or a real gzip of JSON, with bent metadata.
                    let value = match case.mode {
                        0 => case.bytes.clone(),
                        _ => gzip(case.json.to_string().as_bytes()),
                    };
                    put(d, "cache/l2/ns:op:h:p.cache", value);
                    put(d, "cache/l2/ns:op:h:p.meta", case.shaped[2].to_string());
                }
                4 => put(d, "preferences/p.json", case.contents(3)),
                _ => {
                    put(d, "cache/l2/ns:op:h:p.cache", case.contents(2));
                    put(d, "cache/l2/ns:op:h:p.meta", case.contents(2));
                }
            }
            let before = runtime.block_on(rows(&vault));
            let report = runtime
                .block_on(vault.import_legacy(d))
                .map_err(|e| TestCaseError::fail(format!("import failed: {e}")))?;
            prop_assert_eq!(report.files.len(), 1);
            if report.files[0].outcome != ImportOutcome::Imported {
                prop_assert_eq!(runtime.block_on(rows(&vault)), before, "{:?}", report);
            }
            let i = match report.files[0].outcome {
                ImportOutcome::Imported => 0,
                ImportOutcome::AlreadyImported => 1,
                ImportOutcome::Skipped => 2,
            };
            outcomes.borrow_mut()[i] += 1;
            Ok(())
        })
        .unwrap();
    let outcomes = outcomes.into_inner();
    assert!(
        outcomes[0] >= 3,
        "the cases should reach the facets, not only the parsers: {outcomes:?}"
    );
    runtime.block_on(async {
        assert!(vault.check().await.unwrap().ok());
        vault.close().await.unwrap();
    });
}
