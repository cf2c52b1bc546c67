//! The `tower-sessions` feature: a real `SessionManagerLayer` over a tower
//! service keeps its sessions in the vault, and the vault's own API
//! (revoke_user, list) works on them.
#![cfg(feature = "tower-sessions")]

mod common;

use std::convert::Infallible;

use http::{Request, Response, header};
use statevault::TowerSessionStore;
use tower::{ServiceBuilder, ServiceExt};
use tower_sessions::{Session, SessionManagerLayer};

async fn visit(req: Request<String>) -> Result<Response<String>, Infallible> {
    let session = req
        .extensions()
        .get::<Session>()
        .expect("the layer adds a session")
        .clone();
    let visits: u32 = session.get("visits").await.unwrap().unwrap_or(0) + 1;
    session.insert("visits", visits).await.unwrap();
    session.insert("user_id", "alice").await.unwrap();
    Ok(Response::new(visits.to_string()))
}

#[tokio::test]
async fn a_tower_sessions_layer_keeps_its_sessions_in_the_vault() {
    let dir = common::tempdir();
    let (vault, _clock) = common::vault(dir.path()).await;
    let service = ServiceBuilder::new()
        .layer(SessionManagerLayer::new(TowerSessionStore::new(vault.clone())).with_secure(false))
        .service_fn(visit);
    let call = |cookie: Option<String>| {
        let service = service.clone();
        async move {
            let mut req = Request::builder().uri("/");
            if let Some(cookie) = cookie {
                req = req.header(header::COOKIE, cookie);
            }
            let res = service
                .oneshot(req.body(String::new()).unwrap())
                .await
                .unwrap();
            let cookie = res
                .headers()
                .get(header::SET_COOKIE)
                .map(|v| v.to_str().unwrap().split(';').next().unwrap().to_owned());
            (res.into_body(), cookie)
        }
    };

    let (body, cookie) = call(None).await;
    assert_eq!(body, "1");
    let cookie = cookie.expect("a session cookie");
    let (body, _) = call(Some(cookie.clone())).await;
    assert_eq!(
        body, "2",
        "the second request found the session in the vault"
    );

    let rows = vault
        .query_read_only("SELECT user_id, data, length(token_hash) FROM sessions")
        .await
        .unwrap()
        .rows;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0][0], "alice");
    assert!(
        rows[0][1].as_str().unwrap().contains("\"visits\":2"),
        "{rows:?}"
    );
    assert_eq!(rows[0][2], 32, "only the hash of the cookie's id is stored");
    let cookie_id = cookie.split('=').nth(1).unwrap();
    assert!(!format!("{rows:?}").contains(cookie_id));

    // Logging alice out everywhere through the vault ends the tower session too.
    assert_eq!(vault.sessions().revoke_user("alice").await.unwrap(), 1);
    let (body, _) = call(Some(cookie)).await;
    assert_eq!(body, "1", "a revoked session is not loaded");
    vault.close().await.unwrap();
}
