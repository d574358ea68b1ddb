//! Q2_K: 256-value super-blocks of 2-bit quants in 16 sub-blocks of 16, each with a 4-bit
//! scale and a 4-bit min, and super-block `d`/`dmin` in f16 (2.625 bits per weight).
//! Layout (ggml's block_q2_K): the byte ranges below. A one-to-one port of ggml's
//! quantize_row_q2_K_ref, quantize_row_q2_K_impl and dequantize_row_q2_K; what the two
//! quantizers do after their sub-block searches is `finish_ref` / `finish_impl`, which the
//! lane-parallel kernel (fast/q2_k.rs) shares.
#![allow(non_snake_case)]

use super::common::{f16_bits, make_qkx2_quants, make_qkx3_quants, make_qp_quants, nearest_int};
use super::QuantType;
use super::QK_K;
use crate::fp16::{
    ggml_compute_fp16_to_fp32 as fp16_to_fp32, ggml_compute_fp32_to_fp16 as fp32_to_fp16,
};

pub const BLOCK_BYTES: usize = crate::ggml_types::block_bytes(QuantType::Q2_K as u32);

use std::ops::Range;
/// block_q2_K's fields: sub-block scales (low nibble) and mins (high nibble), the quants
/// four to a byte, the super-block scale and min.
pub const SCALES: Range<usize> = 0..QK_K / 16;
pub const QS: Range<usize> = SCALES.end..SCALES.end + QK_K / 4;
pub const D: Range<usize> = QS.end..QS.end + 2;
pub const DMIN: Range<usize> = D.end..D.end + 2;
const _: () = assert!(DMIN.end == BLOCK_BYTES);

/// ggml's packing: byte l of each 32-byte group holds the quants l, l+32, l+64, l+96 of its
/// 128 values, two bits each from the bottom.
#[inline(always)]
fn pack_qs(qs: &mut [u8], L: &[u8; QK_K]) {
    for j in (0..QK_K).step_by(128) {
        for l in 0..32 {
            qs[j / 4 + l] =
                L[j + l] | (L[j + l + 32] << 2) | (L[j + l + 64] << 4) | (L[j + l + 96] << 6);
        }
    }
}

pub fn quantize_row_q2_K_ref(x: &[f32], y: &mut [u8], k: usize) {
    let mut L = [0u8; QK_K];
    let mut Laux = [0u8; 16];
    let mut weights = [0f32; 16];
    let mut mins = [0f32; QK_K / 16];
    let mut scales = [0f32; QK_K / 16];
    for (x, b) in x[..k]
        .chunks_exact(QK_K)
        .zip(y.chunks_exact_mut(BLOCK_BYTES))
    {
        for j in 0..QK_K / 16 {
            for l in 0..16 {
                weights[l] = x[16 * j + l].abs();
            }
            scales[j] = make_qkx2_quants(
                16,
                3,
                &x[16 * j..],
                &weights,
                &mut L[16 * j..16 * j + 16],
                &mut mins[j],
                &mut Laux,
                -0.5,
                0.1,
                15,
                true,
            );
        }
        finish_ref(x, &scales, &mins, &mut L, b);
    }
}

/// The rest of quantize_row_q2_K_ref once every sub-block's (scale, min) search has run:
/// both quantized to 4 bits against their maxima, then the quants against the decoded values.
pub(crate) fn finish_ref(
    x: &[f32],
    scales: &[f32; 16],
    mins: &[f32; 16],
    L: &mut [u8; QK_K],
    b: &mut [u8],
) {
    let q4scale = 15.0f32;
    let mut max_scale = 0.0f32; // as we are deducting the min, scales are always positive
    let mut max_min = 0.0f32;
    for j in 0..QK_K / 16 {
        if scales[j] > max_scale {
            max_scale = scales[j];
        }
        if mins[j] > max_min {
            max_min = mins[j];
        }
    }
    let sc = &mut b[SCALES];
    let d = if max_scale > 0.0 {
        let iscale = q4scale / max_scale;
        for j in 0..QK_K / 16 {
            sc[j] = nearest_int(iscale * scales[j]) as u8; // int → uint8_t, as ggml stores it
        }
        fp32_to_fp16(max_scale / q4scale)
    } else {
        sc.fill(0);
        fp32_to_fp16(0.0)
    };
    let dmin = if max_min > 0.0 {
        let iscale = q4scale / max_min;
        for j in 0..QK_K / 16 {
            let l = nearest_int(iscale * mins[j]);
            sc[j] |= (l << 4) as u8;
        }
        fp32_to_fp16(max_min / q4scale)
    } else {
        fp32_to_fp16(0.0)
    };
    finish_block(x, L, b, d, dmin);
}

/// Every sub-block's quants against its decoded (scale, min); a sub-block whose decoded
/// scale is 0 keeps the first pass's quants (ggml's `if (!d) continue`).
#[inline(always)]
fn requantize(x: &[f32], L: &mut [u8; QK_K], scales: &[u8], d_all: f32, dmin_all: f32) {
    for j in 0..QK_K / 16 {
        let d = d_all * (scales[j] & 0xF) as f32;
        if d == 0.0 {
            continue;
        }
        let dm = dmin_all * (scales[j] >> 4) as f32;
        for ii in 0..16 {
            let l = nearest_int((x[16 * j + ii] + dm) / d);
            L[16 * j + ii] = l.clamp(0, 3) as u8;
        }
    }
}

