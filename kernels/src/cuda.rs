//! CUDA ensemble kernels (feature `cuda`): the algorithms of
//! [`integrate`](crate::integrate()) compiled at run time by NVRTC, one
//! trajectory per GPU thread.
//!
//! The model reaches the GPU as CUDA C ([`BatchModel::cuda_source`]); the
//! kernel source below is the line-by-line twin of `integrate.rs` (same
//! constants, controller, event handling and dense output) and is compiled
//! without FMA contraction, so GPU and CPU agree to round-off.
//!
//! cudarc loads libcuda and libnvrtc dynamically and panics when they are
//! missing, so [`available`] checks for both first: a machine without a GPU
//! gets a clear error, never a panic.

use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaFunction, CudaStream, LaunchConfig, PushKernelArg};
use cudarc::nvrtc::{compile_ptx_with_opts, CompileOptions};

use crate::ensemble::{Batch, GridResult, Summary};
use crate::integrate::{Status, Stepper, Tolerances, TrajectoryStats, MAX_INPUTS};
use crate::model::BatchModel;
use crate::schedule::MAX_TRAINS;

/// Errors of the CUDA path.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CudaError {
    /// No driver library, no NVRTC library, or no device.
    #[error("no usable CUDA GPU: {0}")]
    Unavailable(String),
    /// NVRTC rejected the generated kernel source.
    #[error("NVRTC could not compile the kernel: {0}")]
    Compile(String),
    /// A driver call failed.
    #[error("CUDA driver error: {0}")]
    Driver(String),
    /// The batch does not fit the kernel's limits.
    #[error("{0}")]
    Unsupported(String),
}

fn drv(e: impl std::fmt::Debug) -> CudaError {
    CudaError::Driver(format!("{e:?}"))
}

/// Checks that the CUDA driver and NVRTC libraries load and that a device
/// exists, without letting cudarc panic. Returns the device name.
pub fn available() -> Result<String, CudaError> {
    // SAFETY: these only try to dlopen the libraries and report success.
    let driver = unsafe { cudarc::driver::sys::is_culib_present() };
    if !driver {
        return Err(CudaError::Unavailable("the CUDA driver library (libcuda) is not installed".into()));
    }
    let nvrtc = unsafe { cudarc::nvrtc::sys::is_culib_present() };
    if !nvrtc {
        return Err(CudaError::Unavailable(
            "the NVRTC library (libnvrtc) was not found; add the CUDA toolkit's lib64 folder to LD_LIBRARY_PATH".into(),
        ));
    }
    let n = CudaContext::device_count().map_err(|e| CudaError::Unavailable(format!("{e:?}")))?;
    if n < 1 {
        return Err(CudaError::Unavailable("the driver reports no CUDA device".into()));
    }
    let ctx = CudaContext::new(0).map_err(|e| CudaError::Unavailable(format!("{e:?}")))?;
    ctx.name().map_err(|e| CudaError::Unavailable(format!("{e:?}")))
}

