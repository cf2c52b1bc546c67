//! Hostile input (issue #10): proptest properties that feed arbitrary
//! preference patches, cache keys and values, config files and CLI
//! arguments to the real code, each checked against a small model of what
//! should happen. Never a panic; bad input is a typed error that changes
//! nothing. (The legacy import's property is in tests/legacy.rs.)
//!
//! Each property runs a fixed number of cases so that CI stays fast;
//! `PROPTEST_CASES=N` runs N of each instead. Inputs that once failed are
//! kept as named regression tests at the end of the file.

mod common;

use std::ffi::OsString;
use std::process::Output;
use std::time::Duration;

use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::{Config as ProptestConfig, TestCaseError, TestRunner};
use serde_json::{Map, Value, json};
use statevault::{
    CacheConfig, CacheKey, Config, Error, FakeClock, MAX_PREFERENCE_DEPTH, PreferencesConfig,
    SetOptions, Vault, VaultOptions, merge_patch,
};

/// A runner of `cases` cases, or of `PROPTEST_CASES` when it is set:
/// proptest reads the variable only into its default config, which an
/// explicit count replaces.
fn runner(cases: u32) -> TestRunner {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(cases);
    TestRunner::new(ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    })
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().unwrap()
}

// ---------------------------------------------------------------------------
// Shared strategies

/// Text that trips code up: control characters, bidi overrides, zero-width
/// and combining marks, astral emoji, or anything at all.
fn odd_string() -> BoxedStrategy<String> {
    prop_oneof![
        4 => any::<String>(),
        3 => "[a-z_]{1,12}",
        1 => "[\\x00-\\x1f\\x7f\u{80}-\u{9f}]{1,6}",
        1 => "[\u{202e}\u{200b}\u{feff}\u{fffd}\u{1f600}e\u{301}\u{308}]{1,8}",
        1 => Just(String::new()),
    ]
    .boxed()
}

/// Any JSON scalar, numbers at their extremes included.
fn leaf() -> BoxedStrategy<Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        select(vec![
            json!(u64::MAX),
            json!(i64::MIN),
            json!(f64::MAX),
            json!(f64::MIN_POSITIVE),
            json!(-0.0),
            json!(5e-324),
        ]),
        odd_string().prop_map(Value::from),
    ]
    .boxed()
}

