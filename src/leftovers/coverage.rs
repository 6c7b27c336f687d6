//! Food against tray: which pixels of a compartment hold food, in the served photo and in the
//! returned one (already registered onto the served frame).
//!
//! The returned photo's light is matched to the served one's: a gain per channel that may change
//! linearly across the frame (a lamp to one side), fitted to the median ratios of 16 x 12 cells:
//! the tray's cells agree on a ratio while food's scatter, so the plane goes through the cells
//! near the densest ratio, with those that still disagree most trimmed away. Then a pixel is
//! food when its colour is further from every colour the tray has there than [`threshold`] (14
//! levels, plus twice the photo's noise):
//!
//! - with a photo of the empty tray (registered and light-matched the same way): the empty
//!   tray's colour at that pixel or one of its 8 neighbours (a pixel of registration error is
//!   forgiven);
//! - without one, from the photos themselves: the colours that hold at least a tenth of the
//!   compartment's rim (its outer 8% each side, where food seldom reaches), in both photos:
//!   the floor, the walls, their shadows.
//!
//! Pixels are compared as they are (a blur would widen every dish by its radius); masks are
//! cleaned of noise and JPEG speckle by a 5 x 5 majority vote, and returned food is only counted where food
//! was served (within 3 pixels): a returned tray does not grow food.
//!
//! Limits: a pixel counts, a height does not, so a flat spread and a heap of the same area read
//! the same; food the colour of the tray (rice on a white tray) is missed without an empty-tray
//! photo, and a tray patterned in more than three colours needs one.

use super::image::Rgb;
use crate::preprocess::Rect;

/// Colour distance (0-255 levels, Euclidean in RGB) above which a pixel is food, on a photo
/// without noise; noise raises it (see [`threshold`]).
pub const THRESHOLD: f32 = 14.0;
/// The share of a rim a colour must hold to be taken for the tray's.
const RIM_SHARE: f64 = 0.10;

/// Food masks of a pair on the served frame.
#[derive(Debug, Clone)]
pub struct Masks {
    /// Width of the frame.
    pub w: usize,
    /// Food in the served photo.
    pub served: Vec<bool>,
    /// Food in the returned photo.
    pub returned: Vec<bool>,
    /// Pixels the returned photo shows (registration can move some off its frame).
    pub seen: Vec<bool>,
}

/// Where a compartment is on the frame: its box and, for a dish `--regions auto` found, its
/// mask (a frame-sized bitmap, row-major). With a mask, food is counted only inside it and the
/// tray's colours are those of the box outside it (the box should leave a margin around the
/// mask); without, the compartment is the box and its rim shows the tray.
#[derive(Debug, Clone)]
pub struct Area {
    /// The box.
    pub rect: Rect,
    /// The dish's pixels, when a mask gives them.
    pub mask: Option<Vec<bool>>,
}

impl Area {
    /// A compartment that is its box.
    pub fn boxed(rect: Rect) -> Self {
        Self { rect, mask: None }
    }

    /// The pixels of the box to count: inside the mask, or all of them.
    fn counts(&self, i: usize) -> bool {
        self.mask.as_ref().is_none_or(|m| m[i])
    }
}

