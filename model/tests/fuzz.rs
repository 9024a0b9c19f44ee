//! The parser and compiler never panic: random token soups and mutations of
//! real model files either compile or give a located error, and a model that
//! compiles evaluates (right-hand side, Jacobian, outputs) without panicking.
//!
//! CI runs `FUZZ_CASES` cases (default 3,000); the long run of the issue note is
//! `FUZZ_CASES=1000000 cargo test --release -p insilico-model --test fuzz -- --nocapture`.

use insilico_model::{Model, ModelError, ModelSystem};
use insilico_solvers::System;

const SEEDS: [&str; 4] = [
    "parameters: ka = 1.2 in (0, inf), CL = 5, V1 = 30\ncovariates: WT = 70\nstates: depot, central, eliminated\n\
     network g: 1 -> 4 -> 1 tanh\nCLi = CL * (WT / 70)^0.75\ncp = central / V1\nflux depot -> central = ka * depot\n\
     flux central -> eliminated = CLi * cp + central * 0.2 * softplus(g(cp / 5))\nalag(depot) = 0.5\nf(depot) = 1\n\
     conserved: depot + central + eliminated\noutput: cp\n",
    "parameters: k = 1, n = 2\nrandom: ETA\ninputs: u\nstates: a, b\na(0) = 1\nif (a > 1 && b < 2) { z = exp(k) } else if (b == 0) { z = 1 } else { z = log(2) }\n\
     d/dt(a) = -k * exp(ETA) * a + u * hill(b, 2, n)\nd/dt(b) = max(a, z) - min(b, 1) * abs(a - b) + ifelse(a < b, sqrt(a), 0)\n\
     noise: a ~ 0.1 * a\noutput: y = a / (1 + b), b\n",
    "states: x\nd/dt(x) = -x^-2 + t * sigmoid(x) - tanh(x) ** 3 + log10(x + 2) + pow(x, 0.5)\n",
    "parameters: a\nstates: s1, s2\nflux in -> s1 = a\nflux s1 -> out = s1\nflux s1 -> s2 = 2 * s1; d/dt(s2) = -s2\n",
];

const TOKENS: [&str; 48] = [
    "parameters:",
    "states:",
    "covariates:",
    "inputs:",
    "random:",
    "conserved:",
    "output:",
    "noise:",
    "network g:",
    "flux",
    "->",
    "d/dt(",
    "(0)",
    "alag(",
    "f(",
    "rate(",
    "dur(",
    "if",
    "else",
    "{",
    "}",
    "(",
    ")",
    "[",
    "]",
    ",",
    "=",
    "+",
    "-",
    "*",
    "/",
    "^",
    "<",
    ">=",
    "==",
    "&&",
    "!",
    "~",
    "\n",
    ";",
    "a",
    "b",
    "x",
    "t",
    "1",
    "0.5",
    "1e308",
    "exp(",
];

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// One fuzz input: a token soup or a mutated seed model.
fn case(rng: &mut Rng) -> String {
    match rng.below(3) {
        0 => (0..1 + rng.below(40)).map(|_| TOKENS[rng.below(TOKENS.len())]).collect::<Vec<_>>().join(" "),
        _ => {
            let mut s: Vec<char> = SEEDS[rng.below(SEEDS.len())].chars().collect();
            for _ in 0..1 + rng.below(3) {
                let at = rng.below(s.len().max(1));
                match rng.below(4) {
                    0 if !s.is_empty() => {
                        s.remove(at.min(s.len() - 1));
                    }
                    1 => {
                        let t: Vec<char> = TOKENS[rng.below(TOKENS.len())].chars().collect();
                        for (k, c) in t.into_iter().enumerate() {
                            s.insert((at + k).min(s.len()), c);
                        }
                    }
                    2 if !s.is_empty() => {
                        let c = char::from_u32(rng.below(0x250) as u32).unwrap_or('?');
                        let k = at.min(s.len() - 1);
                        s[k] = c;
                    }
                    _ => {
                        let (a, b) = (rng.below(s.len().max(1)), rng.below(s.len().max(1)));
                        let (a, b) = (a.min(b), a.max(b));
                        let piece: Vec<char> = s[a..b].to_vec();
                        for (k, c) in piece.into_iter().enumerate() {
                            s.insert((at + k).min(s.len()), c);
                        }
                    }
                }
            }
            s.into_iter().collect()
        }
    }
}

#[test]
fn the_compiler_never_panics() {
    let cases: u64 = std::env::var("FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(3000);
    let mut rng = Rng(0x5eed_1234_abcd_ef01);
    let (mut ok, mut located, mut other) = (0u64, 0u64, 0u64);
    let start = std::time::Instant::now();
    for _ in 0..cases {
        let text = case(&mut rng);
        let result = std::panic::catch_unwind(|| match Model::parse(&text, "fuzz.model") {
            Ok(m) => {
                let sys = ModelSystem::new(&m, &[]);
                if let Ok(sys) = sys {
                    let n = sys.nstates();
                    let p: Vec<f64> = (0..sys.nparams()).map(|k| 0.5 + 0.01 * k as f64).collect();
                    let x = vec![0.7; n];
                    let u = vec![1.0; sys.ninputs()];
                    let mut out = vec![0.0; n];
                    sys.rhs(0.5, &x, &u, &p, &mut out);
                    sys.jvp(0.5, &x, &u, &p, &x, &mut out);
                    let mut gp = vec![0.0; p.len()];
                    sys.vjp_params(0.5, &x, &u, &p, &x, &mut gp);
                    for k in 0..sys.noutputs() {
                        let _ = sys.output(k, 0.5, &x, &p);
                    }
                }
                0
            }
            Err(ModelError::At { line, column, .. }) => {
                assert!(line >= 1 && column >= 1);
                1
            }
            Err(_) => 2,
        });
        match result {
            Ok(0) => ok += 1,
            Ok(1) => located += 1,
            Ok(_) => other += 1,
            Err(_) => panic!("the compiler panicked on:\n{text}"),
        }
    }
    println!(
        "fuzz: {cases} cases in {:.1} s: {ok} compiled, {located} located errors, {other} whole-model errors, 0 panics",
        start.elapsed().as_secs_f64()
    );
}
