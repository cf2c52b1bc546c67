//! One request of a demo user: logging in, the session, the rate limits,
//! the cache and preferences work, and the audit event.

use serde_json::json;
use statevault::{
    AuditEvent, CacheKey, ClientInfo, EventKind, GdprCategory, NewSession, Result, Session,
    SetOptions, Validation, Vault,
};

use super::report::Counts;
use super::traffic::{Rng, User};

/// One API request: session, rate limits, the work, the audit event.
/// Returns the endpoint it ended at and the HTTP status it would answer.
pub async fn request(
    vault: &Vault,
    user: &mut User,
    rng: &mut Rng,
    counts: &mut Counts,
) -> Result<(&'static str, u16)> {
    if user.token.is_none()
        && let Some(status) = login(vault, user, rng, counts).await?
    {
        return Ok(("demo.login", status));
    }
    let endpoint = match rng.unit() {
        r if r < 0.60 => "demo.search",
        r if r < 0.85 => "demo.playlist.read",
        r if r < 0.95 => "demo.playlist.edit",
        _ => "demo.preferences",
    };
    let Some(session) = authenticate(vault, user, counts).await? else {
        return Ok(("demo.session", 401));
    };
    if !admit(vault, user, endpoint).await? {
        counts.rate_limited += 1;
        return Ok(("demo.rate_limited", 429));
    }
    counts.allowed += 1;
    cached_work(vault, user, endpoint, rng, counts).await?;
    let status = if endpoint == "demo.preferences" {
        preferences(vault, user, rng, counts).await?
    } else {
        200
    };
    vault.audit().append(
        AuditEvent::new(EventKind::ApiCall, endpoint)
            .user(&user.id)
            .session(&session.id)
            .details(json!({ "status": status }))
            .category(GdprCategory::Necessary),
    )?;
    Ok((endpoint, status))
}

/// Validates the user's session, rotating its token when due; `None` (and
/// the token dropped, so the next request logs in) when it is not live.
async fn authenticate(
    vault: &Vault,
    user: &mut User,
    counts: &mut Counts,
) -> Result<Option<Session>> {
    let token = user
        .token
        .as_ref()
        .map(|t| t.expose().to_owned())
        .unwrap_or_default();
    let session = match vault
        .sessions()
        .validate(&token, Some(&user.device))
        .await?
    {
        Validation::Valid(session) => session,
        other => {
            if matches!(other, Validation::Expired { .. }) {
                counts.sessions_expired += 1;
            }
            user.token = None;
            return Ok(None);
        }
    };
    if session.rotation_due {
        match vault.sessions().rotate(&token, Some(&user.device)).await {
            Ok(rotated) => {
                user.token = Some(rotated.token);
                counts.sessions_rotated += 1;
            }
            // Revoked or rotated since the validation (another process on
            // the file erased the user, or evicted the session): as a
            // service would, refuse this request; the next one logs in.
            Err(statevault::Error::SessionNotValid { .. }) => {
                user.token = None;
                return Ok(None);
            }
            Err(e) => return Err(e),
        }
    }
    Ok(Some(session))
}

/// Whether the rate limits let the request through: `api_calls` for every
/// request, then the endpoint's own limit, if it has one.
async fn admit(vault: &Vault, user: &User, endpoint: &str) -> Result<bool> {
    let client = ClientInfo::none().ip(&user.ip);
    let mut allowed = vault
        .limits()
        .check(&user.id, "api_calls", 1, &client)
        .await?
        .allowed;
    let specific = match endpoint {
        "demo.search" => Some("search_queries"),
        "demo.playlist.edit" => Some("playlist_ops"),
        _ => None,
    };
    if let Some(limit) = specific.filter(|_| allowed) {
        allowed = vault
            .limits()
            .check(&user.id, limit, 1, &client)
            .await?
            .allowed;
    }
    Ok(allowed)
}

