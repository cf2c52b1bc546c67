//! The example service (`examples/service/`) on a loopback port over a
//! temporary vault with a fake clock, driven by a real HTTP client: login,
//! the API's request path (session, limits, cache, audit, metrics),
//! logout, `/health` and `/metrics`, then a graceful shutdown.

#![cfg(feature = "tower")]

mod common;
#[path = "../examples/service/app.rs"]
mod service;

use std::collections::BTreeSet;
use std::io::Write;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST, RETRY_AFTER, WWW_AUTHENTICATE};
use hyper::{HeaderMap, Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use statevault::AuditQuery;
use tokio::net::{TcpListener, TcpStream};

/// One HTTP/1.1 request per connection, as plainly as hyper allows.
struct Client {
    addr: SocketAddr,
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).expect("JSON body")
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

impl Client {
    async fn send(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Reply {
        let stream = TcpStream::connect(self.addr).await.expect("connect");
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        tokio::spawn(conn);
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, self.addr.to_string())
            .header(CONTENT_TYPE, "application/json");
        if let Some(token) = token {
            request = request.header(AUTHORIZATION, format!("Bearer {token}"));
        }
        let body = body.map_or_else(Bytes::new, |b| Bytes::from(b.to_string()));
        let response = sender
            .send_request(request.body(Full::new(body)).expect("request"))
            .await
            .expect("response");
        let (parts, body) = response.into_parts();
        let body = body.collect().await.expect("body").to_bytes();
        Reply {
            status: parts.status,
            headers: parts.headers,
            body: String::from_utf8(body.to_vec()).expect("UTF-8 body"),
        }
    }

    async fn get(&self, path: &str, token: Option<&str>) -> Reply {
        self.send(Method::GET, path, token, None).await
    }

    async fn login(&self, user: &str, password: &str) -> Reply {
        let body = json!({ "user": user, "password": password });
        self.send(Method::POST, "/login", None, Some(body)).await
    }
}

/// The value of the sample line `series` (name and labels, exactly as
/// printed) in a Prometheus exposition.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let value = line.strip_prefix(series)?.strip_prefix(' ')?;
        value.parse().ok()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_service_end_to_end() {
    let dir = common::tempdir();
    let (vault, clock) = common::vault(dir.path()).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let client = Client {
        addr: listener.local_addr().expect("addr"),
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(service::serve(listener, vault.clone(), async {
        let _ = stopped.await;
    }));

    // No session, or a made-up one: 401.
    assert_eq!(
        client.get("/search?q=blue", None).await.status,
        StatusCode::UNAUTHORIZED
    );
    let bogus = client.get("/search?q=blue", Some("0123abcd")).await;
    assert_eq!(bogus.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        bogus.header(WWW_AUTHENTICATE.as_str()),
        Some(r#"Bearer error="invalid_token", error_description="unknown token""#)
    );

    // A wrong password is refused; a right one gets a token.
    assert_eq!(
        client.login("alice", "").await.status,
        StatusCode::UNAUTHORIZED
    );
    let login = client.login("alice", "correct horse").await;
    assert_eq!(login.status, StatusCode::OK, "{}", login.body);
    let token = login.json()["token"].as_str().expect("token").to_owned();
    assert_eq!(token.len(), 76);
    let token = Some(token.as_str());

    // The same query twice: the loader runs once, the second is a cache hit.
    let l1_hits = vault.cache().stats().await.expect("stats").l1.hits;
    let first = client.get("/search?q=blue", token).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.body);
    assert_eq!(first.header("x-cache"), Some("miss"));
    // Allowed calls say where the caller stands: search_queries is 20 a
    // minute (plus a burst of 5) and 200 an hour; 24 of 25 are left.
    assert_eq!(
        first.header("ratelimit-policy"),
        Some(r#""search_queries";q=20;w=60, "search_queries/3600s";q=200;w=3600"#)
    );
    let left = first.header("ratelimit").expect("RateLimit");
    assert!(left.starts_with(r#""search_queries";r=24;t="#), "{left}");
    // Then the user's api_calls, whose layer is outside the route's.
    let lines: Vec<_> = first.headers.get_all("ratelimit").iter().collect();
    assert_eq!(lines.len(), 2);
    assert!(
        lines[1]
            .to_str()
            .unwrap()
            .starts_with(r#""api_calls";r=119;t="#)
    );
    assert_eq!(first.json()["tracks"][0]["id"], "blue-1");
    let second = client.get("/search?q=blue", token).await;
    assert_eq!(second.header("x-cache"), Some("hit"));
    assert_eq!(second.body, first.body);
    let stats = vault.cache().stats().await.expect("stats");
    assert_eq!(stats.l1.hits, l1_hits + 1);

    // search_queries allows 20 a minute plus a burst of 5: the 26th is refused.
    let mut allowed = 2;
    let refused = loop {
        let reply = client.get("/search?q=blue", token).await;
        if reply.status != StatusCode::OK {
            break reply;
        }
        allowed += 1;
        assert!(allowed <= 25, "the limit never refused");
    };
    assert_eq!(allowed, 25);
    assert_eq!(
        refused.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        refused.body
    );
    let retry_after: u64 = refused
        .header(RETRY_AFTER.as_str())
        .expect("Retry-After")
        .parse()
        .expect("whole seconds");
    assert!((1..=3600).contains(&retry_after), "{retry_after}");
    assert_eq!(
        refused.header("ratelimit"),
        Some(format!(r#""search_queries";r=0;t={retry_after}"#).as_str())
    );

    // Still refused a second early; allowed once Retry-After has passed.
    clock.advance(Duration::from_secs(retry_after - 1));
    let early = client.get("/search?q=blue", token).await;
    assert_eq!(early.status, StatusCode::TOO_MANY_REQUESTS);
    clock.advance(Duration::from_secs(1));
    let again = client.get("/search?q=blue", token).await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.body);

    // Bad input is a 400, not a 500.
    assert_eq!(
        client.get("/search?q=", token).await.status,
        StatusCode::BAD_REQUEST
    );

    // /health: the report, and a status code that follows it.
    let health = client.get("/health", None).await;
    let report = health.json();
    let expected = if report["status"] == "critical" {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    assert_eq!(health.status, expected, "{}", health.body);
    let components: BTreeSet<&str> = report["components"]
        .as_array()
        .expect("components")
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert!(
        components.contains("file") && components.contains("cache"),
        "{components:?}"
    );

    // /metrics: every call above, counted and timed, in a valid exposition.
    let scraped = client.get("/metrics", None).await;
    assert_eq!(scraped.status, StatusCode::OK);
    assert_eq!(
        scraped.header(CONTENT_TYPE.as_str()),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let text = &scraped.body;
    let calls = |auth: &str, endpoint: &str, method: &str, status: u16| {
        let series = format!(
            r#"api_requests_total{{authenticated="{auth}",endpoint="{endpoint}",method="{method}",status="{status}"}}"#
        );
        sample(text, &series)
    };
    assert_eq!(calls("true", "/search", "GET", 200), Some(26.0), "{text}");
    assert_eq!(calls("true", "/search", "GET", 429), Some(2.0), "{text}");
    assert_eq!(calls("true", "/search", "GET", 400), Some(1.0), "{text}");
    assert_eq!(calls("false", "/search", "GET", 401), Some(2.0), "{text}");
    assert_eq!(calls("false", "/login", "POST", 401), Some(1.0), "{text}");
    assert_eq!(calls("false", "/login", "POST", 200), Some(1.0), "{text}");
    let health_status = health.status.as_u16();
    assert_eq!(
        calls("false", "/health", "GET", health_status),
        Some(1.0),
        "{text}"
    );
    let timed = r#"api_request_duration_seconds_count{endpoint="/search",method="GET"}"#;
    assert_eq!(sample(text, timed), Some(31.0), "{text}");
    // 26 searches for one query: one miss, then 25 hits.
    let l1_hits = r#"statevault_cache_hits_total{level="l1"}"#;
    assert_eq!(sample(text, l1_hits), Some(25.0), "{text}");
    if let Some(promtool) = common::tool("promtool") {
        let mut check = Command::new(promtool)
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run promtool");
        check
            .stdin
            .take()
            .expect("stdin")
            .write_all(text.as_bytes())
            .expect("feed promtool");
        let out = check.wait_with_output().expect("promtool");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // Logout revokes the session: the token is refused from then on.
    let logout = client.send(Method::POST, "/logout", token, None).await;
    assert_eq!(logout.status, StatusCode::NO_CONTENT, "{}", logout.body);
    let after = client.get("/search?q=blue", token).await;
    assert_eq!(after.status, StatusCode::UNAUTHORIZED);
    let why = after.header(WWW_AUTHENTICATE.as_str()).expect("challenge");
    assert!(
        why.ends_with(r#"error_description="session revoked""#),
        "{why}"
    );
    let twice = client.send(Method::POST, "/logout", token, None).await;
    assert_eq!(twice.status, StatusCode::UNAUTHORIZED);

    // auth_attempts: 5 per 15 minutes, right or wrong; the 6th is a 429.
    for _ in 0..3 {
        assert_eq!(client.login("alice", "pw").await.status, StatusCode::OK);
    }
    let locked = client.login("alice", "pw").await;
    assert_eq!(
        locked.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        locked.body
    );
    assert!(locked.header(RETRY_AFTER.as_str()).is_some());
    assert_eq!(
        locked.header("ratelimit-policy"),
        Some(r#""auth_attempts";q=5;w=900"#)
    );
    assert_eq!(locked.json()["error"], "too many attempts");
    assert_eq!(client.login("bob", "pw").await.status, StatusCode::OK);

    // Every step left its audit event.
    vault.flush().await.expect("flush");
    let events = vault
        .audit()
        .query(&AuditQuery {
            user_id: Some("alice".into()),
            ..Default::default()
        })
        .await
        .expect("audit");
    let count = |action: &str| events.iter().filter(|e| e.action == action).count();
    assert_eq!(count("search"), 26);
    assert_eq!(count("login"), 4);
    assert_eq!(count("login.failed"), 1);
    assert_eq!(count("login.locked_out"), 1);
    assert_eq!(count("logout"), 1);
    assert!(vault.audit().verify().await.expect("verify").ok);

    // Graceful shutdown, then the vault closes cleanly.
    stop.send(()).expect("server running");
    server.await.expect("server task").expect("serve");
    vault.close().await.expect("close");
}
