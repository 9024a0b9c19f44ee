//! The model language end to end: the issue's two-compartment hybrid model,
//! derivatives against finite differences, invariants, and error messages.

use insilico_model::{Model, ModelSystem};
use insilico_solvers::{check_derivatives, System};

const TWO_CMT_HYBRID: &str = r#"
# two-compartment oral PK, allometric clearance, a learned term on elimination
parameters: ka = 1.2, CL = 5, V1 = 30, Q = 10, V2 = 50, tlag = 0.5, F1 = 1
covariates: WT = 70                      # the dataset column of that name; 70 where the dataset has none
states: depot, central, peripheral, eliminated   # in CMT order
network g: 1 -> 16 -> 16 -> 1 tanh       # weights become parameters (fitted or loaded)
CLi = CL * (WT / 70)^0.75
cp = central / V1
flux depot -> central = ka * depot
flux central -> eliminated = CLi * cp + central * 0.2 * softplus(g(cp / 5))
flux central -> peripheral = Q / V1 * central
flux peripheral -> central = Q / V2 * peripheral
alag(depot) = tlag
f(depot) = F1
conserved: depot + central + peripheral + eliminated
output: cp
"#;

/// A deterministic point in (0.5, 1.5) for index `i`.
fn jitter(i: usize, seed: u64) -> f64 {
    let mut s = (i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ seed;
    s ^= s >> 33;
    s = s.wrapping_mul(0xff51_afd7_ed55_8ccd);
    s ^= s >> 33;
    0.5 + (s >> 11) as f64 / (1u64 << 53) as f64
}

#[test]
fn the_issue_model_parses_and_means_what_it_says() {
    let m = Model::parse(TWO_CMT_HYBRID, "two_cmt_hybrid.model").unwrap();
    assert_eq!(m.state_names(), ["depot", "central", "peripheral", "eliminated"]);
    assert_eq!(m.scalar_param_names(), ["ka", "CL", "V1", "Q", "V2", "tlag", "F1"]);
    assert_eq!(m.params().len(), 7 + (16 + 16) + (16 * 16 + 16) + (16 + 1));
    assert_eq!(m.invariants(), &[vec![1.0, 1.0, 1.0, 1.0]]);
    assert_eq!(m.output_names(), ["cp"]);
    // Right-hand side at a point, against the equations written by hand (network weights 0 ⇒ g = 0).
    let sys = ModelSystem::new(&m, &[80.0]).unwrap();
    let mut p = m.default_params(1);
    for w in &mut p[7..] {
        *w = 0.0;
    }
    let x = [10.0, 20.0, 5.0, 1.0];
    let mut dx = [0.0; 4];
    sys.rhs(0.0, &x, &[], &p, &mut dx);
    let (ka, cl, v1, q, v2) = (1.2, 5.0 * (80.0f64 / 70.0).powf(0.75), 30.0, 10.0, 50.0);
    let elim = cl * x[1] / v1 + x[1] * 0.2 * 2f64.ln();
    let expect = [-ka * x[0], ka * x[0] - elim - q / v1 * x[1] + q / v2 * x[2], q / v1 * x[1] - q / v2 * x[2], elim];
    for i in 0..4 {
        assert!((dx[i] - expect[i]).abs() <= 1e-12 * expect[i].abs().max(1.0), "f[{i}] {} vs {}", dx[i], expect[i]);
    }
    assert!((sys.output(0, 0.0, &x, &p) - 20.0 / 30.0).abs() < 1e-15);
}

#[test]
fn generated_derivatives_match_central_differences() {
    let m = Model::parse(TWO_CMT_HYBRID, "two_cmt_hybrid.model").unwrap();
    for seed in 0..5u64 {
        let sys = ModelSystem::new(&m, &[60.0 + 20.0 * jitter(0, seed)]).unwrap();
        let mut p = m.default_params(seed);
        for (i, v) in p.iter_mut().take(7).enumerate() {
            *v *= jitter(i, seed);
        }
        let x: Vec<f64> = (0..4).map(|i| 10.0 * jitter(i + 10, seed)).collect();
        let r = check_derivatives(&sys, 0.0, &x, &[], &p, 1e-6);
        assert!(r.max_rel_err < 1e-7, "seed {seed}: {r:?}");
    }
}

#[test]
fn every_function_differentiates_exactly() {
    let text = r#"
parameters: a = 0.7, b = 1.3, K = 2, n = 2.5
states: x, y, z
inputs: u
s = if_value
if_value = 0
if (x > 1) { w = exp(a * x) } else { w = log(1 + x^2) }
d/dt(x) = -a * x + u * b + sqrt(y) * tanh(z) - abs(x - y) / 10
d/dt(y) = hill(x, K, n) - b * y^3 + max(x, z) * sigmoid(y) - min(y, 0.5) + w
d/dt(z) = x^b / (1 + pow(z, a)) + softplus(y - z) + ifelse(y < z, y, z) + log10(x + 2) - s
output: o = x * y / b
"#
    .replace("s = if_value\nif_value = 0\n", "s = 0\n");
    let m = Model::parse(&text, "functions.model").unwrap();
    let sys = ModelSystem::new(&m, &[]).unwrap();
    for seed in 0..10u64 {
        let p: Vec<f64> = (0..4).map(|i| [0.7, 1.3, 2.0, 2.5][i] * jitter(i, seed)).collect();
        let x: Vec<f64> = (0..3).map(|i| 2.0 * jitter(i + 7, seed)).collect();
        let r = check_derivatives(&sys, 0.0, &x, &[0.3], &p, 1e-6);
        assert!(r.max_rel_err < 1e-7, "seed {seed}: {r:?}");
    }
}

#[test]
fn a_broken_invariant_names_the_term() {
    let text = "parameters: k = 1\nstates: a, b\nd/dt(a) = -k * a\nd/dt(b) = 2 * k * a\nconserved: a + b\n";
    let e = Model::parse(text, "broken.model").unwrap_err().to_string();
    assert!(e.starts_with("broken.model:3:11: the declared invariant `a + b` is not conserved"), "{e}");
    assert!(
        e.contains("`-k * a` (line 3, net coefficient -1)") && e.contains("`2 * k * a` (line 4, net coefficient 1)"),
        "{e}"
    );
    // Written as matching d/dt terms it holds.
    let ok = "parameters: k = 1\nstates: a, b\nd/dt(a) = -k * a\nd/dt(b) = a * k\nconserved: a + b\n";
    assert!(Model::parse(ok, "ok.model").is_ok());
}

#[test]
fn errors_point_at_the_spot_with_suggestions() {
    let cases = [
        (
            "parameters: ka = 1\nstates: depot\nd/dt(depot) = -kb * depot\n",
            "3:16",
            "unknown name `kb`; did you mean `ka`?",
        ),
        ("states: a, b\nd/dt(a) = -a\n", "1:12", "state `b` has no equation"),
        ("states: a\nd/dt(c) = -a\n", "2:6", "`c` is not a state"),
        ("states: a\nd/dt(a) = expp(a)\n", "2:11", "unknown function `expp`; did you mean `exp`"),
        ("parameters: k = 1\nstates: a\nk = 2\nd/dt(a) = -k\n", "3:1", "cannot assign to `k`: it is a parameter"),
        ("states: a\nnetwork g: 2 -> 4 -> 1 tanh\nd/dt(a) = g(a)\n", "3:11", "network `g` takes 2 input(s), got 1"),
        ("states: a\nd/dt(a) = 1 < a < 2\n", "2:17", "comparisons do not chain"),
        ("states: a\nif (a > 1) { z = 1 }\nd/dt(a) = z\n", "2:1", "`z` is set in only one branch"),
        ("states: a\nd/dt(a) = (a\n", "3:1", "expected `)`"),
    ];
    for (text, at, msg) in cases {
        let e = Model::parse(text, "bad.model").unwrap_err().to_string();
        assert!(e.starts_with(&format!("bad.model:{at}: ")), "{text:?}: {e}");
        assert!(e.contains(msg), "{text:?}: {e}");
        assert!(e.contains('^'), "{e}");
    }
}

#[test]
fn random_effects_and_initial_values() {
    let text = "parameters: TVCL = 2, V = 10\nrandom: ETA_CL\nstates: c\nc(0) = 100 / V\nCL = TVCL * exp(ETA_CL)\n\
                d/dt(c) = -CL / V * c\noutput: c";
    let m = Model::parse(text, "re.model").unwrap();
    assert_eq!(m.scalar_param_names(), ["TVCL", "V", "ETA_CL"]);
    let sys = ModelSystem::new(&m, &[]).unwrap();
    assert_eq!(sys.initial_state(&[2.0, 10.0, 0.0]), vec![10.0]);
    let r = check_derivatives(&sys, 0.0, &[3.0], &[], &[2.0, 10.0, 0.3], 1e-6);
    assert!(r.max_rel_err < 1e-7, "{r:?}");
}
