//! The master equation `dp/dt = K(θ) p` over conformational states, with
//! free-energy perturbations, as a [`System`].

use std::sync::{Arc, Mutex};

use insilico_solvers::System;

use super::landscape::Landscape;
use super::ConformationError;

/// A perturbation of the free energies `G_i`, scaled by one parameter (its
/// amplitude). Rates follow `r_{i→j} = a_ij · exp(−(G_j − G_i)/(2kT))`
/// with a symmetric prefactor, so every perturbation keeps detailed
/// balance and moves the equilibrium to `π_i ∝ exp(−G_i/kT)`.
#[derive(Debug, Clone, PartialEq)]
pub enum Perturbation {
    /// `ΔG_i = amplitude · shape_i`: a mutation's per-state ΔΔG (amplitude
    /// 1), an added well ([`Grid::well`](super::Grid::well), amplitude =
    /// depth), a linear tilt from a force ([`Grid::tilt`](super::Grid::tilt),
    /// amplitude = force).
    Shift {
        /// Name of the amplitude parameter.
        name: String,
        /// Per-state shape.
        shape: Vec<f64>,
    },
    /// Ligand binding: a state with dissociation constant `Kd_i` is
    /// stabilised by `ΔG_i = −kT·ln(1 + L/Kd_i)` at ligand concentration
    /// `L` (the amplitude; same unit as `Kd`). States that do not bind
    /// have `Kd_i = ∞`.
    Ligand {
        /// Name of the concentration parameter.
        name: String,
        /// Per-state dissociation constants.
        kd: Vec<f64>,
    },
}

impl Perturbation {
    fn name(&self) -> &str {
        match self {
            Perturbation::Shift { name, .. } | Perturbation::Ligand { name, .. } => name,
        }
    }
    fn len(&self) -> usize {
        match self {
            Perturbation::Shift { shape, .. } => shape.len(),
            Perturbation::Ligand { kd, .. } => kd.len(),
        }
    }
    /// `(ΔG_i, ∂ΔG_i/∂a, ∂ΔG_i/∂kT)`.
    #[inline]
    fn at(&self, i: usize, a: f64, kt: f64) -> (f64, f64, f64) {
        match self {
            Perturbation::Shift { shape, .. } => (a * shape[i], shape[i], 0.0),
            Perturbation::Ligand { kd, .. } => {
                let k = kd[i];
                if k.is_infinite() {
                    (0.0, 0.0, 0.0)
                } else {
                    let l = (a / k).ln_1p();
                    (-kt * l, -kt / (k + a), -l)
                }
            }
        }
    }
}

/// The generator for one parameter vector: rates per directed edge, the
/// diagonal, and the perturbed free energies.
#[derive(Debug, Clone)]
pub struct Generator {
    /// Rate of each directed edge (same order as [`MasterEquation::edges`]).
    pub rates: Vec<f64>,
    /// `K_ii = −Σ_j r_{i→j}`.
    pub diag: Vec<f64>,
    /// Free energies `G_i(θ)`.
    pub g: Vec<f64>,
    /// `kT`.
    pub kt: f64,
}

