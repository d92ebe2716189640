//! The column path: channels-last data whose groups span several rows,
//! reduced per channel over pieces of rows and combined into groups.

use super::careful::{self, BackwardLimit};
use super::partials::Partials;
use super::plan::{correction, Backward, Coefs, GroupStats, Norm, Plan, Run, Scope};
use crate::elem::Elem;
use crate::lanes::{self, DxChannels, Periodic};
use crate::layout::Geometry;
use crate::moments::{scale_for, Moments};
use crate::parallel::{chunk_items, items_per_chunk, map_chunks, stream_output, SharedMut};
use crate::simd::multiversion;
use std::ops::Range;

/// The column path's units: the row ranges of `[rows, c]` whose groups are
/// independent. Batch statistics make one unit of all rows; per-sample
/// statistics make one unit per sample.
struct Units {
    count: usize,
    rows: usize,
}

impl Plan {
    fn units(&self) -> Units {
        let Geometry { n, s, .. } = self.geo;
        match self.scope {
            Scope::AcrossBatch => Units {
                count: 1,
                rows: n * s,
            },
            Scope::PerSample { .. } => Units { count: n, rows: s },
        }
    }

    /// Rows per piece: a piece's rows are reduced together in cache.
    fn rows_per_piece(&self, rows: usize) -> usize {
        items_per_chunk(rows, self.geo.c, 0)
    }

    /// Group statistics of unit `u` from its per-channel moments.
    fn group_moments(&self, per_channel: &[Moments]) -> Vec<Moments> {
        per_channel
            .chunks(self.channels_per_group())
            .map(|ch| ch.iter().fold(Moments::EMPTY, |a, &b| a.merge(b)))
            .collect()
    }

    /// Per-channel forward coefficients `y = ((x - mh) - ml) · a + b`,
    /// [`Periodic::extend`]ed for the flat column loops.
    fn channel_coefs(&self, groups: &[GroupStats], coefs: &Coefs, per: &Periodic) -> [Vec<f32>; 4] {
        let cg = self.channels_per_group();
        let c = self.geo.c;
        let (mut mh, mut ml, mut a) = (vec![0.0; c], vec![0.0; c], vec![0.0; c]);
        for ch in 0..c {
            let g = &groups[ch / cg];
            mh[ch] = g.mean_hi;
            ml[ch] = g.mean_lo;
            a[ch] = g.rstd * coefs.weight[ch];
        }
        [
            per.extend(&mh),
            per.extend(&ml),
            per.extend(&a),
            per.extend(&coefs.bias),
        ]
    }

