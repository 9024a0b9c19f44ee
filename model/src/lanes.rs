//! Backend 2: the model on the batched integrators of `insilico-kernels`
//! ([`BatchModel`]), as a compact register program.
//!
//! The graph is split once: nodes that depend only on parameters and
//! covariates are computed per trajectory by [`BatchModel::prepare`] into
//! the derived constants (divisions such as `CL/V1` leave the right-hand
//! side, as in a hand-written model); the rest runs as a straight-line
//! program over a small register file `[x | derived | u | temporaries]` in
//! every right-hand side, Jacobian and output evaluation. The instructions
//! are those of [`crate::tape::Program`], in the same order, so this
//! engine, the diffsol [`crate::ModelSystem`] and the generated CUDA code
//! do the same floating-point operations.

use std::sync::Arc;

use insilico_kernels::{BatchModel, CudaSource, LaneRhs};

use crate::error::ModelError;
use crate::expr::{eval_binary, eval_unary, Graph, Id, Op, Var};
use crate::jit::{Jit, NativeFn};
use crate::model::{Model, ParamKind};
use crate::tape::{eval_network, Env, Program};

/// Most derived constants the batched integrators carry per trajectory.
pub const MAX_DERIVED: usize = 64;
/// Most registers of one right-hand side, Jacobian or output program.
pub const MAX_REGISTERS: usize = 512;

/// One instruction over the register file (operands are register numbers).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum LaneIns {
    Const(f64),
    Unary(Op, u16),
    Binary(Op, u16, u16),
    Select(u16, u16, u16),
    Net { net: u32, out: u32, grad: Option<u32>, args: Vec<u16> },
}

/// A straight-line program of dynamic nodes; instruction `k` writes register `base + k`.
#[derive(Debug, Clone, Default)]
pub(crate) struct LaneProgram {
    pub(crate) code: Vec<LaneIns>,
    /// Register of each root.
    pub(crate) roots: Vec<u16>,
}

/// How the graph's nodes map onto the register file, shared by the programs.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    pub(crate) n: usize,
    /// Static nodes kept as derived constants, in slot order.
    pub(crate) derived: Vec<Id>,
    pub(crate) ninputs: usize,
}

impl Layout {
    pub(crate) fn base(&self) -> usize {
        self.n + self.derived.len() + self.ninputs
    }
}

/// How a [`LaneModel`] runs its programs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Backend {
    /// Native code from Cranelift, falling back to the interpreter for
    /// programs it cannot compile (those with networks) or where the JIT
    /// is unavailable.
    #[default]
    Jit,
    /// The register-program interpreter only (the reference the JIT is tested against).
    Interpreter,
}

/// What the batched engine makes of a model ([`batched_engine_report`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchedReport {
    /// Per-trajectory constants hoisted out of the right-hand side.
    pub derived: usize,
    /// Instructions of the right-hand side, Jacobian and output programs.
    pub instructions: (usize, usize, usize),
    /// Programs compiled to native code (of `2 + outputs`).
    pub native: usize,
    /// Why the JIT could not run, if it could not.
    pub jit_error: Option<String>,
    /// Lines of generated CUDA C (first output observed).
    pub cuda_lines: usize,
}

/// Compiles `model` for the batched engine without fixing its size, to
/// report whether and how it runs there (`Err` says why not and which engine can).
pub fn batched_engine_report(model: &Model) -> Result<BatchedReport, ModelError> {
    if model.nstates() > 32 {
        return Err(engine_err(model, format!("{} states; the batched integrators take at most 32", model.nstates())));
    }
    let n_weights = model.params().iter().filter(|p| matches!(p.kind, ParamKind::Weight { .. })).count();
    let weights = vec![0.0; n_weights];
    let inner = LaneInner::new(model, &weights, Backend::Jit)?;
    let native = inner.jit.as_ref().map_or(0, |j| j.functions.iter().flatten().count());
    let out_len = inner.outputs.first().map_or(0, |o| o.code.len());
    Ok(BatchedReport {
        derived: inner.layout.derived.len(),
        instructions: (inner.rhs.code.len(), inner.jac.code.len(), out_len),
        native,
        jit_error: inner.jit_error.clone(),
        cuda_lines: crate::cuda::cuda_source(&inner, 0).code.lines().count(),
    })
}

