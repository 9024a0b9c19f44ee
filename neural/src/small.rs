//! Specialised kernels for scalar-input, scalar-output tanh networks
//! `1 → H1 → H2 → 1` (the shape of a learned rate of one concentration):
//! widths known at compile time, stack arrays, no general matrix loops, and
//! AVX2 builds of both kernels (and an AVX-512F build of the forward one)
//! chosen at run time. There is no FMA (Rust does not contract `a * b + c`),
//! so every build gives identical results. (An AVX-512F backward kernel
//! measured 3x slower than the AVX2 one on the AMD EPYC dev machine.)
//!
//! The tape of one evaluation is the hidden activations `[a1 (H1), a2 (H2)]`;
//! `tanh' = 1 − a²` is recomputed from them.

use crate::mlp::tanh_fast;

/// Forward pass body; `a1`, `a2` receive the hidden activations.
#[inline(always)]
fn fwd_body<const H1: usize, const H2: usize>(w: &[f64], x: f64, a1: &mut [f64; H1], a2: &mut [f64; H2]) -> f64 {
    let o1 = 2 * H1;
    let o2 = o1 + H1 * H2 + H2;
    let (w0, b0) = (&w[..H1], &w[H1..2 * H1]);
    for i in 0..H1 {
        a1[i] = tanh_fast(b0[i] + w0[i] * x);
    }
    let w1 = &w[o1..o1 + H1 * H2];
    // Two accumulators (even and odd columns) halve the chain of dependent additions.
    let mut z = [0.0f64; H2];
    let mut z_odd = [0.0f64; H2];
    z.copy_from_slice(&w[o1 + H1 * H2..o2]);
    for j in (0..H1).step_by(2) {
        let (aj, ak) = (a1[j], a1[(j + 1).min(H1 - 1)]);
        let ak = if j + 1 < H1 { ak } else { 0.0 };
        let col = &w1[j * H2..(j + 1) * H2];
        let col2 = &w1[(j + 1).min(H1 - 1) * H2..((j + 1).min(H1 - 1) + 1) * H2];
        for i in 0..H2 {
            z[i] += col[i] * aj;
            z_odd[i] += col2[i] * ak;
        }
    }
    for i in 0..H2 {
        a2[i] = tanh_fast(z[i] + z_odd[i]);
    }
    let w2 = &w[o2..o2 + H2];
    let mut acc = [0.0f64; 4];
    for i in (0..H2).step_by(4) {
        for l in 0..4 {
            if i + l < H2 {
                acc[l] += w2[i + l] * a2[i + l];
            }
        }
    }
    w[o2 + H2] + ((acc[0] + acc[2]) + (acc[1] + acc[3]))
}

