//! The HTTP side of the example service: an axum [`Router`] over one
//! [`Vault`], which is all the state the service keeps.
//!
//! The API (`GET /search`, `POST /logout`) sits behind statevault's tower
//! layers: [`SessionLayer`] (the bearer token must name a live session: 401
//! otherwise), then [`RateLimitLayer`]s for the user's `api_calls` and, on
//! `/search`, `search_queries` (429 with `Retry-After` and the `RateLimit`
//! fields). Handlers take the [`Session`] as an extractor. [`record_call`],
//! around every route, counts and times each call in the metrics facet.
//!
//! `POST /login` checks the strict `auth_attempts` limit itself (its
//! subject is in the body) before it creates a session. `GET /health` is
//! the vault's health report (200 when healthy or warning, 503 when
//! critical, so a load balancer stops sending traffic only when the vault
//! is broken) and `GET /metrics` the metrics facet's Prometheus text. Both
//! are unauthenticated, as scrapers and probes expect: keep them on a
//! private address.
//!
//! `main.rs` adds the command line, the signals and `Vault::close`;
//! `tests/service.rs` serves this same module on a loopback port.

use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, FromRequestParts, MatchedPath, Query, Request, State};
use axum::http::header::{CONTENT_TYPE, USER_AGENT, WWW_AUTHENTICATE};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use statevault::{
    AuditEvent, CacheKey, ClientInfo, EventKind, GdprCategory, HealthStatus, NewSession,
    RateLimitLayer, Session, SessionLayer, SetOptions, Vault, rate_limit_headers,
};
use tokio::net::TcpListener;

/// The quantiles in `/metrics` cover this much of the recent past.
const METRICS_WINDOW: Duration = Duration::from_secs(300);

/// The service's routes over `vault`. `Vault` is a cheap clone (an `Arc`
/// inside), so it is the router's state as it is.
pub fn app(vault: Vault) -> Router {
    let limit = |name| RateLimitLayer::new(vault.clone(), name, user).client_ip(client_ip);
    let api = Router::new()
        .route("/search", get(search).layer(limit("search_queries")))
        .route("/logout", post(logout))
        .route_layer(limit("api_calls"))
        .route_layer(SessionLayer::new(vault.clone()).client_ip(client_ip));
    Router::new()
        .route("/login", post(login))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .merge(api)
        .route_layer(middleware::from_fn_with_state(vault.clone(), record_call))
        .with_state(vault)
}

/// The rate-limit subject of an authenticated call: its user.
fn user(parts: &Parts) -> Option<String> {
    parts.extensions.get::<Session>().map(|s| s.user_id.clone())
}

/// The peer's address. Behind a proxy, read its forwarding header here.
fn client_ip(parts: &Parts) -> Option<String> {
    let ConnectInfo(addr) = parts.extensions.get::<ConnectInfo<SocketAddr>>()?;
    Some(addr.ip().to_string())
}

