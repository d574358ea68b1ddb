//! Q4_K and Q5_K: 256-value super-blocks of 8 sub-blocks of 32, each with a 6-bit scale and
//! a 6-bit min, and super-block `d`/`dmin` in f16.
//! Layouts (ggml's block_q4_K, block_q5_K): the byte ranges below.
#![allow(non_snake_case)]

use super::common::{f16_bits, make_qkx2_quants, make_qkx3_quants, make_qp_quants, nearest_int};
use super::QuantType;
use super::QK_K;
use crate::fp16::{
    ggml_compute_fp16_to_fp32 as fp16_to_fp32, ggml_compute_fp32_to_fp16 as fp32_to_fp16,
};

pub const Q4_K_BLOCK_BYTES: usize = crate::ggml_types::block_bytes(QuantType::Q4_K as u32);
pub const Q5_K_BLOCK_BYTES: usize = crate::ggml_types::block_bytes(QuantType::Q5_K as u32);

use std::ops::Range;
/// The fields both share: the super-block scale and min, the packed 6-bit scales and mins.
pub const D: Range<usize> = 0..2;
pub const DMIN: Range<usize> = 2..4;
pub const SCALES: Range<usize> = 4..16;
/// Q4_K's four-bit quants.
pub const Q4_QS: Range<usize> = SCALES.end..SCALES.end + QK_K / 2;
/// Q5_K's fifth bits, then its low four bits.
pub const Q5_QH: Range<usize> = SCALES.end..SCALES.end + QK_K / 8;
pub const Q5_QS: Range<usize> = Q5_QH.end..Q5_QH.end + QK_K / 2;
const _: () = assert!(Q4_QS.end == Q4_K_BLOCK_BYTES && Q5_QS.end == Q5_K_BLOCK_BYTES);

#[inline]
pub fn get_scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// ggml's scale writes, in order j = 0..7. For j < 4 they are whole-byte stores, so a value
/// above 63 (possible on the Q4_K importance path, which does not clamp) leaks its top bits
/// into the bits that belong to sub-block j+4; reproduced on purpose.
#[inline(always)]
pub(crate) fn pack_scales(scales: &mut [u8], ls: &[u8; 8], lm: &[u8; 8]) {
    for j in 0..8 {
        if j < 4 {
            scales[j] = ls[j];
            scales[j + 4] = lm[j];
        } else {
            scales[j + 4] = (ls[j] & 0xF) | ((lm[j] & 0xF) << 4);
            scales[j - 4] |= (ls[j] >> 4) << 6;
            scales[j] |= (lm[j] >> 4) << 6;
        }
    }
}

/// Re-quantize every sub-block against its decoded (scale, min); sub-blocks whose decoded
/// scale is 0 keep the L of the first pass.
#[inline(always)]
fn requantize(x: &[f32], L: &mut [u8; QK_K], scales: &[u8], d: f32, dmin: f32, nmax: i32) {
    for j in 0..QK_K / 32 {
        let (sc, m) = get_scale_min_k4(j, scales);
        let dd = d * sc as f32;
        if dd == 0.0 {
            continue;
        }
        let dm = dmin * m as f32;
        for ii in 0..32 {
            let l = nearest_int((x[32 * j + ii] + dm) / dd).clamp(0, nmax);
            L[32 * j + ii] = l as u8;
        }
    }
}

#[inline(always)]
pub(crate) fn pack_q4(L: &[u8; QK_K], qs: &mut [u8]) {
    for (c, j) in (0..QK_K).step_by(64).enumerate() {
        for l in 0..32 {
            qs[32 * c + l] = L[j + l] | (L[j + l + 32] << 4);
        }
    }
}

