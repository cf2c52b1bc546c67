//! The seeds' documents, parsed and checked: a session, rate-limit state,
//! a cache entry, preferences. Nothing here writes.

use std::io::Read;
use std::time::Duration;

use chrono::{DateTime, Local, NaiveDateTime, TimeZone};
use serde_json::{Map, Value};
use zeroize::Zeroizing;

use super::files::Problem;
use crate::cache::CacheKey;
use crate::limits::{ImportedBucket, ImportedViolation};
use crate::sessions::ImportedSession;
use crate::{Result, Timestamp};

/// The TTL the seed's cache gave entries whose `.meta` has none.
const SEED_DEFAULT_TTL_SECS: f64 = 3600.0;
/// The longest cache TTL a `.meta` may give.
const MAX_TTL_SECS: f64 = 100.0 * 365.0 * 86_400.0;
/// The largest cost a legacy violation may record.
const MAX_COST: f64 = 1e9;

/// What a file becomes, parsed and checked before anything is written.
pub(super) enum Plan {
    Session(ImportedSession),
    Limits {
        subject: String,
        buckets: Vec<ImportedBucket>,
        violations: Vec<ImportedViolation>,
    },
    Cache {
        key: CacheKey,
        value: Vec<u8>,
        created_at: Timestamp,
        expires_at: Timestamp,
        tags: Vec<String>,
    },
    Preferences {
        user_id: String,
        document: Value,
    },
}

/// A legacy session document: `user_id` and `access_token` required;
/// `expires_at` (or `token_expires_at`) and `device_fingerprint` optional;
/// everything else kept as the session's data.
pub(super) fn session(bytes: &[u8], now: Timestamp) -> Result<ImportedSession, String> {
    let mut doc = object(bytes)?;
    let user_id = user_field(&doc, "user_id")?.ok_or("missing field user_id")?;
    let token = match doc.remove("access_token") {
        Some(Value::String(t)) if !t.is_empty() => Zeroizing::new(t),
        Some(_) => return Err("access_token: expected a non-empty string".into()),
        None => return Err("missing field access_token".into()),
    };
    let device_fingerprint = match doc.remove("device_fingerprint") {
        None | Some(Value::Null) => None,
        Some(Value::String(fp)) if !fp.is_empty() => Some(Zeroizing::new(fp)),
        Some(_) => return Err("device_fingerprint: expected a non-empty string".into()),
    };
    let expires_at = ["expires_at", "token_expires_at"]
        .into_iter()
        .find_map(|name| {
            doc.get(name)
                .filter(|v| !v.is_null())
                .map(|v| time(v, name))
        })
        .transpose()?;
    if let Some(at) = expires_at
        && at <= now
    {
        return Err(format!("expired at {at}"));
    }
    Ok(ImportedSession {
        user_id,
        token,
        device_fingerprint,
        data: Zeroizing::new(Value::Object(doc).to_string()),
        expires_at,
    })
}

/// A legacy rate-limit file: `buckets` (or `limits`) by limit name, and
/// `violations`.
pub(super) fn rate_limits(
    bytes: &[u8],
    now: Timestamp,
) -> Result<(Vec<ImportedBucket>, Vec<ImportedViolation>), String> {
    let doc = object(bytes)?;
    let buckets = doc.get("buckets").or_else(|| doc.get("limits"));
    let violations = doc.get("violations");
    if buckets.is_none() && violations.is_none() {
        return Err("missing field buckets".into());
    }
    let mut out = Vec::new();
    match buckets {
        None | Some(Value::Null) => {}
        Some(Value::Object(by_limit)) => {
            for (limit, b) in by_limit {
                let at = format!("buckets.{limit}");
                let b = b
                    .as_object()
                    .ok_or_else(|| format!("{at}: expected an object"))?;
                for name in ["capacity", "refill_rate"] {
                    if let Some(v) = b.get(name) {
                        number(v, &format!("{at}.{name}"), 0.0, f64::MAX)?;
                    }
                }
                let tokens = required(b, "current_tokens", &at)?;
                out.push(ImportedBucket {
                    limit: limit.clone(),
                    tokens: number(tokens, &format!("{at}.current_tokens"), 0.0, f64::MAX)?,
                    last_refill: past(
                        required(b, "last_refill", &at)?,
                        &format!("{at}.last_refill"),
                        now,
                    )?,
                });
            }
        }
        Some(other) => {
            return Err(format!(
                "buckets: expected an object, found {}",
                kind(other)
            ));
        }
    }
    let violations = match violations {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, v)| violation(v, &format!("violations[{i}]"), now))
            .collect::<Result<_, _>>()?,
        Some(other) => {
            return Err(format!(
                "violations: expected an array, found {}",
                kind(other)
            ));
        }
    };
    Ok((out, violations))
}

