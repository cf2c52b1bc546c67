//! `statevault`: the admin CLI. It uses only the library's public API; each
//! command group lives in its own file under `cli/`.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
