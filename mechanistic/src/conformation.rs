//! Protein conformational ensembles: the master equation `dp/dt = K p` over
//! conformational states, built from a Markov state model or from a
//! free-energy landscape, with perturbations that keep detailed balance.
//!
//! ## Where `K` comes from
//! * **A landscape** ([`Landscape`] on a 1-D or 2-D [`Grid`], from values or a
//!   function such as [`mueller_brown`]) through the square-root
//!   approximation of Smoluchowski dynamics ([`MasterEquation::sqra`]):
//!   between neighbouring cells at spacing `h`,
//!   `r_{i→j} = (D/h²)·exp(−(V_j − V_i)/(2kT))`, no flux through the outer
//!   boundary. `D` in length²/time, `V` and `kT` in the same energy unit.
//! * **A Markov state model** read from CSV ([`msm`]): a rate matrix
//!   ([`MasterEquation::read_rate_csv`]) or a transition matrix with its lag
//!   time ([`MasterEquation::read_transition_csv`], converted by matrix
//!   logarithm or to first order, see [`RateEstimate`]).
//!
//! Internally every model is `r_{i→j} = a_ij·exp(−(G_j − G_i)/(2kT))` with
//! base free energies `G⁰` (the landscape, or `−kT ln π` of the MSM) and
//! prefactors `a_ij` (symmetric when the model is reversible). `K_ji = r_{i→j}`,
//! `K_ii = −Σ_j r_{i→j}`: columns sum to zero, and the right-hand side is
//! assembled flux by flux, so `Σ p = 1` holds to round-off (declared through
//! [`System::invariants`](insilico_solvers::System::invariants)).
//!
//! ## Perturbations ([`Perturbation`])
//! Each adds to the free energies, scaled by one parameter:
//! per-state `ΔΔG` of a mutation, ligand binding
//! (`ΔG_i = −kT·ln(1 + L/Kd_i)` for the states that bind, `L` the ligand
//! concentration), an added well ([`Grid::well`]), a linear tilt from a
//! force ([`Grid::tilt`]). Temperature is the first parameter `kT`. Because
//! rates split every free-energy difference symmetrically, detailed balance
//! holds by construction and the equilibrium is `π_i ∝ exp(−G_i/kT)`
//! ([`MasterEquation::boltzmann`]).
//!
//! Parameters: `θ = [kT, amplitude₁, amplitude₂, …]`. The generator is
//! assembled once per parameter vector and cached. Its Jacobian is `K`
//! itself: given as an exact sparse pattern and values (one diagonal entry
//! per state, one entry per directed edge).
//!
//! ## Analysis ([`analysis`])
//! Basin populations over time (the outputs, [`MasterEquation::with_basins`]),
//! the stationary distribution ([`analysis::stationary`]), implied
//! timescales and how a perturbation shifts them
//! ([`analysis::implied_timescales`], [`analysis::timescale_shifts`]), mean
//! first-passage times between basins
//! ([`analysis::mean_first_passage_time`]), and the exact propagator
//! `exp(Kt)` by eigendecomposition of the symmetrised generator
//! ([`analysis::Spectral`]), the reference for solver checks.
//!
//! ## Reference problem P3
//! [`p3`] builds the Mueller–Brown model on the 64 × 64 grid with
//! `kT = 20`, `D = 1`, the ligand well as a perturbation of depth 30, and
//! basins A, B, C.
//!
//! # Example
//! ```
//! use insilico_mechanistic::conformation::{analysis, Grid, Landscape, MasterEquation, Perturbation};
//!
//! // A 1-D double well; a ligand binds the right-hand states.
//! let grid = Grid::new_1d(40, -1.5, 1.5).unwrap();
//! let land = Landscape::from_fn(grid, |x, _| 4.0 * (x * x - 1.0).powi(2)).unwrap();
//! let kd: Vec<f64> = (0..40).map(|i| if i >= 20 { 1.0 } else { f64::INFINITY }).collect();
//! let me = MasterEquation::sqra(&land, 1.0, 1.0).unwrap()
//!     .with_perturbation(Perturbation::Ligand { name: "L".into(), kd }).unwrap()
//!     .with_basins(vec![("left".into(), (0..20).collect()), ("right".into(), (20..40).collect())]).unwrap();
//! let apo = me.basin_populations(&me.boltzmann(&[1.0, 0.0]));
//! let holo = me.basin_populations(&me.boltzmann(&[1.0, 9.0])); // L = 9 Kd: right states stabilised ×10
//! assert!((apo[1] - 0.5).abs() < 1e-12);
//! assert!((holo[1] / holo[0] - 10.0).abs() < 1e-9);
//! let mfpt = analysis::mean_first_passage_time(&me, &[1.0, 0.0], &me.basins()[0].1, &me.basins()[1].1).unwrap();
//! assert!(mfpt > 0.0);
//! ```