/// Whether libnvrtc loads (compiling needs it; running also needs a device).
///
/// # Safety
/// Only tries to `dlopen` the library; safe to call from any thread.
pub unsafe fn nvrtc_present() -> bool {
    // SAFETY: as documented by cudarc, this only probes the library.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// Compiles the kernels of `model` with NVRTC (no device needed: only
/// libnvrtc), with the options every GPU run uses: no FMA contraction,
/// IEEE division and square root.
pub fn compile_model<const N: usize, M: BatchModel<N>>(model: &M) -> Result<cudarc::nvrtc::Ptx, CudaError> {
    let src = kernel_source(&model.cuda_source().code, N, model.nparams(), model.nderived(), model.ninputs());
    let opts = CompileOptions {
        fmad: Some(false),
        prec_div: Some(true),
        prec_sqrt: Some(true),
        options: vec!["--std=c++17".into()],
        ..Default::default()
    };
    compile_ptx_with_opts(&src, opts).map_err(|e| CudaError::Compile(format!("{e:?}")))
}

/// The kernel source for a model with `n` states, `np` parameters, `nd` derived constants and `nu` inputs.
pub fn kernel_source(model_code: &str, n: usize, np: usize, nd: usize, nu: usize) -> String {
    format!(
        "#define NSTATES {n}\n#define NPARAMS {np}\n#define NDERIVED {nd}\n#define NINPUTS {nu}\n#define MAXTR {MAX_TRAINS}\n#define MAXIN {MAX_INPUTS}\n{model_code}\n{KERNEL}"
    )
}

/// The integrator, twin of `integrate.rs`.
const KERNEL: &str = r#"
#define C2 0.161
#define C3 0.327
#define C4 0.9
#define C5 0.9800255409045097
#define A32 0.335480655492357
#define A42 (-6.359448489975075)
#define A43 4.362295432869581
#define A52 (-11.74888356406283)
#define A53 7.495539342889836
#define A54 (-0.09249506636175525)
#define A62 (-12.92096931784711)
#define A63 8.159367898576159
#define A64 (-0.071584973281401)
#define A65 (-0.02826905039406838)

__constant__ double B_[6] = {0.09646076681806523, 0.01, 0.4798896504144996, 1.379008574103742, -3.290069515436081, 2.324710524099774};
__constant__ double BT_[7] = {-0.001780011052225777, -0.0008164344596567469, 0.007880878010261995, -0.1447110071732629, 0.5823571654525552, -0.45808210592918697, 0.015151515151515152};

#define GAM 0.5
#define RA21 2.0
#define RA31 (48.0 / 25.0)
#define RA32 (6.0 / 25.0)
#define RC21 (-8.0)
#define RC31 (372.0 / 25.0)
#define RC32 (12.0 / 5.0)
#define RC41 (-112.0 / 125.0)
#define RC42 (-54.0 / 125.0)
#define RC43 (-2.0 / 5.0)
__constant__ double RB_[4] = {19.0 / 9.0, 1.0 / 2.0, 25.0 / 108.0, 125.0 / 108.0};
__constant__ double RE_[4] = {17.0 / 54.0, 7.0 / 36.0, 0.0, 125.0 / 108.0};

struct Regimen {
    int nd, nw;
    double ds[MAXTR], di[MAXTR], da[MAXTR], dd[MAXTR];
    unsigned dc[MAXTR]; int dt[MAXTR];
    double ws[MAXTR], wp[MAXTR], wd[MAXTR], wl[MAXTR];
    unsigned wc[MAXTR]; int wi[MAXTR];
    unsigned ns[MAXTR], ne[MAXTR], wo[MAXTR], wcl[MAXTR];
};

__device__ __forceinline__ double next_time(const Regimen& r) {
    double t = __longlong_as_double(0x7ff0000000000000LL);
    for (int i = 0; i < r.nd; ++i) {
        if (r.ns[i] < r.dc[i]) t = fmin(t, r.ds[i] + (double)r.ns[i] * r.di[i]);
        if (r.dd[i] > 0.0 && r.ne[i] < r.ns[i]) t = fmin(t, r.ds[i] + (double)r.ne[i] * r.di[i] + r.dd[i]);
    }
    for (int i = 0; i < r.nw; ++i) {
        if (r.wo[i] < r.wc[i]) t = fmin(t, r.ws[i] + (double)r.wo[i] * r.wp[i]);
        if (r.wcl[i] < r.wo[i]) t = fmin(t, r.ws[i] + (double)r.wcl[i] * r.wp[i] + r.wd[i]);
    }
    return t;
}

__device__ __forceinline__ bool apply(Regimen& r, double t, double* x, double* rate, double* u) {
    bool jumped = false;
    for (int i = 0; i < r.nd; ++i) {
        int tg = r.dt[i];
        while (r.ns[i] < r.dc[i] && r.ds[i] + (double)r.ns[i] * r.di[i] <= t) {
            if (r.dd[i] > 0.0) rate[tg] += r.da[i] / r.dd[i]; else { x[tg] += r.da[i]; jumped = true; }
            r.ns[i] += 1;
        }
        if (r.dd[i] > 0.0) {
            while (r.ne[i] < r.ns[i] && r.ds[i] + (double)r.ne[i] * r.di[i] + r.dd[i] <= t) {
                rate[tg] -= r.da[i] / r.dd[i];
                r.ne[i] += 1;
            }
        }
    }
    // No round-off residue once no infusion into a state runs (over every train into it).
    for (int i = 0; i < r.nd; ++i) {
        if (r.dd[i] > 0.0 && r.ne[i] == r.ns[i]) {
            bool running = false;
            for (int j = 0; j < r.nd; ++j) running = running || (r.dt[j] == r.dt[i] && r.dd[j] > 0.0 && r.ne[j] < r.ns[j]);
            if (!running) rate[r.dt[i]] = 0.0;
        }
    }
    for (int i = 0; i < r.nw; ++i) {
        int k = r.wi[i];
        while (r.wo[i] < r.wc[i] && r.ws[i] + (double)r.wo[i] * r.wp[i] <= t) { u[k] += r.wl[i]; r.wo[i] += 1; }
        while (r.wcl[i] < r.wo[i] && r.ws[i] + (double)r.wcl[i] * r.wp[i] + r.wd[i] <= t) { u[k] -= r.wl[i]; r.wcl[i] += 1; }
    }
    return jumped;
}

__device__ __forceinline__ void evalf(const double* x, const double* p, const double* u, const double* w, const double* rate, bool infusing, double* dx) {
    model_rhs(x, p, u, w, dx);
    if (infusing) for (int i = 0; i < NSTATES; ++i) dx[i] += rate[i];
}

__device__ __forceinline__ double err_norm(const double* e, const double* y0, const double* y1, double rtol, double atol) {
    double s = 0.0;
    for (int i = 0; i < NSTATES; ++i) {
        double sc = atol + rtol * fmax(fabs(y0[i]), fabs(y1[i]));
        double r = e[i] / sc;
        s += r * r;
    }
    return sqrt(s / (double)NSTATES);
}

__device__ __forceinline__ double initial_step(const double* y, const double* f, double rtol, double atol) {
    double d0 = 0.0, d1 = 0.0;
    for (int i = 0; i < NSTATES; ++i) {
        double sc = atol + rtol * fabs(y[i]);
        d0 += (y[i] / sc) * (y[i] / sc);
        d1 += (f[i] / sc) * (f[i] / sc);
    }
    d0 = sqrt(d0 / (double)NSTATES); d1 = sqrt(d1 / (double)NSTATES);
    return (d0 < 1e-5 || d1 < 1e-5) ? 1e-6 : 0.01 * d0 / d1;
}

__device__ bool lu(double* a, int* piv) {
    for (int k = 0; k < NSTATES; ++k) {
        int p = k; double best = fabs(a[k * NSTATES + k]);
        for (int i = k + 1; i < NSTATES; ++i) if (fabs(a[i * NSTATES + k]) > best) { best = fabs(a[i * NSTATES + k]); p = i; }
        if (best == 0.0 || !isfinite(best)) return false;
        piv[k] = p;
        if (p != k) for (int j = 0; j < NSTATES; ++j) { double t = a[p * NSTATES + j]; a[p * NSTATES + j] = a[k * NSTATES + j]; a[k * NSTATES + j] = t; }
        double inv = 1.0 / a[k * NSTATES + k];
        for (int i = k + 1; i < NSTATES; ++i) {
            double l = a[i * NSTATES + k] * inv;
            a[i * NSTATES + k] = l;
            if (l != 0.0) for (int j = k + 1; j < NSTATES; ++j) a[i * NSTATES + j] -= l * a[k * NSTATES + j];
        }
    }
    return true;
}

__device__ void lu_solve(const double* a, const int* piv, double* b) {
    for (int k = 0; k < NSTATES; ++k) { double t = b[k]; b[k] = b[piv[k]]; b[piv[k]] = t; }
    for (int i = 0; i < NSTATES; ++i) { double s = b[i]; for (int j = 0; j < i; ++j) s -= a[i * NSTATES + j] * b[j]; b[i] = s; }
    for (int i = NSTATES - 1; i >= 0; --i) { double s = b[i]; for (int j = i + 1; j < NSTATES; ++j) s -= a[i * NSTATES + j] * b[j]; b[i] = s / a[i * NSTATES + i]; }
}

struct Obs {
    int mode;           // 0: store on the grid (time-major), 1: summary
    double* grid; long long n; long long i;
    double a, b, thr, mx, mn, auc, above, last, tp, yp; bool has_prev;
};

__device__ __forceinline__ void observe(Obs& o, int k, double t, double y) {
    if (o.mode == 0) { o.grid[(long long)k * o.n + o.i] = y; return; }
    o.last = y;
    if (t < o.a || t > o.b) return;
    o.mx = fmax(o.mx, y); o.mn = fmin(o.mn, y);
    if (o.has_prev) {
        double dt = t - o.tp;
        o.auc += 0.5 * dt * (o.yp + y);
        int above = (o.yp > o.thr ? 1 : 0) + (y > o.thr ? 1 : 0);
        o.above += 0.5 * dt * (double)above;
    }
    o.tp = t; o.yp = y; o.has_prev = true;
}

// The stepper is a template parameter: each kernel holds only its own
// method's work arrays (fewer registers, no dead branch).
template <int stepper>
__device__ void run(long long i, long long n, const double* P, const double* X0, const double* DTR, int nds, const double* WTR, int nws,
                    const double* times, int nt, double t_end, double rtol, double atol, unsigned max_steps,
                    const double* w, Obs& ob, int* status, unsigned* steps_out, unsigned* rej_out) {
    double raw[NPARAMS > 0 ? NPARAMS : 1], p[NDERIVED > 0 ? NDERIVED : 1];
    for (int j = 0; j < NPARAMS; ++j) raw[j] = P[(long long)j * n + i];
    model_prepare(raw, p);
    double x[NSTATES], rate[NSTATES], u[MAXIN];
    for (int s = 0; s < NSTATES; ++s) { x[s] = X0[(long long)s * n + i]; rate[s] = 0.0; }
    for (int s = 0; s < MAXIN; ++s) u[s] = 0.0;
    Regimen r;
    r.nd = 0; r.nw = 0;
    for (int s = 0; s < nds; ++s) {
        double cnt = DTR[((long long)s * 6 + 2) * n + i];
        if (cnt <= 0.0) continue;
        int k = r.nd++;
        r.ds[k] = DTR[((long long)s * 6 + 0) * n + i]; r.di[k] = DTR[((long long)s * 6 + 1) * n + i];
        r.dc[k] = (unsigned)cnt; r.da[k] = DTR[((long long)s * 6 + 3) * n + i];
        r.dt[k] = (int)DTR[((long long)s * 6 + 4) * n + i]; r.dd[k] = DTR[((long long)s * 6 + 5) * n + i];
        r.ns[k] = 0; r.ne[k] = 0;
    }
    for (int s = 0; s < nws; ++s) {
        double cnt = WTR[((long long)s * 6 + 2) * n + i];
        if (cnt <= 0.0) continue;
        int k = r.nw++;
        r.ws[k] = WTR[((long long)s * 6 + 0) * n + i]; r.wp[k] = WTR[((long long)s * 6 + 1) * n + i];
        r.wc[k] = (unsigned)cnt; r.wd[k] = WTR[((long long)s * 6 + 3) * n + i];
        r.wl[k] = WTR[((long long)s * 6 + 4) * n + i]; r.wi[k] = (int)WTR[((long long)s * 6 + 5) * n + i];
        r.wo[k] = 0; r.wcl[k] = 0;
    }
    unsigned nsteps = 0, nrej = 0;
    int st = 0;
    double t = 0.0;
    int gi = 0;
    apply(r, t, x, rate, u);
    bool infusing = false;
    for (int q = 0; q < NSTATES; ++q) infusing = infusing || rate[q] != 0.0;
    while (gi < nt && times[gi] <= t) { observe(ob, gi, times[gi], model_output(x, p, w)); gi++; }
    double f0[NSTATES];
    evalf(x, p, u, w, rate, infusing, f0);
    double h = initial_step(x, f0, rtol, atol);
    double k[stepper == 0 ? 7 : 3][NSTATES], y[NSTATES], ynew[NSTATES], e[NSTATES], fnew[NSTATES];
    double jac[stepper == 0 ? 1 : NSTATES * NSTATES], g[stepper == 0 ? 1 : 4][NSTATES];
    int piv[stepper == 0 ? 1 : NSTATES];
    double h_post_jump = 0.0;
    bool first_after_jump = false;
    for (;;) {
        double t_seg = fmin(next_time(r), t_end);
        while (t < t_seg) {
            if (nsteps + nrej >= max_steps) { st = 1; goto done; }
            bool last = t + h >= t_seg;
            double hs = last ? t_seg - t : h;
            if (hs <= 1e-14 * fmax(fabs(t), 1.0) && !last) { st = 2; goto done; }
            double err;
            if constexpr (stepper == 0) {
                for (int q = 0; q < NSTATES; ++q) k[0][q] = f0[q];
                for (int q = 0; q < NSTATES; ++q) y[q] = x[q] + hs * C2 * k[0][q];
                evalf(y, p, u, w, rate, infusing, k[1]);
                for (int q = 0; q < NSTATES; ++q) y[q] = x[q] + hs * ((C3 - A32) * k[0][q] + A32 * k[1][q]);
                evalf(y, p, u, w, rate, infusing, k[2]);
                for (int q = 0; q < NSTATES; ++q) y[q] = x[q] + hs * ((C4 - A42 - A43) * k[0][q] + A42 * k[1][q] + A43 * k[2][q]);
                evalf(y, p, u, w, rate, infusing, k[3]);
                for (int q = 0; q < NSTATES; ++q) y[q] = x[q] + hs * ((C5 - A52 - A53 - A54) * k[0][q] + A52 * k[1][q] + A53 * k[2][q] + A54 * k[3][q]);
                evalf(y, p, u, w, rate, infusing, k[4]);
                for (int q = 0; q < NSTATES; ++q) y[q] = x[q] + hs * ((1.0 - A62 - A63 - A64 - A65) * k[0][q] + A62 * k[1][q] + A63 * k[2][q] + A64 * k[3][q] + A65 * k[4][q]);
                evalf(y, p, u, w, rate, infusing, k[5]);
                for (int q = 0; q < NSTATES; ++q)
                    ynew[q] = x[q] + hs * (B_[0] * k[0][q] + B_[1] * k[1][q] + B_[2] * k[2][q] + B_[3] * k[3][q] + B_[4] * k[4][q] + B_[5] * k[5][q]);
                evalf(ynew, p, u, w, rate, infusing, k[6]);
                for (int q = 0; q < NSTATES; ++q) {
                    double s = 0.0;
                    for (int j = 0; j < 7; ++j) s += BT_[j] * k[j][q];
                    e[q] = hs * s;
                }
                for (int q = 0; q < NSTATES; ++q) fnew[q] = k[6][q];
                err = err_norm(e, x, ynew, rtol, atol);
            } else {
                model_jac(x, p, u, w, jac);
                double d = 1.0 / (GAM * hs);
                for (int a = 0; a < NSTATES; ++a) {
                    for (int b = 0; b < NSTATES; ++b) jac[a * NSTATES + b] = -jac[a * NSTATES + b];
                    jac[a * NSTATES + a] += d;
                }
                if (!lu(jac, piv)) { st = 4; goto done; }
                for (int q = 0; q < NSTATES; ++q) g[0][q] = f0[q];
                lu_solve(jac, piv, g[0]);
                for (int q = 0; q < NSTATES; ++q) y[q] = x[q] + RA21 * g[0][q];
                evalf(y, p, u, w, rate, infusing, k[1]);
                for (int q = 0; q < NSTATES; ++q) g[1][q] = k[1][q] + RC21 * g[0][q] / hs;
                lu_solve(jac, piv, g[1]);
                for (int q = 0; q < NSTATES; ++q) y[q] = x[q] + RA31 * g[0][q] + RA32 * g[1][q];
                evalf(y, p, u, w, rate, infusing, k[2]);
                for (int q = 0; q < NSTATES; ++q) g[2][q] = k[2][q] + (RC31 * g[0][q] + RC32 * g[1][q]) / hs;
                lu_solve(jac, piv, g[2]);
                for (int q = 0; q < NSTATES; ++q) g[3][q] = k[2][q] + (RC41 * g[0][q] + RC42 * g[1][q] + RC43 * g[2][q]) / hs;
                lu_solve(jac, piv, g[3]);
                for (int q = 0; q < NSTATES; ++q) {
                    ynew[q] = x[q] + RB_[0] * g[0][q] + RB_[1] * g[1][q] + RB_[2] * g[2][q] + RB_[3] * g[3][q];
                    e[q] = RE_[0] * g[0][q] + RE_[1] * g[1][q] + RE_[2] * g[2][q] + RE_[3] * g[3][q];
                }
                err = err_norm(e, x, ynew, rtol, atol);
                if (err <= 1.0) evalf(ynew, p, u, w, rate, infusing, fnew);
            }
            bool finite = isfinite(err);
            for (int q = 0; q < NSTATES; ++q) finite = finite && isfinite(ynew[q]);
            if (!finite) {
                if (hs <= 1e-14 * fmax(fabs(t), 1.0)) { st = 3; goto done; }
                h = 0.25 * hs; nrej++; continue;
            }
            if (err > 1.0) { h = hs * fmax(0.9 * (1.0 / sqrt(sqrt(err))), 0.2); nrej++; continue; }
            double t_new = last ? t_seg : t + hs;
            while (gi < nt && times[gi] <= t_new && times[gi] < t_seg) {
                double th = (times[gi] - t) / hs;
                double xo[NSTATES];
                if constexpr (stepper == 0) {
                    double t2 = th * th, t3 = t2 * th, t4 = t3 * th;
                    double bd[7] = {
                        -1.05308849772902 * t4 + 2.91325546182191 * t3 - 2.76370619727483 * t2 + th,
                        0.1017 * t4 - 0.2234 * t3 + 0.1317 * t2,
                        2.49062728565125 * t4 - 5.9410338721315 * t3 + 3.93029623689475 * t2,
                        -16.5481028892449 * t4 + 30.3381886302823 * t3 - 12.4110771669337 * t2,
                        47.3795219628193 * t4 - 88.1789048947664 * t3 + 37.509313416511 * t2,
                        -34.8706578614966 * t4 + 65.0918946747937 * t3 - 27.8965262891973 * t2,
                        2.5 * t4 - 4.0 * t3 + 1.5 * t2 };
                    for (int q = 0; q < NSTATES; ++q) {
                        double s = 0.0;
                        for (int j = 0; j < 7; ++j) s += bd[j] * k[j][q];
                        xo[q] = x[q] + hs * s;
                    }
                } else {
                    double h00 = (1.0 + 2.0 * th) * (1.0 - th) * (1.0 - th), h10 = th * (1.0 - th) * (1.0 - th);
                    double h01 = th * th * (3.0 - 2.0 * th), h11 = th * th * (th - 1.0);
                    for (int q = 0; q < NSTATES; ++q) xo[q] = h00 * x[q] + h10 * hs * f0[q] + h01 * ynew[q] + h11 * hs * fnew[q];
                }
                observe(ob, gi, times[gi], model_output(xo, p, w));
                gi++;
            }
            for (int q = 0; q < NSTATES; ++q) { x[q] = ynew[q]; f0[q] = fnew[q]; }
            t = t_new;
            nsteps++;
            double grow = fmin(fmax(0.9 * (1.0 / sqrt(sqrt(fmax(err, 1e-10)))), 0.2), 5.0);
            if (!last) h = hs * grow; else h = fmin(fmax(h, hs * grow), h * 5.0);
            if (first_after_jump) { h_post_jump = h; first_after_jump = false; }
        }
        if (t >= t_end) break;
        bool jumped = apply(r, t, x, rate, u);
        infusing = false;
        for (int q = 0; q < NSTATES; ++q) infusing = infusing || rate[q] != 0.0;
        evalf(x, p, u, w, rate, infusing, f0);
        if (jumped) { h = fmin(h, fmax(initial_step(x, f0, rtol, atol), h_post_jump)); first_after_jump = true; }
        while (gi < nt && times[gi] <= t) { observe(ob, gi, times[gi], model_output(x, p, w)); gi++; }
    }
    apply(r, t, x, rate, u);
    while (gi < nt && times[gi] <= t_end) { observe(ob, gi, times[gi], model_output(x, p, w)); gi++; }
done:
    status[i] = st; steps_out[i] = nsteps; rej_out[i] = nrej;
}

#define GRID_ARGS long long n, const double* P, const double* X0, const double* DTR, int nds, const double* WTR, int nws, \
        const double* times, int nt, double t_end, double rtol, double atol, unsigned max_steps, const double* w
#define GRID_BODY(S) \
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; \
    if (i >= n) return; \
    Obs ob; ob.mode = 0; ob.grid = out; ob.n = n; ob.i = i; ob.has_prev = false; \
    run<S>(i, n, P, X0, DTR, nds, WTR, nws, times, nt, t_end, rtol, atol, max_steps, w, ob, status, steps, rej);
#define SUMMARY_BODY(S) \
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; \
    if (i >= n) return; \
    Obs ob; ob.mode = 1; ob.grid = 0; ob.n = n; ob.i = i; ob.a = wa; ob.b = wb; ob.thr = thr; \
    ob.mx = -__longlong_as_double(0x7ff0000000000000LL); ob.mn = __longlong_as_double(0x7ff0000000000000LL); \
    ob.auc = 0.0; ob.above = 0.0; ob.last = __longlong_as_double(0x7ff8000000000000LL); ob.has_prev = false; \
    run<S>(i, n, P, X0, DTR, nds, WTR, nws, times, nt, t_end, rtol, atol, max_steps, w, ob, status, steps, rej); \
    out[0 * n + i] = ob.mx; out[1 * n + i] = ob.mn; out[2 * n + i] = ob.auc; out[3 * n + i] = ob.above; out[4 * n + i] = ob.last;

extern "C" __global__ void integrate_grid_tsit5(GRID_ARGS, double* out, int* status, unsigned* steps, unsigned* rej) { GRID_BODY(0) }
extern "C" __global__ void integrate_grid_rosenbrock(GRID_ARGS, double* out, int* status, unsigned* steps, unsigned* rej) { GRID_BODY(1) }
extern "C" __global__ void integrate_summary_tsit5(GRID_ARGS, double wa, double wb, double thr, double* out, int* status, unsigned* steps, unsigned* rej) { SUMMARY_BODY(0) }
extern "C" __global__ void integrate_summary_rosenbrock(GRID_ARGS, double wa, double wb, double thr, double* out, int* status, unsigned* steps, unsigned* rej) { SUMMARY_BODY(1) }
"#;

/// A compiled ensemble kernel for one model on one GPU.
pub struct GpuEnsemble {
    stream: Arc<CudaStream>,
    /// Grid kernels, indexed by stepper (Tsit5, Rosenbrock).
    grid_fn: [CudaFunction; 2],
    /// Summary kernels, indexed by stepper.
    summary_fn: [CudaFunction; 2],
    /// Device name.
    pub device: String,
    /// Seconds NVRTC took to compile the kernel.
    pub compile_s: f64,
}

/// Timing of one GPU launch (host↔device copies included).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GpuTiming {
    /// Wall seconds of uploads, kernel and download.
    pub total_s: f64,
    /// Wall seconds of the kernel alone (synchronised).
    pub kernel_s: f64,
}

