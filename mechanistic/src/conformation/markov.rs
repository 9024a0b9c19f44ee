//! Markov-chain analysis in discrete or continuous time: stationary
//! distribution, implied timescales, mean first-passage times, committors
//! and transition-path-theory (TPT) flux and rate, as deeptime defines them.
//!
//! ## One chain, two clocks
//! A [`Chain`] holds the off-diagonal rates `k_ij ≥ 0` (row `i` is the
//! state left) of a generator `K` (`K_ii = −Σ_j k_ij`) and a [`Clock`]:
//! * [`Clock::Continuous`]: a rate matrix, analysed in continuous time;
//! * [`Clock::Discrete`]: a row-stochastic transition matrix `T` at lag
//!   `τ`, stored as `K = (T − I)/τ` (exactly: `k_ij = T_ij/τ`), analysed in
//!   discrete time as deeptime does.
//!
//! With `T = I + τK`, the discrete-time equations of deeptime are those of
//! `K`: `πT = π ⇔ πK = 0`; the MFPT `m = τ + T m` off the target is
//! `K m = −1`; the committor `T q = q` is `K q = 0`; the TPT flux
//! `π_i q⁻_i T_ij q⁺_j` is `τ` times `π_i q⁻_i k_ij q⁺_j`, so the rate per
//! unit time (deeptime's rate per lag step divided by `τ`) is the same
//! expression. Only the implied timescales differ: `t_m = −τ/ln|1 + τλ_m|`
//! in discrete time (eigenvalues of `T` ordered by modulus, as deeptime),
//! `t_m = −1/λ_m` in continuous time.
//!
//! ## Methods
//! For a reversible chain the stationary distribution follows from
//! detailed balance along a spanning tree (checked on every entry), and the
//! MFPT and committor systems are symmetrised (`Π^{1/2} K Π^{−1/2}`) and
//! solved by sparse Cholesky. Otherwise sparse LU (faer). The symbolic
//! analysis of every factorisation is cached by sparsity pattern and
//! reused across perturbation points ([`Factor`]): the stationary distribution
//! (grounded at the most-connected state and normalised), MFPT and
//! committors (Dirichlet problems on the states outside the sets). The
//! slowest eigenpairs of a reversible chain come from its symmetrisation
//! `S = Π^{1/2} K Π^{−1/2}`: by a dense symmetric eigensolver up to
//! [`DENSE_MAX`] states, above that by Lanczos with full
//! reorthogonalisation on `S⁺` (shift-invert at the exact shift 0, through
//! the LU of `S` grounded at one state and the known null vector
//! `√π` projected out), so the slowest relaxations are the best separated
//! extremes. Non-reversible chains use a dense general eigensolver (up to
//! [`DENSE_MAX`] states).

use std::sync::Mutex;

use faer::linalg::solvers::Solve;
use faer::sparse::linalg::solvers::{Llt, Lu, SymbolicLlt, SymbolicLu};
use faer::sparse::{SparseColMat, Triplet};
use faer::{Mat, Side};

use super::master::MasterEquation;
use super::ConformationError;

/// Above this many states the implied timescales come from the Lanczos
/// iteration instead of a dense eigendecomposition.
pub const DENSE_MAX: usize = 1500;

/// Which eigensolver gives the slowest eigenvalues of a reversible chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Eigensolver {
    /// Dense up to [`DENSE_MAX`] states, Lanczos above.
    Auto,
    /// Dense symmetric eigendecomposition, O(n³).
    Dense,
    /// Shift-invert Lanczos on the sparse LU.
    Lanczos,
}

/// How a chain's time runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Clock {
    /// A rate matrix: continuous time.
    Continuous,
    /// A transition matrix at this lag time: discrete time.
    Discrete {
        /// Lag time `τ` (> 0), in the time unit of the outputs.
        lag: f64,
    },
}

/// The symmetric tridiagonal matrix of a Lanczos iteration: `alpha` on the
/// diagonal, `beta` (one shorter, or as long) beside it.
pub(super) fn tridiagonal(alpha: &[f64], beta: &[f64]) -> Mat<f64> {
    let m = alpha.len();
    Mat::from_fn(m, m, |a, b| {
        if a == b {
            alpha[a]
        } else if a + 1 == b {
            beta[a]
        } else if b + 1 == a {
            beta[b]
        } else {
            0.0
        }
    })
}

fn invalid(s: impl Into<String>) -> ConformationError {
    ConformationError::Invalid(s.into())
}

fn sparse_err(e: impl std::fmt::Debug) -> ConformationError {
    invalid(format!("sparse factorisation failed: {e:?}"))
}

/// A factorised sparse square matrix (faer's sparse LU, or Cholesky for a
/// symmetric positive definite one) with solves for the matrix and its
/// transpose.
pub struct Factor {
    kind: FactorKind,
    n: usize,
}

enum FactorKind {
    Lu(Box<Lu<usize, f64>>),
    Llt(Llt<usize, f64>),
}

/// Pattern key: (kind, n, nnz, FNV hash of the column pointers and row indices).
type PatternKey = (u8, usize, usize, u64);

/// How many symbolic factorisations of each kind are kept.
const SYMBOLIC_CACHE: usize = 16;

/// Symbolic LU factorisations by sparsity pattern, shared by all threads.
static SYMBOLIC: Mutex<Vec<(PatternKey, SymbolicLu<usize>)>> = Mutex::new(Vec::new());
/// Symbolic Cholesky factorisations by sparsity pattern.
static SYMBOLIC_LLT: Mutex<Vec<(PatternKey, SymbolicLlt<usize>)>> = Mutex::new(Vec::new());

