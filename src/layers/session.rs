//! [`SessionLayer`]: every request behind it carries a live session, or is
//! answered 401 (403 for a missing CSRF token) before the service sees it.

use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::{AUTHORIZATION, CACHE_CONTROL, COOKIE, HeaderName, HeaderValue, SET_COOKIE};
use http::request::Parts;
use http::{HeaderMap, Request, Response, StatusCode};
use tower_layer::Layer;
use tower_service::Service;

use super::types::{
    Boxed, CookieConfig, CurrentSession, FromParts, TokenSource, internal, status, unauthorized,
};
use crate::{AuditEvent, Error, EventKind, IssuedSession, Secret, Validation, Vault};

/// A tower [`Layer`] that authenticates every request by its session.
///
/// For each request it:
/// 1. reads the token from `Authorization: Bearer …`, else from the cookie
///    (when [`cookie`](SessionLayer::cookie) is set). None: 401, or on to
///    the service without a session if [`optional`](SessionLayer::optional);
/// 2. validates it ([`Sessions::validate`](crate::Sessions::validate)),
///    with the device fingerprint when one is configured. Unknown, expired
///    or revoked: 401 with `WWW-Authenticate: Bearer error="invalid_token"`
///    and why. The wrong device: 401, and a `session.hijack_suspected`
///    event committed to the audit log before the answer;
/// 3. on unsafe methods (all but GET, HEAD, OPTIONS, TRACE) of a session
///    sent by cookie, requires its CSRF token in the CSRF header
///    (`X-CSRF-Token`): 403 otherwise. A bearer token is not sent by the
///    browser on its own, so it needs none unless
///    [`csrf_with_bearer`](SessionLayer::csrf_with_bearer);
/// 4. rotates the token when [`Session::rotation_due`](crate::Session::rotation_due), and hands the new
///    one out on the response: as the cookie if it came as one, else in the
///    `X-Session-Token` header; the new CSRF token goes in the CSRF header;
/// 5. puts the [`Session`](crate::Session) and a [`CurrentSession`] in the request's
///    extensions, and the [`Session`](crate::Session) in the response's (for an outer access
///    log or metrics layer).
///
/// A handler that issues a session (a login, a regeneration) puts the
/// [`IssuedSession`] in its response's extensions; the layer hands it out
/// like a rotation. Storage errors are 500s, logged.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> statevault::Result<()> {
/// # let dir = tempfile::tempdir().unwrap();
/// use http::{Request, Response, StatusCode};
/// use statevault::{NewSession, Session, SessionLayer, Vault, VaultOptions};
/// use tower::{ServiceBuilder, ServiceExt, service_fn};
///
/// let vault = Vault::open(VaultOptions::new(dir.path().join("app.db"))).await?;
/// let app = ServiceBuilder::new()
///     .layer(SessionLayer::new(vault.clone()))
///     .service(service_fn(|req: Request<String>| async move {
///         let user = &req.extensions().get::<Session>().unwrap().user_id;
///         Ok::<_, std::convert::Infallible>(Response::new(format!("hello {user}")))
///     }));
///
/// let issued = vault.sessions().create(NewSession::new("alice")).await?;
/// let request = Request::get("/")
///     .header("authorization", format!("Bearer {}", issued.token.expose()))
///     .body(String::new())
///     .unwrap();
/// let response = app.clone().oneshot(request).await.unwrap();
/// assert_eq!(response.body(), "hello alice");
///
/// let anonymous = Request::get("/").body(String::new()).unwrap();
/// let response = app.oneshot(anonymous).await.unwrap();
/// assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
/// vault.close().await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct SessionLayer {
    config: Arc<Config>,
}

#[derive(Clone)]
struct Config {
    vault: Vault,
    cookie: Option<CookieConfig>,
    token_header: HeaderName,
    csrf_header: HeaderName,
    fingerprint: Option<FromParts>,
    client_ip: Option<FromParts>,
    optional: bool,
    csrf_with_bearer: bool,
}

impl SessionLayer {
    /// Sessions of `vault`, read from the bearer token; no cookie, no
    /// device binding, a token required.
    pub fn new(vault: Vault) -> Self {
        SessionLayer {
            config: Arc::new(Config {
                vault,
                cookie: None,
                token_header: HeaderName::from_static("x-session-token"),
                csrf_header: HeaderName::from_static("x-csrf-token"),
                fingerprint: None,
                client_ip: None,
                optional: false,
                csrf_with_bearer: false,
            }),
        }
    }

    fn with(mut self, change: impl FnOnce(&mut Config)) -> Self {
        change(Arc::make_mut(&mut self.config));
        self
    }

    /// Also reads the token from this cookie, and writes it there when the
    /// client sent it there.
    pub fn cookie(self, cookie: CookieConfig) -> Self {
        self.with(|c| c.cookie = Some(cookie))
    }

