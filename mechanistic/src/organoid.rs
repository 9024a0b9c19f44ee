//! Organoid and tumour models: growth laws, the Simeoni
//! tumour-growth-inhibition model coupled to a PK model, and the spheroid
//! reaction–diffusion PDE of reference problem P2.
//!
//! ## Growth laws ([`GrowthLaw`])
//! One state `V` (volume or cell number), parameters positive:
//!
//! ```text
//! exponential  dV/dt = λ V                [λ]
//! logistic     dV/dt = r V (1 − V/K)      [r, K]
//! Gompertz     dV/dt = α V ln(K/V)        [α, K]
//! ```
//!
//! ## Simeoni TGI ([`SimeoniTgi`])
//! Proliferating cells `x₁` grow exponentially (rate `λ0`) and then
//! linearly (rate `λ1`), switching sharply with `ψ`; the drug moves them at
//! rate `k2·c(t)` into a chain of damaged compartments that die at rate
//! `k1`. `c(t)` is the central concentration of a [`PkModel`](crate::PkModel)
//! integrated in the same system (doses go to the PK states as usual), or
//! an input `u[0]`. Equations on [`SimeoniTgi`].
//!
//! ## Spheroid reaction–diffusion ([`Spheroid`])
//! A sphere of radius `R` (µm) cut into `N` shells of width `dr = R/N`;
//! shell `i` spans `[i·dr, (i+1)·dr]` with volume `V_i = 4/3 π (r_out³ − r_in³)`.
//! Four fields per shell: oxygen `c` (normalised to the medium, so the
//! medium is 1), drug `d` (µM), viable cell fraction `n`, dead cell
//! fraction `m` (fractions of the local volume). Time in hours.
//!
//! ```text
//! dc/dt = Dc·lap(c) − qc·n·c/(Kc + c)
//! dd/dt = Dd·lap(d) − qd·n·d/(Kd + d)
//! dn/dt = ρ·n·(1 − n − m)·g(c) − dh·n·h(c) − kill(d)·n·g(c)
//! dm/dt = dh·n·h(c) + kill(d)·n·g(c) − λ·m
//! g(c) = c/(Ko + c),  h(c) = Kh/(Kh + c),  kill(d) = Emax·d²/(EC50² + d²)
//! ```
//!
//! `lap` is the finite-volume Laplacian in flux form: the flux through the
//! face at radius `r` between shells `i` and `i+1` is
//! `−D·4πr²·(u_{i+1} − u_i)/dr`, there is no flux through `r = 0`, and the
//! medium value `u_b` at `r = R` enters through the half-cell distance
//! `dr/2`: `−D·4πR²·(u_b − u_{N−1})/(dr/2)`. Each shell's derivative is
//! (flux in − flux out)/V_i, so the amount of drug `Σ d_i V_i` changes only
//! by the surface flux and the uptake. The oxygen boundary value `c_b` is
//! a parameter; the drug boundary value `d_b(t)` is the input `u[0]`, set
//! by exposure windows ([`Spheroid::exposure_schedule`]).
//!
//! | parameter | meaning | unit | P2 value |
//! |---|---|---|---|
//! | `Dc` | oxygen diffusion coefficient | µm²/h | 7.2e6 |
//! | `Dd` | drug diffusion coefficient | µm²/h | 3.6e5 |
//! | `qc` | maximal oxygen consumption (per viable fraction) | 1/h | 200 |
//! | `Kc` | half-saturation of oxygen consumption | – | 0.05 |
//! | `qd` | maximal drug uptake (per viable fraction) | 1/h | 0.5 |
//! | `Kd` | half-saturation of drug uptake | µM | 10 |
//! | `rho` | proliferation rate | 1/h | 0.03 |
//! | `Ko` | oxygen half-saturation of growth | – | 0.1 |
//! | `dh` | maximal hypoxic death rate | 1/h | 0.02 |
//! | `Kh` | oxygen level of half-maximal hypoxic death | – | 0.05 |
//! | `Emax` | maximal drug kill rate | 1/h | 0.05 |
//! | `EC50` | drug level of half-maximal kill | µM | 5 |
//! | `lam` | clearance of dead cells | 1/h | 0.01 |
//! | `c_b` | medium oxygen at the surface | – | 1 |
//!
//! **Mass balance.** With [`Spheroid::with_mass_balance`] (on by default)
//! accumulator states integrate the surface influx and (per shell) the
//! uptake of drug per spheroid volume (µM), so that `mean drug − influx + uptake` is
//! a declared linear invariant ([`System::invariants`](insilico_solvers::System::invariants)):
//! linear multistep and Runge–Kutta methods keep it to round-off, and
//! [`Spheroid::mass_balance`] reports it.
//!
//! **Jacobian.** Exact, sparse (16 entries per shell, plus two per uptake
//! accumulator), given both as a pattern and as values
//! ([`System::jacobian_values`](insilico_solvers::System::jacobian_values)),
//! so the solver assembles it without probing or colouring and factorises
//! it with faer's sparse LU.
//!
//! **Outputs.** Viable burden `B = Σ n_i V_i / Σ V_i` (output 0), dead
//! burden, mean drug and oxygen, the accumulators ([`spheroid::output`]);
//! from a state: hypoxic and necrotic core radii
//! ([`Spheroid::hypoxic_radius`], [`Spheroid::necrotic_radius`]), the drug
//! penetration profile and depth ([`Spheroid::drug_profile`],
//! [`Spheroid::penetration_depth`]).

