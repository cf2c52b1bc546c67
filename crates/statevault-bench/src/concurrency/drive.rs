//! Driving one workload with N concurrent callers until a deadline, and
//! what it yields: ops/s over the whole run, the p50 and p99 of each call's
//! latency, and the process's peak RSS during the run.
//!
//! statevault's callers are tokio tasks on the bench's multi-thread runtime,
//! sharing one vault; rusqlite's are OS threads, one connection each. A
//! caller stops at the deadline or after `limit` calls (workloads that use
//! up prepared rows, like revocation, have a limit).

use std::time::{Duration, Instant};

use serde::Serialize;
use sketches_ddsketch::{Config, DDSketch};
use statevault::{Error, Result};

use super::{ours, raw};
use crate::rss;

/// What one side did at one level of concurrency.
#[derive(Debug, Clone, Serialize)]
pub struct Figures {
    /// Calls completed by all callers, per second of the run.
    pub ops_per_sec: f64,
    /// Median latency of one call, in microseconds (±1 %).
    pub p50_us: f64,
    /// 99th percentile latency of one call, in microseconds (±1 %).
    pub p99_us: f64,
    /// The measuring process's peak resident set during the run, in MiB
    /// (the server's, for Redis); absent where `/proc` cannot tell.
    pub peak_rss_mib: Option<f64>,
    /// Calls completed.
    pub ops: u64,
    /// statevault only: the hot writer's writes per commit during the run
    /// ([`statevault::Vault::write_counts`]), where it wrote.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub writes_per_commit: Option<f64>,
}

impl Figures {
    /// Figures from known rates and percentiles (as redis-benchmark reports).
    pub fn given(ops_per_sec: f64, p50_us: f64, p99_us: f64, ops: u64) -> Figures {
        Figures {
            ops_per_sec: ops_per_sec.round(),
            p50_us: round2(p50_us),
            p99_us: round2(p99_us),
            peak_rss_mib: None,
            ops,
            writes_per_commit: None,
        }
    }

    fn measured(ops: u64, took: Duration, latencies: &DDSketch) -> Figures {
        let quantile = |q| latencies.quantile(q).ok().flatten().unwrap_or(f64::NAN);
        let mut figures = Figures::given(
            ops as f64 / took.as_secs_f64().max(1e-9),
            quantile(0.5),
            quantile(0.99),
            ops,
        );
        figures.peak_rss_mib = rss::peak_mib(None);
        figures
    }

    /// The same calls over a run that took `extra` longer (a final flush
    /// that the calls left to do).
    pub fn stretched(mut self, extra: Duration) -> Figures {
        let took = self.ops as f64 / self.ops_per_sec.max(1e-9) + extra.as_secs_f64();
        self.ops_per_sec = (self.ops as f64 / took).round();
        self
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// Latencies in microseconds, within 1 % of the true quantiles.
fn sketch() -> DDSketch {
    DDSketch::new(Config::defaults())
}

/// One caller's share: calls done and their latencies.
struct Share {
    ops: u64,
    latencies: DDSketch,
}

impl Share {
    fn merged(shares: Vec<Share>) -> Result<(u64, DDSketch)> {
        let mut all = sketch();
        let mut ops = 0;
        for share in shares {
            ops += share.ops;
            all.merge(&share.latencies)
                .map_err(|e| Error::InvalidInput {
                    what: "bench latencies",
                    reason: e.to_string(),
                })?;
        }
        Ok((ops, all))
    }
}

/// A caller that tokio tasks drive: one call at a time.
pub trait Call: Send + 'static {
    /// Makes call number `i`.
    fn call(&mut self, i: u64) -> impl Future<Output = Result<()>> + Send;
}

impl Call for ours::Caller {
    fn call(&mut self, i: u64) -> impl Future<Output = Result<()>> + Send {
        ours::Caller::call(self, i)
    }
}

/// Runs `callers` as tokio tasks until `run` passes (or each made `limit`
/// calls) and returns the callers with the figures.
pub async fn tasks<C: Call>(
    callers: Vec<C>,
    run: Duration,
    limit: u64,
) -> Result<(Vec<C>, Figures)> {
    rss::reset_peak(None);
    let started = Instant::now();
    let deadline = started + run;
    let handles: Vec<_> = callers
        .into_iter()
        .map(|mut caller| {
            tokio::spawn(async move {
                let mut share = Share {
                    ops: 0,
                    latencies: sketch(),
                };
                while share.ops < limit && Instant::now() < deadline {
                    let call = Instant::now();
                    caller.call(share.ops).await?;
                    share.latencies.add(call.elapsed().as_secs_f64() * 1e6);
                    share.ops += 1;
                    // A call that never waits would otherwise keep its
                    // worker thread from the other tasks until the deadline.
                    tokio::task::coop::consume_budget().await;
                }
                Ok::<_, Error>((caller, share))
            })
        })
        .collect();
    let mut callers = Vec::with_capacity(handles.len());
    let mut shares = Vec::with_capacity(handles.len());
    for handle in handles {
        let (caller, share) = handle.await.map_err(|e| Error::InvalidInput {
            what: "bench task",
            reason: e.to_string(),
        })??;
        callers.push(caller);
        shares.push(share);
    }
    let took = started.elapsed();
    let (ops, latencies) = Share::merged(shares)?;
    Ok((callers, Figures::measured(ops, took, &latencies)))
}

/// Runs `callers` on OS threads of their own until `run` passes (or each
/// made `limit` calls). Blocks the calling worker thread meanwhile, as
/// [`tokio::task::block_in_place`] allows.
pub fn threads(callers: Vec<raw::Caller>, run: Duration, limit: u64) -> Result<Figures> {
    tokio::task::block_in_place(|| {
        rss::reset_peak(None);
        let started = Instant::now();
        let deadline = started + run;
        let shares = std::thread::scope(|scope| {
            let handles: Vec<_> = callers
                .into_iter()
                .map(|mut caller| {
                    scope.spawn(move || {
                        let mut share = Share {
                            ops: 0,
                            latencies: sketch(),
                        };
                        while share.ops < limit && Instant::now() < deadline {
                            let call = Instant::now();
                            caller.call(share.ops)?;
                            share.latencies.add(call.elapsed().as_secs_f64() * 1e6);
                            share.ops += 1;
                        }
                        Ok::<_, Error>(share)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().map_err(|_| Error::InvalidInput {
                        what: "bench thread",
                        reason: "a rusqlite caller panicked".into(),
                    })?
                })
                .collect::<Result<Vec<Share>>>()
        })?;
        let took = started.elapsed();
        let (ops, latencies) = Share::merged(shares)?;
        Ok(Figures::measured(ops, took, &latencies))
    })
}