/// The search weights of quantize_row_q2_K_impl for one super-block: qwᵢ·√(σ² + xᵢ²), σ² the
/// block's mean square, in ggml's order; `weight(j, l)` receives sub-block j's element l.
#[inline(always)]
pub(crate) fn impl_weights(x: &[f32], qw: &[f32], mut weight: impl FnMut(usize, usize, f32)) {
    let mut sumx2 = 0.0f32;
    for v in &x[..QK_K] {
        sumx2 += v * v;
    }
    let sigma2 = sumx2 / QK_K as f32;
    for j in 0..QK_K / 16 {
        for l in 0..16 {
            weight(
                j,
                l,
                qw[16 * j + l] * (sigma2 + x[16 * j + l] * x[16 * j + l]).sqrt(),
            );
        }
    }
}

pub fn quantize_row_q2_K_impl(x: &[f32], y: &mut [u8], k: usize, quant_weights: &[f32]) {
    let mut L = [0u8; QK_K];
    let mut Laux = [0u8; 16];
    let mut mins = [0f32; QK_K / 16];
    let mut scales = [0f32; QK_K / 16];
    let mut weights = [[0f32; 16]; QK_K / 16];
    for (i, (x, b)) in x[..k]
        .chunks_exact(QK_K)
        .zip(y.chunks_exact_mut(BLOCK_BYTES))
        .enumerate()
    {
        impl_weights(x, &quant_weights[QK_K * i..QK_K * (i + 1)], |j, l, w| {
            weights[j][l] = w
        });
        let mut sw = [0f32; QK_K / 16];
        for j in 0..QK_K / 16 {
            for l in 0..QK_K / 16 {
                sw[j] += weights[j][l];
            }
            scales[j] = make_qkx3_quants(
                16,
                3,
                &x[16 * j..],
                Some(&weights[j]),
                &mut L[16 * j..16 * j + 16],
                &mut mins[j],
                &mut Laux,
                -0.9,
                0.05,
                36,
                false,
            );
        }
        finish_impl(x, &scales, &mins, &sw, &mut L, b);
    }
}

/// The rest of quantize_row_q2_K_impl once every sub-block's (scale, min) search has run:
/// scales and mins quantized by make_qp_quants (weighted by each sub-block's weight sum),
/// then the quants against the decoded values.
pub(crate) fn finish_impl(
    x: &[f32],
    scales: &[f32; 16],
    mins: &[f32; 16],
    sw: &[f32; 16],
    L: &mut [u8; QK_K],
    b: &mut [u8],
) {
    let mut Ls = [0u8; QK_K / 16];
    let mut Lm = [0u8; QK_K / 16];
    let dm = make_qp_quants(QK_K / 16, 15, scales, &mut Ls, sw);
    let mm = make_qp_quants(QK_K / 16, 15, mins, &mut Lm, sw);
    let d = fp32_to_fp16(dm);
    let dmin = fp32_to_fp16(mm);
    for j in 0..QK_K / 16 {
        b[SCALES][j] = Ls[j] | (Lm[j] << 4);
    }
    finish_block(x, L, b, d, dmin);
}

/// The end both quantizers share, once the packed scales and mins are written: the super-block
/// `d` and `dmin`, the quants against the decoded values, packed.
#[inline(always)]
fn finish_block(x: &[f32], L: &mut [u8; QK_K], b: &mut [u8], d: u16, dmin: u16) {
    b[D].copy_from_slice(&d.to_le_bytes());
    b[DMIN].copy_from_slice(&dmin.to_le_bytes());
    requantize(x, L, &b[SCALES], fp16_to_fp32(d), fp16_to_fp32(dmin));
    pack_qs(&mut b[QS], L);
}

pub fn dequantize_row_q2_K(x: &[u8], y: &mut [f32], k: usize) {
    for (block, out) in x
        .chunks_exact(BLOCK_BYTES)
        .zip(y[..k].chunks_exact_mut(QK_K))
    {
        let d = fp16_to_fp32(f16_bits(block, D));
        let min = fp16_to_fp32(f16_bits(block, DMIN));
        let scales = &block[SCALES];
        let mut q = &block[QS];
        let mut is = 0;
        let mut o = 0;
        for _n in (0..QK_K).step_by(128) {
            let mut shift = 0;
            for _j in 0..4 {
                for half in 0..2 {
                    let sc = scales[is];
                    is += 1;
                    let dl = d * (sc & 0xF) as f32;
                    let ml = min * (sc >> 4) as f32;
                    for l in 0..16 {
                        out[o] = dl * ((q[l + 16 * half] >> shift) & 3) as i8 as f32 - ml;
                        o += 1;
                    }
                }
                shift += 2;
            }
            q = &q[32..];
        }
    }
}
