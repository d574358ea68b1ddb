//! Q6_K with the 16 sub-block searches of a super-block in 16 lanes.

use super::lanes::make_qx_quants_lanes;
use crate::quants::q6_k::{finish_block, BLOCK_BYTES};
use crate::quants::QK_K;

#[inline(always)]
pub fn quantize_row_q6_K_fast(x: &[f32], y: &mut [u8], quant_weights: Option<&[f32]>) {
    for (b, (x, y)) in x
        .chunks_exact(QK_K)
        .zip(y.chunks_exact_mut(BLOCK_BYTES))
        .enumerate()
    {
        let mut xt = [[0f32; 16]; 16];
        let mut wt = [[0f32; 16]; 16];
        for j in 0..16 {
            for i in 0..16 {
                let v = x[16 * j + i];
                xt[i][j] = v;
                wt[i][j] = match quant_weights {
                    Some(q) => q[QK_K * b + 16 * j + i],
                    None => v * v,
                };
            }
        }
        let mut lg = [[0i8; 16]; 16];
        let scales = make_qx_quants_lanes::<16, 16>(32, &xt, &wt, &mut lg);
        let mut l = [0i8; QK_K];
        for j in 0..16 {
            l[16 * j..16 * j + 16].copy_from_slice(&lg[j]);
        }
        finish_block(x, &mut l, &scales, y);
    }
}