    /// The response header that carries a new bearer token (default
    /// `X-Session-Token`).
    pub fn token_header(self, name: HeaderName) -> Self {
        self.with(|c| c.token_header = name)
    }

    /// The header that carries the CSRF token, both ways (default
    /// `X-CSRF-Token`).
    pub fn csrf_header(self, name: HeaderName) -> Self {
        self.with(|c| c.csrf_header = name)
    }

    /// Whether unsafe methods with a bearer token need the CSRF token too
    /// (default `false`: a browser never sends a bearer token on its own).
    pub fn csrf_with_bearer(self, yes: bool) -> Self {
        self.with(|c| c.csrf_with_bearer = yes)
    }

    /// Sessions are bound to the device this reads from the request; it is
    /// passed to every validation and rotation.
    pub fn device_fingerprint(
        self,
        read: impl Fn(&Parts) -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        self.with(|c| c.fingerprint = Some(Arc::new(read)))
    }

    /// [`device_fingerprint`](SessionLayer::device_fingerprint) from a
    /// request header.
    pub fn device_fingerprint_header(self, name: HeaderName) -> Self {
        self.device_fingerprint(move |parts| {
            let value = parts.headers.get(&name)?.to_str().ok()?;
            Some(value.to_owned())
        })
    }

    /// The client's IP, for the audit event of a suspected hijack (behind
    /// a proxy, read its forwarding header).
    pub fn client_ip(
        self,
        read: impl Fn(&Parts) -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        self.with(|c| c.client_ip = Some(Arc::new(read)))
    }

    /// Whether a request with no token goes on without a session (public
    /// routes) instead of a 401 (default `false`). A token that is sent
    /// but refused is a 401 either way.
    pub fn optional(self, yes: bool) -> Self {
        self.with(|c| c.optional = yes)
    }
}

impl<S> Layer<S> for SessionLayer {
    type Service = SessionService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        SessionService {
            inner,
            config: self.config.clone(),
        }
    }
}

/// The service [`SessionLayer`] wraps around another.
#[derive(Clone)]
pub struct SessionService<S> {
    inner: S,
    config: Arc<Config>,
}

impl<S, B, ResBody> Service<Request<B>> for SessionService<S>
where
    S: Service<Request<B>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send,
    B: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = Boxed<Self::Response, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        // The clone is not ready; the one that was polled serves this call.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let config = self.config.clone();
        Box::pin(async move { config.serve(request, inner).await })
    }
}

impl Config {
    async fn serve<S, B, ResBody>(
        &self,
        request: Request<B>,
        mut inner: S,
    ) -> Result<Response<ResBody>, S::Error>
    where
        S: Service<Request<B>, Response = Response<ResBody>>,
        ResBody: Default,
    {
        let (mut parts, body) = request.into_parts();
        let Some((token, source)) = self.token(&parts.headers) else {
            if !self.optional {
                return Ok(unauthorized(None));
            }
            let mut response = inner.call(Request::from_parts(parts, body)).await?;
            self.hand_out_issued(&mut response, None);
            return Ok(response);
        };
        let fingerprint = self.fingerprint.as_ref().and_then(|read| read(&parts));
        let current = match self
            .admit(&parts, token, source, fingerprint.as_deref())
            .await
        {
            Ok(current) => current,
            Err(refusal) => return Ok(refusal),
        };
        let session = current.session.clone();
        let rotated = match self.rotate(&current, fingerprint.as_deref()).await {
            Ok(rotated) => rotated,
            Err(error) => return Ok(internal(&error)),
        };
        let current = match &rotated {
            Some(issued) => CurrentSession {
                token: issued.token.clone(),
                ..current
            },
            None => current,
        };
        parts.extensions.insert(session.clone());
        parts.extensions.insert(current);
        let mut response = inner.call(Request::from_parts(parts, body)).await?;
        if let Some(issued) = rotated {
            self.hand_out(&mut response, &issued, source);
        }
        self.hand_out_issued(&mut response, Some(source));
        response.extensions_mut().insert(session);
        Ok(response)
    }

