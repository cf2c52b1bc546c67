//! Redis's side: a `redis-server` of the bench's own on a free loopback
//! port, driven by `redis-benchmark -c N` with an explicit command line per
//! role. The server runs with `--save ''` and either `--appendonly no`
//! (memory only, what a cache or session store usually runs) or
//! `--appendonly yes --appendfsync always` (every write fsynced before the
//! reply, the durable peer). When the binaries are missing, or a run fails,
//! the figures say so; they are never made up.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;
use statevault::{Error, Result};

use super::drive::Figures;
use crate::rss;

/// A Redis column: figures, or why there are none.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Peer {
    Measured(Figures),
    Skipped { skipped: String },
}

impl Peer {
    pub fn skipped(why: impl Into<String>) -> Peer {
        Peer::Skipped {
            skipped: why.into(),
        }
    }
}

/// The token bucket each limit check runs (`EVALSHA`): refill by the
/// server's clock, spend one token if there is one, keep the state in a
/// hash that expires once it would be full again.
pub const TOKEN_BUCKET: &str = "\
local rate, capacity, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local b = redis.call('HMGET', KEYS[1], 'tokens', 'last')
local tokens = tonumber(b[1]) or capacity
local last = tonumber(b[2]) or now
tokens = math.min(capacity, tokens + math.max(0, now - last) * rate)
local allowed = tokens >= cost
if allowed then tokens = tokens - cost end
redis.call('HSET', KEYS[1], 'tokens', tokens, 'last', now)
redis.call('PEXPIRE', KEYS[1], math.ceil(capacity / rate) * 2)
return allowed and 1 or 0";

/// A `redis-server` child process, stopped when dropped.
pub struct Server {
    child: Child,
    port: u16,
    /// Where an append-only file goes; removed with the server.
    _dir: tempfile::TempDir,
    /// The SHA-1 of [`TOKEN_BUCKET`], loaded when the server started.
    pub script: String,
}

