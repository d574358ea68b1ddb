//! The refined encoder (`--refine`): the same block layouts and decoder as ggml's k-quants,
//! a better choice of scales and quants, never worse than ggml's own block.
//!
//! Each super-block starts from ggml's bytes (the exact path). The decoded value of element
//! i of sub-block j is `(d·sc_j)·q_i − dmin·m_j` (Q3_K and Q6_K have no min), with `d`,
//! `dmin` half floats, `sc_j`, `m_j` small integers and `q_i` in the type's range. For fixed
//! scales the error Σ wᵢ (xᵢ − x̂ᵢ)² separates over elements, so the best quants are the
//! nearest ones: a quant can only be worth changing together with its scale. The search
//! therefore walks the representable scales themselves: every sub-block's integer scale
//! around ggml's, plus (Q3_K, Q6_K) the scale a weighted least-squares fit of the rounded
//! quants asks for (the "re-round, then recompute the best scale" step of greedy
//! re-rounding), each with its nearest quants. The neighbouring half floats of `d` are
//! supported, but measured not to pay (see `Kind`).
//!
//! The types with mins (Q4_K, Q5_K) keep ggml's mins and `dmin`. Their quants are unsigned,
//! so moving a sub-block's min shifts all its 32 values the same way (and a scale change,
//! with quants ≥ 0, mostly so): an error shared by the whole sub-block, which the per-element
//! measure below counts like independent errors but which adds up in a product with inputs
//! whose mean is not zero. Searching the mins and `dmin` too lowered that measure further and
//! raised the KL divergence on held-out text: Q4_K_M with an importance matrix, on the
//! 41M-parameter benchmark model, 4.4% above ggml's file with them, 0.3% above without
//! them; on the 2M tiny model 10.4% and 15.4% below (BENCHMARKS.md).
//!
//! Q3_K and Q6_K then rescale the candidate's `d` so that the block is not shrunk towards
//! zero (`unshrink`), and their measure counts shrinkage beyond its share of the squared
//! error (`measure`): the least-squares scales the search finds make blocks shorter than the
//! weights they stand for, every block of every layer the same way, and that raised the KL
//! divergence on held-out text while the squared error went down. The types with mins are
//! left out: scaling `d` under fixed mins moves the block's mean, the worse error for them.
//!
//! A candidate block replaces ggml's only if its measure, computed from what the real decoder
//! returns for the packed bytes, is lower (by a margin that keeps single-precision rounding
//! from deciding: `ACCEPT_MARGIN`).
//!
//! The weights: for a linear layer y = W·a the output error of a weight error ΔW is, to first
//! order and ignoring correlations between inputs, Σ ΔW²ᵢⱼ·E[aⱼ²]; the importance vector is
//! that E[a²] measured on the calibration text, and without one every column counts alike
//! (wᵢ = 1). Measured on held-out text (`simpo-q eval kld`, the tiny model), minimising the
//! raw importance-weighted error lowered the KL divergence without an importance matrix but
//! raised it with one: it fits the calibration text's statistics too closely. Shrinking the
//! importance halfway towards its mean over the super-block, wᵢ = qᵢ + mean(q), lowered it in
//! every case tried; ggml's own search weights (qᵢ·√(σ² + xᵢ²), x², …) raised it in three of
//! four. tests/test_refine.py and BENCHMARKS.md hold the numbers.

#![allow(non_snake_case)]

use super::common::f16_bits;
use super::q3_k::{self, unpack_scale};
use super::q45_k::{self, get_scale_min_k4, pack_q4, pack_q5, pack_scales};
use super::q6_k;
use super::{QuantType, QK_K};
use crate::fp16::ggml_compute_fp16_to_fp32 as fp16_to_fp32;
use crate::fp16::ggml_compute_fp32_to_fp16 as fp32_to_fp16;

