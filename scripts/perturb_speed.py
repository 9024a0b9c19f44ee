#!/usr/bin/env python3
"""Speed and agreement of the Rust Markov analysis against SciPy, same run
(issue 14). Needs numpy and scipy (e.g. the venv of deeptime_reference.py)
and the Rust example built:

    cargo build --release --example perturb_scale
    /tmp/dtvenv/bin/python scripts/perturb_speed.py study [N_RUST] [N_SCIPY]
    /tmp/dtvenv/bin/python scripts/perturb_speed.py big [NX]

`study`: the 1,000-point P3-landscape perturbation study of
examples/perturb_scale.rs (Rust: all N_RUST points, default 1000; SciPy:
the first N_SCIPY, default 50, same computation: grounded sparse LU for
the stationary distribution, eigsh shift-invert for the 5 slowest
timescales of the symmetrised generator, spsolve for the MFPT A -> C).
Prints the per-point wall time of each (both on all threads the machine
gives them) and the largest differences on the common points.

`big`: the NX x NX landscape (default 316, ~1e5 states): stationary
distribution, 5 slowest timescales, MFPT A -> C in Rust and SciPy, wall
time and peak memory (ru_maxrss of each process), and the timescales
checked against SciPy's shift-invert eigsh.
"""
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as sla

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
EXE = os.path.join(ROOT, "target", "release", "examples", "perturb_scale")
KT0 = 20.0


def mueller_brown(x, y):
    A = [-200.0, -100.0, -170.0, 15.0]
    a = [-1.0, -1.0, -6.5, 0.7]
    b = [0.0, 0.0, 11.0, 0.6]
    c = [-10.0, -10.0, -6.5, 0.7]
    x0 = [1.0, 0.0, -0.5, -1.0]
    y0 = [0.0, 0.5, 1.5, 1.0]
    return sum(A[k] * np.exp(a[k] * (x - x0[k]) ** 2 + b[k] * (x - x0[k]) * (y - y0[k]) + c[k] * (y - y0[k]) ** 2)
               for k in range(4))


def landscape(nx, ny):
    hx, hy = 2.7 / nx, 2.2 / ny
    ix, iy = np.meshgrid(np.arange(nx), np.arange(ny))  # index iy*nx + ix
    x = (-1.5 + (ix + 0.5) * hx).ravel()
    y = (-0.2 + (iy + 0.5) * hy).ravel()
    V = mueller_brown(x, y)
    basin = np.where((x < -0.25) & (y > 1.0), 0, np.where((x > 0.3) & (y < 0.5), 2, 1))
    i = np.arange(nx * ny).reshape(ny, nx)
    src = np.concatenate([i[:, :-1].ravel(), i[:-1, :].ravel()])
    dst = np.concatenate([i[:, 1:].ravel(), i[1:, :].ravel()])
    pref = np.concatenate([np.full(ny * (nx - 1), 1.0 / hx**2), np.full((ny - 1) * nx, 1.0 / hy**2)])
    # both directions
    return V, basin, np.concatenate([src, dst]), np.concatenate([dst, src]), np.concatenate([pref, pref])