fn pattern_key(kind: u8, n: usize, a: &SparseColMat<usize, f64>) -> PatternKey {
    let sym = a.symbolic();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &v in sym.col_ptr().iter().chain(sym.row_idx()) {
        h ^= v as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (kind, n, sym.row_idx().len(), h)
}

fn cached<S: Clone>(
    cache: &Mutex<Vec<(PatternKey, S)>>,
    key: PatternKey,
    make: impl FnOnce() -> Result<S, ConformationError>,
) -> Result<S, ConformationError> {
    if let Some(s) = cache.lock().ok().and_then(|c| c.iter().find(|(k, _)| *k == key).map(|(_, s)| s.clone())) {
        return Ok(s);
    }
    let s = make()?;
    if let Ok(mut c) = cache.lock() {
        if c.len() >= SYMBOLIC_CACHE {
            c.remove(0);
        }
        c.push((key, s.clone()));
    }
    Ok(s)
}

impl Factor {
    /// Factorises the `n × n` matrix given as triplets `(row, col, value)`
    /// (duplicates are summed) by sparse LU. The symbolic analysis
    /// (fill-reducing ordering, elimination structure) is cached by
    /// sparsity pattern and reused when the same pattern comes again — as
    /// it does at every point of a perturbation study — so only the numeric
    /// factorisation is redone.
    pub fn new(n: usize, trip: &[Triplet<usize, usize, f64>]) -> Result<Self, ConformationError> {
        let a = SparseColMat::<usize, f64>::try_new_from_triplets(n, n, trip).map_err(sparse_err)?;
        let symbolic =
            cached(&SYMBOLIC, pattern_key(0, n, &a), || SymbolicLu::try_new(a.symbolic()).map_err(sparse_err))?;
        let lu = Lu::try_new_with_symbolic(symbolic, a.as_ref()).map_err(sparse_err)?;
        Ok(Factor { kind: FactorKind::Lu(Box::new(lu)), n })
    }

    /// Factorises a symmetric positive definite matrix (both triangles
    /// given as triplets) by sparse Cholesky, symbolic analysis cached as
    /// in [`Factor::new`].
    pub fn new_spd(n: usize, trip: &[Triplet<usize, usize, f64>]) -> Result<Self, ConformationError> {
        let a = SparseColMat::<usize, f64>::try_new_from_triplets(n, n, trip).map_err(sparse_err)?;
        let symbolic = cached(&SYMBOLIC_LLT, pattern_key(1, n, &a), || {
            SymbolicLlt::try_new(a.symbolic(), Side::Lower).map_err(sparse_err)
        })?;
        let llt = Llt::try_new_with_symbolic(symbolic, a.as_ref(), Side::Lower).map_err(sparse_err)?;
        Ok(Factor { kind: FactorKind::Llt(llt), n })
    }
    /// `A x = b`.
    pub fn solve(&self, b: &[f64]) -> Vec<f64> {
        let mut m = Mat::from_fn(self.n, 1, |i, _| b[i]);
        match &self.kind {
            FactorKind::Lu(f) => f.solve_in_place(m.as_mut()),
            FactorKind::Llt(f) => f.solve_in_place(m.as_mut()),
        }
        (0..self.n).map(|i| m[(i, 0)]).collect()
    }
    /// `Aᵀ x = b`.
    pub fn solve_transpose(&self, b: &[f64]) -> Vec<f64> {
        let mut m = Mat::from_fn(self.n, 1, |i, _| b[i]);
        match &self.kind {
            FactorKind::Lu(f) => f.solve_transpose_in_place(m.as_mut()),
            FactorKind::Llt(f) => f.solve_in_place(m.as_mut()),
        }
        (0..self.n).map(|i| m[(i, 0)]).collect()
    }
}

/// A Markov chain over `n` states: off-diagonal rates in row convention
/// (compressed rows, columns sorted) and its [`Clock`].
#[derive(Debug, Clone, PartialEq)]
pub struct Chain {
    n: usize,
    /// Row pointers into `col`/`rate`.
    ptr: Vec<usize>,
    col: Vec<usize>,
    rate: Vec<f64>,
    clock: Clock,
}

/// Transition-path theory of the reaction `A → B`.
#[derive(Debug, Clone, PartialEq)]
pub struct Tpt {
    /// Forward committor `q⁺` (0 on A, 1 on B).
    pub forward: Vec<f64>,
    /// Backward committor `q⁻` (1 on A, 0 on B).
    pub backward: Vec<f64>,
    /// Total reactive flux out of A, per unit time.
    pub total_flux: f64,
    /// Rate `k_AB = F / Σ_i π_i q⁻_i`, per unit time (deeptime's rate per
    /// lag step divided by the lag, in discrete time).
    pub rate: f64,
}

impl Chain {
    /// A chain from off-diagonal entries `(i, j, k_ij)` (row `i` is the
    /// state left; duplicates summed, zeros and diagonal entries dropped). For
    /// [`Clock::Discrete`] the entries are rates `T_ij/τ`; use
    /// [`Chain::from_transition_entries`] for probabilities.
    pub fn from_rates(n: usize, entries: &[(usize, usize, f64)], clock: Clock) -> Result<Self, ConformationError> {
        if n == 0 {
            return Err(invalid("a Markov chain needs at least one state"));
        }
        if let Clock::Discrete { lag } = clock {
            if !(lag.is_finite() && lag > 0.0) {
                return Err(invalid(format!("lag time {lag} must be finite and positive")));
            }
        }
        let mut e: Vec<(usize, usize, f64)> = Vec::with_capacity(entries.len());
        for &(i, j, v) in entries {
            if i >= n || j >= n {
                return Err(invalid(format!("entry ({i}, {j}) is outside the {n} states")));
            }
            if i == j {
                continue; // the diagonal follows from the off-diagonal entries
            }
            if !(v.is_finite() && v >= 0.0) {
                return Err(invalid(format!("entry ({i}, {j}) = {v} must be finite and non-negative")));
            }
            if i != j && v > 0.0 {
                e.push((i, j, v));
            }
        }
        e.sort_by_key(|a| (a.0, a.1));
        let mut ptr = vec![0usize; n + 1];
        let mut col = Vec::with_capacity(e.len());
        let mut rate: Vec<f64> = Vec::with_capacity(e.len());
        let mut last = (usize::MAX, usize::MAX);
        for (i, j, v) in e {
            if (i, j) == last {
                if let Some(r) = rate.last_mut() {
                    *r += v;
                }
                continue;
            }
            last = (i, j);
            ptr[i + 1] += 1;
            col.push(j);
            rate.push(v);
        }
        for i in 0..n {
            ptr[i + 1] += ptr[i];
        }
        Ok(Chain { n, ptr, col, rate, clock })
    }

    /// A discrete-time chain from the off-diagonal entries `(i, j, T_ij)`
    /// of a transition matrix at lag `lag` (the diagonal is `1 − Σ_j T_ij`).
    pub fn from_transition_entries(
        n: usize,
        entries: &[(usize, usize, f64)],
        lag: f64,
    ) -> Result<Self, ConformationError> {
        if !(lag.is_finite() && lag > 0.0) {
            return Err(invalid(format!("lag time {lag} must be finite and positive")));
        }
        let e: Vec<(usize, usize, f64)> = entries.iter().map(|&(i, j, v)| (i, j, v / lag)).collect();
        Self::from_rates(n, &e, Clock::Discrete { lag })
    }

    /// The chain of a master equation at parameters `p` (its rates `r_{i→j}`).
    pub fn from_master(me: &MasterEquation, p: &[f64], clock: Clock) -> Result<Self, ConformationError> {
        me.validate_params(p)?;
        let g = me.generator(p);
        let e: Vec<(usize, usize, f64)> = me.edges().zip(&g.rates).map(|((i, j), &r)| (i, j, r)).collect();
        Self::from_rates(me.len(), &e, clock)
    }

    /// Number of states.
    pub fn len(&self) -> usize {
        self.n
    }

    /// Whether there are no states (never, for a constructed chain).
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// The clock.
    pub fn clock(&self) -> Clock {
        self.clock
    }

    /// The off-diagonal entries `(i, j, k_ij)`, row by row.
    pub fn entries(&self) -> impl Iterator<Item = (usize, usize, f64)> + '_ {
        (0..self.n).flat_map(move |i| (self.ptr[i]..self.ptr[i + 1]).map(move |e| (i, self.col[e], self.rate[e])))
    }

    /// Number of off-diagonal entries.
    pub fn nnz(&self) -> usize {
        self.rate.len()
    }

    /// Exit rate `Σ_j k_ij` of each state.
    pub fn exit_rates(&self) -> Vec<f64> {
        (0..self.n).map(|i| self.rate[self.ptr[i]..self.ptr[i + 1]].iter().sum()).collect()
    }

    /// `k_ij` (0 when there is no such entry).
    pub fn rate(&self, i: usize, j: usize) -> f64 {
        let cols = &self.col[self.ptr[i]..self.ptr[i + 1]];
        cols.binary_search(&j).map(|k| self.rate[self.ptr[i] + k]).unwrap_or(0.0)
    }

    /// The strongly connected components of the transition graph, each
    /// sorted, ordered by their smallest state. One component means the
    /// chain is irreducible.
    pub fn components(&self) -> Vec<Vec<usize>> {
        // Iterative Tarjan.
        let n = self.n;
        let mut index = vec![usize::MAX; n];
        let mut low = vec![0usize; n];
        let mut on = vec![false; n];
        let mut stack = Vec::new();
        let mut comps: Vec<Vec<usize>> = Vec::new();
        let mut next = 0usize;
        for s in 0..n {
            if index[s] != usize::MAX {
                continue;
            }
            let mut call: Vec<(usize, usize)> = vec![(s, self.ptr[s])];
            index[s] = next;
            low[s] = next;
            next += 1;
            stack.push(s);
            on[s] = true;
            while let Some(&mut (v, ref mut e)) = call.last_mut() {
                if *e < self.ptr[v + 1] {
                    let w = self.col[*e];
                    *e += 1;
                    if index[w] == usize::MAX {
                        index[w] = next;
                        low[w] = next;
                        next += 1;
                        stack.push(w);
                        on[w] = true;
                        call.push((w, self.ptr[w]));
                    } else if on[w] {
                        low[v] = low[v].min(index[w]);
                    }
                } else {
                    call.pop();
                    if let Some(&(u, _)) = call.last() {
                        low[u] = low[u].min(low[v]);
                    }
                    if low[v] == index[v] {
                        let mut c = Vec::new();
                        while let Some(w) = stack.pop() {
                            on[w] = false;
                            c.push(w);
                            if w == v {
                                break;
                            }
                        }
                        c.sort_unstable();
                        comps.push(c);
                    }
                }
            }
        }
        comps.sort_by_key(|c| c[0]);
        comps
    }

    /// Fails, naming the components (with `names` for the states), unless
    /// the chain is irreducible.
    pub fn check_irreducible(&self, names: Option<&[String]>, source: &str) -> Result<(), ConformationError> {
        let comps = self.components();
        if comps.len() <= 1 {
            return Ok(());
        }
        let name = |i: usize| names.and_then(|n| n.get(i).cloned()).unwrap_or_else(|| format!("S{i}"));
        let show: Vec<String> = comps
            .iter()
            .take(6)
            .map(|c| {
                let mut s: Vec<String> = c.iter().take(8).map(|&i| name(i)).collect();
                if c.len() > 8 {
                    s.push(format!("… {} states", c.len()));
                }
                format!("{{{}}}", s.join(", "))
            })
            .collect();
        let more = if comps.len() > 6 { format!(" and {} more", comps.len() - 6) } else { String::new() };
        Err(invalid(format!(
            "{source}: the model is reducible: {} strongly connected components: {}{more}; \
             restrict it to one component (its largest connected set)",
            comps.len(),
            show.join(", ")
        )))
    }

    /// The state used to ground singular systems: the one with the most
    /// entries (ties: the smallest index).
    fn ground(&self) -> usize {
        (0..self.n).max_by_key(|&i| (self.ptr[i + 1] - self.ptr[i], std::cmp::Reverse(i))).unwrap_or(0)
    }

    /// The stationary distribution (`πK = 0`, `Σπ = 1`): the grounded
    /// system `Σ_{j≠r} π_j k_ji − π_i k_i = −k_ri` (`i ≠ r`, `π_r = 1`) by
    /// sparse LU, then normalised. Fails for a reducible chain.
    pub fn stationary(&self) -> Result<Vec<f64>, ConformationError> {
        self.check_irreducible(None, "stationary distribution")?;
        let n = self.n;
        if n == 1 {
            return Ok(vec![1.0]);
        }
        if let Some(pi) = self.reversible_pi() {
            return Ok(pi);
        }
        let r = self.ground();
        let idx = |i: usize| if i < r { i } else { i - 1 };
        let exit = self.exit_rates();
        let mut trip = Vec::with_capacity(n + self.nnz());
        let mut b = vec![0.0; n - 1];
        for (i, &ex) in exit.iter().enumerate() {
            if i != r {
                trip.push(Triplet::new(idx(i), idx(i), -ex));
            }
            for (j, k) in self.row(i) {
                // equation for column j: Σ_i π_i k_ij − π_j k_j = 0
                if j == r {
                    continue;
                }
                if i == r {
                    b[idx(j)] -= k;
                } else {
                    trip.push(Triplet::new(idx(j), idx(i), k));
                }
            }
        }
        let x = Factor::new(n - 1, &trip)?.solve(&b);
        let mut pi = Vec::with_capacity(n);
        for i in 0..n {
            pi.push(if i == r { 1.0 } else { x[idx(i)] });
        }
        let s: f64 = pi.iter().sum();
        if !(s.is_finite() && s > 0.0) || pi.iter().any(|v| !v.is_finite() || *v < 0.0 && v.abs() > 1e-12 * s) {
            return Err(invalid("the stationary distribution could not be computed (singular or ill-posed chain)"));
        }
        pi.iter_mut().for_each(|v| *v = (*v / s).max(0.0));
        Ok(pi)
    }

    /// The stationary distribution of a reversible chain by detailed
    /// balance along a breadth-first spanning tree (`ln π_j = ln π_i +
    /// ln k_ij − ln k_ji`), checked on every entry (relative defect ≤
    /// 1e-10); `None` when the chain is not reversible (or not connected).
    /// O(entries), no factorisation.
    pub fn reversible_pi(&self) -> Option<Vec<f64>> {
        let n = self.n;
        let root = self.ground();
        let mut lp = vec![f64::NAN; n];
        lp[root] = 0.0;
        let mut queue = std::collections::VecDeque::from([root]);
        while let Some(i) = queue.pop_front() {
            for (j, k) in self.row(i) {
                if lp[j].is_nan() {
                    let back = self.rate(j, i);
                    if back <= 0.0 {
                        return None;
                    }
                    lp[j] = lp[i] + k.ln() - back.ln();
                    queue.push_back(j);
                }
            }
        }
        if lp.iter().any(|v| v.is_nan()) {
            return None;
        }
        let top = lp.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let mut pi: Vec<f64> = lp.iter().map(|v| (v - top).exp()).collect();
        let s: f64 = pi.iter().sum();
        pi.iter_mut().for_each(|v| *v /= s);
        (self.reversibility_defect(&pi) <= 1e-10).then_some(pi)
    }

    fn row(&self, i: usize) -> impl Iterator<Item = (usize, f64)> + '_ {
        (self.ptr[i]..self.ptr[i + 1]).map(move |e| (self.col[e], self.rate[e]))
    }

    /// Largest relative detailed-balance defect `|π_i k_ij − π_j k_ji| /
    /// max(…)` over the entries.
    pub fn reversibility_defect(&self, pi: &[f64]) -> f64 {
        let mut worst: f64 = 0.0;
        for (i, j, k) in self.entries() {
            let (a, b) = (pi[i] * k, pi[j] * self.rate(j, i));
            let m = a.max(b);
            if m > 0.0 {
                worst = worst.max((a - b).abs() / m);
            }
        }
        worst
    }

    /// The `k` slowest eigenvalues `λ` of `K` (0 excluded), slowest first
    /// (real parts for a non-reversible chain), and whether the chain is
    /// reversible. Uses `pi` (the stationary distribution).
    pub fn slowest_eigenvalues(&self, pi: &[f64], k: usize) -> Result<Vec<f64>, ConformationError> {
        self.slowest_eigenvalues_with(pi, k, Eigensolver::Auto)
    }

    /// [`Chain::slowest_eigenvalues`] with a chosen eigensolver.
    pub fn slowest_eigenvalues_with(
        &self,
        pi: &[f64],
        k: usize,
        solver: Eigensolver,
    ) -> Result<Vec<f64>, ConformationError> {
        let n = self.n;
        let k = k.min(n.saturating_sub(1));
        if k == 0 {
            return Ok(Vec::new());
        }
        let reversible = self.reversibility_defect(pi) < 1e-8;
        if reversible {
            let dense = match solver {
                Eigensolver::Auto => n <= DENSE_MAX,
                Eigensolver::Dense => true,
                Eigensolver::Lanczos => n < 3,
            };
            if dense {
                let s = self.symmetrised_dense(pi);
                let ev = s
                    .self_adjoint_eigenvalues(Side::Lower)
                    .map_err(|e| invalid(format!("eigendecomposition failed: {e:?}")))?;
                // nondecreasing: the last is 0; order by the modulus of 1 + τλ in discrete time.
                let mut lam: Vec<f64> = ev[..n - 1].to_vec();
                self.sort_slowest(&mut lam);
                lam.truncate(k);
                Ok(lam)
            } else {
                let mut lam = self.lanczos(pi, k)?.0;
                self.sort_slowest(&mut lam);
                Ok(lam)
            }
        } else {
            if n > DENSE_MAX {
                return Err(invalid(format!(
                    "implied timescales of a non-reversible chain of {n} states: only up to {DENSE_MAX} states \
                     (dense eigensolver); the Krylov path needs detailed balance"
                )));
            }
            let exit = self.exit_rates();
            let a = Mat::from_fn(n, n, |i, j| if i == j { -exit[i] } else { self.rate(i, j) });
            let ev = a.eigenvalues().map_err(|e| invalid(format!("eigendecomposition failed: {e:?}")))?;
            let mut lam: Vec<f64> = ev.iter().map(|c| c.re).collect();
            // drop the stationary eigenvalue (the one closest to 0)
            if let Some(z) = (0..lam.len()).min_by(|&a, &b| lam[a].abs().total_cmp(&lam[b].abs())) {
                lam.remove(z);
            }
            self.sort_slowest(&mut lam);
            lam.truncate(k);
            Ok(lam)
        }
    }

    fn sort_slowest(&self, lam: &mut [f64]) {
        match self.clock {
            Clock::Continuous => lam.sort_by(|a, b| b.total_cmp(a)),
            Clock::Discrete { lag } => lam.sort_by(|a, b| (1.0 + lag * b).abs().total_cmp(&(1.0 + lag * a).abs())),
        }
    }

    /// Implied timescale of an eigenvalue `λ` of `K`: `−1/λ`, or in
    /// discrete time `−τ/ln|1 + τλ|`.
    pub fn timescale(&self, lambda: f64) -> f64 {
        match self.clock {
            Clock::Continuous => -1.0 / lambda,
            Clock::Discrete { lag } => {
                let x = lag * lambda;
                let l = if x > -1.0 { x.ln_1p() } else { (1.0 + x).abs().ln() };
                -lag / l
            }
        }
    }

    /// The `k` slowest implied timescales, slowest first.
    pub fn implied_timescales(&self, pi: &[f64], k: usize) -> Result<Vec<f64>, ConformationError> {
        Ok(self.slowest_eigenvalues(pi, k)?.into_iter().map(|l| self.timescale(l)).collect())
    }

    /// Symmetric off-diagonal entry `S_ij = sqrt(k_ij k_ji)` (equal to
    /// `√(π_i/π_j) k_ij` under detailed balance).
    fn sym_entry(&self, pi: &[f64], i: usize, j: usize, k: f64) -> f64 {
        let b = self.rate(j, i);
        if b > 0.0 {
            (k * b).sqrt()
        } else {
            (pi[i] / pi[j]).sqrt() * k
        }
    }

    fn symmetrised_dense(&self, pi: &[f64]) -> Mat<f64> {
        let n = self.n;
        let exit = self.exit_rates();
        let mut s = Mat::<f64>::zeros(n, n);
        for i in 0..n {
            s[(i, i)] = -exit[i];
        }
        for (i, j, k) in self.entries() {
            s[(i, j)] = self.sym_entry(pi, i, j, k);
        }
        s
    }

    /// Lanczos with full reorthogonalisation on `S⁺` restricted to the
    /// complement of `√π`: the `k` eigenvalues of `S` closest to 0.
    /// The `k` slowest eigenpairs `(λ, u)` of a reversible chain: `u` the
    /// unit eigenvector of the symmetrisation `S = Π^{1/2} K Π^{−1/2}`
    /// (right eigenvector of `K`: `u/√π`; left: `u·√π`), slowest first.
    /// Dense up to [`DENSE_MAX`] states, Lanczos above. Fails for a
    /// non-reversible chain.
    pub fn slowest_eigenpairs(&self, pi: &[f64], k: usize) -> Result<Vec<(f64, Vec<f64>)>, ConformationError> {
        let n = self.n;
        let k = k.min(n.saturating_sub(1));
        if k == 0 {
            return Ok(Vec::new());
        }
        if self.reversibility_defect(pi) >= 1e-8 {
            return Err(invalid("eigenvectors (timescale sensitivities) need a reversible chain"));
        }
        let mut pairs: Vec<(f64, Vec<f64>)> = if n <= DENSE_MAX {
            let evd = self
                .symmetrised_dense(pi)
                .self_adjoint_eigen(Side::Lower)
                .map_err(|e| invalid(format!("eigendecomposition failed: {e:?}")))?;
            let (u, s) = (evd.U(), evd.S());
            (0..n - 1).map(|c| (s[c], (0..n).map(|i| u[(i, c)]).collect())).collect()
        } else {
            let (lam, vecs) = self.lanczos(pi, k)?;
            lam.into_iter().zip(vecs).collect()
        };
        let mut lam: Vec<f64> = pairs.iter().map(|p| p.0).collect();
        self.sort_slowest(&mut lam);
        let mut out = Vec::with_capacity(k);
        for l in lam.into_iter().take(k) {
            if let Some(pos) = pairs.iter().position(|p| p.0 == l) {
                out.push(pairs.swap_remove(pos));
            }
        }
        Ok(out)
    }

    fn lanczos(&self, pi: &[f64], k: usize) -> Result<(Vec<f64>, Vec<Vec<f64>>), ConformationError> {
        let n = self.n;
        let exit = self.exit_rates();
        let r = self.ground();
        let idx = |i: usize| if i < r { i } else { i - 1 };
        let mut trip = Vec::with_capacity(n + self.nnz());
        for (i, &ex) in exit.iter().enumerate() {
            if i == r {
                continue;
            }
            trip.push(Triplet::new(idx(i), idx(i), ex));
            for (j, kij) in self.row(i) {
                if j != r {
                    trip.push(Triplet::new(idx(i), idx(j), -self.sym_entry(pi, i, j, kij)));
                }
            }
        }
        // −S grounded is symmetric positive definite: Cholesky.
        let f = Factor::new_spd(n - 1, &trip)?;
        let s: f64 = pi.iter().map(|p| p.sqrt() * p.sqrt()).sum::<f64>().sqrt();
        let v: Vec<f64> = pi.iter().map(|p| p.sqrt() / s).collect();
        let project = |x: &mut [f64]| {
            let d: f64 = x.iter().zip(&v).map(|(a, b)| a * b).sum();
            x.iter_mut().zip(&v).for_each(|(a, b)| *a -= d * b);
        };
        let op = |x: &[f64]| -> Vec<f64> {
            let b: Vec<f64> = (0..n).filter(|&i| i != r).map(|i| -x[i]).collect();
            let y = f.solve(&b); // (−S_g) y = −x  ⇒  y = S_g⁻¹ x
            let mut out = vec![0.0; n];
            for i in 0..n {
                if i != r {
                    out[i] = y[idx(i)];
                }
            }
            project(&mut out);
            out
        };
        let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
        // deterministic start vector
        let mut q: Vec<f64> = (0..n).map(|i| 1.0 + 0.5 * ((i as f64) * 0.618_033_988_75).fract()).collect();
        project(&mut q);
        let nq = dot(&q, &q).sqrt();
        q.iter_mut().for_each(|x| *x /= nq);
        let mmax = (n - 1).min(400);
        let mut basis: Vec<Vec<f64>> = vec![q];
        let mut alpha: Vec<f64> = Vec::new();
        let mut beta: Vec<f64> = Vec::new();
        let mut result = None;
        for j in 0..mmax {
            let mut w = op(&basis[j]);
            let a = dot(&w, &basis[j]);
            alpha.push(a);
            // full reorthogonalisation, twice
            for _ in 0..2 {
                for b in &basis {
                    let d = dot(&w, b);
                    w.iter_mut().zip(b).for_each(|(x, y)| *x -= d * y);
                }
                project(&mut w);
            }
            let bn = dot(&w, &w).sqrt();
            let m = alpha.len();
            let check = m >= k + 2 && (m.is_multiple_of(2) || bn < 1e-14 || m == mmax);
            if check || m == n - 1 {
                // Ritz values and residuals
                let t = tridiagonal(&alpha, &beta);
                let evd = t
                    .self_adjoint_eigen(Side::Lower)
                    .map_err(|e| invalid(format!("Lanczos eigendecomposition failed: {e:?}")))?;
                let (u, th) = (evd.U(), evd.S());
                // most negative θ = 1/λ: the slowest; they come first (nondecreasing)
                let mut ok = true;
                let mut out = Vec::with_capacity(k);
                for c in 0..k.min(m) {
                    let theta = th[c];
                    let res = (bn * u[(m - 1, c)]).abs();
                    if res > 1e-12 * theta.abs() {
                        ok = false;
                    }
                    out.push(1.0 / theta);
                }
                if (ok && out.len() == k) || bn < 1e-14 || m == n - 1 || m == mmax {
                    // Ritz vectors
                    let vecs: Vec<Vec<f64>> = (0..out.len())
                        .map(|c| {
                            let mut x = vec![0.0; n];
                            for (b, q) in basis.iter().enumerate().take(m) {
                                let y = u[(b, c)];
                                x.iter_mut().zip(q).for_each(|(a, qv)| *a += y * qv);
                            }
                            let nx = dot(&x, &x).sqrt();
                            x.iter_mut().for_each(|a| *a /= nx);
                            x
                        })
                        .collect();
                    result = Some((out, vecs));
                    break;
                }
            }
            beta.push(bn);
            w.iter_mut().for_each(|x| *x /= bn);
            basis.push(w);
        }
        result.ok_or_else(|| invalid("Lanczos iteration did not converge"))
    }

    fn check_set(&self, set: &[usize], what: &str) -> Result<(), ConformationError> {
        if set.is_empty() {
            return Err(invalid(format!("{what} is empty")));
        }
        if let Some(&i) = set.iter().find(|&&i| i >= self.n) {
            return Err(invalid(format!("{what} lists state {i}; the model has {} states", self.n)));
        }
        Ok(())
    }

    /// Mean first-passage time from each state to the set `to` (0 on it),
    /// in time units: `K m = −1` off `to` (deeptime's `mfpt(T, target,
    /// tau=lag)` in discrete time).
    pub fn mfpt_vector(&self, to: &[usize]) -> Result<Vec<f64>, ConformationError> {
        self.check_set(to, "the target set")?;
        let mut target = vec![false; self.n];
        to.iter().for_each(|&i| target[i] = true);
        let rhs = vec![-1.0; self.n];
        self.dirichlet(&target, &vec![0.0; self.n], &rhs, false, None)
    }

    /// Mean first-passage time from the set `from` (started in the
    /// stationary distribution `pi` restricted to it) to the set `to`.
    pub fn mfpt(&self, pi: &[f64], from: &[usize], to: &[usize]) -> Result<f64, ConformationError> {
        self.check_set(from, "the origin set")?;
        let m = self.mfpt_vector(to)?;
        let (mut num, mut den) = (0.0, 0.0);
        for &i in from {
            num += pi[i] * m[i];
            den += pi[i];
        }
        Ok(num / den)
    }

    /// Solves `Σ_{j∉fixed} K_ij x_j = rhs_i − Σ_{j∈fixed} K_ij x_j` for
    /// the states not `fixed` (`x = value` on them); with `reversed`, on
    /// the time-reversed chain `k̃_ij = π_j k_ji / π_i`.
    fn dirichlet(
        &self,
        fixed: &[bool],
        value: &[f64],
        rhs: &[f64],
        reversed: bool,
        pi: Option<&[f64]>,
    ) -> Result<Vec<f64>, ConformationError> {
        let n = self.n;
        let mut idx = vec![usize::MAX; n];
        let mut m = 0;
        for i in 0..n {
            if !fixed[i] {
                idx[i] = m;
                m += 1;
            }
        }
        let mut x: Vec<f64> = (0..n).map(|i| if fixed[i] { value[i] } else { 0.0 }).collect();
        if m == 0 {
            return Ok(x);
        }
        let exit = self.exit_rates();
        if let Some(rpi) = self.reversible_pi() {
            // Reversible: the time-reversed chain is the chain, and with
            // D = diag(√π) the system is (−D K D⁻¹)_FF (D x)_F = −D b':
            // symmetric positive definite, by Cholesky.
            let d: Vec<f64> = rpi.iter().map(|p| p.sqrt()).collect();
            let mut b: Vec<f64> = (0..n).filter(|&i| !fixed[i]).map(|i| rhs[i]).collect();
            let mut trip = Vec::with_capacity(m + self.nnz());
            for i in 0..n {
                if !fixed[i] {
                    trip.push(Triplet::new(idx[i], idx[i], exit[i]));
                }
            }
            for (i, j, k) in self.entries() {
                if fixed[i] {
                    continue;
                }
                if fixed[j] {
                    b[idx[i]] -= k * value[j];
                } else {
                    trip.push(Triplet::new(idx[i], idx[j], -self.sym_entry(&rpi, i, j, k)));
                }
            }
            let bs: Vec<f64> = (0..n).filter(|&i| !fixed[i]).map(|i| -d[i] * b[idx[i]]).collect();
            let y = Factor::new_spd(m, &trip)?.solve(&bs);
            for i in 0..n {
                if !fixed[i] {
                    x[i] = y[idx[i]] / d[i];
                }
            }
            return Ok(x);
        }
        let mut b: Vec<f64> = (0..n).filter(|&i| !fixed[i]).map(|i| rhs[i]).collect();
        let mut trip = Vec::with_capacity(m + self.nnz());
        for i in 0..n {
            if !fixed[i] {
                trip.push(Triplet::new(idx[i], idx[i], -exit[i]));
            }
        }
        for (i, j, k) in self.entries() {
            // entry (row, col, value) of the (possibly reversed) generator
            let (row, colm, v) = match (reversed, pi) {
                (true, Some(pi)) => (j, i, pi[i] * k / pi[j]),
                _ => (i, j, k),
            };
            if fixed[row] {
                continue;
            }
            if fixed[colm] {
                b[idx[row]] -= v * value[colm];
            } else {
                trip.push(Triplet::new(idx[row], idx[colm], v));
            }
        }
        let y = Factor::new(m, &trip)?.solve(&b);
        for i in 0..n {
            if !fixed[i] {
                x[i] = y[idx[i]];
            }
        }
        Ok(x)
    }

    fn ab_masks(&self, a: &[usize], b: &[usize]) -> Result<(Vec<bool>, Vec<bool>), ConformationError> {
        self.check_set(a, "set A")?;
        self.check_set(b, "set B")?;
        let mut ma = vec![false; self.n];
        let mut mb = vec![false; self.n];
        a.iter().for_each(|&i| ma[i] = true);
        b.iter().for_each(|&i| mb[i] = true);
        if let Some(i) = (0..self.n).find(|&i| ma[i] && mb[i]) {
            return Err(invalid(format!("state {i} is in both A and B")));
        }
        Ok((ma, mb))
    }

    /// Forward committor `q⁺` of `A → B`: 0 on A, 1 on B, `K q = 0`
    /// elsewhere (deeptime's `committor(T, A, B, forward=True)`).
    pub fn committor_forward(&self, a: &[usize], b: &[usize]) -> Result<Vec<f64>, ConformationError> {
        let (ma, mb) = self.ab_masks(a, b)?;
        let fixed: Vec<bool> = ma.iter().zip(&mb).map(|(x, y)| *x || *y).collect();
        let value: Vec<f64> = mb.iter().map(|&y| if y { 1.0 } else { 0.0 }).collect();
        self.dirichlet(&fixed, &value, &vec![0.0; self.n], false, None)
    }

    /// Backward committor `q⁻` of `A → B`: 1 on A, 0 on B, harmonic for
    /// the time-reversed chain (`1 − q⁺` for a reversible one).
    pub fn committor_backward(&self, pi: &[f64], a: &[usize], b: &[usize]) -> Result<Vec<f64>, ConformationError> {
        let (ma, mb) = self.ab_masks(a, b)?;
        let fixed: Vec<bool> = ma.iter().zip(&mb).map(|(x, y)| *x || *y).collect();
        let value: Vec<f64> = ma.iter().map(|&x| if x { 1.0 } else { 0.0 }).collect();
        self.dirichlet(&fixed, &value, &vec![0.0; self.n], true, Some(pi))
    }

    /// Transition-path theory of `A → B` (deeptime's `reactive_flux`):
    /// gross flux `f_ij = π_i q⁻_i k_ij q⁺_j`, net flux
    /// `max(f_ij − f_ji, 0)`, total flux out of A, rate `F / Σ π q⁻`.
    pub fn tpt(&self, pi: &[f64], a: &[usize], b: &[usize]) -> Result<Tpt, ConformationError> {
        let forward = self.committor_forward(a, b)?;
        let backward = if self.reversibility_defect(pi) < 1e-8 {
            forward.iter().map(|q| 1.0 - q).collect()
        } else {
            self.committor_backward(pi, a, b)?
        };
        let mut in_a = vec![false; self.n];
        a.iter().for_each(|&i| in_a[i] = true);
        let mut total = 0.0;
        for &i in a {
            for (j, k) in self.row(i) {
                if in_a[j] {
                    continue;
                }
                let f = pi[i] * backward[i] * k * forward[j];
                let g = pi[j] * backward[j] * self.rate(j, i) * forward[i];
                total += (f - g).max(0.0);
            }
        }
        let z: f64 = pi.iter().zip(&backward).map(|(p, q)| p * q).sum();
        Ok(Tpt { forward, backward, total_flux: total, rate: total / z })
    }
}