/// The food masks of `served` and `returned` (registered onto the served frame, `seen` where
/// it shows anything), inside `areas`, telling food from tray by `empty` (the empty tray
/// registered onto the frame, and where it shows anything) or, without it, by each area's
/// surroundings (a box's rim, or a mask's outside).
pub fn masks(
    served: &Rgb,
    returned: &Rgb,
    seen: &[bool],
    empty: Option<(&Rgb, &[bool])>,
    areas: &[Area],
) -> Masks {
    let s = served;
    let tau = threshold(served);
    let all = vec![true; s.v.len()];
    let ret = matched(returned, s, seen);
    let (mut food_s, mut food_r) = (vec![false; s.v.len()], vec![false; s.v.len()]);
    match empty {
        Some((e, e_seen)) => {
            let e_for_s = matched(e, s, e_seen);
            let e_for_r = matched(e, &ret, &both(e_seen, seen));
            for a in areas {
                differs(s, &e_for_s, e_seen, a.rect, tau, &mut food_s);
                differs(
                    &ret,
                    &e_for_r,
                    &both(e_seen, seen),
                    a.rect,
                    tau,
                    &mut food_r,
                );
            }
        }
        None => {
            for a in areas {
                let tray = tray_colours(&[(s, &all), (&ret, seen)], a, tau);
                match &a.mask {
                    None => {
                        off_colours(s, &all, &tray, a.rect, tau, &mut food_s);
                        off_colours(&ret, seen, &tray, a.rect, tau, &mut food_r);
                    }
                    Some(mask) => {
                        // Only the dish's own pixels, and in the returned photo only the
                        // served dish's colours: an emptied bowl is off the table's colours too.
                        off_colours(s, mask, &tray, a.rect, tau, &mut food_s);
                        off_colours(&ret, &both(mask, seen), &tray, a.rect, tau, &mut food_r);
                        keep_dish_colours(s, &food_s, &ret, mask, a.rect, &mut food_r);
                    }
                }
            }
        }
    }
    let food_s = majority(&food_s, s.w, s.h);
    let near = grow(&food_s, s.w, s.h, 3);
    let food_r: Vec<bool> = majority(&food_r, s.w, s.h)
        .iter()
        .zip(&near)
        .map(|(f, n)| *f && *n)
        .collect();
    Masks {
        w: s.w,
        served: food_s,
        returned: food_r,
        seen: seen.to_vec(),
    }
}

impl Masks {
    /// The share of `area` that is food in the served photo and in the returned one (of the
    /// part the returned photo shows), and the share of `area` the returned photo shows.
    pub fn coverage(&self, area: &Area) -> (f64, f64, f64) {
        let b = area.rect;
        let (mut n, mut s, mut seen, mut r) = (0usize, 0usize, 0usize, 0usize);
        for y in b.y1 as usize..b.y2 as usize {
            for x in b.x1 as usize..b.x2 as usize {
                let i = y * self.w + x;
                if !area.counts(i) {
                    continue;
                }
                n += 1;
                s += self.served[i] as usize;
                if self.seen[i] {
                    seen += 1;
                    r += self.returned[i] as usize;
                }
            }
        }
        let share = |a: usize, of: usize| if of == 0 { 0.0 } else { a as f64 / of as f64 };
        (share(s, n), share(r, seen), share(seen, n))
    }
}

/// The food threshold for a photo: [`THRESHOLD`] plus twice its noise as a colour distance.
/// The noise is estimated from differences of horizontally adjacent pixels (their median
/// absolute deviation, which edges hardly move).
pub fn threshold(img: &Rgb) -> f32 {
    let mut sigma = 0.0;
    for c in 0..3 {
        let mut d: Vec<f32> = Vec::with_capacity(img.v.len());
        for row in img.v.chunks(img.w) {
            d.extend(row.windows(2).map(|p| (p[1][c] - p[0][c]).abs()));
        }
        if d.is_empty() {
            return THRESHOLD;
        }
        let mid = d.len() / 2;
        let (_, m, _) = d.select_nth_unstable_by(mid, f32::total_cmp);
        sigma += 1.4826 * *m / std::f32::consts::SQRT_2 / 3.0;
    }
    THRESHOLD + 2.0 * sigma * 3f32.sqrt()
}

fn both(a: &[bool], b: &[bool]) -> Vec<bool> {
    a.iter().zip(b).map(|(x, y)| *x && *y).collect()
}

fn distance(a: [f32; 3], b: [f32; 3]) -> f32 {
    ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2) + (a[2] - b[2]).powi(2)).sqrt()
}

