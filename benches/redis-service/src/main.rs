//! The example service's request path (`examples/service`) wired to Redis,
//! as a service would be built without statevault. `benches/service.sh`
//! drives both with `wrk`.
//!
//! What stands in for each facet, per `GET /search`:
//! - **sessions:** tower-sessions with its Redis store (a GET and a
//!   MessagePack decode of the record; no idle timeout, which would rewrite
//!   the record on every request);
//! - **limits:** a Lua token bucket per limit (`api_calls`, then
//!   `search_queries`, two windows each), one `EVALSHA` per limit, as two
//!   stacked middlewares would make;
//! - **cache:** `GET`, and on a miss `SET … EX` with the namespace's TTL;
//! - **audit:** a JSON line appended to a file through a buffer flushed
//!   every second (no fsync), as statevault's buffered `append` is flushed;
//! - **metrics:** in-process counters and a duration sum per route, method
//!   and status, kept in memory only.

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::{Query, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use clap::Parser;
use fred::prelude::{ClientLike, Config, Expiration, KeysInterface, LuaInterface, Pool};
use serde::Deserialize;
use serde_json::{Value, json};
use tower_sessions::{Expiry, Session, SessionManagerLayer};
use tower_sessions_redis_store::RedisStore;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:8081")]
    listen: SocketAddr,
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    redis: String,
    /// The audit log's JSON-lines file.
    #[arg(long, default_value = "audit.jsonl")]
    audit: PathBuf,
    /// Tokens per window for every limit (minute and hour).
    #[arg(long, default_value_t = 1e9)]
    capacity: f64,
    /// Connections in the Redis pool.
    #[arg(long, default_value_t = 8)]
    pool: usize,
}

/// Refills each bucket (KEYS) to ARGV[1] (ms) and takes ARGV[2] tokens from
/// every one if every one has them; then ARGV[3 + 2i], ARGV[4 + 2i] are the
/// capacity and the refill per ms of KEYS[i + 1]. 1: allowed, 0: refused.
const BUCKET: &str = r"
local now, cost = tonumber(ARGV[1]), tonumber(ARGV[2])
local left = {}
for i = 1, #KEYS do
  local cap, rate = tonumber(ARGV[1 + 2 * i]), tonumber(ARGV[2 + 2 * i])
  local b = redis.call('HMGET', KEYS[i], 't', 'ts')
  local t = math.min(cap, (tonumber(b[1]) or cap) + (now - (tonumber(b[2]) or now)) * rate)
  if t < cost then return 0 end
  left[i] = t - cost
end
for i = 1, #KEYS do
  redis.call('HSET', KEYS[i], 't', left[i], 'ts', now)
  redis.call('PEXPIRE', KEYS[i], 3600000)
end
return 1
";

/// Calls and their summed duration, by route, method and status.
type Calls = HashMap<(String, String, u16), (u64, Duration)>;

#[derive(Clone)]
struct App {
    redis: Pool,
    bucket: String,
    capacity: f64,
    audit: Arc<Mutex<std::io::BufWriter<std::fs::File>>>,
    metrics: Arc<Mutex<Calls>>,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let redis = Pool::new(Config::from_url(&args.redis)?, None, None, None, args.pool)?;
    redis.init().await?;
    let bucket: String = redis.script_load(BUCKET).await?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&args.audit)?;
    let app = App {
        redis: redis.clone(),
        bucket,
        capacity: args.capacity,
        audit: Arc::new(Mutex::new(std::io::BufWriter::new(file))),
        metrics: Arc::default(),
    };
    let audit = app.audit.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(1));
        loop {
            every.tick().await;
            if let Err(e) = audit.lock().unwrap().flush() {
                eprintln!("error: audit flush: {e}");
            }
        }
    });
    let sessions = SessionManagerLayer::new(RedisStore::new(redis))
        .with_secure(false)
        .with_expiry(Expiry::OnSessionEnd);
    let router = Router::new()
        .route("/login", post(login))
        .route("/search", get(search))
        .route("/logout", post(logout))
        .layer(middleware::from_fn_with_state(app.clone(), record_call))
        .layer(sessions)
        .with_state(app.clone());
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    axum::serve(listener, router)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    app.audit.lock().unwrap().flush()?;
    Ok(())
}

