//! The model's process noise: per state, the SD per unit time `g_i(x, θ, t)`
//! declared by `noise: s ~ expr`, and its exact state gradient `∂g_i/∂x`
//! (the graph differentiated symbolically, as the model compiler does for
//! `f`). The filters read them through one [`Program`].

use insilico_model::expr::{DiffVar, Var};
use insilico_model::tape::{with_scratch, Env, Program};
use insilico_model::Model;

use crate::error::EstimationError;

/// Compiled noise SDs and their state gradients.
#[derive(Debug, Clone)]
pub(crate) struct NoiseModel {
    /// States with declared noise, in state order.
    pub states: Vec<usize>,
    /// Roots: one SD per noisy state, then the gradient entries.
    prog: Program,
    /// `(k, j)`: root `states.len() + e` is `∂g_{states[k]}/∂x_j`.
    grad: Vec<(usize, usize)>,
}

impl NoiseModel {
    /// Compiles the noise declarations of `model`.
    pub fn new(model: &Model) -> Result<NoiseModel, EstimationError> {
        let mut g = model.graph().clone();
        let n = model.nstates();
        let mut states = Vec::new();
        let mut roots = Vec::new();
        for (i, node) in model.noise().iter().enumerate() {
            if let Some(node) = node {
                states.push(i);
                roots.push(*node);
            }
        }
        let mut grad = Vec::new();
        for k in 0..states.len() {
            for j in 0..n {
                let d = g.diff(roots[k], DiffVar::Var(Var::State(j as u32))).map_err(|_| {
                    EstimationError::Filter(format!(
                        "the noise SD of state `{}` calls a network whose derivative by the states is not available",
                        model.state_names()[states[k]]
                    ))
                })?;
                if g.constant(d) != Some(0.0) {
                    grad.push((k, j));
                    roots.push(d);
                }
            }
        }
        Ok(NoiseModel { states, prog: Program::new(&g, &roots), grad })
    }

    /// Whether any state has declared noise.
    pub fn is_empty(&self) -> bool {
        self.states.is_empty()
    }

    /// `sd[i] = g_i` for the noisy states (0 elsewhere; `sd` has one entry
    /// per state) and, when `grad` is given, `grad[i·n + j] = ∂g_i/∂x_j`.
    #[allow(clippy::too_many_arguments)]
    pub fn eval(&self, model: &Model, env: &Env<'_>, sd: &mut [f64], grad: Option<&mut [f64]>) {
        sd.iter_mut().for_each(|v| *v = 0.0);
        if self.states.is_empty() {
            if let Some(gr) = grad {
                gr.iter_mut().for_each(|v| *v = 0.0);
            }
            return;
        }
        let n = sd.len();
        with_scratch(self.prog.len(), |regs| {
            self.prog.run(env, model.networks(), regs);
            for (k, &i) in self.states.iter().enumerate() {
                sd[i] = regs[self.prog.roots[k] as usize];
            }
            if let Some(gr) = grad {
                gr.iter_mut().for_each(|v| *v = 0.0);
                let first = self.states.len();
                for (e, &(k, j)) in self.grad.iter().enumerate() {
                    gr[self.states[k] * n + j] = regs[self.prog.roots[first + e] as usize];
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The symbolic `∂g/∂x` against central differences of `g` (step 1e-6
    /// relative; the error of a central difference of these smooth
    /// expressions is O(h²) ≈ 1e-12 relative, plus round-off ≈ 1e-16/h ≈ 1e-10).
    #[test]
    fn noise_gradient_matches_finite_differences() {
        let m = Model::parse(
            "parameters: s = 0.2, k = 0.3\nstates: a, b, c\nd/dt(a) = -k * a\nd/dt(b) = k * a - b\nd/dt(c) = 0\n\
             noise: a ~ s * a * b + 0.1\nnoise: c ~ s * sqrt(1 + c^2) * exp(-b)",
            "n",
        )
        .unwrap();
        let nm = NoiseModel::new(&m).unwrap();
        assert_eq!(nm.states, vec![0, 2]);
        let p = [0.2, 0.3];
        let x = [1.3, 0.7, 2.1];
        let env = |x: &[f64]| -> (Vec<f64>, Vec<f64>) {
            let mut sd = vec![0.0; 3];
            let mut gr = vec![0.0; 9];
            let e = Env { x, p: &p, u: &[], cov: &[], t: 0.0 };
            nm.eval(&m, &e, &mut sd, Some(&mut gr));
            (sd, gr)
        };
        let (sd, gr) = env(&x);
        assert!((sd[0] - (0.2 * 1.3 * 0.7 + 0.1)).abs() < 1e-15 && sd[1] == 0.0);
        for j in 0..3 {
            let h = 1e-6 * x[j].abs();
            let (mut xp, mut xm) = (x, x);
            xp[j] += h;
            xm[j] -= h;
            let (sp, _) = env(&xp);
            let (sm, _) = env(&xm);
            for i in 0..3 {
                let fd = (sp[i] - sm[i]) / (2.0 * h);
                assert!((fd - gr[i * 3 + j]).abs() < 1e-8 * (1.0 + fd.abs()), "∂g{i}/∂x{j}: {fd} vs {}", gr[i * 3 + j]);
            }
        }
    }
}