impl MasterEquation {
    /// A master equation whose rates at its default parameters are the
    /// chain's (in discrete time the rates of `K = (T − I)/τ`), so that
    /// free-energy perturbations act on a Markov model as on a landscape:
    /// `G_i = −kT ln π_i` (`π` by sparse LU) and prefactors
    /// `a_ij = k_ij √(π_i/π_j)`, made exactly symmetric
    /// (`a_ij = √(k_ij k_ji)`) when the chain satisfies detailed balance to
    /// 1e-10. Sparse throughout (no dense step).
    pub fn from_chain(chain: &Chain, kt: f64) -> Result<Self, ConformationError> {
        let pi = chain.stationary()?;
        if let Some(i) = pi.iter().position(|p| *p <= 0.0) {
            return Err(invalid(format!("state {i} has zero stationary probability")));
        }
        let reversible = chain.reversibility_defect(&pi) < 1e-10;
        let g0: Vec<f64> = pi.iter().map(|p| -kt * p.ln()).collect();
        let edges: Vec<(usize, usize, f64)> = chain
            .entries()
            .map(|(i, j, k)| {
                let a = if reversible { (k * chain.rate(j, i)).sqrt() } else { k * (pi[i] / pi[j]).sqrt() };
                (i, j, a)
            })
            .collect();
        MasterEquation::from_edges(g0, &edges, kt)
    }
}