/// Marks the pixels of `b` where `x` is more than `tau` from `tray` at the pixel and
/// at each of its 8 neighbours (where `seen`).
fn differs(x: &Rgb, tray: &Rgb, seen: &[bool], b: Rect, tau: f32, food: &mut [bool]) {
    let (w, h) = (x.w as isize, x.h as isize);
    for y in b.y1 as isize..b.y2 as isize {
        for xx in b.x1 as isize..b.x2 as isize {
            let i = (y * w + xx) as usize;
            if !seen[i] {
                continue;
            }
            let mut nearest = f32::INFINITY;
            for dy in -1..=1 {
                for dx in -1..=1 {
                    let (u, v) = (xx + dx, y + dy);
                    if u >= 0 && v >= 0 && u < w && v < h {
                        let j = (v * w + u) as usize;
                        nearest = nearest.min(distance(x.v[i], tray.v[j]));
                    }
                }
            }
            food[i] = nearest > tau;
        }
    }
}

/// Marks the pixels of `b` where `x` is more than `tau` from every colour of `tray`
/// and from every blend of two of them (a blurred wall's edge, a shadow's).
fn off_colours(x: &Rgb, seen: &[bool], tray: &[[f32; 3]], b: Rect, tau: f32, food: &mut [bool]) {
    for y in b.y1 as usize..b.y2 as usize {
        for xx in b.x1 as usize..b.x2 as usize {
            let i = y * x.w + xx;
            if seen[i] {
                let p = x.v[i];
                let mut nearest = tray
                    .iter()
                    .map(|t| distance(p, *t))
                    .fold(f32::INFINITY, f32::min);
                for (k, a) in tray.iter().enumerate() {
                    for b in &tray[k + 1..] {
                        nearest = nearest.min(to_segment(p, *a, *b));
                    }
                }
                food[i] = nearest > tau;
            }
        }
    }
}

/// Clears the returned food of `rect` inside `mask` whose colour the served dish (`food` of
/// `served` inside `mask`) hardly has: a 16-level colour bin, with its 26 neighbours, must
/// hold at least 0.2% of the served dish's pixels.
fn keep_dish_colours(
    served: &Rgb,
    food: &[bool],
    returned: &Rgb,
    mask: &[bool],
    rect: Rect,
    food_r: &mut [bool],
) {
    let bin = |p: [f32; 3]| p.map(|c| (c.clamp(0.0, 255.0) as usize) >> 4);
    let mut counts = vec![0u32; 16 * 16 * 16];
    let pixels = || {
        (rect.y1 as usize..rect.y2 as usize)
            .flat_map(move |y| (rect.x1 as usize..rect.x2 as usize).map(move |x| y * served.w + x))
    };
    let mut n = 0u32;
    for i in pixels().filter(|&i| mask[i] && food[i]) {
        let [r, g, b] = bin(served.v[i]);
        counts[(r * 16 + g) * 16 + b] += 1;
        n += 1;
    }
    let least = (n / 500).max(1);
    for i in pixels() {
        if !(mask[i] && food_r[i]) {
            continue;
        }
        let [r, g, b] = bin(returned.v[i]);
        let mut near = 0u32;
        for rr in r.saturating_sub(1)..=(r + 1).min(15) {
            for gg in g.saturating_sub(1)..=(g + 1).min(15) {
                for bb in b.saturating_sub(1)..=(b + 1).min(15) {
                    near += counts[(rr * 16 + gg) * 16 + bb];
                }
            }
        }
        food_r[i] = near >= least;
    }
}

/// The distance from `p` to the segment between `a` and `b`.
fn to_segment(p: [f32; 3], a: [f32; 3], b: [f32; 3]) -> f32 {
    let ab = [b[0] - a[0], b[1] - a[1], b[2] - a[2]];
    let ap = [p[0] - a[0], p[1] - a[1], p[2] - a[2]];
    let len = ab.iter().map(|v| v * v).sum::<f32>();
    if len == 0.0 {
        return distance(p, a);
    }
    let t = (ab.iter().zip(&ap).map(|(u, v)| u * v).sum::<f32>() / len).clamp(0.0, 1.0);
    distance(p, [a[0] + t * ab[0], a[1] + t * ab[1], a[2] + t * ab[2]])
}

