//! Backend 1: the model as a [`solvers::System`](insilico_solvers::System),
//! for every diffsol method, forward sensitivities and the adjoint (`simulate`,
//! `fit`). Right-hand side, Jacobian entries, parameter derivatives and
//! outputs each run as one straight-line [`Program`] over the graph.

use std::sync::Arc;

use insilico_solvers::data::ColumnOrValue;
use insilico_solvers::System;

use crate::ast::DoseAttr;
use crate::error::ModelError;
use crate::expr::{Op, Var};
use crate::model::{attr_slot, Model, ParamKind, SparseNodes};
use crate::tape::{network_weight_jvp, network_weight_vjp, with_scratch, Env, Program};

/// The programs of a model, compiled once and shared by every subject.
#[derive(Debug)]
pub struct Compiled {
    /// The model.
    pub model: Model,
    pub(crate) rhs: Program,
    /// Tape layout of the fast path's reverse sweep over `rhs` ([`crate::fast`]).
    pub(crate) rhs_layout: crate::fast::RhsTapeLayout,
    jac: Program,
    dfdp: Program,
    /// `∂f/∂N` entries, then each network node's arguments.
    dfdnet: Program,
    out: Program,
    /// `∂y/∂x`, `∂y/∂θ`, `∂y/∂N` entries, then each output network node's arguments.
    out_grad: Program,
    init: Program,
}

impl Compiled {
    /// Compiles the programs of `model`.
    pub fn new(model: Model) -> Arc<Compiled> {
        let g = model.graph();
        let d = model.derivatives();
        let rhs = Program::new(g, model.rhs_nodes());
        let jac = Program::new(g, &d.jac.iter().map(|e| e.2).collect::<Vec<_>>());
        let dfdp = Program::new(g, &d.dfdp.iter().map(|e| e.2).collect::<Vec<_>>());
        let net_args = |nodes: &[u32]| -> Vec<u32> {
            nodes
                .iter()
                .flat_map(|&n| match g.op(n) {
                    Op::Net { args, .. } => args.clone(),
                    _ => Vec::new(),
                })
                .collect()
        };
        let mut roots: Vec<u32> = d.dfdnet.iter().map(|e| e.2).collect();
        roots.extend(net_args(&d.net_nodes));
        let dfdnet = Program::new(g, &roots);
        let out = Program::new(g, &model.output_nodes());
        let mut roots: Vec<u32> = d.dydx.iter().chain(&d.dydp).chain(&d.dydnet).map(|e| e.2).collect();
        roots.extend(net_args(&d.out_net_nodes));
        let out_grad = Program::new(g, &roots);
        let init = Program::new(g, model.init_nodes());
        let rhs_layout = crate::fast::RhsTapeLayout::new(&rhs.code, model.networks());
        Arc::new(Compiled { rhs, rhs_layout, jac, dfdp, dfdnet, out, out_grad, init, model })
    }
}

/// A compiled model bound to one subject's covariates: a [`System`].
///
/// ```
/// use insilico_model::{Model, ModelSystem};
/// use insilico_solvers::{check_derivatives, System};
/// let m = Model::parse("parameters: k = 0.5, V = 10\nstates: a, b\nflux a -> b = k * a^2\noutput: c = a / V", "m")?;
/// let sys = ModelSystem::new(&m, &[])?;
/// let report = check_derivatives(&sys, 0.0, &[2.0, 1.0], &[], &[0.5, 10.0], 1e-6);
/// assert!(report.max_rel_err < 1e-7);
/// # Ok::<(), insilico_model::ModelError>(())
/// ```
#[derive(Debug, Clone)]
pub struct ModelSystem {
    compiled: Arc<Compiled>,
    cov: Vec<f64>,
    /// Weight parameter groups: (network index, offset, len).
    pattern: Vec<(usize, usize)>,
    accumulators: Vec<usize>,
}

impl ModelSystem {
    /// Compiles `model` and binds it to covariate values (in
    /// [`Model::covariates`] order; missing ones take the model's defaults).
    pub fn new(model: &Model, covariates: &[f64]) -> Result<ModelSystem, ModelError> {
        ModelSystem::from_compiled(Compiled::new(model.clone()), covariates)
    }