impl Chain {
    /// The chain of a master equation at `p` with a clock; in discrete time
    /// `T = I + τK(θ)` must stay a transition matrix (`τ·Σ_j k_ij ≤ 1`),
    /// else an error naming the first state where it does not.
    pub fn from_master_checked(me: &MasterEquation, p: &[f64], clock: Clock) -> Result<Self, ConformationError> {
        let c = Chain::from_master(me, p, clock)?;
        if let Clock::Discrete { lag } = clock {
            if let Some((i, e)) = c.exit_rates().iter().enumerate().find(|(_, e)| lag * **e > 1.0 + 1e-12) {
                return Err(invalid(format!(
                    "at these parameters T = I + τK has diagonal {:.3e} < 0 at state {i}: the perturbation is too \
                     strong for the lag time {lag} (use a rate matrix, or a shorter lag)",
                    1.0 - lag * e
                )));
            }
        }
        Ok(c)
    }

    /// One step of the discrete-time chain: `p T = p + τ p K`.
    pub fn step(&self, p: &[f64]) -> Vec<f64> {
        let lag = match self.clock {
            Clock::Discrete { lag } => lag,
            Clock::Continuous => 1.0,
        };
        let mut out = p.to_vec();
        for (i, j, k) in self.entries() {
            let f = lag * k * p[i];
            out[i] -= f;
            out[j] += f;
        }
        out
    }
}