#[inline(always)]
pub(crate) fn pack_q5(L: &[u8; QK_K], qh: &mut [u8], ql: &mut [u8]) {
    qh[..32].fill(0);
    let mut m1 = 1u8;
    let mut m2 = 2u8;
    for (c, n) in (0..QK_K).step_by(64).enumerate() {
        for j in 0..32 {
            let mut l1 = L[n + j];
            if l1 > 15 {
                l1 -= 16;
                qh[j] |= m1;
            }
            let mut l2 = L[n + j + 32];
            if l2 > 15 {
                l2 -= 16;
                qh[j] |= m2;
            }
            ql[32 * c + j] = l1 | (l2 << 4);
        }
        m1 <<= 2;
        m2 <<= 2;
    }
}

/// The reference-path scales shared by Q4_K and Q5_K. Returns (d, dmin) as f16 bits.
fn ref_scales(
    x: &[f32],
    L: &mut [u8; QK_K],
    nmax: i32,
    rmin: f32,
    nstep: i32,
    out_scales: &mut [u8],
) -> (u16, u16) {
    let mut weights = [0f32; 32];
    let mut laux = [0u8; 32];
    let mut mins = [0f32; QK_K / 32];
    let mut scales = [0f32; QK_K / 32];
    for j in 0..QK_K / 32 {
        let xb = &x[32 * j..32 * j + 32];
        let mut sum_x2 = 0.0f32;
        for &v in xb {
            sum_x2 += v * v;
        }
        let av_x = (sum_x2 / 32.0).sqrt();
        for l in 0..32 {
            weights[l] = av_x + xb[l].abs();
        }
        let Lj = &mut L[32 * j..32 * j + 32];
        scales[j] = make_qkx2_quants(
            32,
            nmax,
            xb,
            &weights,
            Lj,
            &mut mins[j],
            &mut laux,
            rmin,
            0.1,
            nstep,
            false,
        );
    }
    finish_ref_scales(&scales, &mins, out_scales)
}

/// The reference path's 6-bit scales and mins, each relative to the largest (ggml: "as we
/// are deducting the min, scales are always positive").
#[inline]
pub(crate) fn finish_ref_scales(
    scales: &[f32; 8],
    mins: &[f32; 8],
    out_scales: &mut [u8],
) -> (u16, u16) {
    let mut max_scale = 0.0f32;
    let mut max_min = 0.0f32;
    for j in 0..QK_K / 32 {
        if scales[j] > max_scale {
            max_scale = scales[j];
        }
        if mins[j] > max_min {
            max_min = mins[j];
        }
    }
    let inv_scale = if max_scale > 0.0 {
        63.0 / max_scale
    } else {
        0.0
    };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let mut ls = [0u8; 8];
    let mut lm = [0u8; 8];
    for j in 0..QK_K / 32 {
        ls[j] = 63.min(nearest_int(inv_scale * scales[j]) as u8);
        lm[j] = 63.min(nearest_int(inv_min * mins[j]) as u8);
    }
    pack_scales(out_scales, &ls, &lm);
    (fp32_to_fp16(max_scale / 63.0), fp32_to_fp16(max_min / 63.0))
}

/// The importance-path scales shared by Q4_K and Q5_K; `clamp63` is Q5_K's extra clamp.
fn impl_scales(
    x: &[f32],
    qw: &[f32],
    L: &mut [u8; QK_K],
    nmax: i32,
    clamp63: bool,
    out_scales: &mut [u8],
) -> (u16, u16) {
    let mut weights = [0f32; 32];
    let mut laux = [0u8; 32];
    let mut mins = [0f32; QK_K / 32];
    let mut scales = [0f32; QK_K / 32];
    let mut sw = [0f32; QK_K / 32];
    let mut sum_x2 = 0.0f32;
    for &v in &x[..QK_K] {
        sum_x2 += v * v;
    }
    let sigma2 = 2.0 * sum_x2 / QK_K as f32;
    for j in 0..QK_K / 32 {
        let xb = &x[32 * j..32 * j + 32];
        let q = &qw[32 * j..32 * j + 32];
        for l in 0..32 {
            weights[l] = q[l] * (sigma2 + xb[l] * xb[l]).sqrt();
        }
        let mut sumw = 0.0f32;
        for &w in &weights {
            sumw += w;
        }
        sw[j] = sumw;
        let Lj = &mut L[32 * j..32 * j + 32];
        scales[j] = make_qkx3_quants(
            32,
            nmax,
            xb,
            Some(&weights),
            Lj,
            &mut mins[j],
            &mut laux,
            -0.9,
            0.05,
            36,
            false,
        );
    }
    finish_impl_scales(&scales, &mins, &sw, clamp63, out_scales)
}

