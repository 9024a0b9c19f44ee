#!/usr/bin/env python3
"""P3 (4096-state Mueller-Brown master equation under the ligand well) with
SciPy's stiff integrators against `insilico bench p3`, in the same run
(issue 14). Run from the repository root after building the binary:

    cargo build --release --bin insilico
    /tmp/dtvenv/bin/python scripts/p3_scipy.py [OUT] [--expm]

Runs `insilico bench p3 --out OUT --repeats 3` (the exact reference is cached
in OUT after the first run), then SciPy's BDF with the sparse Jacobian and
LSODA with the banded Jacobian (bandwidth 64) at the same tolerances (rtol
1e-8, atol 1e-12), and SciPy's `expm_multiply` (the counterpart of the
Rust shift-and-invert Krylov propagator), each timed as the minimum of 3
solves, and prints each one's wall time, its largest basin-population error
against the spectral reference, and the ratio of SciPy's best to each Rust
solve (BDF and Krylov).
"""
import json
import os
import subprocess
import sys
import time

import numpy as np
import scipy.sparse as sp
from scipy.integrate import solve_ivp
from scipy.sparse.linalg import expm_multiply

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from perturb_speed import landscape  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
KT, DEPTH = 20.0, 30.0


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    out = args[0] if args else "/tmp/p3-bench"
    exe = os.path.join(ROOT, "target", "release", "insilico")
    subprocess.run([exe, "bench", "p3", "--out", out, "--repeats", "3"], check=True, capture_output=True)
    bench = json.load(open(os.path.join(out, "bench.json")))
    times = np.array(bench["times"])
    ref = np.array(bench["reference_populations"])
    nx = 64
    V, basin, src, dst, pref = landscape(nx, nx)
    hx, hy = 2.7 / nx, 2.2 / nx
    ix, iy = np.meshgrid(np.arange(nx), np.arange(nx))
    x = (-1.5 + (ix + 0.5) * hx).ravel()
    y = (-0.2 + (iy + 0.5) * hy).ravel()
    well = -np.exp(-((x + 0.05) ** 2 + (y - 0.467) ** 2) / (2 * 0.1**2))
    G = V + DEPTH * well
    n = V.size
    rate = pref * np.exp(-(G[dst] - G[src]) / (2 * KT))
    Q = sp.csr_matrix((rate, (src, dst)), shape=(n, n))
    Q = Q - sp.diags(np.asarray(Q.sum(axis=1)).ravel())
    A = Q.T.tocsr()  # dp/dt = A p
    p0 = np.exp(-(V - V.min()) / KT)
    p0 /= p0.sum()

    def f(t, p):
        return A @ p

    # banded storage for LSODA: lband = uband = nx
    Ad = A.toarray()
    band = np.zeros((2 * nx + 1, n))
    for k in range(-nx, nx + 1):
        d = np.diagonal(Ad, offset=k)
        if k >= 0:
            band[nx - k, k:] = d
        else:
            band[nx - k, : n + k] = d

    runs = {
        "BDF, sparse Jacobian": dict(method="BDF", jac=A),
        "LSODA, banded Jacobian": dict(method="LSODA", jac=lambda t, p: band, lband=nx, uband=nx),
    }
    rust = bench["wall_s"]
    kry = bench["krylov"]
    print(f"insilico bench p3: BDF {rust:.4f} s (min of 3), max |pop - exact| {bench['max_abs_err_vs_reference']:.2e}")
    print(f"insilico bench p3: shift-and-invert Krylov {kry['wall_s']:.4f} s (min of 3), "
          f"max |pop - exact| {kry['max_abs_err_vs_reference']:.2e}")
    scipy_best = np.inf
    for name, kw in runs.items():
        best, err = np.inf, np.nan
        for _ in range(3):
            t0 = time.perf_counter()
            sol = solve_ivp(f, (0.0, times[-1]), p0, t_eval=times, rtol=1e-8, atol=1e-12, **kw)
            best = min(best, time.perf_counter() - t0)
        pops = np.array([[sol.y[basin == b, k].sum() for b in range(3)] for k in range(len(times))])
        err = np.abs(pops - ref).max()
        print(f"SciPy {name}: {best:.3f} s (min of 3), max |pop - exact| {err:.2e}, nfev {sol.nfev}, "
              f"njev {sol.njev} -> ratio SciPy/Rust BDF {best / rust:.1f}")
        scipy_best = min(scipy_best, best)
    # SciPy's own matrix-exponential action (Al-Mohy & Higham), the SciPy
    # counterpart of the Krylov propagator: exp(t A) p0 at the output times.
    # Its cost grows with the norm of t*A (about 1e6 at t = 10 here): it did
    # not finish in 14 CPU minutes on this machine, so it runs only on request.
    if "--expm" not in sys.argv:
        print(f"ratio SciPy's best / insilico: BDF {scipy_best / rust:.1f}x, Krylov {scipy_best / kry['wall_s']:.1f}x")
        return
    best = np.inf
    for _ in range(3):
        t0 = time.perf_counter()
        P = np.array([expm_multiply(A * t, p0) for t in times])
        best = min(best, time.perf_counter() - t0)
    pops = np.array([[P[k, basin == b].sum() for b in range(3)] for k in range(len(times))])
    err = np.abs(pops - ref).max()
    print(f"SciPy expm_multiply: {best:.3f} s (min of 3), max |pop - exact| {err:.2e}")
    scipy_best = min(scipy_best, best)
    print(f"ratio SciPy's best / insilico: BDF {scipy_best / rust:.1f}x, Krylov {scipy_best / kry['wall_s']:.1f}x")


if __name__ == "__main__":
    main()
