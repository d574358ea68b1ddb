//! The shared scale searches of ggml-quants.c (`make_qx_quants`, `make_q3_quants`,
//! `make_qkx2_quants`, `make_qkx3_quants`, `make_qp_quants`, `best_index_int8`).
//!
//! Float operations are written in ggml's source order on purpose: `w*x*l` is `(w*x)*l`,
//! sums run in index order, and `L` arrays keep ggml's integer widths (i8 or u8), because
//! a stored value that wraps is read back wrapped. Reordering any of it changes bytes.

pub const GROUP_MAX_EPS: f32 = 1e-15;

/// ggml's `nearest_int`: round half to even through the 1.5·2^23 bit trick. Callers clamp
/// afterwards, and outside ±4194303 the trick's result is what ggml gets, so keep the trick.
#[inline(always)]
pub fn nearest_int(fval: f32) -> i32 {
    let val = fval + 12_582_912.0;
    let i = val.to_bits() as i32;
    (i & 0x007f_ffff) - 0x0040_0000
}

/// C's float-to-int conversion as x86-64 performs it (`cvttss2si`): truncation toward zero,
/// and the "integer indefinite" i32::MIN for NaN and out-of-range values. ggml writes
/// `(int8_t)(x*id + 8.5f)` and the like; with a subnormal block maximum `id` is infinite, and
/// Rust's saturating `as` would then disagree with ggml's bytes.
#[inline(always)]
pub fn c_f32_to_i32(v: f32) -> i32 {
    let in_range = (-2_147_483_648.0..2_147_483_648.0).contains(&v);
    let safe = if in_range { v } else { 0.0 };
    // SAFETY: `safe` is finite and inside i32's range. Written as a select rather than with
    // Rust's saturating `as`, so the conversion vectorizes (cvttps2dq) in the fast paths.
    let r = unsafe { safe.to_int_unchecked::<i32>() };
    if in_range {
        r
    } else {
        i32::MIN
    }
}

#[inline(always)]
fn clamp_i(l: i32, lo: i32, hi: i32) -> i32 {
    lo.max(hi.min(l))
}

