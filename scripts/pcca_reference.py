#!/usr/bin/env python3
"""PCCA+ reference memberships from deeptime for
`insilico_mechanistic::conformation::pcca` (issue 14).

Run from the repository root (deeptime from PyPI in a venv):

    python3 -m venv /tmp/dtvenv && /tmp/dtvenv/bin/pip install deeptime numpy scipy
    /tmp/dtvenv/bin/python scripts/pcca_reference.py

It writes mechanistic/tests/data/deeptime/pcca_reference.json with, per
model, the transition matrix `T` (row-stochastic, lag 1; omitted for dw100,
whose matrix is dw100_T.csv written by deeptime_reference.py), the number of
macrostates `m`, and deeptime's `pcca(T, m).memberships` and `.assignments`:

* `wells40_m3`: a 40-state 1-D chain on a three-well potential built here
  (nearest-neighbour Metropolis-like moves, seeded noise on the energies);
* `wells40_m4`: the same chain with m = 4 (a fuzzy split);
* `dw100_m2`: deeptime's `double_well_discrete().analytic_msm`, m = 2.
"""
import json
import os

import numpy as np

import deeptime
from deeptime.markov import pcca

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "mechanistic", "tests", "data", "deeptime")


def wells40():
    rng = np.random.default_rng(41)
    n = 40
    x = np.linspace(-1.6, 1.6, n)
    g = 2.5 * (x**2 - 1.0) ** 2 * (x**2) * 3.0 + 0.4 * x + 0.3 * rng.standard_normal(n)
    g -= g.min()
    T = np.zeros((n, n))
    for i in range(n - 1):
        a = 0.25
        T[i, i + 1] = a * np.exp(-(g[i + 1] - g[i]) / 2.0)
        T[i + 1, i] = a * np.exp(-(g[i] - g[i + 1]) / 2.0)
    s = T.sum(axis=1).max()
    T /= 1.05 * s
    T[np.diag_indices(n)] = 1.0 - T.sum(axis=1)
    return T


def main():
    os.makedirs(OUT, exist_ok=True)
    out = {"deeptime": deeptime.__version__}
    T = wells40()
    for m in (3, 4):
        p = pcca(T, m)
        out[f"wells40_m{m}"] = {
            "T": T.tolist(),
            "m": m,
            "memberships": p.memberships.tolist(),
            "assignments": p.assignments.tolist(),
        }
    dw = deeptime.data.double_well_discrete().analytic_msm.transition_matrix
    p = pcca(dw, 2)
    out["dw100_m2"] = {"m": 2, "memberships": p.memberships.tolist(), "assignments": p.assignments.tolist()}
    with open(os.path.join(OUT, "pcca_reference.json"), "w") as f:
        json.dump(out, f)
    for k, v in out.items():
        if isinstance(v, dict):
            mem = np.array(v["memberships"])
            print(k, "populations of crisp sets", np.bincount(v["assignments"]), "max fuzziness",
                  float(np.minimum(mem, 1 - mem).max()))


if __name__ == "__main__":
    main()