struct Uploaded {
    p: cudarc::driver::CudaSlice<f64>,
    x0: cudarc::driver::CudaSlice<f64>,
    dtr: cudarc::driver::CudaSlice<f64>,
    wtr: cudarc::driver::CudaSlice<f64>,
    times: cudarc::driver::CudaSlice<f64>,
    w: cudarc::driver::CudaSlice<f64>,
    nds: i32,
    nws: i32,
}

impl GpuEnsemble {
    /// Compiles the kernel for `model` with NVRTC on device 0.
    pub fn new<const N: usize, M: BatchModel<N>>(model: &M) -> Result<Self, CudaError> {
        let device = available()?;
        if N > 32 {
            return Err(CudaError::Unsupported(format!("models up to 32 states run on the GPU; this one has {N}")));
        }
        let t0 = std::time::Instant::now();
        let ptx = compile_model(model)?;
        let compile_s = t0.elapsed().as_secs_f64();
        let ctx = CudaContext::new(0).map_err(drv)?;
        let module = ctx.load_module(ptx).map_err(drv)?;
        let load = |name: &str| module.load_function(name).map_err(drv);
        let grid_fn = [load("integrate_grid_tsit5")?, load("integrate_grid_rosenbrock")?];
        let summary_fn = [load("integrate_summary_tsit5")?, load("integrate_summary_rosenbrock")?];
        Ok(GpuEnsemble { stream: ctx.default_stream(), grid_fn, summary_fn, device, compile_s })
    }

