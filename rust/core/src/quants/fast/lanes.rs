//! Lane-parallel versions of ggml's scale searches: lane `j` runs group `j`'s own search,
//! in that group's own summation order, so every lane's result is bit-identical to the
//! scalar routine on that group. Only the independent groups are interleaved, which lets
//! the compiler put them in SIMD registers (no float is ever reassociated or fused).
//!
//! Inputs are transposed: `xt[i][j]` is element `i` of group `j`.

use crate::quants::common::GROUP_MAX_EPS;

#[inline(always)]
fn nearest_int(fval: f32) -> i32 {
    let val = fval + 12_582_912.0;
    (val.to_bits() as i32 & 0x007f_ffff) - 0x0040_0000
}

/// Per group: the largest |x| and the signed value that first reaches it (strict >, from 0),
/// the maximum every ggml search starts from.
#[inline(always)]
pub fn signed_absmax_lanes<const N: usize, const G: usize>(
    xt: &[[f32; G]; N],
) -> ([f32; G], [f32; G]) {
    let mut amax = [0f32; G];
    let mut max = [0f32; G];
    for row in xt {
        for j in 0..G {
            let ax = row[j].abs();
            let take = ax > amax[j];
            amax[j] = if take { ax } else { amax[j] };
            max[j] = if take { row[j] } else { max[j] };
        }
    }
    (amax, max)
}

/// `make_qx_quants(N, nmax, x_j, L_j, 1, w_j)` for G groups at once. Writes `l_out[j][i]`
/// (with the +nmax offset, as ggml) and returns each group's scale.
#[inline(always)]
pub fn make_qx_quants_lanes<const N: usize, const G: usize>(
    nmax: i32,
    xt: &[[f32; G]; N],
    wt: &[[f32; G]; N],
    l_out: &mut [[i8; N]; G],
) -> [f32; G] {
    let nmaxf = nmax as f32;
    let (amax, max) = signed_absmax_lanes(xt);

    let sums = |iscale: &[f32; G]| {
        let mut sumlx = [0f32; G];
        let mut suml2 = [0f32; G];
        for (xr, wr) in xt.iter().zip(wt.iter()) {
            for j in 0..G {
                let l = nearest_int(iscale[j] * xr[j]).clamp(-nmax, nmax - 1) as f32;
                let w = wr[j];
                sumlx[j] += w * xr[j] * l;
                suml2[j] += w * l * l;
            }
        }
        (sumlx, suml2)
    };

    let mut iscale = [0f32; G];
    for j in 0..G {
        iscale[j] = -nmaxf / max[j];
    }
    let (sumlx, suml2) = sums(&iscale);
    let mut scale = [0f32; G];
    let mut best = [0f32; G];
    let mut best_iscale = iscale;
    for j in 0..G {
        scale[j] = if suml2[j] != 0.0 {
            sumlx[j] / suml2[j]
        } else {
            0.0
        };
        best[j] = scale[j] * sumlx[j];
    }
    for is in -9i32..=9 {
        if is == 0 {
            continue;
        }
        let num = -(nmaxf + 0.1f32 * is as f32);
        for j in 0..G {
            iscale[j] = num / max[j];
        }
        let (sumlx, suml2) = sums(&iscale);
        for j in 0..G {
            let take = (suml2[j] > 0.0) & (sumlx[j] * sumlx[j] > best[j] * suml2[j]);
            let s = sumlx[j] / suml2[j];
            scale[j] = if take { s } else { scale[j] };
            best[j] = if take { s * sumlx[j] } else { best[j] };
            best_iscale[j] = if take { iscale[j] } else { best_iscale[j] };
        }
    }
    // L of the accepted scale, recomputed once instead of rewritten at every acceptance.
    for j in 0..G {
        let live = amax[j] >= GROUP_MAX_EPS;
        for i in 0..N {
            let l = nearest_int(best_iscale[j] * xt[i][j]).clamp(-nmax, nmax - 1) + nmax;
            l_out[j][i] = if live { l as i8 } else { 0 };
        }
        scale[j] = if live { scale[j] } else { 0.0 };
    }
    scale
}

