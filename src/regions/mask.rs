//! Region masks as COCO's compressed run-length encoding (what `pycocotools.mask.encode`
//! writes and `decode` reads): runs over the photo in column-major order, zeros first, each
//! run count written relative to the one two before it in 6-bit characters from `'0'`.

use serde::{Deserialize, Serialize};

/// A mask of a `size = [height, width]` photo, COCO's compressed RLE.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rle {
    /// `[height, width]`.
    pub size: [u32; 2],
    /// The run counts, encoded.
    pub counts: String,
}

impl Rle {
    /// The mask of a `width` x `height` photo where `inside(x, y)` holds, and the tight box
    /// around it (`[x1, y1, x2, y2]`, `None` for an empty mask).
    pub fn encode(
        width: u32,
        height: u32,
        inside: impl Fn(u32, u32) -> bool,
    ) -> (Self, Option<[u32; 4]>) {
        let mut runs = Vec::new();
        let (mut value, mut run) = (false, 0u64);
        let mut bounds: Option<[u32; 4]> = None;
        for x in 0..width {
            for y in 0..height {
                let v = inside(x, y);
                if v {
                    let b = bounds.get_or_insert([x, y, x + 1, y + 1]);
                    *b = [b[0].min(x), b[1].min(y), b[2].max(x + 1), b[3].max(y + 1)];
                }
                if v != value {
                    runs.push(run);
                    value = v;
                    run = 0;
                }
                run += 1;
            }
        }
        runs.push(run);
        let rle = Self {
            size: [height, width],
            counts: counts_string(&runs),
        };
        (rle, bounds)
    }

    /// The mask as a column-major bitmap of `height * width` (index `x * height + y`).
    pub fn bitmap(&self) -> Vec<bool> {
        let mut bits = Vec::with_capacity(self.size[0] as usize * self.size[1] as usize);
        for (i, run) in self.runs().into_iter().enumerate() {
            bits.extend(std::iter::repeat_n(i % 2 == 1, run as usize));
        }
        bits.resize(self.size[0] as usize * self.size[1] as usize, false);
        bits
    }

    /// The mask sampled onto a `w` x `h` frame over the same photo (each frame pixel takes the
    /// photo pixel under its centre), row-major; without decoding the whole photo's bitmap.
    pub fn sample(&self, w: usize, h: usize) -> Vec<bool> {
        let (ph, pw) = (u64::from(self.size[0]), u64::from(self.size[1]));
        let mut out = vec![false; w * h];
        if ph == 0 || pw == 0 {
            return out;
        }
        // The runs of ones as [start, end) column-major indices.
        let (mut ones, mut at) = (Vec::new(), 0u64);
        for (i, run) in self.runs().into_iter().enumerate() {
            if i % 2 == 1 {
                ones.push((at, at + run));
            }
            at += run;
        }
        let centre = |v: usize, n: usize, of: u64| {
            (((v as f64 + 0.5) * of as f64 / n as f64) as u64).min(of - 1)
        };
        for y in 0..h {
            let py = centre(y, h, ph);
            for x in 0..w {
                let j = centre(x, w, pw) * ph + py;
                let k = ones.partition_point(|r| r.1 <= j);
                out[y * w + x] = ones.get(k).is_some_and(|r| r.0 <= j);
            }
        }
        out
    }

    /// The run counts, decoded (zeros first).
    pub fn runs(&self) -> Vec<u64> {
        let bytes = self.counts.as_bytes();
        let mut runs: Vec<u64> = Vec::new();
        let mut p = 0;
        while p < bytes.len() {
            let (mut x, mut k) = (0i64, 0);
            loop {
                let c = i64::from(bytes[p]) - 48;
                x |= (c & 0x1f) << (5 * k);
                p += 1;
                k += 1;
                if c & 0x20 == 0 {
                    if c & 0x10 != 0 {
                        x |= -1i64 << (5 * k);
                    }
                    break;
                }
            }
            if runs.len() > 2 {
                x += runs[runs.len() - 2] as i64;
            }
            runs.push(x as u64);
        }
        runs
    }
}

/// pycocotools' `rleToString`: each count (less the one two before it, after the first three)
/// as signed 5-bit groups, low first, `0x20` marking that more follow.
fn counts_string(runs: &[u64]) -> String {
    let mut s = String::new();
    for (i, &c) in runs.iter().enumerate() {
        let mut x = c as i64;
        if i > 2 {
            x -= runs[i - 2] as i64;
        }
        loop {
            let mut ch = (x & 0x1f) as u8;
            x >>= 5;
            let more = if ch & 0x10 != 0 { x != -1 } else { x != 0 };
            if more {
                ch |= 0x20;
            }
            s.push(char::from(ch + 48));
            if !more {
                break;
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_as_pycocotools_does() {
        // pycocotools.mask.encode of these masks (Fortran-ordered uint8) gave these strings.
        let (small, bounds) = Rle::encode(9, 7, |x, y| {
            (1..4).contains(&y) && (2..6).contains(&x)
                || (5..7).contains(&y) && x < 3
                || (y, x) == (6, 8)
        });
        assert_eq!(bounds, Some([0, 1, 9, 7]));
        assert_eq!(small.size, [7, 9]);
        assert_eq!(small.counts, "5250L10O013000c0N");
        let (big, bounds) = Rle::encode(40, 300, |x, y| {
            (100..290).contains(&y) && (5..35).contains(&x)
        });
        assert_eq!(bounds, Some([5, 100, 35, 290]));
        assert_eq!(
            big.counts,
            "Pb1n5^3000000000000000000000000000000000000000000000000000000000h[1"
        );
        // Decoding gives back the runs: they cover the photo.
        let runs = big.runs();
        assert_eq!(runs.iter().sum::<u64>(), 300 * 40);
        assert_eq!(&runs[..3], &[5 * 300 + 100, 190, 110]);
    }

    #[test]
    fn a_mask_samples_onto_a_smaller_frame() {
        // A 40x20 photo with the block x 10..30, y 4..12 set, sampled at a quarter size.
        let (rle, _) = Rle::encode(40, 20, |x, y| (10..30).contains(&x) && (4..12).contains(&y));
        let small = rle.sample(10, 5);
        let want: Vec<bool> = (0..50)
            .map(|i| {
                let (x, y) = (i % 10 * 4 + 2, i / 10 * 4 + 2);
                (10..30).contains(&x) && (4..12).contains(&y)
            })
            .collect();
        assert_eq!(small, want);
        assert_eq!(small.iter().filter(|b| **b).count(), 10);
    }
}