/// The master equation `dp/dt = K p` over `n` states.
///
/// `K_ji = r_{i→j}` for each directed edge `i → j` and `K_ii = −Σ_j r_{i→j}`,
/// so columns sum to zero and `Σ p = 1` is a declared invariant (the right-hand
/// side is assembled in flux form, edge by edge, so it holds to round-off).
/// Rates are `r_{i→j} = a_ij·exp(−(G_j − G_i)/(2kT))` with base free energies
/// `G⁰`, perturbations ([`Perturbation`]) added to `G`, and prefactors `a_ij`
/// (symmetric for a reversible model: detailed balance with
/// `π_i ∝ exp(−G_i/kT)` then holds for every parameter value).
///
/// Parameters: `θ = [kT, amplitude₁, …]`, one amplitude per perturbation in
/// the order added. Outputs: the population of each basin
/// ([`MasterEquation::with_basins`]), or of each state if no basins are set.
/// The generator is assembled once per parameter vector and cached (a few
/// per thread are kept, so sweeps in parallel do not rebuild it).
///
/// # Example: SQRA on a double well
/// ```
/// use insilico_mechanistic::conformation::{Grid, Landscape, MasterEquation};
/// use insilico_solvers::{solve, Method, Options, Problem, System};
///
/// let grid = Grid::new_1d(50, -1.5, 1.5).unwrap();
/// let land = Landscape::from_fn(grid, |x, _| 5.0 * (x * x - 1.0).powi(2)).unwrap();
/// let me = MasterEquation::sqra(&land, 1.0, 1.0).unwrap()
///     .with_basins(vec![("left".into(), (0..25).collect()), ("right".into(), (25..50).collect())]).unwrap();
/// let mut p0 = vec![0.0; 50];
/// p0[10] = 1.0; // start in the left well
/// let prob = Problem::new(&me, vec![1.0]).with_x0(p0).observe(1, &[1e3]);
/// let sol = solve(&prob, Method::Bdf, &Options { rtol: 1e-8, atol: 1e-12, ..Options::default() }).unwrap();
/// assert!((sol.outputs[0] - 0.5).abs() < 1e-6); // symmetric wells equilibrate
/// ```
#[derive(Debug)]
pub struct MasterEquation {
    n: usize,
    from: Vec<usize>,
    to: Vec<usize>,
    pref: Vec<f64>,
    g0: Vec<f64>,
    kt0: f64,
    perturbations: Vec<Perturbation>,
    basins: Vec<(String, Vec<usize>)>,
    cache: Mutex<Vec<(Vec<f64>, Arc<Generator>)>>,
}

impl Clone for MasterEquation {
    fn clone(&self) -> Self {
        MasterEquation {
            n: self.n,
            from: self.from.clone(),
            to: self.to.clone(),
            pref: self.pref.clone(),
            g0: self.g0.clone(),
            kt0: self.kt0,
            perturbations: self.perturbations.clone(),
            basins: self.basins.clone(),
            cache: Mutex::new(Vec::new()),
        }
    }
}

/// How many generators the cache keeps.
const CACHE: usize = 16;

impl MasterEquation {
    /// A master equation from directed edges `(from, to, prefactor)` and
    /// base free energies `g0` at temperature `kt` (the default first
    /// parameter).
    pub fn from_edges(g0: Vec<f64>, edges: &[(usize, usize, f64)], kt: f64) -> Result<Self, ConformationError> {
        let n = g0.len();
        if n == 0 {
            return Err(ConformationError::Invalid("a master equation needs at least one state".into()));
        }
        if !(kt.is_finite() && kt > 0.0) {
            return Err(ConformationError::Invalid(format!("kT = {kt} must be finite and positive")));
        }
        if let Some(i) = g0.iter().position(|v| !v.is_finite()) {
            return Err(ConformationError::Invalid(format!("free energy of state {i} is {}", g0[i])));
        }
        for &(i, j, a) in edges {
            if i >= n || j >= n || i == j {
                return Err(ConformationError::Invalid(format!("edge {i} -> {j} is not between two of {n} states")));
            }
            if !(a.is_finite() && a >= 0.0) {
                return Err(ConformationError::Invalid(format!("edge {i} -> {j} has prefactor {a}")));
            }
        }
        Ok(MasterEquation {
            n,
            from: edges.iter().map(|e| e.0).collect(),
            to: edges.iter().map(|e| e.1).collect(),
            pref: edges.iter().map(|e| e.2).collect(),
            g0,
            kt0: kt,
            perturbations: Vec::new(),
            basins: Vec::new(),
            cache: Mutex::new(Vec::new()),
        })
    }

    /// The square-root approximation (SQRA) of Smoluchowski dynamics on a
    /// landscape: between neighbouring cells at spacing `h`,
    /// `r_{i→j} = (D/h²)·exp(−(V_j − V_i)/(2kT))`, no flux through the outer
    /// boundary. `diffusion` is `D` (length²/time), `kt` the default `kT`.
    pub fn sqra(landscape: &Landscape, diffusion: f64, kt: f64) -> Result<Self, ConformationError> {
        if !(diffusion.is_finite() && diffusion > 0.0) {
            return Err(ConformationError::Invalid(format!("diffusion coefficient {diffusion} must be positive")));
        }
        let mut edges = Vec::new();
        for (i, j, h) in landscape.grid.neighbours() {
            let a = diffusion / (h * h);
            edges.push((i, j, a));
            edges.push((j, i, a));
        }
        Self::from_edges(landscape.values.clone(), &edges, kt)
    }

