//! The study's independent training runs as a list of jobs.
//!
//! Every experiment plans its runs as [`Job`]s — (experiment, arm,
//! replicate, config) — and turns their [`JobOutput`]s into a section. A
//! job's output is a function of the job and the study's options alone
//! (its model and batch order come from seeds derived from them), so jobs
//! can run in any order, on any thread or process: [`run_jobs`] runs them
//! on local threads, and a distributed runner can hand each rank a share
//! of [`crate::study::plan`]'s list and merge the outputs into the same
//! [`Results`] (keyed, so the merge order does not matter).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Instant;

/// One training run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub experiment: String,
    /// What the run trains ("bn/batch8"); with the replicate, unique in
    /// its experiment.
    pub arm: String,
    /// The seed index, `0..seeds`: runs of different arms with the same
    /// replicate share their initialization and batch order where they
    /// share an architecture.
    pub replicate: usize,
    /// Whatever else the experiment needs to run it, as JSON.
    pub config: serde_json::Value,
    /// A timing job: it runs alone, after the others, so no other job
    /// shares the machine while it measures.
    #[serde(default)]
    pub exclusive: bool,
}

impl Job {
    pub fn new(
        experiment: &str,
        arm: impl Into<String>,
        replicate: usize,
        config: serde_json::Value,
    ) -> Self {
        Self {
            experiment: experiment.to_string(),
            arm: arm.into(),
            replicate,
            config,
            exclusive: false,
        }
    }

    /// Marks the job as one that must run alone.
    pub fn alone(mut self) -> Self {
        self.exclusive = true;
        self
    }

    pub fn key(&self) -> JobKey {
        (self.experiment.clone(), self.arm.clone(), self.replicate)
    }
}

/// (experiment, arm, replicate).
pub type JobKey = (String, String, usize);

/// What a job measured: named numbers and named curves. Keys starting
/// with [`TIME_PREFIX`] hold wall-clock times, which differ between reruns;
/// everything else is a function of the job.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JobOutput {
    pub values: BTreeMap<String, f64>,
    pub series: BTreeMap<String, Vec<f64>>,
    /// Wall-clock seconds the job took.
    pub seconds: f64,
}

/// Keys of wall-clock timings start with this.
pub const TIME_PREFIX: &str = "time/";

impl JobOutput {
    pub fn value(mut self, key: impl Into<String>, v: f64) -> Self {
        self.values.insert(key.into(), v);
        self
    }

    pub fn curve(mut self, key: impl Into<String>, v: Vec<f64>) -> Self {
        self.series.insert(key.into(), v);
        self
    }
}

/// A job's output, or why it failed.
pub type JobResult = Result<JobOutput, String>;

/// What hears of each finished job: its index, the job, its result.
pub type OnDone<'a> = dyn FnMut(usize, &Job, &JobResult) + 'a;

/// A job's outputs as report.json keeps them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobRecord {
    pub experiment: String,
    pub arm: String,
    pub replicate: usize,
    /// The output, or why the job failed.
    pub output: Result<JobOutput, String>,
}

/// One experiment's job outputs, by (arm, replicate).
#[derive(Debug, Clone, Default)]
pub struct Results {
    pub seeds: usize,
    outputs: BTreeMap<(String, usize), Result<JobOutput, String>>,
}

impl Results {
    pub fn new(seeds: usize) -> Self {
        Self {
            seeds,
            outputs: BTreeMap::new(),
        }
    }

    pub fn insert(&mut self, arm: &str, replicate: usize, output: Result<JobOutput, String>) {
        self.outputs.insert((arm.to_string(), replicate), output);
    }

    pub fn get(&self, arm: &str, replicate: usize) -> Option<&JobOutput> {
        self.outputs
            .get(&(arm.to_string(), replicate))
            .and_then(|r| r.as_ref().ok())
    }

    /// `key` of `arm`, one value per seed; NaN where the job failed or did
    /// not report it.
    pub fn values(&self, arm: &str, key: &str) -> Vec<f64> {
        (0..self.seeds)
            .map(|r| {
                self.get(arm, r)
                    .and_then(|o| o.values.get(key).copied())
                    .unwrap_or(f64::NAN)
            })
            .collect()
    }

    /// Curve `key` of `arm`, one per seed (empty where missing).
    pub fn curves(&self, arm: &str, key: &str) -> Vec<Vec<f64>> {
        (0..self.seeds)
            .map(|r| {
                self.get(arm, r)
                    .and_then(|o| o.series.get(key).cloned())
                    .unwrap_or_default()
            })
            .collect()
    }

    /// Why jobs failed, one line each.
    pub fn failures(&self) -> Vec<String> {
        self.outputs
            .iter()
            .filter_map(|((arm, r), o)| o.as_ref().err().map(|e| format!("{arm} seed {r}: {e}")))
            .collect()
    }

