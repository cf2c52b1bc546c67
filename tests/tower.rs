//! The tower layers (feature `tower`), each driven with `oneshot` over a
//! trivial service: every status they answer, every header and cookie
//! attribute they write, CSRF, rotation, the hijack alarm, public routes,
//! and limits in memory and shared.

#![cfg(feature = "tower")]

mod common;

use std::convert::Infallible;
use std::path::Path;
use std::time::Duration;

use http::header::{CACHE_CONTROL, RETRY_AFTER, SET_COOKIE, WWW_AUTHENTICATE};
use http::{HeaderName, Method, Request, Response, StatusCode};
use statevault::{
    AuditQuery, CookieConfig, CurrentSession, FakeClock, IssuedSession, Limit, LimitsConfig,
    NewSession, RateLimitLayer, SameSite, Session, SessionConfig, SessionLayer, TokenSource, Vault,
    VaultOptions, Window,
};
use tower::{Service, ServiceBuilder, ServiceExt, service_fn};

const MINUTE: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);

/// A vault in `dir` whose sessions rotate after an hour, with the limits
/// `three` (3 a minute, in memory), `three_shared` (the same, shared) and
/// `two_windows` (10 a minute, 100 an hour).
async fn vault(dir: &Path) -> (Vault, FakeClock) {
    let (options, clock) = common::options(dir, "vault.db");
    (
        Vault::open(options_for(options)).await.expect("open"),
        clock,
    )
}

fn options_for(options: VaultOptions) -> VaultOptions {
    let mut sessions = SessionConfig::default();
    sessions.rotation_interval = HOUR;
    let three = || Limit::new().window(Window::per(MINUTE, 3.0));
    let limits = LimitsConfig::empty()
        .limit("three", three())
        .limit("three_shared", three().shared(true))
        .limit(
            "two_windows",
            Limit::new()
                .window(Window::per(HOUR, 100.0))
                .window(Window::per(MINUTE, 10.0).burst(2.0)),
        );
    // Nothing written behind before `close`: what one handle's in-memory
    // limit spent stays its own for the whole test.
    options
        .sessions(sessions)
        .limits(limits)
        .flush_interval(HOUR)
}

/// The trivial service: answers the session's user, or `anonymous`.
async fn whoami(request: Request<String>) -> Result<Response<String>, Infallible> {
    let user = request
        .extensions()
        .get::<Session>()
        .map(|s| s.user_id.clone());
    Ok(Response::new(user.unwrap_or_else(|| "anonymous".into())))
}

async fn call<S>(service: &S, request: Request<String>) -> Response<String>
where
    S: Service<Request<String>, Response = Response<String>, Error = Infallible> + Clone,
{
    service.clone().oneshot(request).await.expect("infallible")
}

fn request(method: Method, headers: &[(&str, &str)]) -> Request<String> {
    let mut builder = Request::builder().method(method).uri("/");
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(String::new()).expect("request")
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

fn header<'r>(response: &'r Response<String>, name: &str) -> Option<&'r str> {
    response
        .headers()
        .get(name)
        .map(|v| v.to_str().expect("ASCII"))
}

fn refused_because(response: &Response<String>) -> &str {
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    header(response, WWW_AUTHENTICATE.as_str()).expect("WWW-Authenticate")
}