    pub(super) fn column_forward<T: Elem>(
        &self,
        y: &mut [T],
        x: &[T],
        coefs: &Coefs<'_>,
        norm: Norm<'_>,
    ) -> Vec<Moments> {
        let c = self.geo.c;
        let per = Periodic::new(c);
        let units = self.units();
        let per_piece = self.rows_per_piece(units.rows);
        let stream = stream_output::<T>(y.len());
        let y = SharedMut::new(y);
        let total = x.len();
        if units.count == 1 {
            // Batch statistics: pieces in parallel, merged in order, then a
            // second parallel sweep normalizes.
            let pieces = units.rows.div_ceil(per_piece).max(1);
            let (moments, groups): (Vec<Moments>, Vec<GroupStats>) = match norm {
                Norm::Batch(eps) => {
                    let parts = map_chunks(pieces, total, |i| {
                        let r = chunk_items(i, per_piece, units.rows);
                        column_moments(&x[r.start * c..r.end * c], c, self.centered)
                    });
                    let mut per_channel = vec![Moments::EMPTY; c];
                    for part in parts {
                        for (acc, m) in per_channel.iter_mut().zip(part) {
                            *acc = acc.merge(m);
                        }
                    }
                    let m = self.group_moments(&per_channel);
                    let g = m.iter().map(|m| GroupStats::from_moments(m, eps)).collect();
                    (m, g)
                }
                Norm::Given(groups) => (Vec::new(), groups.to_vec()),
            };
            let cc = self.channel_coefs(&groups, coefs, &per);
            // The second sweep runs backwards: the pieces the first sweep
            // read last are the likeliest still in cache.
            map_chunks(pieces, total, |i| {
                let r = chunk_items(pieces - 1 - i, per_piece, units.rows);
                // SAFETY: pieces cover disjoint row ranges.
                let out = unsafe { y.range(r.start * c..r.end * c) };
                column_apply(out, &x[r.start * c..r.end * c], &per, &cc, stream);
            });
            self.careful_forward(0, &groups, &y, x, coefs);
            moments
        } else {
            // Per-sample statistics: one task per sample does both sweeps
            // while the sample is in cache.
            let unit_len = units.rows * c;
            map_chunks(units.count, total, |u| {
                let xs = &x[u * unit_len..(u + 1) * unit_len];
                let (m, groups) = match norm {
                    Norm::Batch(eps) => {
                        let mut per_channel = vec![Moments::EMPTY; c];
                        for xp in xs.chunks(per_piece * c) {
                            for (acc, m) in
                                per_channel
                                    .iter_mut()
                                    .zip(column_moments(xp, c, self.centered))
                            {
                                *acc = acc.merge(m);
                            }
                        }
                        let m = self.group_moments(&per_channel);
                        let g: Vec<GroupStats> =
                            m.iter().map(|m| GroupStats::from_moments(m, eps)).collect();
                        (m, g)
                    }
                    Norm::Given(groups) => {
                        let per_unit = self.num_groups() / units.count;
                        (
                            Vec::new(),
                            groups[u * per_unit..(u + 1) * per_unit].to_vec(),
                        )
                    }
                };
                let cc = self.channel_coefs(&groups, coefs, &per);
                // Backwards, piece by piece: the last pieces read are in cache.
                for r in pieces_backwards(units.rows, per_piece) {
                    let span = r.start * c..r.end * c;
                    // SAFETY: samples cover disjoint ranges, and pieces
                    // disjoint parts of a sample.
                    let out =
                        unsafe { y.range(u * unit_len + span.start..u * unit_len + span.end) };
                    column_apply(out, &xs[span], &per, &cc, stream);
                }
                self.careful_forward(u * groups.len(), &groups, &y, x, coefs);
                m
            })
            .concat()
        }
    }

    pub(super) fn column_backward<T: Elem>(
        &self,
        dx: &SharedMut<'_, T>,
        dy: &[T],
        x: &[T],
        coefs: &Coefs<'_>,
        mode: Backward<'_>,
    ) -> Vec<Partials> {
        let c = self.geo.c;
        let per = Periodic::new(c);
        let units = self.units();
        let per_piece = self.rows_per_piece(units.rows);
        let total = x.len();
        let groups_per_unit = self.num_groups() / units.count;
        let unit_stats = |u: usize| -> Vec<GroupStats> {
            (0..groups_per_unit)
                .map(|k| GroupStats::given(mode.stats, u * groups_per_unit + k))
                .collect()
        };
        if units.count == 1 {
            let groups = unit_stats(0);
            let sums = self.column_sums(dy, x, &groups);
            let (mut part, k) =
                self.column_dx_coefs(&groups, &sums, coefs, mode.train, units.rows, &per);
            self.column_pass2(dx, dy, x, &per, &k);
            let wide = self.careful_backward(0..groups_per_unit, dx, dy, x, coefs, mode, &mut part);
            std::iter::once(part).chain(wide).collect()
        } else {
            let unit_len = units.rows * c;
            let parts = map_chunks(units.count, total, |u| {
                let span = u * unit_len..(u + 1) * unit_len;
                let (xs, dys) = (&x[span.clone()], &dy[span.clone()]);
                let groups = unit_stats(u);
                let mean = self.expand(&groups, |g| g.mean_hi);
                let rstd = self.expand(&groups, |g| g.rstd);
                let mut sums = [vec![0.0f64; c], vec![0.0f64; c], vec![0.0f64; c]];
                for (xp, dyp) in xs.chunks(per_piece * c).zip(dys.chunks(per_piece * c)) {
                    for (acc, p) in sums
                        .iter_mut()
                        .zip(column_bwd_sums(dyp, xp, c, &mean, &rstd))
                    {
                        for (a, v) in acc.iter_mut().zip(p) {
                            *a += v;
                        }
                    }
                }
                let (mut part, k) =
                    self.column_dx_coefs(&groups, &sums, coefs, mode.train, units.rows, &per);
                // Backwards, piece by piece: the last pieces read are in cache.
                for r in pieces_backwards(units.rows, per_piece) {
                    let piece = r.start * c..r.end * c;
                    let at = span.start + piece.start..span.start + piece.end;
                    // SAFETY: samples cover disjoint ranges, and pieces
                    // disjoint parts of a sample.
                    let out = unsafe { dx.range(at) };
                    column_dx(out, &dys[piece.clone()], &xs[piece], &per, &k);
                }
                let ks = u * groups_per_unit..(u + 1) * groups_per_unit;
                let wide = self.careful_backward(ks, dx, dy, x, coefs, mode, &mut part);
                (part, wide)
            });
            // Each unit's sums, then its groups redone in f64, in unit order.
            parts
                .into_iter()
                .flat_map(|(part, wide)| std::iter::once(part).chain(wide))
                .collect()
        }
    }