/// What the search needs to know about a type. The step counts were chosen by measurement
/// (benches/bench_refine.py): the sub-block scales' neighbourhood is where the error goes
/// down (Q3_K with an importance vector: 3.1% lower at ±1, 6.4% at ±6, 7.2% at ±8), while
/// the neighbouring half floats of `d` changed it by less than 0.1% for twice the time; the
/// types with mins keep ggml's mins (see the module docs). Q3_K searches ±5 since it also
/// unshrinks: ±6 took it past 3× the exact path's time, and ±5 gave the same held-out KL
/// divergences on the benchmark models (within 1.5% either way).
#[derive(Clone, Copy)]
struct Kind {
    qtype: QuantType,
    sub: usize,     // values per sub-block
    sc: (i32, i32), // sub-block scale range, inclusive
    q: (i32, i32),  // quant range
    has_min: bool,  // Q4_K, Q5_K: x̂ = d·sc·q − dmin·m, m in 0..=63, kept as ggml chose it
    d_steps: i32,   // neighbouring half floats of d tried on each side
    sc_steps: i32,  // neighbouring integer sub-block scales tried on each side
    refit: bool,    // also try the least-squares scale of the rounded quants (no min)
    unshrink: bool, // rescale d against shrinkage, and count shrinkage in the measure (no min)
    block_bytes: usize,
}

fn kind(qtype: QuantType) -> Option<Kind> {
    Some(match qtype {
        QuantType::Q3_K => Kind {
            qtype,
            sub: 16,
            sc: (-32, 31),
            q: (-4, 3),
            has_min: false,
            d_steps: 0,
            sc_steps: 5,
            refit: true,
            unshrink: true,
            block_bytes: q3_k::BLOCK_BYTES,
        },
        QuantType::Q6_K => Kind {
            qtype,
            sub: 16,
            sc: (-128, 127),
            q: (-32, 31),
            has_min: false,
            d_steps: 0,
            sc_steps: 8,
            refit: true,
            unshrink: true,
            block_bytes: q6_k::BLOCK_BYTES,
        },
        QuantType::Q4_K | QuantType::Q5_K => Kind {
            qtype,
            sub: 32,
            sc: (0, 63),
            q: (0, if qtype == QuantType::Q4_K { 15 } else { 31 }),
            has_min: true,
            d_steps: 0,
            sc_steps: 6,
            refit: false,
            unshrink: false,
            block_bytes: if qtype == QuantType::Q4_K {
                q45_k::Q4_K_BLOCK_BYTES
            } else {
                q45_k::Q5_K_BLOCK_BYTES
            },
        },
        _ => return None,
    })
}

/// Whether `--refine` changes anything for this type (the others are written as ggml does).
pub fn is_refinable(qtype: QuantType) -> bool {
    kind(qtype).is_some()
}

/// A super-block's parameters: half-float bits of d and dmin, and per sub-block scale and min.
#[derive(Clone, Copy)]
struct Params {
    d: u16,
    dmin: u16,
    sc: [i32; 16],
    mn: [i32; 16],
}

fn read(k: &Kind, b: &[u8]) -> Params {
    let mut p = Params {
        d: 0,
        dmin: 0,
        sc: [0; 16],
        mn: [0; 16],
    };
    match k.qtype {
        QuantType::Q3_K => {
            p.d = f16_bits(b, q3_k::D);
            for j in 0..16 {
                p.sc[j] = unpack_scale(&b[q3_k::SCALES], j) - 32;
            }
        }
        QuantType::Q6_K => {
            p.d = f16_bits(b, q6_k::D);
            for j in 0..16 {
                p.sc[j] = b[q6_k::SCALES.start + j] as i8 as i32;
            }
        }
        _ => {
            p.d = f16_bits(b, q45_k::D);
            p.dmin = f16_bits(b, q45_k::DMIN);
            for j in 0..8 {
                let (s, m) = get_scale_min_k4(j, &b[q45_k::SCALES]);
                p.sc[j] = s as i32;
                p.mn[j] = m as i32;
            }
        }
    }
    p
}

