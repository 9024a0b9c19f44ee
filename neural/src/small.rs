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

fn has_avx2() -> bool {
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
