//! The fuzz suite of the candle layers: seeded random constructor
//! arguments (zero and huge extents, eps, momentum, groups, dims, parameter
//! dtypes) and random inputs (ranks 0 to 5, zero extents, f32/bf16/f16 and
//! dtypes without kernels, transposed, narrowed and broadcast views) through
//! every layer and functional op the crate exports, forward and, where the
//! forward succeeds, backward through candle's autograd. Every call must
//! return Ok (a norm's output shaped like its input, every gradient shaped
//! like its variable) or an Err; never a panic, an abort or a hang.
//!
//! The cases run in child processes (this test binary started again on
//! [`child`]), a batch each, under a 4 GiB address-space limit, so a crash
//! fails [`no_panic_no_abort`] naming the seed and the case.
//!
//! `NORMKIT_FUZZ_CASES` sets the number of cases (default 200,000),
//! `NORMKIT_FUZZ_SEED` the seed. A failing case reruns alone with
//! `NORMKIT_FUZZ_CHILD=seed,case,1` and `--ignored --exact fuzz::child`.

mod gen;
mod layers;
mod regressions;

use std::collections::BTreeMap;
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use candle_core::Result;

use gen::Gen;
use layers::*;

const DEFAULT_CASES: usize = 200_000;
const DEFAULT_SEED: u64 = 0x6361_6e64_6c65_f022;
const BATCH: usize = 20_000;
/// A batch taking longer than this hangs.
const BATCH_LIMIT: Duration = Duration::from_secs(180);
/// The child's address-space limit, in KiB.
const MEMORY_KIB: u64 = 4 << 20;

/// Calls and successes per `layer call`.
#[derive(Default)]
pub struct Tally(BTreeMap<String, [usize; 2]>);

impl Tally {
    /// Counts `r` under `key`; its value when Ok.
    pub fn note<T>(&mut self, key: &str, r: Result<T>) -> Option<T> {
        let e = self.0.entry(key.to_string()).or_default();
        e[0] += 1;
        e[1] += r.is_ok() as usize;
        r.ok()
    }
}

type Family = fn(&mut Gen, &mut Tally);

const FAMILIES: [(&str, Family); 11] = [
    ("layer_norm", layer_norm_family),
    ("rms_norm", rms_norm_family),
    ("row ops", row_ops),
    ("batch_norm", batch_norm_family),
    ("group_norm", group_norm_family),
    ("instance_norm", instance_norm_family),
    ("dyt, derf", dyt_derf_family),
    ("weight_norm", weight_norm_family),
    ("ada_norm", ada_family),
    ("adain", adain_family),
    ("switch_norm, batch_renorm", running_family),
];

/// Forward keys each full run must reach with both outcomes.
const MUST_REACH: [&str; 20] = [
    "layer_norm forward",
    "rms_norm forward",
    "layer_norm_op forward",
    "rms_norm_op forward",
    "batch_norm forward",
    "group_norm forward",
    "instance_norm forward",
    "dyt forward",
    "derf forward",
    "dyt_op forward",
    "derf_op forward",
    "weight_norm_linear forward",
    "weight_norm_conv2d forward",
    "weight_norm_op forward",
    "ada_layer_norm forward",
    "ada_layer_norm modulate forward",
    "ada_layer_norm_op forward",
    "ada_rms_norm_op forward",
    "adain forward",
    "switch_norm forward",
];

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        Err(_) => default,
    }
}

