#!/usr/bin/env python3
"""Reference values from deeptime for the Markov-model analysis in
`insilico_mechanistic::conformation::markov` (issue 14).

Run from the repository root:

    python3 -m venv /tmp/dtvenv && /tmp/dtvenv/bin/pip install deeptime numpy scipy
    /tmp/dtvenv/bin/python scripts/deeptime_reference.py

It writes mechanistic/tests/data/deeptime/:

* dw100_T.npy, dw100_T.csv: the 100-state transition matrix of deeptime's own
  example `deeptime.data.double_well_discrete().analytic_msm` (lag 1);
* grid300_T.npz (scipy.sparse.save_npz, CSR), grid300_T.csv, grid300_Q.npz:
  a reversible 300-state model built here (a seeded random landscape on a
  15 x 20 grid, square-root-approximation rates plus seeded long-range
  edges, T = I + lag Q, lag 0.5);
* reference.json: per model, deeptime's stationary distribution, 5 slowest
  implied timescales, MFPT A->B and B->A, forward committor A->B, TPT rate
  A->B (deeptime's rate is per lag step; `rate` here is per unit time,
  deeptime's divided by the lag), and for the rate matrix Q of grid300 the
  same continuous-time quantities from dense NumPy/SciPy solves.
"""
import json
import os
import sys

import numpy as np
import scipy.linalg
import scipy.sparse

import deeptime
from deeptime.markov.msm import MarkovStateModel

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "mechanistic", "tests", "data", "deeptime")


def write_csv(path, m):
    with open(path, "w") as f:
        for row in m:
            f.write(",".join("0" if v == 0 else repr(float(v)) for v in row) + "\n")


def grid300():
    rng = np.random.default_rng(14)
    nx, ny = 15, 20
    n = nx * ny
    x = np.linspace(-1.5, 1.5, nx)
    y = np.linspace(-1.0, 1.0, ny)
    X, Y = np.meshgrid(x, y)  # index iy * nx + ix
    G = 3.0 * (X**2 - 1.0) ** 2 + 2.0 * Y**2 + 0.3 * X + 0.5 * rng.standard_normal(X.shape)
    G = G.ravel()
    kt = 1.0
    rows, cols, pref = [], [], []

    def edge(i, j, a):
        rows.extend([i, j])
        cols.extend([j, i])
        pref.extend([a, a])

    for iy in range(ny):
        for ix in range(nx):
            i = iy * nx + ix
            if ix + 1 < nx:
                edge(i, i + 1, 1.0 + 0.5 * rng.random())
            if iy + 1 < ny:
                edge(i, i + nx, 1.0 + 0.5 * rng.random())
    for _ in range(60):  # long-range edges
        i, j = rng.choice(n, 2, replace=False)
        edge(int(i), int(j), 0.05 * rng.random())
    rows, cols, pref = map(np.asarray, (rows, cols, pref))
    rates = pref * np.exp(-(G[cols] - G[rows]) / (2 * kt))
    Q = scipy.sparse.coo_matrix((rates, (rows, cols)), shape=(n, n)).tocsr()
    Q.sum_duplicates()
    Q = Q - scipy.sparse.diags(np.asarray(Q.sum(axis=1)).ravel())
    Q = Q.tocsr()
    lag = 0.5 / np.max(-Q.diagonal())  # keeps T's diagonal positive
    lag = float(np.float64(0.5) * 2.0 ** np.floor(np.log2(lag / 0.5)))  # a power-of-two multiple of 0.5: exact
    T = (scipy.sparse.identity(n) + lag * Q).tocsr()
    # rows of T sum to one up to round-off; fix the diagonal exactly as the Rust reader will
    T = T.tolil()
    for i in range(n):
        T[i, i] = 0.0
    T = T.tocsr()
    T = T + scipy.sparse.diags(1.0 - np.asarray(T.sum(axis=1)).ravel())
    T = T.tocsr()
    T.sort_indices()
    return Q.tocsr(), T, lag, nx, ny


def sets_dw():
    return list(range(0, 20)), list(range(80, 100))


def sets_grid(nx, ny):
    A = [iy * nx + ix for iy in range(ny) for ix in range(nx) if ix < 4]
    B = [iy * nx + ix for iy in range(ny) for ix in range(nx) if ix >= nx - 4]
    return A, B