/// Packs parameters and quants (q in the type's own range) into a block.
fn write(k: &Kind, p: &Params, q: &[i32; QK_K], b: &mut [u8]) {
    match k.qtype {
        QuantType::Q3_K => {
            let mut L = [0i8; QK_K];
            for i in 0..QK_K {
                L[i] = (q[i] + 4) as i8;
            }
            b[q3_k::SCALES].fill(0);
            for j in 0..16 {
                q3_k::pack_scale(&mut b[q3_k::SCALES], j, (p.sc[j] + 32) as u8);
            }
            b[q3_k::D].copy_from_slice(&p.d.to_le_bytes());
            q3_k::pack_levels(&mut L, b);
        }
        QuantType::Q6_K => {
            b[q6_k::D].copy_from_slice(&p.d.to_le_bytes());
            for j in 0..16 {
                b[q6_k::SCALES.start + j] = p.sc[j] as i8 as u8;
            }
            let mut L = [0i8; QK_K];
            for i in 0..QK_K {
                L[i] = (q[i] + 32) as i8;
            }
            q6_k::pack_levels(&L, b);
        }
        _ => {
            b[q45_k::D].copy_from_slice(&p.d.to_le_bytes());
            b[q45_k::DMIN].copy_from_slice(&p.dmin.to_le_bytes());
            let mut ls = [0u8; 8];
            let mut lm = [0u8; 8];
            for j in 0..8 {
                ls[j] = p.sc[j] as u8;
                lm[j] = p.mn[j] as u8;
            }
            b[q45_k::SCALES].fill(0);
            pack_scales(&mut b[q45_k::SCALES], &ls, &lm);
            let mut L = [0u8; QK_K];
            for i in 0..QK_K {
                L[i] = q[i] as u8;
            }
            if k.qtype == QuantType::Q4_K {
                pack_q4(&L, &mut b[q45_k::Q4_QS]);
            } else {
                let (qh, ql) = b[q45_k::Q5_QH.start..].split_at_mut(q45_k::Q5_QH.len());
                pack_q5(&L, qh, ql);
            }
        }
    }
}

fn decode(k: &Kind, b: &[u8], out: &mut [f32; QK_K]) {
    let f = match k.qtype {
        QuantType::Q3_K => q3_k::dequantize_row_q3_K,
        QuantType::Q6_K => q6_k::dequantize_row_q6_K,
        QuantType::Q4_K => q45_k::dequantize_row_q4_K,
        _ => q45_k::dequantize_row_q5_K,
    };
    f(b, out, QK_K);
}

fn block_error(x: &[f32], w: &[f32], v: &[f32; QK_K]) -> f64 {
    let mut e = 0.0f64;
    for i in 0..QK_K {
        let d = (x[i] - v[i]) as f64;
        e += w[i] as f64 * d * d;
    }
    e
}

/// How much more a block's shrinkage counts than its share of the squared error (`measure`).
const SHRINK_WEIGHT: f64 = 256.0;

/// A candidate must lower the measure by this fraction: `measure` sums in f32 (measured 10%
/// of the refinement's time in f64), whose rounding (~1e-6 relative over 256 terms) must not
/// decide, so that no block is worse than ggml's by the exact measure either.
const ACCEPT_MARGIN: f64 = 1e-4;

/// The refinement's measure of a decoded block `v`: the weighted squared error (weights `w`)
/// and, for the types without mins, its shrinkage ε = 1 − Σ wbᵢxᵢvᵢ / Σ wbᵢxᵢ² (the part of
/// x's own direction the block loses, weighted by the importance itself, `wb`) counted as
/// `SHRINK_WEIGHT`·ε²·Σ wᵢxᵢ². The squared error already holds ε²·Σ wᵢxᵢ², as if that part
/// were as harmless as independent noise; it is not (see `unshrink`). The factor was
/// measured: 64, 256, 1024 and 4096 gave the same KL divergences on the benchmark models
/// (the unshrunk candidates win at all of them), none gave ggml's shrunk blocks a chance.
fn measure(k: &Kind, x: &[f32], w: &[f32], wb: &[f32], n: &Norms, v: &[f32; QK_K]) -> f64 {
    if !k.unshrink {
        return block_error(x, w, v);
    }
    // 8 independent lanes of each sum in f32, so that the loop vectorises (see ACCEPT_MARGIN)
    let (mut e, mut sxv) = ([0f32; 8], [0f32; 8]);
    for i in (0..QK_K).step_by(8) {
        for l in 0..8 {
            let (xi, vi) = (x[i + l], v[i + l]);
            e[l] += w[i + l] * (xi - vi) * (xi - vi);
            sxv[l] += wb[i + l] * xi * vi;
        }
    }
    let sum = |a: [f32; 8]| a.iter().map(|&v| v as f64).sum::<f64>();
    let eps = if n.sxx > 0.0 {
        1.0 - sum(sxv) / n.sxx
    } else {
        0.0
    };
    sum(e) + SHRINK_WEIGHT * eps * eps * n.wxx
}