/// The model compiled for the batched integrators; `N` is its number of states.
#[derive(Debug, Clone)]
pub struct LaneModel<const N: usize> {
    inner: Arc<LaneInner>,
    output: usize,
}

#[derive(Debug)]
pub(crate) struct LaneInner {
    pub(crate) model: Model,
    pub(crate) layout: Layout,
    /// Computes the derived constants from `[scalar θ | covariates]`.
    pub(crate) prepare: Program,
    pub(crate) rhs: LaneProgram,
    pub(crate) jac: LaneProgram,
    pub(crate) jac_entries: Vec<(usize, usize)>,
    pub(crate) outputs: Vec<LaneProgram>,
    /// Network weights shared by every trajectory (the tail of `θ`).
    pub(crate) weights: Vec<f64>,
    pub(crate) n_scalar: usize,
    /// `θ` as the networks read it: zeros for the scalar parameters, then the weights.
    net_theta: Vec<f64>,
    /// Native code of `[rhs, jac, outputs...]`, where compiled.
    pub(crate) jit: Option<Jit>,
    /// Why the JIT was not used, when it failed.
    jit_error: Option<String>,
}

fn engine_err(m: &Model, reason: String) -> ModelError {
    ModelError::Engine { model: m.name().to_string(), engine: "the batched engine", reason }
}

impl<const N: usize> LaneModel<N> {
    /// Compiles `model` for the batched integrators. `weights` are the
    /// network weights shared by every trajectory (the tail of `θ` after
    /// the scalar parameters; empty for models without networks); `output`
    /// names the observed output (the integrators observe one per pass).
    pub fn new(model: &Model, weights: &[f64], output: &str) -> Result<LaneModel<N>, ModelError> {
        Self::with_backend(model, weights, output, Backend::Jit)
    }

    /// [`LaneModel::new`] with a chosen [`Backend`].
    pub fn with_backend(
        model: &Model,
        weights: &[f64],
        output: &str,
        backend: Backend,
    ) -> Result<LaneModel<N>, ModelError> {
        let n = model.nstates();
        if n != N {
            return Err(engine_err(model, format!("compiled for {N} states, the model has {n}")));
        }
        let output = model.output_names().iter().position(|o| *o == output).ok_or_else(|| {
            engine_err(model, format!("no output `{output}` (outputs: {})", model.output_names().join(", ")))
        })?;
        Ok(LaneModel { inner: Arc::new(LaneInner::new(model, weights, backend)?), output })
    }

    /// Why the JIT could not compile this model, if it failed (the
    /// interpreter then runs every program).
    pub fn jit_error(&self) -> Option<&str> {
        self.inner.jit_error.as_deref()
    }

    /// How many of the right-hand side, Jacobian and output programs run as native code.
    pub fn native_programs(&self) -> usize {
        self.inner.jit.as_ref().map_or(0, |j| j.functions.iter().flatten().count())
    }

    /// The same compiled model observing another output.
    pub fn with_output(&self, output: &str) -> Result<LaneModel<N>, ModelError> {
        let m = &self.inner.model;
        let k =
            m.output_names().iter().position(|o| *o == output).ok_or_else(|| {
                engine_err(m, format!("no output `{output}` (outputs: {})", m.output_names().join(", ")))
            })?;
        Ok(LaneModel { inner: self.inner.clone(), output: k })
    }

    /// The model.
    pub fn model(&self) -> &Model {
        &self.inner.model
    }

