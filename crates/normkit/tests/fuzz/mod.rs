//! The fuzz suite: seeded random arguments over every public entry point
//! and every op of `normkit::op` — shapes with zero and near-`usize::MAX`
//! extents, wrong lengths, eps, momentum, groups, axes, dims, element types
//! and special values. Every call must return Ok with every output written,
//! or a typed error naming the op with its outputs untouched, within a few
//! seconds. SyncBatchNorm runs across 1 to 4 ranks (threads of one
//! `ThreadComm` group) whose batch sizes, settings and buffers differ now
//! and then: every rank must succeed, or every rank fail with the same
//! error, and no rank may be left waiting.
//!
//! The cases run in child processes (this test binary, started again on
//! [`child`]), a batch each, under a 4 GiB address-space limit: a panic, an
//! abort (a huge allocation, a stack overflow) or a hang is a failure of
//! [`no_panic_no_abort`] naming the case, never a dead test run.
//!
//! `NORMKIT_FUZZ_CASES` sets the number of cases (default 60,000),
//! `NORMKIT_FUZZ_SEED` the seed. A failing case reruns alone with
//! `NORMKIT_FUZZ_CHILD=seed,case,1` and `--ignored --exact fuzz::child`.
//! Run it in the overflow-checked profile too:
//! `cargo test --profile fuzz -p normkit --test integration fuzz::`
//! (`scripts/test-fuzz` runs both).

mod channels;
mod gen;
mod ops;
mod rows;
mod sync;

use std::collections::BTreeMap;
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use gen::Gen;

const DEFAULT_CASES: usize = 60_000;
const DEFAULT_SEED: u64 = 0x6e6f_726d_6b69_7419;
const BATCH: usize = 3_000;
/// A batch taking longer than this hangs.
const BATCH_LIMIT: Duration = Duration::from_secs(240);
/// The child's address-space limit, in KiB.
const MEMORY_KIB: u64 = 4 << 20;

/// Calls and successes per entry point (`via op`).
#[derive(Default)]
pub struct Tally(BTreeMap<String, [usize; 2]>);

impl Tally {
    pub fn add(&mut self, via: &str, op: &str, ok: bool) {
        let e = self.0.entry(format!("{via} {op}")).or_default();
        e[0] += 1;
        e[1] += ok as usize;
    }
}

/// The public functions the families call, each of which a full run
/// must reach.
const ENTRY_POINTS: [&str; 42] = [
    "layer_norm_forward",
    "layer_norm_backward",
    "rms_norm_forward",
    "rms_norm_backward",
    "ada_layer_norm_forward",
    "ada_layer_norm_backward",
    "ada_rms_norm_forward",
    "ada_rms_norm_backward",
    "dyt_forward",
    "dyt_backward",
    "weight_norm_forward",
    "weight_norm_backward",
    "fold_batch_norm",
    "batch_norm_forward_train",
    "batch_norm_forward_eval",
    "batch_norm_backward_train",
    "batch_norm_backward_eval",
    "group_norm_forward",
    "group_norm_backward",
    "instance_norm_forward_train",
    "instance_norm_forward_eval",
    "instance_norm_backward_train",
    "instance_norm_backward_eval",
    "adain_forward",
    "adain_backward",
    "switch_norm_forward_train",
    "switch_norm_forward_eval",
    "switch_norm_backward",
    "batch_renorm_forward_train",
    "batch_renorm_forward_eval",
    "batch_renorm_backward_train",
    "batch_renorm_backward_eval",
    "add_layer_norm_forward",
    "add_layer_norm_backward",
    "add_rms_norm_forward",
    "add_rms_norm_backward",
    "derf_forward",
    "derf_backward",
    "sync_batch_norm_forward_train",
    "sync_batch_norm_backward_train",
    "sync_batch_norm_forward_eval",
    "sync_batch_norm_backward_eval",
];