/// Signed symmetric quantizer to `[0, 2·nmax−1]` (stored with the `+nmax` offset).
/// Only rmse_type 1 is used by the types simpo-q supports: weights `qw` or, without them, x².
pub fn make_qx_quants(
    n: usize,
    nmax: i32,
    x: &[f32],
    l_out: &mut [i8],
    rmse_type: i32,
    qw: Option<&[f32]>,
) -> f32 {
    debug_assert_eq!(rmse_type, 1);
    let x = &x[..n];
    let l_out = &mut l_out[..n];
    let mut max = 0.0f32;
    let mut amax = 0.0f32;
    for &xi in x {
        let ax = xi.abs();
        if ax > amax {
            amax = ax;
            max = xi;
        }
    }
    if amax < GROUP_MAX_EPS {
        l_out.fill(0);
        return 0.0;
    }
    let weight = |i: usize| match qw {
        Some(q) => q[i],
        None => x[i] * x[i],
    };
    let nmaxf = nmax as f32;
    let mut iscale = -nmaxf / max;
    let mut sumlx = 0.0f32;
    let mut suml2 = 0.0f32;
    for i in 0..n {
        let l = clamp_i(nearest_int(iscale * x[i]), -nmax, nmax - 1);
        l_out[i] = (l + nmax) as i8;
        let w = weight(i);
        sumlx += w * x[i] * l as f32;
        suml2 += w * l as f32 * l as f32;
    }
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for is in -9i32..=9 {
        if is == 0 {
            continue;
        }
        iscale = -(nmaxf + 0.1f32 * is as f32) / max;
        sumlx = 0.0;
        suml2 = 0.0;
        for i in 0..n {
            let l = clamp_i(nearest_int(iscale * x[i]), -nmax, nmax - 1) as f32;
            let w = weight(i);
            sumlx += w * x[i] * l;
            suml2 += w * l * l;
        }
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            for i in 0..n {
                let l = nearest_int(iscale * x[i]);
                l_out[i] = (nmax + clamp_i(l, -nmax, nmax - 1)) as i8;
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// The Q3_K reference path's quantizer: start from the max-based scale, then improve one
/// element at a time (weights x²). Only the `do_rmse = true` branch is used by ggml.
pub fn make_q3_quants(n: usize, nmax: i32, x: &[f32], l_out: &mut [i8], do_rmse: bool) -> f32 {
    debug_assert!(do_rmse);
    let x = &x[..n];
    let l_out = &mut l_out[..n];
    let mut max = 0.0f32;
    let mut amax = 0.0f32;
    for &xi in x {
        let ax = xi.abs();
        if ax > amax {
            amax = ax;
            max = xi;
        }
    }
    if amax < GROUP_MAX_EPS {
        l_out.fill(0);
        return 0.0;
    }
    let iscale = -(nmax as f32) / max;
    let mut sumlx = 0.0f32;
    let mut suml2 = 0.0f32;
    for i in 0..n {
        let l = clamp_i(nearest_int(iscale * x[i]), -nmax, nmax - 1);
        l_out[i] = l as i8;
        let w = x[i] * x[i];
        sumlx += w * x[i] * l as f32;
        suml2 += w * l as f32 * l as f32;
    }
    for _itry in 0..5 {
        let mut n_changed = 0;
        for i in 0..n {
            let w = x[i] * x[i];
            let li = l_out[i] as f32;
            let mut slx = sumlx - w * x[i] * li;
            if slx > 0.0 {
                let mut sl2 = suml2 - w * li * li;
                let new_l = clamp_i(nearest_int(x[i] * sl2 / slx), -nmax, nmax - 1);
                if new_l != l_out[i] as i32 {
                    slx += w * x[i] * new_l as f32;
                    sl2 += w * new_l as f32 * new_l as f32;
                    if sl2 > 0.0 && slx * slx * suml2 > sumlx * sumlx * sl2 {
                        l_out[i] = new_l as i8;
                        sumlx = slx;
                        suml2 = sl2;
                        n_changed += 1;
                    }
                }
            }
        }
        if n_changed == 0 {
            break;
        }
    }
    for l in l_out.iter_mut() {
        *l += nmax as i8;
    }
    if suml2 > 0.0 {
        sumlx / suml2
    } else {
        0.0
    }
}

/// Asymmetric (scale, min) quantizer with a grid search over the scale; the Q4_K/Q5_K
/// reference paths. Returns the scale and writes `-min` to `the_min`.
#[allow(clippy::too_many_arguments)]
pub fn make_qkx2_quants(
    n: usize,
    nmax: i32,
    x: &[f32],
    weights: &[f32],
    l_out: &mut [u8],
    the_min: &mut f32,
    laux: &mut [u8],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
    use_mad: bool,
) -> f32 {
    let x = &x[..n];
    let weights = &weights[..n];
    let mut min = x[0];
    let mut max = x[0];
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..n {
        if x[i] < min {
            min = x[i];
        }
        if x[i] > max {
            max = x[i];
        }
        let w = weights[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        l_out[..n].fill(0);
        *the_min = -min;
        return 0.0;
    }
    let nmaxf = nmax as f32;
    let mut iscale = nmaxf / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0.0f32;
    for i in 0..n {
        let l = clamp_i(nearest_int(iscale * (x[i] - min)), 0, nmax);
        l_out[i] = l as u8;
        let mut diff = scale * l_out[i] as f32 + min - x[i];
        diff = if use_mad { diff.abs() } else { diff * diff };
        best_error += weights[i] * diff;
    }
    if nstep < 1 {
        *the_min = -min;
        return scale;
    }
    for is in 0..=nstep {
        iscale = (rmin + rdelta * is as f32 + nmaxf) / (max - min);
        let mut sum_l = 0.0f32;
        let mut sum_l2 = 0.0f32;
        let mut sum_xl = 0.0f32;
        for i in 0..n {
            let l = clamp_i(nearest_int(iscale * (x[i] - min)), 0, nmax);
            laux[i] = l as u8;
            let w = weights[i];
            let lf = l as f32;
            sum_l += w * lf;
            sum_l2 += w * lf * lf;
            sum_xl += w * lf * x[i];
        }
        let d = sum_w * sum_l2 - sum_l * sum_l;
        if d > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / d;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / d;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut cur_error = 0.0f32;
            for i in 0..n {
                let mut diff = this_scale * laux[i] as f32 + this_min - x[i];
                diff = if use_mad { diff.abs() } else { diff * diff };
                cur_error += weights[i] * diff;
            }
            if cur_error < best_error {
                l_out[..n].copy_from_slice(&laux[..n]);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    *the_min = -min;
    scale
}

/// As `make_qkx2_quants`, but with x² weights when none are given and a `max <= min`
/// degenerate test. Inside the search loop the rounding is the plain clamped `nearest_int`,
/// as in the ggml of llama-cpp-python 0.3.36: when an accepted `min` moves far from an
/// outlier, `nearest_int` leaves its valid range and its wrapped result is what ggml
/// clamps (newer ggml guards `v > 0` first; that would change bytes here).
#[allow(clippy::too_many_arguments)]
pub fn make_qkx3_quants(
    n: usize,
    nmax: i32,
    x: &[f32],
    weights: Option<&[f32]>,
    l_out: &mut [u8],
    the_min: &mut f32,
    laux: &mut [u8],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
    use_mad: bool,
) -> f32 {
    let x = &x[..n];
    let weight = |i: usize| match weights {
        Some(w) => w[i],
        None => x[i] * x[i],
    };
    let mut min = x[0];
    let mut max = x[0];
    let mut sum_w = weight(0);
    let mut sum_x = sum_w * x[0];
    for i in 1..n {
        if x[i] < min {
            min = x[i];
        }
        if x[i] > max {
            max = x[i];
        }
        let w = weight(i);
        sum_w += w;
        sum_x += w * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max <= min {
        l_out[..n].fill(0);
        *the_min = -min;
        return 0.0;
    }
    let nmaxf = nmax as f32;
    let mut iscale = nmaxf / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_mad = 0.0f32;
    for i in 0..n {
        let l = clamp_i(nearest_int(iscale * (x[i] - min)), 0, nmax);
        l_out[i] = l as u8;
        let mut diff = scale * l_out[i] as f32 + min - x[i];
        diff = if use_mad { diff.abs() } else { diff * diff };
        best_mad += weight(i) * diff;
    }
    if nstep < 1 {
        *the_min = -min;
        return scale;
    }
    for is in 0..=nstep {
        iscale = (rmin + rdelta * is as f32 + nmaxf) / (max - min);
        let mut sum_l = 0.0f32;
        let mut sum_l2 = 0.0f32;
        let mut sum_xl = 0.0f32;
        for i in 0..n {
            let l = clamp_i(nearest_int(iscale * (x[i] - min)), 0, nmax);
            laux[i] = l as u8;
            let w = weight(i);
            let lf = l as f32;
            sum_l += w * lf;
            sum_l2 += w * lf * lf;
            sum_xl += w * lf * x[i];
        }
        let d = sum_w * sum_l2 - sum_l * sum_l;
        if d > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / d;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / d;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut cur_error = 0.0f32;
            for i in 0..n {
                let mut diff = this_scale * laux[i] as f32 + this_min - x[i];
                diff = if use_mad { diff.abs() } else { diff * diff };
                cur_error += weight(i) * diff;
            }
            if cur_error < best_mad {
                l_out[..n].copy_from_slice(&laux[..n]);
                best_mad = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    *the_min = -min;
    scale
}

/// Quantizer of non-negative values (the sub-block scales and mins of Q4_K/Q5_K with an
/// importance matrix). `L` is u8 as in ggml: a negative input wraps, and the wrapped value
/// is what later arithmetic reads.
pub fn make_qp_quants(
    n: usize,
    nmax: i32,
    x: &[f32],
    l_out: &mut [u8],
    quant_weights: &[f32],
) -> f32 {
    let x = &x[..n];
    let w = &quant_weights[..n];
    let mut max = 0.0f32;
    for &xi in x {
        max = if max > xi { max } else { xi };
    }
    if max < GROUP_MAX_EPS {
        l_out[..n].fill(0);
        return 0.0;
    }
    let nmaxf = nmax as f32;
    let mut iscale = nmaxf / max;
    for i in 0..n {
        l_out[i] = nearest_int(iscale * x[i]) as u8;
    }
    let scale = 1.0 / iscale;
    let mut best_mse = 0.0f32;
    for i in 0..n {
        let diff = x[i] - scale * l_out[i] as f32;
        best_mse += w[i] * diff * diff;
    }
    for is in -4i32..=4 {
        if is == 0 {
            continue;
        }
        let iscale_is = (0.1f32 * is as f32 + nmaxf) / max;
        let scale_is = 1.0 / iscale_is;
        let mut mse = 0.0f32;
        for i in 0..n {
            let l = nmax.min(nearest_int(iscale_is * x[i]));
            let diff = x[i] - scale_is * l as f32;
            mse += w[i] * diff * diff;
        }
        if mse < best_mse {
            best_mse = mse;
            iscale = iscale_is;
        }
    }
    let mut sumlx = 0.0f32;
    let mut suml2 = 0.0f32;
    for i in 0..n {
        let l = nmax.min(nearest_int(iscale * x[i]));
        l_out[i] = l as u8;
        let lf = l as f32;
        sumlx += w[i] * x[i] * lf;
        suml2 += w[i] * lf * lf;
    }
    for _itry in 0..5 {
        let mut n_changed = 0;
        for i in 0..n {
            let li = l_out[i] as f32;
            let mut slx = sumlx - w[i] * x[i] * li;
            let mut sl2 = suml2 - w[i] * li * li;
            if slx > 0.0 && sl2 > 0.0 {
                let new_l = nmax.min(nearest_int(x[i] * sl2 / slx));
                if new_l != l_out[i] as i32 {
                    slx += w[i] * x[i] * new_l as f32;
                    sl2 += w[i] * new_l as f32 * new_l as f32;
                    if slx * slx * suml2 > sumlx * sumlx * sl2 {
                        l_out[i] = new_l as u8;
                        sumlx = slx;
                        suml2 = sl2;
                        n_changed += 1;
                    }
                }
            }
        }
        if n_changed == 0 {
            break;
        }
    }
    if suml2 > 0.0 {
        sumlx / suml2
    } else {
        0.0
    }
}

/// Index of the nearest codebook value: clamp at the ends, binary-search the bracketing
/// pair, and take the lower index only when it is strictly nearer. This is the form in the
/// ggml of llama-cpp-python 0.3.36; newer ggml's branchless search agrees on finite values
/// but sends NaN (a 0/0 scale on overflowing input) to index 0 where this one gives 15.
#[inline]
pub fn best_index_int8(n: usize, val: &[i8], x: f32) -> usize {
    if x <= val[0] as f32 {
        return 0;
    }
    if x >= val[n - 1] as f32 {
        return n - 1;
    }
    let mut ml = 0usize;
    let mut mu = n - 1;
    while mu - ml > 1 {
        let mav = (ml + mu) / 2;
        if x < val[mav] as f32 {
            mu = mav;
        } else {
            ml = mav;
        }
    }
    if x - (val[mu - 1] as f32) < (val[mu] as f32) - x {
        mu - 1
    } else {
        mu
    }
}

/// The little-endian f16 bits of a block field (a 2-byte range of the block).
#[inline(always)]
pub fn f16_bits(block: &[u8], at: std::ops::Range<usize>) -> u16 {
    u16::from_le_bytes([block[at.start], block[at.start + 1]])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_int_is_round_half_even() {
        for (f, want) in [
            (0.5, 0),
            (1.5, 2),
            (2.5, 2),
            (-0.5, 0),
            (-1.5, -2),
            (3.49, 3),
        ] {
            assert_eq!(nearest_int(f), want, "{f}");
        }
    }

    #[test]
    fn best_index_is_nearest() {
        let kv: [i8; 16] = [
            -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
        ];
        for v in -200..200 {
            let x = v as f32 * 0.75;
            let got = best_index_int8(16, &kv, x);
            let best = (0..16)
                .min_by(|&a, &b| {
                    let da = (x - kv[a] as f32).abs();
                    let db = (x - kv[b] as f32).abs();
                    da.partial_cmp(&db).unwrap().then(b.cmp(&a))
                })
                .unwrap();
            assert_eq!(got, best, "x = {x}");
        }
    }
}