/// Serves [`app`] on `listener` until `shutdown` completes, then lets the
/// requests in flight finish. The caller closes the vault afterwards.
pub async fn serve(
    listener: TcpListener,
    vault: Vault,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = app(vault).into_make_service_with_connect_info::<SocketAddr>();
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

/// Counts and times every call (`api_requests`, `api_request_duration`),
/// labelled by route, method and status. [`SessionLayer`] leaves the
/// [`Session`] on the responses it let through: the call was authenticated.
async fn record_call(
    State(vault): State<Vault>,
    route: MatchedPath,
    request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let response = next.run(request).await;
    let user = response
        .extensions()
        .get::<Session>()
        .map(|s| s.user_id.as_str());
    vault.metrics().record_api_call(
        route.as_str(),
        method.as_str(),
        response.status().as_u16(),
        started.elapsed(),
        user,
    );
    response
}

#[derive(Deserialize)]
struct SearchParams {
    q: String,
}

/// `GET /search?q=...`: the (fake) upstream search through the cache, shared by every user for the
/// namespace's TTL. `X-Cache` says whether the loader ran.
async fn search(
    State(vault): State<Vault>,
    session: Session,
    caller: Caller,
    Query(params): Query<SearchParams>,
) -> Result<Response, ApiError> {
    if params.q.trim().is_empty() {
        return Err(ApiError::BadRequest("q is empty".into()));
    }
    let key = CacheKey::derive("search", "tracks", &json!({ "q": params.q }), None)?;
    let mut loaded = false;
    let results: Value = vault
        .cache()
        .get_or_load(&key, &SetOptions::new().tag("search"), || {
            loaded = true;
            upstream_search(&params.q)
        })
        .await?;
    vault.audit().append(
        caller.describe(
            AuditEvent::new(EventKind::ApiCall, "search")
                .user(&session.user_id)
                .session(&session.id)
                .details(json!({ "q": params.q, "cached": !loaded }))
                .category(GdprCategory::Necessary),
        ),
    )?;
    let cache = if loaded { "miss" } else { "hit" };
    Ok(([("x-cache", cache)], Json(results)).into_response())
}

/// What a real service would ask its upstream API.
async fn upstream_search(q: &str) -> statevault::Result<Value> {
    let tracks: Vec<Value> = (1..=3)
        .map(|i| json!({ "id": format!("{q}-{i}"), "title": format!("{q} ({i})") }))
        .collect();
    Ok(json!({ "q": q, "tracks": tracks }))
}

#[derive(Deserialize)]
struct Login {
    user: String,
    password: String,
}

/// `POST /login {"user": ..., "password": ...}`: the strict `auth_attempts`
/// limit (every attempt counts, right or wrong), the password, then a new
/// session. Answers `{"token", "session_id", "expires_at"}`; the token is
/// shown this once.
async fn login(
    State(vault): State<Vault>,
    caller: Caller,
    Json(login): Json<Login>,
) -> Result<Response, ApiError> {
    let event =
        |action: &str| caller.describe(AuditEvent::new(EventKind::Auth, action).user(&login.user));
    let attempt = vault
        .limits()
        .check(&login.user, "auth_attempts", 1, &caller.client_info())
        .await?;
    if !attempt.allowed {
        vault.audit().append(event("login.locked_out"))?;
        return Err(ApiError::Limited(rate_limit_headers(&vault, &attempt)?));
    }
    if !password_ok(&login.user, &login.password) {
        vault.metrics().record_auth(false);
        vault.audit().append(event("login.failed"))?;
        return Err(ApiError::Unauthorized("wrong user or password"));
    }
    let mut new = NewSession::new(&login.user);
    if let Some(ip) = &caller.ip {
        new = new.client_ip(ip);
    }
    if let Some(agent) = &caller.user_agent {
        new = new.user_agent(agent);
    }
    let issued = vault.sessions().create(new).await?;
    vault.metrics().record_auth(true);
    vault.audit().append(event("login").session(&issued.id))?;
    Ok(Json(json!({
        "token": issued.token.expose(),
        "session_id": issued.id,
        "expires_at": issued.expires_at,
    }))
    .into_response())
}

/// Stands in for the service's user store: any non-empty password.
fn password_ok(_user: &str, password: &str) -> bool {
    !password.is_empty()
}

/// `POST /logout`: revokes the caller's session; its token is dead when
/// this returns.
async fn logout(State(vault): State<Vault>, session: Session) -> Result<StatusCode, ApiError> {
    vault.sessions().revoke(&session.id).await?;
    vault.audit().append(
        AuditEvent::new(EventKind::Auth, "logout")
            .user(&session.user_id)
            .session(&session.id),
    )?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /health`: the report as JSON; 503 only when critical.
async fn health(State(vault): State<Vault>) -> Response {
    let report = vault.health().await;
    let status = match report.status {
        HealthStatus::Healthy | HealthStatus::Warning => StatusCode::OK,
        HealthStatus::Critical => StatusCode::SERVICE_UNAVAILABLE,
    };
    (status, Json(report)).into_response()
}

/// `GET /metrics`: Prometheus text, this interval's records included.
async fn metrics(State(vault): State<Vault>) -> Result<Response, ApiError> {
    vault.metrics().flush_all().await?;
    let text = vault.metrics().prometheus(METRICS_WINDOW).await?;
    let content_type = "text/plain; version=0.0.4; charset=utf-8";
    Ok(([(CONTENT_TYPE, content_type)], text).into_response())
}

/// Who is calling, for the login's limit, the audit log and the session's
/// metadata (each keeps only keyed hashes).
struct Caller {
    ip: Option<String>,
    user_agent: Option<String>,
}

impl Caller {
    fn client_info(&self) -> ClientInfo<'_> {
        ClientInfo {
            ip: self.ip.as_deref(),
            user_agent: self.user_agent.as_deref(),
        }
    }

    /// `event` with the caller's IP and user agent, as far as known.
    fn describe(&self, mut event: AuditEvent) -> AuditEvent {
        if let Some(ip) = &self.ip {
            event = event.client_ip(ip);
        }
        if let Some(agent) = &self.user_agent {
            event = event.user_agent(agent);
        }
        event
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Caller {
            ip: client_ip(parts),
            user_agent: parts
                .headers
                .get(USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
        })
    }
}

/// Every way a call fails, as the client sees it.
enum ApiError {
    /// 400, with what was wrong.
    BadRequest(String),
    /// 401, with why.
    Unauthorized(&'static str),
    /// 429, with `Retry-After` and the `RateLimit` fields.
    Limited(HeaderMap),
    /// 500; the error is logged, not shown.
    Internal(statevault::Error),
}

impl From<statevault::Error> for ApiError {
    fn from(error: statevault::Error) -> Self {
        match error {
            statevault::Error::InvalidInput { .. } => ApiError::BadRequest(error.to_string()),
            error => ApiError::Internal(error),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = |message: &str| Json(json!({ "error": message }));
        match self {
            ApiError::BadRequest(message) => {
                (StatusCode::BAD_REQUEST, body(&message)).into_response()
            }
            ApiError::Unauthorized(why) => (
                StatusCode::UNAUTHORIZED,
                [(WWW_AUTHENTICATE, "Bearer")],
                body(why),
            )
                .into_response(),
            ApiError::Limited(headers) => (
                StatusCode::TOO_MANY_REQUESTS,
                headers,
                body("too many attempts"),
            )
                .into_response(),
            ApiError::Internal(error) => {
                tracing::error!(%error, "request failed");
                (StatusCode::INTERNAL_SERVER_ERROR, body("internal error")).into_response()
            }
        }
    }
}
