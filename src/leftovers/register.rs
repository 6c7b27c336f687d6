//! Registration: where the tray of one photo lies in another. A tray never lands on the belt in
//! the same place twice, so before two photos of it are compared, the second is mapped onto the
//! first by a rigid motion (a shift and a rotation about the frame's centre).
//!
//! The motion is found by maximising the zero-normalised cross-correlation of the two photos'
//! edge maps (gradient magnitude of the blurred luminance): edges are where the tray's walls
//! are, they survive a change of light (a gain scales every gradient alike), and food that was
//! eaten only removes some of them. The search is coarse to fine over an image pyramid: every
//! whole-pixel shift and every other degree at the coarsest level (at most 128 px: coarser, the
//! walls fade), the best eight distinct peaks climbed level by level with the better half kept
//! after each, down to a quarter pixel and 1/16 degree at full size.

use super::image::{Plane, Rgb};

/// The largest rotation searched, in degrees either way.
pub const MAX_ANGLE: f64 = 10.0;
/// The largest shift searched, as a share of the frame's width and height either way.
pub const MAX_SHIFT: f64 = 0.10;
/// Distinct coarse peaks refined.
const PEAKS: usize = 8;

/// A rigid motion of a frame: a point `p` of the first photo is at `R(angle) (p - c) + c + t`
/// in the second, `c` the frame's centre, the angle in degrees (clockwise as displayed, since
/// image rows run down), `t = (dx, dy)` in pixels.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Motion {
    /// Shift to the right, in pixels.
    pub dx: f64,
    /// Shift down, in pixels.
    pub dy: f64,
    /// Rotation in degrees, clockwise as displayed.
    pub angle: f64,
}

impl Motion {
    /// Where the point `(x, y)` of a `(w, h)` frame lands.
    pub fn apply(&self, (x, y): (f64, f64), (w, h): (usize, usize)) -> (f64, f64) {
        let (s, c) = self.angle.to_radians().sin_cos();
        let (cx, cy) = ((w as f64 - 1.0) / 2.0, (h as f64 - 1.0) / 2.0);
        let (u, v) = (x - cx, y - cy);
        (c * u - s * v + cx + self.dx, s * u + c * v + cy + self.dy)
    }

    /// The same motion on a frame `factor` times as large.
    pub fn scaled(&self, factor: f64) -> Self {
        Self {
            dx: self.dx * factor,
            dy: self.dy * factor,
            angle: self.angle,
        }
    }
}

/// A registration: the motion found, and how well the edges agree under it (the normalised
/// cross-correlation, 1 for identical edge maps).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Registration {
    /// The motion from the first photo's frame to the second's.
    pub motion: Motion,
    /// The correlation of the edge maps at that motion.
    pub score: f64,
}

/// The motion that maps `fixed`'s frame onto `moving` (see [`Motion`]). Both are the same size.
pub fn register(fixed: &Rgb, moving: &Rgb) -> Registration {
    let a = pyramid(edges(&fixed.luma()));
    let b = pyramid(edges(&moving.luma()));
    let top = a.len() - 1;
    let (w, h) = (a[top].w as f64, a[top].h as f64);
    // Every whole-pixel shift and every other degree at the coarsest level.
    let (sx, sy) = ((MAX_SHIFT * w).ceil() as i32, (MAX_SHIFT * h).ceil() as i32);
    let mut coarse = Vec::new();
    let steps = MAX_ANGLE as i32;
    for angle in (-steps..=steps).step_by(2) {
        shifts(&a[top], &b[top], angle as f64, (sx, sy), &mut coarse);
    }
    // A tray's compartments repeat, so the coarsest level can prefer a motion one compartment
    // (or one row) off: the best few distinct peaks are each refined, and finer levels decide.
    coarse.sort_by(|p, q| q.0.total_cmp(&p.0));
    let mut peaks: Vec<Motion> = Vec::new();
    for (_, m) in coarse {
        let far = |p: &Motion| {
            (p.dx - m.dx).abs() > 2.0
                || (p.dy - m.dy).abs() > 2.0
                || (p.angle - m.angle).abs() > 2.0
        };
        if peaks.iter().all(far) {
            peaks.push(m);
            if peaks.len() == PEAKS {
                break;
            }
        }
    }
    // Each peak is climbed level by level, and after each level the better half goes on: eight
    // at the coarsest, four, two, then one at full size, where a step costs most.
    let mut hypotheses: Vec<(Motion, f64)> = peaks.into_iter().map(|m| (m, f64::NAN)).collect();
    for level in (0..=top).rev() {
        for (motion, score) in hypotheses.iter_mut() {
            if level < top {
                *motion = motion.scaled(2.0);
            }
            let (mut shift, mut turn) = (1.0, 0.5f64.powi((top - level) as i32));
            loop {
                (*motion, *score) = climb(&a[level], &b[level], *motion, shift, turn);
                if level > 0 || shift <= 0.25 {
                    break;
                }
                shift /= 2.0;
                turn /= 2.0;
            }
        }
        hypotheses.sort_by(|p, q| q.1.total_cmp(&p.1));
        let keep = (hypotheses.len() / 2).max(1);
        hypotheses.truncate(keep);
    }
    let (motion, score) = hypotheses[0];
    Registration { motion, score }
}