/// Backward pass body: `gw += (∂y/∂w)ᵀ gy` (if given), returns `∂y/∂x · gy`.
#[inline(always)]
fn bwd_body<const H1: usize, const H2: usize>(
    w: &[f64],
    x: f64,
    a1: &[f64; H1],
    a2: &[f64; H2],
    gy: f64,
    gw: Option<&mut [f64]>,
) -> f64 {
    let o1 = 2 * H1;
    let o2 = o1 + H1 * H2 + H2;
    let w1 = &w[o1..o1 + H1 * H2];
    let w2 = &w[o2..o2 + H2];
    let mut d2 = [0.0f64; H2];
    for i in 0..H2 {
        d2[i] = gy * w2[i] * (1.0 - a2[i] * a2[i]);
    }
    let mut d1 = [0.0f64; H1];
    for (j, dj) in d1.iter_mut().enumerate() {
        let col = &w1[j * H2..(j + 1) * H2];
        let mut acc = [0.0f64; 4];
        for i in (0..H2).step_by(4) {
            for l in 0..4 {
                if i + l < H2 {
                    acc[l] += col[i + l] * d2[i + l];
                }
            }
        }
        *dj = ((acc[0] + acc[2]) + (acc[1] + acc[3])) * (1.0 - a1[j] * a1[j]);
    }
    if let Some(gw) = gw {
        let gw = &mut gw[..o2 + H2 + 1];
        // Output layer.
        for i in 0..H2 {
            gw[o2 + i] += gy * a2[i];
        }
        gw[o2 + H2] += gy;
        // Hidden layer 2: bias and columns.
        for i in 0..H2 {
            gw[o1 + H1 * H2 + i] += d2[i];
        }
        let gw1 = &mut gw[o1..o1 + H1 * H2];
        for (j, &aj) in a1.iter().enumerate() {
            let col = &mut gw1[j * H2..(j + 1) * H2];
            for i in 0..H2 {
                col[i] += d2[i] * aj;
            }
        }
        // Hidden layer 1.
        for i in 0..H1 {
            gw[i] += d1[i] * x;
            gw[H1 + i] += d1[i];
        }
    }
    let w0 = &w[..H1];
    let mut acc = [0.0f64; 4];
    for i in (0..H1).step_by(4) {
        for l in 0..4 {
            if i + l < H1 {
                acc[l] += w0[i + l] * d1[i + l];
            }
        }
    }
    (acc[0] + acc[2]) + (acc[1] + acc[3])
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn fwd_avx2<const H1: usize, const H2: usize>(w: &[f64], x: f64, a1: &mut [f64; H1], a2: &mut [f64; H2]) -> f64 {
    fwd_body(w, x, a1, a2)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn bwd_avx2<const H1: usize, const H2: usize>(
    w: &[f64],
    x: f64,
    a1: &[f64; H1],
    a2: &[f64; H2],
    gy: f64,
    gw: Option<&mut [f64]>,
) -> f64 {
    bwd_body(w, x, a1, a2, gy, gw)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn fwd_avx512<const H1: usize, const H2: usize>(
    w: &[f64],
    x: f64,
    a1: &mut [f64; H1],
    a2: &mut [f64; H2],
) -> f64 {
    fwd_body(w, x, a1, a2)
}

fn has_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

pub(crate) fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Number of parameters of `1 → h1 → h2 → 1`.
pub(crate) const fn n_params(h1: usize, h2: usize) -> usize {
    2 * h1 + h1 * h2 + h2 + h2 + 1
}

fn split<const H1: usize, const H2: usize>(tape: &[f64]) -> Option<(&[f64; H1], &[f64; H2])> {
    let (a1, rest) = tape.split_first_chunk::<H1>()?;
    let (a2, _) = rest.split_first_chunk::<H2>()?;
    Some((a1, a2))
}

fn split_mut<const H1: usize, const H2: usize>(tape: &mut [f64]) -> Option<(&mut [f64; H1], &mut [f64; H2])> {
    let (a1, rest) = tape.split_first_chunk_mut::<H1>()?;
    let (a2, _) = rest.split_first_chunk_mut::<H2>()?;
    Some((a1, a2))
}

fn forward_h<const H1: usize, const H2: usize>(w: &[f64], x: f64, tape: &mut [f64]) -> Option<f64> {
    if w.len() < n_params(H1, H2) {
        return None;
    }
    let (a1, a2) = split_mut::<H1, H2>(tape)?;
    #[cfg(target_arch = "x86_64")]
    if has_avx512() {
        // SAFETY: AVX-512F is available on this CPU (checked above).
        return Some(unsafe { fwd_avx512(w, x, a1, a2) });
    }
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: AVX2 is available on this CPU (checked above).
        return Some(unsafe { fwd_avx2(w, x, a1, a2) });
    }
    Some(fwd_body(w, x, a1, a2))
}

fn backward_h<const H1: usize, const H2: usize>(
    w: &[f64],
    x: f64,
    tape: &[f64],
    gy: f64,
    gw: Option<&mut [f64]>,
) -> Option<f64> {
    if w.len() < n_params(H1, H2) || gw.as_ref().is_some_and(|g| g.len() < n_params(H1, H2)) {
        return None;
    }
    let (a1, a2) = split::<H1, H2>(tape)?;
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: AVX2 is available on this CPU (checked above).
        return Some(unsafe { bwd_avx2(w, x, a1, a2, gy, gw) });
    }
    Some(bwd_body(w, x, a1, a2, gy, gw))
}

/// Hidden widths with a specialised kernel.
pub(crate) fn supported(h1: usize, h2: usize) -> bool {
    matches!((h1, h2), (8, 8) | (16, 16) | (32, 32) | (16, 32) | (32, 16))
}

/// `y = net(x)` for `1 → h1 → h2 → 1` tanh, tape `[a1, a2]` (length `h1 + h2`).
/// `None` when the shape has no kernel or the slices are too short.
pub(crate) fn forward(h1: usize, h2: usize, w: &[f64], x: f64, tape: &mut [f64]) -> Option<f64> {
    match (h1, h2) {
        (8, 8) => forward_h::<8, 8>(w, x, tape),
        (16, 16) => forward_h::<16, 16>(w, x, tape),
        (32, 32) => forward_h::<32, 32>(w, x, tape),
        (16, 32) => forward_h::<16, 32>(w, x, tape),
        (32, 16) => forward_h::<32, 16>(w, x, tape),
        _ => None,
    }
}

/// The backward pass over a tape from [`forward`]: `gw += (∂y/∂w)ᵀ gy`,
/// returns `(∂y/∂x)ᵀ gy`. `None` as for [`forward`].
pub(crate) fn backward(
    h1: usize,
    h2: usize,
    w: &[f64],
    x: f64,
    tape: &[f64],
    gy: f64,
    gw: Option<&mut [f64]>,
) -> Option<f64> {
    match (h1, h2) {
        (8, 8) => backward_h::<8, 8>(w, x, tape, gy, gw),
        (16, 16) => backward_h::<16, 16>(w, x, tape, gy, gw),
        (32, 32) => backward_h::<32, 32>(w, x, tape, gy, gw),
        (16, 32) => backward_h::<16, 32>(w, x, tape, gy, gw),
        (32, 16) => backward_h::<32, 16>(w, x, tape, gy, gw),
        _ => None,
    }
}

// ---------------------------------------------------------------------------
// Lane kernels: the same network evaluated for `LANES` inputs at once (one
// per lockstep subject, see `crate::lockstep`). Every value is a `[f64; LANES]`
// whose lanes are independent, so the tanh layers and the matrix products run
// at SIMD throughput instead of along one dependency chain, and no horizontal
// sums are needed. Weight gradients are accumulated per lane (so each lane's
// gradient can be read back on its own) and once per integration step over all
// of its stages ([`weight_grads_lanes`]) rather than once per stage.

/// Number of lanes of the lane kernels.
pub const LANES: usize = 4;
/// One value per lane.
pub(crate) type Lanes = [f64; LANES];

#[inline(always)]
fn fwd_lanes_body<const H1: usize, const H2: usize>(w: &[f64], x: &Lanes, a: &mut [Lanes]) -> Lanes {
    let o1 = 2 * H1;
    let o2 = o1 + H1 * H2 + H2;
    let w = &w[..o2 + H2 + 1];
    let (a1, a2) = a[..H1 + H2].split_at_mut(H1);
    for i in 0..H1 {
        let (wi, bi) = (w[i], w[H1 + i]);
        for l in 0..LANES {
            a1[i][l] = tanh_fast(bi + wi * x[l]);
        }
    }
    let w1 = &w[o1..o1 + H1 * H2];
    let mut z = [[0.0f64; LANES]; H2];
    for (i, zi) in z.iter_mut().enumerate() {
        *zi = [w[o1 + H1 * H2 + i]; LANES];
    }
    for (j, aj) in a1.iter().enumerate() {
        let col = &w1[j * H2..(j + 1) * H2];
        for i in 0..H2 {
            for l in 0..LANES {
                z[i][l] += col[i] * aj[l];
            }
        }
    }
    for i in 0..H2 {
        for l in 0..LANES {
            a2[i][l] = tanh_fast(z[i][l]);
        }
    }
    let w2 = &w[o2..o2 + H2];
    let mut acc = [[0.0f64; LANES]; 4];
    for i in 0..H2 {
        for l in 0..LANES {
            acc[i % 4][l] += w2[i] * a2[i][l];
        }
    }
    let mut y = [0.0f64; LANES];
    for l in 0..LANES {
        y[l] = w[o2 + H2] + ((acc[0][l] + acc[2][l]) + (acc[1][l] + acc[3][l]));
    }
    y
}

/// Backward pass without weight gradients: writes `d = [d1 (H1), d2 (H2)]`
/// (the pre-activation cotangents) and returns `∂y/∂x · gy` per lane.
#[inline(always)]
fn bwd_lanes_body<const H1: usize, const H2: usize>(w: &[f64], a: &[Lanes], gy: &Lanes, d: &mut [Lanes]) -> Lanes {
    let o1 = 2 * H1;
    let o2 = o1 + H1 * H2 + H2;
    let w = &w[..o2 + H2 + 1];
    let (a1, a2) = a[..H1 + H2].split_at(H1);
    let (d1, d2) = d[..H1 + H2].split_at_mut(H1);
    let w2 = &w[o2..o2 + H2];
    for i in 0..H2 {
        for l in 0..LANES {
            d2[i][l] = gy[l] * w2[i] * (1.0 - a2[i][l] * a2[i][l]);
        }
    }
    let w1 = &w[o1..o1 + H1 * H2];
    for j in 0..H1 {
        let col = &w1[j * H2..(j + 1) * H2];
        let mut acc = [[0.0f64; LANES]; 2];
        for i in 0..H2 {
            for l in 0..LANES {
                acc[i % 2][l] += col[i] * d2[i][l];
            }
        }
        for l in 0..LANES {
            d1[j][l] = (acc[0][l] + acc[1][l]) * (1.0 - a1[j][l] * a1[j][l]);
        }
    }
    let mut acc = [[0.0f64; LANES]; 4];
    for i in 0..H1 {
        for l in 0..LANES {
            acc[i % 4][l] += w[i] * d1[i][l];
        }
    }
    let mut gx = [0.0f64; LANES];
    for l in 0..LANES {
        gx[l] = (acc[0][l] + acc[2][l]) + (acc[1][l] + acc[3][l]);
    }
    gx
}

/// Length of one stage record of [`weight_grads_lanes`] (in lanes values):
/// `[x, gy, a1 (H1), a2 (H2), d1 (H1), d2 (H2)]`.
pub(crate) const fn lanes_record_len(h1: usize, h2: usize) -> usize {
    2 + 2 * (h1 + h2)
}

#[inline(always)]
fn wgrad_lanes_body<const H1: usize, const H2: usize>(recs: &[Lanes], gw: &mut [Lanes]) {
    let o1 = 2 * H1;
    let o2 = o1 + H1 * H2 + H2;
    let rl = lanes_record_len(H1, H2);
    let ns = recs.len() / rl;
    let gw = &mut gw[..o2 + H2 + 1];
    let rec = |s: usize| &recs[s * rl..(s + 1) * rl];
    // Output layer and its bias.
    for i in 0..H2 {
        let mut acc = [0.0f64; LANES];
        for s in 0..ns {
            let r = rec(s);
            for l in 0..LANES {
                acc[l] += r[1][l] * r[2 + H1 + i][l];
            }
        }
        for l in 0..LANES {
            gw[o2 + i][l] += acc[l];
        }
    }
    let mut acc = [0.0f64; LANES];
    for s in 0..ns {
        for (a, v) in acc.iter_mut().zip(rec(s)[1]) {
            *a += v;
        }
    }
    for l in 0..LANES {
        gw[o2 + H2][l] += acc[l];
    }
    // Hidden layer 2: bias, then the H1 x H2 matrix as one product over the stages.
    let d2o = 2 + 2 * H1 + H2;
    for i in 0..H2 {
        let mut acc = [0.0f64; LANES];
        for s in 0..ns {
            let r = rec(s);
            for l in 0..LANES {
                acc[l] += r[d2o + i][l];
            }
        }
        for l in 0..LANES {
            gw[o1 + H1 * H2 + i][l] += acc[l];
        }
    }
    for j in 0..H1 {
        // Blocks of 4 rows: 4 accumulators stay in registers over the stages.
        for ib in (0..H2).step_by(4) {
            let mut acc = [[0.0f64; LANES]; 4];
            for s in 0..ns {
                let r = rec(s);
                let aj = r[2 + j];
                for (q, aq) in acc.iter_mut().enumerate() {
                    for l in 0..LANES {
                        aq[l] += r[d2o + ib + q][l] * aj[l];
                    }
                }
            }
            let col = &mut gw[o1 + j * H2 + ib..o1 + j * H2 + ib + 4];
            for (c, aq) in col.iter_mut().zip(&acc) {
                for l in 0..LANES {
                    c[l] += aq[l];
                }
            }
        }
    }
    // Hidden layer 1.
    let d1o = 2 + H1 + H2;
    for i in 0..H1 {
        let (mut aw, mut ab) = ([0.0f64; LANES], [0.0f64; LANES]);
        for s in 0..ns {
            let r = rec(s);
            for l in 0..LANES {
                aw[l] += r[d1o + i][l] * r[0][l];
                ab[l] += r[d1o + i][l];
            }
        }
        for l in 0..LANES {
            gw[i][l] += aw[l];
            gw[H1 + i][l] += ab[l];
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn wgrad_lanes_avx2<const H1: usize, const H2: usize>(recs: &[Lanes], gw: &mut [Lanes]) {
    wgrad_lanes_body::<H1, H2>(recs, gw)
}

fn forward_lanes_h<const H1: usize, const H2: usize>(
    w: &[f64],
    wl: &[Lanes],
    x: &Lanes,
    a: &mut [Lanes],
) -> Option<Lanes> {
    if w.len() < n_params(H1, H2) || a.len() < H1 + H2 {
        return None;
    }
    #[cfg(target_arch = "x86_64")]
    if has_avx512() && wl.len() >= n_params(H1, H2) {
        // SAFETY: AVX-512F (and so AVX2) is available on this CPU (checked above); the lengths are checked above.
        return Some(unsafe { x512::fwd::<H1, H2>(wl, x, a) });
    }
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: AVX2 is available on this CPU (checked above); the lengths are checked above.
        return Some(unsafe { x86::fwd::<H1, H2>(w, x, a) });
    }
    Some(fwd_lanes_body::<H1, H2>(w, x, a))
}

fn backward_lanes_h<const H1: usize, const H2: usize>(
    w: &[f64],
    wl: &[Lanes],
    a: &[Lanes],
    gy: &Lanes,
    d: &mut [Lanes],
) -> Option<Lanes> {
    if w.len() < n_params(H1, H2) || a.len() < H1 + H2 || d.len() < H1 + H2 {
        return None;
    }
    #[cfg(target_arch = "x86_64")]
    if has_avx512() && wl.len() >= n_params(H1, H2) {
        // SAFETY: AVX-512F (and so AVX2) is available on this CPU (checked above); the lengths are checked above.
        return Some(unsafe { x512::bwd::<H1, H2>(wl, a, gy, d) });
    }
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: AVX2 is available on this CPU (checked above); the lengths are checked above.
        return Some(unsafe { x86::bwd::<H1, H2>(w, a, gy, d) });
    }
    Some(bwd_lanes_body::<H1, H2>(w, a, gy, d))
}

fn wgrad_lanes_h<const H1: usize, const H2: usize>(recs: &[Lanes], gw: &mut [Lanes]) -> Option<()> {
    if gw.len() < n_params(H1, H2) || !recs.len().is_multiple_of(lanes_record_len(H1, H2)) {
        return None;
    }
    #[cfg(target_arch = "x86_64")]
    if has_avx512() {
        // SAFETY: AVX-512F is available on this CPU (checked above); the lengths are checked above.
        unsafe { x512::wgrad::<H1, H2>(recs, gw) };
        return Some(());
    }
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: AVX2 is available on this CPU (checked above).
        unsafe { wgrad_lanes_avx2::<H1, H2>(recs, gw) };
        return Some(());
    }
    wgrad_lanes_body::<H1, H2>(recs, gw);
    Some(())
}

/// `y = net(x)` per lane for `1 → h1 → h2 → 1` tanh; `a` (length `h1 + h2`)
/// receives the hidden activations `[a1, a2]`. `wl` is `w` splatted
/// ([`splat_weights`]; the AVX-512F build reads it, the others read `w`).
/// `None` when the shape has no kernel or the slices are too short.
pub(crate) fn forward_lanes(
    h1: usize,
    h2: usize,
    w: &[f64],
    wl: &[Lanes],
    x: &Lanes,
    a: &mut [Lanes],
) -> Option<Lanes> {
    match (h1, h2) {
        (8, 8) => forward_lanes_h::<8, 8>(w, wl, x, a),
        (16, 16) => forward_lanes_h::<16, 16>(w, wl, x, a),
        (32, 32) => forward_lanes_h::<32, 32>(w, wl, x, a),
        (16, 32) => forward_lanes_h::<16, 32>(w, wl, x, a),
        (32, 16) => forward_lanes_h::<32, 16>(w, wl, x, a),
        _ => None,
    }
}

/// The backward pass per lane over activations `a` from [`forward_lanes`]:
/// writes the pre-activation cotangents `d = [d1 (h1), d2 (h2)]` (what
/// [`weight_grads_lanes`] needs) and returns `(∂y/∂x)ᵀ gy` per lane.
pub(crate) fn backward_lanes(
    h1: usize,
    h2: usize,
    w: &[f64],
    wl: &[Lanes],
    a: &[Lanes],
    gy: &Lanes,
    d: &mut [Lanes],
) -> Option<Lanes> {
    match (h1, h2) {
        (8, 8) => backward_lanes_h::<8, 8>(w, wl, a, gy, d),
        (16, 16) => backward_lanes_h::<16, 16>(w, wl, a, gy, d),
        (32, 32) => backward_lanes_h::<32, 32>(w, wl, a, gy, d),
        (16, 32) => backward_lanes_h::<16, 32>(w, wl, a, gy, d),
        (32, 16) => backward_lanes_h::<32, 16>(w, wl, a, gy, d),
        _ => None,
    }
}

/// `gw += Σ_s (∂y/∂w)ᵀ gy_s` per lane over stage records
/// `[x, gy, a1, a2, d1, d2]` (each [`lanes_record_len`] long, `d` from
/// [`backward_lanes`]); `gw` holds one value per weight and lane.
pub(crate) fn weight_grads_lanes(h1: usize, h2: usize, recs: &[Lanes], gw: &mut [Lanes]) -> Option<()> {
    match (h1, h2) {
        (8, 8) => wgrad_lanes_h::<8, 8>(recs, gw),
        (16, 16) => wgrad_lanes_h::<16, 16>(recs, gw),
        (32, 32) => wgrad_lanes_h::<32, 32>(recs, gw),
        (16, 32) => wgrad_lanes_h::<16, 32>(recs, gw),
        (32, 16) => wgrad_lanes_h::<32, 16>(recs, gw),
        _ => None,
    }
}

// AVX2 builds of the lane kernels written with intrinsics: one `__m256d` per
// lanes value, so that nothing is shuffled between lanes (the autovectoriser
// mixed lanes and hidden units and spilled). No FMA: the same operations, in
// the same order, as `exp_fast`/`tanh_fast` lane by lane.
#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{Lanes, LANES};
    use std::arch::x86_64::*;

    #[inline]
    #[target_feature(enable = "avx2")]
    fn splat(v: f64) -> __m256d {
        _mm256_set1_pd(v)
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    fn add(a: __m256d, b: __m256d) -> __m256d {
        _mm256_add_pd(a, b)
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    fn sub(a: __m256d, b: __m256d) -> __m256d {
        _mm256_sub_pd(a, b)
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    fn mul(a: __m256d, b: __m256d) -> __m256d {
        _mm256_mul_pd(a, b)
    }

    /// Loads lanes value `i` of `p`.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn ld(p: *const f64, i: usize) -> __m256d {
        // SAFETY: the caller guarantees that `p` holds at least `LANES (i + 1)` values.
        unsafe { _mm256_loadu_pd(p.add(LANES * i)) }
    }

    /// Stores lanes value `i` of `p`.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn st(p: *mut f64, i: usize, v: __m256d) {
        // SAFETY: the caller guarantees that `p` holds at least `LANES (i + 1)` values.
        unsafe { _mm256_storeu_pd(p.add(LANES * i), v) }
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    fn to_lanes(v: __m256d) -> Lanes {
        let mut out = [0.0; LANES];
        // SAFETY: `out` holds LANES values.
        unsafe { _mm256_storeu_pd(out.as_mut_ptr(), v) };
        out
    }

    /// `crate::mlp::exp_fast` per lane (same operations and order).
    #[inline]
    #[target_feature(enable = "avx2")]
    fn exp_v(x: __m256d) -> __m256d {
        const LOG2E: f64 = std::f64::consts::LOG2_E;
        const LN2_HI: f64 = 6.931_471_803_691_238e-1;
        const LN2_LO: f64 = 1.908_214_929_270_587_7e-10;
        const MAGIC: f64 = 6_755_399_441_055_744.0;
        // clamp(-700, 700), NaN passing through (min/max return their second operand on NaN).
        let x = _mm256_max_pd(splat(-700.0), _mm256_min_pd(splat(700.0), x));
        let t = add(mul(x, splat(LOG2E)), splat(MAGIC));
        let k = sub(t, splat(MAGIC));
        let r = sub(sub(x, mul(k, splat(LN2_HI))), mul(k, splat(LN2_LO)));
        let r2 = mul(r, r);
        let r4 = mul(r2, r2);
        let r8 = mul(r4, r4);
        let q = |a: f64, b: f64| add(splat(a), mul(r, splat(b)));
        let q0 = add(splat(1.0), r);
        let q1 = q(1.0 / 2.0, 1.0 / 6.0);
        let q2 = q(1.0 / 24.0, 1.0 / 120.0);
        let q3 = q(1.0 / 720.0, 1.0 / 5_040.0);
        let q4 = q(1.0 / 40_320.0, 1.0 / 362_880.0);
        let q5 = q(1.0 / 3_628_800.0, 1.0 / 39_916_800.0);
        let q6 = q(1.0 / 479_001_600.0, 1.0 / 6_227_020_800.0);
        let s0 = add(q0, mul(r2, q1));
        let s1 = add(q2, mul(r2, q3));
        let s2 = add(q4, mul(r2, q5));
        let u0 = add(s0, mul(r4, s1));
        let u1 = add(s2, mul(r4, q6));
        let p = add(u0, mul(r8, u1));
        let bits = _mm256_slli_epi64::<52>(_mm256_add_epi64(_mm256_castpd_si256(t), _mm256_set1_epi64x(1023)));
        mul(p, _mm256_castsi256_pd(bits))
    }

    /// `crate::mlp::tanh_fast` per lane.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn tanh_v(z: __m256d) -> __m256d {
        let zc = _mm256_max_pd(splat(-20.0), _mm256_min_pd(splat(20.0), z));
        let e = exp_v(mul(splat(2.0), zc));
        _mm256_div_pd(sub(e, splat(1.0)), add(e, splat(1.0)))
    }

    /// `super::softplus_sigmoid` per lane (same operations and order).
    ///
    /// # Safety
    /// AVX2 must be available.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn softplus_sigmoid(z: &Lanes) -> (Lanes, Lanes) {
        // SAFETY: `z` holds one lanes value.
        let z = unsafe { ld(z.as_ptr(), 0) };
        let absz = _mm256_andnot_pd(splat(-0.0), z);
        let e = exp_v(sub(splat(0.0), absz));
        let one = splat(1.0);
        // log1p(e), e in [0, 1].
        let v = add(one, e);
        let big = _mm256_cmp_pd::<_CMP_GT_OQ>(v, splat(std::f64::consts::SQRT_2));
        let m = _mm256_blendv_pd(v, mul(splat(0.5), v), big);
        let k = _mm256_and_pd(big, splat(std::f64::consts::LN_2));
        let s = _mm256_div_pd(sub(m, one), add(m, one));
        let s2 = mul(s, s);
        let s4 = mul(s2, s2);
        let s8 = mul(s4, s4);
        let c = |a: f64, b: f64| add(splat(a), mul(s2, splat(b)));
        let c0 = add(one, mul(s2, splat(1.0 / 3.0)));
        let c1 = c(1.0 / 5.0, 1.0 / 7.0);
        let c2 = c(1.0 / 9.0, 1.0 / 11.0);
        let c3 = c(1.0 / 13.0, 1.0 / 15.0);
        let c4 = c(1.0 / 17.0, 1.0 / 19.0);
        let d0 = add(c0, mul(s4, c1));
        let d1 = add(c2, mul(s4, c3));
        let p = add(add(d0, mul(s8, d1)), mul(mul(s8, s8), c4));
        let ln_v = add(k, mul(mul(splat(2.0), s), p));
        let l1p = add(ln_v, _mm256_div_pd(sub(e, sub(v, one)), v));
        let sp = add(_mm256_max_pd(z, splat(0.0)), l1p);
        let pos = _mm256_cmp_pd::<_CMP_GE_OQ>(z, splat(0.0));
        let num = _mm256_blendv_pd(e, one, pos);
        let sg = _mm256_div_pd(num, add(one, e));
        (to_lanes(sp), to_lanes(sg))
    }

    /// [`tanh_v`] on a 512-bit vector (two lanes values; the same operations
    /// per element: on the AMD EPYC dev machine 512-bit tanh ran 1.4x faster
    /// per element than 256-bit).
    #[inline]
    #[target_feature(enable = "avx2,avx512f")]
    pub(super) fn tanh2(z: __m512d) -> __m512d {
        const LOG2E: f64 = std::f64::consts::LOG2_E;
        const LN2_HI: f64 = 6.931_471_803_691_238e-1;
        const LN2_LO: f64 = 1.908_214_929_270_587_7e-10;
        const MAGIC: f64 = 6_755_399_441_055_744.0;
        let s = _mm512_set1_pd;
        let (add, mul, sub) = (_mm512_add_pd, _mm512_mul_pd, _mm512_sub_pd);
        let zc = _mm512_max_pd(s(-20.0), _mm512_min_pd(s(20.0), z));
        let x = mul(s(2.0), zc);
        let x = _mm512_max_pd(s(-700.0), _mm512_min_pd(s(700.0), x));
        let t = add(mul(x, s(LOG2E)), s(MAGIC));
        let k = sub(t, s(MAGIC));
        let r = sub(sub(x, mul(k, s(LN2_HI))), mul(k, s(LN2_LO)));
        let r2 = mul(r, r);
        let r4 = mul(r2, r2);
        let r8 = mul(r4, r4);
        let q = |a: f64, b: f64| add(s(a), mul(r, s(b)));
        let q0 = add(s(1.0), r);
        let q1 = q(1.0 / 2.0, 1.0 / 6.0);
        let q2 = q(1.0 / 24.0, 1.0 / 120.0);
        let q3 = q(1.0 / 720.0, 1.0 / 5_040.0);
        let q4 = q(1.0 / 40_320.0, 1.0 / 362_880.0);
        let q5 = q(1.0 / 3_628_800.0, 1.0 / 39_916_800.0);
        let q6 = q(1.0 / 479_001_600.0, 1.0 / 6_227_020_800.0);
        let s0 = add(q0, mul(r2, q1));
        let s1 = add(q2, mul(r2, q3));
        let s2 = add(q4, mul(r2, q5));
        let u0 = add(s0, mul(r4, s1));
        let u1 = add(s2, mul(r4, q6));
        let p = add(u0, mul(r8, u1));
        let bits = _mm512_slli_epi64::<52>(_mm512_add_epi64(_mm512_castpd_si512(t), _mm512_set1_epi64(1023)));
        let e = mul(p, _mm512_castsi512_pd(bits));
        _mm512_div_pd(sub(e, s(1.0)), add(e, s(1.0)))
    }

    /// Forward kernel (see `fwd_lanes_body`).
    ///
    /// # Safety
    /// AVX2 must be available; `w` holds the weights of `1 → H1 → H2 → 1`
    /// and `a` at least `H1 + H2` values.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn fwd<const H1: usize, const H2: usize>(w: &[f64], x: &Lanes, a: &mut [Lanes]) -> Lanes {
        let o1 = 2 * H1;
        let o2 = o1 + H1 * H2 + H2;
        let w = &w[..o2 + H2 + 1];
        let a = &mut a[..H1 + H2];
        let ap = a.as_mut_ptr() as *mut f64;
        // SAFETY (all loads and stores below): `a` holds H1 + H2 lanes values, `x` one.
        unsafe {
            let xv = ld(x.as_ptr(), 0);
            for i in 0..H1 {
                st(ap, i, tanh_v(add(splat(w[H1 + i]), mul(splat(w[i]), xv))));
            }
            let w1 = &w[o1..o1 + H1 * H2];
            let b1 = &w[o1 + H1 * H2..o2];
            for ib in (0..H2).step_by(8) {
                let mut acc: [__m256d; 8] = std::array::from_fn(|q| splat(b1[ib + q]));
                for j in 0..H1 {
                    let aj = ld(ap, j);
                    let col = &w1[j * H2 + ib..j * H2 + ib + 8];
                    for q in 0..8 {
                        acc[q] = add(acc[q], mul(splat(col[q]), aj));
                    }
                }
                for (q, z) in acc.iter().enumerate() {
                    st(ap, H1 + ib + q, tanh_v(*z));
                }
            }
            let w2 = &w[o2..o2 + H2];
            let mut acc = [splat(0.0); 4];
            for i in 0..H2 {
                acc[i % 4] = add(acc[i % 4], mul(splat(w2[i]), ld(ap, H1 + i)));
            }
            to_lanes(add(splat(w[o2 + H2]), add(add(acc[0], acc[2]), add(acc[1], acc[3]))))
        }
    }

    /// Backward kernel (see `bwd_lanes_body`).
    ///
    /// # Safety
    /// As [`fwd`], and `d` holds at least `H1 + H2` values.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn bwd<const H1: usize, const H2: usize>(
        w: &[f64],
        a: &[Lanes],
        gy: &Lanes,
        d: &mut [Lanes],
    ) -> Lanes {
        let o1 = 2 * H1;
        let o2 = o1 + H1 * H2 + H2;
        let w = &w[..o2 + H2 + 1];
        let a = &a[..H1 + H2];
        let d = &mut d[..H1 + H2];
        let ap = a.as_ptr() as *const f64;
        let dp = d.as_mut_ptr() as *mut f64;
        let one = splat(1.0);
        // SAFETY (all loads and stores below): `a` and `d` hold H1 + H2 lanes values, `gy` one.
        unsafe {
            let g = ld(gy.as_ptr(), 0);
            let w2 = &w[o2..o2 + H2];
            for (i, &w2i) in w2.iter().enumerate() {
                let ai = ld(ap, H1 + i);
                st(dp, H1 + i, mul(mul(g, splat(w2i)), sub(one, mul(ai, ai))));
            }
            let w1 = &w[o1..o1 + H1 * H2];
            for jb in (0..H1).step_by(4) {
                let mut acc = [[splat(0.0); 2]; 4];
                for i in 0..H2 {
                    let di = ld(dp, H1 + i);
                    for q in 0..4 {
                        acc[q][i % 2] = add(acc[q][i % 2], mul(splat(w1[(jb + q) * H2 + i]), di));
                    }
                }
                for (q, aq) in acc.iter().enumerate() {
                    let aj = ld(ap, jb + q);
                    st(dp, jb + q, mul(add(aq[0], aq[1]), sub(one, mul(aj, aj))));
                }
            }
            let mut acc = [splat(0.0); 4];
            for i in 0..H1 {
                acc[i % 4] = add(acc[i % 4], mul(splat(w[i]), ld(dp, i)));
            }
            to_lanes(add(add(acc[0], acc[2]), add(acc[1], acc[3])))
        }
    }
}