    /// Backward pass 1 of batch statistics (one unit of all rows): the
    /// per-channel `[Σdy, Σdy·x̂, Σx̂]`, pieces in parallel, added in order.
    pub(super) fn column_sums<T: Elem>(
        &self,
        dy: &[T],
        x: &[T],
        groups: &[GroupStats],
    ) -> [Vec<f64>; 3] {
        let c = self.geo.c;
        let rows = self.units().rows;
        let per_piece = self.rows_per_piece(rows);
        let mean = self.expand(groups, |g| g.mean_hi);
        let rstd = self.expand(groups, |g| g.rstd);
        let parts = map_chunks(rows.div_ceil(per_piece).max(1), x.len(), |i| {
            let r = chunk_items(i, per_piece, rows);
            let span = r.start * c..r.end * c;
            column_bwd_sums(&dy[span.clone()], &x[span], c, &mean, &rstd)
        });
        let mut sums = [vec![0.0f64; c], vec![0.0f64; c], vec![0.0f64; c]];
        for part in parts {
            for (acc, p) in sums.iter_mut().zip(part) {
                for (a, v) in acc.iter_mut().zip(p) {
                    *a += v;
                }
            }
        }
        sums
    }

    /// Backward pass 2 of batch statistics with coefficients `k`.
    pub(super) fn column_pass2<T: Elem>(
        &self,
        dx: &SharedMut<'_, T>,
        dy: &[T],
        x: &[T],
        per: &Periodic,
        k: &DxChannels,
    ) {
        let c = self.geo.c;
        let rows = self.units().rows;
        let per_piece = self.rows_per_piece(rows);
        let pieces = rows.div_ceil(per_piece).max(1);
        // Backwards, as in the forward: the last pieces are in cache.
        map_chunks(pieces, x.len(), |i| {
            let r = chunk_items(pieces - 1 - i, per_piece, rows);
            let span = r.start * c..r.end * c;
            // SAFETY: pieces cover disjoint row ranges.
            let out = unsafe { dx.range(span.clone()) };
            column_dx(out, &dy[span.clone()], &x[span], per, k);
        });
    }

    /// Rewrites in `f64` the output of the groups (`first`, the next, ...)
    /// whose statistics `groups` need it ([`careful`]), once the kernels
    /// have written every value.
    fn careful_forward<T: Elem>(
        &self,
        first: usize,
        groups: &[GroupStats],
        y: &SharedMut<'_, T>,
        x: &[T],
        coefs: &Coefs<'_>,
    ) {
        for (k, g) in (first..).zip(groups) {
            if let Some(w) = g.wide {
                let runs: Vec<Run> = self.runs(k).collect();
                careful::forward_runs(&runs, w, y, x, coefs);
            }
        }
    }

