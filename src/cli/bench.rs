//! `statevault bench`: runs the `statevault-bench` binary (the workspace's
//! `crates/statevault-bench`) found beside this executable, with the same
//! arguments and environment, and exits with its status.
//!
//! The harness is a package of its own so that the library does not carry
//! it; it depends on `statevault`, so this binary cannot link it (a package
//! cycle) and starts it instead.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use statevault::{Error, Result};

/// The harness's binary, looked for beside `statevault`.
const HARNESS: &str = "statevault-bench";

#[derive(Debug, clap::Args)]
#[command(disable_help_flag = true, disable_version_flag = true)]
pub struct Args {
    /// Passed to `statevault-bench` as they are: --json, --quick, --plain,
    /// --sweep-rows N, --only NAMES, --concurrency LEVELS (`statevault bench
    /// --help` lists them).
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "ARGS"
    )]
    args: Vec<OsString>,
}

/// Runs the harness and exits as it did; if it is not beside this binary,
/// says how to build or install it.
pub fn launch(args: Args) -> Result<ExitCode> {
    launch_on(args, None)
}

/// [`launch`], with `--db URL` passed on: the harness measures the
/// workloads that run on PostgreSQL there, in a database of its own.
pub fn launch_on(args: Args, url: Option<&str>) -> Result<ExitCode> {
    let harness = harness_path()?;
    if !harness.is_file() {
        super::print_error(format_args!(
            "`statevault bench` runs {}, which is missing: build it with \
             `cargo build --release -p statevault-bench` (it lands beside \
             target/release/statevault), or install it with \
             `cargo install --path crates/statevault-bench`",
            harness.display()
        ));
        return Ok(ExitCode::FAILURE);
    }
    let mut command = std::process::Command::new(&harness);
    if let Some(url) = url {
        command.args(["--db", url]);
    }
    let status = command
        .args(args.args)
        .status()
        .map_err(|source| Error::Io {
            path: harness.clone(),
            source,
        })?;
    Ok(exit_code(status))
}

/// `statevault-bench` in the directory of the running executable.
fn harness_path() -> Result<PathBuf> {
    let exe = std::env::current_exe().map_err(|source| Error::Io {
        path: PathBuf::from("the running executable"),
        source,
    })?;
    let dir = exe.parent().unwrap_or(Path::new("."));
    Ok(dir.join(format!("{HARNESS}{}", std::env::consts::EXE_SUFFIX)))
}

/// The harness's exit status as ours; killed by a signal, 128 + its number,
/// as a shell reports it.
fn exit_code(status: std::process::ExitStatus) -> ExitCode {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        (None, Some(signal)) => ExitCode::from(u8::try_from(128 + signal).unwrap_or(1)),
        (None, None) => ExitCode::FAILURE,
    }
}
