//! Scalar activation math written so that loops over it vectorise: no branches, calls or
//! float-to-int conversions. Shared by the f32 kernels (`ops.rs`) and the bf16 tile
//! kernels.

/// `exp(x)` for f32, Cephes' polynomial (about 1 ulp), written without branches, calls or
/// float-to-int conversions so the compiler vectorises loops over it.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const C1: f32 = 0.693_359_4;
    const C2: f32 = -2.121_944_4e-4;
    // Adding 1.5 * 2^23 rounds to an integer, which then sits in the low mantissa bits.
    const MAGIC: f32 = 12_582_912.0;
    let x = x.clamp(-87.3, 88.7);
    let t = x * LOG2E + MAGIC;
    let n = t - MAGIC;
    let n_bits = (t.to_bits() as i32).wrapping_sub(MAGIC.to_bits() as i32);
    let r = x - n * C1 - n * C2;
    let mut p = 1.987_569_1e-4;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let e = p * r * r + r + 1.0;
    e * f32::from_bits((n_bits.wrapping_add(127) << 23) as u32)
}

/// `Σ f(x)` over `xs`, summed in 16 lanes so that the loop vectorises (the remainder first,
/// then the lanes).
#[inline(always)]
pub fn lane_sum(xs: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut lanes = [0f32; 16];
    let chunks = xs.chunks_exact(16);
    let tail: f32 = chunks.remainder().iter().map(|&x| f(x)).sum();
    for chunk in chunks {
        lanes.iter_mut().zip(chunk).for_each(|(l, &x)| *l += f(x));
    }
    lanes.iter().sum::<f32>() + tail
}

/// The largest `f(x)` over `xs` (`-inf` if empty), in 16 lanes of selects: `f32::max`'s NaN
/// rule would keep the loop scalar.
#[inline(always)]
pub fn lane_max(xs: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let larger = |a: f32, x: f32| if x > a { x } else { a };
    let mut lanes = [f32::NEG_INFINITY; 16];
    let chunks = xs.chunks_exact(16);
    let tail = chunks
        .remainder()
        .iter()
        .fold(f32::NEG_INFINITY, |a, &x| larger(a, f(x)));
    for chunk in chunks {
        lanes
            .iter_mut()
            .zip(chunk)
            .for_each(|(l, &x)| *l = larger(*l, f(x)));
    }
    lanes.iter().fold(tail, |a, &x| larger(a, x))
}

/// `x * sigmoid(1.702 x)`, vectorisable.
#[inline(always)]
pub fn quick_gelu_value(x: f32) -> f32 {
    x / (1.0 + exp(-1.702 * x))
}

/// GELU's tanh approximation (`gelu_pytorch_tanh`, SigLIP's), vectorisable:
/// `0.5 x (1 + tanh(u))` with `u = sqrt(2/pi) (x + 0.044715 x³)`, computed as the equal
/// `x * sigmoid(2u)`, so that it needs only [`exp`].
#[inline(always)]
pub fn gelu_tanh_value(x: f32) -> f32 {
    const TWO_SQRT_2_OVER_PI: f32 = 1.595_769;
    x / (1.0 + exp(-TWO_SQRT_2_OVER_PI * (x + 0.044_715 * x * x * x)))
}

/// An activation the CPU kernels apply in place, fused into the pass that writes a dense
/// layer's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fused {
    /// [`quick_gelu_value`].
    QuickGelu,
    /// [`gelu_tanh_value`].
    GeluTanh,
}

impl Fused {
    /// The fused form of `act`, if it has one (the exact, erf-based GELU has none).
    pub fn of(act: super::config::Activation) -> Option<Self> {
        use super::config::Activation;
        match act {
            Activation::QuickGelu => Some(Fused::QuickGelu),
            Activation::GeluTanh => Some(Fused::GeluTanh),
            Activation::Gelu => None,
        }
    }
}

/// Runs `$body` with `$f` bound to the scalar function of `$fused` (a fn item, so calls inline),
/// choosing once outside whatever loop `$body` holds, so that each loop vectorises.
macro_rules! with_fused {
    ($fused:expr, |$f:ident| $body:expr) => {
        match $fused {
            $crate::model::math::Fused::QuickGelu => {
                let $f = $crate::model::math::quick_gelu_value;
                $body
            }
            $crate::model::math::Fused::GeluTanh => {
                let $f = $crate::model::math::gelu_tanh_value;
                $body
            }
        }
    };
}
pub(crate) use with_fused;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gelu_tanh_matches_its_tanh_form() {
        for i in -2000..2000 {
            let x = i as f64 / 100.0;
            let u = (2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x);
            let want = 0.5 * x * (1.0 + u.tanh());
            let got = gelu_tanh_value(x as f32) as f64;
            assert!(
                (got - want).abs() <= 2e-6 * (1.0 + want.abs()),
                "{x}: {got} vs {want}"
            );
        }
    }

    #[test]
    fn exp_is_accurate() {
        for i in -8000..8000 {
            let x = i as f32 / 100.0;
            let rel = ((exp(x) as f64 - (x as f64).exp()) / (x as f64).exp()).abs();
            assert!(rel < 3e-7, "exp({x}): relative error {rel}");
        }
    }
}
