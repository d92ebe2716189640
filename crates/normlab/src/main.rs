use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// normkit's laboratory: conformance, benchmarks and studies.
#[derive(Parser)]
#[command(name = "normlab", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run golden conformance cases (a directory of .safetensors files, or
    /// one file) and report each tensor's worst error against its tolerance.
    Conform {
        /// Directory of cases, or a single case file.
        path: PathBuf,
    },
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Conform { path } => conform(&path),
    }
}

fn conform(path: &std::path::Path) -> ExitCode {
    let reports = match normlab::conform::run_path(path) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("normlab conform: {}: {e}", path.display());
            return ExitCode::from(2);
        }
    };
    if reports.is_empty() {
        eprintln!(
            "normlab conform: no .safetensors cases in {}",
            path.display()
        );
        return ExitCode::from(2);
    }
    let passed = reports.iter().filter(|r| r.passed()).count();
    for r in &reports {
        println!("{r}");
    }
    println!("{passed} passed, {} failed", reports.len() - passed);
    if passed == reports.len() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