    /// Seconds spent in this experiment's jobs.
    pub fn seconds(&self) -> f64 {
        self.outputs
            .values()
            .filter_map(|o| o.as_ref().ok())
            .map(|o| o.seconds)
            .sum()
    }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// Runs `f`, turning an error or a panic into its message.
pub fn catching<T, E: std::fmt::Display>(f: impl FnOnce() -> Result<T, E>) -> Result<T, String> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("did not run: {e}")),
        Err(payload) => Err(format!("panicked: {}", panic_message(payload.as_ref()))),
    }
}

/// Runs `f` on `job` through [`catching`], timing it.
pub fn run_one<E: std::fmt::Display>(
    job: &Job,
    f: impl FnOnce(&Job) -> Result<JobOutput, E>,
) -> Result<JobOutput, String> {
    let start = Instant::now();
    let mut out = catching(|| f(job))?;
    out.seconds = start.elapsed().as_secs_f64();
    Ok(out)
}

/// Runs `jobs` on `workers` threads (at least one), each job through
/// `run`, then the exclusive ones one at a time, and returns the outputs
/// in the jobs' order. `done` hears of each finished job on the calling
/// thread, in completion order.
pub fn run_jobs(
    jobs: &[Job],
    workers: usize,
    run: &(dyn Fn(&Job) -> Result<JobOutput, String> + Sync),
    done: &mut OnDone<'_>,
) -> Vec<Result<JobOutput, String>> {
    let (alone, shared): (Vec<usize>, Vec<usize>) =
        (0..jobs.len()).partition(|&i| jobs[i].exclusive);
    let mut outputs: Vec<Option<Result<JobOutput, String>>> = vec![None; jobs.len()];
    for (part, w) in [(shared, workers), (alone, 1)] {
        let sub: Vec<Job> = part.iter().map(|&i| jobs[i].clone()).collect();
        let outs = run_pool(&sub, w, run, &mut |k, job, out| done(part[k], job, out));
        for (k, o) in outs.into_iter().enumerate() {
            outputs[part[k]] = Some(o);
        }
    }
    outputs
        .into_iter()
        .map(|o| o.unwrap_or_else(|| Err("not run".into())))
        .collect()
}

fn run_pool(
    jobs: &[Job],
    workers: usize,
    run: &(dyn Fn(&Job) -> Result<JobOutput, String> + Sync),
    done: &mut OnDone<'_>,
) -> Vec<Result<JobOutput, String>> {
    let mut outputs: Vec<Option<Result<JobOutput, String>>> = vec![None; jobs.len()];
    let next = AtomicUsize::new(0);
    let (tx, rx) = mpsc::channel();
    std::thread::scope(|scope| {
        for _ in 0..workers.clamp(1, jobs.len().max(1)) {
            let tx = tx.clone();
            let next = &next;
            scope.spawn(move || loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(job) = jobs.get(i) else { break };
                if tx.send((i, run(job))).is_err() {
                    break;
                }
            });
        }
        drop(tx);
        for (i, out) in rx {
            done(i, &jobs[i], &out);
            outputs[i] = Some(out);
        }
    });
    outputs
        .into_iter()
        .map(|o| o.unwrap_or_else(|| Err("not run".into())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(arm: &str, r: usize) -> Job {
        Job::new("e", arm, r, serde_json::json!({ "x": r }))
    }

    #[test]
    fn outputs_come_back_in_job_order_whatever_the_workers() {
        let jobs: Vec<Job> = (0..7).map(|r| job("a", r)).collect();
        let run = |j: &Job| -> Result<JobOutput, String> {
            if j.replicate == 3 {
                return Err("three".into());
            }
            Ok(JobOutput::default().value("r", j.replicate as f64))
        };
        for workers in [1, 2, 5] {
            let mut seen = 0;
            let outs = run_jobs(&jobs, workers, &run, &mut |_, _, _| seen += 1);
            assert_eq!(seen, 7);
            for (r, o) in outs.iter().enumerate() {
                match o {
                    Ok(o) => assert_eq!(o.values["r"], r as f64),
                    Err(e) => assert_eq!((r, e.as_str()), (3, "three")),
                }
            }
        }
    }

    #[test]
    fn panics_and_errors_become_messages() {
        let j = job("a", 0);
        let e = run_one(&j, |_| -> Result<JobOutput, String> { panic!("boom") });
        assert_eq!(e, Err("panicked: boom".into()));
        let e = run_one(&j, |_| -> Result<JobOutput, String> {
            Err("no data".into())
        });
        assert_eq!(e, Err("did not run: no data".into()));
    }

    #[test]
    fn results_give_per_seed_values_with_gaps() {
        let mut r = Results::new(3);
        r.insert("a", 0, Ok(JobOutput::default().value("acc", 0.5)));
        r.insert("a", 2, Err("failed".into()));
        let v = r.values("a", "acc");
        assert_eq!(v[0], 0.5);
        assert!(v[1].is_nan() && v[2].is_nan());
        assert_eq!(r.failures(), vec!["a seed 2: failed".to_string()]);
    }
}