/// The correlation at `angle` and every whole-pixel shift up to `(sx, sy)`, pushed onto `out`.
/// Rather than sampling `b` anew for each shift, `a` is turned back by the angle once: a point
/// `p` lands at `R(p - c) + c + t` exactly when `a`, turned back, shifted by `t`, lies on `b`,
/// so each shift is a plain offset between two fixed pictures.
fn shifts(a: &Plane, b: &Plane, angle: f64, (sx, sy): (i32, i32), out: &mut Vec<(f64, Motion)>) {
    let (w, h) = (a.w, a.h);
    let back = Motion {
        dx: 0.0,
        dy: 0.0,
        angle: -angle,
    };
    let mut turned = vec![f32::NAN; w * h];
    for y in 0..h {
        for x in 0..w {
            let (px, py) = back.apply((x as f64, y as f64), (w, h));
            if let Some(v) = a.sample(px, py) {
                turned[y * w + x] = v;
            }
        }
    }
    // Every other row and column: the coarsest level has detail to spare, and shifts are many.
    let total = w.div_ceil(2) * h.div_ceil(2);
    for dy in -sy..=sy {
        for dx in -sx..=sx {
            let mut sums = Sums::default();
            let ys = (dy.max(0) as usize)..((h as i32 + dy.min(0)) as usize);
            for y in ys.step_by(2) {
                let row_a = &turned[(y as i32 - dy) as usize * w..][..w];
                let row_b = &b.v[y * w..][..w];
                let xs = (dx.max(0) as usize)..((w as i32 + dx.min(0)) as usize);
                for x in xs.step_by(2) {
                    let va = row_a[(x as i32 - dx) as usize];
                    if va.is_nan() {
                        continue;
                    }
                    sums.add(va, row_b[x]);
                }
            }
            let motion = Motion {
                dx: dx as f64,
                dy: dy as f64,
                angle,
            };
            out.push((sums.zncc(total), motion));
        }
    }
}

/// The running sums of pairs of values that a normalised cross-correlation needs.
#[derive(Debug, Default, Clone, Copy)]
struct Sums {
    n: usize,
    a: f64,
    b: f64,
    aa: f64,
    bb: f64,
    ab: f64,
}

impl Sums {
    fn add(&mut self, a: f32, b: f32) {
        let (a, b) = (a as f64, b as f64);
        self.n += 1;
        self.a += a;
        self.b += b;
        self.aa += a * a;
        self.bb += b * b;
        self.ab += a * b;
    }

    /// The correlation; minus one when under a third of the `total` pixels overlap.
    fn zncc(&self, total: usize) -> f64 {
        if self.n * 3 < total {
            return -1.0;
        }
        let n = self.n as f64;
        let cov = self.ab - self.a * self.b / n;
        let var = (self.aa - self.a * self.a / n) * (self.bb - self.b * self.b / n);
        if var <= 0.0 {
            return 0.0;
        }
        cov / var.sqrt()
    }
}

/// Hill climb from `start`, a step of `shift` pixels along either axis or of `turn` degrees at a
/// time, until no step is better. Returns the motion and its correlation.
fn climb(a: &Plane, b: &Plane, start: Motion, shift: f64, turn: f64) -> (Motion, f64) {
    let mut best = (start, correlation(a, b, start));
    let steps = [
        (shift, 0.0, 0.0),
        (-shift, 0.0, 0.0),
        (0.0, shift, 0.0),
        (0.0, -shift, 0.0),
        (0.0, 0.0, turn),
        (0.0, 0.0, -turn),
    ];
    for _ in 0..64 {
        let centre = best.0;
        for (dx, dy, da) in steps {
            let m = Motion {
                dx: centre.dx + dx,
                dy: centre.dy + dy,
                angle: centre.angle + da,
            };
            let s = correlation(a, b, m);
            if s > best.1 {
                best = (m, s);
            }
        }
        if best.0 == centre {
            break;
        }
    }
    best
}

/// The zero-normalised cross-correlation of `a` and `b` sampled where `motion` puts `a`'s
/// pixels, over the pixels that land inside `b` (on a grid of at most about 16,000 of them, for
/// speed); minus one when under a third of them do.
fn correlation(a: &Plane, b: &Plane, motion: Motion) -> f64 {
    let (s, c) = motion.angle.to_radians().sin_cos();
    let (cx, cy) = ((a.w as f64 - 1.0) / 2.0, (a.h as f64 - 1.0) / 2.0);
    let mut sums = Sums::default();
    let stride = ((a.w * a.h) as f64 / 16_000.0).sqrt().ceil().max(1.0) as usize;
    for y in (0..a.h).step_by(stride) {
        let v = y as f64 - cy;
        for x in (0..a.w).step_by(stride) {
            let u = x as f64 - cx;
            let (qx, qy) = (
                c * u - s * v + cx + motion.dx,
                s * u + c * v + cy + motion.dy,
            );
            let Some(vb) = b.sample(qx, qy) else { continue };
            sums.add(a.v[y * a.w + x], vb);
        }
    }
    let total = a.w.div_ceil(stride) * a.h.div_ceil(stride);
    sums.zncc(total)
}

