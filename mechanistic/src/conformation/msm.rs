//! Markov state models from CSV: a rate matrix, or a transition matrix
//! with its lag time.
//!
//! ## File format
//! One row per state, one comma-separated column per state: entry `(i, j)`
//! (row `i`, column `j`, both 0-based in the matrix) is the rate (1/time) or
//! the probability of going from state `i` to state `j`, the usual MSM
//! convention (rows of a rate matrix sum to zero, rows of a transition
//! matrix to one). An optional first line of state names is recognised by
//! its first field not being a number. Blank lines and lines starting with
//! `#` are skipped. Errors name the file, the line and the column.
//!
//! ```text
//! # three-state rate matrix, 1/µs
//! A,B,C
//! -0.3,0.2,0.1
//! 0.05,-0.05,0
//! 0.02,0,-0.02
//! ```

use std::path::Path;

use faer::linalg::solvers::Solve;
use faer::{Mat, Side};

use super::master::MasterEquation;
use super::ConformationError;

/// A square matrix read from CSV, with optional state names.
#[derive(Debug, Clone, PartialEq)]
pub struct MsmMatrix {
    /// State names (from the header line, or `S0`, `S1`, … when there is none).
    pub names: Vec<String>,
    /// Rows of the matrix.
    pub rows: Vec<Vec<f64>>,
    /// Where it came from (for error messages).
    pub source: String,
    /// File line of each row (1-based).
    pub lines: Vec<usize>,
}

impl MsmMatrix {
    /// Parses CSV text; `source` names it in errors.
    pub fn parse(text: &str, source: &str) -> Result<Self, ConformationError> {
        let err = |line: usize, column: usize, reason: String| ConformationError::Csv {
            file: source.to_string(),
            line,
            column,
            reason,
        };
        let mut names: Option<Vec<String>> = None;
        let mut rows = Vec::new();
        let mut lines = Vec::new();
        for (k, raw) in text.lines().enumerate() {
            let line = k + 1;
            let t = raw.trim();
            if t.is_empty() || t.starts_with('#') {
                continue;
            }
            let fields: Vec<&str> = t.split(',').map(|f| f.trim()).collect();
            if names.is_none() && rows.is_empty() && fields[0].parse::<f64>().is_err() {
                names = Some(fields.iter().map(|s| s.to_string()).collect());
                continue;
            }
            let mut row = Vec::with_capacity(fields.len());
            for (c, f) in fields.iter().enumerate() {
                let v: f64 = f.parse().map_err(|_| err(line, c + 1, format!("`{f}` is not a number")))?;
                if !v.is_finite() {
                    return Err(err(line, c + 1, format!("`{f}` is not finite")));
                }
                row.push(v);
            }
            rows.push(row);
            lines.push(line);
        }
        let n = rows.len();
        if n == 0 {
            return Err(err(1, 1, "no matrix rows found".into()));
        }
        for (row, &line) in rows.iter().zip(&lines) {
            if row.len() != n {
                return Err(err(
                    line,
                    row.len().min(n) + 1,
                    format!("row has {} columns, expected {n} (a square matrix)", row.len()),
                ));
            }
        }
        let names = match names {
            Some(h) if h.len() == n => h,
            Some(h) => {
                let line =
                    text.lines().position(|l| !l.trim().is_empty() && !l.trim().starts_with('#')).unwrap_or(0) + 1;
                return Err(err(line, 1, format!("header has {} names for a {n}-state matrix", h.len())));
            }
            None => (0..n).map(|i| format!("S{i}")).collect(),
        };
        Ok(MsmMatrix { names, rows, source: source.to_string(), lines })
    }

    /// Reads and parses a CSV file.
    pub fn read(path: impl AsRef<Path>) -> Result<Self, ConformationError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| ConformationError::Csv {
            file: path.display().to_string(),
            line: 0,
            column: 0,
            reason: format!("cannot read the file: {e}"),
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    fn n(&self) -> usize {
        self.rows.len()
    }

    fn err(&self, row: usize, col: usize, reason: String) -> ConformationError {
        ConformationError::Csv { file: self.source.clone(), line: self.lines[row], column: col + 1, reason }
    }
}

/// Relative size (to the row's largest entry) of a negative off-diagonal
/// entry of `log(T)/τ` still taken as round-off.
const LOG_NEGATIVE_TOL: f64 = 1e-8;

/// How a transition matrix `T(τ)` becomes a rate matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateEstimate {
    /// `Q = log(T)/τ`, through the eigendecomposition of the symmetrised
    /// `Π^{1/2} T Π^{−1/2}` (requires a reversible `T` with positive
    /// eigenvalues); negative off-diagonal rates of the logarithm down to
    /// `−1e-8` of the row's largest entry (round-off) are set to zero and the
    /// diagonal restored, larger ones are an error naming the entry. Exact for a `T` that is the propagator of a reversible
    /// master equation.
    MatrixLog,
    /// `Q = (T − I)/τ`: first order in τ, always a valid generator.
    FirstOrder,
}