    /// The session behind `token`, if it may make this request; else the
    /// answer that refuses it.
    async fn admit<ResBody: Default>(
        &self,
        parts: &Parts,
        token: Secret,
        source: TokenSource,
        fingerprint: Option<&str>,
    ) -> Result<CurrentSession, Response<ResBody>> {
        let validation = self
            .vault
            .sessions()
            .validate(token.expose(), fingerprint)
            .await;
        let session = match validation {
            Ok(Validation::Valid(session)) => session,
            Ok(Validation::Unknown) => return Err(unauthorized(Some("unknown token"))),
            Ok(Validation::Expired { .. }) => return Err(unauthorized(Some("session expired"))),
            Ok(Validation::Revoked { .. }) => return Err(unauthorized(Some("session revoked"))),
            Ok(Validation::FingerprintMismatch {
                session_id,
                user_id,
            }) => {
                self.alarm(parts, &session_id, &user_id).await;
                return Err(unauthorized(Some("wrong device")));
            }
            Err(error) => return Err(internal(&error)),
        };
        let csrf_needed = source == TokenSource::Cookie || self.csrf_with_bearer;
        if csrf_needed && !parts.method.is_safe() {
            let presented = parts.headers.get(&self.csrf_header);
            let text = presented.and_then(|v| v.to_str().ok());
            if !text.is_some_and(|t| session.verify_csrf(t)) {
                return Err(status(StatusCode::FORBIDDEN));
            }
        }
        Ok(CurrentSession {
            session,
            token,
            source,
        })
    }

    /// A new token if the session's rotation is due. Another request that
    /// rotated it first is no error: the client has its token from that one.
    async fn rotate(
        &self,
        current: &CurrentSession,
        fingerprint: Option<&str>,
    ) -> crate::Result<Option<IssuedSession>> {
        if !current.session.rotation_due {
            return Ok(None);
        }
        let sessions = self.vault.sessions();
        match sessions.rotate(current.token.expose(), fingerprint).await {
            Ok(issued) => Ok(Some(issued)),
            Err(Error::SessionNotValid { .. }) => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// Commits the suspected hijack to the audit log before the 401 goes
    /// out: an alarm lost in a crash is no alarm.
    async fn alarm(&self, parts: &Parts, session_id: &str, user_id: &str) {
        let mut event = AuditEvent::new(EventKind::Auth, "session.hijack_suspected")
            .user(user_id)
            .session(session_id)
            .details(serde_json::json!({ "reason": "device fingerprint mismatch" }));
        if let Some(ip) = self.client_ip.as_ref().and_then(|read| read(parts)) {
            event = event.client_ip(ip);
        }
        if let Some(agent) = parts.headers.get(http::header::USER_AGENT) {
            event = event.user_agent(String::from_utf8_lossy(agent.as_bytes()));
        }
        tracing::warn!(session_id, "session used from another device: 401");
        if let Err(error) = self.vault.audit().append_durable(event).await {
            tracing::error!(%error, session_id, "could not record a suspected hijack");
        }
    }

    /// The token and where it came from: the bearer token first, then the
    /// cookie.
    fn token(&self, headers: &HeaderMap) -> Option<(Secret, TokenSource)> {
        if let Some(token) = bearer(headers) {
            return Some((Secret::presented(token), TokenSource::Bearer));
        }
        let name = &self.cookie.as_ref()?.name;
        let token = cookie(headers, name)?;
        Some((Secret::presented(token), TokenSource::Cookie))
    }

    /// Hands out a session a handler issued, by the way the client sent its
    /// token; with none, by cookie if there is one, else the header.
    fn hand_out_issued<B>(&self, response: &mut Response<B>, source: Option<TokenSource>) {
        let Some(issued) = response.extensions_mut().remove::<IssuedSession>() else {
            return;
        };
        let fallback = match self.cookie {
            Some(_) => TokenSource::Cookie,
            None => TokenSource::Bearer,
        };
        self.hand_out(response, &issued, source.unwrap_or(fallback));
    }

    /// Writes a new token (cookie or header) and its CSRF token on the
    /// response, which no cache may then keep.
    fn hand_out<B>(&self, response: &mut Response<B>, issued: &IssuedSession, to: TokenSource) {
        let headers = response.headers_mut();
        let token = issued.token.expose();
        let set = match (&self.cookie, to) {
            (Some(cookie), TokenSource::Cookie) => {
                let max_age = issued.expires_at.duration_since(self.vault.now());
                let value = cookie.set_cookie(token, max_age.as_secs());
                (SET_COOKIE, HeaderValue::from_str(&value))
            }
            _ => (self.token_header.clone(), HeaderValue::from_str(token)),
        };
        // A token is hex and a cookie's name and path are the service's own
        // text; one that is no header value is left out, and logged.
        match set {
            (name, Ok(value)) if name == SET_COOKIE => {
                headers.append(name, value);
            }
            (name, Ok(value)) => {
                headers.insert(name, value);
            }
            (name, Err(_)) => tracing::error!(%name, "the new session token is no header value"),
        }
        if let Ok(csrf) = HeaderValue::from_str(issued.csrf_token.expose()) {
            headers.insert(self.csrf_header.clone(), csrf);
        }
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
}

/// The token of an `Authorization: Bearer <token>` header.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// The value of the cookie `name`, from any `Cookie` header.
fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (key, value) = pair.trim().split_once('=')?;
            (key == name).then(|| value.trim_matches('"'))
        })
        .filter(|v| !v.is_empty())
}
