//! Before any rank exchanges statistics, the ranks agree on what they are
//! doing: one gather of a fixed-size descriptor per rank. Every rank then
//! reads the same table and so reaches the same verdict — go on, or the
//! same error everywhere. Without it, a rank that refused its input would
//! leave the others waiting in the next collective, and ranks with
//! different channel counts would gather buffers of different lengths.

use crate::batch_norm::BatchNormConfig;
use crate::comm::{CommError, Communicator, DistributedError};
use crate::elem::Elem;
use crate::error::{NormError, Result};
use crate::layout::{ChannelAxis, Momentum, Stats};
use crate::normalize::Plan;

/// Which collective call a rank is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Pass {
    Forward = 1,
    Backward = 2,
}

/// What one rank brings to a call: the settings every rank must share,
/// and its number of values per channel.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Descriptor {
    pub channels: usize,
    pub dtype: &'static str,
    pub axis: ChannelAxis,
    pub eps: f32,
    /// Forward only.
    pub momentum: Option<Momentum>,
    /// Whether running statistics are updated (forward only).
    pub running: bool,
    /// A hash of the saved statistics (backward only): ranks must hand
    /// the backward the statistics of the same forward.
    pub saved: u64,
    /// Values per channel on this rank.
    pub count: u64,
}

impl Descriptor {
    /// A call on `p`'s input of `T` values with `cfg`: no momentum, no
    /// running statistics, no saved statistics.
    pub fn new<T: Elem>(p: &Plan, cfg: &BatchNormConfig) -> Self {
        Descriptor {
            channels: p.geo.c,
            dtype: T::NAME,
            axis: cfg.channel_axis,
            eps: cfg.eps,
            momentum: None,
            running: false,
            saved: 0,
            count: p.group_size() as u64,
        }
    }
}

/// Tags the descriptor so that a rank running other code is caught too.
const MAGIC: u64 = 0x6e6b_7362_6e00_0000; // "nksbn"
const DTYPES: [&str; 3] = ["f32", "bf16", "f16"];

// Slots of the encoded descriptor.
const TAG: usize = 0;
const REFUSED: usize = 1;
const MESSAGE: usize = 2;
const CHANNELS: usize = 3;
const DTYPE: usize = 4;
const AXIS: usize = 5;
const EPS: usize = 6;
const MOMENTUM_KIND: usize = 7;
const MOMENTUM: usize = 8;
const RUNNING: usize = 9;
const SAVED: usize = 10;
const COUNT: usize = 11;
const LEN: usize = 12;

/// A field every rank must agree on: its name, its slots, and how a
/// rank's value reads in the error.
type Field = (&'static str, &'static [usize], fn(&[u64]) -> String);

/// The fields every rank must agree on, in the order they are checked.
const SHARED: [Field; 7] = [
    ("channels", &[CHANNELS], |d| d[CHANNELS].to_string()),
    ("dtype", &[DTYPE], |d| {
        DTYPES.get(d[DTYPE] as usize).unwrap_or(&"?").to_string()
    }),
    ("channel axis", &[AXIS], |d| {
        if d[AXIS] == 0 { "first" } else { "last" }.to_string()
    }),
    ("eps", &[EPS], |d| f32::from_bits(d[EPS] as u32).to_string()),
    ("momentum", &[MOMENTUM_KIND, MOMENTUM], |d| {
        match d[MOMENTUM_KIND] {
            1 => format!("{}", f32::from_bits(d[MOMENTUM] as u32)),
            2 => format!("cumulative average after {} batches", d[MOMENTUM]),
            _ => "none".to_string(),
        }
    }),
    ("running statistics", &[RUNNING], |d| {
        if d[RUNNING] == 1 { "updated" } else { "none" }.to_string()
    }),
    ("saved statistics", &[SAVED], |d| {
        format!("{:016x}", d[SAVED])
    }),
];

fn encode(pass: Pass, local: &Result<Descriptor>, message: &[u8]) -> [u64; LEN] {
    let mut d = [0u64; LEN];
    d[TAG] = MAGIC | pass as u64;
    match local {
        Err(_) => {
            d[REFUSED] = 1;
            d[MESSAGE] = message.len() as u64;
        }
        Ok(l) => {
            d[CHANNELS] = l.channels as u64;
            d[DTYPE] = DTYPES.iter().position(|&t| t == l.dtype).unwrap_or(99) as u64;
            d[AXIS] = (l.axis == ChannelAxis::Last) as u64;
            d[EPS] = l.eps.to_bits() as u64;
            (d[MOMENTUM_KIND], d[MOMENTUM]) = match l.momentum {
                None => (0, 0),
                Some(Momentum::Exponential(m)) => (1, m.to_bits() as u64),
                Some(Momentum::CumulativeAverage {
                    num_batches_tracked,
                }) => (2, num_batches_tracked),
            };
            d[RUNNING] = l.running as u64;
            d[SAVED] = l.saved;
            d[COUNT] = l.count;
        }
    }
    d
}