/// Gradient magnitude (Sobel) of the luminance after a 3x3 blur.
fn edges(luma: &Plane) -> Plane {
    let l = luma.box_blur(1);
    let (w, h) = (l.w, l.h);
    let mut out = Plane::new(w, h);
    for y in 1..h.saturating_sub(1) {
        for x in 1..w.saturating_sub(1) {
            let p = |dx: isize, dy: isize| {
                l.v[(y as isize + dy) as usize * w + (x as isize + dx) as usize]
            };
            let gx = p(1, -1) + 2.0 * p(1, 0) + p(1, 1) - p(-1, -1) - 2.0 * p(-1, 0) - p(-1, 1);
            let gy = p(-1, 1) + 2.0 * p(0, 1) + p(1, 1) - p(-1, -1) - 2.0 * p(0, -1) - p(1, -1);
            out.v[y * w + x] = (gx * gx + gy * gy).sqrt();
        }
    }
    out
}

/// `base` and its halvings (2x2 means) down to a level whose long side is at most 128 pixels:
/// coarser, the tray's walls (about 1% of the frame) fade under the food's edges.
fn pyramid(base: Plane) -> Vec<Plane> {
    let mut levels = vec![base];
    loop {
        let last = levels.last().expect("one level");
        if last.w.max(last.h) <= 128 || last.w.min(last.h) < 32 {
            return levels;
        }
        let half = last.half();
        levels.push(half);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A frame with walls and texture, as a tray is, and the same frame under a known motion.
    fn scene(w: usize, h: usize, motion: Motion, gain: f32) -> Rgb {
        let inverse = |x: f64, y: f64| {
            // Find the scene point that lands at (x, y): undo the shift, then the rotation.
            let (s, c) = (-motion.angle).to_radians().sin_cos();
            let (cx, cy) = ((w as f64 - 1.0) / 2.0, (h as f64 - 1.0) / 2.0);
            let (u, v) = (x - cx - motion.dx, y - cy - motion.dy);
            (c * u - s * v + cx, s * u + c * v + cy)
        };
        let pattern = |x: f64, y: f64| -> [f32; 3] {
            let wall = |v: f64, lo: f64, hi: f64| (v - lo).abs() < 3.0 || (v - hi).abs() < 3.0;
            let inside = |x: f64, y: f64, b: [f64; 4]| x > b[0] && x < b[2] && y > b[1] && y < b[3];
            for b in [[20.0, 20.0, 120.0, 100.0], [140.0, 30.0, 230.0, 160.0]] {
                if inside(x, y, [b[0] - 3.0, b[1] - 3.0, b[2] + 3.0, b[3] + 3.0])
                    && (wall(x, b[0], b[2]) || wall(y, b[1], b[3]))
                {
                    return [60.0, 60.0, 70.0];
                }
            }
            let t = ((x * 0.21).sin() * (y * 0.17).cos() * 30.0) as f32;
            if (x - 70.0).powi(2) + (y - 60.0).powi(2) < 900.0 {
                return [200.0 + t, 90.0, 40.0 - t * 0.5];
            }
            [180.0, 185.0, 190.0]
        };
        let mut img = Rgb::new(w, h);
        for y in 0..h {
            for x in 0..w {
                let (sx, sy) = inverse(x as f64, y as f64);
                img.v[y * w + x] = pattern(sx, sy).map(|v| v * gain);
            }
        }
        img
    }

    #[test]
    fn recovers_a_shift_and_a_rotation() {
        let (w, h) = (256, 192);
        let fixed = scene(w, h, Motion::default(), 1.0);
        for truth in [
            Motion {
                dx: 7.3,
                dy: -4.6,
                angle: 2.4,
            },
            Motion {
                dx: -12.0,
                dy: 9.25,
                angle: -3.1,
            },
            Motion::default(),
        ] {
            let moving = scene(w, h, truth, 0.8);
            let r = register(&fixed, &moving);
            let m = r.motion;
            assert!(
                (m.dx - truth.dx).abs() < 0.5
                    && (m.dy - truth.dy).abs() < 0.5
                    && (m.angle - truth.angle).abs() < 0.2,
                "found {m:?} for {truth:?}"
            );
            assert!(r.score > 0.8, "{r:?}");
        }
    }

    #[test]
    fn a_motion_maps_the_centre_by_its_shift() {
        let m = Motion {
            dx: 3.0,
            dy: -2.0,
            angle: 90.0,
        };
        let (x, y) = m.apply((4.5, 2.0), (10, 5));
        assert!((x - 7.5).abs() < 1e-9 && (y - 0.0).abs() < 1e-9, "{x} {y}");
        // Clockwise as displayed: a point right of the centre goes below it.
        let (x, y) = m.apply((6.5, 2.0), (10, 5));
        assert!((x - 7.5).abs() < 1e-9 && (y - 2.0).abs() < 1e-9, "{x} {y}");
    }
}