/// The colours that each hold at least [`RIM_SHARE`] of the tray around `area` over the given
/// pictures, at most three, most common first. The tray is a box's rim (its outer 5% each
/// side, at least 2 pixels), or the box outside a mask grown by 2 pixels; with a mask, a
/// colour is the tray's only when its share of the tray's pixels exceeds its share of the
/// mask's in the first picture.
fn tray_colours(pictures: &[(&Rgb, &[bool])], area: &Area, tau: f32) -> Vec<[f32; 3]> {
    let b = area.rect;
    let (bw, bh) = b.size();
    let band = ((bw.min(bh) as f64 * 0.05).round() as u32).max(2);
    let outside = area.mask.as_ref().map(|m| {
        let w = pictures.first().map_or(0, |(img, _)| img.w);
        let grown = grow(m, w, m.len() / w.max(1), 2);
        grown.into_iter().map(|g| !g).collect::<Vec<bool>>()
    });
    let is_tray = |x: u32, y: u32, i: usize| match &outside {
        Some(out) => out[i],
        None => x < b.x1 + band || x >= b.x2 - band || y < b.y1 + band || y >= b.y2 - band,
    };
    let mut rim: Vec<[f32; 3]> = Vec::new();
    for (img, seen) in pictures {
        for y in b.y1..b.y2 {
            for x in b.x1..b.x2 {
                let i = y as usize * img.w + x as usize;
                if seen[i] && is_tray(x, y, i) {
                    rim.push(img.v[i]);
                }
            }
        }
    }
    // A mask's dish, in the first picture: a colour commoner there than around it is the
    // dish's (a coarse mask leaves some of the dish outside), not the tray's.
    let dish: Vec<[f32; 3]> = match (&area.mask, pictures.first()) {
        (Some(mask), Some((img, _))) => (b.y1..b.y2)
            .flat_map(|y| (b.x1..b.x2).map(move |x| y as usize * img.w + x as usize))
            .filter(|&i| mask[i])
            .map(|i| img.v[i])
            .collect(),
        _ => Vec::new(),
    };
    let share = |of: &[[f32; 3]], c: [f32; 3]| {
        of.iter().filter(|p| distance(**p, c) <= tau).count() as f64 / of.len().max(1) as f64
    };
    let total = rim.len();
    let mut colours = Vec::new();
    for _ in 0..6 {
        if colours.len() == 3 || rim.is_empty() {
            break;
        }
        // The fullest 16-level bin, then the mean of the pixels near its centre.
        let mut counts = vec![0u32; 16 * 16 * 16];
        let bin = |p: &[f32; 3]| p.map(|c| (c.clamp(0.0, 255.0) as usize) >> 4);
        for p in &rim {
            let [r, g, b] = bin(p);
            counts[(r * 16 + g) * 16 + b] += 1;
        }
        let fullest = (0..counts.len()).max_by_key(|&i| counts[i]).expect("bins");
        let centre =
            [fullest >> 8, (fullest >> 4) & 15, fullest & 15].map(|c| c as f32 * 16.0 + 8.0);
        let near: Vec<&[f32; 3]> = rim
            .iter()
            .filter(|p| distance(**p, centre) <= tau)
            .collect();
        if near.is_empty() {
            break;
        }
        let mut mean = [0.0f32; 3];
        for p in &near {
            (0..3).for_each(|c| mean[c] += p[c] / near.len() as f32);
        }
        let before = rim.len();
        let around = share(&rim, mean) * before as f64 / total as f64;
        rim.retain(|p| distance(*p, mean) > tau);
        if ((before - rim.len()) as f64) < RIM_SHARE * total as f64 {
            break;
        }
        if dish.is_empty() || share(&dish, mean) < around {
            colours.push(mean);
        }
    }
    colours
}

