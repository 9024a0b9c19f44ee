"""Simulates examples/filter/tumour.csv from examples/filter/tumour.model.

Euler–Maruyama with dt = 0.01 d, numpy seed 20261207: three subjects with
r = 0.25·exp(η), η ~ N(0, 0.04); drug 20 mg on days 10 and 20; images every
4 days with 10% proportional error. Run from examples/filter/:
    python ../../scripts/simulate_tumour_filter.py
"""
import numpy as np

rng = np.random.default_rng(20261207)
rows = ["ID,TIME,AMT,DV,EVID,CMT"]
for i in (1, 2, 3):
    r = 0.25 * np.exp(rng.normal(0, 0.2))
    K, kk, ke, s = 100, 0.04, 0.3, 0.08
    x = np.array([0.0, 5.0])
    t = 0.0
    dt = 0.01
    doses = {10.0: 20.0, 20.0: 20.0}
    obs = [4.0 * k for k in range(1, 9)]
    for te in sorted(set(list(doses) + obs)):
        while t < te - 1e-9:
            h = min(dt, te - t)
            f = np.array([-ke * x[0], r * x[1] * (1 - x[1] / K) - kk * x[0] * x[1]])
            x = x + h * f + np.array([0.0, s * x[1] * np.sqrt(h) * rng.normal()])
            t += h
        if te in doses:
            rows.append(f"{i},{te:g},{doses[te]:g},.,1,1")
            x[0] += doses[te]
        if te in obs:
            rows.append(f"{i},{te:g},0,{x[1] * (1 + 0.1 * rng.normal()):.4f},0,2")
open("tumour.csv", "w").write("\n".join(rows) + "\n")
