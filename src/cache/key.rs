//! Cache keys: plain, or derived deterministically from
//! (domain, operation, params, user) with params hashed in canonical form.

use std::fmt;
use std::hash::{BuildHasher, BuildHasherDefault, Hash, Hasher};
use std::sync::{Arc, LazyLock};

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::{Error, Result};

/// The longest key text accepted, in bytes.
pub const MAX_KEY_BYTES: usize = 1024;

/// A cache key: its text (the row's primary key), the namespace that picks
/// its default TTL and that [`Cache::clear_namespace`](crate::Cache::clear_namespace)
/// clears, and optionally the user it belongs to (for
/// [`Cache::clear_user`](crate::Cache::clear_user)).
///
/// ```
/// use statevault::CacheKey;
/// use serde_json::json;
///
/// let a = CacheKey::derive("search", "tracks", &json!({"q": "blue", "limit": 10}), Some("u1"))?;
/// let b = CacheKey::derive("search", "tracks", &json!({"limit": 10, "q": "blue"}), Some("u1"))?;
/// assert_eq!(a, b); // key order in params does not matter
/// assert!(a.as_str().starts_with("search:tracks:"));
/// assert_eq!(a.namespace(), "search");
/// assert_eq!(a.user(), Some("u1"));
/// # Ok::<(), statevault::Error>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct CacheKey {
    text: Hashed,
    namespace_len: usize,
    user: Option<String>,
}

impl CacheKey {
    /// The key `namespace:name`, owned by nobody.
    pub fn new(namespace: &str, name: &str) -> Result<CacheKey> {
        check_namespace(namespace)?;
        CacheKey::checked(format!("{namespace}:{name}"), namespace.len(), None)
    }

    /// `{domain}:{operation}:{hash of params}:{user or "-"}`, where the hash
    /// is SHA-256 (first 16 hex digits) of the params serialized as JSON with
    /// object keys sorted at every level. The namespace is `domain`.
    pub fn derive(
        domain: &str,
        operation: &str,
        params: &impl Serialize,
        user: Option<&str>,
    ) -> Result<CacheKey> {
        check_namespace(domain)?;
        user.map(crate::ids::check_user).transpose()?;
        let value = serde_json::to_value(params)?;
        let mut canonical = String::new();
        write_canonical(&value, &mut canonical);
        let digest = Sha256::digest(canonical.as_bytes());
        let hash: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        let text = format!("{domain}:{operation}:{hash}:{}", user.unwrap_or("-"));
        CacheKey::checked(text, domain.len(), user.map(str::to_owned))
    }

    /// Marks the key as belonging to `user`; [`Error::InvalidInput`] for
    /// an id that is not 1 to 256 bytes without control characters.
    pub fn for_user(mut self, user: &str) -> Result<Self> {
        crate::ids::check_user(user)?;
        self.user = Some(user.to_owned());
        Ok(self)
    }

    /// A key from its text: the namespace is what comes before the first
    /// `:` (or `default` when there is none).
    pub fn parse(text: &str) -> Result<CacheKey> {
        match text.split_once(':') {
            Some((ns, _)) if !ns.is_empty() => {
                check_namespace(ns)?;
                CacheKey::checked(text.to_owned(), ns.len(), None)
            }
            _ => CacheKey::checked(format!("default:{text}"), "default".len(), None),
        }
    }

    fn checked(text: String, namespace_len: usize, user: Option<String>) -> Result<CacheKey> {
        if text.len() > MAX_KEY_BYTES {
            return Err(Error::invalid(
                "cache key",
                format!("{} bytes, at most {MAX_KEY_BYTES}", text.len()),
            ));
        }
        Ok(CacheKey {
            text: Hashed::new(text.into()),
            namespace_len,
            user,
        })
    }

    /// The key's text, as stored in `cache_entries.key`.
    pub fn as_str(&self) -> &str {
        self.text.as_str()
    }

    /// The text with its hash, as L1 looks it up.
    pub(crate) fn hashed(&self) -> &Hashed {
        &self.text
    }

    /// The namespace.
    pub fn namespace(&self) -> &str {
        &self.as_str()[..self.namespace_len]
    }

    /// The user the entry belongs to, if any.
    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }
}

impl fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("CacheKey").field(&self.as_str()).finish()
    }
}

impl fmt::Display for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The seed of [`Hashed`]'s hash: random, once per process.
static SEED: LazyLock<foldhash::fast::RandomState> = LazyLock::new(Default::default);

/// A key's text with its hash, computed once when the key is made. L1 finds
/// its shard and its entry by this hash ([`ByHash`]), so a get does not hash
/// the text again; hashing it cost about an eighth of an L1 hit.
#[derive(Clone)]
pub(crate) struct Hashed {
    hash: u64,
    text: Arc<str>,
}

impl Hashed {
    pub(crate) fn new(text: Arc<str>) -> Self {
        Hashed {
            hash: SEED.hash_one(&*text),
            text,
        }
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.text
    }

    pub(crate) fn text(&self) -> &Arc<str> {
        &self.text
    }

    pub(crate) fn hash(&self) -> u64 {
        self.hash
    }
}

impl PartialEq for Hashed {
    fn eq(&self, other: &Self) -> bool {
        self.hash == other.hash && self.text == other.text
    }
}

impl Eq for Hashed {}

impl Hash for Hashed {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

/// Maps keyed by [`Hashed`]: the key's stored hash is the map's hash.
pub(crate) type ByHash = BuildHasherDefault<StoredHash>;

/// The hasher of [`ByHash`]: it keeps the `u64` a [`Hashed`] writes. Other
/// input (never written by `Hashed`) is folded in, so it is still a hash.
#[derive(Default)]
pub(crate) struct StoredHash(u64);

impl Hasher for StoredHash {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

pub(crate) fn check_namespace(ns: &str) -> Result<()> {
    if ns.is_empty() || ns.len() > 64 || ns.contains(':') || ns.chars().any(char::is_control) {
        return Err(Error::invalid(
            "cache namespace",
            format!("{ns:?}: 1–64 characters, no ':' or control characters"),
        ));
    }
    Ok(())
}

/// JSON with object keys sorted at every level, so that equal params give
/// equal text whatever order their keys were built in.
fn write_canonical(value: &serde_json::Value, out: &mut String) {
    use serde_json::Value;
    match value {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                write_canonical(v, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(v, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn canonical_form_sorts_nested_keys() {
        let mut a = String::new();
        write_canonical(
            &json!({"b": {"y": 1, "x": [2, {"d": 1, "c": 2}]}, "a": null}),
            &mut a,
        );
        assert_eq!(a, r#"{"a":null,"b":{"x":[2,{"c":2,"d":1}],"y":1}}"#);
    }

    #[test]
    fn different_params_or_users_differ() {
        let k = |p, u| CacheKey::derive("search", "tracks", &p, u).unwrap();
        assert_ne!(k(json!({"q": "a"}), None), k(json!({"q": "b"}), None));
        assert_ne!(
            k(json!({"q": "a"}), Some("u1")),
            k(json!({"q": "a"}), Some("u2"))
        );
    }

    #[test]
    fn bad_keys_are_errors() {
        assert!(CacheKey::new("", "x").is_err());
        assert!(CacheKey::new("a:b", "x").is_err());
        assert!(CacheKey::new("ns", &"x".repeat(2000)).is_err());
        assert_eq!(CacheKey::parse("plain").unwrap().namespace(), "default");
        assert_eq!(CacheKey::parse("tracks:42").unwrap().namespace(), "tracks");
    }
}