impl Server {
    /// Starts a server with `persistence` flags and loads the token
    /// bucket, or says why it cannot.
    pub fn start(persistence: &str) -> std::result::Result<Server, String> {
        for tool in ["redis-server", "redis-benchmark"] {
            if !on_path(tool) {
                return Err(format!(
                    "{tool} is not installed (Debian: redis-server, redis-tools)"
                ));
            }
        }
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| e.to_string())?
            .port();
        let child = Command::new("redis-server")
            .args([
                "--bind",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--save",
                "",
            ])
            .args(persistence.split(' '))
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start redis-server: {e}"))?;
        let mut server = Server {
            child,
            port,
            _dir: dir,
            script: String::new(),
        };
        server.wait_ready()?;
        server.script = server
            .call(&["SCRIPT", "LOAD", TOKEN_BUCKET])
            .map_err(|e| format!("cannot load the token bucket: {e}"))?;
        Ok(server)
    }

    /// Waits (up to 5 s) until the server answers `PING`.
    fn wait_ready(&self) -> std::result::Result<(), String> {
        let started = Instant::now();
        loop {
            match self.call(&["PING"]) {
                Ok(reply) if reply == "PONG" => return Ok(()),
                _ if started.elapsed() > Duration::from_secs(5) => {
                    return Err("redis-server did not answer within 5 s".into());
                }
                _ => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    /// Sends one command and returns its reply's text (a status, an error,
    /// an integer or a bulk string), for setup only.
    pub fn call(&self, args: &[&str]) -> std::io::Result<String> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port))?;
        let mut request = format!("*{}\r\n", args.len());
        for arg in args {
            request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
        }
        stream.write_all(request.as_bytes())?;
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        reader.read_line(&mut line)?;
        let line = line.trim_end();
        match line.split_at_checked(1) {
            Some(("$", len)) => {
                let len: usize = len.parse().unwrap_or(0);
                let mut body = vec![0; len];
                reader.read_exact(&mut body)?;
                Ok(String::from_utf8_lossy(&body).into_owned())
            }
            Some((_, rest)) => Ok(rest.to_owned()),
            None => Ok(String::new()),
        }
    }

    /// The server's version, as `INFO server` reports it.
    pub fn version(&self) -> String {
        self.call(&["INFO", "server"])
            .ok()
            .and_then(|info| {
                info.lines()
                    .find_map(|l| l.strip_prefix("redis_version:").map(str::to_owned))
            })
            .unwrap_or_default()
    }

    /// Writes `keyspace` keys with `command` (pipelined, 8 clients), so
    /// that a role reading or updating them finds them.
    pub fn populate(&self, command: &[String], keyspace: u64) -> Result<()> {
        let requests = (keyspace * 8).to_string();
        self.benchmark(8, &requests, keyspace, command, &["-P", "32"])
            .map(drop)
    }

    /// `command` from `clients` connections for about `run`, as
    /// redis-benchmark measures it: a short run sizes the real one. The
    /// peak RSS is the server's during the real run.
    pub fn measure(
        &self,
        clients: usize,
        keyspace: u64,
        command: &[String],
        run: Duration,
    ) -> Result<Figures> {
        let first = (clients as u64 * 20).max(500);
        let probe = self.benchmark(clients, &first.to_string(), keyspace, command, &[])?;
        let requests = (probe.ops_per_sec * run.as_secs_f64()) as u64;
        let requests = requests.clamp(first, 5_000_000);
        rss::reset_peak(Some(self.child.id()));
        let mut figures = self.benchmark(clients, &requests.to_string(), keyspace, command, &[])?;
        figures.peak_rss_mib = rss::peak_mib(Some(self.child.id()));
        Ok(figures)
    }

    fn benchmark(
        &self,
        clients: usize,
        requests: &str,
        keyspace: u64,
        command: &[String],
        extra: &[&str],
    ) -> Result<Figures> {
        let out = Command::new("redis-benchmark")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-c", &clients.to_string(), "-n", requests])
            .args(["-r", &keyspace.to_string(), "--csv"])
            .args(extra)
            .args(command)
            .output()
            .map_err(|source| Error::Io {
                path: "redis-benchmark".into(),
                source,
            })?;
        let text = String::from_utf8_lossy(&out.stdout);
        parse_csv(&text, requests.parse().unwrap_or(0)).ok_or_else(|| Error::InvalidInput {
            what: "redis-benchmark",
            reason: format!(
                "no figures in its output ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The figures of redis-benchmark's `--csv` output: its last line ends
/// with rps, then the average, min, p50, p95, p99 and max latency in ms.
fn parse_csv(text: &str, requests: u64) -> Option<Figures> {
    let line = text.lines().rev().find(|l| !l.trim().is_empty())?;
    let fields: Vec<f64> = line
        .rsplit(',')
        .take(7)
        .map(|f| f.trim().trim_matches('"').parse().ok())
        .collect::<Option<_>>()?;
    // Reversed: max, p99, p95, p50, min, avg, rps.
    let &[_, p99, _, p50, _, _, rps] = fields.as_slice() else {
        return None;
    };
    Some(Figures::given(rps, p50 * 1e3, p99 * 1e3, requests))
}

/// Whether `tool` is an executable file on `PATH`.
fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(tool).is_file()))
}

/// The command line, as the report shows it: long arguments (values,
/// scripts' hashes) abbreviated.
pub fn shown(clients: &str, keyspace: u64, command: &[String]) -> String {
    let args: Vec<String> = command
        .iter()
        .map(|a| {
            if a.len() > 48 {
                format!("<{} bytes>", a.len())
            } else if a.contains(' ') || a.contains('"') {
                format!("'{a}'")
            } else {
                a.clone()
            }
        })
        .collect();
    format!(
        "redis-benchmark -c {clients} -n <sized to the run> -r {keyspace} {}",
        args.join(" ")
    )
}

#[cfg(test)]
mod tests {
    use super::parse_csv;

    #[test]
    fn reads_redis_benchmark_csv() {
        let out = "\"test\",\"rps\",\"avg_latency_ms\",\"min_latency_ms\",\"p50_latency_ms\",\"p95_latency_ms\",\"p99_latency_ms\",\"max_latency_ms\"\n\
                   \"HSET k:__rand_int__ a b, c\",\"29850.75\",\"0.177\",\"0.048\",\"0.167\",\"0.287\",\"0.415\",\"0.623\"\n";
        let f = parse_csv(out, 2000).unwrap();
        assert_eq!(f.ops_per_sec, 29851.0);
        assert_eq!(f.p50_us, 167.0);
        assert_eq!(f.p99_us, 415.0);
        assert_eq!(f.ops, 2000);
    }
}