/// Agrees with the other ranks on a call. Returns this rank's checked
/// input and every rank's count of values per channel, or the error every
/// rank returns. On one rank, a refused input is returned as it is.
pub(super) fn agree<P>(
    op: &'static str,
    comm: &dyn Communicator,
    pass: Pass,
    local: Result<(P, Descriptor)>,
) -> Result<(P, Vec<u64>)> {
    if comm.size() == 1 {
        return local.map(|(p, d)| (p, vec![d.count]));
    }
    let fail = |error| NormError::Distributed { op, error };
    let comm_err = |e: CommError| fail(DistributedError::Comm(e));
    let message = match &local {
        Err(e) => e.to_string().into_bytes(),
        Ok(_) => Vec::new(),
    };
    let desc = local.as_ref().map(|(_, d)| *d).map_err(Clone::clone);
    let table = comm
        .all_gather_u64(&encode(pass, &desc, &message))
        .map_err(comm_err)?;
    let rows: Vec<&[u64]> = table.chunks_exact(LEN).collect();
    // Ranks in different calls (or not running this code) first: the
    // other slots mean nothing then.
    if rows.iter().any(|d| d[TAG] != rows[0][TAG]) {
        let values = rows.iter().map(|d| call_name(d[TAG])).collect();
        return Err(fail(DistributedError::Mismatch {
            what: "call",
            values,
        }));
    }
    let refused: Vec<usize> = (0..rows.len()).filter(|&r| rows[r][REFUSED] != 0).collect();
    if let Some(&first) = refused.first() {
        let longest = rows.iter().map(|d| d[MESSAGE]).max().unwrap_or(0);
        let message =
            exchange_message(comm, &message, longest as usize, first).map_err(comm_err)?;
        return Err(fail(DistributedError::Refused {
            ranks: refused,
            message,
        }));
    }
    for (what, slots, show) in SHARED {
        if rows
            .iter()
            .any(|d| slots.iter().any(|&s| d[s] != rows[0][s]))
        {
            let values = rows.iter().map(|d| show(d)).collect();
            return Err(fail(DistributedError::Mismatch { what, values }));
        }
    }
    let counts = rows.iter().map(|d| d[COUNT]).collect();
    // `local` is Ok: this rank's row was not refused.
    local.map(|(p, _)| (p, counts))
}

fn call_name(tag: u64) -> String {
    match tag ^ MAGIC {
        1 => "forward".to_string(),
        2 => "backward".to_string(),
        _ => format!("unknown ({tag:#x})"),
    }
}

/// Every rank sends its message (UTF-8, packed 8 bytes a value, padded to
/// `longest` bytes); returns rank `from`'s.
fn exchange_message(
    comm: &dyn Communicator,
    message: &[u8],
    longest: usize,
    from: usize,
) -> std::result::Result<String, CommError> {
    let words = longest.div_ceil(8);
    let mut local = vec![0u64; words];
    for (w, chunk) in local.iter_mut().zip(message.chunks(8)) {
        let mut b = [0u8; 8];
        b[..chunk.len()].copy_from_slice(chunk);
        *w = u64::from_le_bytes(b);
    }
    let all = comm.all_gather_u64(&local)?;
    let bytes: Vec<u8> = all[from * words..(from + 1) * words]
        .iter()
        .flat_map(|w| w.to_le_bytes())
        .take(longest)
        .collect();
    let text = String::from_utf8_lossy(&bytes);
    Ok(text.trim_end_matches('\0').to_string())
}

/// A hash of saved statistics (FNV-1a over their bits), to check that
/// every rank hands the backward the same ones.
pub(super) fn hash_stats(stats: &Stats) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let lens = [stats.mean.len() as u32, stats.rstd.len() as u32];
    let bits = lens
        .into_iter()
        .chain(stats.mean.iter().chain(&stats.rstd).map(|v| v.to_bits()));
    for word in bits {
        for byte in word.to_le_bytes() {
            h = (h ^ byte as u64).wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// Takes part in a call's agreement with an input this rank refused
/// before it could describe it: returns the error every rank returns.
pub(super) fn refuse(
    op: &'static str,
    comm: &dyn Communicator,
    pass: Pass,
    error: NormError,
) -> NormError {
    let fallback = error.clone();
    agree::<()>(op, comm, pass, Err(error))
        .err()
        .unwrap_or(fallback)
}