pub(super) fn violation(v: &Value, at: &str, now: Timestamp) -> Result<ImportedViolation, String> {
    let v = v
        .as_object()
        .ok_or_else(|| format!("{at}: expected an object"))?;
    let limit = required(v, "limit_type", at)?
        .as_str()
        .ok_or_else(|| format!("{at}.limit_type: expected a string"))?;
    let empty = Map::new();
    let info = match v.get("client_info") {
        None | Some(Value::Null) => &empty,
        Some(Value::Object(info)) => info,
        Some(_) => return Err(format!("{at}.client_info: expected an object")),
    };
    let text = |name: &str| match info.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(format!("{at}.client_info.{name}: expected a string")),
    };
    let ip = text("ip")?.or(text("ip_address")?);
    let user_agent = text("user_agent")?;
    Ok(ImportedViolation {
        limit: limit.to_owned(),
        occurred_at: past(
            required(v, "timestamp", at)?,
            &format!("{at}.timestamp"),
            now,
        )?,
        cost: number(
            required(v, "attempted_calls", at)?,
            &format!("{at}.attempted_calls"),
            f64::MIN_POSITIVE,
            MAX_COST,
        )?,
        ip,
        user_agent,
    })
}

/// A legacy L2 cache entry: the gzip-compressed JSON value and its
/// metadata (`key`, `created_at`, `ttl_seconds` — 3600 when absent, as the
/// seed read it — or `expires_at`, `tags`, `size_bytes`).
pub(super) fn cache_entry(
    stem: &str,
    value: &[u8],
    meta: &[u8],
    now: Timestamp,
    max: usize,
) -> Result<Plan, Problem> {
    let meta = object(meta).map_err(|e| format!(".meta: {e}"))?;
    match meta.get("key") {
        None | Some(Value::Null) => {}
        Some(Value::String(k)) if k == stem => {}
        Some(Value::String(k)) => {
            return Err(format!(".meta names key {k:?}, the file name says {stem:?}").into());
        }
        Some(_) => return Err(".meta key: expected a string".into()),
    }
    let created_at = past(required(&meta, "created_at", ".meta")?, "created_at", now)?;
    let expires_at = match meta.get("expires_at").filter(|v| !v.is_null()) {
        Some(v) => time(v, "expires_at")?,
        None => {
            let ttl = match meta.get("ttl_seconds") {
                None | Some(Value::Null) => SEED_DEFAULT_TTL_SECS,
                Some(v) => number(v, "ttl_seconds", 1.0, MAX_TTL_SECS)?,
            };
            created_at.saturating_add(Duration::from_secs_f64(ttl))
        }
    };
    if expires_at <= now {
        return Err(format!("expired at {expires_at}").into());
    }
    match meta.get("size_bytes") {
        None | Some(Value::Null) => {}
        Some(v) if v.as_u64() == Some(value.len() as u64) => {}
        Some(v) => {
            return Err(format!(
                "size_bytes says {v}, the .cache file has {} bytes",
                value.len()
            )
            .into());
        }
    }
    let mut tags = Vec::new();
    match meta.get("tags") {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) => {
            for t in items {
                let t = t.as_str().ok_or("tags: expected strings")?;
                if !tags.iter().any(|have| have == t) {
                    tags.push(t.to_owned());
                }
            }
        }
        Some(_) => return Err("tags: expected an array of strings".into()),
    }
    let value = gunzip(value, max)?;
    serde_json::from_slice::<serde::de::IgnoredAny>(&value)
        .map_err(|e| format!("the value is not JSON: {e}"))?;
    let mut key = CacheKey::parse(stem)?;
    // The seed's keys end in the user: {domain}:{operation}:{params}:{user}.
    let parts: Vec<&str> = stem.split(':').collect();
    if let [_, _, _, .., user] = parts.as_slice()
        && !user.is_empty()
        && *user != "-"
    {
        key = key.for_user(user)?;
    }
    Ok(Plan::Cache {
        key,
        value,
        created_at,
        expires_at,
        tags,
    })
}