    fn upload<const N: usize, M: BatchModel<N>>(
        &self,
        model: &M,
        batch: &Batch<N>,
        times: &[f64],
    ) -> Result<Uploaded, CudaError> {
        let n = batch.n;
        let nds = batch.regimens.iter().map(|r| r.n_doses).max().unwrap_or(0).max(1);
        let nws = batch.regimens.iter().map(|r| r.n_windows).max().unwrap_or(0).max(1);
        let mut dtr = vec![0.0; nds * 6 * n];
        let mut wtr = vec![0.0; nws * 6 * n];
        for (i, r) in batch.regimens.iter().enumerate() {
            for (s, d) in r.doses[..r.n_doses].iter().enumerate() {
                for (f, v) in
                    [d.start, d.interval, d.count as f64, d.amount, d.target as f64, d.duration].iter().enumerate()
                {
                    dtr[(s * 6 + f) * n + i] = *v;
                }
            }
            for (s, w) in r.windows[..r.n_windows].iter().enumerate() {
                for (f, v) in
                    [w.start, w.period, w.count as f64, w.duration, w.level, w.input as f64].iter().enumerate()
                {
                    wtr[(s * 6 + f) * n + i] = *v;
                }
            }
        }
        let s = &self.stream;
        let w = model.weights();
        let w_host: Vec<f64> = if w.is_empty() { vec![0.0] } else { w.to_vec() };
        let times_host: Vec<f64> = if times.is_empty() { vec![0.0] } else { times.to_vec() };
        Ok(Uploaded {
            p: s.clone_htod(&batch.params).map_err(drv)?,
            x0: s.clone_htod(&batch.x0).map_err(drv)?,
            dtr: s.clone_htod(&dtr).map_err(drv)?,
            wtr: s.clone_htod(&wtr).map_err(drv)?,
            times: s.clone_htod(&times_host).map_err(drv)?,
            w: s.clone_htod(&w_host).map_err(drv)?,
            nds: nds as i32,
            nws: nws as i32,
        })
    }