/// The weighted path's scale-of-scales and min-of-mins (make_qp_quants, weighted by each
/// sub-block's total importance).
#[inline]
pub(crate) fn finish_impl_scales(
    scales: &[f32; 8],
    mins: &[f32; 8],
    sw: &[f32; 8],
    clamp63: bool,
    out_scales: &mut [u8],
) -> (u16, u16) {
    let mut Ls = [0u8; QK_K / 32];
    let mut Lm = [0u8; QK_K / 32];
    let d_block = make_qp_quants(QK_K / 32, 63, scales, &mut Ls, sw);
    let m_block = make_qp_quants(QK_K / 32, 63, mins, &mut Lm, sw);
    if clamp63 {
        for v in Ls.iter_mut().chain(Lm.iter_mut()) {
            *v = 63.min(*v);
        }
    }
    pack_scales(out_scales, &Ls, &Lm);
    (fp32_to_fp16(d_block), fp32_to_fp16(m_block))
}

/// Writes d/dmin, re-quantizes against the packed scales and packs one block's quants.
#[inline(always)]
pub(crate) fn finish_block(
    x: &[f32],
    L: &mut [u8; QK_K],
    y: &mut [u8],
    d: u16,
    dmin: u16,
    q5: bool,
) {
    let (d, dmin) = write_d_dmin(y, d, dmin);
    if q5 {
        requantize(x, L, &y[SCALES], d, dmin, 31);
        let (qh, ql) = y[Q5_QH.start..].split_at_mut(Q5_QH.len());
        pack_q5(L, qh, ql);
    } else {
        requantize(x, L, &y[SCALES], d, dmin, 15);
        pack_q4(L, &mut y[Q4_QS]);
    }
}

#[inline(always)]
fn write_d_dmin(y: &mut [u8], d: u16, dmin: u16) -> (f32, f32) {
    y[D].copy_from_slice(&d.to_le_bytes());
    y[DMIN].copy_from_slice(&dmin.to_le_bytes());
    (fp16_to_fp32(d), fp16_to_fp32(dmin))
}

pub fn quantize_row_q4_K_ref(x: &[f32], y: &mut [u8], k: usize) {
    let mut L = [0u8; QK_K];
    for i in 0..k / QK_K {
        let x = &x[i * QK_K..(i + 1) * QK_K];
        let y = &mut y[i * Q4_K_BLOCK_BYTES..(i + 1) * Q4_K_BLOCK_BYTES];
        let (d, dmin) = ref_scales(x, &mut L, 15, -1.0, 20, &mut y[SCALES]);
        finish_block(x, &mut L, y, d, dmin, false);
    }
}

pub fn quantize_row_q4_K_impl(x: &[f32], y: &mut [u8], n_per_row: usize, quant_weights: &[f32]) {
    let mut L = [0u8; QK_K];
    for i in 0..n_per_row / QK_K {
        let x = &x[i * QK_K..(i + 1) * QK_K];
        let qw = &quant_weights[i * QK_K..(i + 1) * QK_K];
        let y = &mut y[i * Q4_K_BLOCK_BYTES..(i + 1) * Q4_K_BLOCK_BYTES];
        let (d, dmin) = impl_scales(x, qw, &mut L, 15, false, &mut y[SCALES]);
        finish_block(x, &mut L, y, d, dmin, false);
    }
}