pub mod analysis;
pub mod interchange;
pub mod landscape;
pub mod markov;
pub mod master;
pub mod msm;
pub mod pcca;
pub mod propagate;
pub mod sensitivity;

pub use interchange::{MatrixFile, MatrixKind};
pub use landscape::{mueller_brown, Grid, Landscape};
pub use markov::{Chain, Clock, Eigensolver, Tpt};
pub use master::{Generator, MasterEquation, Perturbation};
pub use msm::{MsmMatrix, RateEstimate};
pub use pcca::{pcca, Pcca};
pub use propagate::PropagateStats;

/// Errors of the conformation models.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConformationError {
    /// A CSV file (or text) that cannot be read as an MSM matrix.
    #[error("{file}, line {line}, column {column}: {reason}")]
    Csv {
        /// File name (or the source label given to the parser).
        file: String,
        /// 1-based line (0 when the file could not be read at all).
        line: usize,
        /// 1-based column.
        column: usize,
        /// What is wrong.
        reason: String,
    },
    /// A matrix file (`.npy`, `.npz`, …) that cannot be read or is not a
    /// valid model; the reason names the row and column where one is at fault.
    #[error("{file}: {reason}")]
    File {
        /// File name.
        file: String,
        /// What is wrong.
        reason: String,
    },
    /// Inconsistent model input (sizes, signs, non-finite values, …).
    #[error("{0}")]
    Invalid(String),
}

/// Reference problem P3 (see `shared/benchmarks/PROBLEMS.md`).
pub mod p3 {
    use super::*;

    /// `kT`.
    pub const KT: f64 = 20.0;
    /// Diffusion coefficient.
    pub const DIFFUSION: f64 = 1.0;
    /// Depth of the ligand well.
    pub const WELL_DEPTH: f64 = 30.0;
    /// Horizon.
    pub const HORIZON: f64 = 10.0;
    /// Relative tolerance.
    pub const RTOL: f64 = 1e-8;
    /// Absolute tolerance.
    pub const ATOL: f64 = 1e-12;

    /// Output times `10^k`, `k = −4, −3.5, …, 1`.
    pub fn times() -> Vec<f64> {
        (0..=10).map(|k| 10f64.powf(-4.0 + 0.5 * k as f64)).collect()
    }

    /// Basin of a point: 0 = A (`x < −0.25`, `y > 1`), 2 = C (`x > 0.3`,
    /// `y < 0.5`), 1 = B (everything else).
    pub fn basin_of(x: f64, y: f64) -> usize {
        if x < -0.25 && y > 1.0 {
            0
        } else if x > 0.3 && y < 0.5 {
            2
        } else {
            1
        }
    }

    /// The P3 model: Mueller–Brown SQRA on the 64 × 64 grid, the ligand well
    /// `−exp(−((x+0.05)² + (y−0.467)²)/(2·0.1²))` as a perturbation
    /// (parameter 1, its depth), basins A, B, C as outputs 0, 1, 2.
    pub fn model() -> MasterEquation {
        model_on(Grid::p3())
    }

    /// The P3 model on another grid over the same domain (for tests and
    /// mesh studies).
    pub fn model_on(grid: Grid) -> MasterEquation {
        let land = Landscape { grid, values: grid.map(mueller_brown) };
        let mut basins: Vec<(String, Vec<usize>)> =
            ["A", "B", "C"].iter().map(|s| (s.to_string(), Vec::new())).collect();
        for i in 0..grid.len() {
            let (x, y) = grid.centre(i);
            basins[basin_of(x, y)].1.push(i);
        }
        let build = || -> Result<MasterEquation, ConformationError> {
            MasterEquation::sqra(&land, DIFFUSION, KT)?
                .with_perturbation(Perturbation::Shift {
                    name: "well_depth".into(),
                    shape: grid.well(-0.05, 0.467, 0.1),
                })?
                .with_basins(basins)
        };
        build().unwrap_or_else(|e| unreachable!("the P3 model is valid: {e}"))
    }