/// Wall-clock milliseconds (this service has no vault clock to read).
#[allow(clippy::disallowed_methods)]
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl App {
    /// The limit's two windows (a minute and an hour) for `subject`.
    async fn allowed(&self, limit: &str, subject: &str) -> Result<bool, StatusCode> {
        let keys = vec![
            format!("limit:{limit}:{subject}:60"),
            format!("limit:{limit}:{subject}:3600"),
        ];
        let (cap, per_min, per_hour) = (self.capacity, 60_000.0, 3_600_000.0);
        let args = vec![
            now_ms().to_string(),
            "1".into(),
            cap.to_string(),
            (cap / per_min).to_string(),
            cap.to_string(),
            (cap / per_hour).to_string(),
        ];
        let allowed: i64 = self
            .redis
            .evalsha(&self.bucket, keys, args)
            .await
            .map_err(internal)?;
        Ok(allowed == 1)
    }

    fn audit(&self, event: Value) {
        let mut line = event.to_string();
        line.push('\n');
        if let Err(e) = self.audit.lock().unwrap().write_all(line.as_bytes()) {
            eprintln!("error: audit append: {e}");
        }
    }
}

fn internal(e: impl std::fmt::Display) -> StatusCode {
    eprintln!("error: {e}");
    StatusCode::INTERNAL_SERVER_ERROR
}

async fn record_call(State(app): State<App>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let (route, method) = (
        request.uri().path().to_owned(),
        request.method().to_string(),
    );
    let response = next.run(request).await;
    let mut metrics = app.metrics.lock().unwrap();
    let entry = metrics
        .entry((route, method, response.status().as_u16()))
        .or_default();
    entry.0 += 1;
    entry.1 += started.elapsed();
    response
}

#[derive(Deserialize)]
struct Login {
    user: String,
    password: String,
}

async fn login(
    State(app): State<App>,
    session: Session,
    Json(login): Json<Login>,
) -> Result<Response, StatusCode> {
    if !app.allowed("auth_attempts", &login.user).await? {
        return Err(StatusCode::TOO_MANY_REQUESTS);
    }
    if login.password.is_empty() {
        return Err(StatusCode::UNAUTHORIZED);
    }
    session.cycle_id().await.map_err(internal)?;
    session
        .insert("user", &login.user)
        .await
        .map_err(internal)?;
    app.audit(json!({ "kind": "auth", "action": "login", "user": login.user, "at": now_ms() }));
    Ok(Json(json!({ "user": login.user })).into_response())
}

#[derive(Deserialize)]
struct SearchParams {
    q: String,
}

async fn search(
    State(app): State<App>,
    session: Session,
    Query(params): Query<SearchParams>,
) -> Result<Response, StatusCode> {
    let user: String = session
        .get("user")
        .await
        .map_err(internal)?
        .ok_or(StatusCode::UNAUTHORIZED)?;
    if !app.allowed("api_calls", &user).await? || !app.allowed("search_queries", &user).await? {
        return Err(StatusCode::TOO_MANY_REQUESTS);
    }
    if params.q.trim().is_empty() {
        return Err(StatusCode::BAD_REQUEST);
    }
    let key = format!("cache:search:tracks:{}", params.q);
    let cached: Option<String> = app.redis.get(&key).await.map_err(internal)?;
    let (results, hit) = match cached {
        Some(text) => (serde_json::from_str(&text).map_err(internal)?, true),
        None => {
            let tracks: Vec<Value> = (1..=3)
                .map(|i| json!({ "id": format!("{}-{i}", params.q), "title": format!("{} ({i})", params.q) }))
                .collect();
            let results = json!({ "q": params.q, "tracks": tracks });
            let _: () = app
                .redis
                .set(
                    &key,
                    results.to_string(),
                    Some(Expiration::EX(300)),
                    None,
                    false,
                )
                .await
                .map_err(internal)?;
            (results, false)
        }
    };
    app.audit(json!({
        "kind": "api_call", "action": "search", "user": user,
        "details": { "q": params.q, "cached": hit }, "at": now_ms(),
    }));
    let cache = if hit { "hit" } else { "miss" };
    Ok(([("x-cache", cache)], Json::<Value>(results)).into_response())
}

async fn logout(State(app): State<App>, session: Session) -> Result<StatusCode, StatusCode> {
    let user: Option<String> = session.get("user").await.map_err(internal)?;
    let user = user.ok_or(StatusCode::UNAUTHORIZED)?;
    session.flush().await.map_err(internal)?;
    app.audit(json!({ "kind": "auth", "action": "logout", "user": user, "at": now_ms() }));
    Ok(StatusCode::NO_CONTENT)
}