    /// Adds a perturbation (its amplitude becomes the next parameter).
    pub fn with_perturbation(mut self, p: Perturbation) -> Result<Self, ConformationError> {
        if p.len() != self.n {
            return Err(ConformationError::Invalid(format!(
                "perturbation {} has {} values for {} states",
                p.name(),
                p.len(),
                self.n
            )));
        }
        let ok = match &p {
            Perturbation::Shift { shape, .. } => shape.iter().all(|v| v.is_finite()),
            Perturbation::Ligand { kd, .. } => kd.iter().all(|v| *v > 0.0 && !v.is_nan()),
        };
        if !ok {
            return Err(ConformationError::Invalid(format!(
                "perturbation {}: shapes must be finite and dissociation constants positive",
                p.name()
            )));
        }
        self.perturbations.push(p);
        Ok(self)
    }

    /// Sets the basins whose populations are the outputs: `(name, member
    /// states)`. Fails if a member is not a state of the model.
    pub fn with_basins(mut self, basins: Vec<(String, Vec<usize>)>) -> Result<Self, ConformationError> {
        for (name, states) in &basins {
            if let Some(&i) = states.iter().find(|&&i| i >= self.n) {
                return Err(ConformationError::Invalid(format!(
                    "basin {name} lists state {i}; the model has {} states",
                    self.n
                )));
            }
        }
        self.basins = basins;
        Ok(self)
    }

    /// Number of states.
    pub fn len(&self) -> usize {
        self.n
    }

    /// Whether there are no states (never, for a constructed model).
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// The directed edges `(from, to)`.
    pub fn edges(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        self.from.iter().copied().zip(self.to.iter().copied())
    }

    /// Base free energies `G⁰`.
    pub fn base_free_energies(&self) -> &[f64] {
        &self.g0
    }

    /// The basins.
    pub fn basins(&self) -> &[(String, Vec<usize>)] {
        &self.basins
    }

    /// The perturbations, in parameter order.
    pub fn perturbations(&self) -> &[Perturbation] {
        &self.perturbations
    }

    /// Default parameters: `[kT, 0, 0, …]` (every perturbation off).
    pub fn default_params(&self) -> Vec<f64> {
        let mut p = vec![0.0; 1 + self.perturbations.len()];
        p[0] = self.kt0;
        p
    }

    /// Checks the parameter vector: length, `kT > 0`, ligand concentrations ≥ 0.
    pub fn validate_params(&self, p: &[f64]) -> Result<(), ConformationError> {
        if p.len() != 1 + self.perturbations.len() {
            return Err(ConformationError::Invalid(format!(
                "{} parameters given, the model has {} (kT and one amplitude per perturbation)",
                p.len(),
                1 + self.perturbations.len()
            )));
        }
        if !(p[0].is_finite() && p[0] > 0.0) {
            return Err(ConformationError::Invalid(format!("kT = {} must be finite and positive", p[0])));
        }
        for (k, pert) in self.perturbations.iter().enumerate() {
            let a = p[k + 1];
            let bad = !a.is_finite() || (matches!(pert, Perturbation::Ligand { .. }) && a < 0.0);
            if bad {
                return Err(ConformationError::Invalid(format!("{} = {a} is out of range", pert.name())));
            }
        }
        Ok(())
    }

    /// Free energies `G_i(θ)`.
    pub fn free_energies(&self, p: &[f64]) -> Vec<f64> {
        let kt = p[0];
        let mut g = self.g0.clone();
        for (k, pert) in self.perturbations.iter().enumerate() {
            for (i, gi) in g.iter_mut().enumerate() {
                *gi += pert.at(i, p[k + 1], kt).0;
            }
        }
        g
    }

