//! Peak resident memory during a workload, read from Linux's `/proc`: the
//! peak (`VmHWM`) is reset before the workload starts, by writing `5` to
//! `clear_refs`, and read once it ends. Elsewhere, or where `/proc` refuses,
//! there is no figure (`None`), never a guess.
//!
//! The peak covers the whole process: what it held before the reset counts
//! too, since it stays resident.

/// `/proc/self` or `/proc/PID`.
fn proc_dir(pid: Option<u32>) -> String {
    pid.map_or_else(|| "/proc/self".to_owned(), |pid| format!("/proc/{pid}"))
}

/// Resets the peak of this process (`None`) or of a child (`Some(pid)`).
/// Returns whether it could.
pub fn reset_peak(pid: Option<u32>) -> bool {
    std::fs::write(format!("{}/clear_refs", proc_dir(pid)), "5").is_ok()
}

/// The peak resident set since the last reset, in MiB.
pub fn peak_mib(pid: Option<u32>) -> Option<f64> {
    let status = std::fs::read_to_string(format!("{}/status", proc_dir(pid))).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some((kib / 1024.0 * 10.0).round() / 10.0)
}