/// A block's sums that depend on x and the weights only (`measure`, `unshrink`).
struct Norms {
    sxx: f64, // Σ wbᵢ·xᵢ²
    wxx: f64, // Σ wᵢ·xᵢ²
}

fn norms(k: &Kind, x: &[f32], w: &[f32], wb: &[f32]) -> Norms {
    let (mut sxx, mut wxx) = ([0f32; 8], [0f32; 8]);
    if !k.unshrink {
        return Norms { sxx: 0.0, wxx: 0.0 }; // `measure` does not need them
    }
    for i in (0..QK_K).step_by(8) {
        for l in 0..8 {
            let xx = x[i + l] * x[i + l];
            sxx[l] += wb[i + l] * xx;
            wxx[l] += w[i + l] * xx;
        }
    }
    let sum = |a: [f32; 8]| a.iter().map(|&v| v as f64).sum::<f64>();
    Norms {
        sxx: sum(sxx),
        wxx: sum(wxx),
    }
}

/// Nearest integer, ties to even, for |t| < 2^22 (the magic-number trick; NaN and huge
/// values land anywhere and are clamped by the caller).
#[inline(always)]
fn round(t: f32) -> f32 {
    (t + 12582912.0) - 12582912.0
}

/// One sub-block's error at a given scale step `dl` (= d·sc, exactly as the decoder computes
/// it) and min `dm` (= dmin·m), with the nearest quants. Branch-free, so that it vectorises.
#[inline(always)]
fn sub_error(x: &[f32], w: &[f32], dl: f32, dm: f32, lo: f32, hi: f32) -> f32 {
    let inv = if dl == 0.0 { 0.0 } else { 1.0 / dl };
    // 8 partial sums: independent lanes the compiler keeps in one vector register
    let mut acc = [0.0f32; 8];
    for (c, (xs, ws)) in x.chunks_exact(8).zip(w.chunks_exact(8)).enumerate() {
        let _ = c;
        for l in 0..8 {
            let t = clamp(round((xs[l] + dm) * inv), lo, hi);
            let r = xs[l] - (dl * t - dm);
            acc[l] += ws[l] * r * r;
        }
    }
    acc.iter().sum()
}

/// `v` limited to [lo, hi] with plain comparisons (no NaN handling: it compiles to min/max).
#[inline(always)]
fn clamp(v: f32, lo: f32, hi: f32) -> f32 {
    let v = if v < lo { lo } else { v };
    if v > hi {
        hi
    } else {
        v
    }
}

/// The nearest quants of one sub-block at (dl, dm), as `sub_error` chose them.
fn sub_quants(x: &[f32], dl: f32, dm: f32, lo: f32, hi: f32, q: &mut [i32]) {
    let inv = if dl == 0.0 { 0.0 } else { 1.0 / dl };
    // in 8s (sub-blocks are 16 or 32 long), so that it vectorises
    for (qs, xs) in q.chunks_exact_mut(8).zip(x.chunks_exact(8)) {
        for l in 0..8 {
            qs[l] = clamp(round((xs[l] + dm) * inv), lo, hi) as i32;
        }
    }
}

/// The best (error, scale) of one sub-block for the given `d` and the sub-block's min step
/// `dm` (= dmin·m, ggml's; 0 without mins), among the neighbours of the starting scale and
/// (Q3_K, Q6_K) the scale a least-squares refit of the rounded quants asks for.
fn best_sub(k: &Kind, x: &[f32], w: &[f32], d: f32, dm: f32, sc0: i32) -> (f32, i32) {
    let (lo, hi) = (k.q.0 as f32, k.q.1 as f32);
    let mut best = (f32::INFINITY, sc0);
    let try_one = |sc: i32, best: &mut (f32, i32)| {
        if sc < k.sc.0 || sc > k.sc.1 {
            return;
        }
        let e = sub_error(x, w, d * sc as f32, dm, lo, hi);
        if e < best.0 {
            *best = (e, sc);
        }
    };
    for ds in -k.sc_steps..=k.sc_steps {
        try_one(sc0 + ds, &mut best);
    }
    if !k.refit {
        return best;
    }
    // refit: the continuous scale that best fits the chosen quants (x ≈ s·q), rounded
    debug_assert!(!k.has_min);
    let n = x.len();
    let mut q = [0i32; 32];
    sub_quants(x, d * best.1 as f32, 0.0, lo, hi, &mut q[..n]);
    let (mut swxq, mut swqq) = (0f32, 0f32);
    for i in 0..n {
        let (wi, xi, qi) = (w[i], x[i], q[i] as f32);
        swxq += wi * xi * qi;
        swqq += wi * qi * qi;
    }
    let s = if swqq > 0.0 {
        swxq as f64 / swqq as f64
    } else {
        0.0
    };
    if s.is_finite() && s != 0.0 && d != 0.0 {
        let sc = (s / d as f64).round().clamp(-1000.0, 1000.0) as i32;
        if sc != best.1 {
            try_one(sc, &mut best);
        }
    }
    best
}

