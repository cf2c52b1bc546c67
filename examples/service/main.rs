//! A small HTTP service that keeps all its state in one statevault file:
//! sessions, rate limits, a cache, an audit log and metrics.
//!
//! ```sh
//! cargo run --example service                      # 127.0.0.1:8080, ./service.db
//! cargo run --example service -- --listen 127.0.0.1:9000 --db /var/lib/svc/state.db
//! cargo run --example service -- --config service.toml   # statevault.toml keys: limits, cache …
//! ```
//!
//! The routes and the request path are in `app.rs`. This file opens the
//! vault (creating it and its key file `<db>.key` if missing), serves until
//! Ctrl-C or SIGTERM, lets the requests in flight finish, and closes the
//! vault before `main` returns: connections left open at exit can crash
//! the process (SPEC §7).

mod app;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use statevault::{Config, Vault, VaultOptions};
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};

#[derive(Parser)]
#[command(about = "An HTTP service over one statevault file")]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "SERVICE_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// The vault file; its key comes from $STATEVAULT_KEY, else `<db>.key`.
    /// Both are created if missing.
    #[arg(long, env = "SERVICE_DB", default_value = "service.db")]
    db: PathBuf,
    /// A `statevault.toml` whose settings apply to the vault (its
    /// `storage_paths.database` is ignored: `--db` names the file).
    #[arg(long, env = "SERVICE_CONFIG")]
    config: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt().init();
    match run(Args::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let mut options = VaultOptions::new(&args.db);
    if let Some(path) = &args.config {
        options = Config::load(path)?.apply(options)?;
    }
    let vault = Vault::open(options).await?;
    let served = async {
        let listener = TcpListener::bind(args.listen).await?;
        tracing::info!(
            "listening on http://{}, state in {}",
            listener.local_addr()?,
            vault.path().display()
        );
        app::serve(listener, vault.clone(), shutdown_signal()).await
    }
    .await;
    // Whether serving ended well or not: flush what is buffered, close
    // every connection.
    let closed = vault.close().await;
    served?;
    closed?;
    tracing::info!("vault closed");
    Ok(())
}

/// Completes at Ctrl-C (SIGINT) or SIGTERM, whichever comes first.
async fn shutdown_signal() {
    let terminate = async {
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                term.recv().await;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM; stop with Ctrl-C");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        result = tokio::signal::ctrl_c() => {
            if let Err(error) = result {
                tracing::warn!(%error, "cannot listen for Ctrl-C; shutting down");
            }
        }
        () = terminate => {}
    }
    tracing::info!("shutting down: finishing requests in flight");
}
