//! The `raft3d` binary: parses the command line and hands over to the library.

use std::process::ExitCode;

use clap::Parser;
use raft3d::config::{self, Cli, Sub};
use tokio_util::sync::CancellationToken;

fn main() -> ExitCode {
    let cli = Cli::parse_from(config::normalize_args(std::env::args()));
    match cli.command {
        Some(Sub::Demo(args)) => match raft3d::demo::run(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("demo: {e:#}");
                ExitCode::FAILURE
            }
        },
        Some(Sub::CheckConfig { file }) => check_config(&file),
        Some(Sub::Restore { from, node }) => restore(&from, &node),
        None => run_node(&cli.run),
    }
}

fn check_config(file: &std::path::Path) -> ExitCode {
    let args = config::RunArgs {
        config: Some(file.to_path_buf()),
        ..Default::default()
    };
    match config::settings(&args) {
        Ok(s) => {
            println!(
                "{}: ok (node {}, http {}, raft {}, {} printer(s))",
                file.display(),
                s.id,
                s.http_advertise,
                s.raft,
                s.printers.len()
            );
            ExitCode::SUCCESS
        }
        Err(problems) => {
            for p in &problems {
                eprintln!("{p}");
            }
            eprintln!("{}: {} problem(s)", file.display(), problems.len());
            ExitCode::FAILURE
        }
    }
}

fn restore(from: &std::path::Path, args: &config::RunArgs) -> ExitCode {
    let settings = match config::settings(args) {
        Ok(s) => s,
        Err(problems) => {
            for p in &problems {
                eprintln!("  {p}");
            }
            return ExitCode::from(2);
        }
    };
    let bytes = match std::fs::read(from) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("raft3d restore: cannot read {}: {e}", from.display());
            return ExitCode::FAILURE;
        }
    };
    let member = raft3d::cluster::types::Member {
        raft_addr: settings.raft.clone(),
        http_addr: settings.http_advertise.clone(),
    };
    let id = raft3d::cluster::types::NodeId(settings.id.clone());
    match raft3d::store::restore_backup(&settings.node_dir(), &bytes, &id, member) {
        Ok(r) => {
            println!(
                "restored {} printers, {} filaments, {} jobs (log index {}) into {}",
                r.printers,
                r.filaments,
                r.jobs,
                r.index,
                settings.node_dir().display()
            );
            println!(
                "start it (no -bootstrap needed): raft3d -id {} -http {} -raft {} -data {}",
                settings.id,
                settings.http_bind,
                settings.raft,
                settings.data.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("raft3d restore: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run_node(args: &config::RunArgs) -> ExitCode {
    let settings = match config::settings(args) {
        Ok(s) => s,
        Err(problems) => {
            eprintln!("raft3d: cannot start; fix these settings:");
            for p in &problems {
                eprintln!("  {p}");
            }
            return ExitCode::from(2);
        }
    };
    raft3d::server::init_logging(&settings.log_level, settings.log_json);
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("raft3d: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let shutdown = CancellationToken::new();
    let result = rt.block_on(async {
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(t) => t,
                    Err(_) => return,
                };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
                _ = term.recv() => tracing::info!("SIGTERM received"),
                _ = stop.cancelled() => return,
            }
            stop.cancel();
        });
        raft3d::server::run(settings, shutdown).await
    });
    rt.shutdown_timeout(std::time::Duration::from_secs(2));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("raft3d: {e}");
            ExitCode::FAILURE
        }
    }
}
