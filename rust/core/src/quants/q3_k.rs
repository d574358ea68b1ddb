//! Q3_K: 256-value super-blocks of 3-bit quants with 16 six-bit sub-block scales.
//! Layout (ggml's block_q3_K): the byte ranges below.
#![allow(non_snake_case)]

use super::common::{f16_bits, make_q3_quants, make_qx_quants, nearest_int};
use super::QuantType;
use super::QK_K;
use crate::fp16::{
    ggml_compute_fp16_to_fp32 as fp16_to_fp32, ggml_compute_fp32_to_fp16 as fp32_to_fp16,
};

pub const BLOCK_BYTES: usize = crate::ggml_types::block_bytes(QuantType::Q3_K as u32);

use std::ops::Range;
/// block_q3_K's fields: the high bits of every quant, their low two bits, the packed 6-bit
/// sub-block scales and the super-block scale.
pub const HMASK: Range<usize> = 0..QK_K / 8;
pub const QS: Range<usize> = HMASK.end..HMASK.end + QK_K / 4;
pub const SCALES: Range<usize> = QS.end..QS.end + 12;
pub const D: Range<usize> = SCALES.end..SCALES.end + 2;
const _: () = assert!(D.end == BLOCK_BYTES);

/// Sub-block j's 6-bit scale from the 12 packed bytes (ggml packs the low nibbles in bytes
/// 0..8 and the top two bits of four scales per byte in bytes 8..12).
#[inline]
pub(crate) fn unpack_scale(scales: &[u8], j: usize) -> i32 {
    let lo = if j < 8 {
        scales[j] & 0xF
    } else {
        scales[j - 8] >> 4
    };
    let hi = (scales[8 + j % 4] >> (2 * (j / 4))) & 3;
    (lo | (hi << 4)) as i32
}

#[inline]
pub(crate) fn pack_scale(scales: &mut [u8], j: usize, l: u8) {
    if j < 8 {
        scales[j] = l & 0xF;
    } else {
        scales[j - 8] |= (l & 0xF) << 4;
    }
    scales[j % 4 + 8] |= (l >> 4) << (2 * (j / 4));
}

/// Steps shared by both paths once the packed scales and `d` are set: re-quantize each
/// sub-block against its decoded scale (keeping the first-pass L where that scale is 0),
/// then pack the levels.
#[inline(always)]
pub(crate) fn requantize_and_pack(x: &[f32], L: &mut [i8; QK_K], y: &mut [u8]) {
    let d = fp16_to_fp32(f16_bits(y, D));
    for j in 0..QK_K / 16 {
        let sc = unpack_scale(&y[SCALES], j) - 32;
        let dd = d * sc as f32;
        if dd == 0.0 {
            continue;
        }
        for ii in 0..16 {
            let l = nearest_int(x[16 * j + ii] / dd).clamp(-4, 3);
            L[16 * j + ii] = (l + 4) as i8;
        }
    }
    pack_levels(L, y);
}

/// Splits the levels L (0..7) into the high-bit mask and the 2-bit planes. Element e's high
/// bit goes to bit e/32 of hmask[e%32], as ggml's running (m, hm) counter places it.
#[inline(always)]
pub(crate) fn pack_levels(L: &mut [i8; QK_K], y: &mut [u8]) {
    let mut hmask = [0u8; 32];
    for k in 0..QK_K / 32 {
        for l in 0..32 {
            let v = L[32 * k + l];
            let high = v > 3;
            hmask[l] |= (high as u8) << k;
            L[32 * k + l] = if high { v - 4 } else { v };
        }
    }
    y[HMASK].copy_from_slice(&hmask);
    for j in (0..QK_K).step_by(128) {
        for l in 0..32 {
            y[32 + j / 4 + l] = L[j + l] as u8
                | ((L[j + l + 32] as u8) << 2)
                | ((L[j + l + 64] as u8) << 4)
                | ((L[j + l + 96] as u8) << 6);
        }
    }
}

/// The reference path's 6-bit scales and `d` from the 16 sub-block scales.
#[inline]
pub(crate) fn pack_ref_scales(scales: &[f32; QK_K / 16], max_scale: f32, y: &mut [u8]) {
    y[SCALES].fill(0);
    let d = if max_scale != 0.0 {
        let iscale = -32.0f32 / max_scale;
        for (j, &s) in scales.iter().enumerate() {
            let l = nearest_int(iscale * s) as i8;
            let l = ((l as i32).clamp(-32, 31) + 32) as u8;
            pack_scale(&mut y[SCALES], j, l);
        }
        fp32_to_fp16(1.0 / iscale)
    } else {
        fp32_to_fp16(0.0)
    };
    y[D].copy_from_slice(&d.to_le_bytes());
}