/// Arbitrary JSON, up to four levels of arrays and objects.
fn json_value(keys: BoxedStrategy<String>) -> BoxedStrategy<Value> {
    leaf()
        .prop_recursive(4, 48, 6, move |inner| {
            prop_oneof![
                vec(inner.clone(), 0..4).prop_map(Value::from),
                btree_map(keys.clone(), inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
        .boxed()
}

/// A scalar under 1 to 200 levels of objects (and arrays): past
/// serde_json's recursion limit of 128 when read back.
fn deep() -> BoxedStrategy<Value> {
    (1usize..=200, leaf(), any::<bool>())
        .prop_map(|(depth, mut v, arrays)| {
            for i in 0..depth {
                v = if arrays && i % 2 == 1 {
                    Value::Array(vec![v])
                } else {
                    json!({ "deeper": v })
                };
            }
            v
        })
        .boxed()
}

/// Nesting depth: a scalar is 0, `{}` and `[]` are 1.
fn depth(v: &Value) -> usize {
    match v {
        Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        Value::Object(map) => 1 + map.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

// ---------------------------------------------------------------------------
// Preferences

/// The seeds' preference keys at every level, and some that are not.
fn pref_key() -> BoxedStrategy<String> {
    prop_oneof![
        6 => select(vec![
            "audio_quality",
            "search_defaults",
            "cache_preferences",
            "privacy",
            "limit",
            "include_explicit",
            "enable_cache",
            "cache_duration",
            "enable_analytics",
            "share_usage_data",
        ])
        .prop_map(str::to_owned),
        1 => odd_string(),
    ]
    .boxed()
}

/// Mostly an object of preference keys (some values null, some deep),
/// sometimes any JSON at all.
fn pref_patch() -> BoxedStrategy<Value> {
    let value = prop_oneof![
        4 => json_value(pref_key()),
        2 => Just(Value::Null),
        1 => deep(),
    ];
    prop_oneof![
        8 => vec((pref_key(), value), 0..5)
            .prop_map(|entries| Value::Object(entries.into_iter().collect())),
        1 => json_value(pref_key()),
    ]
    .boxed()
}

/// A few ids that recur (so patches pile up), odd ones, and lengths
/// around the 256-byte limit.
fn user_id() -> BoxedStrategy<String> {
    prop_oneof![
        6 => select(vec!["alice", "bob\u{0}nul", "\u{7}\u{1b}[31m", "\u{202e}evil", "\u{fc}"])
            .prop_map(str::to_owned),
        1 => Just(String::new()),
        1 => (250usize..=260).prop_map(|n| "u".repeat(n)),
        1 => (125usize..=130).prop_map(|n| "\u{e9}".repeat(n)),
        2 => odd_string(),
    ]
    .boxed()
}

/// RFC 7386's pseudo-code, written out independently of the library.
fn reference_merge(target: &Value, patch: &Value) -> Value {
    let Value::Object(patch) = patch else {
        return patch.clone();
    };
    let mut out = match target {
        Value::Object(t) => t.clone(),
        _ => Map::new(),
    };
    for (key, value) in patch {
        if value.is_null() {
            out.remove(key);
        } else {
            let merged = reference_merge(out.get(key).unwrap_or(&Value::Null), value);
            out.insert(key.clone(), merged);
        }
    }
    Value::Object(out)
}

fn same_kind(a: &Value, b: &Value) -> bool {
    std::mem::discriminant(a) == std::mem::discriminant(b)
}

/// Whether `value` keeps the defaults' types: a key the defaults have takes
/// the default's JSON type (any type under a `null` default), other keys
/// only when `allow_unknown`.
fn fits(defaults: &Value, value: &Value, allow_unknown: bool) -> bool {
    let (Value::Object(defaults), Value::Object(value)) = (defaults, value) else {
        return true;
    };
    value.iter().all(|(key, v)| match defaults.get(key) {
        None => allow_unknown,
        Some(Value::Null) => true,
        Some(d) => same_kind(d, v) && fits(d, v, allow_unknown),
    })
}

/// What a patch should do: `Some((overrides, merged))`, or `None` for an
/// `InvalidPreference` that leaves the stored document as it was.
fn expected_patch(
    defaults: &Value,
    allow_unknown: bool,
    before: &Value,
    patch: &Value,
) -> Option<(Value, Value)> {
    if !patch.is_object() {
        return None;
    }
    let overrides = reference_merge(before, patch);
    let merged = reference_merge(defaults, &overrides);
    (fits(defaults, &merged, allow_unknown) && depth(&overrides) <= MAX_PREFERENCE_DEPTH)
        .then_some((overrides, merged))
}

#[derive(Debug, Clone)]
struct PrefCase {
    loose: bool,
    user: String,
    patches: Vec<Value>,
}

/// One case: the user starts with no overrides and gets the patches one
/// after the other. Each outcome matches the model; an accepted patch reads
/// back the same through `get` and `stored`, a refused one leaves `stored`
/// as it was.
fn check_pref_case(
    rt: &tokio::runtime::Runtime,
    vault: &Vault,
    allow_unknown: bool,
    case: &PrefCase,
) -> Result<(), TestCaseError> {
    let prefs = vault.preferences();
    let defaults = rt.block_on(prefs.get("nobody")).unwrap();
    let user = case.user.as_str();
    if !user_id_ok(user) {
        let refused = |r: Result<(), Error>| {
            matches!(
                r,
                Err(Error::InvalidInput {
                    what: "user_id",
                    ..
                })
            )
        };
        prop_assert!(refused(rt.block_on(prefs.stored(user)).map(drop)));
        prop_assert!(refused(rt.block_on(prefs.get(user)).map(drop)));
        prop_assert!(refused(rt.block_on(prefs.reset(user)).map(drop)));
        for patch in &case.patches {
            prop_assert!(refused(rt.block_on(prefs.patch(user, patch)).map(drop)));
        }
        return Ok(());
    }
    rt.block_on(prefs.reset(user)).unwrap();
    for patch in &case.patches {
        let before = rt.block_on(prefs.stored(user)).unwrap();
        let before_doc = before
            .as_ref()
            .map_or_else(|| json!({}), |s| s.document.clone());
        let expected = expected_patch(&defaults, allow_unknown, &before_doc, patch);
        match (rt.block_on(prefs.patch(user, patch)), expected) {
            (Ok(merged), Some((overrides, expected_merged))) => {
                prop_assert_eq!(&merged, &expected_merged);
                prop_assert!(fits(&defaults, &merged, allow_unknown));
                prop_assert_eq!(rt.block_on(prefs.get(user)).unwrap(), merged);
                prop_assert_eq!(
                    rt.block_on(prefs.stored(user)).unwrap().unwrap().document,
                    overrides
                );
            }
            (Err(Error::InvalidPreference { .. }), None) => {
                prop_assert_eq!(rt.block_on(prefs.stored(user)).unwrap(), before);
            }
            (result, expected) => {
                return Err(TestCaseError::fail(format!(
                    "patch gave {result:?}, the model expected {expected:?}"
                )));
            }
        }
    }
    Ok(())
}

#[test]
fn arbitrary_preference_patches_match_the_model() {
    let rt = runtime();
    let dir = common::tempdir();
    let open = |name: &str, config: PreferencesConfig| {
        let (options, _clock) = common::options(dir.path(), name);
        rt.block_on(Vault::open(options.preferences(config)))
            .unwrap()
    };
    let strict = open("strict.db", PreferencesConfig::seeds());
    let loose = open(
        "loose.db",
        PreferencesConfig::seeds().allow_unknown_keys(true),
    );
    let cases =
        (any::<bool>(), user_id(), vec(pref_patch(), 1..4)).prop_map(|(loose, user, patches)| {
            PrefCase {
                loose,
                user,
                patches,
            }
        });
    runner(128)
        .run(&cases, |case| {
            let vault = if case.loose { &loose } else { &strict };
            check_pref_case(&rt, vault, case.loose, &case)
        })
        .unwrap();
    rt.block_on(async {
        for vault in [strict, loose] {
            assert!(vault.check().await.unwrap().ok());
            vault.close().await.unwrap();
        }
    });
}

#[test]
fn merge_patch_matches_rfc_7386_and_is_idempotent() {
    let cases = (json_value(pref_key()), pref_patch());
    runner(512)
        .run(&cases, |(target, patch)| {
            let mut once = target.clone();
            merge_patch(&mut once, &patch);
            prop_assert_eq!(&once, &reference_merge(&target, &patch));
            let mut twice = once.clone();
            merge_patch(&mut twice, &patch);
            prop_assert_eq!(&twice, &once);
            match (&patch, &once) {
                (Value::Object(p), Value::Object(result)) => {
                    for (key, value) in p {
                        match value {
                            Value::Null => prop_assert!(!result.contains_key(key)),
                            Value::Object(_) => prop_assert!(result[key].is_object()),
                            v => prop_assert_eq!(&result[key], v),
                        }
                    }
                }
                (Value::Object(_), other) => {
                    return Err(TestCaseError::fail(format!("an object patch gave {other}")));
                }
                (p, result) => prop_assert_eq!(p, result),
            }
            Ok(())
        })
        .unwrap();
}

// ---------------------------------------------------------------------------
// Cache keys and values

/// The largest value the cache vaults here accept: 48 KiB, so that some of
/// the values (up to 64 KiB) are over it.
const MAX_VALUE: usize = 48 << 10;

fn namespace() -> BoxedStrategy<String> {
    prop_oneof![
        6 => select(vec!["search", "metadata", "tracks", "playlists", "ns"]).prop_map(str::to_owned),
        1 => Just(String::new()),
        1 => "[a-z]{60,70}",
        1 => "[a-z]{0,3}:[a-z]{0,3}",
        2 => odd_string(),
    ]
    .boxed()
}

/// A key's name or operation: short and plain, odd, or near the 1 KiB cap.
fn key_part() -> BoxedStrategy<String> {
    prop_oneof![
        4 => select(vec!["tracks", "album:7", "q", ""]).prop_map(str::to_owned),
        2 => odd_string(),
        1 => "[a-z]{900,1100}",
    ]
    .boxed()
}

/// Small, medium, compressible up to 64 KiB, random up to 64 KiB, or
/// something an integer parser may or may not take.
fn cache_value() -> BoxedStrategy<Vec<u8>> {
    prop_oneof![
        3 => vec(any::<u8>(), 0..64),
        2 => vec(any::<u8>(), 64..4096),
        2 => (0usize..=65_536, vec(any::<u8>(), 1..8))
            .prop_map(|(n, unit)| unit.iter().copied().cycle().take(n).collect()),
        1 => vec(any::<u8>(), 40_000..=65_536),
        2 => prop_oneof![
            any::<i64>().prop_map(|n| n.to_string()),
            select(vec![
                "0", "+7", "-0", " 1", "1 ", "9223372036854775807", "-9223372036854775808",
                "9223372036854775808", "1e3", "\u{663}",
            ])
            .prop_map(str::to_owned),
        ]
        .prop_map(String::into_bytes),
    ]
    .boxed()
}

fn delta() -> BoxedStrategy<i64> {
    prop_oneof![
        3 => -3i64..=3,
        1 => any::<i64>(),
        1 => select(vec![i64::MAX, i64::MIN]),
    ]
    .boxed()
}

/// The same JSON with every object's keys in reverse order.
fn reversed(v: &Value) -> Value {
    match v {
        Value::Object(map) => Value::Object(
            map.iter()
                .rev()
                .map(|(k, v)| (k.clone(), reversed(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(reversed).collect()),
        other => other.clone(),
    }
}

fn namespace_ok(ns: &str) -> bool {
    !ns.is_empty() && ns.len() <= 64 && !ns.contains(':') && !ns.chars().any(char::is_control)
}

/// The one rule for user ids and subjects: 1 to 256 bytes, no control
/// characters.
fn user_id_ok(id: &str) -> bool {
    !id.is_empty() && id.len() <= statevault::MAX_ID_BYTES && !id.chars().any(char::is_control)
}

/// A short name for an error, to compare with what the model allows.
fn error_kind(e: &Error) -> String {
    match e {
        Error::InvalidInput { what, .. } => (*what).to_owned(),
        Error::CacheValueTooLarge { .. } => "too large".to_owned(),
        Error::CacheCorrupt { .. } => "corrupt".to_owned(),
        other => format!("{other:?}"),
    }
}

#[derive(Debug, Clone)]
struct KeyCase {
    derive: bool,
    namespace: String,
    name: String,
    params: Value,
    user: Option<String>,
}

#[derive(Debug, Clone)]
struct CacheCase {
    key: KeyCase,
    l1_off: bool,
    value: Vec<u8>,
    ttl: Option<u64>,
    never_expires: bool,
    tags: Vec<String>,
    delta: i64,
}

impl CacheCase {
    fn options(&self) -> SetOptions {
        let mut options = SetOptions::new();
        if self.never_expires {
            options = options.never_expires();
        } else if let Some(secs) = self.ttl {
            options = options.ttl(Duration::from_secs(secs));
        }
        self.tags.iter().fold(options, |o, t| o.tag(t.as_str()))
    }

    /// Every error `set_with` may give for these inputs (none: it succeeds).
    fn set_errors(&self) -> Vec<&'static str> {
        let mut errors = Vec::new();
        if self.value.len() > MAX_VALUE {
            errors.push("too large");
        }
        if !self.never_expires && self.ttl.is_some_and(|s| s == 0 || s > 365 * 86_400) {
            errors.push("cache ttl");
        }
        let tag_ok =
            |t: &String| !t.is_empty() && t.len() <= 256 && !t.chars().any(char::is_control);
        if !self.tags.iter().all(tag_ok) {
            errors.push("cache tag");
        }
        errors
    }
}

fn key_case() -> impl Strategy<Value = KeyCase> {
    let user = proptest::option::of(prop_oneof![
        2 => select(vec!["u1", "alice"]).prop_map(str::to_owned),
        2 => odd_string(),
        1 => "[a-z]{1000,1030}",
    ]);
    (
        any::<bool>(),
        namespace(),
        key_part(),
        json_value(odd_string()),
        user,
    )
        .prop_map(|(derive, namespace, name, params, user)| KeyCase {
            derive,
            namespace,
            name,
            params,
            user,
        })
}

/// The key, checked against the model of `CacheKey::new` / `derive`:
/// `None` when it is (rightly) refused.
fn checked_key(k: &KeyCase) -> Result<Option<CacheKey>, TestCaseError> {
    let (key, len) = if k.derive {
        let user_len = k.user.as_ref().map_or(1, String::len);
        (
            CacheKey::derive(&k.namespace, &k.name, &k.params, k.user.as_deref()),
            k.namespace.len() + k.name.len() + 16 + user_len + 3,
        )
    } else {
        let key = CacheKey::new(&k.namespace, &k.name);
        let key = match &k.user {
            Some(user) => key.and_then(|key| key.for_user(user)),
            None => key,
        };
        (key, k.namespace.len() + k.name.len() + 1)
    };
    // `derive` checks the user before the key's length, `for_user` after.
    let user_ok = k.user.as_deref().is_none_or(user_id_ok);
    let expected = if !namespace_ok(&k.namespace) {
        Some("cache namespace")
    } else if k.derive && !user_ok {
        Some("user_id")
    } else if len > statevault::MAX_KEY_BYTES {
        Some("cache key")
    } else if !user_ok {
        Some("user_id")
    } else {
        None
    };
    let key = match (key, expected) {
        (Ok(key), None) => key,
        (Err(Error::InvalidInput { what, .. }), Some(kind)) if what == kind => return Ok(None),
        (key, expected) => {
            return Err(TestCaseError::fail(format!(
                "key gave {key:?}, the model expected the error {expected:?}"
            )));
        }
    };
    prop_assert_eq!(key.namespace(), k.namespace.as_str());
    prop_assert_eq!(key.user(), k.user.as_deref());
    prop_assert_eq!(key.as_str().len(), len);
    if k.derive {
        let again = CacheKey::derive(&k.namespace, &k.name, &k.params, k.user.as_deref());
        prop_assert_eq!(&again.unwrap(), &key);
        let reordered = reversed(&k.params);
        let other_order = CacheKey::derive(&k.namespace, &k.name, &reordered, k.user.as_deref());
        prop_assert_eq!(&other_order.unwrap(), &key);
        let prefix = format!("{}:{}:", k.namespace, k.name);
        let suffix = format!(":{}", k.user.as_deref().unwrap_or("-"));
        prop_assert!(key.as_str().starts_with(&prefix));
        prop_assert!(key.as_str().ends_with(&suffix));
        let hash = &key.as_str()[prefix.len()..prefix.len() + 16];
        prop_assert!(
            hash.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        );
    } else {
        prop_assert_eq!(key.as_str(), format!("{}:{}", k.namespace, k.name));
    }
    Ok(Some(key))
}

/// `incr`'s model: the value as an `i64` (missing is 0) plus `delta`, or
/// `None` for the `counter` error.
fn expected_incr(current: Option<&[u8]>, delta: i64) -> Option<i64> {
    let n = match current {
        None => 0,
        Some(bytes) => std::str::from_utf8(bytes).ok()?.parse::<i64>().ok()?,
    };
    n.checked_add(delta)
}

fn check_cache_case(
    rt: &tokio::runtime::Runtime,
    vault: &Vault,
    case: &CacheCase,
) -> Result<(), TestCaseError> {
    let Some(key) = checked_key(&case.key)? else {
        return Ok(());
    };
    let cache = vault.cache();
    let get = || rt.block_on(cache.get(&key)).unwrap().map(|v| v.to_vec());
    let before = get();
    let errors = case.set_errors();
    let current = match rt.block_on(cache.set_with(&key, &case.value, &case.options())) {
        Ok(()) => {
            prop_assert!(
                errors.is_empty(),
                "set succeeded; expected one of {errors:?}"
            );
            Some(case.value.clone())
        }
        Err(e) => {
            let kind = error_kind(&e);
            prop_assert!(
                errors.contains(&kind.as_str()),
                "{e:?}; expected {errors:?}"
            );
            before
        }
    };
    prop_assert_eq!(&get(), &current);
    rt.block_on(vault.flush()).unwrap();
    prop_assert_eq!(&get(), &current, "after a flush");

    let expected = expected_incr(current.as_deref(), case.delta);
    match (rt.block_on(cache.incr(&key, case.delta)), expected) {
        (Ok(n), Some(m)) => {
            prop_assert_eq!(n, m);
            prop_assert_eq!(get(), Some(n.to_string().into_bytes()));
        }
        (
            Err(Error::InvalidInput {
                what: "counter", ..
            }),
            None,
        ) => {
            prop_assert_eq!(get(), current);
        }
        (result, expected) => {
            return Err(TestCaseError::fail(format!(
                "incr gave {result:?}, the model expected {expected:?}"
            )));
        }
    }
    Ok(())
}

#[test]
fn arbitrary_cache_keys_and_values_round_trip_or_are_typed_errors() {
    let rt = runtime();
    let dir = common::tempdir();
    let open = |name: &str, config: CacheConfig| {
        let (options, _clock) = common::options(dir.path(), name);
        rt.block_on(Vault::open(
            options.cache(config.max_value_bytes(MAX_VALUE)),
        ))
        .unwrap()
    };
    let with_l1 = open("l1.db", CacheConfig::default());
    let without_l1 = open("l2-only.db", CacheConfig::default().l1_entries(0));
    let tag = prop_oneof![
        4 => select(vec!["search", "user:u1", "playlist:42"]).prop_map(str::to_owned),
        2 => odd_string(),
        1 => "[a-z]{250,260}",
    ];
    let ttl = proptest::option::of(prop_oneof![
        Just(0u64),
        1u64..=86_400,
        select(vec![365 * 86_400, 365 * 86_400 + 1, u64::MAX / 2]),
    ]);
    let cases = (
        key_case(),
        any::<bool>(),
        cache_value(),
        ttl,
        proptest::bool::weighted(0.1),
        vec(tag, 0..3),
        delta(),
    )
        .prop_map(
            |(key, l1_off, value, ttl, never_expires, tags, delta)| CacheCase {
                key,
                l1_off,
                value,
                ttl,
                never_expires,
                tags,
                delta,
            },
        );
    runner(128)
        .run(&cases, |case| {
            let vault = if case.l1_off { &without_l1 } else { &with_l1 };
            check_cache_case(&rt, vault, &case)
        })
        .unwrap();
    rt.block_on(async {
        for vault in [with_l1, without_l1] {
            assert!(vault.check().await.unwrap().ok());
            vault.close().await.unwrap();
        }
    });
}

#[derive(Debug, Clone)]
struct CorruptCase {
    name: String,
    value: Vec<u8>,
    garbage: Vec<u8>,
    size: Option<i64>,
    flip_codec: bool,
    incr_first: bool,
}

#[test]
fn arbitrary_garbage_in_l2_is_a_typed_error_and_the_entry_dropped() {
    let rt = runtime();
    let dir = common::tempdir();
    let (options, _clock) = common::options(dir.path(), "vault.db");
    let config = CacheConfig::default()
        .l1_entries(0)
        .max_value_bytes(MAX_VALUE);
    let vault = rt.block_on(Vault::open(options.cache(config))).unwrap();
    let raw = common::raw_connection(vault.path());
    let cases = (
        "[a-z0-9]{1,12}",
        cache_value().prop_filter("fits", |v| v.len() <= MAX_VALUE),
        vec(any::<u8>(), 0..512),
        proptest::option::of(prop_oneof![any::<i64>(), 0i64..600]),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |(name, value, garbage, size, flip_codec, incr_first)| CorruptCase {
                name,
                value,
                garbage,
                size,
                flip_codec,
                incr_first,
            },
        );
    runner(64)
        .run(&cases, |case| {
            let cache = vault.cache();
            let key = CacheKey::new("corrupt", &case.name).unwrap();
            rt.block_on(cache.set(&key, &case.value)).unwrap();
            rt.block_on(vault.flush()).unwrap();
            let (codec, size): (String, i64) = raw
                .query_row(
                    "SELECT codec, size FROM cache_entries WHERE key = ?1",
                    [key.as_str()],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .unwrap();
            let codec = match (codec.as_str(), case.flip_codec) {
                ("raw", true) => "zstd",
                ("zstd", true) => "raw",
                (c, false) => c,
                (c, true) => panic!("unknown codec {c}"),
            };
            let size = case.size.unwrap_or(size);
            raw.execute(
                "UPDATE cache_entries SET value = ?1, codec = ?2, size = ?3 WHERE key = ?4",
                rusqlite::params![case.garbage, codec, size, key.as_str()],
            )
            .unwrap();
            // Raw bytes of the recorded length are indistinguishable from a
            // value; anything else must be caught (a random zstd frame that
            // decodes to exactly `size` bytes is not a worry).
            let readable = codec == "raw" && i64::try_from(case.garbage.len()) == Ok(size);
            let outcome = if case.incr_first {
                rt.block_on(cache.incr(&key, 1)).map(|_| ())
            } else {
                rt.block_on(cache.get(&key)).map(|v| {
                    assert_eq!(v.as_deref(), Some(&case.garbage[..]), "read as a value");
                })
            };
            match (outcome, readable) {
                (Ok(()), true) => {}
                (
                    Err(Error::InvalidInput {
                        what: "counter", ..
                    }),
                    true,
                ) if case.incr_first => {}
                (Err(Error::CacheCorrupt { key: k, .. }), false) => {
                    prop_assert_eq!(k, key.as_str());
                    prop_assert_eq!(rt.block_on(cache.get(&key)).unwrap(), None);
                    let rows: i64 = raw
                        .query_row(
                            "SELECT count(*) FROM cache_entries WHERE key = ?1",
                            [key.as_str()],
                            |r| r.get(0),
                        )
                        .unwrap();
                    prop_assert_eq!(rows, 0, "dropped");
                }
                (outcome, readable) => {
                    return Err(TestCaseError::fail(format!(
                        "{outcome:?}, readable: {readable}"
                    )));
                }
            }
            Ok(())
        })
        .unwrap();
    rt.block_on(async {
        assert!(vault.check().await.unwrap().ok());
        vault.close().await.unwrap();
    });
}

// ---------------------------------------------------------------------------
// Config files

/// What a config key takes.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Path,
    Bool,
    Count,
    Rate,
    Level,
    Sync,
    WhenFull,
}

/// Every section of `statevault.toml` with a fixed set of keys.
const SECTIONS: &[(&str, &[(&str, Kind)])] = &[
    (
        "storage_paths",
        &[
            ("database", Kind::Path),
            ("key_file", Kind::Path),
            ("encryption", Kind::Bool),
            ("backups", Kind::Path),
        ],
    ),
    (
        "storage",
        &[
            ("synchronous", Kind::Sync),
            ("readers", Kind::Count),
            ("page_cache_mb", Kind::Count),
            ("busy_timeout_ms", Kind::Count),
            ("flush_interval_ms", Kind::Count),
        ],
    ),
    (
        "session_management",
        &[
            ("idle_timeout_minutes", Kind::Count),
            ("absolute_lifetime_hours", Kind::Count),
            ("rotation_interval_hours", Kind::Count),
            ("max_per_user", Kind::Count),
            ("when_full", Kind::WhenFull),
            ("retention_days", Kind::Count),
            ("memory_entries", Kind::Count),
            ("memory_ttl_ms", Kind::Count),
            ("max_data_kb", Kind::Count),
        ],
    ),
    (
        "caching",
        &[
            ("default_ttl_seconds", Kind::Count),
            ("max_ttl_seconds", Kind::Count),
            ("max_value_kb", Kind::Count),
            ("compression_level", Kind::Level),
        ],
    ),
    (
        "caching.l1_cache",
        &[
            ("enabled", Kind::Bool),
            ("max_size", Kind::Count),
            ("max_size_mb", Kind::Count),
        ],
    ),
    ("caching.l2_cache", &[("max_size_mb", Kind::Count)]),
    (
        "rate_limiting",
        &[
            ("shared", Kind::Bool),
            ("violation_retention_days", Kind::Count),
            ("idle_bucket_retention_days", Kind::Count),
        ],
    ),
    (
        "audit_logging",
        &[
            ("retention_days", Kind::Count),
            ("max_details_kb", Kind::Count),
        ],
    ),
    (
        "metrics_collection",
        &[
            ("collection_interval_seconds", Kind::Count),
            ("retention_days", Kind::Count),
            ("downsample_after_days", Kind::Count),
        ],
    ),
    ("user_preferences", &[("allow_unknown_keys", Kind::Bool)]),
    (
        "cleanup",
        &[("enabled", Kind::Bool), ("interval_seconds", Kind::Count)],
    ),
    (
        "backup",
        &[
            ("retention_days", Kind::Count),
            ("recover_on_open", Kind::Bool),
        ],
    ),
    (
        "health",
        &[
            ("key_rotation_days", Kind::Count),
            ("disk_warning_free_percent", Kind::Rate),
            ("disk_critical_free_percent", Kind::Rate),
            ("wal_warning_mb", Kind::Count),
            ("wal_critical_mb", Kind::Count),
            ("violation_window_minutes", Kind::Count),
            ("violation_warning", Kind::Count),
            ("violation_critical", Kind::Count),
            ("cache_hit_ratio_warning", Kind::Rate),
            ("cache_min_lookups", Kind::Count),
        ],
    ),
];

/// The keys of a `[rate_limiting.limits.NAME]` table.
const LIMIT_KEYS: &[(&str, Kind)] = &[
    ("per_second", Kind::Rate),
    ("per_minute", Kind::Rate),
    ("per_15_minutes", Kind::Rate),
    ("per_hour", Kind::Rate),
    ("per_day", Kind::Rate),
    ("burst_allowance", Kind::Rate),
    ("strict", Kind::Bool),
    ("shared", Kind::Bool),
];

/// A TOML value, written out by [`Toml::render`].
#[derive(Debug, Clone)]
enum Toml {
    Int(i64),
    Float(f64),
    Str(String),
    Bool(bool),
    Datetime(&'static str),
    Array(Vec<Toml>),
    Table(Vec<(String, Toml)>),
}

/// A basic string, escaped; or a bare key when it can be one.
fn toml_key(key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if bare {
        key.to_owned()
    } else {
        toml_string(key)
    }
}

fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

impl Toml {
    fn render(&self) -> String {
        match self {
            Toml::Int(n) => n.to_string(),
            Toml::Float(f) if f.is_nan() => "nan".to_owned(),
            Toml::Float(f) if f.is_infinite() => (if *f > 0.0 { "inf" } else { "-inf" }).to_owned(),
            Toml::Float(f) => format!("{f:?}"),
            Toml::Str(s) => toml_string(s),
            Toml::Bool(b) => b.to_string(),
            Toml::Datetime(d) => (*d).to_owned(),
            Toml::Array(items) => format!(
                "[{}]",
                items
                    .iter()
                    .map(Toml::render)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Toml::Table(entries) => format!(
                "{{{}}}",
                entries
                    .iter()
                    .map(|(k, v)| format!("{} = {}", toml_key(k), v.render()))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
}

/// Any TOML value at all.
fn any_toml() -> BoxedStrategy<Toml> {
    let leaf = prop_oneof![
        any::<i64>().prop_map(Toml::Int),
        any::<f64>().prop_map(Toml::Float),
        odd_string().prop_map(Toml::Str),
        any::<bool>().prop_map(Toml::Bool),
        select(vec!["1979-05-27T07:32:00Z", "1979-05-27", "07:32:00"]).prop_map(Toml::Datetime),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(Toml::Array),
            vec((odd_string(), inner), 0..4).prop_map(|entries| {
                // Inline tables may not repeat a key.
                let mut seen = std::collections::HashSet::new();
                Toml::Table(
                    entries
                        .into_iter()
                        .filter(|(k, _)| seen.insert(k.clone()))
                        .collect(),
                )
            }),
        ]
    })
    .boxed()
}

/// A value the key plausibly takes, edges and nonsense of its type included.
fn plausible(kind: Kind) -> BoxedStrategy<Toml> {
    match kind {
        Kind::Path => prop_oneof![
            "[a-z0-9_-]{1,10}(\\.[a-z]{1,3})?".prop_map(Toml::Str),
            select(vec!["", ".", "backups", "x.key"]).prop_map(|s| Toml::Str(s.to_owned())),
        ]
        .boxed(),
        Kind::Bool => any::<bool>().prop_map(Toml::Bool).boxed(),
        Kind::Count => prop_oneof![
            6 => (0i64..=100).prop_map(Toml::Int),
            3 => (1i64..=100_000).prop_map(Toml::Int),
            2 => select(vec![i64::MAX, i64::from(u32::MAX), 1 << 30, 1 << 40, -1])
                .prop_map(Toml::Int),
        ]
        .boxed(),
        Kind::Rate => prop_oneof![
            6 => (0.0f64..200.0).prop_map(Toml::Float),
            2 => (0i64..=100).prop_map(Toml::Int),
            1 => select(vec![0.0, -1.0, f64::NAN, f64::INFINITY, 1e300, 1e-300]).prop_map(Toml::Float),
        ]
        .boxed(),
        Kind::Level => (-1i64..=25).prop_map(Toml::Int).boxed(),
        Kind::Sync => select(vec!["normal", "full", "NORMAL", "off"])
            .prop_map(|s| Toml::Str(s.to_owned()))
            .boxed(),
        Kind::WhenFull => select(vec!["evict_oldest", "refuse", "evict-oldest"])
            .prop_map(|s| Toml::Str(s.to_owned()))
            .boxed(),
    }
}

/// One `[header]` and its `key = value` lines.
type Section = (String, Vec<(String, Toml)>);

/// Some of `keys` with plausible values; when `wild`, now and then a value
/// of any type, a key the section does not have, or a key twice.
fn section_entries(
    keys: &'static [(&'static str, Kind)],
    wild: bool,
) -> BoxedStrategy<Vec<(String, Toml)>> {
    let entry = select(keys.to_vec()).prop_flat_map(move |(key, kind)| {
        let value = if wild {
            prop_oneof![9 => plausible(kind), 1 => any_toml()].boxed()
        } else {
            plausible(kind)
        };
        value.prop_map(move |v| (key.to_owned(), v))
    });
    let unknown = (odd_string(), any_toml());
    let entries = if wild {
        prop_oneof![9 => entry, 1 => unknown].boxed()
    } else {
        entry.boxed()
    };
    vec(entries, 1..5)
        .prop_map(move |entries| {
            if wild {
                return entries;
            }
            let mut seen = std::collections::HashSet::new();
            entries
                .into_iter()
                .filter(|(k, _)| seen.insert(k.clone()))
                .collect()
        })
        .boxed()
}

/// A config file built from the real sections and keys, rendered as TOML.
/// Not `wild`: every key known and every value of its type (though maybe
/// out of range). `wild`: anything goes now and then, stray lines included.
fn config_document(wild: bool) -> BoxedStrategy<String> {
    let fixed: Vec<BoxedStrategy<Option<Section>>> = SECTIONS
        .iter()
        .map(|&(header, keys)| {
            proptest::option::weighted(0.3, section_entries(keys, wild))
                .prop_map(move |entries| entries.map(|e| (header.to_owned(), e)))
                .boxed()
        })
        .collect();
    let namespaces = btree_map(namespace(), plausible(Kind::Count), 1..3).prop_map(|ttls| {
        let entries = ttls.into_iter().collect();
        ("caching.ttl_seconds".to_owned(), entries)
    });
    let limits = btree_map(
        prop_oneof!["[a-z_]{1,10}", odd_string()],
        section_entries(LIMIT_KEYS, wild),
        1..3,
    )
    .prop_map(|limits| {
        limits
            .into_iter()
            .map(|(name, entries)| (format!("rate_limiting.limits.{}", toml_key(&name)), entries))
            .collect::<Vec<Section>>()
    });
    let defaults = btree_map(pref_key(), any_toml(), 1..4).prop_map(|defaults| {
        (
            "user_preferences.defaults".to_owned(),
            defaults.into_iter().collect(),
        )
    });
    let stray = if wild {
        vec(
            prop_oneof![
                "[\\[\\]=\"'.#a-z_0-9 {},\u{e9}\u{1f600}-]{0,30}",
                any::<String>(),
                Just("[storage]".to_owned()),
            ],
            0..2,
        )
        .boxed()
    } else {
        Just(Vec::new()).boxed()
    };
    (
        fixed,
        proptest::option::weighted(0.3, namespaces),
        proptest::option::weighted(0.3, limits),
        proptest::option::weighted(0.2, defaults),
        stray,
    )
        .prop_map(|(fixed, namespaces, limits, defaults, stray)| {
            let mut sections: Vec<Section> = fixed.into_iter().flatten().collect();
            sections.extend(namespaces);
            sections.extend(limits.into_iter().flatten());
            sections.extend(defaults);
            let mut text = String::new();
            for (header, entries) in sections {
                text.push_str(&format!("[{header}]\n"));
                for (key, value) in entries {
                    text.push_str(&format!("{} = {}\n", toml_key(&key), value.render()));
                }
            }
            for line in stray {
                text.push_str(&line);
                text.push('\n');
            }
            text
        })
        .boxed()
}

/// Every name a config error may cite.
fn config_names() -> Vec<&'static str> {
    let mut names = vec![
        "caching.ttl_seconds",
        "rate_limiting.limits",
        "user_preferences.defaults",
    ];
    for (section, keys) in SECTIONS {
        names.push(section);
        names.extend(keys.iter().map(|(k, _)| *k));
    }
    names.extend(LIMIT_KEYS.iter().map(|(k, _)| *k));
    names
}

/// A config error names a key or a line.
fn names_a_key_or_line(detail: &str) -> bool {
    detail.contains("(line ") || config_names().iter().any(|n| detail.contains(n))
}

/// Arbitrary text, a rendered config, or a rendered config with a character
/// inserted somewhere.
fn config_text() -> BoxedStrategy<String> {
    prop_oneof![
        2 => any::<String>(),
        2 => "[\\[\\]=\"'.#a-z_0-9 \n{},\u{e9}\u{1f600}-]{0,80}",
        4 => config_document(true),
        2 => (config_document(true), any::<usize>(), any::<char>()).prop_map(|(mut text, at, c)| {
            let mut at = at % (text.len() + 1);
            while !text.is_char_boundary(at) {
                at -= 1;
            }
            text.insert(at, c);
            text
        }),
    ]
    .boxed()
}

#[test]
fn arbitrary_config_text_parses_or_names_a_key_or_line() {
    runner(512)
        .run(&config_text(), |text| {
            match Config::parse(&text) {
                Ok(config) => match config.options() {
                    Ok(_) => {}
                    Err(Error::Config { detail, .. }) => {
                        prop_assert!(names_a_key_or_line(&detail), "{detail}");
                    }
                    Err(other) => {
                        return Err(TestCaseError::fail(format!("options(): {other:?}")));
                    }
                },
                Err(Error::Config { detail, .. }) => {
                    prop_assert!(names_a_key_or_line(&detail), "{detail}");
                }
                Err(other) => return Err(TestCaseError::fail(format!("parse: {other:?}"))),
            }
            Ok(())
        })
        .unwrap();
}

/// A setting the vault refuses at open is a typed error naming it (the
/// library's name for it: `sessions.max_data_bytes` for
/// `session_management.max_data_kb`), or a key file it cannot use; never
/// SQLite's or serde's bare words, and one line.
fn typed_open_error(e: &Error) -> bool {
    let bare = matches!(e, Error::Database { .. } | Error::Json(_));
    let unnamed = matches!(e, Error::InvalidInput { what: "", .. });
    !bare && !unnamed && e.to_string().lines().count() == 1
}

#[test]
fn arbitrary_configs_open_a_vault_or_fail_with_a_typed_error() {
    let rt = runtime();
    runner(16)
        .run(&config_document(false), |text| {
            let dir = common::tempdir();
            let file = dir.path().join("statevault.toml");
            std::fs::write(&file, &text).unwrap();
            let config = match Config::load(&file) {
                Ok(config) => config,
                Err(Error::Config { detail, .. }) => {
                    prop_assert!(names_a_key_or_line(&detail), "{detail}");
                    return Ok(());
                }
                Err(other) => return Err(TestCaseError::fail(format!("load: {other:?}"))),
            };
            let options = config
                .apply(VaultOptions::new(dir.path().join("vault.db")).clock(FakeClock::default()));
            let opened = match options {
                Ok(options) => rt.block_on(Vault::open(options)),
                Err(e) => Err(e),
            };
            match opened {
                Ok(vault) => rt.block_on(vault.close()).unwrap(),
                Err(e) => prop_assert!(typed_open_error(&e), "{e:?}"),
            }
            Ok(())
        })
        .unwrap();
}

// ---------------------------------------------------------------------------
// CLI arguments

/// Subcommands run with whatever arguments follow.
const COMMANDS: &[&[&str]] = &[
    &[],
    &["init"],
    &["migrate"],
    &["info"],
    &["sql"],
    &["check"],
    &["session"],
    &["session", "list"],
    &["session", "revoke"],
    &["audit", "verify"],
    &["audit", "tail"],
    &["prefs", "get"],
    &["prefs", "set"],
    &["user", "export"],
    &["user", "erase"],
    &["sweep"],
    &["limits", "status"],
    &["limits", "reset"],
    &["cache", "stats"],
    &["cache", "invalidate"],
    &["cache", "clear"],
    &["metrics"],
    &["import-legacy"],
    &["health"],
    &["backup", "verify"],
    &["help"],
    &["bogus"],
];

/// Slow (`demo`, `bench`) or replacing the file (`rekey`, `restore`,
/// `backup`): these only ever get a flag clap refuses, so they never run.
const GUARDED: &[&str] = &["demo", "bench", "rekey", "restore", "backup"];

const FLAGS: &[&str] = &[
    "--json",
    "--status",
    "--user",
    "--tag",
    "--out",
    "--format",
    "--window",
    "-n",
    "--no-encryption",
    "--help",
    "-h",
    "--version",
    "-V",
    "--",
    "-x",
    "--json=1",
];

const VALUES: &[&str] = &[
    "alice",
    "u1",
    r#"{"audio_quality": "LOSSLESS"}"#,
    r#"{"audio_quality": null}"#,
    "[1]",
    "{",
    "null",
    "json",
    "prometheus",
    "-1",
    "0",
    "18446744073709551616",
    "3600",
    "search",
    "",
];

/// SQL for `statevault sql`, which must never write: reads, writes, and
/// the pragmas that would rekey, unkey or unlock the file.
const SQL: &[&str] = &[
    "SELECT 1",
    "SELECT * FROM cache_entries",
    "DELETE FROM preferences",
    "PRAGMA rekey = 'x'",
    "PRAGMA key = 'x'",
    "PRAGMA query_only = OFF",
    "PRAGMA journal_mode = DELETE",
    "VACUUM",
    "ATTACH 'other.db' AS other",
    "SELECT",
    "VACUUM INTO 'copy.db'",
    "SELECT 1; PRAGMA rekey = 'x'",
    "EXPLAIN PRAGMA rekey = 'x'",
    "select printf('%.*c', 70000, 'x')",
    "SELECT char(27) || '[2J' || char(10) || char(155)",
];

/// Any text that names nothing outside the test's directory: no `/`, not
/// `.` or `..`, and (as the OS requires) no NUL.
fn local_arg() -> BoxedStrategy<String> {
    odd_string()
        .prop_map(|s| s.replace(['/', '\0'], "_"))
        .prop_filter("stays in the directory", |s| s != "." && s != "..")
        .boxed()
}

fn token() -> BoxedStrategy<OsString> {
    use std::os::unix::ffi::OsStringExt;
    prop_oneof![
        3 => select(FLAGS).prop_map(OsString::from),
        3 => select(VALUES).prop_map(OsString::from),
        3 => local_arg().prop_map(OsString::from),
        1 => Just(OsString::from_vec(vec![0xff, b'a', 0xfe])),
    ]
    .boxed()
}

/// Flags every subcommand takes, with their value: the real vault, files
/// that are not what the flag wants, or nothing there.
fn global_flags() -> BoxedStrategy<Vec<OsString>> {
    let pair = |flag: &'static str, values: Vec<&'static str>| {
        prop_oneof![select(values).prop_map(str::to_owned), local_arg(),]
            .prop_map(move |v| vec![OsString::from(flag), OsString::from(v)])
    };
    prop_oneof![
        pair("--db", vec!["statevault.db", "statevault.db.key"]),
        pair("--config", vec!["statevault.db", "statevault.db.key"]),
        pair("--key-file", vec!["statevault.db.key", "statevault.db"]),
        Just(vec![OsString::from("--no-encryption")]),
    ]
    .boxed()
}

#[derive(Debug, Clone)]
struct CliCase {
    globals: Vec<OsString>,
    command: Vec<&'static str>,
    rest: Vec<OsString>,
}

impl CliCase {
    fn args(&self) -> Vec<OsString> {
        let mut args = self.globals.clone();
        args.extend(self.command.iter().map(OsString::from));
        args.extend(self.rest.iter().cloned());
        args
    }
}

fn cli_case() -> BoxedStrategy<CliCase> {
    let globals = vec(global_flags(), 0..2).prop_map(|g| g.concat());
    let rest = vec(token(), 0..4);
    let runs = (select(COMMANDS), rest.clone()).prop_map(|(c, rest)| (c.to_vec(), rest));
    let sql = (select(SQL), vec(token(), 0..2)).prop_map(|(query, mut rest)| {
        rest.insert(0, OsString::from(query));
        (vec!["sql"], rest)
    });
    let refused = (select(GUARDED), rest).prop_map(|(c, mut rest)| {
        rest.insert(0, OsString::from("--no-such-flag"));
        (vec![c], rest)
    });
    (globals, prop_oneof![6 => runs, 1 => sql, 1 => refused])
        .prop_map(|(globals, (command, rest))| CliCase {
            globals,
            command,
            rest,
        })
        .boxed()
}

/// Exit 0, 1 or 2 and never a signal or a panic. Success says nothing on
/// stderr; a failure says one `error:` line; clap's usage errors (exit 2)
/// start with `error:` or are the usage text. `health` exits 1 or 2 for a
/// warning or critical report, on stdout.
fn check_exit(case: &CliCase, out: &Output) -> Result<(), TestCaseError> {
    let err = common::stderr(out);
    prop_assert!(
        !err.contains("panicked") && !err.contains("RUST_BACKTRACE"),
        "{err}"
    );
    let health = case.command == ["health"] && err.is_empty();
    match out.status.code() {
        Some(0) => prop_assert!(err.is_empty(), "exit 0 with stderr: {err}"),
        Some(1) if !health => {
            prop_assert_eq!(err.lines().count(), 1, "one line: {}", err);
            prop_assert!(err.starts_with("error: "), "{}", err);
        }
        Some(2) if !health => {
            prop_assert!(
                err.starts_with("error: ") || err.contains("Usage:"),
                "{}",
                err
            );
        }
        Some(1 | 2) => {}
        other => {
            return Err(TestCaseError::fail(format!(
                "exit {other:?} (a signal?), stderr: {err}"
            )));
        }
    }
    Ok(())
}

#[test]
fn arbitrary_cli_arguments_exit_cleanly_and_leave_the_vault_sound() {
    let dir = common::tempdir();
    let run = |args: &[&str]| common::run(dir.path(), args);
    assert!(run(&["init"]).status.success());
    assert!(
        run(&["prefs", "set", "alice", r#"{"theme": "dark"}"#])
            .status
            .success()
    );
    runner(64)
        .run(&cli_case(), |case| {
            let out = common::cli(dir.path()).args(case.args()).output().unwrap();
            check_exit(&case, &out)?;
            let check = run(&["check"]);
            prop_assert!(
                check.status.success(),
                "the vault no longer checks clean: {}{}",
                common::stdout(&check),
                common::stderr(&check)
            );
            Ok(())
        })
        .unwrap();
}

// ---------------------------------------------------------------------------
// vault_meta: what the vault reads back from its own file

/// The `vault_meta` rows the vault parses when it opens, verifies, reports
/// health or shows info.
const META_KEYS: &[&str] = &[
    "hash_salt",
    "audit_anchor",
    "audit_head",
    "created_at",
    "created_by",
    "key_created_at",
    "preferences_schema",
];

/// A stored value: odd text, text that nearly parses (hex of the wrong
/// length or with a multi-byte character, an anchor without its space),
/// or bytes that are not UTF-8 at all (stored with `CAST(? AS TEXT)`).
fn meta_value() -> BoxedStrategy<Vec<u8>> {
    let near = prop_oneof![
        "[0-9a-f]{0,70}",
        "[0-9a-f]{30}\u{e9}[0-9a-f]{31}",
        "-?[0-9]{1,20} [0-9a-fA-F\u{e9}' ]{0,66}",
        "[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:.]{0,14}Z?",
        r#"\{"version": [0-9]{1,3}, "defaults": (\{\}|\[\]|null)\}"#,
    ];
    prop_oneof![
        2 => odd_string().prop_map(String::into_bytes),
        3 => near.prop_map(String::into_bytes),
        1 => vec(any::<u8>(), 0..80),
    ]
    .boxed()
}

/// Puts `rows` back as the whole of `vault_meta`.
fn restore_meta(db: &std::path::Path, rows: &[(String, String, String)]) {
    let conn = common::raw_connection(db);
    conn.execute("DELETE FROM vault_meta", []).unwrap();
    for (key, value, at) in rows {
        conn.execute(
            "INSERT INTO vault_meta (key, value, updated_at) VALUES (?1, ?2, ?3)",
            [key, value, at],
        )
        .unwrap();
    }
}

/// Garbage in each `vault_meta` row (written with the key, as a careless
/// operator could), then a command that reads it: a one-line typed error
/// naming the row, or success; never a panic. `Key::parse`, which read the
/// hash salt and the audit anchor, sliced by byte offsets.
#[test]
fn garbage_in_vault_meta_is_a_typed_error_naming_the_row() {
    let dir = common::tempdir();
    let run = |args: &[&str]| common::run(dir.path(), args);
    assert!(run(&["init"]).status.success());
    let db = dir.path().join("statevault.db");
    let original: Vec<(String, String, String)> = {
        let conn = common::raw_connection(&db);
        let mut stmt = conn
            .prepare("SELECT key, value, updated_at FROM vault_meta")
            .unwrap();
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    let commands: Vec<&[&str]> = vec![
        &["info"],
        &["audit", "verify"],
        &["health"],
        &["prefs", "get", "u"],
        &["limits", "status", "u"],
        &["user", "export", "u"],
    ];
    runner(24)
        .run(
            &(select(META_KEYS), meta_value(), select(commands)),
            |(key, value, args)| {
                common::raw_connection(&db)
                    .execute(
                        "INSERT INTO vault_meta (key, value, updated_at)
                         VALUES (?1, CAST(?2 AS TEXT), '')
                         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                        rusqlite::params![key, value],
                    )
                    .unwrap();
                let out = run(args);
                restore_meta(&db, &original);
                let err = common::stderr(&out);
                let shown = String::from_utf8_lossy(&value);
                prop_assert!(!err.contains("panicked"), "{key}={shown:?} {args:?}: {err}");
                // A verdict, not an error: health's status, a broken chain.
                let verdict = args == ["health"]
                    || (args == ["audit", "verify"]
                        && common::stdout(&out).starts_with("BROKEN")
                        && err == "error: the audit chain is broken\n");
                match out.status.code() {
                    Some(0) => prop_assert!(err.is_empty(), "{err}"),
                    Some(1 | 2) if verdict => {}
                    Some(1) => {
                        prop_assert_eq!(err.lines().count(), 1, "{}", err);
                        prop_assert!(err.starts_with("error: "), "{}", err);
                        prop_assert!(err.contains(key), "{key}={shown:?} {args:?}: {err}");
                    }
                    other => prop_assert!(false, "exit {other:?}: {err}"),
                }
                Ok(())
            },
        )
        .unwrap();
}

/// Key text in any form a person or a program might produce: a raw key
/// near its shape (wrong length, multi-byte characters, odd quotes and
/// spaces, a BOM) or anything at all. `Key::parse` never panics; a raw
/// key parses, anything else in `x'…'` is `InvalidKey`.
#[test]
fn arbitrary_key_text_parses_or_is_invalid_key() {
    let text = prop_oneof![
        2 => any::<String>(),
        2 => "[\u{feff} \n]{0,2}[xX]'[0-9a-fA-F\u{e9}\u{1f600} ]{0,70}'[ \r\n]{0,3}",
        1 => odd_string(),
    ];
    runner(512)
        .run(&text, |text| {
            let shape = text.strip_prefix('\u{feff}').unwrap_or(&text).trim();
            let raw = shape.len() > 2
                && (shape.starts_with("x'") || shape.starts_with("X'"))
                && shape.ends_with('\'');
            match statevault::Key::parse(&text) {
                Ok(key) => prop_assert_eq!(key.is_raw(), raw),
                Err(Error::InvalidKey { reason }) => {
                    let unmarked = text.strip_prefix('\u{feff}').unwrap_or(&text);
                    prop_assert!(
                        raw || unmarked.trim_end_matches(['\r', '\n']).is_empty(),
                        "{reason}"
                    )
                }
                Err(other) => prop_assert!(false, "{other:?}"),
            }
            Ok(())
        })
        .unwrap();
}

/// Any SQL text through `query_read_only`: rows or a typed error, and
/// the file unchanged and still opening with its key.
#[test]
fn arbitrary_sql_reads_or_is_refused_and_changes_nothing() {
    let rt = runtime();
    let dir = common::tempdir();
    let (vault, _clock) = rt.block_on(common::vault(dir.path()));
    let sql = prop_oneof![
        2 => any::<String>(),
        3 => (select(SQL), select(vec!["", ";", "; SELECT 1", " -- x", "/*", "'"]))
            .prop_map(|(q, tail)| format!("{q}{tail}")),
        1 => "(PRAGMA|pragma|EXPLAIN PRAGMA) [a-z_]{1,20}( ?= ?'?[a-z0-9]{0,5}'?)?",
    ];
    runner(256)
        .run(&sql, |sql| {
            match rt.block_on(vault.query_read_only(&sql)) {
                Ok(_) | Err(Error::InvalidInput { .. } | Error::Database { .. }) => {}
                Err(other) => prop_assert!(false, "{sql:?}: {other:?}"),
            }
            Ok(())
        })
        .unwrap();
    let n = rt
        .block_on(vault.query_read_only("SELECT count(*) FROM vault_meta"))
        .unwrap();
    assert_eq!(n.rows[0][0], json!(4));
    rt.block_on(vault.close()).unwrap();
    let (vault, _clock) = rt.block_on(common::vault(dir.path()));
    assert!(rt.block_on(vault.check()).unwrap().ok());
    rt.block_on(vault.close()).unwrap();
}

// ---------------------------------------------------------------------------
// Regressions: inputs these properties found, each a bug now fixed.

/// `{"x": {"deeper": … 129 levels …}}` was stored, and then every read of
/// the user's preferences failed with serde_json's "recursion limit
/// exceeded" (it reads 128 levels), a patch included: the user was stuck.
#[tokio::test]
async fn a_patch_nested_too_deep_is_refused_instead_of_stored_unreadable() {
    let dir = common::tempdir();
    let (options, _clock) = common::options(dir.path(), "vault.db");
    let config = PreferencesConfig::seeds().allow_unknown_keys(true);
    let vault = Vault::open(options.preferences(config)).await.unwrap();
    let prefs = vault.preferences();
    let nested = |levels: usize| (0..levels).fold(json!(1), |v, _| json!({ "deeper": v }));
    prefs.patch("alice", &json!({"a": 1})).await.unwrap();
    let before = prefs.stored("alice").await.unwrap();
    for levels in [MAX_PREFERENCE_DEPTH, 129, 1000] {
        match prefs.patch("alice", &json!({ "x": nested(levels) })).await {
            Err(Error::InvalidPreference { field, reason }) => {
                assert_eq!(field, "x");
                assert!(reason.contains("64 levels"), "{reason}");
            }
            other => panic!("{levels} levels: {other:?}"),
        }
        assert_eq!(prefs.stored("alice").await.unwrap(), before);
    }
    let deepest = json!({ "x": nested(MAX_PREFERENCE_DEPTH - 1) });
    prefs.patch("alice", &deepest).await.unwrap();
    assert_eq!(prefs.get("alice").await.unwrap()["x"], deepest["x"]);
    vault.close().await.unwrap();
}

/// A float read back from the file was one ulp off now and then
/// (6.494286970886943e217 came back as …944e217): serde_json parses
/// floats exactly only with its `float_roundtrip` feature.
#[tokio::test]
async fn floats_in_preferences_read_back_bit_for_bit() {
    let dir = common::tempdir();
    let (options, _clock) = common::options(dir.path(), "vault.db");
    let vault = Vault::open(options).await.unwrap();
    let prefs = vault.preferences();
    let floats = json!([
        6.494286970886943e217,
        6.494286970886944e217,
        0.1,
        1e-300,
        5e-324,
        f64::MAX,
        2.2250738585072014e-308
    ]);
    prefs.patch("alice", &json!({ "f": floats })).await.unwrap();
    let back = prefs.get("alice").await.unwrap();
    for (a, b) in back["f"]
        .as_array()
        .unwrap()
        .iter()
        .zip(floats.as_array().unwrap())
    {
        assert_eq!(a.as_f64().unwrap().to_bits(), b.as_f64().unwrap().to_bits());
    }
    vault.close().await.unwrap();
}

/// `stored` took any user id (empty, 300 bytes) while `get` and `patch`
/// refused it.
#[tokio::test]
async fn stored_preferences_refuse_an_invalid_user_id_like_the_rest() {
    let dir = common::tempdir();
    let (vault, _clock) = common::vault(dir.path()).await;
    for user in [String::new(), "u".repeat(257)] {
        let err = vault.preferences().stored(&user).await.unwrap_err();
        assert!(
            matches!(
                err,
                Error::InvalidInput {
                    what: "user_id",
                    ..
                }
            ),
            "{err:?}"
        );
    }
    vault.close().await.unwrap();
}

/// `incr` on a corrupt row said "is corrupt and was dropped" but left the
/// row: every later `incr` failed the same way (only a `get` dropped it).
#[tokio::test]
async fn incr_drops_a_corrupt_counter_as_its_error_says() {
    let dir = common::tempdir();
    let (options, _clock) = common::options(dir.path(), "vault.db");
    let vault = Vault::open(options.cache(CacheConfig::default().l1_entries(0)))
        .await
        .unwrap();
    let cache = vault.cache();
    let key = CacheKey::new("corrupt", "a").unwrap();
    cache.set(&key, &[b'7'; 100]).await.unwrap();
    vault.flush().await.unwrap();
    common::raw_connection(vault.path())
        .execute("UPDATE cache_entries SET value = x'00'", [])
        .unwrap();
    match cache.incr(&key, 1).await {
        Err(Error::CacheCorrupt { key: k, .. }) => assert_eq!(k, key.as_str()),
        other => panic!("expected CacheCorrupt, got {other:?}"),
    }
    assert_eq!(cache.stats().await.unwrap().l2.entries, 0, "dropped");
    assert_eq!(cache.incr(&key, 1).await.unwrap(), 1, "a fresh counter");
    vault.close().await.unwrap();
}

/// `memory_entries = 9223372036854775807` panicked at open ("Hash table
/// capacity overflow": the sessions' memory table is allocated in full),
/// and a billion took 2 GB before the first request.
#[tokio::test]
async fn a_huge_session_memory_is_refused_at_open_not_a_panic() {
    for n in [i64::MAX, 1_000_000_000] {
        let dir = common::tempdir();
        let text = format!("[session_management]\nmemory_entries = {n}\n");
        let options = Config::parse(&text)
            .unwrap()
            .apply(VaultOptions::new(dir.path().join("vault.db")))
            .unwrap();
        match Vault::open(options).await {
            Err(
                e @ Error::InvalidInput {
                    what: "sessions.memory_entries",
                    ..
                },
            ) => {
                assert!(e.to_string().contains("1000000"), "{e}");
            }
            other => panic!("expected InvalidInput, got {other:?}"),
        }
    }
}

/// `statevault --db $'\n' prefs set alice alice` printed its error over two
/// lines (the path's newline as is).
#[test]
fn cli_errors_stay_on_one_line_whatever_the_arguments_hold() {
    let dir = common::tempdir();
    let out = common::run(
        dir.path(),
        &["--db", "\n", "prefs", "set", "alice", "alice"],
    );
    let line = common::assert_one_error_line(&out);
    assert!(line.contains("\\n does not exist"), "{line}");
}

/// `statevault sql "PRAGMA rekey = 'x'"` re-encrypted the vault with the
/// passphrase `x` (SQLCipher runs the pragma as it is prepared, and
/// `query_only` does not stop it): every later open said "wrong key".
/// Read-only SQL now runs on connections opened read-only, where the rekey
/// cannot write (SQLCipher still answers "ok").
#[test]
fn read_only_sql_cannot_rekey_the_vault() {
    let dir = common::tempdir();
    let run = |args: &[&str]| common::run(dir.path(), args);
    assert!(run(&["init"]).status.success());
    assert!(
        run(&["prefs", "set", "alice", r#"{"theme": "dark"}"#])
            .status
            .success()
    );
    for sql in [
        "PRAGMA rekey = 'x'",
        "pragma main.REKEY=\"x\"",
        "PRAGMA rekey = ''",
    ] {
        let out = run(&["sql", sql]);
        if !out.status.success() {
            common::assert_one_error_line(&out);
        }
        let check = run(&["check"]);
        assert!(check.status.success(), "{sql}: {}", common::stderr(&check));
        let prefs = run(&["prefs", "get", "alice"]);
        assert!(
            common::stdout(&prefs).contains("dark"),
            "{sql}: {}",
            common::stderr(&prefs)
        );
    }
}

/// The same through the library: the pooled reader that ran the rekey
/// keeps reading, and the file opens again with its own key.
#[tokio::test]
async fn query_read_only_cannot_rekey_the_vault() {
    let dir = common::tempdir();
    let (vault, _clock) = common::vault(dir.path()).await;
    vault
        .preferences()
        .patch("alice", &json!({"a": 1}))
        .await
        .unwrap();
    let _ = vault.query_read_only("PRAGMA rekey = 'x'").await;
    for _ in 0..8 {
        let rows = vault
            .query_read_only("SELECT count(*) FROM preferences")
            .await
            .unwrap();
        assert_eq!(rows.rows[0][0], json!(1));
    }
    assert!(vault.check().await.unwrap().ok());
    vault.close().await.unwrap();
    let (vault, _clock) = common::vault(dir.path()).await;
    assert_eq!(
        vault.preferences().get("alice").await.unwrap(),
        json!({"a": 1})
    );
    vault.close().await.unwrap();
}

/// `key_file = ""` (the config's own directory) was refused as "…/ is
/// readable by others (mode 755): chmod 600 it", as was `--key-file .`.
#[test]
fn an_empty_path_or_a_directory_as_the_key_file_says_so() {
    for key in ["database", "key_file", "backups"] {
        match Config::parse(&format!("[storage_paths]\n{key} = \"\"\n")) {
            Err(e @ Error::Config { .. }) => {
                let message = e.to_string();
                assert!(
                    message.contains(&format!("storage_paths.{key}: must not be empty")),
                    "{message}"
                );
            }
            other => panic!("{key}: {other:?}"),
        }
    }
    let dir = common::tempdir();
    assert!(common::run(dir.path(), &["init"]).status.success());
    let out = common::run(dir.path(), &["--key-file", ".", "info"]);
    let line = common::assert_one_error_line(&out);
    assert!(line.contains(". is not a file"), "{line}");
}