/// The cache's part of the request: searches and playlist reads through
/// the cache, playlist edits invalidating the playlist's tag.
async fn cached_work(
    vault: &Vault,
    user: &User,
    endpoint: &str,
    rng: &mut Rng,
    counts: &mut Counts,
) -> Result<()> {
    match endpoint {
        // Searches are shared by everyone, and a few queries are hot.
        "demo.search" => {
            let query = format!("query-{}", rng.skewed(120));
            let key = CacheKey::derive("demo.search", "tracks", &json!({ "q": query }), None)?;
            let options = SetOptions::new().tag("search");
            let _: serde_json::Value = vault
                .cache()
                .get_or_load(&key, &options, || async {
                    Ok::<_, statevault::Error>(upstream(&query))
                })
                .await?;
        }
        // A playlist is the user's own; editing one invalidates its tag.
        "demo.playlist.read" | "demo.playlist.edit" => {
            let playlist = format!("pl-{}", rng.next() % 5);
            let tag = format!("playlist:{}:{playlist}", user.id);
            if endpoint == "demo.playlist.edit" {
                counts.cache_invalidations += vault.cache().invalidate_tag(&tag).await?;
            } else {
                let key = CacheKey::derive(
                    "demo.playlists",
                    "get",
                    &json!({ "id": playlist }),
                    Some(&user.id),
                )?;
                let options = SetOptions::new().tag(tag);
                let _: serde_json::Value = vault
                    .cache()
                    .get_or_load(&key, &options, || async {
                        Ok::<_, statevault::Error>(upstream(&playlist))
                    })
                    .await?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// Reads or patches the user's preferences; 422 when the stored ones are
/// refused by the demo's defaults, else 200.
async fn preferences(
    vault: &Vault,
    user: &User,
    rng: &mut Rng,
    counts: &mut Counts,
) -> Result<u16> {
    // Someone else may have stored preferences for a demo user that
    // these defaults refuse: a service answers 422, and so does the demo.
    let answer = if rng.unit() < 0.5 {
        let quality = ["LOW", "HIGH", "LOSSLESS"][rng.next() as usize % 3];
        counts.preference_patches += 1;
        vault
            .preferences()
            .patch(&user.id, &json!({"audio_quality": quality}))
            .await
    } else {
        counts.preference_reads += 1;
        vault.preferences().get(&user.id).await
    };
    match answer {
        Ok(_) => Ok(200),
        Err(statevault::Error::InvalidPreference { .. }) => {
            counts.preference_refusals += 1;
            Ok(422)
        }
        Err(e) => Err(e),
    }
}

/// Logs the user in: the strict `auth_attempts` limit first, then the
/// password (wrong now and then, mostly for every tenth user), then a session, regenerated
/// after login as a web framework would. Returns the status of a failed
/// login (429 locked out, 401 wrong password), `None` once logged in.
async fn login(
    vault: &Vault,
    user: &mut User,
    rng: &mut Rng,
    counts: &mut Counts,
) -> Result<Option<u16>> {
    let client = ClientInfo::none().ip(&user.ip);
    let attempt = vault
        .limits()
        .check(&user.id, "auth_attempts", 1, &client)
        .await?;
    if !attempt.allowed {
        counts.locked_out += 1;
        vault.audit().append(
            AuditEvent::new(EventKind::Auth, "login.locked_out")
                .user(&user.id)
                .client_ip(&user.ip),
        )?;
        return Ok(Some(429));
    }
    // Every tenth user cannot type their password (not the hottest one,
    // user 0, or the whole run would be one lockout).
    let wrong = if user.id.ends_with('7') { 0.7 } else { 0.05 };
    if rng.unit() < wrong {
        counts.failed_logins += 1;
        vault.metrics().record_auth(false);
        vault.audit().append(
            AuditEvent::new(EventKind::Auth, "login.failed")
                .user(&user.id)
                .client_ip(&user.ip),
        )?;
        return Ok(Some(401));
    }
    let issued = vault
        .sessions()
        .create(
            NewSession::new(&user.id)
                .device_fingerprint(&user.device)
                .client_ip(&user.ip)
                .client_meta("route", "/mcp")
                .data(&json!({"upstream_access_token": "demo", "country": "NO"}))?,
        )
        .await?;
    let issued = match vault
        .sessions()
        .regenerate(issued.token.expose(), Some(&user.device))
        .await
    {
        Ok(issued) => issued,
        // Another process on the file evicted it (the user's cap) or erased
        // the user meanwhile: this login fails; the next request tries again.
        Err(statevault::Error::SessionNotValid { .. }) => return Ok(Some(401)),
        Err(e) => return Err(e),
    };
    counts.logins += 1;
    counts.sessions_created += 1;
    vault.metrics().record_auth(true);
    vault.audit().append(
        AuditEvent::new(EventKind::Auth, "login")
            .user(&user.id)
            .session(&issued.id)
            .client_ip(&user.ip),
    )?;
    user.token = Some(issued.token);
    Ok(None)
}

pub fn method(endpoint: &str) -> &'static str {
    if endpoint.ends_with(".edit") {
        "POST"
    } else {
        "GET"
    }
}

/// What the upstream API would answer: a page of tracks (~1 KiB of JSON).
fn upstream(query: &str) -> serde_json::Value {
    let tracks: Vec<_> = (0..8)
        .map(|i| json!({"id": format!("{query}-{i}"), "title": format!("Track {i} for {query}"), "duration": 180 + i}))
        .collect();
    json!({"query": query, "tracks": tracks})
}