    /// Assembles the generator for `p` (uncached).
    pub fn assemble(&self, p: &[f64]) -> Generator {
        let kt = p[0];
        let g = self.free_energies(p);
        let mut rates = Vec::with_capacity(self.from.len());
        let mut diag = vec![0.0; self.n];
        for ((&i, &j), &a) in self.from.iter().zip(&self.to).zip(&self.pref) {
            let r = a * (-(g[j] - g[i]) / (2.0 * kt)).exp();
            rates.push(r);
            diag[i] -= r;
        }
        Generator { rates, diag, g, kt }
    }

    /// The generator for `p`, from the cache when possible.
    pub fn generator(&self, p: &[f64]) -> Arc<Generator> {
        if let Ok(cache) = self.cache.lock() {
            if let Some((_, g)) = cache.iter().find(|(q, _)| q.as_slice() == p) {
                return g.clone();
            }
        }
        let gen = Arc::new(self.assemble(p));
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() >= CACHE {
                cache.remove(0);
            }
            cache.push((p.to_vec(), gen.clone()));
        }
        gen
    }

    /// The Boltzmann distribution `π_i ∝ exp(−G_i(θ)/kT)`: the equilibrium
    /// of the model whenever it is reversible ([`Self::detailed_balance_defect`] = 0).
    pub fn boltzmann(&self, p: &[f64]) -> Vec<f64> {
        let g = self.free_energies(p);
        let gmin = g.iter().copied().fold(f64::INFINITY, f64::min);
        let mut w: Vec<f64> = g.iter().map(|gi| (-(gi - gmin) / p[0]).exp()).collect();
        let s: f64 = w.iter().sum();
        w.iter_mut().for_each(|v| *v /= s);
        w
    }

    /// Largest relative asymmetry `|a_ij − a_ji| / max(a_ij, a_ji)` of the
    /// prefactors over edge pairs (an edge without a reverse counts as 1):
    /// zero means detailed balance holds for every parameter value.
    pub fn detailed_balance_defect(&self) -> f64 {
        let mut map = std::collections::HashMap::with_capacity(self.from.len());
        for (e, (i, j)) in self.edges().enumerate() {
            map.insert((i, j), self.pref[e]);
        }
        let mut worst: f64 = 0.0;
        for (&(i, j), &a) in &map {
            let b = map.get(&(j, i)).copied().unwrap_or(0.0);
            let m = a.max(b);
            if m > 0.0 {
                worst = worst.max((a - b).abs() / m);
            }
        }
        worst
    }

    /// Population of each basin in `p`.
    pub fn basin_populations(&self, p: &[f64]) -> Vec<f64> {
        self.basins.iter().map(|(_, s)| s.iter().map(|&i| p[i]).sum()).collect()
    }

    /// `∂G_i/∂θ_k` for every state: how parameter `k` (0 = kT) moves the
    /// free energies at `p`.
    pub fn free_energy_derivative(&self, p: &[f64], k: usize) -> Vec<f64> {
        let mut v = vec![0.0; p.len()];
        if let Some(x) = v.get_mut(k) {
            *x = 1.0;
        }
        self.dg_dir(p, &v)
    }

    /// `∂G_i/∂θ` applied to a parameter direction `v`: returns per-state `dG`.
    fn dg_dir(&self, p: &[f64], v: &[f64]) -> Vec<f64> {
        let kt = p[0];
        let mut dg = vec![0.0; self.n];
        for (k, pert) in self.perturbations.iter().enumerate() {
            let (va, vt) = (v[k + 1], v[0]);
            if va == 0.0 && vt == 0.0 {
                continue;
            }
            for (i, d) in dg.iter_mut().enumerate() {
                let (_, da, dt) = pert.at(i, p[k + 1], kt);
                *d += da * va + dt * vt;
            }
        }
        dg
    }
}