/// `from` with its light matched to `to`'s: each channel times a gain that changes linearly
/// across the frame, fitted where `seen` (see the module's notes).
fn matched(from: &Rgb, to: &Rgb, seen: &[bool]) -> Rgb {
    let (w, h) = (from.w, from.h);
    let (gx, gy) = (16usize, 12usize);
    let mut out = from.clone();
    for c in 0..3 {
        // The median ratio of each cell that the frame shows well.
        let mut cells = Vec::new();
        for cy in 0..gy {
            for cx in 0..gx {
                let (x1, x2) = (cx * w / gx, (cx + 1) * w / gx);
                let (y1, y2) = (cy * h / gy, (cy + 1) * h / gy);
                let mut ratios = Vec::new();
                for y in y1..y2 {
                    for x in x1..x2 {
                        let i = y * w + x;
                        if seen[i] && from.v[i][c] > 8.0 {
                            ratios.push(to.v[i][c] / from.v[i][c]);
                        }
                    }
                }
                if ratios.len() * 2 >= (x2 - x1) * (y2 - y1) && !ratios.is_empty() {
                    let mid = ratios.len() / 2;
                    let (_, m, _) = ratios.select_nth_unstable_by(mid, f32::total_cmp);
                    let centre = |a: usize, b: usize| (a + b) as f64 / 2.0;
                    cells.push((
                        centre(x1, x2) / w as f64,
                        centre(y1, y2) / h as f64,
                        *m as f64,
                    ));
                }
            }
        }
        let [a, b, d] = robust_plane(&mut cells);
        for y in 0..h {
            for x in 0..w {
                let g = a + b * (x as f64 / w as f64) + d * (y as f64 / h as f64);
                out.v[y * w + x][c] *= g as f32;
            }
        }
    }
    out
}

/// The light's plane through cell ratios of which many may be food: the densest ratio first
/// (the window 0.1 wide that holds the most cells: the tray's pixels agree, food's scatter),
/// then [`trimmed_plane`] through the cells within 15% of it. A gain of 1 without cells.
fn robust_plane(points: &mut Vec<(f64, f64, f64)>) -> [f64; 3] {
    let mut z: Vec<f64> = points.iter().map(|p| p.2).collect();
    z.sort_by(f64::total_cmp);
    let (mut best, mut start) = ((0usize, 0usize), 0usize);
    for end in 0..z.len() {
        while z[end] - z[start] > 0.1 {
            start += 1;
        }
        if end + 1 - start > best.1 - best.0 {
            best = (start, end + 1);
        }
    }
    if best.1 == 0 {
        return [1.0, 0.0, 0.0];
    }
    let centre = z[(best.0 + best.1) / 2];
    points.retain(|p| (p.2 - centre).abs() <= 0.15 * centre);
    if points.len() < 6 {
        return [centre, 0.0, 0.0];
    }
    trimmed_plane(points)
}

/// Least-squares plane `z = a + b x + d y` through `points`, refitted three times without the
/// 30% that lie farthest from it. A gain of 1 without enough points.
fn trimmed_plane(points: &mut Vec<(f64, f64, f64)>) -> [f64; 3] {
    let mut coef = [1.0, 0.0, 0.0];
    for round in 0..4 {
        if points.len() < 6 {
            return coef;
        }
        if let Some(c) = plane(points) {
            coef = c;
        }
        if round < 3 {
            let res = |p: &(f64, f64, f64)| (p.2 - coef[0] - coef[1] * p.0 - coef[2] * p.1).abs();
            points.sort_by(|p, q| res(p).total_cmp(&res(q)));
            let keep = (points.len() * 7).div_ceil(10).max(6);
            points.truncate(keep);
        }
    }
    coef
}

/// The least-squares plane through `points`, by the 3x3 normal equations.
fn plane(points: &[(f64, f64, f64)]) -> Option<[f64; 3]> {
    let mut m = [[0.0f64; 4]; 3];
    for &(x, y, z) in points {
        let row = [1.0, x, y];
        for i in 0..3 {
            for j in 0..3 {
                m[i][j] += row[i] * row[j];
            }
            m[i][3] += row[i] * z;
        }
    }
    // Gaussian elimination with partial pivoting.
    for col in 0..3 {
        let pivot = (col..3).max_by(|&a, &b| m[a][col].abs().total_cmp(&m[b][col].abs()))?;
        if m[pivot][col].abs() < 1e-12 {
            return None;
        }
        m.swap(col, pivot);
        let pivot_row = m[col];
        for (r, row) in m.iter_mut().enumerate() {
            if r != col {
                let f = row[col] / pivot_row[col];
                for (v, p) in row.iter_mut().zip(pivot_row).skip(col) {
                    *v -= f * p;
                }
            }
        }
    }
    Some([m[0][3] / m[0][0], m[1][3] / m[1][1], m[2][3] / m[2][2]])
}

