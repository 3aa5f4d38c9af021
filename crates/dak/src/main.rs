//! `dak`: the server, the command-line client and the benchmark driver. Argument parsing and wiring only; the logic lives in the crates.

mod admin_cmd;
mod bench_cmd;
mod bot;
mod chat;
mod cli;
mod group_cmd;
mod media_cmd;
mod notice_admin;
mod server_cmd;
mod show;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let args = cli::Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli::run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