    /// Redoes in `f64` the backward of the groups in `ks` whose saved
    /// statistics need it ([`careful`]), once the kernels have written
    /// every value: their `dx` rewritten, their channels' sums in `part`
    /// zeroed and returned in a partial of their own.
    #[allow(clippy::too_many_arguments)]
    fn careful_backward<T: Elem>(
        &self,
        ks: Range<usize>,
        dx: &SharedMut<'_, T>,
        dy: &[T],
        x: &[T],
        coefs: &Coefs<'_>,
        mode: Backward<'_>,
        part: &mut Partials,
    ) -> Option<Partials> {
        let limit = BackwardLimit::new(self.group_size());
        let mut extra: Option<Partials> = None;
        for k in ks {
            let g = GroupStats::given(mode.stats, k);
            if !limit.needs_wide(g.mean_hi, g.rstd) {
                continue;
            }
            let cg = self.channels_per_group();
            let first = match self.scope {
                Scope::AcrossBatch => k,
                Scope::PerSample { groups } => k % groups * cg,
            };
            for ch in first..first + cg {
                part.clear(ch);
            }
            let runs: Vec<Run> = self.runs(k).collect();
            let extra = extra.get_or_insert_with(|| Partials::new(self.geo.c, true));
            let flags = (mode.train, self.centered);
            careful::backward_runs(&runs, (g.mean_hi, g.rstd), flags, dx, dy, x, coefs, extra);
        }
        extra
    }

    /// A per-group value repeated for each channel of the group.
    fn expand(&self, groups: &[GroupStats], f: impl Fn(&GroupStats) -> f32) -> Vec<f32> {
        let cg = self.channels_per_group();
        (0..self.geo.c).map(|ch| f(&groups[ch / cg])).collect()
    }

    /// From the per-channel sums `[Σdy, Σdy·x̂, Σx̂]` of one unit over
    /// `rows` rows: its parameter partials and the per-channel
    /// coefficients of pass 2.
    pub(super) fn column_dx_coefs(
        &self,
        groups: &[GroupStats],
        sums: &[Vec<f64>; 3],
        coefs: &Coefs<'_>,
        train: bool,
        rows: usize,
        per: &Periodic,
    ) -> (Partials, DxChannels) {
        let c = self.geo.c;
        let cg = self.channels_per_group();
        let n = (rows * cg) as f64;
        let mut part = Partials::new(c, false);
        let z = || vec![0.0f32; c];
        let mut k = [z(), z(), z(), z(), z(), z()];
        for (gi, g) in groups.iter().enumerate() {
            let chans = gi * cg..(gi + 1) * cg;
            let (mut sg, mut sgx, mut sx) = (0.0f64, 0.0f64, 0.0f64);
            for ch in chans.clone() {
                let w = coefs.weight[ch] as f64;
                sg += w * sums[0][ch];
                sgx += w * sums[1][ch];
                sx += sums[2][ch];
            }
            let (delta, mean_g, mean_gx) = correction(train, self.centered, n, [sg, sgx, sx]);
            let r = g.rstd as f64;
            for ch in chans {
                part.add(ch, sums[1][ch] - delta * sums[0][ch], sums[0][ch]);
                k[0][ch] = if self.centered { g.mean_hi } else { 0.0 };
                k[1][ch] = if r != 0.0 { (delta / r) as f32 } else { 0.0 };
                k[2][ch] = g.rstd;
                k[3][ch] = coefs.weight[ch] * g.rstd;
                k[4][ch] = (r * mean_g) as f32;
                k[5][ch] = (r * mean_gx) as f32;
            }
        }
        let [mean_hi, mean_lo, rstd, wr, cg, cgx] = k.map(|v| per.extend(&v));
        let dx = DxChannels {
            mean_hi,
            mean_lo,
            rstd,
            wr,
            cg,
            cgx,
        };
        (part, dx)
    }
}

impl Plan {
    /// Each group's moments on the column path, without normalizing.
    pub(super) fn column_group_moments<T: Elem>(&self, x: &[T]) -> Vec<Moments> {
        let c = self.geo.c;
        let units = self.units();
        let per_piece = self.rows_per_piece(units.rows);
        let unit_len = units.rows * c;
        let pieces = units.rows.div_ceil(per_piece).max(1);
        // Pieces of every unit, reduced in parallel and merged in
        // order: the cut matches `column_forward`'s, so the sums are too.
        let parts = map_chunks(units.count * pieces, x.len(), |i| {
            let (u, piece) = (i / pieces, i % pieces);
            let r = chunk_items(piece, per_piece, units.rows);
            let xs = &x[u * unit_len..(u + 1) * unit_len];
            column_moments(&xs[r.start * c..r.end * c], c, self.centered)
        });
        parts
            .chunks(pieces)
            .flat_map(|unit| {
                let mut per_channel = vec![Moments::EMPTY; c];
                for part in unit {
                    for (acc, m) in per_channel.iter_mut().zip(part) {
                        *acc = acc.merge(*m);
                    }
                }
                self.group_moments(&per_channel)
            })
            .collect()
    }
}