// AVX-512F builds of the lane kernels: every 512-bit vector holds two
// consecutive lanes values (two hidden units, or two records), so the weights
// come pre-splatted (`wl`: each weight repeated `LANES` times, see
// [`splat_weights`]) and a pair of them is one load. Each element sees the
// same operations in the same order as in the AVX2 and portable builds
// (pairs of units go to the two halves of one accumulator exactly where those
// builds alternate two accumulators), so all builds agree bit for bit.
#[cfg(target_arch = "x86_64")]
mod x512 {
    use super::x86::tanh2;
    use super::{Lanes, LANES};
    use std::arch::x86_64::*;

    /// Loads lanes values `i` and `i + 1` of `p`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn ld2(p: *const f64, i: usize) -> __m512d {
        // SAFETY: the caller guarantees that `p` holds at least `LANES (i + 2)` values.
        unsafe { _mm512_loadu_pd(p.add(LANES * i)) }
    }

    /// Stores lanes values `i` and `i + 1` of `p`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn st2(p: *mut f64, i: usize, v: __m512d) {
        // SAFETY: the caller guarantees that `p` holds at least `LANES (i + 2)` values.
        unsafe { _mm512_storeu_pd(p.add(LANES * i), v) }
    }

    /// Lanes value `i` of `p` in both halves.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn dup(p: *const f64, i: usize) -> __m512d {
        // SAFETY: the caller guarantees that `p` holds at least `LANES (i + 1)` values.
        unsafe { _mm512_broadcast_f64x4(_mm256_loadu_pd(p.add(LANES * i))) }
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    fn lo_plus_hi(v: __m512d) -> __m256d {
        _mm256_add_pd(_mm512_castpd512_pd256(v), _mm512_extractf64x4_pd::<1>(v))
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    fn to_lanes(v: __m256d) -> Lanes {
        let mut out = [0.0; LANES];
        // SAFETY: `out` holds LANES values.
        unsafe { _mm256_storeu_pd(out.as_mut_ptr(), v) };
        out
    }

    /// Forward kernel (see `fwd_lanes_body`).
    ///
    /// # Safety
    /// AVX-512F must be available; `wl` holds the splatted weights of
    /// `1 → H1 → H2 → 1` and `a` at least `H1 + H2` values.
    #[target_feature(enable = "avx2,avx512f")]
    pub(super) unsafe fn fwd<const H1: usize, const H2: usize>(wl: &[Lanes], x: &Lanes, a: &mut [Lanes]) -> Lanes {
        let o1 = 2 * H1;
        let o2 = o1 + H1 * H2 + H2;
        let wl = &wl[..o2 + H2 + 1];
        let a = &mut a[..H1 + H2];
        let wp = wl.as_ptr() as *const f64;
        let ap = a.as_mut_ptr() as *mut f64;
        let (add, mul) = (_mm512_add_pd, _mm512_mul_pd);
        // SAFETY (all loads and stores below): `wl` holds n_params lanes values, `a` H1 + H2, `x` one.
        unsafe {
            let xv = dup(x.as_ptr(), 0);
            for i in (0..H1).step_by(2) {
                st2(ap, i, tanh2(add(ld2(wp, H1 + i), mul(ld2(wp, i), xv))));
            }
            for ib in (0..H2).step_by(8) {
                let mut acc: [__m512d; 4] = std::array::from_fn(|q| ld2(wp, o1 + H1 * H2 + ib + 2 * q));
                for j in 0..H1 {
                    let aj = dup(ap, j);
                    for (q, acc) in acc.iter_mut().enumerate() {
                        *acc = add(*acc, mul(ld2(wp, o1 + j * H2 + ib + 2 * q), aj));
                    }
                }
                for (q, z) in acc.into_iter().enumerate() {
                    st2(ap, H1 + ib + 2 * q, tanh2(z));
                }
            }
            // Units i ≡ 0, 1 (mod 4) in `ev`, i ≡ 2, 3 in `od`: the portable build's acc[i % 4].
            let (mut ev, mut od) = (_mm512_setzero_pd(), _mm512_setzero_pd());
            for i in (0..H2).step_by(4) {
                ev = add(ev, mul(ld2(wp, o2 + i), ld2(ap, H1 + i)));
                od = add(od, mul(ld2(wp, o2 + i + 2), ld2(ap, H1 + i + 2)));
            }
            let b = _mm256_loadu_pd(wp.add(LANES * (o2 + H2)));
            to_lanes(_mm256_add_pd(b, lo_plus_hi(add(ev, od))))
        }
    }

    /// Backward kernel (see `bwd_lanes_body`).
    ///
    /// # Safety
    /// As [`fwd`], and `d` holds at least `H1 + H2` values.
    #[target_feature(enable = "avx2,avx512f")]
    pub(super) unsafe fn bwd<const H1: usize, const H2: usize>(
        wl: &[Lanes],
        a: &[Lanes],
        gy: &Lanes,
        d: &mut [Lanes],
    ) -> Lanes {
        let o1 = 2 * H1;
        let o2 = o1 + H1 * H2 + H2;
        let wl = &wl[..o2 + H2 + 1];
        let a = &a[..H1 + H2];
        let d = &mut d[..H1 + H2];
        let wp = wl.as_ptr() as *const f64;
        let ap = a.as_ptr() as *const f64;
        let dp = d.as_mut_ptr() as *mut f64;
        let (add, mul, sub) = (_mm512_add_pd, _mm512_mul_pd, _mm512_sub_pd);
        let one = _mm512_set1_pd(1.0);
        // SAFETY (all loads and stores below): `wl` holds n_params lanes values, `a` and `d` H1 + H2, `gy` one.
        unsafe {
            let g = dup(gy.as_ptr(), 0);
            for i in (0..H2).step_by(2) {
                let ai = ld2(ap, H1 + i);
                st2(dp, H1 + i, mul(mul(g, ld2(wp, o2 + i)), sub(one, mul(ai, ai))));
            }
            // d1_j: even i in the low half, odd i in the high half (the portable build's acc[i % 2]).
            for jb in (0..H1).step_by(4) {
                let mut acc = [_mm512_setzero_pd(); 4];
                for i in (0..H2).step_by(2) {
                    let di = ld2(dp, H1 + i);
                    for (q, acc) in acc.iter_mut().enumerate() {
                        *acc = add(*acc, mul(ld2(wp, o1 + (jb + q) * H2 + i), di));
                    }
                }
                for (q, acc) in acc.into_iter().enumerate() {
                    let aj = _mm256_loadu_pd(ap.add(LANES * (jb + q)));
                    let dj = _mm256_mul_pd(lo_plus_hi(acc), _mm256_sub_pd(_mm256_set1_pd(1.0), _mm256_mul_pd(aj, aj)));
                    _mm256_storeu_pd(dp.add(LANES * (jb + q)), dj);
                }
            }
            let (mut ev, mut od) = (_mm512_setzero_pd(), _mm512_setzero_pd());
            for i in (0..H1).step_by(4) {
                ev = add(ev, mul(ld2(wp, i), ld2(dp, i)));
                od = add(od, mul(ld2(wp, i + 2), ld2(dp, i + 2)));
            }
            to_lanes(lo_plus_hi(add(ev, od)))
        }
    }

    /// Weight gradients over stage records (see `wgrad_lanes_body`).
    ///
    /// # Safety
    /// AVX-512F must be available; `recs` holds whole records and `gw` at
    /// least `n_params` values.
    #[target_feature(enable = "avx2,avx512f")]
    pub(super) unsafe fn wgrad<const H1: usize, const H2: usize>(recs: &[Lanes], gw: &mut [Lanes]) {
        let o1 = 2 * H1;
        let o2 = o1 + H1 * H2 + H2;
        let rl = super::lanes_record_len(H1, H2);
        let ns = recs.len() / rl;
        let gw = &mut gw[..o2 + H2 + 1];
        let rp = recs.as_ptr() as *const f64;
        let gp = gw.as_mut_ptr() as *mut f64;
        let (add, mul) = (_mm512_add_pd, _mm512_mul_pd);
        let (a1o, a2o, d1o, d2o) = (2, 2 + H1, 2 + H1 + H2, 2 + 2 * H1 + H2);
        // SAFETY (all loads and stores below): record s spans lanes values s·rl .. (s+1)·rl of `recs`; `gw` holds n_params.
        unsafe {
            // Output layer.
            for i in (0..H2).step_by(2) {
                let mut acc = _mm512_setzero_pd();
                for s in 0..ns {
                    acc = add(acc, mul(dup(rp, s * rl + 1), ld2(rp, s * rl + a2o + i)));
                }
                st2(gp, o2 + i, add(ld2(gp, o2 + i), acc));
            }
            let mut acc = _mm256_setzero_pd();
            for s in 0..ns {
                acc = _mm256_add_pd(acc, _mm256_loadu_pd(rp.add(LANES * (s * rl + 1))));
            }
            let bo = gp.add(LANES * (o2 + H2));
            _mm256_storeu_pd(bo, _mm256_add_pd(_mm256_loadu_pd(bo), acc));
            // Hidden layer 2: bias, then the matrix.
            for i in (0..H2).step_by(2) {
                let mut acc = _mm512_setzero_pd();
                for s in 0..ns {
                    acc = add(acc, ld2(rp, s * rl + d2o + i));
                }
                st2(gp, o1 + H1 * H2 + i, add(ld2(gp, o1 + H1 * H2 + i), acc));
            }
            for j in 0..H1 {
                for ib in (0..H2).step_by(8) {
                    let mut acc = [_mm512_setzero_pd(); 4];
                    for s in 0..ns {
                        let aj = dup(rp, s * rl + a1o + j);
                        for (q, acc) in acc.iter_mut().enumerate() {
                            *acc = add(*acc, mul(ld2(rp, s * rl + d2o + ib + 2 * q), aj));
                        }
                    }
                    for (q, acc) in acc.into_iter().enumerate() {
                        let gi = o1 + j * H2 + ib + 2 * q;
                        st2(gp, gi, add(ld2(gp, gi), acc));
                    }
                }
            }
            // Hidden layer 1.
            for i in (0..H1).step_by(2) {
                let (mut aw, mut ab) = (_mm512_setzero_pd(), _mm512_setzero_pd());
                for s in 0..ns {
                    let di = ld2(rp, s * rl + d1o + i);
                    aw = add(aw, mul(di, dup(rp, s * rl)));
                    ab = add(ab, di);
                }
                st2(gp, i, add(ld2(gp, i), aw));
                st2(gp, H1 + i, add(ld2(gp, H1 + i), ab));
            }
        }
    }
}

