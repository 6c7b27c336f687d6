//! `--precision auto`: the engine that runs this model fastest on this machine, measured once
//! and remembered.
//!
//! Having bf16 arithmetic does not make bf16 faster: on some CPUs (AVX-512 BF16 without AMX,
//! where the f32 kernels are good) bf16 runs slower than f32. So the probe times one encoder
//! layer's MLP, at the model's widths and four images' tokens, through each engine the CPU has
//! (f32, and bf16 on AMX and on AVX-512 BF16): one warm-up, then the median of three. f32 is
//! kept unless another engine is more than 5% faster. The choice is remembered under
//! `ROOT/precision-v1/`, keyed by the CPU (brand and features), the worker threads and the
//! layer's shape, so the probe (a fraction of a second) runs once per machine and model shape.
//! `FOODCLIP_BF16` still forces an engine, and `--precision f32` or `bf16` skip the probe.

use super::config::{Activation, VisionConfig};
use super::ops::{mlp, Dense, MatmulKind};
use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use candle_nn::LayerNorm;
use std::path::Path;
use std::time::{Duration, Instant};

/// First line of a remembered choice; bump it when the probe changes.
const MAGIC: &str = "foodclip-precision-v1";

/// How much faster than f32 another engine must be to be chosen.
const MARGIN: f64 = 1.05;

/// An engine the probe can choose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    /// Its name in the cache and in messages: `f32`, `bf16-amx`, `bf16-avx512`.
    pub name: &'static str,
    /// How its dense layers multiply.
    pub matmul: MatmulKind,
}

/// The engines this CPU has, f32 first.
pub fn candidates() -> Vec<Candidate> {
    let mut all = vec![Candidate {
        name: "f32",
        matmul: MatmulKind::Native,
    }];
    #[cfg(target_arch = "x86_64")]
    {
        use super::bf16::{amx_available, avx512_bf16_available, Engine};
        if amx_available() {
            all.push(Candidate {
                name: "bf16-amx",
                matmul: MatmulKind::PackedBf16(Engine::Amx),
            });
        }
        if avx512_bf16_available() {
            all.push(Candidate {
                name: "bf16-avx512",
                matmul: MatmulKind::PackedBf16(Engine::Avx512),
            });
        }
    }
    all
}

/// The fastest of `candidates` for a model with this vision tower, remembered under `root`
/// (when given) for the next run.
pub fn choose(
    vision: &VisionConfig,
    candidates: &[Candidate],
    root: Option<&Path>,
) -> Result<Candidate> {
    if candidates.len() == 1 {
        return Ok(candidates[0]);
    }
    let tokens = 4 * ((vision.image_size / vision.patch_size.max(1)).pow(2) + 1);
    let shape = (vision.hidden_size, vision.intermediate_size, tokens);
    let memo = root.map(|r| r.join("precision-v1").join(format!("{}.txt", key(shape))));
    if let Some(name) = memo.as_deref().and_then(remembered) {
        if let Some(c) = candidates.iter().find(|c| c.name == name) {
            return Ok(*c);
        }
    }
    let timed = candidates
        .iter()
        .map(|c| {
            let layer = Mlp::new(c.matmul, shape)?;
            Ok((*c, median_time(|| layer.run())?))
        })
        .collect::<Result<Vec<_>>>()?;
    let best = fastest(&timed);
    if let Some(memo) = memo {
        // A choice that cannot be written only costs the probe next time.
        let _ = std::fs::create_dir_all(memo.parent().expect("has a parent")).and_then(|()| {
            crate::fsutil::write_atomically_unsynced(
                &memo,
                format!("{MAGIC}\n{}\n", best.name).as_bytes(),
            )
        });
    }
    Ok(best)
}

/// The first of `timed` (f32) unless another is more than 5% faster (`MARGIN`): then the fastest.
pub fn fastest(timed: &[(Candidate, Duration)]) -> Candidate {
    let (first, base) = timed[0];
    let best = timed
        .iter()
        .min_by_key(|(_, t)| *t)
        .expect("at least one engine");
    if best.1.as_secs_f64() * MARGIN < base.as_secs_f64() {
        best.0
    } else {
        first
    }
}

/// The median of three timed runs of `f`, after one untimed.
pub fn median_time(mut f: impl FnMut() -> Result<()>) -> Result<Duration> {
    f()?;
    let mut times = Vec::with_capacity(3);
    for _ in 0..3 {
        let start = Instant::now();
        f()?;
        times.push(start.elapsed());
    }
    times.sort();
    Ok(times[1])
}

/// The engine's name a memo file holds, if it is one of ours.
fn remembered(memo: &Path) -> Option<String> {
    let text = std::fs::read_to_string(memo).ok()?;
    let mut lines = text.lines();
    (lines.next()? == MAGIC).then(|| lines.next().map(str::to_string))?
}