    /// The initial state for per-trajectory parameters `p` (`[scalar θ | covariates]`).
    pub fn initial_state(&self, p: &[f64]) -> [f64; N] {
        let inner = &self.inner;
        let (theta, cov) = inner.split(p);
        let prog = Program::new(inner.model.graph(), inner.model.init_nodes());
        let v = prog.eval(&Env { x: &[], p: &theta, u: &[], cov, t: 0.0 }, inner.model.networks());
        std::array::from_fn(|i| v[i])
    }
}

impl LaneInner {
    fn new(model: &Model, weights: &[f64], backend: Backend) -> Result<LaneInner, ModelError> {
        let g = model.graph();
        if model.is_time_dependent() {
            return Err(engine_err(
                model,
                "a right-hand side reads `t`; the batched integrators take autonomous models (time enters through \
                 the schedule). The diffsol engine (`simulate`, `fit`) runs it"
                    .into(),
            ));
        }
        let outs = model.output_nodes();
        if outs.iter().any(|&y| g.deps(y).input || g.deps(y).time) {
            return Err(engine_err(model, "an output reads an input or `t`".into()));
        }
        let n_scalar = model.params().iter().filter(|p| !matches!(p.kind, ParamKind::Weight { .. })).count();
        let n_weights = model.params().len() - n_scalar;
        if weights.len() != n_weights {
            return Err(engine_err(
                model,
                format!("{} network weights given, the model has {n_weights}", weights.len()),
            ));
        }
        let d = model.derivatives();
        let jac_roots: Vec<Id> = d.jac.iter().map(|e| e.2).collect();
        // Static nodes read by dynamic ones, or roots themselves: the derived constants.
        let mut all_roots: Vec<Id> = model.rhs_nodes().to_vec();
        all_roots.extend(&jac_roots);
        all_roots.extend(&outs);
        let mut derived = Vec::new();
        let mut is_derived = vec![false; g.len()];
        let mut mark = |id: Id, derived: &mut Vec<Id>| {
            if !is_derived[id as usize] && g.constant(id).is_none() {
                is_derived[id as usize] = true;
                derived.push(id);
            }
        };
        for &id in &g.closure(&all_roots) {
            let dyn_node = !g.deps(id).is_static();
            if dyn_node {
                for a in g.op(id).operands() {
                    if g.deps(a).is_static() {
                        mark(a, &mut derived);
                    }
                }
            }
        }
        for &r in &all_roots {
            if g.deps(r).is_static() {
                mark(r, &mut derived);
            }
        }
        if derived.len() > MAX_DERIVED {
            return Err(engine_err(
                model,
                format!(
                    "it needs {} per-trajectory constants, the batched integrators carry at most {MAX_DERIVED}; \
                     the diffsol engine (`simulate`, `fit`) runs it",
                    derived.len()
                ),
            ));
        }
        let layout = Layout { n: model.nstates(), derived, ninputs: model.inputs().len() };
        if layout.ninputs > insilico_kernels::integrate::MAX_INPUTS {
            return Err(engine_err(
                model,
                format!(
                    "{} inputs, the batched integrators take at most {}",
                    layout.ninputs,
                    insilico_kernels::integrate::MAX_INPUTS
                ),
            ));
        }
        let prepare = Program::new(g, &layout.derived);
        let rhs = lane_program(g, &layout, model.rhs_nodes(), model)?;
        let jac = lane_program(g, &layout, &jac_roots, model)?;
        let outputs: Vec<LaneProgram> =
            outs.iter().map(|&y| lane_program(g, &layout, &[y], model)).collect::<Result<_, _>>()?;
        let (jit, jit_error) = match backend {
            Backend::Interpreter => (None, None),
            Backend::Jit => {
                let mut progs = vec![&rhs, &jac];
                progs.extend(outputs.iter());
                // A JIT failure (an unsupported host, say) leaves the interpreter in charge.
                match Jit::compile(&layout, &progs) {
                    Ok(j) => (Some(j), None),
                    Err(e) => (None, Some(e.0)),
                }
            }
        };
        Ok(LaneInner {
            jit,
            jit_error,
            model: model.clone(),
            jac_entries: d.jac.iter().map(|e| (e.0, e.1)).collect(),
            layout,
            prepare,
            rhs,
            jac,
            outputs,
            weights: weights.to_vec(),
            n_scalar,
            net_theta: std::iter::repeat_n(0.0, n_scalar).chain(weights.iter().copied()).collect(),
        })
    }

