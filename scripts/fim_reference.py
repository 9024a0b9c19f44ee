"""Independent FO Fisher information (PopED's reduced and full forms) by closed-form
predictions and central finite differences, for checking `insilico design`.

Usage: python scripts/fim_reference.py            # prints both models' FIMs as JSON

Model 1 (PopED's warfarin example): 1-cmt oral, F = 1, dose 70 mg, 32 subjects,
times 0.5 1 2 6 24 36 72 120 h; CL 0.15, V 8, KA 1; exponential IIV with
variances 0.07 0.02 0.6; proportional error, variance 0.01.
Model 2 (our own check): 1-cmt IV bolus, dose 100, 20 subjects, times 0.25 1 3 8 12;
CL 2, V 20; IIV variances 0.09 0.04; combined error, variances 0.02 (prop), 0.05 (add).
"""
import json
import numpy as np


def oral(p, t, dose=70.0):
    cl, v, ka = p
    k = cl / v
    return dose * ka / (v * (ka - k)) * (np.exp(-k * t) - np.exp(-ka * t))


def iv(p, t, dose=100.0):
    cl, v = p
    return dose / v * np.exp(-cl / v * t)


def fo_fim(f, theta, omega2, sig_prop, sig_add, t, n_subjects, full):
    theta = np.asarray(theta, float)
    q = len(theta)

    def parts(th):
        mu = f(th, t)
        # dF/deta_k at eta = 0 for exponential IIV: d f/d p_k * p_k (central differences)
        F = np.empty((len(t), q))
        for k in range(q):
            h = 1e-6
            e = np.zeros(q)
            e[k] = h
            F[:, k] = (f(th * np.exp(e), t) - f(th * np.exp(-e), t)) / (2 * h)
        V = F @ np.diag(omega2) @ F.T + np.diag(sig_prop * mu**2 + sig_add)
        return mu, F, V

    mu, F, V = parts(theta)
    Vi = np.linalg.inv(V)
    # derivatives of mu and V by theta (central differences, relative step)
    dmu, dV = [], []
    for j in range(q):
        h = 1e-5 * theta[j]
        tp = theta.copy(); tp[j] += h
        tm = theta.copy(); tm[j] -= h
        mp, _, Vp = parts(tp)
        mm, _, Vm = parts(tm)
        dmu.append((mp - mm) / (2 * h))
        dV.append((Vp - Vm) / (2 * h))
    var_derivs = [np.outer(F[:, k], F[:, k]) for k in range(q)]
    sig_names = []
    if sig_prop > 0:
        var_derivs.append(np.diag(mu**2)); sig_names.append("sigma2_prop")
    if sig_add > 0:
        var_derivs.append(np.eye(len(t))); sig_names.append("sigma2_add")
    nv = len(var_derivs)
    M = np.zeros((q + nv, q + nv))
    for a in range(q):
        for b in range(q):
            M[a, b] = dmu[a] @ Vi @ dmu[b]
            if full:
                M[a, b] += 0.5 * np.trace(Vi @ dV[a] @ Vi @ dV[b])
    for a in range(nv):
        for b in range(nv):
            M[q + a, q + b] = 0.5 * np.trace(Vi @ var_derivs[a] @ Vi @ var_derivs[b])
    if full:
        for a in range(q):
            for b in range(nv):
                M[a, q + b] = M[q + b, a] = 0.5 * np.trace(Vi @ dV[a] @ Vi @ var_derivs[b])
    M *= n_subjects
    values = list(theta) + list(omega2) + [s for s in (sig_prop, sig_add) if s > 0]
    cov = np.linalg.inv(M)
    rse = 100 * np.sqrt(np.diag(cov)) / np.abs(values)
    return M, rse


def main():
    out = {}
    t = np.array([0.5, 1, 2, 6, 24, 36, 72, 120.0])
    for full in (False, True):
        M, rse = fo_fim(oral, [0.15, 8, 1.0], [0.07, 0.02, 0.6], 0.01, 0.0, t, 32, full)
        out[f"warfarin_{'full' if full else 'reduced'}"] = {
            "det_fim": float(np.linalg.det(M)), "ln_det_fim": float(np.linalg.slogdet(M)[1]),
            "rse_percent": rse.tolist()}
    t2 = np.array([0.25, 1, 3, 8, 12.0])
    for full in (False, True):
        M, rse = fo_fim(iv, [2.0, 20.0], [0.09, 0.04], 0.02, 0.05, t2, 20, full)
        out[f"iv_{'full' if full else 'reduced'}"] = {
            "det_fim": float(np.linalg.det(M)), "ln_det_fim": float(np.linalg.slogdet(M)[1]),
            "rse_percent": rse.tolist()}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
