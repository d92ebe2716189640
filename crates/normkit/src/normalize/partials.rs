//! Parameter-gradient partial sums per chunk, merged in chunk order.

use crate::layout::Grads;
use crate::parallel::{for_blocks, Scratch};

/// Per-channel parameter-gradient partial sums of one chunk.
///
/// Per-channel runs add into `f64` sums; per-element rows (channels-last)
/// add into `f32` sums, `dweight32` and `dbias32`, flushed into the `f64`
/// ones every [`ROWS_PER_FLUSH`](crate::lanes::ROWS_PER_FLUSH) rows. A per-element chunk allocates its
/// `f64` sums at its first flush only, so a chunk of at most that many
/// rows never has them: on rows of 65536 channels, zeroing and merging
/// `f64` sums per chunk cost a third of the backward pass.
#[derive(Debug)]
pub(crate) struct Partials {
    dweight: Scratch<f64>,
    dbias: Scratch<f64>,
    pub dweight32: Scratch<f32>,
    pub dbias32: Scratch<f32>,
    c: usize,
}

impl Partials {
    /// Zeroed sums of `c` channels, for per-element rows or per-channel runs.
    pub fn new(c: usize, per_element: bool) -> Self {
        let (wide, narrow) = if per_element { (0, c) } else { (c, 0) };
        Partials {
            dweight: Scratch::zeroed(wide),
            dbias: Scratch::zeroed(wide),
            dweight32: Scratch::zeroed(narrow),
            dbias32: Scratch::zeroed(narrow),
            c,
        }
    }

    /// Bytes of the sums a chunk of `c` channels holds (per-element
    /// chunks of at most [`ROWS_PER_FLUSH`](crate::lanes::ROWS_PER_FLUSH) rows).
    pub fn bytes(c: usize, per_element: bool) -> usize {
        c * if per_element { 8 } else { 16 }
    }

    fn widen(&mut self) {
        if self.dweight.len() < self.c {
            self.dweight = Scratch::zeroed(self.c);
            self.dbias = Scratch::zeroed(self.c);
        }
    }

    /// Adds the sums of one per-channel run.
    #[inline]
    pub fn add(&mut self, channel: usize, dweight: f64, dbias: f64) {
        self.widen();
        self.dweight[channel] += dweight;
        self.dbias[channel] += dbias;
    }

    /// Zeroes the sums of `channel` (redone elsewhere).
    pub fn clear(&mut self, channel: usize) {
        for v in [&mut self.dweight, &mut self.dbias] {
            if let Some(v) = v.get_mut(channel) {
                *v = 0.0;
            }
        }
        for v in [&mut self.dweight32, &mut self.dbias32] {
            if let Some(v) = v.get_mut(channel) {
                *v = 0.0;
            }
        }
    }

    /// Adds the `f32` sums into the `f64` ones and zeroes them.
    pub fn flush(&mut self) {
        self.widen();
        flush_into(&mut self.dweight, &mut self.dweight32);
        flush_into(&mut self.dbias, &mut self.dbias32);
    }

    /// Adds chunks' partials in order and writes the requested gradients.
    /// Each channel's sum runs over the chunks in chunk order, so blocks of
    /// channels are merged on different threads with the same result.
    pub fn finish<T>(parts: Vec<Partials>, grads: Grads<'_, T>) {
        type Pick = for<'p> fn(&'p Partials) -> (&'p [f64], &'p [f32]);
        let outputs: [(Option<&mut [f32]>, Pick); 2] = [
            (grads.dweight, |p| (&p.dweight, &p.dweight32)),
            (grads.dbias, |p| (&p.dbias, &p.dbias32)),
        ];
        for (out, pick) in outputs {
            if let Some(out) = out {
                let sums: Vec<_> = parts.iter().map(pick).collect();
                merge_partials(out, &sums);
            }
        }
    }
}

/// Channels merged together by [`Partials::finish`].
const MERGE_BLOCK: usize = 2048;

/// `out[ch] = Σ_chunks (wide[ch] + narrow[ch])` with either part possibly
/// absent (empty), summed in `f64` in chunk order.
fn merge_partials(out: &mut [f32], parts: &[(&[f64], &[f32])]) {
    for_blocks(out, MERGE_BLOCK, out.len() * parts.len(), |start, out| {
        let span = start..start + out.len();
        let mut total = [0.0f64; MERGE_BLOCK];
        let total = &mut total[..out.len()];
        for (j, &(wide, narrow)) in parts.iter().enumerate() {
            let (wide, narrow) = (wide.get(span.clone()), narrow.get(span.clone()));
            // The first chunk's sums are copied, not added to zero, so a
            // sum of -0.0 stays -0.0.
            let add = |t: &mut f64, v: f64| *t = if j == 0 { v } else { *t + v };
            match (wide, narrow) {
                (Some(w), Some(n)) => {
                    for ((t, &w), &n) in total.iter_mut().zip(w).zip(n) {
                        add(t, w + n as f64);
                    }
                }
                (Some(w), None) => {
                    for (t, &w) in total.iter_mut().zip(w) {
                        add(t, w);
                    }
                }
                (None, Some(n)) => {
                    for (t, &n) in total.iter_mut().zip(n) {
                        add(t, n as f64);
                    }
                }
                (None, None) => {
                    for t in total.iter_mut() {
                        add(t, 0.0);
                    }
                }
            }
        }
        for (o, t) in out.iter_mut().zip(total.iter()) {
            *o = *t as f32;
        }
    });
}

/// Adds `f32` accumulators into `f64` ones and zeroes them.
#[inline(always)]
fn flush_into(acc: &mut [f64], part: &mut [f32]) {
    for (a, p) in acc.iter_mut().zip(part.iter_mut()) {
        *a += std::mem::take(p) as f64;
    }
}