/// Stationary distribution of a row-convention rate matrix `q` (`π q = 0`),
/// by a dense LU solve with the normalisation replacing one equation.
fn stationary_rows(q: &[Vec<f64>]) -> Option<Vec<f64>> {
    let n = q.len();
    // (qᵀ with the last row replaced by ones) π = e_n
    let a = Mat::from_fn(n, n, |i, j| if i == n - 1 { 1.0 } else { q[j][i] });
    let mut b = Mat::from_fn(n, 1, |i, _| if i == n - 1 { 1.0 } else { 0.0 });
    a.partial_piv_lu().solve_in_place(b.as_mut());
    let pi: Vec<f64> = (0..n).map(|i| b[(i, 0)]).collect();
    pi.iter().all(|v| v.is_finite() && *v > 0.0).then_some(pi)
}

impl MasterEquation {
    /// A master equation from a row-convention rate matrix (`q[i][j]` is the
    /// rate from `i` to `j`; the diagonal is recomputed from the
    /// off-diagonal entries) at temperature `kt`.
    ///
    /// The base free energies are `G_i = −kT·ln π_i` with `π` the stationary
    /// distribution, and the prefactors `a_ij = q_ij·sqrt(π_i/π_j)`, so the
    /// model reproduces `q` exactly at the default parameters, and
    /// perturbations act on it as on a landscape. The model is reversible
    /// when `q` satisfies detailed balance
    /// ([`MasterEquation::detailed_balance_defect`]).
    pub fn from_rate_matrix(q: &MsmMatrix, kt: f64) -> Result<Self, ConformationError> {
        let n = q.n();
        for (i, row) in q.rows.iter().enumerate() {
            let scale = row.iter().map(|v| v.abs()).fold(0.0, f64::max);
            let mut sum = 0.0;
            for (j, &v) in row.iter().enumerate() {
                if i != j && v < 0.0 {
                    return Err(q.err(i, j, format!("off-diagonal rate {v} is negative")));
                }
                sum += v;
            }
            if sum.abs() > 1e-6 * scale.max(f64::MIN_POSITIVE) {
                return Err(q.err(i, i, format!("row sums to {sum:e}, a rate matrix's rows sum to zero")));
            }
        }
        let mut rows = q.rows.clone();
        for (i, row) in rows.iter_mut().enumerate() {
            row[i] = -(0..n).filter(|&j| j != i).map(|j| row[j]).sum::<f64>();
        }
        let pi = stationary_rows(&rows).ok_or_else(|| {
            q.err(0, 0, "the rate matrix is not irreducible (no strictly positive stationary distribution)".into())
        })?;
        let g0: Vec<f64> = pi.iter().map(|p| -kt * p.ln()).collect();
        let mut edges = Vec::new();
        for (i, row) in rows.iter().enumerate() {
            for (j, &v) in row.iter().enumerate() {
                if i != j && v > 0.0 {
                    edges.push((i, j, v * (pi[i] / pi[j]).sqrt()));
                }
            }
        }
        MasterEquation::from_edges(g0, &edges, kt)
    }