impl System for MasterEquation {
    fn nstates(&self) -> usize {
        self.n
    }
    fn nparams(&self) -> usize {
        1 + self.perturbations.len()
    }
    fn rhs(&self, _t: f64, x: &[f64], _u: &[f64], p: &[f64], dx: &mut [f64]) {
        let g = self.generator(p);
        dx.iter_mut().for_each(|d| *d = 0.0);
        for ((&i, &j), &r) in self.from.iter().zip(&self.to).zip(&g.rates) {
            let f = r * x[i];
            dx[i] -= f;
            dx[j] += f;
        }
    }
    fn jvp(&self, t: f64, _x: &[f64], u: &[f64], p: &[f64], v: &[f64], out: &mut [f64]) {
        self.rhs(t, v, u, p, out);
    }
    fn vjp_state(&self, _t: f64, _x: &[f64], _u: &[f64], p: &[f64], w: &[f64], out: &mut [f64]) {
        let g = self.generator(p);
        out.iter_mut().for_each(|d| *d = 0.0);
        for ((&i, &j), &r) in self.from.iter().zip(&self.to).zip(&g.rates) {
            out[i] += r * (w[j] - w[i]);
        }
    }
    fn jvp_params(&self, _t: f64, x: &[f64], _u: &[f64], p: &[f64], v: &[f64], out: &mut [f64]) {
        let g = self.generator(p);
        let dg = self.dg_dir(p, v);
        let kt = g.kt;
        out.iter_mut().for_each(|d| *d = 0.0);
        for ((&i, &j), &r) in self.from.iter().zip(&self.to).zip(&g.rates) {
            let dlnr = -(dg[j] - dg[i]) / (2.0 * kt) + v[0] * (g.g[j] - g.g[i]) / (2.0 * kt * kt);
            let df = r * x[i] * dlnr;
            out[i] -= df;
            out[j] += df;
        }
    }
    fn vjp_params(&self, _t: f64, x: &[f64], _u: &[f64], p: &[f64], w: &[f64], out: &mut [f64]) {
        let g = self.generator(p);
        let kt = g.kt;
        let mut acc = vec![0.0; self.n];
        let mut d_kt = 0.0;
        for ((&i, &j), &r) in self.from.iter().zip(&self.to).zip(&g.rates) {
            let c = (w[j] - w[i]) * r * x[i];
            acc[i] += c;
            acc[j] -= c;
            d_kt += c * (g.g[j] - g.g[i]) / (2.0 * kt * kt);
        }
        out.iter_mut().for_each(|d| *d = 0.0);
        out[0] = d_kt;
        for (k, pert) in self.perturbations.iter().enumerate() {
            let mut s = 0.0;
            for (i, a) in acc.iter().enumerate() {
                let (_, da, dt) = pert.at(i, p[k + 1], kt);
                s += da * a;
                out[0] += dt * a / (2.0 * kt);
            }
            out[k + 1] = s / (2.0 * kt);
        }
    }
    fn jacobian_sparsity(&self) -> Option<Vec<(usize, usize)>> {
        let mut s: Vec<(usize, usize)> = (0..self.n).map(|i| (i, i)).collect();
        s.extend(self.to.iter().zip(&self.from).map(|(&j, &i)| (j, i)));
        Some(s)
    }
    fn jacobian_values(&self, _t: f64, _x: &[f64], _u: &[f64], p: &[f64], values: &mut [f64]) -> bool {
        let g = self.generator(p);
        values[..self.n].copy_from_slice(&g.diag);
        values[self.n..].copy_from_slice(&g.rates);
        true
    }
    fn invariants(&self) -> Vec<Vec<f64>> {
        vec![vec![1.0; self.n]]
    }
    fn noutputs(&self) -> usize {
        if self.basins.is_empty() {
            self.n
        } else {
            self.basins.len()
        }
    }
    fn output(&self, k: usize, _t: f64, x: &[f64], _p: &[f64]) -> f64 {
        if self.basins.is_empty() {
            x[k]
        } else {
            self.basins[k].1.iter().map(|&i| x[i]).sum()
        }
    }
    fn output_grad(&self, k: usize, _t: f64, _x: &[f64], _p: &[f64], gx: &mut [f64], _gp: &mut [f64]) {
        if self.basins.is_empty() {
            gx[k] += 1.0;
        } else {
            for &i in &self.basins[k].1 {
                gx[i] += 1.0;
            }
        }
    }
    fn param_names(&self) -> Vec<String> {
        let mut v = vec!["kT".to_string()];
        v.extend(self.perturbations.iter().map(|p| p.name().to_string()));
        v
    }
}