pub fn quantize_row_q5_K_ref(x: &[f32], y: &mut [u8], k: usize) {
    let mut L = [0u8; QK_K];
    for i in 0..k / QK_K {
        let x = &x[i * QK_K..(i + 1) * QK_K];
        let y = &mut y[i * Q5_K_BLOCK_BYTES..(i + 1) * Q5_K_BLOCK_BYTES];
        let (d, dmin) = ref_scales(x, &mut L, 31, -0.5, 15, &mut y[SCALES]);
        finish_block(x, &mut L, y, d, dmin, true);
    }
}

pub fn quantize_row_q5_K_impl(x: &[f32], y: &mut [u8], n_per_row: usize, quant_weights: &[f32]) {
    let mut L = [0u8; QK_K];
    for i in 0..n_per_row / QK_K {
        let x = &x[i * QK_K..(i + 1) * QK_K];
        let qw = &quant_weights[i * QK_K..(i + 1) * QK_K];
        let y = &mut y[i * Q5_K_BLOCK_BYTES..(i + 1) * Q5_K_BLOCK_BYTES];
        let (d, dmin) = impl_scales(x, qw, &mut L, 31, true, &mut y[SCALES]);
        finish_block(x, &mut L, y, d, dmin, true);
    }
}

pub fn dequantize_row_q4_K(x: &[u8], y: &mut [f32], k: usize) {
    for (block, out) in x
        .chunks_exact(Q4_K_BLOCK_BYTES)
        .zip(y[..k].chunks_exact_mut(QK_K))
    {
        let d = fp16_to_fp32(f16_bits(block, D));
        let min = fp16_to_fp32(f16_bits(block, DMIN));
        let scales = &block[SCALES];
        let qs = &block[Q4_QS];
        for c in 0..4 {
            let (sc1, m1) = get_scale_min_k4(2 * c, scales);
            let (sc2, m2) = get_scale_min_k4(2 * c + 1, scales);
            let (d1, m1) = (d * sc1 as f32, min * m1 as f32);
            let (d2, m2) = (d * sc2 as f32, min * m2 as f32);
            let q = &qs[32 * c..32 * c + 32];
            for l in 0..32 {
                out[64 * c + l] = d1 * (q[l] & 0xF) as f32 - m1;
                out[64 * c + 32 + l] = d2 * (q[l] >> 4) as f32 - m2;
            }
        }
    }
}

pub fn dequantize_row_q5_K(x: &[u8], y: &mut [f32], k: usize) {
    for (block, out) in x
        .chunks_exact(Q5_K_BLOCK_BYTES)
        .zip(y[..k].chunks_exact_mut(QK_K))
    {
        let d = fp16_to_fp32(f16_bits(block, D));
        let min = fp16_to_fp32(f16_bits(block, DMIN));
        let scales = &block[SCALES];
        let qh = &block[Q5_QH];
        let ql = &block[Q5_QS];
        for c in 0..4 {
            let (sc1, m1) = get_scale_min_k4(2 * c, scales);
            let (sc2, m2) = get_scale_min_k4(2 * c + 1, scales);
            let (d1, m1) = (d * sc1 as f32, min * m1 as f32);
            let (d2, m2) = (d * sc2 as f32, min * m2 as f32);
            let u1 = 1u8 << (2 * c);
            let u2 = 2u8 << (2 * c);
            let q = &ql[32 * c..32 * c + 32];
            for l in 0..32 {
                let h1 = if qh[l] & u1 != 0 { 16 } else { 0 };
                let h2 = if qh[l] & u2 != 0 { 16 } else { 0 };
                out[64 * c + l] = d1 * ((q[l] & 0xF) + h1) as f32 - m1;
                out[64 * c + 32 + l] = d2 * ((q[l] >> 4) + h2) as f32 - m2;
            }
        }
    }
}