    /// `θ` (scalar parameters, then the shared weights) and the covariates from per-trajectory `p`.
    fn split<'a>(&self, p: &'a [f64]) -> (Vec<f64>, &'a [f64]) {
        let k = self.n_scalar.min(p.len());
        let mut theta = p[..k].to_vec();
        theta.resize(self.n_scalar, f64::NAN);
        theta.extend_from_slice(&self.weights);
        (theta, &p[k..])
    }

    /// Runs `prog` with states `x`, derived constants `d`, inputs `u`.
    #[inline]
    fn run(&self, prog: &LaneProgram, x: &[f64], d: &[f64], u: &[f64], regs: &mut [f64]) {
        let lay = &self.layout;
        let nd = lay.derived.len();
        regs[..lay.n].copy_from_slice(&x[..lay.n]);
        regs[lay.n..lay.n + nd].copy_from_slice(&d[..nd]);
        regs[lay.n + nd..lay.n + nd + lay.ninputs].copy_from_slice(&u[..lay.ninputs]);
        let base = lay.base();
        for (k, ins) in prog.code.iter().enumerate() {
            let v = match ins {
                LaneIns::Const(c) => *c,
                LaneIns::Binary(op, a, b) => {
                    let (a, b) = (regs[*a as usize], regs[*b as usize]);
                    match op {
                        Op::Add(..) => a + b,
                        Op::Sub(..) => a - b,
                        Op::Mul(..) => a * b,
                        Op::Div(..) => a / b,
                        op => eval_binary(op, a, b),
                    }
                }
                LaneIns::Unary(op, a) => {
                    let a = regs[*a as usize];
                    match op {
                        Op::Neg(_) => -a,
                        op => eval_unary(op, a),
                    }
                }
                LaneIns::Select(c, a, b) => {
                    if regs[*c as usize] != 0.0 {
                        regs[*a as usize]
                    } else {
                        regs[*b as usize]
                    }
                }
                LaneIns::Net { net, out, grad, args } => {
                    let a: Vec<f64> = args.iter().map(|&r| regs[r as usize]).collect();
                    eval_network(&self.model.networks()[*net as usize], &self.net_theta, &a, *out, *grad)
                }
            };
            regs[base + k] = v;
        }
    }

    fn registers(&self, prog: &LaneProgram) -> usize {
        self.layout.base() + prog.code.len()
    }

    /// Native code of program `k` of `[rhs, jac, outputs...]`, if compiled.
    #[inline(always)]
    fn native(&self, k: usize) -> Option<NativeFn> {
        self.jit.as_ref().and_then(|j| j.functions.get(k).copied().flatten())
    }
}