def point(pid):
    L = 10 ** (-2.0 + 3.0 * (pid // 100) / 9.0)
    m = (pid // 10) % 10
    kt = 18.0 + 4.0 * (pid % 10) / 9.0
    return L, m, kt


def free_energy(V, basin, L, m, kt):
    kd = np.array([1.0, 10.0, np.inf])[basin]
    G = V - kt * np.log1p(L / kd)
    b, amount = m % 3, 0.5 + 1.5 * m / 9.0
    return G + np.where(basin == b, amount * KT0, 0.0)


def analyse(V, basin, src, dst, pref, G, kt):
    n = V.size
    rate = pref * np.exp(-(G[dst] - G[src]) / (2 * kt))
    K = sp.csr_matrix((rate, (src, dst)), shape=(n, n))
    exit_ = np.asarray(K.sum(axis=1)).ravel()
    K = (K - sp.diags(exit_)).tocsr()
    # stationary: grounded at state 0 (pi_0 = 1), then normalised
    KT = K.T.tocsc()
    A = KT[1:, 1:]
    rhs = -np.asarray(KT[1:, 0].todense()).ravel()
    pi = np.concatenate([[1.0], sla.spsolve(A.tocsc(), rhs)])
    pi /= pi.sum()
    pops = [pi[basin == b].sum() for b in range(3)]
    # 5 slowest timescales: symmetrised generator, shift-invert near 0
    Ssym = sp.csr_matrix((pref, (src, dst)), shape=(n, n)) - sp.diags(exit_)
    sigma = 1e-8 * exit_.max()
    vals = sla.eigsh(Ssym.tocsc(), k=6, sigma=sigma, which="LM", return_eigenvectors=False)
    vals = np.sort(vals)[::-1][1:6]
    its = list(-1.0 / vals)
    # MFPT A -> C
    free = basin != 2
    Kff = K[free][:, free].tocsc()
    m = np.zeros(n)
    m[free] = sla.spsolve(Kff, -np.ones(free.sum()))
    a = basin == 0
    mfpt = float((pi[a] * m[a]).sum() / pi[a].sum())
    return pops + its + [mfpt], pi


def run_rust(*args):
    if not os.path.exists(EXE):
        sys.exit(f"build the example first: cargo build --release --example perturb_scale ({EXE} missing)")
    t0 = time.perf_counter()
    out = subprocess.run([EXE, *map(str, args)], check=True, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    ru = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0
    return json.loads(out.stdout), wall, ru


def study(n_rust, n_scipy):
    rust, wall, _ = run_rust("study", n_rust)
    V, basin, src, dst, pref = landscape(64, 64)
    t0 = time.perf_counter()
    rows = []
    for pid in range(n_scipy):
        L, m, kt = point(pid)
        rows.append(analyse(V, basin, src, dst, pref, free_energy(V, basin, L, m, kt), kt)[0])
    t_scipy = (time.perf_counter() - t0) / n_scipy
    R = np.array(rust["rows"][:n_scipy])
    S = np.array(rows)
    err_pop = np.abs(R[:, :3] - S[:, :3]).max()
    err_its = (np.abs(R[:, 3:8] - S[:, 3:8]) / S[:, 3:8]).max()
    err_mfpt = (np.abs(R[:, 8] - S[:, 8]) / S[:, 8]).max()
    t_rust = rust["per_point_s"]
    print(f"P3 perturbation study, {rust['states']} states, Rust {rust['points']} points on {rust['threads']} threads "
          f"(wall {rust['wall_s']:.2f} s, process {wall:.2f} s, peak RSS {rust['peak_rss_mib']:.0f} MiB)")
    print(f"  per point: Rust {t_rust * 1e3:.1f} ms (wall / points), SciPy {t_scipy * 1e3:.1f} ms "
          f"(first {n_scipy} points, one process) -> ratio SciPy/Rust {t_scipy / t_rust:.2f}")
    print(f"  agreement on the common points: populations {err_pop:.2e} abs, its {err_its:.2e} rel, "
          f"mfpt {err_mfpt:.2e} rel")


def big(nx):
    rust, wall, rss = run_rust("big", nx)
    V, basin, src, dst, pref = landscape(nx, nx)
    G = V.copy()
    t0 = time.perf_counter()
    vals, pi = analyse(V, basin, src, dst, pref, G, KT0)
    t_scipy = time.perf_counter() - t0
    rss_py = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    its_r, its_s = np.array(rust["its"]), np.array(vals[3:8])
    print(f"{nx} x {nx} landscape: {rust['states']} states, {rust['edges']} edges")
    print(f"  Rust : {rust['wall_s']:.2f} s (build {rust['build_s']:.2f}, stationary {rust['stationary_s']:.2f}, "
          f"timescales {rust['its_s']:.2f}, mfpt {rust['mfpt_s']:.2f}), peak RSS {rust['peak_rss_mib']:.0f} MiB")
    print(f"  SciPy: {t_scipy:.2f} s (stationary + eigsh shift-invert + spsolve), peak RSS {rss_py:.0f} MiB "
          f"-> ratio SciPy/Rust {t_scipy / rust['wall_s']:.2f}")
    print(f"  timescales Rust  {its_r}")
    print(f"  timescales SciPy {its_s}  max rel diff {np.max(np.abs(its_r - its_s) / its_s):.2e}")
    print(f"  MFPT A->C rel diff {abs(rust['mfpt_A_C'] - vals[8]) / vals[8]:.2e}, populations max abs diff "
          f"{np.max(np.abs(np.array(rust['pops']) - np.array(vals[:3]))):.2e}, "
          f"Rust stationary vs Boltzmann {rust['stationary_vs_boltzmann_max_abs']:.2e}")


if __name__ == "__main__":
    mode = sys.argv[1] if len(sys.argv) > 1 else "study"
    if mode == "study":
        study(int(sys.argv[2]) if len(sys.argv) > 2 else 1000, int(sys.argv[3]) if len(sys.argv) > 3 else 50)
    elif mode == "big":
        big(int(sys.argv[2]) if len(sys.argv) > 2 else 316)
    else:
        sys.exit("mode: study | big")
