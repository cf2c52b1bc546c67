//! Tower middleware over a [`Vault`](crate::Vault) (feature `tower`):
//! [`SessionLayer`] authenticates each request by its session, and
//! [`RateLimitLayer`] spends a named limit per request. They sit at the
//! vault's level (they use the sessions, limits and audit facets), and no
//! facet knows them.
//!
//! Both answer their refusals themselves, with an empty body and the
//! status and headers that say why (401 with `WWW-Authenticate`, 403, 429
//! with `Retry-After` and the rate-limit fields), so they work with any
//! response body that has a `Default`. Handlers find the session in the
//! request's extensions, or take it as an axum extractor.
//!
//! # Layout
//!
//! - `session.rs`: [`SessionLayer`]: token, validation, CSRF, rotation,
//!   the hijack alarm;
//! - `rate_limit.rs`: [`RateLimitLayer`] and [`rate_limit_headers`];
//! - `types.rs`: the cookie's settings, [`CurrentSession`], the plain
//!   answers both give;
//! - `extract.rs`: axum's `FromRequestParts` for [`Session`](crate::Session)
//!   and [`CurrentSession`].

mod extract;
mod rate_limit;
mod session;
mod types;

pub use rate_limit::{
    RATELIMIT, RATELIMIT_POLICY, RateLimitLayer, RateLimitService, rate_limit_headers,
};
pub use session::{SessionLayer, SessionService};
pub use types::{CookieConfig, CurrentSession, SameSite, TokenSource};