/// Refines one super-block in place (`b` holds ggml's bytes for `x`); returns whether the
/// block changed. `w`: the weights of the error it lowers; `wb`: those of the shrinkage it
/// undoes (`unshrink`).
fn refine_block(k: &Kind, x: &[f32], w: &[f32], wb: &[f32], b: &mut [u8]) -> bool {
    let p0 = read(k, b);
    let mut v0 = [0f32; QK_K];
    decode(k, b, &mut v0);
    let n = norms(k, x, w, wb);
    let e0 = measure(k, x, w, wb, &n, &v0);
    if e0 == 0.0 || p0.d == 0 {
        return false;
    }
    let mut v = [0f32; QK_K];
    let d0 = fp16_to_fp32(p0.d);
    let dmin = fp16_to_fp32(p0.dmin);
    let n_sub = QK_K / k.sub;
    let mut best_e = f32::INFINITY;
    let mut best_p = p0;
    let mut q = [0i32; QK_K];
    for dd in -k.d_steps..=k.d_steps {
        let Some(dbits) = step_f16(p0.d, dd) else {
            continue;
        };
        let d = fp16_to_fp32(dbits);
        if !d.is_finite() || d == 0.0 {
            continue;
        }
        let mut p = Params { d: dbits, ..p0 };
        let mut e = 0.0f32;
        for j in 0..n_sub {
            let r = j * k.sub..(j + 1) * k.sub;
            // the integer scale that keeps sub-block j's step d0·sc0 at the new d
            let sc0 = (p0.sc[j] as f32 * d0 / d).round() as i32;
            let dm = if k.has_min {
                dmin * p0.mn[j] as f32
            } else {
                0.0
            };
            let (ej, sc) = best_sub(k, &x[r.clone()], &w[r], d, dm, sc0);
            p.sc[j] = sc;
            e += ej;
        }
        if e < best_e {
            best_e = e;
            best_p = p;
        }
    }
    nearest_quants(k, x, &best_p, dmin, &mut q);
    if k.unshrink {
        // d unshrunk, the quants re-rounded to its steps, and d unshrunk once more for them
        unshrink(k, x, wb, &n, &mut best_p, &q);
        nearest_quants(k, x, &best_p, dmin, &mut q);
        unshrink(k, x, wb, &n, &mut best_p, &q);
    }
    // the decoder decides: keep the candidate only if it is really better than ggml's block
    let mut buf = [0u8; 256]; // the largest refinable block (Q6_K) is 210 bytes
    let cand = &mut buf[..k.block_bytes];
    write(k, &best_p, &q, cand);
    decode(k, cand, &mut v);
    if measure(k, x, w, wb, &n, &v) < e0 * (1.0 - ACCEPT_MARGIN) {
        b.copy_from_slice(cand);
        return true;
    }
    false
}

/// Every sub-block's nearest quants at the scales of `p` (ggml's mins kept: `dmin`).
fn nearest_quants(k: &Kind, x: &[f32], p: &Params, dmin: f32, q: &mut [i32; QK_K]) {
    let d = fp16_to_fp32(p.d);
    for j in 0..QK_K / k.sub {
        let r = j * k.sub..(j + 1) * k.sub;
        let dm = if k.has_min {
            dmin * p.mn[j] as f32
        } else {
            0.0
        };
        sub_quants(
            &x[r.clone()],
            d * p.sc[j] as f32,
            dm,
            k.q.0 as f32,
            k.q.1 as f32,
            &mut q[r],
        );
    }
}

