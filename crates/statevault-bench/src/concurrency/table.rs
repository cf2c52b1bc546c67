//! The concurrency report as text: per workload, one row per level with
//! each side's ops/s, p50, p99 and peak RSS, then what each side's call did.

use serde_json::Value;

use super::Concurrency;

/// The columns of one side: ops/s, p50 µs, p99 µs, peak RSS MiB.
fn side(figures: &Value) -> String {
    if let Some(why) = figures.get("skipped").and_then(Value::as_str) {
        let short: String = why.chars().take(30).collect();
        return format!("{:>34}", format!("skipped: {short}"));
    }
    let number = |key: &str| figures.get(key).and_then(Value::as_f64);
    let rss = number("peak_rss_mib").map_or_else(|| "-".to_owned(), |m| format!("{m:.0}"));
    format!(
        "{:>9.0} {:>8.1} {:>9.1} {:>5}",
        number("ops_per_sec").unwrap_or(f64::NAN),
        number("p50_us").unwrap_or(f64::NAN),
        number("p99_us").unwrap_or(f64::NAN),
        rss,
    )
}

pub fn lines(report: &Concurrency) -> Vec<String> {
    let redis = &report.redis;
    let (baseline, how) = report
        .baseline
        .iter()
        .next()
        .map_or(("baseline", ""), |(name, how)| (*name, how.as_str()));
    let mut lines = vec![
        format!(
            "concurrency {:?}, {} s per figure",
            report.levels, report.seconds_per_figure
        ),
        format!("  statevault: {}", report.statevault),
        format!("  {baseline}: {how}"),
        format!(
            "  redis {}: {}; durable: {}; client: {}",
            redis.version.as_deref().unwrap_or("-"),
            redis.server,
            redis.durable_server,
            redis.client
        ),
    ];
    let header = format!(
        "{:>9} {:>8} {:>9} {:>5}",
        "ops/s", "p50 µs", "p99 µs", "MiB"
    );
    for (name, w) in &report.workloads {
        let durable = w["redis_durable"].as_bool().unwrap_or(false);
        lines.push(String::new());
        lines.push(format!(
            "{name:<24} | statevault {:>22} | {baseline:<10} {:>22} | redis {:>27}{}",
            "",
            "",
            "",
            if durable {
                " | redis, fsync always"
            } else {
                ""
            }
        ));
        lines.push(format!(
            "{:>24} | {header} | {header} | {header}{}",
            "callers",
            if durable {
                format!(" | {header}")
            } else {
                String::new()
            }
        ));
        for level in w["levels"].as_array().into_iter().flatten() {
            let mut row = format!(
                "{:>24} | {} | {} | {}",
                level["callers"].as_u64().unwrap_or(0),
                side(&level["statevault"]),
                side(&level[baseline]),
                side(&level["redis"]),
            );
            if durable {
                row.push_str(&format!(" | {}", side(&level["redis_durable"])));
            }
            lines.push(row);
        }
        for who in ["statevault", baseline, "redis"] {
            if let Some(what) = w[who].as_str() {
                lines.push(format!("  {who}: {what}"));
            }
        }
    }
    lines
}
