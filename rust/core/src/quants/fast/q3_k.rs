//! Q3_K with the 16 sub-block searches of a super-block in 16 lanes.

use super::lanes::{make_q3_quants_lanes, make_qx_quants_lanes};
use crate::quants::q3_k::{pack_impl_scales, pack_ref_scales, requantize_and_pack, BLOCK_BYTES};
use crate::quants::QK_K;

#[inline(always)]
fn transpose(x: &[f32]) -> [[f32; 16]; 16] {
    let mut xt = [[0f32; 16]; 16];
    for j in 0..16 {
        for i in 0..16 {
            xt[i][j] = x[16 * j + i];
        }
    }
    xt
}

#[inline(always)]
fn flatten(lg: &[[i8; 16]; 16]) -> [i8; QK_K] {
    let mut l = [0i8; QK_K];
    for j in 0..16 {
        l[16 * j..16 * j + 16].copy_from_slice(&lg[j]);
    }
    l
}

#[inline(always)]
pub fn quantize_row_q3_K_ref_fast(x: &[f32], y: &mut [u8]) {
    for (x, y) in x.chunks_exact(QK_K).zip(y.chunks_exact_mut(BLOCK_BYTES)) {
        let xt = transpose(x);
        let mut lg = [[0i8; 16]; 16];
        let scales = make_q3_quants_lanes::<16, 16>(4, &xt, &mut lg);
        let mut max_scale = 0.0f32;
        let mut amax = 0.0f32;
        for &s in &scales {
            if s.abs() > amax {
                amax = s.abs();
                max_scale = s;
            }
        }
        pack_ref_scales(&scales, max_scale, y);
        let mut l = flatten(&lg);
        requantize_and_pack(x, &mut l, y);
    }
}

#[inline(always)]
pub fn quantize_row_q3_K_impl_fast(x: &[f32], y: &mut [u8], quant_weights: &[f32]) {
    for ((x, y), qw) in x
        .chunks_exact(QK_K)
        .zip(y.chunks_exact_mut(BLOCK_BYTES))
        .zip(quant_weights.chunks_exact(QK_K))
    {
        let mut sumx2 = 0.0f32;
        for &v in x {
            sumx2 += v * v;
        }
        let sigma2 = 2.0 * sumx2 / QK_K as f32;
        let xt = transpose(x);
        let qwt = transpose(qw);
        let mut wt = [[0f32; 16]; 16];
        let mut sw = [0f32; 16];
        for l in 0..16 {
            for j in 0..16 {
                wt[l][j] = qwt[l][j] * (sigma2 + xt[l][j] * xt[l][j]).sqrt();
                sw[j] += wt[l][j];
            }
        }
        let mut lg = [[0i8; 16]; 16];
        let scales = make_qx_quants_lanes::<16, 16>(4, &xt, &wt, &mut lg);
        pack_impl_scales(&scales, &sw, y);
        let mut l = flatten(&lg);
        requantize_and_pack(x, &mut l, y);
    }
}