#[tokio::test]
async fn bearer_sessions_answer_200_or_401_with_why() {
    let dir = common::tempdir();
    let (vault, clock) = vault(dir.path()).await;
    let app = ServiceBuilder::new()
        .layer(SessionLayer::new(vault.clone()))
        .service(service_fn(whoami));
    let issued = vault
        .sessions()
        .create(NewSession::new("alice"))
        .await
        .unwrap();
    let auth = bearer(issued.token.expose());

    let ok = call(&app, request(Method::GET, &[("authorization", &auth)])).await;
    assert_eq!(ok.status(), StatusCode::OK);
    assert_eq!(ok.body(), "alice");
    // The response carries the session too, for an outer access log.
    assert_eq!(ok.extensions().get::<Session>().unwrap().id, issued.id);
    assert!(header(&ok, "x-session-token").is_none());

    let none = call(&app, request(Method::GET, &[])).await;
    assert_eq!(refused_because(&none), "Bearer");
    let unknown = call(
        &app,
        request(Method::GET, &[("authorization", "Bearer 0badc0de")]),
    )
    .await;
    assert_eq!(
        refused_because(&unknown),
        r#"Bearer error="invalid_token", error_description="unknown token""#
    );

    // Idle for 13 hours (the timeout is 12): expired.
    let idle = vault
        .sessions()
        .create(NewSession::new("bob"))
        .await
        .unwrap();
    clock.advance(13 * HOUR);
    let expired = call(
        &app,
        request(
            Method::GET,
            &[("authorization", &bearer(idle.token.expose()))],
        ),
    )
    .await;
    assert!(refused_because(&expired).ends_with(r#"error_description="session expired""#));

    let live = vault
        .sessions()
        .create(NewSession::new("carol"))
        .await
        .unwrap();
    vault.sessions().revoke(&live.id).await.unwrap();
    let revoked = call(
        &app,
        request(
            Method::GET,
            &[("authorization", &bearer(live.token.expose()))],
        ),
    )
    .await;
    assert!(refused_because(&revoked).ends_with(r#"error_description="session revoked""#));
    vault.close().await.unwrap();
}

#[tokio::test]
async fn public_routes_pass_without_a_token_but_not_with_a_bad_one() {
    let dir = common::tempdir();
    let (vault, _clock) = vault(dir.path()).await;
    let app = ServiceBuilder::new()
        .layer(SessionLayer::new(vault.clone()).optional(true))
        .service(service_fn(whoami));
    let anonymous = call(&app, request(Method::POST, &[])).await;
    assert_eq!(anonymous.status(), StatusCode::OK);
    assert_eq!(anonymous.body(), "anonymous");
    let bad = call(
        &app,
        request(Method::GET, &[("authorization", "Bearer nope")]),
    )
    .await;
    assert_eq!(bad.status(), StatusCode::UNAUTHORIZED);
    vault.close().await.unwrap();
}

#[tokio::test]
async fn another_device_is_401_and_a_committed_hijack_alarm() {
    let dir = common::tempdir();
    let (vault, _clock) = vault(dir.path()).await;
    let layer = SessionLayer::new(vault.clone())
        .device_fingerprint_header(HeaderName::from_static("x-device"))
        .client_ip(|_| Some("203.0.113.9".into()));
    let app = ServiceBuilder::new()
        .layer(layer)
        .service(service_fn(whoami));
    let new = NewSession::new("alice").device_fingerprint("laptop");
    let issued = vault.sessions().create(new).await.unwrap();
    let auth = bearer(issued.token.expose());

    let home = call(
        &app,
        request(
            Method::GET,
            &[("authorization", &auth), ("x-device", "laptop")],
        ),
    )
    .await;
    assert_eq!(home.status(), StatusCode::OK);
    for device in [Some("phone"), None] {
        let mut headers = vec![("authorization", auth.as_str()), ("user-agent", "curl/8")];
        headers.extend(device.map(|d| ("x-device", d)));
        let stolen = call(&app, request(Method::GET, &headers)).await;
        assert!(refused_because(&stolen).ends_with(r#"error_description="wrong device""#));
    }
    // Committed before the 401 went out: no flush needed to read it.
    let alarms = vault
        .audit()
        .query(&AuditQuery {
            action: Some("session.hijack_suspected".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(alarms.len(), 2);
    assert_eq!(alarms[0].user_id.as_deref(), Some("alice"));
    assert_eq!(alarms[0].session_id.as_deref(), Some(issued.id.as_str()));
    assert_eq!(alarms[0].details["reason"], "device fingerprint mismatch");
    vault.close().await.unwrap();
}

#[tokio::test]
async fn unsafe_methods_need_the_csrf_token_with_a_cookie() {
    let dir = common::tempdir();
    let (vault, _clock) = vault(dir.path()).await;
    let cookie_app = ServiceBuilder::new()
        .layer(SessionLayer::new(vault.clone()).cookie(CookieConfig::default()))
        .service(service_fn(whoami));
    let issued = vault
        .sessions()
        .create(NewSession::new("alice"))
        .await
        .unwrap();
    let cookie = format!("theme=dark; session={}", issued.token.expose());
    let csrf = issued.csrf_token.expose();

    let read = call(&cookie_app, request(Method::GET, &[("cookie", &cookie)])).await;
    assert_eq!(read.status(), StatusCode::OK);
    for method in [Method::POST, Method::PUT, Method::PATCH, Method::DELETE] {
        let forged = call(&cookie_app, request(method.clone(), &[("cookie", &cookie)])).await;
        assert_eq!(forged.status(), StatusCode::FORBIDDEN, "{method}");
        let wrong = [("cookie", cookie.as_str()), ("x-csrf-token", "guess")];
        let wrong = call(&cookie_app, request(method.clone(), &wrong)).await;
        assert_eq!(wrong.status(), StatusCode::FORBIDDEN, "{method}");
        let right = [("cookie", cookie.as_str()), ("x-csrf-token", csrf)];
        let right = call(&cookie_app, request(method.clone(), &right)).await;
        assert_eq!(right.status(), StatusCode::OK, "{method}");
    }

    // A bearer token needs none, unless asked; the header name is the service's.
    let auth = bearer(issued.token.expose());
    let post = call(
        &cookie_app,
        request(Method::POST, &[("authorization", &auth)]),
    )
    .await;
    assert_eq!(post.status(), StatusCode::OK);
    let strict = SessionLayer::new(vault.clone())
        .csrf_with_bearer(true)
        .csrf_header(HeaderName::from_static("x-xsrf"));
    let strict_app = ServiceBuilder::new()
        .layer(strict)
        .service(service_fn(whoami));
    let post = call(
        &strict_app,
        request(Method::POST, &[("authorization", &auth)]),
    )
    .await;
    assert_eq!(post.status(), StatusCode::FORBIDDEN);
    let post = [("authorization", auth.as_str()), ("x-xsrf", csrf)];
    assert_eq!(
        call(&strict_app, request(Method::POST, &post))
            .await
            .status(),
        StatusCode::OK
    );
    vault.close().await.unwrap();
}

#[tokio::test]
async fn a_due_rotation_hands_out_the_new_bearer_token_in_a_header() {
    let dir = common::tempdir();
    let (vault, clock) = vault(dir.path()).await;
    let app = ServiceBuilder::new()
        .layer(SessionLayer::new(vault.clone()))
        .service(service_fn(|request: Request<String>| async move {
            // The handler sees the token the client will hold.
            let current = request.extensions().get::<CurrentSession>().unwrap();
            assert_eq!(current.source, TokenSource::Bearer);
            Ok::<_, Infallible>(Response::new(current.token.expose().to_owned()))
        }));
    let issued = vault
        .sessions()
        .create(NewSession::new("alice"))
        .await
        .unwrap();
    let old = bearer(issued.token.expose());

    let early = call(&app, request(Method::GET, &[("authorization", &old)])).await;
    assert!(header(&early, "x-session-token").is_none());
    assert_eq!(early.body(), issued.token.expose());

    clock.advance(HOUR + MINUTE);
    let rotated = call(&app, request(Method::GET, &[("authorization", &old)])).await;
    assert_eq!(rotated.status(), StatusCode::OK);
    let new = header(&rotated, "x-session-token")
        .expect("new token")
        .to_owned();
    assert_eq!(rotated.body(), &new);
    assert_ne!(new, issued.token.expose());
    let csrf = header(&rotated, "x-csrf-token").expect("new CSRF token");
    assert_ne!(csrf, issued.csrf_token.expose());
    assert_eq!(header(&rotated, CACHE_CONTROL.as_str()), Some("no-store"));

    let stale = call(&app, request(Method::GET, &[("authorization", &old)])).await;
    assert!(refused_because(&stale).ends_with(r#"error_description="unknown token""#));
    let next = call(
        &app,
        request(Method::GET, &[("authorization", &bearer(&new))]),
    )
    .await;
    assert_eq!(next.status(), StatusCode::OK);
    assert!(header(&next, "x-session-token").is_none(), "rotated once");
    vault.close().await.unwrap();
}

#[tokio::test]
async fn a_due_rotation_sets_the_cookie_with_its_attributes() {
    let dir = common::tempdir();
    let (vault, clock) = vault(dir.path()).await;
    let issued = vault
        .sessions()
        .create(NewSession::new("alice"))
        .await
        .unwrap();
    clock.advance(HOUR + MINUTE);
    let remaining = issued.expires_at.duration_since(vault.now()).as_secs();

    let defaults = SessionLayer::new(vault.clone()).cookie(CookieConfig::default());
    let app = ServiceBuilder::new()
        .layer(defaults)
        .service(service_fn(whoami));
    let cookie = format!("session={}", issued.token.expose());
    let response = call(&app, request(Method::GET, &[("cookie", &cookie)])).await;
    assert_eq!(response.status(), StatusCode::OK);
    let set = header(&response, SET_COOKIE.as_str()).expect("Set-Cookie");
    let token = set
        .strip_prefix("session=")
        .unwrap()
        .split(';')
        .next()
        .unwrap();
    assert_eq!(token.len(), 76);
    assert_eq!(
        set,
        format!("session={token}; Path=/; Max-Age={remaining}; Secure; HttpOnly; SameSite=Strict")
    );
    assert!(header(&response, "x-session-token").is_none());
    assert!(header(&response, "x-csrf-token").is_some());

    // Every attribute configurable; the next rotation is an hour on.
    clock.advance(HOUR + MINUTE);
    let config = CookieConfig::new("sid")
        .secure(false)
        .http_only(false)
        .same_site(SameSite::Lax)
        .path("/app");
    let app = ServiceBuilder::new()
        .layer(SessionLayer::new(vault.clone()).cookie(config))
        .service(service_fn(whoami));
    let response = call(
        &app,
        request(Method::GET, &[("cookie", &format!("sid={token}"))]),
    )
    .await;
    let set = header(&response, SET_COOKIE.as_str()).expect("Set-Cookie");
    assert!(set.starts_with("sid="), "{set}");
    assert!(
        set.ends_with("; Path=/app; Max-Age=597480; SameSite=Lax"),
        "{set}"
    );
    let none = CookieConfig::default().same_site(SameSite::None);
    assert!(format!("{none:?}").contains("None"));
    vault.close().await.unwrap();
}

#[tokio::test]
async fn a_session_a_handler_issues_is_handed_out() {
    let dir = common::tempdir();
    let (vault, _clock) = vault(dir.path()).await;
    let login_vault = vault.clone();
    let login = service_fn(move |_: Request<String>| {
        let vault = login_vault.clone();
        async move {
            let issued = vault
                .sessions()
                .create(NewSession::new("alice"))
                .await
                .unwrap();
            let mut response = Response::new(String::new());
            response.extensions_mut().insert::<IssuedSession>(issued);
            Ok::<_, Infallible>(response)
        }
    });
    let layer = SessionLayer::new(vault.clone())
        .optional(true)
        .cookie(CookieConfig::default());
    let app = ServiceBuilder::new().layer(layer).service(login);
    let response = call(&app, request(Method::POST, &[])).await;
    let set = header(&response, SET_COOKIE.as_str()).expect("Set-Cookie");
    let token = set
        .strip_prefix("session=")
        .unwrap()
        .split(';')
        .next()
        .unwrap();
    assert!(
        vault
            .sessions()
            .validate(token, None)
            .await
            .unwrap()
            .valid()
            .is_some()
    );
    assert!(header(&response, "x-csrf-token").is_some());
    vault.close().await.unwrap();
}

#[tokio::test]
async fn the_session_is_an_axum_extractor() {
    use axum::routing::get;
    let dir = common::tempdir();
    let (vault, _clock) = vault(dir.path()).await;
    let app = axum::Router::new()
        .route("/", get(|session: Session| async move { session.user_id }))
        .route(
            "/open",
            get(|session: Session| async move { session.user_id }),
        )
        .layer(SessionLayer::new(vault.clone()).optional(true));
    let issued = vault
        .sessions()
        .create(NewSession::new("alice"))
        .await
        .unwrap();
    let get = |uri: &str, auth: Option<String>| {
        let mut builder = Request::get(uri);
        if let Some(auth) = auth {
            builder = builder.header("authorization", auth);
        }
        builder.body(axum::body::Body::empty()).unwrap()
    };
    let auth = Some(bearer(issued.token.expose()));
    let ok = app.clone().oneshot(get("/", auth)).await.unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    let body = axum::body::to_bytes(ok.into_body(), 1024).await.unwrap();
    assert_eq!(&body[..], b"alice");
    // No session on an optional route: the extractor refuses.
    let anonymous = app.oneshot(get("/open", None)).await.unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    vault.close().await.unwrap();
}

/// The subject of a rate-limit test request: its `x-user` header.
fn by_user(parts: &http::request::Parts) -> Option<String> {
    Some(parts.headers.get("x-user")?.to_str().ok()?.to_owned())
}

#[tokio::test]
async fn a_limit_answers_429_with_retry_after_and_both_fields() {
    let dir = common::tempdir();
    let (vault, clock) = vault(dir.path()).await;
    let app = ServiceBuilder::new()
        .layer(RateLimitLayer::new(vault.clone(), "three", by_user))
        .service(service_fn(whoami));
    let alice = || request(Method::GET, &[("x-user", "alice")]);
    for (left, full_in) in [(2, 20), (1, 40), (0, 60)] {
        let ok = call(&app, alice()).await;
        assert_eq!(ok.status(), StatusCode::OK);
        assert_eq!(header(&ok, "ratelimit-policy"), Some(r#""three";q=3;w=60"#));
        let expected = format!(r#""three";r={left};t={full_in}"#);
        assert_eq!(header(&ok, "ratelimit"), Some(expected.as_str()));
        assert!(header(&ok, RETRY_AFTER.as_str()).is_none());
    }
    let refused = call(&app, alice()).await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(refused.body().is_empty());
    // A token is back in 20 s, but the first violation sets a penalty of
    // the shortest window: 60 s.
    assert_eq!(header(&refused, RETRY_AFTER.as_str()), Some("60"));
    assert_eq!(header(&refused, "ratelimit"), Some(r#""three";r=0;t=60"#));
    assert_eq!(
        header(&refused, "ratelimit-policy"),
        Some(r#""three";q=3;w=60"#)
    );

    // Another subject has its own budget; no subject, no limit and no fields.
    assert_eq!(
        call(&app, request(Method::GET, &[("x-user", "bob")]))
            .await
            .status(),
        StatusCode::OK
    );
    let anonymous = call(&app, request(Method::GET, &[])).await;
    assert_eq!(anonymous.status(), StatusCode::OK);
    assert!(header(&anonymous, "ratelimit").is_none());

    // A second early, still refused; then allowed.
    clock.advance(Duration::from_secs(59));
    assert_eq!(
        call(&app, alice()).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    clock.advance(Duration::from_secs(1));
    assert_eq!(call(&app, alice()).await.status(), StatusCode::OK);
    vault.close().await.unwrap();
}

#[tokio::test]
async fn every_window_is_in_the_policy_shortest_first() {
    let dir = common::tempdir();
    let (vault, _clock) = vault(dir.path()).await;
    let app = ServiceBuilder::new()
        .layer(RateLimitLayer::new(vault.clone(), "two_windows", by_user))
        .service(service_fn(whoami));
    let ok = call(&app, request(Method::GET, &[("x-user", "alice")])).await;
    assert_eq!(
        header(&ok, "ratelimit-policy"),
        Some(r#""two_windows";q=10;w=60, "two_windows/3600s";q=100;w=3600"#)
    );
    // The minute window (capacity 12) is the tightest: 11 left; the hour
    // window is the last to be full again, in 36 s.
    assert_eq!(header(&ok, "ratelimit"), Some(r#""two_windows";r=11;t=36"#));

    let unknown = RateLimitLayer::new(vault.clone(), "no_such_limit", by_user);
    let broken = ServiceBuilder::new()
        .layer(unknown)
        .service(service_fn(whoami));
    let response = call(&broken, request(Method::GET, &[("x-user", "alice")])).await;
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    vault.close().await.unwrap();
}

/// Two handles on one file: a shared limit is one budget between them; an
/// in-memory one is a budget each.
#[tokio::test]
async fn shared_limits_are_one_budget_in_memory_ones_one_each() {
    let dir = common::tempdir();
    let (first, clock) = vault(dir.path()).await;
    let options = VaultOptions::new(dir.path().join("vault.db")).clock(clock.clone());
    let second = Vault::open(options_for(options))
        .await
        .expect("second handle");
    let layered = |vault: &Vault, limit: &str| {
        ServiceBuilder::new()
            .layer(RateLimitLayer::new(vault.clone(), limit, by_user))
            .service(service_fn(whoami))
    };
    let alice = || request(Method::GET, &[("x-user", "alice")]);

    let (a, b) = (
        layered(&first, "three_shared"),
        layered(&second, "three_shared"),
    );
    let statuses = [
        call(&a, alice()).await.status(),
        call(&b, alice()).await.status(),
        call(&a, alice()).await.status(),
        call(&b, alice()).await.status(),
    ];
    assert_eq!(statuses.map(|s| s.as_u16()), [200, 200, 200, 429]);

    let (a, b) = (layered(&first, "three"), layered(&second, "three"));
    for service in [&a, &b] {
        for _ in 0..3 {
            assert_eq!(call(service, alice()).await.status(), StatusCode::OK);
        }
        assert_eq!(
            call(service, alice()).await.status(),
            StatusCode::TOO_MANY_REQUESTS
        );
    }
    second.close().await.unwrap();
    first.close().await.unwrap();
}