    fn config(n: usize) -> LaunchConfig {
        let block = 128u32;
        LaunchConfig {
            grid_dim: (n.div_ceil(block as usize) as u32, 1, 1),
            block_dim: (block, 1, 1),
            shared_mem_bytes: 0,
        }
    }

    fn stats(status: &[i32], steps: &[u32], rej: &[u32]) -> Vec<TrajectoryStats> {
        status
            .iter()
            .zip(steps)
            .zip(rej)
            .map(|((&s, &a), &r)| TrajectoryStats {
                steps: a,
                rejected: r,
                status: match s {
                    0 => Status::Ok,
                    1 => Status::MaxSteps,
                    2 => Status::StepTooSmall,
                    3 => Status::NonFinite,
                    _ => Status::Singular,
                },
            })
            .collect()
    }

    /// Uploads the batch, launches `f` (a grid or a summary kernel, whose
    /// argument lists differ only by the summary window `extra`), and brings
    /// back `out_len` outputs and the per-trajectory counters.
    #[allow(clippy::too_many_arguments)]
    fn run_kernel<const N: usize, M: BatchModel<N>>(
        &self,
        f: &CudaFunction,
        model: &M,
        batch: &Batch<N>,
        times: &[f64],
        t_end: f64,
        tol: &Tolerances,
        extra: Option<(f64, f64, f64)>,
        out_len: usize,
    ) -> Result<(Vec<f64>, Vec<TrajectoryStats>, f64), CudaError> {
        let n = batch.n;
        let up = self.upload(model, batch, times)?;
        let s = &self.stream;
        let mut out = s.alloc_zeros::<f64>(out_len.max(1)).map_err(drv)?;
        let mut status = s.alloc_zeros::<i32>(n.max(1)).map_err(drv)?;
        let mut steps = s.alloc_zeros::<u32>(n.max(1)).map_err(drv)?;
        let mut rej = s.alloc_zeros::<u32>(n.max(1)).map_err(drv)?;
        let (nl, nt) = (n as i64, times.len() as i32);
        let (wa, wb, thr) = extra.unwrap_or((0.0, 0.0, 0.0));
        s.synchronize().map_err(drv)?;
        let tk = std::time::Instant::now();
        let mut b = s.launch_builder(f);
        b.arg(&nl).arg(&up.p).arg(&up.x0).arg(&up.dtr).arg(&up.nds).arg(&up.wtr).arg(&up.nws);
        b.arg(&up.times).arg(&nt).arg(&t_end).arg(&tol.rtol).arg(&tol.atol).arg(&tol.max_steps).arg(&up.w);
        if extra.is_some() {
            b.arg(&wa).arg(&wb).arg(&thr);
        }
        b.arg(&mut out).arg(&mut status).arg(&mut steps).arg(&mut rej);
        // SAFETY: the argument list matches the signature of `integrate_grid_*`
        // (no `extra`) or `integrate_summary_*` (with the window), and every
        // buffer holds at least the `n` or `out_len` elements the kernel indexes.
        unsafe { b.launch(Self::config(n)) }.map_err(drv)?;
        s.synchronize().map_err(drv)?;
        let kernel_s = tk.elapsed().as_secs_f64();
        let o: Vec<f64> = s.clone_dtoh(&out).map_err(drv)?;
        let status: Vec<i32> = s.clone_dtoh(&status).map_err(drv)?;
        let steps: Vec<u32> = s.clone_dtoh(&steps).map_err(drv)?;
        let rej: Vec<u32> = s.clone_dtoh(&rej).map_err(drv)?;
        Ok((o, Self::stats(&status[..n], &steps[..n], &rej[..n]), kernel_s))
    }

