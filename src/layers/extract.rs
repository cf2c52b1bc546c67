//! The session as an axum extractor: a handler behind [`SessionLayer`]
//! takes a [`Session`] or a [`CurrentSession`] argument. Behind no layer,
//! or on an [`optional`](SessionLayer::optional) route without a session,
//! the extraction is a 401.

use axum_core::extract::FromRequestParts;
use http::StatusCode;
use http::request::Parts;

use super::types::CurrentSession;
use crate::Session;
#[cfg(doc)]
use crate::SessionLayer;

impl<S: Send + Sync> FromRequestParts<S> for Session {
    type Rejection = StatusCode;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, StatusCode> {
        parts
            .extensions
            .get::<Session>()
            .cloned()
            .ok_or(StatusCode::UNAUTHORIZED)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for CurrentSession {
    type Rejection = StatusCode;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, StatusCode> {
        parts
            .extensions
            .get::<CurrentSession>()
            .cloned()
            .ok_or(StatusCode::UNAUTHORIZED)
    }
}
