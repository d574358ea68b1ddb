//! Q2_K with the 16 sub-block (scale, min) searches of a super-block in 16 lanes.

use super::lanes::make_qkx_quants_lanes;
use crate::quants::q2_k::{finish_impl, finish_ref, impl_weights, BLOCK_BYTES};
use crate::quants::QK_K;

#[inline(always)]
pub fn quantize_row_q2_K_fast(x: &[f32], y: &mut [u8], quant_weights: Option<&[f32]>) {
    for (b, (x, y)) in x
        .chunks_exact(QK_K)
        .zip(y.chunks_exact_mut(BLOCK_BYTES))
        .enumerate()
    {
        let mut xt = [[0f32; 16]; 16];
        for j in 0..16 {
            for i in 0..16 {
                xt[i][j] = x[16 * j + i];
            }
        }
        let mut wt = [[0f32; 16]; 16];
        let mut lg = [[0u8; 16]; 16];
        let mut mins = [0f32; 16];
        let mut l = [0u8; QK_K];
        match quant_weights {
            None => {
                for i in 0..16 {
                    for j in 0..16 {
                        wt[i][j] = xt[i][j].abs();
                    }
                }
                let scales = make_qkx_quants_lanes::<16, 16>(
                    3, &xt, &wt, &mut lg, &mut mins, -0.5, 0.1, 15, true,
                );
                for j in 0..16 {
                    l[16 * j..16 * j + 16].copy_from_slice(&lg[j]);
                }
                finish_ref(x, &scales, &mins, &mut l, y);
            }
            Some(qw) => {
                impl_weights(x, &qw[QK_K * b..QK_K * (b + 1)], |j, i, w| wt[i][j] = w);
                let mut sw = [0f32; 16];
                for row in &wt {
                    for j in 0..16 {
                        sw[j] += row[j];
                    }
                }
                let scales = make_qkx_quants_lanes::<16, 16>(
                    3, &xt, &wt, &mut lg, &mut mins, -0.9, 0.05, 36, false,
                );
                for j in 0..16 {
                    l[16 * j..16 * j + 16].copy_from_slice(&lg[j]);
                }
                finish_impl(x, &scales, &mins, &sw, &mut l, y);
            }
        }
    }
}