/// A 5 x 5 majority vote: a pixel is set when at least 13 of the 25 around it are.
fn majority(mask: &[bool], w: usize, h: usize) -> Vec<bool> {
    let counts = window_counts(mask, w, h, 2);
    counts.iter().map(|&n| n >= 13).collect()
}

/// The pixels within `r` (a square) of a set pixel.
fn grow(mask: &[bool], w: usize, h: usize, r: usize) -> Vec<bool> {
    window_counts(mask, w, h, r)
        .iter()
        .map(|&n| n > 0)
        .collect()
}

/// How many set pixels each `(2r+1)^2` square holds (an integral image).
fn window_counts(mask: &[bool], w: usize, h: usize, r: usize) -> Vec<u32> {
    let mut sum = vec![0u32; (w + 1) * (h + 1)];
    for y in 0..h {
        let mut row = 0u32;
        for x in 0..w {
            row += mask[y * w + x] as u32;
            sum[(y + 1) * (w + 1) + x + 1] = sum[y * (w + 1) + x + 1] + row;
        }
    }
    let mut out = vec![0u32; w * h];
    for y in 0..h {
        let (y1, y2) = (y.saturating_sub(r), (y + r + 1).min(h));
        for x in 0..w {
            let (x1, x2) = (x.saturating_sub(r), (x + r + 1).min(w));
            out[y * w + x] = sum[y2 * (w + 1) + x2] + sum[y1 * (w + 1) + x1]
                - sum[y1 * (w + 1) + x2]
                - sum[y2 * (w + 1) + x1];
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plane_through_exact_points_with_outliers() {
        let mut pts: Vec<(f64, f64, f64)> = (0..40)
            .map(|i| {
                let (x, y) = ((i % 8) as f64 / 8.0, (i / 8) as f64 / 5.0);
                (x, y, 0.9 + 0.2 * x - 0.1 * y)
            })
            .collect();
        pts[3].2 = 5.0;
        pts[17].2 = -2.0;
        let [a, b, d] = trimmed_plane(&mut pts);
        assert!((a - 0.9).abs() < 1e-9 && (b - 0.2).abs() < 1e-9 && (d + 0.1).abs() < 1e-9);
    }

    #[test]
    fn food_on_a_two_tone_compartment_without_an_empty_tray() {
        // A 120x80 compartment: a dark wall 2 px wide, a light floor, and a red dish of 1600 px
        // that the returned photo (in dimmer light) has half of.
        let (w, h) = (120, 80);
        let mut served = Rgb::new(w, h);
        for y in 0..h {
            for x in 0..w {
                let wall = x < 2 || y < 2 || x >= w - 2 || y >= h - 2;
                served.v[y * w + x] = if wall {
                    [90.0; 3]
                } else {
                    [210.0, 220.0, 200.0]
                };
            }
        }
        let mut returned = served.clone();
        for y in 20..60 {
            for x in 40..80 {
                served.v[y * w + x] = [200.0, 40.0, 30.0];
                if x < 60 {
                    returned.v[y * w + x] = [200.0, 40.0, 30.0];
                }
            }
        }
        returned.v.iter_mut().for_each(|p| *p = p.map(|c| c * 0.85));
        let seen = vec![true; w * h];
        let b = Rect {
            x1: 0,
            y1: 0,
            x2: w as u32,
            y2: h as u32,
        };
        let m = masks(&served, &returned, &seen, None, &[Area::boxed(b)]);
        let (s, r, shown) = m.coverage(&Area::boxed(b));
        assert!((s - 1600.0 / 9600.0).abs() < 0.01, "{s}");
        assert!((r - 800.0 / 9600.0).abs() < 0.01, "{r}");
        assert_eq!(shown, 1.0);
    }
}
