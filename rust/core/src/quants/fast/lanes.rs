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
    let mut amax = [0f32; G];
    let mut max = [0f32; G];
    for row in xt.iter() {
        for j in 0..G {
            let ax = row[j].abs();
            let take = ax > amax[j];
            amax[j] = if take { ax } else { amax[j] };
            max[j] = if take { row[j] } else { max[j] };
        }
    }

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
    let mut amax = [0f32; G];
    let mut max = [0f32; G];
    for row in xt.iter() {
        for j in 0..G {
            let ax = row[j].abs();
            let take = ax > amax[j];
            amax[j] = if take { ax } else { amax[j] };
            max[j] = if take { row[j] } else { max[j] };
        }
    }
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