/// Each weight repeated [`LANES`] times (what the AVX-512F lane kernels read).
pub(crate) fn splat_weights(w: &[f64], out: &mut Vec<Lanes>) {
    out.clear();
    out.extend(w.iter().map(|&v| [v; LANES]));
}

/// `ln(1 + u)` for `u` in `[0, 1]`, branch-free: `v = 1 + u` rounded, then
/// `ln v = k ln2 + 2 atanh((m − 1)/(m + 1))` with `v = 2^k m`, `m ∈ [1/√2, √2)`
/// (a degree-19 odd series, truncation below 1e-18), and the rounding of `v`
/// corrected by `(u − (v − 1))/v`. Relative error within a few ulp.
#[inline(always)]
pub(crate) fn log1p_unit(u: f64) -> f64 {
    const LN2: f64 = std::f64::consts::LN_2;
    let v = 1.0 + u;
    let big = v > std::f64::consts::SQRT_2;
    let m = if big { 0.5 * v } else { v };
    let k = if big { LN2 } else { 0.0 };
    let s = (m - 1.0) / (m + 1.0);
    let s2 = s * s;
    let s4 = s2 * s2;
    let s8 = s4 * s4;
    // 1 + s²/3 + s⁴/5 + … + s¹⁸/19 by Estrin's scheme.
    let c0 = 1.0 + s2 * (1.0 / 3.0);
    let c1 = 1.0 / 5.0 + s2 * (1.0 / 7.0);
    let c2 = 1.0 / 9.0 + s2 * (1.0 / 11.0);
    let c3 = 1.0 / 13.0 + s2 * (1.0 / 15.0);
    let c4 = 1.0 / 17.0 + s2 * (1.0 / 19.0);
    let d0 = c0 + s4 * c1;
    let d1 = c2 + s4 * c3;
    let p = (d0 + s8 * d1) + (s8 * s8) * c4;
    let ln_v = k + 2.0 * s * p;
    ln_v + (u - (v - 1.0)) / v
}

