//! The lane-parallel fast paths against the straightforward scalar port (the oracle), on
//! pseudo-random data of many shapes and scales, with and without importance vectors,
//! including row lengths that leave blocks outside the 8-lane groups; at every SIMD level this
//! CPU runs (the widest is the default, the others must agree too).

use simpo_q_core::quants::fast::{quantize_row_fast_at, Simd};
use simpo_q_core::quants::{quantize_row, quantize_row_reference, row_size, QuantType};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn uniform(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }
    fn normal(&mut self) -> f32 {
        let (u, v) = (self.uniform().max(1e-7), self.uniform());
        (-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * v).cos()
    }
}

fn data(rng: &mut Rng, kind: usize, n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| {
            let z = rng.normal();
            match kind {
                0 => z,
                1 => z / rng.uniform().max(1e-3), // heavy tails
                2 => z * 1e-40,                   // subnormal
                3 => z * 1e-18,                   // tiny
                4 => (z * 10.0).round() / 10.0,   // grid
                5 => -1.0 - rng.uniform() * 1e-3, // narrow negative band
                6 => {
                    if i % 97 == 0 {
                        3e4 * z
                    } else {
                        0.01 * z
                    }
                } // outliers
                7 => 0.0,
                8 => (rng.next() % 255) as f32 - 127.0 + 0.5, // half ties
                // ±0 mixed with values of one sign: the block's minimum (or maximum) is a zero
                // whose sign depends on which zero a search meets first
                10 | 11 => {
                    let sign = if kind == 10 { 1.0 } else { -1.0 };
                    match rng.next() % 3 {
                        0 => 0.0,
                        1 => -0.0,
                        _ => sign * rng.uniform(),
                    }
                }
                12 => [0.0, -0.0][(rng.next() % 2) as usize], // nothing but zeros of both signs
                _ => z * 10f32.powi((i / 16 % 20) as i32 - 14), // mixed scales
            }
        })
        .collect()
}

fn weights(rng: &mut Rng, kind: usize, n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| match kind {
            0 => rng.uniform(),
            1 => (rng.normal().exp()).powi(2),
            2 => {
                if i % 16 == (rng.next() % 16) as usize {
                    1.0
                } else {
                    0.0
                }
            }
            3 => {
                if rng.uniform() < 0.3 {
                    0.0
                } else {
                    rng.uniform()
                }
            }
            _ => rng.uniform() * 1e-30,
        })
        .collect()
}

#[test]
fn fast_paths_equal_the_scalar_port() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for qtype in QuantType::ALL {
        if !qtype.is_quantized() {
            continue;
        }
        let lens: &[usize] = if qtype.block_size() == 256 {
            &[256, 768, 2048]
        } else {
            &[32, 96, 352, 512, 1056]
        };
        for &n in lens {
            // non-finite data never gets here: quantize() refuses it first
            for kind in 0..13 {
                let x = data(&mut rng, kind, n);
                for wkind in 0..6 {
                    let w = (wkind < 5).then(|| weights(&mut rng, wkind, n));
                    let rs = row_size(qtype, n).unwrap();
                    let (mut fast, mut oracle) = (vec![0u8; rs], vec![0u8; rs]);
                    quantize_row(qtype, &x, &mut fast, w.as_deref());
                    quantize_row_reference(qtype, &x, &mut oracle, w.as_deref());
                    assert_eq!(
                        fast,
                        oracle,
                        "{} n={n} data kind {kind} weights {wkind}",
                        qtype.name()
                    );
                    for simd in Simd::ALL.into_iter().filter(|s| s.supported()) {
                        quantize_row_fast_at(simd, qtype, &x, &mut fast, w.as_deref());
                        assert_eq!(
                            fast,
                            oracle,
                            "{} at {} n={n} data kind {kind} weights {wkind}",
                            qtype.name(),
                            simd.name()
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn this_cpu_runs_the_widest_level_it_has() {
    // the default is the first supported level unless SIMPO_Q_SIMD asks for another
    if std::env::var_os("SIMPO_Q_SIMD").is_none() {
        let widest = Simd::ALL.into_iter().find(|s| s.supported()).unwrap();
        assert_eq!(Simd::chosen(), widest);
    }
    assert!(Simd::Plain.supported());
    assert_eq!(Simd::widest_up_to(Some("plain")), Simd::Plain);
    let widest = Simd::widest_up_to(None);
    assert_eq!(Simd::widest_up_to(Some("no such level")), widest);
    // asking for a level this CPU lacks gives the next narrower one it has, never plain
    assert_eq!(Simd::widest_up_to(Some("avx512")), widest);
    if Simd::Avx2.supported() {
        assert_eq!(Simd::widest_up_to(Some("avx2")), Simd::Avx2);
    }
}
