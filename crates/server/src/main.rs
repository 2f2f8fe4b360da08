//! The `livebattle` binary: parse the configuration, log, listen, serve until SIGTERM/SIGINT.

use std::io::Write as _;
use std::process::ExitCode;

use clap::Parser;
use livebattle_server::{
    copy_store, init_logging, serve_engine, shutdown_signal, start_engine, Cli, Command, Config,
    LogFormat,
};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Transparent huge pages off for this process. mimalloc asks for them on its segments, and the
/// kernel then zeroes 2 MiB at the first touch of each: in the timers bench (1,000,000 battles)
/// runs of such faults held a shard for up to 27 ms (`perf`: `clear_page_erms` under
/// `do_huge_pmd_anonymous_page` under `mi_page_free_list_extend`). With 4 KiB pages the zeroing
/// comes a page at a time, and a battle costs less memory (461 against 554 bytes at 1M).
fn no_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_THP_DISABLE takes plain integers and touches no memory of ours.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

fn main() -> ExitCode {
    no_transparent_huge_pages();
    let cli = Cli::parse();
    if let Some(command) = cli.command.clone() {
        return one_off(command);
    }
    let config = match Config::load(cli) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("livebattle: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(config.log_format);
    let Some(runtime) = runtime() else {
        return ExitCode::FAILURE;
    };
    runtime.block_on(run(config))
}

async fn run(config: Config) -> ExitCode {
    let listener = match tokio::net::TcpListener::bind(config.listen).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(listen = %config.listen, error = %e, "cannot listen");
            return ExitCode::FAILURE;
        }
    };
    let addr = listener.local_addr().unwrap_or(config.listen);
    // Recovery first (with a data dir: load every battle and re-arm its timer).
    let engine = match start_engine(&config).await {
        Ok(engine) => engine,
        Err(e) => {
            tracing::error!(error = %e, "the engine did not start");
            eprintln!("livebattle: the engine did not start: {e}");
            return ExitCode::FAILURE;
        }
    };
    // The one line on stdout, once it serves: scripts and tests read the port from it.
    println!("listening on {addr}");
    let _ = std::io::stdout().flush();
    tracing::info!(%addr, "listening");
    match serve_engine(engine, config, listener, shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "stopped");
            ExitCode::FAILURE
        }
    }
}

/// Runs a one-off task and exits: 0 when it succeeded, 1 when it failed (said on stderr).
fn one_off(command: Command) -> ExitCode {
    init_logging(LogFormat::default());
    let Some(runtime) = runtime() else {
        return ExitCode::FAILURE;
    };
    match command {
        Command::CopyStore { from, to, store } => {
            match runtime.block_on(copy_store(&from, &to, store)) {
                Ok((source, copied)) => {
                    println!(
                        "copied {} battles, {} evicted ids and {} notifications from {} ({}) to {} ({}); read back the same",
                        copied.battles,
                        copied.evicted,
                        copied.notifications,
                        from.display(),
                        source.name(),
                        to.display(),
                        store.name()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("livebattle copy-store: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// The multi-threaded tokio runtime (`None`, said on stderr, when it cannot start).
fn runtime() -> Option<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| eprintln!("livebattle: cannot start the runtime: {e}"))
        .ok()
}
