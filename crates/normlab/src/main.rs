use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use normlab::bench::{self, BenchOptions, Dtype, Impl, Op};
use normlab::study::{self, Mode, Progress, StudyOptions};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

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
    /// Time every op against the machine's copy bandwidth and against
    /// burn's, candle's and normkit's reference implementations.
    Bench(BenchArgs),
    /// Train models with each normalization and write a report of what
    /// normalization does (index.html, report.json, summary.md).
    Study(StudyArgs),
}

#[derive(clap::Args)]
struct BenchArgs {
    /// Fewer, smaller shapes and short timings (under a minute).
    #[arg(long)]
    quick: bool,
    /// One tiny shape per op: checks that every path runs.
    #[arg(long, conflicts_with = "quick")]
    smoke: bool,
    /// Threads for normkit and the copy (default: one per CPU).
    #[arg(long)]
    threads: Option<usize>,
    /// normkit's activation type: f32, bf16 or f16.
    #[arg(long, default_value = "f32")]
    dtype: Dtype,
    /// Only this op (repeatable): layer_norm, rms_norm, dyt, batch_norm,
    /// group_norm, instance_norm.
    #[arg(long = "op")]
    ops: Vec<Op>,
    /// Only this implementation (repeatable): normkit, reference, burn,
    /// candle (the copy always runs).
    #[arg(long = "impl")]
    impls: Vec<Impl>,
    /// One JSON object per measurement instead of the table.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct StudyArgs {
    /// Every experiment at reduced size, 3 seeds: about five minutes on
    /// two cores.
    #[arg(long)]
    quick: bool,
    /// Replicates per arm (default: 3 with --quick, 5 without).
    #[arg(long, value_name = "K", value_parser = clap::value_parser!(u64).range(2..))]
    seeds: Option<u64>,
    /// Training jobs run at once (default: one per core).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    workers: Option<u64>,
    /// Run only these experiments (ids, comma-separated).
    #[arg(long, value_delimiter = ',', value_name = "EXP")]
    only: Vec<String>,
    /// Directory for index.html, report.json and summary.md.
    #[arg(long, default_value = "normlab-report")]
    out: PathBuf,
    /// Directory with Fashion-MNIST's IDX files (plain or .gz)
    /// [default: /usr/share/datasets/fashion-mnist].
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// UTF-8 text for the character language model (e.g.
    /// tinyshakespeare.txt); without it, MNIST-1D sequences.
    #[arg(long, value_name = "FILE")]
    text: Option<PathBuf>,
    /// Seed for data, initialization and batch order.
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Conform { path } => conform(&path),
        Command::Bench(args) => run_bench(args),
        Command::Study(args) => run_study(args),
    }
}

fn conform(path: &Path) -> ExitCode {
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

fn run_bench(args: BenchArgs) -> ExitCode {
    let opts = BenchOptions {
        mode: if args.smoke {
            bench::Mode::Smoke
        } else if args.quick {
            bench::Mode::Quick
        } else {
            bench::Mode::Full
        },
        threads: args.threads,
        dtype: args.dtype,
        ops: args.ops,
        impls: args.impls,
        cases: None,
        progress: !args.json,
    };
    match bench::run(&opts) {
        Ok(report) => {
            if args.json {
                print!("{}", report.json_lines());
            } else {
                print!("{}", report.table());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("normlab bench: {e}");
            ExitCode::from(2)
        }
    }
}

fn run_study(args: StudyArgs) -> ExitCode {
    let options = StudyOptions {
        out: args.out.clone(),
        seed: args.seed,
        mode: if args.quick { Mode::Quick } else { Mode::Full },
        seeds: args.seeds.map(|k| k as usize),
        workers: args.workers.map(|n| n as usize),
        fashion_mnist: args.data,
        text: args.text,
        only: args.only,
    };
    let experiments = study::all_experiments();
    let refs: Vec<&dyn study::Experiment> = experiments.iter().map(|e| e.as_ref()).collect();
    let style =
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar());
    let bar = ProgressBar::new(0).with_style(style);
    bar.enable_steady_tick(Duration::from_millis(200));
    let printer = bar.clone();
    study::train::set_progress_printer(move |line| printer.println(line));
    // Without a terminal the bar is hidden: sections and failed jobs are
    // printed as lines instead.
    let lines = bar.is_hidden();
    let mut progress = |p: Progress<'_>| match p {
        Progress::Planned { jobs } => bar.set_length(jobs as u64),
        Progress::JobDone { failed, .. } => {
            bar.inc(1);
            bar.set_message(p.to_string());
            if lines && failed {
                eprintln!("{p}");
            }
        }
        Progress::Section { .. } if lines => eprintln!("{p}"),
        Progress::Section { .. } => bar.println(p.to_string()),
    };
    let ctx = study::StudyContext::new(options);
    let result = study::check_requested_data(&ctx)
        .and_then(|()| study::run_study(&ctx, &refs, &mut progress))
        .and_then(|report| Ok(report.write(&ctx.options().out)?));
    bar.finish_and_clear();
    match result {
        Ok(_) => {
            println!(
                "report written to {}",
                args.out.join("index.html").display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("normlab study: {e}");
            ExitCode::from(2)
        }
    }
}