/// Compiles the dynamic part of `roots` into a lane program.
fn lane_program(g: &Graph, lay: &Layout, roots: &[Id], model: &Model) -> Result<LaneProgram, ModelError> {
    let base = lay.base();
    let mut reg = vec![u16::MAX; g.len()];
    for (slot, &id) in lay.derived.iter().enumerate() {
        reg[id as usize] = (lay.n + slot) as u16;
    }
    let mut code = Vec::new();
    // Constants are materialised only where a dynamic node or a root reads them.
    let closure = g.closure(roots);
    let mut wanted = vec![false; g.len()];
    for &id in &closure {
        if !g.deps(id).is_static() {
            for a in g.op(id).operands() {
                wanted[a as usize] = true;
            }
        }
    }
    for &r in roots {
        wanted[r as usize] = true;
    }
    for id in closure {
        if reg[id as usize] != u16::MAX {
            continue;
        }
        match g.op(id) {
            Op::Var(Var::State(i)) => {
                reg[id as usize] = *i as u16;
                continue;
            }
            Op::Var(Var::Input(i)) => {
                reg[id as usize] = (lay.n + lay.derived.len() + *i as usize) as u16;
                continue;
            }
            Op::Var(_) => continue, // static leaves are reached through derived constants
            Op::Const(b) => {
                if wanted[id as usize] {
                    reg[id as usize] = (base + code.len()) as u16;
                    code.push(LaneIns::Const(f64::from_bits(*b)));
                }
                continue;
            }
            _ => {}
        }
        if g.deps(id).is_static() {
            continue;
        }
        let r = |a: &Id| reg[*a as usize];
        let ins = match g.op(id) {
            Op::Select(c, a, b) => LaneIns::Select(r(c), r(a), r(b)),
            Op::Net { net, out, args } => {
                LaneIns::Net { net: *net, out: *out, grad: None, args: args.iter().map(r).collect() }
            }
            Op::NetGrad { net, out, wrt, args } => {
                LaneIns::Net { net: *net, out: *out, grad: Some(*wrt), args: args.iter().map(r).collect() }
            }
            op => {
                let ops = op.operands();
                if ops.len() == 1 {
                    LaneIns::Unary(op.clone(), r(&ops[0]))
                } else {
                    LaneIns::Binary(op.clone(), r(&ops[0]), r(&ops[1]))
                }
            }
        };
        reg[id as usize] = (base + code.len()) as u16;
        code.push(ins);
    }
    if base + code.len() > MAX_REGISTERS {
        return Err(engine_err(
            model,
            format!("a program needs {} registers, the batched engine allows {MAX_REGISTERS}", base + code.len()),
        ));
    }
    let roots = roots.iter().map(|&id| reg[id as usize]).collect::<Vec<_>>();
    if roots.contains(&u16::MAX) {
        return Err(engine_err(model, "internal: a root has no register".into()));
    }
    Ok(LaneProgram { code, roots })
}

/// Calls `f` with a zeroed register file of at least `n` values, on the
/// stack for the common small programs.
#[inline(always)]
fn with_registers<R>(n: usize, f: impl FnOnce(&mut [f64]) -> R) -> R {
    if n <= 32 {
        f(&mut [0.0; 32])
    } else if n <= 128 {
        f(&mut [0.0; 128])
    } else {
        f(&mut [0.0; MAX_REGISTERS])
    }
}

