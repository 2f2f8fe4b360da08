//! `livebattle-simulate`: a Tencent-faithful battle webhook sender for load and correctness runs
//! against a livebattle server.
//!
//! ```text
//! livebattle-simulate --url http://127.0.0.1:8080/callback --token T --rate 20 --battles 40 \
//!     --min-duration-ms 1000 --max-duration-ms 3000 --verify
//! ```
//!
//! Every battle follows one scenario (`--mix`), so the simulator knows the `end_reason` the
//! server must reach; `--verify` checks it through `GET /v1/battles/{id}`. The process exits
//! non-zero on any HTTP error or mismatch, after one `summary:` line.

mod agenda;
mod args;
mod http;
mod plan;
mod run;
mod tencent;
mod watch;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = args::Args::parse();
    if let Err(e) = args.validate() {
        eprintln!("livebattle-simulate: {e}");
        return ExitCode::from(2);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build();
    match runtime {
        Ok(rt) => rt.block_on(run::run(args)),
        Err(e) => {
            eprintln!("livebattle-simulate: cannot start the runtime: {e}");
            ExitCode::FAILURE
        }
    }
}
