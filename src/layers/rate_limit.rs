//! [`RateLimitLayer`]: one named limit in front of a group of routes, and
//! the headers that tell a client where it stands: `Retry-After`, and
//! `RateLimit-Policy` and `RateLimit` as draft-ietf-httpapi-ratelimit-headers-11
//! (May 2026) defines them.

use std::fmt::Write as _;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::{HeaderName, HeaderValue, RETRY_AFTER, USER_AGENT};
use http::request::Parts;
use http::{HeaderMap, Request, Response, StatusCode};
use tower_layer::Layer;
use tower_service::Service;

use super::types::{Boxed, FromParts, internal, status};
use crate::{ClientInfo, Decision, Error, Result, Vault};

/// The draft's `RateLimit-Policy` field: the quota of each window.
pub const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// The draft's `RateLimit` field: what is left now.
pub const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// A tower [`Layer`] that takes one token of a configured limit
/// ([`Limits::check`](crate::Limits::check)) for every request, under the
/// subject `key` reads from the request (a user, an IP, an API key; `None`:
/// not limited). One layer per route group, each with its limit's name.
///
/// A refusal is a 429 with `Retry-After` (whole seconds, rounded up); every
/// answer, allowed or not, carries `RateLimit-Policy` and `RateLimit` (see
/// [`rate_limit_headers`]); layers stacked on one route each add their
/// limit's field lines, innermost first. The limit is in memory or shared as it is
/// configured ([`Limit::shared`](crate::Limit::shared)); the layer does not
/// care. An unknown limit or a storage error is a 500, logged.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> statevault::Result<()> {
/// # let dir = tempfile::tempdir().unwrap();
/// use std::time::Duration;
/// use http::{Request, Response, StatusCode};
/// use statevault::{Limit, LimitsConfig, RateLimitLayer, Vault, VaultOptions, Window};
/// use tower::{ServiceBuilder, ServiceExt, service_fn};
///
/// let limits = LimitsConfig::empty()
///     .limit("api_calls", Limit::new().window(Window::per(Duration::from_secs(60), 2.0)));
/// let vault = Vault::open(VaultOptions::new(dir.path().join("app.db")).limits(limits)).await?;
/// let by_api_key = |parts: &http::request::Parts| {
///     Some(parts.headers.get("x-api-key")?.to_str().ok()?.to_owned())
/// };
/// let app = ServiceBuilder::new()
///     .layer(RateLimitLayer::new(vault.clone(), "api_calls", by_api_key))
///     .service(service_fn(|_: Request<String>| async {
///         Ok::<_, std::convert::Infallible>(Response::new(String::new()))
///     }));
///
/// let call = || Request::get("/").header("x-api-key", "k1").body(String::new()).unwrap();
/// let first = app.clone().oneshot(call()).await.unwrap();
/// assert_eq!(first.headers()["ratelimit-policy"], r#""api_calls";q=2;w=60"#);
/// assert_eq!(first.headers()["ratelimit"], r#""api_calls";r=1;t=30"#);
/// app.clone().oneshot(call()).await.unwrap();
/// let third = app.oneshot(call()).await.unwrap();
/// assert_eq!(third.status(), StatusCode::TOO_MANY_REQUESTS);
/// // Refused: a token refills in 30 s, but a first violation also sets a
/// // penalty of one shortest window.
/// assert_eq!(third.headers()["retry-after"], "60");
/// vault.close().await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct RateLimitLayer {
    config: Arc<Config>,
}

#[derive(Clone)]
struct Config {
    vault: Vault,
    limit: String,
    key: FromParts,
    client_ip: Option<FromParts>,
}

impl RateLimitLayer {
    /// The limit `limit` of `vault`, per subject `key` reads.
    pub fn new(
        vault: Vault,
        limit: impl Into<String>,
        key: impl Fn(&Parts) -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        RateLimitLayer {
            config: Arc::new(Config {
                vault,
                limit: limit.into(),
                key: Arc::new(key),
                client_ip: None,
            }),
        }
    }

    /// The client's IP, kept (as a keyed hash) with each violation.
    pub fn client_ip(
        mut self,
        read: impl Fn(&Parts) -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        Arc::make_mut(&mut self.config).client_ip = Some(Arc::new(read));
        self
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimitService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimitService {
            inner,
            config: self.config.clone(),
        }
    }
}

/// The service [`RateLimitLayer`] wraps around another.
#[derive(Clone)]
pub struct RateLimitService<S> {
    inner: S,
    config: Arc<Config>,
}