/// Runs cases `first..first + count` of `seed`, printing each case's
/// number first (the last one printed is the culprit of a crash).
fn run_cases(seed: u64, first: usize, count: usize) -> Tally {
    let mut tally = Tally::default();
    for i in first..first + count {
        let (name, family) = FAMILIES[i % FAMILIES.len()];
        eprintln!("case {i} ({name})");
        let mut g = Gen(seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        family(&mut g, &mut tally);
    }
    tally
}

/// One batch, in this process: what the parent starts.
#[test]
#[ignore = "a batch of fuzz cases, started by fuzz::no_panic_no_abort"]
fn child() {
    let spec = std::env::var("NORMKIT_FUZZ_CHILD").expect("NORMKIT_FUZZ_CHILD=seed,first,count");
    let v: Vec<u64> = spec.split(',').map(|s| s.parse().unwrap()).collect();
    let tally = run_cases(v[0], v[1] as usize, v[2] as usize);
    for (key, [calls, ok]) in &tally.0 {
        println!("FUZZ {key}|{calls}|{ok}");
    }
}

/// Starts one batch in a child process; its tally, or why it failed.
fn batch(seed: u64, first: usize, count: usize) -> std::result::Result<Tally, String> {
    let exe = std::env::current_exe().unwrap();
    let args = [
        "--ignored",
        "--exact",
        "fuzz::child",
        "--nocapture",
        "--test-threads=1",
    ];
    // Under `sh` the address space is limited: a huge allocation fails
    // (and aborts the child) instead of swapping the machine to death.
    let limit = format!("ulimit -v {MEMORY_KIB} 2>/dev/null; exec \"$0\" \"$@\"");
    let mut cmd = if cfg!(unix) && std::path::Path::new("/bin/sh").exists() {
        let mut c = Command::new("/bin/sh");
        c.arg("-c").arg(limit).arg(&exe);
        c
    } else {
        Command::new(&exe)
    };
    let mut child = cmd
        .args(args)
        .env("NORMKIT_FUZZ_CHILD", format!("{seed},{first},{count}"))
        .env("RUST_BACKTRACE", "0")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {exe:?}: {e}"))?;
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            s
        })
    };
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let err = drain(Box::new(child.stderr.take().unwrap()));
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().map_err(|e| e.to_string())? {
            break Some(s);
        }
        if start.elapsed() > BATCH_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let (out, err) = (out.join().unwrap(), err.join().unwrap());
    let culprit = err
        .lines()
        .rfind(|l| l.starts_with("case "))
        .unwrap_or("no case started");
    let said: Vec<&str> = err.lines().filter(|l| !l.starts_with("case ")).collect();
    let tail = &said[said.len().saturating_sub(12)..];
    let why = match status {
        None => format!("hung for {BATCH_LIMIT:?}"),
        Some(s) if !s.success() => format!("exited with {s}"),
        Some(_) => {
            let mut tally = Tally::default();
            // libtest prints `test fuzz::child ... ` without a newline
            // before the test's own output: the first line is glued to it.
            for line in out
                .lines()
                .filter_map(|l| l.split_once("FUZZ ").map(|(_, r)| r))
            {
                let f: Vec<&str> = line.split('|').collect();
                tally.0.insert(
                    f[0].to_string(),
                    [f[1].parse().unwrap(), f[2].parse().unwrap()],
                );
            }
            return Ok(tally);
        }
    };
    Err(format!(
        "fuzz batch {first}..{} of seed {seed} {why}; rerun one case with \
         NORMKIT_FUZZ_CHILD={seed},<case>,1 and `--ignored --exact fuzz::child`.\n\
         Last case: {culprit}\n{}",
        first + count,
        tail.join("\n")
    ))
}

/// Every case, in batches of child processes: none may panic, abort or
/// hang, and each layer's forward must both succeed and refuse somewhere.
#[test]
fn no_panic_no_abort() {
    let cases: usize = env_or("NORMKIT_FUZZ_CASES", DEFAULT_CASES);
    let seed: u64 = env_or("NORMKIT_FUZZ_SEED", DEFAULT_SEED);
    let start = Instant::now();
    let mut total = Tally::default();
    let mut first = 0;
    while first < cases {
        let count = BATCH.min(cases - first);
        match batch(seed, first, count) {
            Ok(t) => {
                for (k, [c, o]) in t.0 {
                    let e = total.0.entry(k).or_default();
                    e[0] += c;
                    e[1] += o;
                }
            }
            Err(why) => panic!("{why}"),
        }
        first += count;
    }
    println!(
        "fuzz: {cases} cases of seed {seed:#x} in {:.1?}",
        start.elapsed()
    );
    println!("{:<44} {:>7} {:>7} {:>7}", "call", "calls", "ok", "refused");
    for (k, [c, o]) in &total.0 {
        println!("{k:<44} {c:>7} {o:>7} {:>7}", c - o);
    }
    if cases >= 2_000 {
        for key in MUST_REACH {
            let [c, o] = total.0.get(key).copied().unwrap_or_default();
            assert!(o > 0 && o < c, "{key}: {o} of {c} calls succeeded");
        }
    }
}