/// Rescales the candidate's `d` (its quants, sub-block scales and mins stay) so that the block
/// is not shrunk towards zero: Σ wᵢ·xᵢ·x̂ᵢ = Σ wᵢ·xᵢ². Why: the scales that minimise the
/// squared error are least-squares fits, and a least-squares fit x̂ of x is shorter than x,
/// by the fraction of x it misses (‖x̂‖² = ‖x‖² − ‖x − x̂‖²): the refined Q3_K blocks were
/// shorter by several times ggml's 0.5% (the 41M benchmark model's layers; `bench_refine.py
/// shrink` shows the lengths). Spread over every block of every layer, that shrinks every
/// layer's output the same way: an error along the output's own direction, which the
/// per-element measure counts like independent noise but which the model is far more
/// sensitive to (scaled attention logits soften every softmax, scaled residual updates add
/// up). Rescaling raises the squared error by a factor 1/(1 − r), r its share of Σ w·x²
/// (about 2% for Q3_K: `bench_refine.py shrink`); with it, the
/// refined Q3_K layers of both wider benchmark models went from above ggml's KL divergence
/// on held-out text to below it (BENCHMARKS.md). The weights are the importance itself,
/// E[a²] (1 without one), not the error's shrunk ones: Σⱼ ΔWᵢⱼ·Wᵢⱼ·E[aⱼ²] is how much of
/// output i's own direction is lost. `q` are the candidate's quants in the type's range.
fn unshrink(k: &Kind, x: &[f32], w: &[f32], n: &Norms, p: &mut Params, q: &[i32; QK_K]) {
    debug_assert!(!k.has_min);
    // x̂ᵢ = d·scⱼ·qᵢ is linear in d: Σ w·x·x̂ = d·sxq
    let mut sxq = 0f64;
    for j in 0..QK_K / k.sub {
        let mut xq = 0f32; // one sub-block: 16 terms, exact enough in f32
        for i in j * k.sub..(j + 1) * k.sub {
            xq += w[i] * x[i] * q[i] as f32;
        }
        sxq += xq as f64 * p.sc[j] as f64;
    }
    let d = n.sxx / sxq;
    let old = fp16_to_fp32(p.d) as f64;
    if !d.is_finite() || d * old <= 0.0 {
        return;
    }
    let bits = fp32_to_fp16(d as f32);
    let back = fp16_to_fp32(bits);
    if back.is_finite() && back != 0.0 {
        p.d = bits;
    }
}

/// The half float `steps` representable values away from `bits` (same sign, finite).
fn step_f16(bits: u16, steps: i32) -> Option<u16> {
    if steps == 0 {
        return Some(bits);
    }
    let mag = (bits & 0x7fff) as i32 + steps;
    if !(0..0x7c00).contains(&mag) {
        return None;
    }
    Some((bits & 0x8000) | mag as u16)
}

/// The weights of the error the refinement lowers, over one super-block: the importance
/// vector shrunk halfway towards its mean over the super-block, qᵢ + mean(q), or 1 without
/// one (see the module docs for why).
fn refine_weights(qw: Option<&[f32]>, w: &mut [f32; QK_K]) {
    match qw {
        Some(q) => {
            let mean = q[..QK_K].iter().sum::<f32>() / QK_K as f32;
            for i in 0..QK_K {
                w[i] = q[i] + mean;
            }
        }
        None => w.fill(1.0),
    }
}

/// Refines a row of ggml blocks in place. `x` is the row, `imatrix` its importance vector
/// (if any), `y` the row's bytes from the exact path. Returns the number of super-blocks
/// that changed.
pub fn refine_row(qtype: QuantType, x: &[f32], imatrix: Option<&[f32]>, y: &mut [u8]) -> usize {
    let Some(k) = kind(qtype) else {
        return 0;
    };
    let mut w = [0f32; QK_K];
    let ones = [1f32; QK_K];
    let mut changed = 0;
    for (i, b) in y.chunks_exact_mut(k.block_bytes).enumerate() {
        let r = i * QK_K..(i + 1) * QK_K;
        let qw = imatrix.map(|q| &q[r.clone()]);
        refine_weights(qw, &mut w);
        changed += refine_block(&k, &x[r], &w, qw.unwrap_or(&ones), b) as usize;
    }
    changed
}