/// What a remembered choice depends on: the CPU, the threads, the probe's shape.
fn key((hidden, intermediate, tokens): (usize, usize, usize)) -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            let line = |name: &str| {
                info.lines()
                    .find(|l| l.starts_with(name))
                    .map(|l| l.to_string())
            };
            Some(format!(
                "{}\n{}",
                line("model name")?,
                line("flags").unwrap_or_default()
            ))
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string());
    let threads = rayon::current_num_threads();
    let all = format!("{cpu}\n{threads}\n{hidden}x{intermediate}x{tokens}");
    blake3::hash(all.as_bytes()).to_hex()[..32].to_string()
}

/// An encoder layer's MLP of a given shape, on random weights, and its input.
struct Mlp {
    fc1: Dense,
    fc2: Dense,
    norm: LayerNorm,
    x: Tensor,
}

impl Mlp {
    /// `hidden -> intermediate -> hidden` over `tokens` rows, multiplied by `matmul`.
    fn new(
        matmul: MatmulKind,
        (hidden, intermediate, tokens): (usize, usize, usize),
    ) -> Result<Self> {
        let cpu = &Device::Cpu;
        let dense = |out: usize, inp: usize| -> Result<Dense> {
            let w = Tensor::randn(0f32, 0.02, (out, inp), cpu)?;
            Ok(Dense::new(
                w,
                Some(Tensor::zeros(out, DType::F32, cpu)?),
                matmul,
            )?)
        };
        Ok(Self {
            fc1: dense(intermediate, hidden)?,
            fc2: dense(hidden, intermediate)?,
            norm: LayerNorm::new(
                Tensor::ones(hidden, DType::F32, cpu)?,
                Tensor::zeros(hidden, DType::F32, cpu)?,
                1e-5,
            ),
            x: Tensor::randn(0f32, 1.0, (tokens, hidden), cpu)?,
        })
    }

    fn run(&self) -> Result<()> {
        mlp(
            &self.fc1,
            &self.fc2,
            &self.x,
            &self.norm,
            Activation::QuickGelu,
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vision() -> VisionConfig {
        VisionConfig {
            hidden_size: 64,
            intermediate_size: 256,
            image_size: 32,
            patch_size: 8,
            ..VisionConfig::default()
        }
    }

    #[test]
    fn an_engine_slow_on_purpose_is_not_chosen_and_f32_wins_near_ties() {
        let f32 = candidates()[0];
        let other = Candidate {
            name: "other",
            matmul: MatmulKind::Native,
        };
        let layer = Mlp::new(f32.matmul, (64, 256, 68)).unwrap();
        let slow = median_time(|| {
            std::thread::sleep(Duration::from_millis(30));
            layer.run()
        })
        .unwrap();
        let quick = median_time(|| layer.run()).unwrap();
        assert!(slow > quick);
        assert_eq!(fastest(&[(f32, slow), (other, quick)]), other);
        assert_eq!(fastest(&[(f32, quick), (other, slow)]), f32);
        // Within the margin, f32 stays.
        let (a, b) = (Duration::from_millis(100), Duration::from_millis(97));
        assert_eq!(fastest(&[(f32, a), (other, b)]), f32);
    }

    #[test]
    fn the_choice_is_remembered_and_a_stale_one_is_probed_again() {
        let dir = tempfile::tempdir().unwrap();
        let all = candidates();
        let mut two = all.clone();
        two.push(Candidate {
            name: "f32-again",
            matmul: MatmulKind::Native,
        });
        let chosen = choose(&vision(), &two, Some(dir.path())).unwrap();
        assert!(two.contains(&chosen));
        let memo = std::fs::read_dir(dir.path().join("precision-v1"))
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        assert_eq!(remembered(&memo).as_deref(), Some(chosen.name));
        // The memo is what the next run takes, without a probe.
        let other = two.iter().find(|c| c.name != chosen.name).copied().unwrap();
        std::fs::write(&memo, format!("{MAGIC}\n{}\n", other.name)).unwrap();
        assert_eq!(choose(&vision(), &two, Some(dir.path())).unwrap(), other);
        // An engine this machine does not have (a cache copied from another) is probed again.
        std::fs::write(&memo, format!("{MAGIC}\nbf16-elsewhere\n")).unwrap();
        let again = choose(&vision(), &two, Some(dir.path())).unwrap();
        assert!(two.contains(&again));
        assert_eq!(remembered(&memo).as_deref(), Some(again.name));
        // A damaged memo is no choice.
        std::fs::write(&memo, "garbage").unwrap();
        assert_eq!(remembered(&memo), None);
    }
}