impl<const N: usize> BatchModel<N> for LaneModel<N> {
    fn nparams(&self) -> usize {
        self.inner.n_scalar + self.inner.model.covariates().len()
    }
    fn nderived(&self) -> usize {
        self.inner.layout.derived.len()
    }
    fn prepare(&self, p: &[f64], d: &mut [f64]) {
        let inner = &self.inner;
        let (theta, cov) = inner.split(p);
        let v = inner.prepare.eval(&Env { x: &[], p: &theta, u: &[], cov, t: 0.0 }, inner.model.networks());
        d[..v.len()].copy_from_slice(&v);
    }
    fn ninputs(&self) -> usize {
        self.inner.layout.ninputs
    }
    #[inline]
    fn rhs(&self, x: &[f64; N], d: &[f64], u: &[f64], dx: &mut [f64; N]) {
        let inner = &*self.inner;
        if let Some(f) = inner.native(0) {
            // SAFETY: the code reads n states, nd derived constants and ninputs inputs and writes
            // n values; the integrator passes slices of exactly those lengths (checked in debug).
            debug_assert!(d.len() >= inner.layout.derived.len() && u.len() >= inner.layout.ninputs);
            unsafe { f(x.as_ptr(), d.as_ptr(), u.as_ptr(), dx.as_mut_ptr()) };
            return;
        }
        let prog = &inner.rhs;
        with_registers(inner.registers(prog), |regs| {
            inner.run(prog, x, d, u, regs);
            for (o, &r) in dx.iter_mut().zip(&prog.roots) {
                *o = regs[r as usize];
            }
        })
    }
    fn jacobian(&self, x: &[f64; N], d: &[f64], u: &[f64], jac: &mut [[f64; N]; N]) {
        let inner = &*self.inner;
        let prog = &inner.jac;
        *jac = [[0.0; N]; N];
        if let Some(f) = inner.native(1) {
            let mut vals = vec![0.0; inner.jac_entries.len()];
            // SAFETY: as in `rhs`; the code writes one value per Jacobian entry into `vals`.
            unsafe { f(x.as_ptr(), d.as_ptr(), u.as_ptr(), vals.as_mut_ptr()) };
            for (&(i, j), v) in inner.jac_entries.iter().zip(vals) {
                jac[i][j] = v;
            }
            return;
        }
        with_registers(inner.registers(prog), |regs| {
            inner.run(prog, x, d, u, regs);
            for (&(i, j), &r) in inner.jac_entries.iter().zip(&prog.roots) {
                jac[i][j] = regs[r as usize];
            }
        })
    }
    #[inline]
    fn output(&self, x: &[f64; N], d: &[f64]) -> f64 {
        let inner = &*self.inner;
        let prog = &inner.outputs[self.output];
        let u = [0.0; 4];
        if let Some(f) = inner.native(2 + self.output) {
            let mut y = 0.0;
            // SAFETY: as in `rhs`; an output program writes one value.
            unsafe { f(x.as_ptr(), d.as_ptr(), u.as_ptr(), &mut y) };
            return y;
        }
        with_registers(inner.registers(prog), |regs| {
            inner.run(prog, x, d, &u, regs);
            regs[prog.roots[0] as usize]
        })
    }
    fn cuda_source(&self) -> CudaSource {
        crate::cuda::cuda_source(&self.inner, self.output)
    }
    fn weights(&self) -> &[f64] {
        &self.inner.weights
    }
    fn batches_lanes(&self) -> bool {
        self.inner.jit.as_ref().is_some_and(|j| j.lanes.is_some())
    }
    fn rhs_lanes(&self, lanes: &mut [Option<LaneRhs<'_, N>>]) {
        const MAX: usize = 16;
        let Some(f) = self.inner.jit.as_ref().and_then(|j| j.lanes) else {
            for l in lanes.iter_mut().flatten() {
                self.rhs(l.x, l.d, l.u, l.dx);
            }
            return;
        };
        use std::mem::MaybeUninit;
        for group in lanes.chunks_mut(MAX) {
            // Uninitialised: only the first `n` entries are written and read.
            let mut xs = [const { MaybeUninit::<*const f64>::uninit() }; MAX];
            let mut ds = [const { MaybeUninit::<*const f64>::uninit() }; MAX];
            let mut us = [const { MaybeUninit::<*const f64>::uninit() }; MAX];
            let mut outs = [const { MaybeUninit::<*mut f64>::uninit() }; MAX];
            let mut n = 0;
            for l in group.iter_mut().flatten() {
                debug_assert!(l.d.len() >= self.inner.layout.derived.len() && l.u.len() >= self.inner.layout.ninputs);
                xs[n].write(l.x.as_ptr());
                ds[n].write(l.d.as_ptr());
                us[n].write(l.u.as_ptr());
                outs[n].write(l.dx.as_mut_ptr());
                n += 1;
            }
            // SAFETY: the code reads the first n ≤ MAX entries, all written just above, each
            // pointing at slices of the lengths it reads (n states, the derived constants, the
            // inputs) and a distinct `dx` of n states it writes. `MaybeUninit<T>` has `T`'s layout.
            unsafe { f(n, xs.as_ptr().cast(), ds.as_ptr().cast(), us.as_ptr().cast(), outs.as_ptr().cast()) };
        }
    }
}