/// `make_q3_quants(N, nmax, x_j, L_j, true)` for G groups at once (weights x²). A lane
/// whose pass changed nothing stops, as the scalar loop breaks.
#[inline(always)]
pub fn make_q3_quants_lanes<const N: usize, const G: usize>(
    nmax: i32,
    xt: &[[f32; G]; N],
    l_out: &mut [[i8; N]; G],
) -> [f32; G] {
    let (amax, max) = signed_absmax_lanes(xt);
    let mut iscale = [0f32; G];
    for j in 0..G {
        iscale[j] = -(nmax as f32) / max[j];
    }
    // lt[i][j]: current signed level of element i in group j (no offset yet)
    let mut lt = [[0i32; G]; N];
    let mut sumlx = [0f32; G];
    let mut suml2 = [0f32; G];
    for i in 0..N {
        for j in 0..G {
            let x = xt[i][j];
            let l = nearest_int(iscale[j] * x).clamp(-nmax, nmax - 1);
            lt[i][j] = l;
            let w = x * x;
            let lf = l as f32;
            sumlx[j] += w * x * lf;
            suml2[j] += w * lf * lf;
        }
    }
    let mut active = [true; G];
    for _ in 0..5 {
        let mut changed = [false; G];
        for i in 0..N {
            for j in 0..G {
                let x = xt[i][j];
                let w = x * x;
                let li = lt[i][j] as f32;
                let slx0 = sumlx[j] - w * x * li;
                let sl20 = suml2[j] - w * li * li;
                let new_l = nearest_int(x * sl20 / slx0).clamp(-nmax, nmax - 1);
                let nl = new_l as f32;
                let slx = slx0 + w * x * nl;
                let sl2 = sl20 + w * nl * nl;
                // `&` rather than `&&`: no branches, so the lanes stay in vector registers.
                let take = active[j]
                    & (slx0 > 0.0)
                    & (new_l != lt[i][j])
                    & (sl2 > 0.0)
                    & (slx * slx * suml2[j] > sumlx[j] * sumlx[j] * sl2);
                lt[i][j] = if take { new_l } else { lt[i][j] };
                sumlx[j] = if take { slx } else { sumlx[j] };
                suml2[j] = if take { sl2 } else { suml2[j] };
                changed[j] |= take;
            }
        }
        let mut any = false;
        for j in 0..G {
            active[j] &= changed[j];
            any |= active[j];
        }
        if !any {
            break;
        }
    }
    let mut scale = [0f32; G];
    for j in 0..G {
        let live = amax[j] >= GROUP_MAX_EPS;
        for i in 0..N {
            l_out[j][i] = if live { (lt[i][j] + nmax) as i8 } else { 0 };
        }
        let s = if suml2[j] > 0.0 {
            sumlx[j] / suml2[j]
        } else {
            0.0
        };
        scale[j] = if live { s } else { 0.0 };
    }
    scale
}