/// The row ranges of `rows` rows cut in pieces of `per_piece`, last first.
fn pieces_backwards(rows: usize, per_piece: usize) -> impl Iterator<Item = Range<usize>> {
    let pieces = rows.div_ceil(per_piece.max(1));
    (0..pieces)
        .rev()
        .map(move |i| chunk_items(i, per_piece, rows))
}

/// The one-sweep shift of each channel of a `[rows, c]` piece: the mean of
/// its first (up to) 16 rows, rounded to `f32`.
fn column_shift<T: Elem>(x: &[T], c: usize) -> Vec<f32> {
    let rows = (x.len() / c.max(1)).min(16);
    let mut sum = vec![0.0f64; c];
    for row in x.chunks_exact(c).take(rows) {
        for (s, v) in sum.iter_mut().zip(row) {
            *s += v.to_f64();
        }
    }
    sum.iter()
        .map(|&s| (s / rows.max(1) as f64) as f32)
        .collect()
}

multiversion! {
    /// Per-channel moments of a `[rows, c]` piece: one sweep, and two more
    /// over the piece (in cache) when any channel's sweep is refused (see
    /// [`crate::moments`]).
    fn column_moments<T: Elem>[s](x: &[T], c: usize, centered: bool) -> Vec<Moments> {
        let rows = x.len() / c.max(1);
        if rows == 0 {
            return vec![Moments::EMPTY; c];
        }
        let shift = if centered { column_shift(x, c) } else { vec![0.0; c] };
        let [s1, s2] = lanes::col_shifted_sums(s, x, c, &shift);
        let swept: Vec<Option<Moments>> = (0..c)
            .map(|ch| Moments::from_shifted(rows, shift[ch], [s1[ch], s2[ch]], centered))
            .collect();
        if swept.iter().all(Option::is_some) {
            return swept.into_iter().flatten().collect();
        }
        // The fallback's sums are taken for every channel (in vector
        // loops) but kept only where the sweep was refused: a channel's
        // statistics depend on that channel alone.
        let scale: Vec<f32> = lanes::col_max_abs(s, x, c).into_iter().map(scale_for).collect();
        let zero = vec![0.0f32; c];
        let m0: Vec<f32> = if centered {
            let [sum, _] = lanes::col_dev_sums(s, x, c, &scale, &zero);
            sum.iter().map(|&v| (v / rows as f64) as f32).collect()
        } else {
            zero
        };
        let [d1, d2] = lanes::col_dev_sums(s, x, c, &scale, &m0);
        (0..c)
            .map(|ch| {
                if let Some(m) = swept[ch] {
                    return m;
                }
                let sc = scale[ch] as f64;
                if centered {
                    Moments::from_deviations(rows, m0[ch] as f64 / sc, scale[ch], d1[ch], d2[ch])
                } else {
                    Moments { count: rows, mean: 0.0, var: d2[ch] / rows as f64 / (sc * sc) }
                }
            })
            .collect()
    }
}

multiversion! {
    /// `y = ((x - mh[c]) - ml[c]) · a[c] + b[c]` over `[rows, c]`.
    fn column_apply<T: Elem>[s](y: &mut [T], x: &[T], per: &Periodic, k: &[Vec<f32>; 4], stream: bool) {
        lanes::apply_channels(s, y, x, per, k, stream);
        if stream {
            s.fence();
        }
    }
}

multiversion! {
    /// Per-channel `[Σdy, Σdy·x̂, Σx̂]` over `[rows, c]`.
    fn column_bwd_sums<T: Elem>[s](dy: &[T], x: &[T], c: usize, mean: &[f32], rstd: &[f32]) -> [Vec<f64>; 3] {
        lanes::col_bwd_sums(s, dy, x, c, mean, rstd)
    }
}

multiversion! {
    /// Backward pass 2 over `[rows, c]`.
    fn column_dx<T: Elem>[s](dx: &mut [T], dy: &[T], x: &[T], per: &Periodic, k: &DxChannels) {
        lanes::bwd_dx_channels(s, dx, dy, x, per, k);
    }
}