    /// Binds already compiled programs to covariate values (cheap: one per subject).
    pub fn from_compiled(compiled: Arc<Compiled>, covariates: &[f64]) -> Result<ModelSystem, ModelError> {
        let m = &compiled.model;
        if m.output_nodes().iter().any(|&y| m.graph().deps(y).input) {
            return Err(ModelError::Engine {
                model: m.name().to_string(),
                engine: "the diffsol System",
                reason: "an output reads an exogenous input; outputs may read states, parameters, covariates and t"
                    .into(),
            });
        }
        let mut cov = m.default_covariates();
        for (c, v) in cov.iter_mut().zip(covariates) {
            *c = *v;
        }
        let pattern = m.jacobian_pattern();
        let n = m.nstates();
        let accumulators = (0..n).filter(|&j| !pattern.iter().any(|&(_, c)| c == j)).collect();
        Ok(ModelSystem { compiled, cov, pattern, accumulators })
    }

    /// The compiled programs.
    pub fn compiled(&self) -> &Arc<Compiled> {
        &self.compiled
    }
    /// The model.
    pub fn model(&self) -> &Model {
        &self.compiled.model
    }
    /// The bound covariate values.
    pub fn covariates(&self) -> &[f64] {
        &self.cov
    }

    fn env<'a>(&'a self, t: f64, x: &'a [f64], u: &'a [f64], p: &'a [f64]) -> Env<'a> {
        Env { x, p, u, cov: &self.cov, t }
    }

    /// The initial state for parameters `p` (`s(0) = ...` statements, 0 elsewhere).
    pub fn initial_state(&self, p: &[f64]) -> Vec<f64> {
        self.compiled.init.eval(&self.env(0.0, &[], &[], p), self.model().networks())
    }

    /// `∂x(0)/∂θ` as `(state, parameter, value)` entries: chain it with a
    /// gradient's `∂L/∂x₀` for parameters that set initial values.
    pub fn initial_state_jacobian(&self, p: &[f64]) -> Vec<(usize, usize, f64)> {
        let m = self.model();
        let d = &m.derived.dinit;
        let prog = Program::new(m.graph(), &d.iter().map(|e| e.2).collect::<Vec<_>>());
        let v = prog.eval(&self.env(0.0, &[], &[], p), m.networks());
        d.iter().zip(v).map(|(&(i, k, _), v)| (i, k, v)).collect()
    }

    /// Where a dose attribute of state `state` comes from for this subject:
    /// the parameter itself when the statement is a bare parameter (so
    /// gradients flow through it), else its value for `p` and the covariates.
    /// `None` when the model has no such statement.
    pub fn dose_attribute(&self, state: usize, attr: DoseAttr, p: &[f64]) -> Option<ColumnOrValue> {
        let m = self.model();
        let node = m.dose.get(state)?[attr_slot(attr)]?;
        if let Op::Var(Var::Param(i)) = m.graph().op(node) {
            return Some(ColumnOrValue::Param(*i as usize));
        }
        let prog = Program::new(m.graph(), &[node]);
        Some(ColumnOrValue::Value(prog.eval(&self.env(0.0, &[], &[], p), m.networks())[0]))
    }

    /// Runs `prog`, then hands `f` the registers.
    fn with_run<R>(&self, prog: &Program, env: &Env<'_>, f: impl FnOnce(&Program, &[f64]) -> R) -> R {
        with_scratch(prog.len(), |regs| {
            prog.run(env, self.model().networks(), regs);
            f(prog, regs)
        })
    }

    /// `out = A·v` (or `Aᵀ·v` with `transpose`) for the sparse derivative
    /// matrix `A` whose entries `(row, col, _)` are the roots of `prog`.
    fn sparse_product(
        &self,
        prog: &Program,
        entries: &SparseNodes,
        env: &Env<'_>,
        v: &[f64],
        out: &mut [f64],
        transpose: bool,
    ) {
        out.iter_mut().for_each(|o| *o = 0.0);
        self.with_run(prog, env, |prog, regs| {
            for (k, &(i, j, _)) in entries.iter().enumerate() {
                let a = regs[prog.roots[k] as usize];
                if transpose {
                    out[j] += a * v[i];
                } else {
                    out[i] += a * v[j];
                }
            }
        })
    }

    /// Weight-parameter tangents through every network node of `nodes`,
    /// `dfdnet` entries `(row, node index, register)`.
    fn net_args(prog: &Program, regs: &[f64], first: usize, nodes: &[u32], model: &Model) -> Vec<Vec<f64>> {
        let mut k = first;
        nodes
            .iter()
            .map(|&n| {
                let len = match model.graph().op(n) {
                    Op::Net { args, .. } => args.len(),
                    _ => 0,
                };
                let a = (0..len).map(|j| regs[prog.roots[k + j] as usize]).collect();
                k += len;
                a
            })
            .collect()
    }
}