def discrete_reference(T, lag, A, B):
    msm = MarkovStateModel(T, lagtime=lag, reversible=True)
    pi = msm.stationary_distribution
    its = msm.timescales(5)
    flux = msm.reactive_flux(A, B)
    return {
        "lag": lag,
        "A": A,
        "B": B,
        "stationary": [float(v) for v in pi],
        "its": [float(v) for v in its],
        "mfpt_AB": float(msm.mfpt(A, B)),
        "mfpt_BA": float(msm.mfpt(B, A)),
        "committor_AB": [float(v) for v in msm.committor_forward(A, B)],
        "rate_per_step_AB": float(flux.rate),
        "rate_AB": float(flux.rate) / lag,
        "total_flux_per_step_AB": float(flux.total_flux),
    }


def continuous_reference(Q, A, B):
    """Continuous-time quantities of a reversible rate matrix by dense solves."""
    Q = Q.toarray()
    n = Q.shape[0]
    M = Q.T.copy()
    M[-1, :] = 1.0
    b = np.zeros(n)
    b[-1] = 1.0
    pi = np.linalg.solve(M, b)
    s = np.sqrt(pi)
    S = (s[:, None] * Q) / s[None, :]
    S = 0.5 * (S + S.T)
    lam = np.sort(scipy.linalg.eigvalsh(S))[::-1]
    its = [float(-1.0 / l) for l in lam[1:6]]

    def mfpt(origin, target):
        inner = [i for i in range(n) if i not in set(target)]
        m = np.zeros(n)
        m[inner] = np.linalg.solve(Q[np.ix_(inner, inner)], -np.ones(len(inner)))
        w = pi[origin] / pi[origin].sum()
        return float(w @ m[origin])

    inner = [i for i in range(n) if i not in set(A) | set(B)]
    q = np.zeros(n)
    q[B] = 1.0
    rhs = -Q[np.ix_(inner, B)].sum(axis=1)
    q[inner] = np.linalg.solve(Q[np.ix_(inner, inner)], rhs)
    qm = 1.0 - q
    f = pi[:, None] * qm[:, None] * Q * q[None, :]
    np.fill_diagonal(f, 0.0)
    net = np.maximum(f - f.T, 0.0)
    notA = [i for i in range(n) if i not in set(A)]
    F = net[np.ix_(A, notA)].sum()
    rate = F / np.sum(pi * qm)
    return {
        "A": A,
        "B": B,
        "stationary": [float(v) for v in pi],
        "its": its,
        "mfpt_AB": mfpt(A, B),
        "mfpt_BA": mfpt(B, A),
        "committor_AB": [float(v) for v in q],
        "rate_AB": float(rate),
    }


def main():
    os.makedirs(OUT, exist_ok=True)
    dw = deeptime.data.double_well_discrete().analytic_msm
    T = np.asarray(dw.transition_matrix, dtype=np.float64)
    np.save(os.path.join(OUT, "dw100_T.npy"), T)
    write_csv(os.path.join(OUT, "dw100_T.csv"), T)
    A, B = sets_dw()
    ref = {
        "deeptime": deeptime.__version__,
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "dw100": discrete_reference(T, float(dw.lagtime), A, B),
    }
    Q, Tg, lag, nx, ny = grid300()
    scipy.sparse.save_npz(os.path.join(OUT, "grid300_T.npz"), Tg)
    scipy.sparse.save_npz(os.path.join(OUT, "grid300_Q.npz"), Q)
    write_csv(os.path.join(OUT, "grid300_T.csv"), Tg.toarray())
    A, B = sets_grid(nx, ny)
    ref["grid300"] = discrete_reference(Tg.toarray(), lag, A, B)
    ref["grid300_Q"] = continuous_reference(Q, A, B)
    with open(os.path.join(OUT, "reference.json"), "w") as f:
        json.dump(ref, f, indent=1)
        f.write("\n")
    for k in ("dw100", "grid300", "grid300_Q"):
        r = ref[k]
        print(f"{k}: its {r['its'][:3]} mfpt_AB {r['mfpt_AB']:.6g} rate_AB {r['rate_AB']:.6g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