    /// Parameters of the perturbed dynamics: `[kT, 30]`.
    pub fn perturbed_params() -> Vec<f64> {
        vec![KT, WELL_DEPTH]
    }

    /// Parameters of the unperturbed landscape: `[kT, 0]`.
    pub fn unperturbed_params() -> Vec<f64> {
        vec![KT, 0.0]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use insilico_solvers::{check_derivatives, solve, Method, Options, Problem, System};

    fn small_model() -> MasterEquation {
        let grid = Grid::new_2d(5, 4, (-1.5, 1.2), (-0.2, 2.0)).unwrap();
        let land = Landscape::from_fn(grid, |x, y| 0.02 * mueller_brown(x, y)).unwrap();
        let kd: Vec<f64> = (0..grid.len()).map(|i| if i % 3 == 0 { 2.0 } else { f64::INFINITY }).collect();
        MasterEquation::sqra(&land, 1.0, 2.0)
            .unwrap()
            .with_perturbation(Perturbation::Shift { name: "well".into(), shape: grid.well(0.0, 0.5, 0.5) })
            .unwrap()
            .with_perturbation(Perturbation::Ligand { name: "L".into(), kd })
            .unwrap()
            .with_perturbation(Perturbation::Shift { name: "force".into(), shape: grid.tilt(1.0, 0.5) })
            .unwrap()
            .with_basins(vec![("a".into(), vec![0, 1, 2]), ("b".into(), (3..20).collect())])
            .unwrap()
    }

    /// Exact derivatives (state Jacobian, its values, parameter VJP/JVP)
    /// against central differences with relative step 1e-6; 1e-6 relative
    /// error bounds truncation (~1e-12) and round-off (~1e-10 · rate scale).
    #[test]
    fn derivatives_are_exact() {
        let me = small_model();
        let n = me.len();
        let x: Vec<f64> = (0..n).map(|i| 0.01 + (i as f64 * 0.37).sin().abs()).collect();
        for p in [vec![2.0, 0.0, 0.0, 0.0], vec![1.5, 3.0, 4.0, -2.0], vec![3.0, -1.0, 0.5, 1.0]] {
            me.validate_params(&p).unwrap();
            let rep = check_derivatives(&me, 0.0, &x, &[], &p, 1e-6);
            assert!(rep.max_rel_err < 1e-6, "{p:?}: {rep:?}");
            // Jacobian values against jvp.
            let pat = me.jacobian_sparsity().unwrap();
            let mut vals = vec![0.0; pat.len()];
            assert!(me.jacobian_values(0.0, &x, &[], &p, &mut vals));
            let mut dense = vec![0.0; n * n];
            for (&(r, c), v) in pat.iter().zip(&vals) {
                dense[r + c * n] += v;
            }
            let mut e = vec![0.0; n];
            let mut col = vec![0.0; n];
            for j in 0..n {
                e[j] = 1.0;
                me.jvp(0.0, &x, &[], &p, &e, &mut col);
                e[j] = 0.0;
                for i in 0..n {
                    assert!((dense[i + j * n] - col[i]).abs() <= 1e-12 * col[i].abs().max(1.0));
                }
                // columns of K sum to zero
                let s: f64 = col.iter().sum();
                let scale: f64 = col.iter().map(|v| v.abs()).sum();
                assert!(s.abs() <= 1e-14 * scale.max(1.0), "column {j}: {s}");
            }
        }
    }

    #[test]
    fn detailed_balance_and_stationary_distribution() {
        let me = small_model();
        assert_eq!(me.detailed_balance_defect(), 0.0);
        let p = vec![1.5, 3.0, 4.0, -2.0];
        let pi = me.boltzmann(&p);
        let st = analysis::stationary(&me, &p).unwrap();
        let mut dx = vec![0.0; me.len()];
        me.rhs(0.0, &pi, &[], &p, &mut dx);
        let g = me.generator(&p);
        let scale = g.rates.iter().copied().fold(0.0, f64::max);
        assert!(dx.iter().all(|v| v.abs() < 1e-14 * scale), "K π ≠ 0: {dx:?}");
        for (a, b) in pi.iter().zip(&st) {
            assert!((a - b).abs() < 1e-12, "{a} vs {b}");
        }
        // detailed balance edge by edge
        for ((i, j), &r) in me.edges().zip(&g.rates) {
            let back = me.edges().zip(&g.rates).find(|((a, b), _)| *a == j && *b == i).map(|(_, r)| *r).unwrap();
            assert!((pi[i] * r - pi[j] * back).abs() <= 1e-14 * (pi[i] * r).max(1e-300));
        }
    }

    /// The solve (BDF, dense path: 20 states) matches the spectral
    /// propagator and keeps total probability to round-off.
    #[test]
    fn solve_matches_the_spectral_propagator() {
        let me = small_model();
        let p0 = me.boltzmann(&[2.0, 0.0, 0.0, 0.0]);
        let p = vec![2.0, 3.0, 1.0, 0.5];
        let times = [0.01, 0.1, 1.0];
        let prob = Problem::new(&me, p.clone()).with_x0(p0.clone()).observe(0, &times);
        let sol = solve(&prob, Method::Bdf, &Options { rtol: 1e-10, atol: 1e-14, ..Options::default() }).unwrap();
        let spec = analysis::Spectral::new(&me, &p).unwrap();
        for (k, t) in times.iter().enumerate() {
            let exact = spec.propagate(&p0, *t);
            let err = sol.states[k].iter().zip(&exact).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
            assert!(err < 1e-8, "t = {t}: {err:e}");
            let s: f64 = sol.states[k].iter().sum();
            assert!((s - 1.0).abs() < 1e-13, "Σp − 1 = {:e}", s - 1.0);
        }
        let its = spec.implied_timescales(3);
        assert!(its[0] >= its[1] && its[1] >= its[2] && its[2] > 0.0);
    }

    #[test]
    fn mfpt_of_a_two_state_model_is_the_inverse_rate() {
        let q = MsmMatrix::parse("A,B\n-0.5,0.5\n0.25,-0.25\n", "two.csv").unwrap();
        let me = MasterEquation::from_rate_matrix(&q, 1.0).unwrap();
        let p = me.default_params();
        let t = analysis::mean_first_passage_time(&me, &p, &[0], &[1]).unwrap();
        assert!((t - 2.0).abs() < 1e-12);
        let t = analysis::mean_first_passage_time(&me, &p, &[1], &[0]).unwrap();
        assert!((t - 4.0).abs() < 1e-12);
        // the rates are reproduced exactly at the default parameters
        let g = me.generator(&p);
        let mut r: Vec<((usize, usize), f64)> = me.edges().zip(g.rates.iter().copied()).collect();
        r.sort_by_key(|e| e.0);
        assert!((r[0].1 - 0.5).abs() < 1e-15 && (r[1].1 - 0.25).abs() < 1e-15);
        let its = analysis::implied_timescales(&me, &p, 1).unwrap();
        assert!((its[0] - 1.0 / 0.75).abs() < 1e-12);
        // stationary: π_B / π_A = 2
        let pi = analysis::stationary(&me, &p).unwrap();
        assert!((pi[1] / pi[0] - 2.0).abs() < 1e-12);
    }

    /// A transition matrix built as exp(Q τ) of a reversible rate matrix is
    /// converted back to Q by the matrix logarithm.
    #[test]
    fn transition_matrix_log_recovers_the_rates() {
        let q = MsmMatrix::parse("-0.3,0.2,0.1\n0.1,-0.15,0.05\n0.1,0.1,-0.2\n", "q.csv").unwrap();
        let me = MasterEquation::from_rate_matrix(&q, 1.0).unwrap();
        assert!(me.detailed_balance_defect() < 1e-12, "{}", me.detailed_balance_defect());
        let p = me.default_params();
        let spec = analysis::Spectral::new(&me, &p).unwrap();
        let tau = 2.0;
        // T_ij = P(j at τ | i at 0) = (exp(Kτ) e_i)_j
        let rows: Vec<Vec<f64>> = (0..3)
            .map(|i| {
                let mut e = vec![0.0; 3];
                e[i] = 1.0;
                spec.propagate(&e, tau)
            })
            .collect();
        let text: String =
            rows.iter().map(|r| r.iter().map(|v| format!("{v:.17e}")).collect::<Vec<_>>().join(",") + "\n").collect();
        let t = MsmMatrix::parse(&text, "t.csv").unwrap();
        let back = MasterEquation::from_transition_matrix(&t, tau, 1.0, RateEstimate::MatrixLog).unwrap();
        let (g1, g2) = (me.generator(&p), back.generator(&back.default_params()));
        let rate = |m: &MasterEquation, g: &Generator, i: usize, j: usize| {
            m.edges().zip(&g.rates).find(|(e, _)| *e == (i, j)).map(|(_, r)| *r).unwrap_or(0.0)
        };
        for i in 0..3 {
            for j in 0..3 {
                if i != j {
                    let (a, b) = (rate(&me, &g1, i, j), rate(&back, &g2, i, j));
                    assert!((a - b).abs() < 1e-12, "{i}->{j}: {a} vs {b}");
                }
            }
        }
        let first = MasterEquation::from_transition_matrix(&t, tau, 1.0, RateEstimate::FirstOrder).unwrap();
        assert_eq!(first.len(), 3);
    }

    #[test]
    fn csv_errors_name_file_line_and_column() {
        let e = MsmMatrix::parse("# comment\nA,B\n-1,1\n1,x\n", "m.csv").unwrap_err();
        assert_eq!(e.to_string(), "m.csv, line 4, column 2: `x` is not a number");
        let e = MsmMatrix::parse("-1,1\n1,-1,0\n", "m.csv").unwrap_err();
        assert!(e.to_string().starts_with("m.csv, line 2, column 3:"), "{e}");
        let e = MsmMatrix::parse("A,B,C\n-1,1\n1,-1\n", "m.csv").unwrap_err();
        assert!(e.to_string().contains("header has 3 names"), "{e}");
        let q = MsmMatrix::parse("-1,1\n-1,1\n", "m.csv").unwrap();
        let e = MasterEquation::from_rate_matrix(&q, 1.0).unwrap_err();
        assert!(e.to_string().starts_with("m.csv, line 2, column 1: off-diagonal rate -1 is negative"), "{e}");
        let q = MsmMatrix::parse("-1,0.5\n1,-1\n", "m.csv").unwrap();
        let e = MasterEquation::from_rate_matrix(&q, 1.0).unwrap_err();
        assert!(e.to_string().contains("line 1, column 1: row sums to"), "{e}");
        let t = MsmMatrix::parse("0.5,0.6\n0.5,0.5\n", "t.csv").unwrap();
        let e = MasterEquation::from_transition_matrix(&t, 1.0, 1.0, RateEstimate::FirstOrder).unwrap_err();
        assert!(e.to_string().contains("t.csv, line 1"), "{e}");
        let e = MsmMatrix::read("/nonexistent/msm.csv").unwrap_err();
        assert!(e.to_string().contains("/nonexistent/msm.csv") && e.to_string().contains("cannot read"), "{e}");
        assert!(MsmMatrix::parse("", "e.csv").is_err());
    }

    #[test]
    fn p3_setup() {
        let me = p3::model();
        assert_eq!(me.len(), 4096);
        assert_eq!(me.jacobian_sparsity().unwrap().len(), 4096 + 2 * 2 * 64 * 63);
        let sizes: Vec<usize> = me.basins().iter().map(|b| b.1.len()).collect();
        assert_eq!(sizes.iter().sum::<usize>(), 4096);
        assert!(sizes.iter().all(|&s| s > 100), "{sizes:?}");
        let t = p3::times();
        assert_eq!(t.len(), 11);
        assert!((t[0] - 1e-4).abs() < 1e-18 && (t[10] - 10.0).abs() < 1e-12);
        assert!((mueller_brown(-0.558, 1.442) + 146.7).abs() < 0.1); // global minimum
    }
}