impl System for ModelSystem {
    fn nstates(&self) -> usize {
        self.model().nstates()
    }
    fn nparams(&self) -> usize {
        self.model().params.len()
    }
    fn ninputs(&self) -> usize {
        self.model().inputs.len()
    }
    fn rhs(&self, t: f64, x: &[f64], u: &[f64], p: &[f64], dx: &mut [f64]) {
        let prog = &self.compiled.rhs;
        self.with_run(prog, &self.env(t, x, u, p), |prog, regs| {
            for (d, &r) in dx.iter_mut().zip(&prog.roots) {
                *d = regs[r as usize];
            }
        })
    }
    fn jvp(&self, t: f64, x: &[f64], u: &[f64], p: &[f64], v: &[f64], out: &mut [f64]) {
        let c = &self.compiled;
        self.sparse_product(&c.jac, &c.model.derived.jac, &self.env(t, x, u, p), v, out, false);
    }
    fn sensitivity_rhs(
        &self,
        t: f64,
        x: &[f64],
        u: &[f64],
        p: &[f64],
        s: &[f64],
        params: &[Option<usize>],
        out: &mut [f64],
    ) -> bool {
        let c = &self.compiled;
        let d = &c.model.derived;
        if !d.net_nodes.is_empty() {
            // Network-weight directions need the per-direction tangents of
            // `jvp_params`: the default path.
            return false;
        }
        let n = self.model().nstates();
        let env = self.env(t, x, u, p);
        out.iter_mut().for_each(|o| *o = 0.0);
        // ∂f/∂x evaluated once, applied to every column, in the entry order
        // of `jvp` (so each column equals `jvp`'s to the last bit).
        self.with_run(&c.jac, &env, |prog, regs| {
            for (k, &(i, j, _)) in d.jac.iter().enumerate() {
                let a = regs[prog.roots[k] as usize];
                for (col, sc) in out.chunks_exact_mut(n).zip(s.chunks_exact(n)) {
                    col[i] += a * sc[j];
                }
            }
        });
        if params.iter().any(Option::is_some) {
            // ∂f/∂θ evaluated once; column `j` gains the entries of parameter `params[j]`.
            self.with_run(&c.dfdp, &env, |prog, regs| {
                let mut tmp = [0.0f64; 64];
                for (col, param) in out.chunks_exact_mut(n).zip(params) {
                    let Some(param) = *param else { continue };
                    if n <= tmp.len() {
                        let tmp = &mut tmp[..n];
                        tmp.iter_mut().for_each(|v| *v = 0.0);
                        for (k, &(i, j, _)) in d.dfdp.iter().enumerate() {
                            if j == param {
                                tmp[i] += regs[prog.roots[k] as usize];
                            }
                        }
                        for (o, v) in col.iter_mut().zip(tmp.iter()) {
                            *o += v;
                        }
                    } else {
                        for (k, &(i, j, _)) in d.dfdp.iter().enumerate() {
                            if j == param {
                                col[i] += regs[prog.roots[k] as usize];
                            }
                        }
                    }
                }
            });
        }
        true
    }
    fn vjp_state(&self, t: f64, x: &[f64], u: &[f64], p: &[f64], w: &[f64], out: &mut [f64]) {
        let c = &self.compiled;
        self.sparse_product(&c.jac, &c.model.derived.jac, &self.env(t, x, u, p), w, out, true);
    }
    fn jvp_params(&self, t: f64, x: &[f64], u: &[f64], p: &[f64], v: &[f64], out: &mut [f64]) {
        let m = self.model();
        let d = &m.derived;
        self.sparse_product(&self.compiled.dfdp, &d.dfdp, &self.env(t, x, u, p), v, out, false);
        if d.net_nodes.is_empty() {
            return;
        }
        self.with_run(&self.compiled.dfdnet, &self.env(t, x, u, p), |prog, regs| {
            let args = Self::net_args(prog, regs, d.dfdnet.len(), &d.net_nodes, m);
            let tangents: Vec<f64> = d
                .net_nodes
                .iter()
                .zip(&args)
                .map(|(&n, a)| match m.graph().op(n) {
                    Op::Net { net, out, .. } => {
                        let nw = &m.networks[*net as usize];
                        network_weight_jvp(nw, p, a, *out, &v[nw.offset..nw.offset + nw.mlp.n_params()])
                    }
                    _ => 0.0,
                })
                .collect();
            for (k, &(i, n, _)) in d.dfdnet.iter().enumerate() {
                out[i] += regs[prog.roots[k] as usize] * tangents[n];
            }
        });
    }
    fn vjp_params(&self, t: f64, x: &[f64], u: &[f64], p: &[f64], w: &[f64], out: &mut [f64]) {
        let m = self.model();
        let d = &m.derived;
        self.sparse_product(&self.compiled.dfdp, &d.dfdp, &self.env(t, x, u, p), w, out, true);
        if d.net_nodes.is_empty() {
            return;
        }
        self.with_run(&self.compiled.dfdnet, &self.env(t, x, u, p), |prog, regs| {
            let args = Self::net_args(prog, regs, d.dfdnet.len(), &d.net_nodes, m);
            let mut ybar = vec![0.0; d.net_nodes.len()];
            for (k, &(i, n, _)) in d.dfdnet.iter().enumerate() {
                ybar[n] += regs[prog.roots[k] as usize] * w[i];
            }
            for ((&n, a), &yb) in d.net_nodes.iter().zip(&args).zip(&ybar) {
                if let Op::Net { net, out: o, .. } = m.graph().op(n) {
                    let nw = &m.networks[*net as usize];
                    let len = nw.mlp.n_params();
                    network_weight_vjp(nw, p, a, *o, yb, &mut out[nw.offset..nw.offset + len]);
                }
            }
        });
    }
    fn jacobian_sparsity(&self) -> Option<Vec<(usize, usize)>> {
        Some(self.pattern.clone())
    }
    fn jacobian_values(&self, t: f64, x: &[f64], u: &[f64], p: &[f64], values: &mut [f64]) -> bool {
        self.with_run(&self.compiled.jac, &self.env(t, x, u, p), |prog, regs| {
            for (v, &r) in values.iter_mut().zip(&prog.roots) {
                *v = regs[r as usize];
            }
        });
        true
    }
    fn invariants(&self) -> Vec<Vec<f64>> {
        self.model().invariants.clone()
    }
    fn accumulators(&self) -> Vec<usize> {
        self.accumulators.clone()
    }
    fn noutputs(&self) -> usize {
        self.model().outputs.len()
    }
    fn output(&self, k: usize, t: f64, x: &[f64], p: &[f64]) -> f64 {
        let prog = &self.compiled.out;
        self.with_run(prog, &self.env(t, x, &[], p), |prog, regs| regs[prog.roots[k] as usize])
    }
    fn output_grad(&self, k: usize, t: f64, x: &[f64], p: &[f64], gx: &mut [f64], gp: &mut [f64]) {
        let m = self.model();
        let d = &m.derived;
        self.with_run(&self.compiled.out_grad, &self.env(t, x, &[], p), |prog, regs| {
            let mut r = 0;
            for &(o, j, _) in &d.dydx {
                if o == k {
                    gx[j] += regs[prog.roots[r] as usize];
                }
                r += 1;
            }
            for &(o, j, _) in &d.dydp {
                if o == k {
                    gp[j] += regs[prog.roots[r] as usize];
                }
                r += 1;
            }
            let first_args = r + d.dydnet.len();
            let args = Self::net_args(prog, regs, first_args, &d.out_net_nodes, m);
            for &(o, n, _) in &d.dydnet {
                if o == k {
                    let ybar = regs[prog.roots[r] as usize];
                    if let Op::Net { net, out, .. } = m.graph().op(d.out_net_nodes[n]) {
                        let nw = &m.networks[*net as usize];
                        let len = nw.mlp.n_params();
                        network_weight_vjp(nw, p, &args[n], *out, ybar, &mut gp[nw.offset..nw.offset + len]);
                    }
                }
                r += 1;
            }
        })
    }
    fn state_names(&self) -> Vec<String> {
        self.model().states.clone()
    }
    fn param_names(&self) -> Vec<String> {
        self.model().params.iter().map(|p| p.name.clone()).collect()
    }
}

/// Indices in `θ` of network weights (for callers that treat them apart).
pub fn weight_indices(model: &Model) -> Vec<usize> {
    model
        .params()
        .iter()
        .enumerate()
        .filter(|(_, p)| matches!(p.kind, ParamKind::Weight { .. }))
        .map(|(i, _)| i)
        .collect()
}