impl<S, B, ResBody> Service<Request<B>> for RateLimitService<S>
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
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let config = self.config.clone();
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            let headers = match config.check(&parts).await {
                Ok(None) => return inner.call(Request::from_parts(parts, body)).await,
                Ok(Some((true, headers))) => headers,
                Ok(Some((false, headers))) => {
                    let mut refused = status(StatusCode::TOO_MANY_REQUESTS);
                    refused.headers_mut().extend(headers);
                    return Ok(refused);
                }
                Err(error) => return Ok(internal(&error)),
            };
            let mut response = inner.call(Request::from_parts(parts, body)).await?;
            // Appended: the fields are lists, which another layer's limit
            // (a route's own, inside this one) may have begun.
            for (name, value) in &headers {
                response.headers_mut().append(name, value.clone());
            }
            Ok(response)
        })
    }
}

impl Config {
    /// Whether the request may go on, and the headers that say so; `None`
    /// if it has no subject.
    async fn check(&self, parts: &Parts) -> Result<Option<(bool, HeaderMap)>> {
        let Some(subject) = (self.key)(parts) else {
            return Ok(None);
        };
        let ip = self.client_ip.as_ref().and_then(|read| read(parts));
        let client = ClientInfo {
            ip: ip.as_deref(),
            user_agent: parts.headers.get(USER_AGENT).and_then(|v| v.to_str().ok()),
        };
        let limits = self.vault.limits();
        let decision = limits.check(&subject, &self.limit, 1, &client).await?;
        let headers = rate_limit_headers(&self.vault, &decision)?;
        Ok(Some((decision.allowed, headers)))
    }
}

/// The headers that tell a client what `decision` means, for a handler that
/// checks a limit itself (its key is in the body, say) and answers as
/// [`RateLimitLayer`] does:
///
/// - `RateLimit-Policy`: one item per window of the limit, shortest first,
///   `q` its tokens per period and `w` the period in seconds. The shortest
///   is named after the limit, the others `<limit>/<seconds>s`:
///   `"api_calls";q=100;w=60, "api_calls/3600s";q=1000;w=3600`. Burst
///   capacity is not in `q`, so `r` may exceed it.
/// - `RateLimit`: `"<limit>";r=<remaining>;t=<seconds>`, where `r` is what
///   is left in the tightest window (the draft lets a server report less
///   than a policy has left, never more) and `t` the seconds until every
///   window is full again, or, when refused, until `Retry-After`.
/// - `Retry-After`, when refused: seconds, rounded up, at least 1.
///
/// Errors: [`Error::UnknownLimit`].
pub fn rate_limit_headers(vault: &Vault, decision: &Decision) -> Result<HeaderMap> {
    let mut windows: Vec<_> = vault.limits().windows(&decision.limit)?.iter().collect();
    windows.sort_by_key(|w| w.period);
    let mut policy = String::new();
    for (i, window) in windows.iter().enumerate() {
        let secs = window.period.as_secs();
        let name = match i {
            0 => decision.limit.to_string(),
            _ => format!("{}/{secs}s", decision.limit),
        };
        let separator = if i == 0 { "" } else { ", " };
        let quota = window.tokens.floor() as u64;
        let _ = write!(policy, "{separator}{};q={quota};w={secs}", sf_string(&name));
    }
    let retry_after = whole_secs(decision.retry_after).max(1);
    let t = match decision.allowed {
        true => whole_secs(decision.reset_at.duration_since(vault.now())),
        false => retry_after,
    };
    let remaining = decision.remaining;
    let current = format!("{};r={remaining};t={t}", sf_string(&decision.limit));
    let mut headers = HeaderMap::new();
    headers.insert(RATELIMIT_POLICY, header_value(policy)?);
    headers.insert(RATELIMIT, header_value(current)?);
    if !decision.allowed {
        headers.insert(RETRY_AFTER, HeaderValue::from(retry_after));
    }
    Ok(headers)
}

/// Seconds, rounded up.
fn whole_secs(d: Duration) -> u64 {
    d.as_millis().div_ceil(1000).try_into().unwrap_or(u64::MAX)
}

/// `text` as a structured-field String (RFC 8941 §3.3.3): quoted, `"` and
/// `\` escaped; a character outside printable ASCII, which a String cannot
/// hold, becomes `?`.
fn sf_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            ' '..='~' => out.push(c),
            _ => out.push('?'),
        }
    }
    out.push('"');
    out
}

fn header_value(text: String) -> Result<HeaderValue> {
    HeaderValue::try_from(text).map_err(|e| Error::Internal {
        detail: format!("a rate-limit header is no header value: {e}"),
    })
}
