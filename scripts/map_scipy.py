#!/usr/bin/env python3
"""SciPy reference for the MAP + Laplace speed figure of issue 12 (item 5):
per-subject MAP of the random effects under NONMEM's POSTHOC objective for
the two-compartment oral model (the zoo's `pk-2cmt-oral`), then the Laplace
covariance, written the way a SciPy user would write it:

* the ODE (depot, central, peripheral) solved by `scipy.integrate.solve_ivp`
  (RK45 by default, the same tolerances as the Rust side) from the dose to
  the last sample;
* the objective  sum_j [(y_j - f_j)^2 / V_j + ln V_j] + eta' Omega^-1 eta  with
  the residual variance V at the individual prediction (interaction), the
  same error models as `insilico_estimation::ErrorModel`;
* `scipy.optimize.minimize(method="BFGS")` from eta = 0 with its
  finite-difference gradient;
* the Laplace covariance: the inverse of the expected Hessian
  Omega^-1 + F' diag(1/V + (V'/V)^2 / 2) F at the MAP (NONMEM's conditional
  covariance), F = df/deta by central differences.

It is run by `cargo run --release -p insilico-estimation --example map_speed`,
which writes the dataset and the population and reads back this script's
output; it can also be run alone:

    /tmp/dtvenv/bin/python scripts/map_scipy.py DATA.csv POPULATION.json OUT.json \
        [--subjects N] [--workers W] [--rtol R] [--atol A]

DATA.csv: NONMEM layout with ID,TIME,AMT,DV,EVID,CMT (doses into CMT 1, the
depot, as bolus; observations of the central concentration). Only bolus doses
are supported (what the generator writes). POPULATION.json:
{"theta": {"ka":..,"CL":..,"V1":..,"Q":..,"V2":..}, "eta": ["ka","CL","V1"],
 "omega2": [..], "error": "combined2", "sigma": [a, b]} (diagonal Omega).

OUT.json: {"subjects": n, "workers": w, "wall_seconds": .., "per_subject_ms": ..,
"ids": [...], "eta": [[...]], "sd": [[...]], "ofv": [...], "converged": [...],
"ode_solves": .., "cpu_seconds": .. (process CPU time of the fits, summed over workers),
"cpu_per_subject_ms": .., "scipy": version, "numpy": version}.
"""
import argparse
import csv
import json
import multiprocessing as mp
import sys
import time

import numpy as np
import scipy
from scipy.integrate import solve_ivp
from scipy.optimize import minimize

POP = None
ARGS = None


def read_subjects(path):
    subjects = {}
    order = []
    with open(path) as f:
        for row in csv.DictReader(f):
            sid = row["ID"]
            if sid not in subjects:
                subjects[sid] = {"doses": [], "t": [], "y": []}
                order.append(sid)
            evid = int(float(row.get("EVID", "0") or 0))
            if evid == 1:
                if int(float(row.get("CMT", "1") or 1)) != 1:
                    raise SystemExit(f"{path}: only doses into CMT 1 are supported (subject {sid})")
                subjects[sid]["doses"].append((float(row["TIME"]), float(row["AMT"])))
            elif row["DV"] not in (".", ""):
                subjects[sid]["t"].append(float(row["TIME"]))
                subjects[sid]["y"].append(float(row["DV"]))
    return [(sid, subjects[sid]) for sid in order]


def variance(f, sigma, error):
    """(V, dV/df) as insilico_estimation::ErrorModel::variance."""
    if error in ("additive", "exponential"):
        return np.full_like(f, sigma[0] ** 2), np.zeros_like(f)
    if error == "proportional":
        return sigma[0] ** 2 * f * f, 2 * sigma[0] ** 2 * f
    if error == "combined2":
        return sigma[0] ** 2 + sigma[1] ** 2 * f * f, 2 * sigma[1] ** 2 * f
    if error == "combined1":
        sd = sigma[0] + sigma[1] * np.abs(f)
        return sd * sd, 2 * sd * sigma[1] * np.sign(f)
    raise SystemExit(f"unknown error model {error}")


def rhs(_t, x, ka, cl, v1, q, v2):
    depot, central, periph = x
    cp = central / v1
    return [
        -ka * depot,
        ka * depot - cl * cp - q * (cp - periph / v2),
        q * (cp - periph / v2),
    ]