/// The ops of `normkit::op` that [`ops::any_op`],
/// [`ops::any_residual_op`] and [`sync::sync_batch_norm`] build, by name
/// (QK-norm, Gemma's RMSNorm and LayerNorm Scaling by their own, though
/// their errors carry the wrapped norm's).
const OPS: [&str; 19] = [
    "layer_norm",
    "rms_norm",
    "ada_layer_norm",
    "ada_rms_norm",
    "dyt",
    "weight_norm",
    "batch_norm",
    "group_norm",
    "instance_norm",
    "adain",
    "switch_norm",
    "batch_renorm",
    "derf",
    "qk_norm",
    "unit_offset_rms_norm",
    "layer_norm_scaling",
    "add_layer_norm",
    "add_rms_norm",
    "sync_batch_norm",
];

/// A family of cases: one random case of some entry points.
type Family = fn(&mut Gen, &mut Tally);

const FAMILIES: [(&str, Family); 19] = [
    ("layer_norm", rows::layer_norm),
    ("ada_norm", rows::ada_norm),
    ("dyt", rows::dyt),
    ("weight_norm", rows::weight_norm),
    ("fold_batch_norm", rows::fold),
    ("batch_norm", channels::batch_norm),
    ("group_norm", channels::group_norm),
    ("instance_norm", channels::instance_norm),
    ("adain", channels::adain),
    ("switch_norm", channels::switch_norm),
    ("batch_renorm", channels::batch_renorm),
    ("add_norm", rows::add_norm),
    ("derf", rows::derf),
    ("sync_batch_norm_local", sync::sync_batch_norm_local),
    ("sync_batch_norm", sync::sync_batch_norm),
    ("op", ops::any_op),
    ("op", ops::any_op),
    ("op", ops::any_op),
    ("residual_op", ops::any_residual_op),
];

/// The variable `name`, or `default` when it is unset; a value that does
/// not parse fails the run rather than quietly running the default.
fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        Err(_) => default,
    }
}

/// Runs cases `first..first + count` of `seed`, printing each case's
/// number before it runs (the last one printed is the culprit of an
/// abort) and the tally at the end.
fn run_cases(seed: u64, first: usize, count: usize) -> Tally {
    let mut tally = Tally::default();
    for i in first..first + count {
        let (name, family) = FAMILIES[i % FAMILIES.len()];
        eprintln!("case {i} ({name})");
        let mut g = Gen::new(seed ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
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
        println!("FUZZ {key} {calls} {ok}");
    }
}

/// Starts one batch in a child process and returns its tally, or why it
/// failed.
fn batch(seed: u64, first: usize, count: usize) -> Result<Tally, String> {
    let exe = std::env::current_exe().unwrap();
    let args = [
        "--ignored",
        "--exact",
        "fuzz::child",
        "--nocapture",
        "--test-threads=1",
    ];
    // Under `sh`, the address space is limited: a huge allocation fails
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
    // The case that failed, and what it said.
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
                let f: Vec<&str> = line.split(' ').collect();
                let n = f.len();
                let key = f[..n - 2].join(" ");
                let (calls, ok): (usize, usize) =
                    (f[n - 2].parse().unwrap(), f[n - 1].parse().unwrap());
                tally.0.insert(key, [calls, ok]);
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

/// Every fuzz case, in batches of child processes: none may panic, abort
/// or hang, and every entry point must both succeed and refuse somewhere.
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
    println!(
        "{:<36} {:>8} {:>8} {:>8}",
        "entry point", "calls", "ok", "refused"
    );
    for (k, [c, o]) in &total.0 {
        println!("{k:<36} {c:>8} {o:>8} {:>8}", c - o);
    }
    if cases >= 2_000 {
        for key in ENTRY_POINTS.iter().map(|f| format!("fn {f}")).chain(
            OPS.iter()
                .flat_map(|op| ["forward", "backward"].map(|pass| format!("op {op} {pass}"))),
        ) {
            assert!(total.0.contains_key(&key), "{key}: never called");
        }
        for (k, [c, o]) in &total.0 {
            assert!(*o > 0 && o < c, "{k}: {o} of {c} calls succeeded");
        }
    }
}
