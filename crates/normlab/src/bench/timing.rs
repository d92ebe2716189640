//! Repetition and statistics: warm up, then repeat until both a minimum
//! count and a minimum time are reached, and keep the median.
//!
//! Each iteration times itself (the closure returns its own duration), so
//! whatever it prepares before starting the clock, or drops after stopping
//! it, stays outside the measurement.

use std::time::{Duration, Instant};

/// How long to measure one (implementation, pass, case).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Budget {
    /// Untimed iterations run until this much time has passed (at least one).
    pub warmup: Duration,
    /// Timed iterations: at least this many...
    pub min_iters: usize,
    /// ...and at least this much summed time.
    pub min_time: Duration,
    /// A slow implementation stops early once it has `floor_iters`
    /// iterations and this much summed time.
    pub max_time: Duration,
    pub floor_iters: usize,
}

impl Budget {
    /// The default run: stable medians on a quiet machine.
    pub const FULL: Budget = Budget {
        warmup: Duration::from_millis(50),
        min_iters: 10,
        min_time: Duration::from_millis(400),
        max_time: Duration::from_millis(2000),
        floor_iters: 3,
    };

    /// `--quick`: a rough picture in under a minute.
    pub const QUICK: Budget = Budget {
        warmup: Duration::from_millis(5),
        min_iters: 5,
        min_time: Duration::from_millis(30),
        max_time: Duration::from_millis(150),
        floor_iters: 2,
    };

    /// `--smoke`: exercises every path, measures nothing meaningful.
    pub const SMOKE: Budget = Budget {
        warmup: Duration::ZERO,
        min_iters: 2,
        min_time: Duration::ZERO,
        max_time: Duration::ZERO,
        floor_iters: 2,
    };

    /// The budget for an implementation that is slow by design (the `f64`
    /// reference twin): one iteration suffices once the time cap is hit.
    pub fn slow(self) -> Budget {
        Budget {
            warmup: Duration::ZERO,
            min_iters: self.min_iters.min(3),
            floor_iters: 1,
            ..self
        }
    }
}

/// Per-iteration times of one measurement.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    pub median_ns: f64,
    pub min_ns: f64,
    pub iters: usize,
}

/// Never keep more than this many per-iteration times (a few MB).
const MAX_ITERS: usize = 200_000;

/// Runs `iter` (which returns the time it measured) under `budget`.
pub fn measure(budget: &Budget, mut iter: impl FnMut() -> Duration) -> Sample {
    let start = Instant::now();
    loop {
        iter();
        if start.elapsed() >= budget.warmup {
            break;
        }
    }
    let mut times = Vec::new();
    let mut total = Duration::ZERO;
    loop {
        let t = iter();
        total += t;
        times.push(t.as_nanos() as f64);
        let n = times.len();
        let enough = n >= budget.min_iters && total >= budget.min_time;
        let capped = n >= budget.floor_iters && total >= budget.max_time;
        if enough || capped || n >= MAX_ITERS {
            break;
        }
    }
    summarize(&mut times)
}

/// Median (mean of the two middle values for an even count) and minimum.
pub fn summarize(times: &mut [f64]) -> Sample {
    assert!(!times.is_empty(), "no iterations to summarize");
    times.sort_by(f64::total_cmp);
    let n = times.len();
    let median = if n % 2 == 1 {
        times[n / 2]
    } else {
        (times[n / 2 - 1] + times[n / 2]) / 2.0
    };
    Sample {
        // A clock that reads 0 ns for a tiny op is still a positive time.
        median_ns: median.max(1.0),
        min_ns: times[0].max(1.0),
        iters: n,
    }
}

/// Times one call of `f`, handing its result to `black_box` inside the
/// timed region and back to the caller, who drops it outside.
#[inline]
pub fn timed<R>(f: impl FnOnce() -> R) -> (Duration, R) {
    let start = Instant::now();
    let out = std::hint::black_box(f());
    (start.elapsed(), out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(summarize(&mut [5.0, 1.0, 3.0]).median_ns, 3.0);
        assert_eq!(summarize(&mut [4.0, 1.0, 3.0, 2.0]).median_ns, 2.5);
        assert_eq!(summarize(&mut [4.0, 1.0, 3.0, 2.0]).min_ns, 1.0);
    }

    #[test]
    fn measure_meets_the_minimum_count() {
        let mut calls = 0;
        let s = measure(&Budget::SMOKE, || {
            calls += 1;
            Duration::from_nanos(10)
        });
        assert_eq!(s.iters, 2);
        // One warm-up call plus the timed ones.
        assert_eq!(calls, 3);
        assert_eq!(s.median_ns, 10.0);
    }

    #[test]
    fn slow_budget_stops_at_the_time_cap() {
        let b = Budget {
            max_time: Duration::from_millis(1),
            ..Budget::FULL
        }
        .slow();
        let s = measure(&b, || Duration::from_millis(5));
        assert_eq!(s.iters, 1);
    }
}