class Subject:
    def __init__(self, data):
        self.doses = sorted(data["doses"])
        self.t = np.array(data["t"])
        self.y = np.array(data["y"])
        self.solves = 0

    def predict(self, eta):
        """Central concentration at the sample times, or None if the solve fails."""
        th = dict(POP["theta"])
        for name, e in zip(POP["eta"], eta):
            th[name] = th[name] * np.exp(e)
        args = (th["ka"], th["CL"], th["V1"], th["Q"], th["V2"])
        self.solves += 1
        out = np.zeros_like(self.t)  # samples before the first dose: 0
        x = np.zeros(3)
        # Dose to dose; a sample at a dose time sees the dose.
        for k, (td, amt) in enumerate(self.doses):
            x = x.copy()
            x[0] += amt
            nxt = self.doses[k + 1][0] if k + 1 < len(self.doses) else np.inf
            idx = np.nonzero((self.t >= td) & (self.t < nxt))[0]
            stop = nxt if np.isfinite(nxt) else (self.t[idx].max() if len(idx) else td)
            if stop <= td:
                continue
            grid = np.unique(np.append(self.t[idx], stop))
            sol = solve_ivp(rhs, (td, stop), x, method=ARGS.method, t_eval=grid, args=args,
                            rtol=ARGS.rtol, atol=ARGS.atol)
            if not sol.success:
                return None
            out[idx] = sol.y[1, np.searchsorted(sol.t, self.t[idx])] / th["V1"]
            x = sol.y[:, -1]
        return out

    def objective(self, eta):
        f = self.predict(eta)
        if f is None or not np.all(np.isfinite(f)):
            return 1e30
        v, _ = variance(f, POP["sigma"], POP["error"])
        if np.any(v <= 0):
            return 1e30
        return float(np.sum((self.y - f) ** 2 / v + np.log(v)) + eta @ POP["omega_inv"] @ eta)


def fit_one(item):
    sid, data = item
    cpu0 = time.process_time()
    s = Subject(data)
    q = len(POP["eta"])
    res = minimize(s.objective, np.zeros(q), method="BFGS", options={"gtol": ARGS.gtol})
    eta = res.x
    # Laplace: expected Hessian at the MAP with F by central differences.
    h = 1e-5
    f = s.predict(eta)
    jac = np.empty((len(f), q))
    for k in range(q):
        e = np.zeros(q)
        e[k] = h
        jac[:, k] = (s.predict(eta + e) - s.predict(eta - e)) / (2 * h)
    v, dv = variance(f, POP["sigma"], POP["error"])
    w = 1.0 / v + 0.5 * (dv / v) ** 2
    hess = POP["omega_inv"] + jac.T @ (w[:, None] * jac)
    cov = np.linalg.inv(hess)
    cpu = time.process_time() - cpu0
    return sid, eta.tolist(), np.sqrt(np.diag(cov)).tolist(), float(res.fun), bool(res.success), s.solves, cpu


def init(pop, args):
    global POP, ARGS
    POP = pop
    ARGS = args


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("data")
    p.add_argument("population")
    p.add_argument("out")
    p.add_argument("--subjects", type=int, default=0, help="first N subjects only (0: all)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--rtol", type=float, default=1e-6)
    p.add_argument("--atol", type=float, default=1e-9)
    p.add_argument("--gtol", type=float, default=1e-5)
    p.add_argument("--method", default="RK45")
    args = p.parse_args()
    with open(args.population) as f:
        pop = json.load(f)
    pop["omega_inv"] = np.linalg.inv(np.diag(pop["omega2"]))
    subjects = read_subjects(args.data)
    if args.subjects > 0:
        subjects = subjects[: args.subjects]
    start = time.perf_counter()
    if args.workers > 1:
        with mp.Pool(args.workers, initializer=init, initargs=(pop, args)) as pool:
            results = pool.map(fit_one, subjects, chunksize=max(1, len(subjects) // (8 * args.workers)))
    else:
        init(pop, args)
        results = [fit_one(s) for s in subjects]
    wall = time.perf_counter() - start
    out = {
        "subjects": len(results),
        "workers": args.workers,
        "wall_seconds": wall,
        "per_subject_ms": 1e3 * wall / max(1, len(results)),
        "ids": [r[0] for r in results],
        "eta": [r[1] for r in results],
        "sd": [r[2] for r in results],
        "ofv": [r[3] for r in results],
        "converged": [r[4] for r in results],
        "ode_solves": int(sum(r[5] for r in results)),
        "cpu_seconds": float(sum(r[6] for r in results)),
        "cpu_per_subject_ms": 1e3 * float(sum(r[6] for r in results)) / max(1, len(results)),
        "method": args.method,
        "rtol": args.rtol,
        "atol": args.atol,
        "scipy": scipy.__version__,
        "numpy": np.__version__,
        "python": sys.version.split()[0],
    }
    with open(args.out, "w") as f:
        json.dump(out, f)
    print(f"SciPy MAP+Laplace: {len(results)} subjects, {args.workers} workers, {wall:.2f} s, "
          f"{out['per_subject_ms']:.2f} ms/subject ({out['cpu_per_subject_ms']:.2f} ms CPU), {out['ode_solves']} ODE solves")


if __name__ == "__main__":
    main()