/// Decompresses a gzip stream of at most `max` bytes.
pub(super) fn gunzip(bytes: &[u8], max: usize) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes)
        .take(max as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| format!("not gzip: {e}"))?;
    if out.len() > max {
        return Err(format!("the value decompresses to more than {max} bytes"));
    }
    Ok(out)
}

/// A legacy preferences file: `{"user_id", "preferences": {...}, …}`.
pub(super) fn preferences(bytes: &[u8], stem: &str) -> Result<Value, String> {
    let doc = object(bytes)?;
    if let Some(user) = user_field(&doc, "user_id")?
        && user != stem
    {
        return Err(format!(
            "user_id {user:?} does not match the file name ({stem:?})"
        ));
    }
    match doc.get("preferences") {
        Some(prefs @ Value::Object(_)) => Ok(prefs.clone()),
        Some(other) => Err(format!(
            "preferences: expected an object, found {}",
            kind(other)
        )),
        None => Err("missing field preferences".into()),
    }
}

/// The bytes as a JSON object.
pub(super) fn object(bytes: &[u8]) -> Result<Map<String, Value>, String> {
    match serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))? {
        Value::Object(map) => Ok(map),
        other => Err(format!("not a JSON object but {}", kind(&other))),
    }
}

pub(super) fn required<'a>(
    obj: &'a Map<String, Value>,
    name: &str,
    at: &str,
) -> Result<&'a Value, String> {
    obj.get(name)
        .filter(|v| !v.is_null())
        .ok_or_else(|| format!("{at}: missing field {name}"))
}

/// A user id: a non-empty string or an integer (the seeds' services used
/// both); `None` when absent.
pub(super) fn user_field(obj: &Map<String, Value>, name: &str) -> Result<Option<String>, String> {
    match obj.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if !s.is_empty() => Ok(Some(s.clone())),
        Some(Value::Number(n)) if n.is_i64() || n.is_u64() => Ok(Some(n.to_string())),
        Some(other) => Err(format!(
            "{name}: expected a string or an integer, found {}",
            kind(other)
        )),
    }
}

/// A number in `min..=max`.
pub(super) fn number(v: &Value, at: &str, min: f64, max: f64) -> Result<f64, String> {
    v.as_f64()
        .filter(|n| (min..=max).contains(n))
        .ok_or_else(|| format!("{at}: {v} is not a number in {min}..={max}"))
}

/// A time that is not after `now`.
pub(super) fn past(v: &Value, at: &str, now: Timestamp) -> Result<Timestamp, String> {
    let t = time(v, at)?;
    if t > now {
        return Err(format!("{at}: {t} is in the future"));
    }
    Ok(t)
}

/// An ISO 8601 time: with an offset as given, without one in this
/// machine's local time zone (what Python's `datetime.now().isoformat()`
/// wrote).
pub(super) fn time(v: &Value, at: &str) -> Result<Timestamp, String> {
    let text = v
        .as_str()
        .ok_or_else(|| format!("{at}: expected an ISO 8601 time, found {}", kind(v)))?;
    parse_time(text).ok_or_else(|| format!("{at}: {text:?} is not an ISO 8601 time"))
}

pub(super) fn parse_time(text: &str) -> Option<Timestamp> {
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Some(Timestamp::from_millis(t.timestamp_millis()));
    }
    let naive = ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"]
        .into_iter()
        .find_map(|f| NaiveDateTime::parse_from_str(text, f).ok())?;
    Local
        .from_local_datetime(&naive)
        .earliest()
        .map(|t| Timestamp::from_millis(t.timestamp_millis()))
}

pub(super) fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_with_and_without_offsets() {
        let utc = parse_time("2026-01-02T03:04:05.678+00:00").unwrap();
        assert_eq!(utc, Timestamp::parse("2026-01-02T03:04:05.678Z").unwrap());
        assert_eq!(parse_time("2026-01-02T05:04:05.678+02:00").unwrap(), utc);
        assert!(parse_time("2026-01-02T03:04:05.123456").is_some());
        assert!(parse_time("2026-01-02 03:04:05").is_some());
        assert!(parse_time("yesterday").is_none());
        assert!(parse_time("2026-13-02T03:04:05").is_none());
    }
}