/// `softplus(z) = ln(1 + e^z)` and `sigmoid(z)` from one exponential,
/// branch-free (see [`log1p_unit`]).
#[inline(always)]
pub(crate) fn softplus_sigmoid(z: f64) -> (f64, f64) {
    let e = crate::mlp::exp_fast(-z.abs());
    let sp = z.max(0.0) + log1p_unit(e);
    let num = if z >= 0.0 { 1.0 } else { e };
    (sp, num / (1.0 + e))
}

/// [`softplus_sigmoid`] per lane (the AVX2 build gives the same numbers).
pub(crate) fn softplus_sigmoid_lanes(z: &Lanes) -> (Lanes, Lanes) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: AVX2 is available on this CPU (checked above).
        return unsafe { x86::softplus_sigmoid(z) };
    }
    let mut sp = [0.0; LANES];
    let mut sg = [0.0; LANES];
    for l in 0..LANES {
        (sp[l], sg[l]) = softplus_sigmoid(z[l]);
    }
    (sp, sg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mlp::{sigmoid, softplus};
    use crate::{Activation, Mlp};

    #[test]
    fn lane_kernels_match_the_one_input_kernels() {
        for (h1, h2) in [(8, 8), (16, 16), (32, 32), (16, 32), (32, 16)] {
            let net = Mlp::new(&[1, h1, h2, 1], Activation::Tanh).unwrap();
            let w = net.init(11, 1.5);
            let np = n_params(h1, h2);
            let xs: Lanes = [-3.0, -0.2, 0.7, 4.0];
            let gy: Lanes = [0.3, -1.1, 2.0, 0.5];
            let mut a = vec![[0.0; LANES]; h1 + h2];
            let mut wl = Vec::new();
            splat_weights(&w, &mut wl);
            let y = forward_lanes(h1, h2, &w, &wl, &xs, &mut a).unwrap();
            let mut d = vec![[0.0; LANES]; h1 + h2];
            let gx = backward_lanes(h1, h2, &w, &wl, &a, &gy, &mut d).unwrap();
            // Two stage records (the same stage twice): weight gradients are twice one stage's.
            let mut rec = vec![xs, gy];
            rec.extend_from_slice(&a);
            rec.extend_from_slice(&d);
            let recs = [rec.clone(), rec].concat();
            let mut gw = vec![[0.0; LANES]; np];
            weight_grads_lanes(h1, h2, &recs, &mut gw).unwrap();
            for l in 0..LANES {
                let mut tape = vec![0.0; h1 + h2];
                let y1 = forward(h1, h2, &w, xs[l], &mut tape).unwrap();
                assert!((y[l] - y1).abs() <= 1e-14 * (1.0 + y1.abs()), "{h1}x{h2} y lane {l}");
                for (i, t) in tape.iter().enumerate() {
                    assert!((a[i][l] - t).abs() <= 1e-15, "{h1}x{h2} activation {i} lane {l}");
                }
                let mut gw1 = vec![0.0; np];
                let gx1 = backward(h1, h2, &w, xs[l], &tape, gy[l], Some(&mut gw1)).unwrap();
                assert!((gx[l] - gx1).abs() <= 1e-13 * (1.0 + gx1.abs()), "{h1}x{h2} gx lane {l}");
                for k in 0..np {
                    let (a, b) = (gw[k][l], 2.0 * gw1[k]);
                    assert!((a - b).abs() <= 1e-13 * (1.0 + b.abs()), "{h1}x{h2} gw[{k}] lane {l}: {a} vs {b}");
                }
            }
        }
        assert!(forward_lanes(4, 4, &[0.0; 64], &[], &[0.0; LANES], &mut [[0.0; LANES]; 8]).is_none());
    }

    /// Every build of the lane kernels (portable, AVX2, AVX-512F forward)
    /// gives the same numbers, bit for bit.
    #[test]
    fn lane_kernel_builds_agree_bitwise() {
        let net = Mlp::new(&[1, 16, 16, 1], Activation::Tanh).unwrap();
        let w = net.init(5, 2.0);
        let x: Lanes = [-7.0, -0.3, 0.05, 2.5];
        let gy: Lanes = [1.0, -0.5, 3.0, 0.25];
        let bits = |v: &[Lanes]| v.iter().flatten().map(|f| f.to_bits()).collect::<Vec<u64>>();
        let mut a0 = vec![[0.0; LANES]; 32];
        let y0 = fwd_lanes_body::<16, 16>(&w, &x, &mut a0);
        let mut wl = Vec::new();
        splat_weights(&w, &mut wl);
        let mut d0 = vec![[0.0; LANES]; 32];
        let g0 = bwd_lanes_body::<16, 16>(&w, &a0, &gy, &mut d0);
        #[cfg(target_arch = "x86_64")]
        if has_avx2() {
            let mut a1 = vec![[0.0; LANES]; 32];
            // SAFETY: AVX2 is available (checked above); the slices are long enough.
            let y1 = unsafe { x86::fwd::<16, 16>(&w, &x, &mut a1) };
            assert_eq!(bits(&[y0]), bits(&[y1]));
            assert_eq!(bits(&a0), bits(&a1));
            let mut d1 = vec![[0.0; LANES]; 32];
            // SAFETY: as above.
            let g1 = unsafe { x86::bwd::<16, 16>(&w, &a0, &gy, &mut d1) };
            assert_eq!(bits(&[g0]), bits(&[g1]));
            assert_eq!(bits(&d0), bits(&d1));
            let (sp, sg) = softplus_sigmoid_lanes(&x);
            for l in 0..LANES {
                assert_eq!((sp[l], sg[l]), softplus_sigmoid(x[l]));
            }
        }
        // Weight gradients over three records (portable build).
        let mut rec = vec![x, gy];
        rec.extend_from_slice(&a0);
        rec.extend_from_slice(&d0);
        let recs = [rec.clone(), rec.iter().map(|v| v.map(|f| 0.5 * f)).collect(), rec].concat();
        let mut gw0 = vec![[0.1; LANES]; n_params(16, 16)];
        wgrad_lanes_body::<16, 16>(&recs, &mut gw0);
        #[cfg(target_arch = "x86_64")]
        if has_avx2() {
            let mut gw1 = vec![[0.1; LANES]; n_params(16, 16)];
            // SAFETY: AVX2 is available (checked above).
            unsafe { wgrad_lanes_avx2::<16, 16>(&recs, &mut gw1) };
            assert_eq!(bits(&gw0), bits(&gw1));
        }
        #[cfg(target_arch = "x86_64")]
        if has_avx512() {
            let mut a2 = vec![[0.0; LANES]; 32];
            // SAFETY: AVX-512F is available (checked above); the slices are long enough.
            let y2 = unsafe { x512::fwd::<16, 16>(&wl, &x, &mut a2) };
            assert_eq!(bits(&[y0]), bits(&[y2]));
            assert_eq!(bits(&a0), bits(&a2));
            let mut d2 = vec![[0.0; LANES]; 32];
            // SAFETY: as above.
            let g2 = unsafe { x512::bwd::<16, 16>(&wl, &a0, &gy, &mut d2) };
            assert_eq!(bits(&[g0]), bits(&[g2]));
            assert_eq!(bits(&d0), bits(&d2));
            let mut gw2 = vec![[0.1; LANES]; n_params(16, 16)];
            // SAFETY: as above.
            unsafe { x512::wgrad::<16, 16>(&recs, &mut gw2) };
            assert_eq!(bits(&gw0), bits(&gw2));
        }
    }

    #[test]
    fn softplus_sigmoid_and_log1p_are_accurate() {
        let mut z = -745.0;
        while z < 745.0 {
            let (sp, sg) = softplus_sigmoid(z);
            let (sp0, sg0) = (softplus(z), sigmoid(z));
            assert!((sp - sp0).abs() <= 1e-15 * sp0.abs() + 1e-300, "softplus({z}): {sp} vs {sp0}");
            assert!((sg - sg0).abs() <= 1e-15 * sg0.abs() + 1e-300, "sigmoid({z}): {sg} vs {sg0}");
            let lanes = softplus_sigmoid_lanes(&[z, -z, 0.5 * z, z + 0.25]);
            for (l, zl) in [z, -z, 0.5 * z, z + 0.25].into_iter().enumerate() {
                let (a, b) = softplus_sigmoid(zl);
                assert_eq!((lanes.0[l].to_bits(), lanes.1[l].to_bits()), (a.to_bits(), b.to_bits()), "lanes at {zl}");
            }
            z += 0.0137;
        }
        let mut worst = 0.0f64;
        for k in 0..=20000 {
            let u = k as f64 / 20000.0;
            for u in [u, u * 1e-9, u * 1e-17] {
                let (a, b) = (log1p_unit(u), u.ln_1p());
                worst = worst.max((a - b).abs() / b.abs().max(1e-300));
            }
        }
        assert!(worst <= 6e-16, "log1p relative error {worst:e}");
    }
}