/// The weighted squared error of a row by the measure the refinement lowers (see the module
/// docs): for tests and benchmarks.
pub fn row_error(qtype: QuantType, x: &[f32], imatrix: Option<&[f32]>, y: &[u8]) -> Option<f64> {
    let k = kind(qtype)?;
    let mut w = [0f32; QK_K];
    let ones = [1f32; QK_K];
    let mut v = [0f32; QK_K];
    let mut e = 0.0;
    for (i, b) in y.chunks_exact(k.block_bytes).enumerate() {
        let r = i * QK_K..(i + 1) * QK_K;
        let qw = imatrix.map(|q| &q[r.clone()]);
        refine_weights(qw, &mut w);
        decode(&k, b, &mut v);
        let wb = qw.unwrap_or(&ones);
        e += measure(&k, &x[r.clone()], &w, wb, &norms(&k, &x[r], &w, wb), &v);
    }
    Some(e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quants::{dequantize, quantize};

    fn lcg(seed: u64, n: usize) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 33) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// A heavy-tailed row (cubed uniforms) and a positive importance vector for it.
    fn row(seed: u64, n: usize) -> (Vec<f32>, Vec<f32>) {
        let x = lcg(seed, n).iter().map(|v| v * v * v * 3.0).collect();
        let w = lcg(seed + 100, n).iter().map(|v| v.abs() + 0.01).collect();
        (x, w)
    }

    #[test]
    fn refined_blocks_are_never_worse_and_usually_better() {
        for t in [
            QuantType::Q3_K,
            QuantType::Q4_K,
            QuantType::Q5_K,
            QuantType::Q6_K,
        ] {
            let mut better = 0;
            for seed in 0..20u64 {
                let (x, w) = row(seed, 512);
                for imp in [None, Some(&w[..])] {
                    let mut y = quantize(t, &x, 512, imp).unwrap();
                    let e0 = row_error(t, &x, imp, &y).unwrap();
                    refine_row(t, &x, imp, &mut y);
                    let e1 = row_error(t, &x, imp, &y).unwrap();
                    assert!(e1 <= e0, "{t:?} seed {seed}: {e1} > {e0}");
                    better += (e1 < e0) as usize;
                    // the format is unchanged: the real decoder reads it
                    assert!(dequantize(t, &y, 512)
                        .unwrap()
                        .iter()
                        .all(|v| v.is_finite()));
                }
            }
            assert!(better > 20, "{t:?}: only {better} of 40 rows improved");
        }
    }

    /// Σ w·x·x̂ / Σ w·x² over a row: below 1 when the row is shrunk towards zero.
    fn projection(t: QuantType, x: &[f32], w: &[f32], y: &[u8]) -> f64 {
        let v = dequantize(t, y, x.len()).unwrap();
        let (mut xv, mut xx) = (0f64, 0f64);
        for i in 0..x.len() {
            xv += w[i] as f64 * x[i] as f64 * v[i] as f64;
            xx += w[i] as f64 * x[i] as f64 * x[i] as f64;
        }
        xv / xx
    }

    #[test]
    fn refined_q3_k_and_q6_k_rows_are_not_shrunk() {
        for t in [QuantType::Q3_K, QuantType::Q6_K] {
            for seed in 0..10u64 {
                let (x, w) = row(seed, 4096);
                let ones = vec![1f32; 4096];
                for (imp, wb) in [(None, &ones), (Some(&w[..]), &w)] {
                    let exact = quantize(t, &x, 4096, imp).unwrap();
                    let mut y = exact.clone();
                    refine_row(t, &x, imp, &mut y);
                    let (p0, p1) = (projection(t, &x, wb, &exact), projection(t, &x, wb, &y));
                    // the refined rows are x's length up to the rounding of d to a half
                    // float; ggml's Q3_K rows are more than 0.1% shorter (its Q6_K rows are
                    // short by about that rounding too on this data)
                    assert!(
                        (p1 - 1.0).abs() < 1e-3,
                        "{t:?} seed {seed}: refined projection {p1}, ggml's {p0}"
                    );
                    if t == QuantType::Q3_K {
                        assert!(p0 < 1.0 - 1e-3, "{t:?} seed {seed}: ggml's projection {p0}");
                    }
                }
            }
        }
    }

    #[test]
    fn f16_steps() {
        assert_eq!(step_f16(0x3c00, 1), Some(0x3c01));
        assert_eq!(step_f16(0xbc00, -1), Some(0xbbff));
        assert_eq!(step_f16(0x0000, -1), None);
        assert_eq!(step_f16(0x7bff, 1), None);
    }
}