/// `make_qkx2_quants` / `make_qkx3_quants` (with weights: the two agree then, since
/// `max < min` cannot happen) for G groups at once. Writes `l_out[j][i]` and `the_min[j]`
/// (= −min) and returns each group's scale. `use_mad`: errors as |diff| instead of diff²
/// (Q2_K's reference path).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub fn make_qkx_quants_lanes<const N: usize, const G: usize>(
    nmax: i32,
    xt: &[[f32; G]; N],
    wt: &[[f32; G]; N],
    l_out: &mut [[u8; N]; G],
    the_min: &mut [f32; G],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
    use_mad: bool,
) -> [f32; G] {
    let nmaxf = nmax as f32;
    let err = |diff: f32| if use_mad { diff.abs() } else { diff * diff };
    let mut min = xt[0];
    let mut max = xt[0];
    let mut sum_w = wt[0];
    let mut sum_x = [0f32; G];
    for j in 0..G {
        sum_x[j] = sum_w[j] * xt[0][j];
    }
    for i in 1..N {
        for j in 0..G {
            let x = xt[i][j];
            min[j] = if x < min[j] { x } else { min[j] };
            max[j] = if x > max[j] { x } else { max[j] };
            let w = wt[i][j];
            sum_w[j] += w;
            sum_x[j] += w * x;
        }
    }
    let mut iscale = [0f32; G];
    let mut scale = [0f32; G];
    for j in 0..G {
        min[j] = if min[j] > 0.0 { 0.0 } else { min[j] };
        iscale[j] = nmaxf / (max[j] - min[j]);
        scale[j] = 1.0 / iscale[j];
    }
    let min0 = min;
    let mut best = [0f32; G];
    for i in 0..N {
        for j in 0..G {
            let x = xt[i][j];
            let l = nearest_int(iscale[j] * (x - min[j])).clamp(0, nmax) as f32;
            let diff = scale[j] * l + min[j] - x;
            best[j] += wt[i][j] * err(diff);
        }
    }
    // L is recomputed at the end from the (iscale, min) that produced the accepted levels.
    let mut l_iscale = iscale;
    let mut l_min = min;
    let mut laux = [[0f32; G]; N];
    for is in 0..=nstep {
        let num = rmin + rdelta * is as f32 + nmaxf;
        let mut sum_l = [0f32; G];
        let mut sum_l2 = [0f32; G];
        let mut sum_xl = [0f32; G];
        for j in 0..G {
            iscale[j] = num / (max[j] - min[j]);
        }
        for i in 0..N {
            for j in 0..G {
                let x = xt[i][j];
                let l = nearest_int(iscale[j] * (x - min[j])).clamp(0, nmax) as f32;
                laux[i][j] = l;
                let w = wt[i][j];
                sum_l[j] += w * l;
                sum_l2[j] += w * l * l;
                sum_xl[j] += w * l * x;
            }
        }
        let mut this_scale = [0f32; G];
        let mut this_min = [0f32; G];
        let mut d = [0f32; G];
        for j in 0..G {
            d[j] = sum_w[j] * sum_l2[j] - sum_l[j] * sum_l[j];
            let s = (sum_w[j] * sum_xl[j] - sum_x[j] * sum_l[j]) / d[j];
            let m = (sum_l2[j] * sum_x[j] - sum_l[j] * sum_xl[j]) / d[j];
            let clip = m > 0.0;
            this_min[j] = if clip { 0.0 } else { m };
            this_scale[j] = if clip { sum_xl[j] / sum_l2[j] } else { s };
        }
        let mut cur = [0f32; G];
        for i in 0..N {
            for j in 0..G {
                let diff = this_scale[j] * laux[i][j] + this_min[j] - xt[i][j];
                cur[j] += wt[i][j] * err(diff);
            }
        }
        for j in 0..G {
            let take = (d[j] > 0.0) & (cur[j] < best[j]);
            best[j] = if take { cur[j] } else { best[j] };
            scale[j] = if take { this_scale[j] } else { scale[j] };
            l_iscale[j] = if take { iscale[j] } else { l_iscale[j] };
            l_min[j] = if take { min[j] } else { l_min[j] };
            min[j] = if take { this_min[j] } else { min[j] };
        }
    }
    for j in 0..G {
        // ggml returns at once for these (all levels 0); the search above ran on inf/NaN
        // and is discarded here.
        let degenerate = max[j] == min0[j];
        for i in 0..N {
            let l = nearest_int(l_iscale[j] * (xt[i][j] - l_min[j])).clamp(0, nmax);
            l_out[j][i] = if degenerate { 0 } else { l as u8 };
        }
        the_min[j] = if degenerate { -min0[j] } else { -min[j] };
        scale[j] = if degenerate { 0.0 } else { scale[j] };
    }
    scale
}

/// ggml's `best_index_int8` (0.3.36 form) as a threshold count: the index is the number of
/// midpoints at or below x (exact midpoints go up), and NaN goes to the last entry as the
/// binary search sends it there.
#[inline(always)]
pub fn best_index_lanes<const G: usize>(val: &[i8; 16], x: &[f32; G]) -> [u8; G] {
    let mut idx = [0u8; G];
    for k in 1..16 {
        let t = (val[k - 1] as i32 + val[k] as i32) as f32;
        for j in 0..G {
            idx[j] += (x[j] + x[j] >= t) as u8;
        }
    }
    for j in 0..G {
        idx[j] = if x[j].is_nan() { 15 } else { idx[j] };
    }
    idx
}