    /// Like [`solve_grid`](crate::solve_grid) on the GPU; values come back
    /// trajectory-major like the CPU twin's.
    #[allow(clippy::too_many_arguments)]
    pub fn solve_grid<const N: usize, M: BatchModel<N>>(
        &self,
        model: &M,
        stepper: Stepper,
        batch: &Batch<N>,
        times: &[f64],
        t_end: f64,
        tol: &Tolerances,
    ) -> Result<(GridResult, GpuTiming), CudaError> {
        let t0 = std::time::Instant::now();
        let (n, ntimes) = (batch.n, times.len());
        let f = &self.grid_fn[stepper_code(stepper)];
        let (tm, stats, kernel_s) = self.run_kernel(f, model, batch, times, t_end, tol, None, n * ntimes)?;
        // Time-major (coalesced on the device) to trajectory-major.
        let mut values = vec![0.0; n * ntimes];
        for k in 0..ntimes {
            for i in 0..n {
                values[i * ntimes + k] = tm[k * n + i];
            }
        }
        let total_s = t0.elapsed().as_secs_f64();
        Ok((GridResult { values, stats }, GpuTiming { total_s, kernel_s }))
    }

    /// Like [`solve_summaries`](crate::solve_summaries) on the GPU: the
    /// summaries are reduced on the device, so only five numbers per
    /// trajectory come back.
    #[allow(clippy::too_many_arguments)]
    pub fn solve_summaries<const N: usize, M: BatchModel<N>>(
        &self,
        model: &M,
        stepper: Stepper,
        batch: &Batch<N>,
        times: &[f64],
        t_end: f64,
        tol: &Tolerances,
        window: (f64, f64),
        threshold: f64,
    ) -> Result<(Vec<Summary>, Vec<TrajectoryStats>, GpuTiming), CudaError> {
        let t0 = std::time::Instant::now();
        let n = batch.n;
        let f = &self.summary_fn[stepper_code(stepper)];
        let extra = Some((window.0, window.1, threshold));
        let (o, stats, kernel_s) = self.run_kernel(f, model, batch, times, t_end, tol, extra, 5 * n)?;
        let sums = (0..n)
            .map(|i| Summary {
                max: o[i],
                min: o[n + i],
                auc: o[2 * n + i],
                time_above: o[3 * n + i],
                last: o[4 * n + i],
            })
            .collect();
        let total_s = t0.elapsed().as_secs_f64();
        Ok((sums, stats, GpuTiming { total_s, kernel_s }))
    }
}

fn stepper_code(s: Stepper) -> usize {
    match s {
        Stepper::Tsit5 => 0,
        Stepper::Rosenbrock => 1,
    }
}
