//! IEEE half and bfloat16 conversions exactly as ggml-base does them on x86-64.
//!
//! ggml-base is built without F16C, so `GGML_FP32_TO_FP16` is the portable bit trick
//! (`ggml_compute_fp32_to_fp16`): round to nearest even, overflow to infinity, NaN to 0x7E00.

#[inline]
pub fn ggml_compute_fp32_to_fp16(f: f32) -> u16 {
    // 2^112 and 2^-110: scaling through them performs the rounding in the f32 adder.
    let scale_to_inf = f32::from_bits(0x7780_0000);
    let scale_to_zero = f32::from_bits(0x0880_0000);
    let mut base = (f.abs() * scale_to_inf) * scale_to_zero;

    let w = f.to_bits();
    let shl1_w = w.wrapping_add(w);
    let sign = w & 0x8000_0000;
    let mut bias = shl1_w & 0xFF00_0000;
    if bias < 0x7100_0000 {
        bias = 0x7100_0000;
    }
    base += f32::from_bits((bias >> 1) + 0x0780_0000);
    let bits = base.to_bits();
    let exp_bits = (bits >> 13) & 0x0000_7C00;
    let mantissa_bits = bits & 0x0000_0FFF;
    let nonsign = exp_bits + mantissa_bits;
    ((sign >> 16)
        | if shl1_w > 0xFF00_0000 {
            0x7E00
        } else {
            nonsign
        }) as u16
}

#[inline]
pub fn ggml_compute_fp16_to_fp32(h: u16) -> f32 {
    let w = (h as u32) << 16;
    let sign = w & 0x8000_0000;
    let two_w = w.wrapping_add(w);

    let exp_offset = 0xE0u32 << 23;
    let exp_scale = f32::from_bits(0x0780_0000); // 2^-112
    let normalized_value = f32::from_bits((two_w >> 4) + exp_offset) * exp_scale;

    let magic_mask = 126u32 << 23;
    let magic_bias = 0.5f32;
    let denormalized_value = f32::from_bits((two_w >> 17) | magic_mask) - magic_bias;

    let denormalized_cutoff = 1u32 << 27;
    let result = sign
        | if two_w < denormalized_cutoff {
            denormalized_value.to_bits()
        } else {
            normalized_value.to_bits()
        };
    f32::from_bits(result)
}

#[inline]
pub fn ggml_compute_fp32_to_bf16(f: f32) -> u16 {
    let u = f.to_bits();
    if (u & 0x7fff_ffff) > 0x7f80_0000 {
        // NaN: keep it quiet rather than let rounding carry it into infinity.
        return ((u >> 16) | 64) as u16;
    }
    ((u + (0x7fff + ((u >> 16) & 1))) >> 16) as u16
}

#[inline]
pub fn ggml_compute_bf16_to_fp32(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fp16_round_trip_of_every_half() {
        for h in 0..=u16::MAX {
            let f = ggml_compute_fp16_to_fp32(h);
            if f.is_nan() {
                continue;
            }
            assert_eq!(ggml_compute_fp32_to_fp16(f), h, "half {h:#06x}");
        }
    }

    #[test]
    fn fp16_rounds_ties_to_even() {
        // 1 + 2^-11 lies halfway between 1 and the next half; even mantissa wins.
        assert_eq!(ggml_compute_fp32_to_fp16(1.0 + f32::powi(2.0, -11)), 0x3C00);
        assert_eq!(
            ggml_compute_fp32_to_fp16(1.0 + 3.0 * f32::powi(2.0, -11)),
            0x3C02
        );
        assert_eq!(ggml_compute_fp32_to_fp16(65520.0), 0x7C00);
        assert_eq!(ggml_compute_fp32_to_fp16(f32::NAN), 0x7E00);
    }

    #[test]
    fn bf16_rounds_ties_to_even() {
        assert_eq!(ggml_compute_fp32_to_bf16(1.0), 0x3F80);
        assert_eq!(
            ggml_compute_fp32_to_bf16(f32::from_bits(0x3F80_8000)),
            0x3F80
        );
        assert_eq!(
            ggml_compute_fp32_to_bf16(f32::from_bits(0x3F81_8000)),
            0x3F82
        );
    }
}