/// Reference path (no importance matrix): blocks are independent, `k` values in all.
pub fn quantize_row_q3_K_ref(x: &[f32], y: &mut [u8], k: usize) {
    let nb = k / QK_K;
    let mut L = [0i8; QK_K];
    let mut scales = [0f32; QK_K / 16];
    for i in 0..nb {
        let x = &x[i * QK_K..(i + 1) * QK_K];
        let y = &mut y[i * BLOCK_BYTES..(i + 1) * BLOCK_BYTES];
        let mut max_scale = 0.0f32;
        let mut amax = 0.0f32;
        for j in 0..QK_K / 16 {
            scales[j] = make_q3_quants(16, 4, &x[16 * j..], &mut L[16 * j..], true);
            let scale = scales[j].abs();
            if scale > amax {
                amax = scale;
                max_scale = scales[j];
            }
        }
        pack_ref_scales(&scales, max_scale, y);
        requantize_and_pack(x, &mut L, y);
    }
}

/// The weighted path's scale-of-scales: 16 signed sub-block scales to 6 bits, weighted by
/// each sub-block's total importance.
#[inline]
pub(crate) fn pack_impl_scales(scales: &[f32; QK_K / 16], sw: &[f32; QK_K / 16], y: &mut [u8]) {
    let mut Ls = [0i8; QK_K / 16];
    y[SCALES].fill(0);
    let d_block = make_qx_quants(QK_K / 16, 32, scales, &mut Ls, 1, Some(sw));
    for (j, &l) in Ls.iter().enumerate() {
        pack_scale(&mut y[SCALES], j, l as u8);
    }
    y[D].copy_from_slice(&fp32_to_fp16(d_block).to_le_bytes());
}

/// Importance-weighted path for one row of `n_per_row` values.
pub fn quantize_row_q3_K_impl(x: &[f32], y: &mut [u8], n_per_row: usize, quant_weights: &[f32]) {
    let nb = n_per_row / QK_K;
    let mut L = [0i8; QK_K];
    let mut scales = [0f32; QK_K / 16];
    let mut weight = [0f32; 16];
    let mut sw = [0f32; QK_K / 16];
    for i in 0..nb {
        let x = &x[i * QK_K..(i + 1) * QK_K];
        let y = &mut y[i * BLOCK_BYTES..(i + 1) * BLOCK_BYTES];
        let mut sumx2 = 0.0f32;
        for &v in x {
            sumx2 += v * v;
        }
        let sigma2 = 2.0 * sumx2 / QK_K as f32;
        for j in 0..QK_K / 16 {
            let qw = &quant_weights[QK_K * i + 16 * j..QK_K * i + 16 * j + 16];
            for l in 0..16 {
                let xv = x[16 * j + l];
                weight[l] = qw[l] * (sigma2 + xv * xv).sqrt();
            }
            let mut sumw = 0.0f32;
            for &w in &weight {
                sumw += w;
            }
            sw[j] = sumw;
            scales[j] = make_qx_quants(16, 4, &x[16 * j..], &mut L[16 * j..], 1, Some(&weight));
        }
        pack_impl_scales(&scales, &sw, y);
        requantize_and_pack(x, &mut L, y);
    }
}

pub fn dequantize_row_q3_K(x: &[u8], y: &mut [f32], k: usize) {
    for (block, out) in x
        .chunks_exact(BLOCK_BYTES)
        .zip(y[..k].chunks_exact_mut(QK_K))
    {
        let hmask = &block[HMASK];
        let qs = &block[QS];
        let scales = &block[SCALES];
        let d_all = fp16_to_fp32(f16_bits(block, D));
        for (j, sub) in out.chunks_exact_mut(16).enumerate() {
            let dl = d_all * (unpack_scale(scales, j) - 32) as f32;
            for (ii, o) in sub.iter_mut().enumerate() {
                let e = 16 * j + ii;
                let h = e / 128;
                let kk = (e % 128) / 32;
                let l = e % 32;
                let q2 = ((qs[32 * h + l] >> (2 * kk)) & 3) as i32;
                let hb = hmask[l] & (1 << (e / 32)) != 0;
                *o = dl * (q2 - if hb { 0 } else { 4 }) as f32;
            }
        }
    }
}