pub mod growth;
pub mod spheroid;

pub use growth::{DrugSource, GrowthLaw, SimeoniTgi};
pub use spheroid::{MassBalance, Spheroid, SpheroidParams};

/// Errors of the organoid models.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum OrganoidError {
    /// A parameter vector of the wrong length.
    #[error("model {model} expects {expected} parameters, got {got}")]
    ParamCount {
        /// Model name.
        model: String,
        /// Expected length.
        expected: usize,
        /// Actual length.
        got: usize,
    },
    /// A parameter (or geometry value) out of its domain.
    #[error("{name} = {value} is out of range (must be finite, and positive where it is a size or a half-saturation constant)")]
    InvalidParam {
        /// Parameter name.
        name: String,
        /// Offending value.
        value: f64,
    },
}

#[cfg(test)]
mod tests {
    use super::spheroid::{field, output, param};
    use super::*;
    use crate::PkModel;
    use insilico_solvers::{check_derivatives, solve, Method, Options, Problem, System};

    /// Deterministic pseudo-random numbers in `[lo, hi)` (SplitMix64).
    struct Rng(u64);
    impl Rng {
        fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            lo + (hi - lo) * ((z >> 11) as f64 / (1u64 << 53) as f64)
        }
    }

    /// A random but physical spheroid state.
    fn random_state(model: &Spheroid, rng: &mut Rng) -> Vec<f64> {
        let mut x = Vec::new();
        for _ in 0..model.shells() {
            let n = rng.uniform(0.05, 0.7);
            x.extend([rng.uniform(0.01, 1.0), rng.uniform(0.0, 20.0), n, rng.uniform(0.0, 1.0 - n)]);
        }
        if model.has_mass_balance() {
            x.extend((0..=model.shells()).map(|_| rng.uniform(0.0, 5.0)));
        }
        x
    }

    /// Checks `jacobian_values` against `jvp` column by column and the
    /// pattern against every nonzero of the Jacobian.
    fn check_values_and_pattern(sys: &dyn System, x: &[f64], u: &[f64], p: &[f64]) {
        let n = sys.nstates();
        let pattern = sys.jacobian_sparsity().unwrap();
        let mut dense = vec![0.0; n * n];
        let mut vals = vec![0.0; pattern.len()];
        let has_values = sys.jacobian_values(0.0, x, u, p, &mut vals);
        if has_values {
            for (&(r, c), v) in pattern.iter().zip(&vals) {
                dense[r + c * n] += v;
            }
        }
        let mut e = vec![0.0; n];
        let mut col = vec![0.0; n];
        for j in 0..n {
            e[j] = 1.0;
            sys.jvp(0.0, x, u, p, &e, &mut col);
            e[j] = 0.0;
            for i in 0..n {
                if col[i] != 0.0 {
                    assert!(pattern.contains(&(i, j)), "J[{i}][{j}] = {} outside the pattern", col[i]);
                }
                if has_values && pattern.contains(&(i, j)) {
                    let d = (dense[i + j * n] - col[i]).abs();
                    assert!(
                        d <= 1e-12 * col[i].abs().max(1.0),
                        "values[{i},{j}] {} vs jvp {}",
                        dense[i + j * n],
                        col[i]
                    );
                }
            }
        }
    }

    /// Exact derivatives of the spheroid against central differences.
    /// The finite-difference checker uses relative step 1e-6 (truncation
    /// ~1e-12, round-off ~1e-10 relative), so 1e-6 leaves a wide margin while
    /// catching any wrong term (which shows up at O(1)).
    #[test]
    fn spheroid_derivatives_are_exact() {
        let mut rng = Rng(3);
        for mb in [true, false] {
            let model = Spheroid::new(400.0, 6).unwrap().with_mass_balance(mb);
            for _ in 0..4 {
                let x = random_state(&model, &mut rng);
                let mut p = SpheroidParams::p2().to_vec();
                for v in &mut p {
                    *v *= rng.uniform(0.5, 1.5);
                }
                // Diffusion terms are ~1e4 larger than reactions at this mesh: scale them
                // down so the finite differences resolve the reaction derivatives too.
                p[param::DC] *= 1e-3;
                p[param::DD] *= 1e-2;
                let u = [rng.uniform(0.0, 20.0)];
                let rep = check_derivatives(&model, 0.0, &x, &u, &p, 1e-6);
                assert!(rep.max_rel_err < 1e-6, "mass balance {mb}: {rep:?}");
                check_values_and_pattern(&model, &x, &u, &p);
            }
        }
    }

    #[test]
    fn spheroid_rhs_conserves_drug_with_the_accumulators() {
        let mut rng = Rng(11);
        let model = Spheroid::new(400.0, 40).unwrap();
        let inv = model.invariants();
        assert_eq!(inv.len(), 1);
        for _ in 0..10 {
            let x = random_state(&model, &mut rng);
            let mut dx = vec![0.0; model.nstates()];
            let u = [rng.uniform(0.0, 50.0)];
            model.rhs(0.0, &x, &u, &SpheroidParams::p2().to_vec(), &mut dx);
            let s: f64 = inv[0].iter().zip(&dx).map(|(c, f)| c * f).sum();
            let scale: f64 = inv[0].iter().zip(&dx).map(|(c, f)| (c * f).abs()).sum();
            assert!(s.abs() <= 1e-13 * scale, "{s} vs {scale}");
        }
    }

    /// With no uptake, no drug and no cells, uniform fields are steady, and
    /// the geometry sums to the sphere.
    #[test]
    fn spheroid_geometry_and_uniform_steady_state() {
        let model = Spheroid::new(300.0, 30).unwrap();
        let sum: f64 = model.volume_fractions().iter().sum();
        assert!((sum - 1.0).abs() < 1e-14);
        let mut p = SpheroidParams::p2().to_vec();
        p[param::RHO] = 0.0;
        let x = model.initial_state(1.0, 3.0, 0.0, 0.0);
        let mut dx = vec![0.0; model.nstates()];
        model.rhs(0.0, &x, &[3.0], &p, &mut dx);
        assert!(dx.iter().all(|v| v.abs() < 1e-9), "{dx:?}");
        assert_eq!(model.output(output::VIABLE_BURDEN, 0.0, &x, &p), 0.0);
        assert!((model.output(output::MEAN_DRUG, 0.0, &x, &p) - 3.0).abs() < 1e-13);
    }

    /// A pure-diffusion spheroid with the drug boundary held at 1 relaxes
    /// to 1 everywhere; the solve (sparse path: 4·60+2 states) keeps the
    /// mass balance to round-off.
    #[test]
    fn spheroid_diffusion_fills_the_sphere_and_balances_mass() {
        let model = Spheroid::new(400.0, 60).unwrap();
        let mut p = SpheroidParams::p2().to_vec();
        p[param::QD] = 0.0;
        p[param::RHO] = 0.0;
        let sched = Spheroid::exposure_schedule(1.0, 1000.0, 1000.0, 20.0);
        let prob = Problem::new(&model, p)
            .with_x0(model.initial_state(1.0, 0.0, 0.0, 0.0))
            .with_schedule(sched)
            .observe(output::MEAN_DRUG, &[20.0]);
        let sol = solve(&prob, Method::Bdf, &Options { rtol: 1e-8, atol: 1e-10, ..Options::default() }).unwrap();
        // Slowest diffusion mode: rate Dd π²/R² = 22/h, so after 20 h the sphere is full.
        assert!((sol.outputs[0] - 1.0).abs() < 1e-6, "{}", sol.outputs[0]);
        let mb = model.mass_balance(&prob.x0, &sol.final_state);
        assert!(mb.relative_defect() < 1e-12, "{mb:?}");
        assert!((mb.influx - 1.0).abs() < 1e-6);
    }

    /// Gradients of the viable burden through the sparse path (13 shells:
    /// 66 states with the mass balance, so forward sensitivities run on the
    /// block-diagonal sparse pattern) agree between forward sensitivities,
    /// the adjoint and central differences of the solve.
    #[test]
    fn spheroid_gradients_through_the_sparse_path() {
        use insilico_solvers::{gradient, GradientMethod};
        let model = Spheroid::new(150.0, 13).unwrap();
        assert!(model.nstates() >= 64);
        let mut p = SpheroidParams::p2().to_vec();
        p[param::EMAX] = 0.1;
        let prob = |p: Vec<f64>| {
            Problem::new(&model, p)
                .with_x0(model.initial_state(1.0, 0.0, 0.5, 0.0))
                .with_schedule(Spheroid::exposure_schedule(10.0, 6.0, 24.0, 48.0))
                .observe(output::VIABLE_BURDEN, &[12.0, 48.0])
        };
        let opts = Options { rtol: 1e-10, atol: 1e-12, ..Options::default() };
        let fwd = gradient(&prob(p.clone()), Method::Bdf, &opts, &|_, y| (y, 1.0), GradientMethod::Forward).unwrap();
        let adj = gradient(&prob(p.clone()), Method::Bdf, &opts, &|_, y| (y, 1.0), GradientMethod::Adjoint).unwrap();
        for k in [param::RHO, param::EMAX, param::EC50, param::QC, param::DD] {
            let h = 1e-4 * p[k];
            let mut pp = p.clone();
            pp[k] += h;
            let up: f64 = solve(&prob(pp.clone()), Method::Bdf, &opts).unwrap().outputs.iter().sum();
            pp[k] -= 2.0 * h;
            let dn: f64 = solve(&prob(pp), Method::Bdf, &opts).unwrap().outputs.iter().sum();
            let fd = (up - dn) / (2.0 * h);
            let scale = fd.abs().max(1e-6 / p[k]);
            // Central differences at step 1e-4·θ (truncation ~1e-8 relative) of solves at
            // rtol 1e-10 whose output moves by as little as 1e-9 (Dd): 1e-3 covers the noise.
            assert!((fwd.d_params[k] - fd).abs() < 1e-3 * scale, "{k}: forward {} vs fd {fd}", fwd.d_params[k]);
            assert!((adj.d_params[k] - fd).abs() < 1e-3 * scale, "{k}: adjoint {} vs fd {fd}", adj.d_params[k]);
        }
    }

    #[test]
    fn spheroid_analysis_helpers() {
        let model = Spheroid::new(100.0, 10).unwrap();
        let mut x = model.initial_state(1.0, 0.0, 0.5, 0.0);
        for i in 0..10 {
            x[model.index(i, field::C)] = i as f64 / 10.0; // 0, 0.1, ..., 0.9 at centres 5, 15, ...
            x[model.index(i, field::D)] = i as f64; // 0..9
        }
        assert_eq!(model.hypoxic_radius(&x, 0.0), 0.0);
        assert!((model.hypoxic_radius(&x, 0.25) - 30.0).abs() < 1e-12);
        assert_eq!(model.hypoxic_radius(&x, 2.0), 100.0);
        assert_eq!(model.necrotic_radius(&x, 0.1), 0.0);
        // d_b = 10 at r = 100, 9 at r = 95: half of d_b (5) is reached at r = 55.
        assert!((model.penetration_depth(&x, 10.0, 0.5) - 45.0).abs() < 1e-12);
        assert_eq!(model.drug_profile(&x)[3], (35.0, 3.0));
        assert!((model.viable_burden(&x) - 0.5).abs() < 1e-15);
    }

    #[test]
    fn exposure_schedules() {
        use insilico_solvers::Event;
        let s = Spheroid::exposure_schedule(10.0, 24.0, 72.0, 336.0);
        let Event::Exposure(e) = &s.events[0] else { panic!() };
        assert_eq!((e.repeats, e.duration, e.period), (4, 24.0, 72.0)); // 0, 72, 144, 216, 288
        let s = Spheroid::exposure_schedule(10.0, 72.0, 168.0, 336.0);
        let Event::Exposure(e) = &s.events[0] else { panic!() };
        assert_eq!(e.repeats, 1); // 0, 168 (336 is the horizon)
        let s = Spheroid::exposure_schedule(10.0, 72.0, 72.0, 336.0);
        let Event::Exposure(e) = &s.events[0] else { panic!() };
        assert_eq!((e.repeats, e.duration), (0, 336.0));
        assert!(Spheroid::exposure_schedule(0.0, 6.0, 72.0, 336.0).events.is_empty());
        assert!(Spheroid::exposure_schedule(1.0, f64::NAN, 72.0, 336.0).events.is_empty());
        let s = Spheroid::exposure_schedule(10.0, 6.0, -5.0, 336.0); // no valid period: continuous
        let Event::Exposure(e) = &s.events[0] else { panic!() };
        assert_eq!((e.repeats, e.duration), (0, 336.0));
        let s = Spheroid::exposure_schedule(10.0, 6.0, 100.0, 336.0);
        let Event::Exposure(e) = &s.events[0] else { panic!() };
        assert_eq!(e.repeats, 3); // 0, 100, 200, 300
    }

    #[test]
    fn bad_inputs_are_errors() {
        assert!(Spheroid::new(0.0, 10).is_err());
        assert!(Spheroid::new(100.0, 0).is_err());
        assert!(SpheroidParams::from_slice(&[1.0; 3]).is_err());
        let mut p = SpheroidParams::p2().to_vec();
        p[param::KC] = 0.0;
        let e = SpheroidParams::from_slice(&p).unwrap_err();
        assert!(e.to_string().contains("Kc"), "{e}");
        p[param::KC] = 0.05;
        assert_eq!(SpheroidParams::from_slice(&p).unwrap(), SpheroidParams::p2());
        assert!(GrowthLaw::Logistic.validate_params(&[1.0]).is_err());
        assert!(GrowthLaw::Logistic.validate_params(&[1.0, -2.0]).is_err());
    }

    #[test]
    fn growth_laws_derivatives_and_closed_forms() {
        for law in [GrowthLaw::Exponential, GrowthLaw::Logistic, GrowthLaw::Gompertz] {
            let p: Vec<f64> = match law {
                GrowthLaw::Exponential => vec![0.2],
                _ => vec![0.3, 500.0],
            };
            law.validate_params(&p).unwrap();
            for v in [5.0, 120.0, 700.0] {
                let rep = check_derivatives(&law, 0.0, &[v], &[], &p, 1e-6);
                assert!(rep.max_rel_err < 1e-6, "{law:?}: {rep:?}");
            }
            let prob = Problem::new(&law, p.clone()).with_x0(vec![20.0]).observe(0, &[1.0, 10.0, 40.0]);
            let sol = solve(&prob, Method::Bdf, &Options { rtol: 1e-10, atol: 1e-10, ..Options::default() }).unwrap();
            for (t, y) in sol.times.iter().zip(&sol.outputs) {
                let exact = law.closed_form(&p, 20.0, *t);
                // rtol 1e-10: the global error stays within a few hundred times that.
                assert!((y - exact).abs() < 1e-7 * exact, "{law:?} t={t}: {y} vs {exact}");
            }
        }
    }

    #[test]
    fn simeoni_derivatives_are_exact() {
        let mut rng = Rng(5);
        for source in [DrugSource::Input, DrugSource::Pk(PkModel::from_name("pk-2cmt-oral").unwrap())] {
            for transit in [1, 3] {
                let tgi = SimeoniTgi::new(source, transit);
                for psi in [1.0, 20.0] {
                    let mut p: Vec<f64> = (0..tgi.nparams()).map(|_| rng.uniform(0.5, 3.0)).collect();
                    let o = tgi.tgi_param_offset();
                    p[o..].copy_from_slice(&[0.3, 0.7, 0.8, 0.05, psi]);
                    for w0 in [0.2, 2.0, 20.0] {
                        let mut x: Vec<f64> = (0..tgi.nstates()).map(|_| rng.uniform(0.0, 50.0)).collect();
                        for v in &mut x[tgi.proliferating()..] {
                            *v = w0 * rng.uniform(0.1, 1.0);
                        }
                        let u: Vec<f64> = (0..tgi.ninputs()).map(|_| 3.0).collect();
                        let rep = check_derivatives(&tgi, 0.0, &x, &u, &p, 1e-6);
                        assert!(rep.max_rel_err < 1e-6, "{source:?} transit {transit} psi {psi} w {w0}: {rep:?}");
                        check_values_and_pattern(&tgi, &x, &u, &p);
                    }
                }
            }
        }
    }

    /// Without drug and with ψ large, the Simeoni model grows exponentially
    /// at λ0 while small and linearly at λ1 once large.
    #[test]
    fn simeoni_switches_from_exponential_to_linear_growth() {
        let tgi = SimeoniTgi::new(DrugSource::Input, 3);
        let p = vec![0.3, 0.7, 1.0, 0.05, 20.0];
        let mut x = vec![0.0; tgi.nstates()];
        let mut dx = vec![0.0; tgi.nstates()];
        x[0] = 0.01;
        tgi.rhs(0.0, &x, &[0.0], &p, &mut dx);
        assert!((dx[0] / x[0] - 0.3).abs() < 1e-12);
        x[0] = 100.0;
        tgi.rhs(0.0, &x, &[0.0], &p, &mut dx);
        assert!((dx[0] - 0.7).abs() < 1e-12);
    }
}
