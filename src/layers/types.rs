//! What the layers share: how the session cookie is written, what a
//! handler finds in the request, and the plain HTTP answers they give.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use http::header::{HeaderValue, WWW_AUTHENTICATE};
use http::request::Parts;
use http::{Response, StatusCode};

use crate::{Secret, Session};

/// Reads something about the caller from the request's head: a device
/// fingerprint, a client IP, a rate-limit key.
pub(crate) type FromParts = Arc<dyn Fn(&Parts) -> Option<String> + Send + Sync>;

/// The future a layer's service returns.
pub(crate) type Boxed<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

/// The `SameSite` attribute of the session cookie.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SameSite {
    /// Sent only with requests from the site itself (the default).
    Strict,
    /// Also sent on top-level navigations from other sites (links).
    Lax,
    /// Sent everywhere; browsers require `Secure` with it.
    None,
}

/// How [`SessionLayer`](crate::SessionLayer) reads and writes the session
/// cookie. The defaults are the safe ones: `Secure` (sent over HTTPS only),
/// `HttpOnly` (out of reach of scripts), `SameSite=Strict`, `Path=/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CookieConfig {
    pub(super) name: String,
    pub(super) secure: bool,
    pub(super) http_only: bool,
    pub(super) same_site: SameSite,
    pub(super) path: String,
}

impl CookieConfig {
    /// A cookie called `name`, with the safe defaults.
    pub fn new(name: impl Into<String>) -> Self {
        CookieConfig {
            name: name.into(),
            secure: true,
            http_only: true,
            same_site: SameSite::Strict,
            path: "/".into(),
        }
    }

    /// Whether the cookie carries `Secure` (default `true`; turn it off
    /// only for plain-HTTP development).
    pub fn secure(mut self, yes: bool) -> Self {
        self.secure = yes;
        self
    }

    /// Whether the cookie carries `HttpOnly` (default `true`).
    pub fn http_only(mut self, yes: bool) -> Self {
        self.http_only = yes;
        self
    }

    /// The `SameSite` attribute (default [`SameSite::Strict`]).
    pub fn same_site(mut self, same_site: SameSite) -> Self {
        self.same_site = same_site;
        self
    }

    /// The `Path` attribute (default `/`).
    pub fn path(mut self, path: impl Into<String>) -> Self {
        self.path = path.into();
        self
    }

    /// The `Set-Cookie` value that hands out `token` for `max_age_secs`.
    pub(super) fn set_cookie(&self, token: &str, max_age_secs: u64) -> String {
        let mut cookie = format!(
            "{}={token}; Path={}; Max-Age={max_age_secs}",
            self.name, self.path
        );
        if self.secure {
            cookie.push_str("; Secure");
        }
        if self.http_only {
            cookie.push_str("; HttpOnly");
        }
        cookie.push_str(match self.same_site {
            SameSite::Strict => "; SameSite=Strict",
            SameSite::Lax => "; SameSite=Lax",
            SameSite::None => "; SameSite=None",
        });
        cookie
    }
}

impl Default for CookieConfig {
    /// A cookie called `session`.
    fn default() -> Self {
        CookieConfig::new("session")
    }
}

/// Where the client sent its session token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenSource {
    /// `Authorization: Bearer …`.
    Bearer,
    /// The session cookie.
    Cookie,
}

/// What [`SessionLayer`](crate::SessionLayer) puts in a request's
/// extensions beside the [`Session`]: the token the client holds once this
/// response reaches it (the new one if the layer rotated it), to rotate or
/// regenerate with, and where it came from. `Debug` hides the token.
///
/// A handler that issues new tokens (after a login, [`regenerate`] on a
/// change of privilege) puts the [`IssuedSession`](crate::IssuedSession) in
/// its response's extensions; the layer hands it to the client as it hands
/// out a rotation.
///
/// [`regenerate`]: crate::Sessions::regenerate
#[derive(Clone)]
pub struct CurrentSession {
    /// The session, as validated for this request.
    pub session: Session,
    /// The client's token after this response.
    pub token: Secret,
    /// Where the client sent it.
    pub source: TokenSource,
}

impl fmt::Debug for CurrentSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CurrentSession")
            .field("session", &self.session)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

/// An answer with no body: the layers know nothing of the service's error
/// format, and the status and headers say it all.
pub(super) fn status<B: Default>(status: StatusCode) -> Response<B> {
    let mut response = Response::new(B::default());
    *response.status_mut() = status;
    response
}

/// 401 with the RFC 6750 challenge: with no token, the bare scheme; with a
/// refused one, `invalid_token` and why.
pub(super) fn unauthorized<B: Default>(why: Option<&str>) -> Response<B> {
    let mut response = status(StatusCode::UNAUTHORIZED);
    let challenge = match why {
        None => HeaderValue::from_static("Bearer"),
        Some(why) => HeaderValue::from_str(&format!(
            r#"Bearer error="invalid_token", error_description="{why}""#
        ))
        .unwrap_or_else(|_| HeaderValue::from_static("Bearer")),
    };
    response.headers_mut().insert(WWW_AUTHENTICATE, challenge);
    response
}

/// 500, the error logged and not shown.
pub(super) fn internal<B: Default>(error: &crate::Error) -> Response<B> {
    tracing::error!(%error, "statevault layer: the vault failed");
    status(StatusCode::INTERNAL_SERVER_ERROR)
}