    /// A master equation from a row-stochastic transition matrix `t` at lag
    /// time `lag`, converted to rates by `method` (see [`RateEstimate`]).
    pub fn from_transition_matrix(
        t: &MsmMatrix,
        lag: f64,
        kt: f64,
        method: RateEstimate,
    ) -> Result<Self, ConformationError> {
        let n = t.n();
        if !(lag.is_finite() && lag > 0.0) {
            return Err(ConformationError::Invalid(format!("lag time {lag} must be positive")));
        }
        for (i, row) in t.rows.iter().enumerate() {
            for (j, &v) in row.iter().enumerate() {
                if !(0.0..=1.0).contains(&v) {
                    return Err(t.err(i, j, format!("transition probability {v} is outside [0, 1]")));
                }
            }
            let sum: f64 = row.iter().sum();
            if (sum - 1.0).abs() > 1e-6 {
                return Err(t.err(i, n - 1, format!("row sums to {sum}, a transition matrix's rows sum to one")));
            }
        }
        let q: Vec<Vec<f64>> = match method {
            RateEstimate::FirstOrder => (0..n)
                .map(|i| (0..n).map(|j| (t.rows[i][j] - if i == j { 1.0 } else { 0.0 }) / lag).collect())
                .collect(),
            RateEstimate::MatrixLog => {
                let qt: Vec<Vec<f64>> =
                    (0..n).map(|i| (0..n).map(|j| t.rows[i][j] - if i == j { 1.0 } else { 0.0 }).collect()).collect();
                let pi = stationary_rows(&qt)
                    .ok_or_else(|| t.err(0, 0, "the transition matrix is not irreducible".into()))?;
                let mut worst: f64 = 0.0;
                for i in 0..n {
                    for j in 0..n {
                        let (a, b) = (pi[i] * t.rows[i][j], pi[j] * t.rows[j][i]);
                        worst = worst.max((a - b).abs() / a.max(b).max(f64::MIN_POSITIVE));
                    }
                }
                if worst > 1e-6 {
                    return Err(ConformationError::Invalid(format!(
                        "{}: the transition matrix is not reversible (detailed balance off by {worst:e} relative); \
                         use RateEstimate::FirstOrder",
                        t.source
                    )));
                }
                let sq: Vec<f64> = pi.iter().map(|p| p.sqrt()).collect();
                let s = Mat::from_fn(n, n, |i, j| 0.5 * (sq[i] * t.rows[i][j] / sq[j] + sq[j] * t.rows[j][i] / sq[i]));
                let evd = s.self_adjoint_eigen(Side::Lower).map_err(|e| {
                    ConformationError::Invalid(format!("{}: eigendecomposition failed: {e:?}", t.source))
                })?;
                let (u, lam) = (evd.U(), evd.S());
                let lam: Vec<f64> = (0..n).map(|k| lam[k]).collect();
                if let Some(&l) = lam.iter().find(|l| **l <= 0.0) {
                    return Err(ConformationError::Invalid(format!(
                        "{}: the transition matrix has eigenvalue {l:e} <= 0, so it has no real logarithm; \
                         use a shorter lag time or RateEstimate::FirstOrder",
                        t.source
                    )));
                }
                let ll: Vec<f64> = lam.iter().map(|l| l.ln() / lag).collect();
                let mut q = vec![vec![0.0; n]; n];
                for (i, qi) in q.iter_mut().enumerate() {
                    for (j, qij) in qi.iter_mut().enumerate() {
                        if i == j {
                            continue;
                        }
                        let s: f64 = (0..n).map(|k| u[(i, k)] * ll[k] * u[(j, k)]).sum();
                        // back from the symmetrised form: Q = Π^{-1/2} S_log Π^{1/2}
                        *qij = s * sq[j] / sq[i];
                    }
                }
                // Round-off negatives are clipped; a real negative rate means
                // log(T)/τ is not a generator (no Markov jump process has this T).
                for (i, qi) in q.iter_mut().enumerate() {
                    let scale = qi.iter().map(|v| v.abs()).fold(0.0, f64::max);
                    for (j, qij) in qi.iter_mut().enumerate() {
                        if i != j && *qij < -LOG_NEGATIVE_TOL * scale {
                            return Err(t.err(
                                i,
                                j,
                                format!(
                                    "log(T)/τ is not a valid generator: rate {:e} from state {i} to {j} is negative \
                                     (no continuous-time Markov process has this transition matrix); use \
                                     RateEstimate::FirstOrder (Q = (T − I)/τ), a shorter lag time, or analyse T in \
                                     discrete time (a transition-matrix model)",
                                    *qij
                                ),
                            ));
                        }
                        if i != j {
                            *qij = qij.max(0.0);
                        }
                    }
                }
                q
            }
        };
        let mut rows = q;
        for (i, row) in rows.iter_mut().enumerate() {
            row[i] = -(0..n).filter(|&j| j != i).map(|j| row[j]).sum::<f64>();
        }
        let m = MsmMatrix { names: t.names.clone(), rows, source: t.source.clone(), lines: t.lines.clone() };
        MasterEquation::from_rate_matrix(&m, kt)
    }

    /// Reads a rate-matrix CSV (see the [module docs](self)).
    pub fn read_rate_csv(path: impl AsRef<Path>, kt: f64) -> Result<Self, ConformationError> {
        Self::from_rate_matrix(&MsmMatrix::read(path)?, kt)
    }

    /// Reads a transition-matrix CSV with its lag time.
    pub fn read_transition_csv(
        path: impl AsRef<Path>,
        lag: f64,
        kt: f64,
        method: RateEstimate,
    ) -> Result<Self, ConformationError> {
        Self::from_transition_matrix(&MsmMatrix::read(path)?, lag, kt, method)
    }
}
