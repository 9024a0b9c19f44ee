//! The compiled model: names, the expression graph, and the roots every
//! engine evaluates (right-hand side, outputs, initial state, dose
//! attributes) with their exact derivatives.

use std::path::Path;
use std::sync::Arc;

use insilico_neural::Mlp;

use crate::ast::DoseAttr;
use crate::error::{ModelError, Source};
use crate::expr::{DiffVar, Graph, Id, Op, Var};

/// What a parameter of `θ` is.
#[derive(Debug, Clone, PartialEq)]
pub enum ParamKind {
    /// Declared under `parameters:`.
    Declared,
    /// A random effect declared under `random:` (default 0).
    Random,
    /// Weight `k` of network `net` (in the network's flat layout).
    Weight {
        /// Network index.
        net: usize,
        /// Index in the network's weights.
        k: usize,
    },
}

/// One entry of `θ`.
#[derive(Debug, Clone, PartialEq)]
pub struct Param {
    /// Name (`g.w17` for network weights).
    pub name: String,
    /// What it is.
    pub kind: ParamKind,
    /// The default value written in the model (random effects: 0; weights: seeded initialisation).
    pub default: Option<f64>,
    /// The allowed range written in the model (`in (0, inf)`), if any.
    pub bounds: Option<crate::ast::Bounds>,
}

/// A network declared in the model.
#[derive(Debug, Clone)]
pub struct Network {
    /// Its name.
    pub name: String,
    /// Architecture and layout.
    pub mlp: Mlp,
    /// Index in `θ` of its first weight.
    pub offset: usize,
}

/// A covariate: a dataset column read per subject.
#[derive(Debug, Clone, PartialEq)]
pub struct Covariate {
    /// Column name (compared case-insensitively with the dataset's).
    pub name: String,
    /// Value where the dataset has no such column.
    pub default: Option<f64>,
}

/// A sparse matrix of derivative nodes: `(row, column, node)`.
pub type SparseNodes = Vec<(usize, usize, Id)>;

/// A model compiled from the model language: the single source every engine
/// consumes.
///
/// ```
/// use insilico_model::Model;
/// let m = Model::parse("parameters: k = 0.5\nstates: a, b\nflux a -> b = k * a\noutput: a\nconserved: a + b", "decay")?;
/// assert_eq!(m.state_names(), ["a", "b"]);
/// assert_eq!(m.jacobian_pattern(), vec![(0, 0), (1, 0)]);
/// # Ok::<(), insilico_model::ModelError>(())
/// ```
#[derive(Debug, Clone)]
pub struct Model {
    pub(crate) name: String,
    pub(crate) graph: Graph,
    pub(crate) states: Vec<String>,
    pub(crate) params: Vec<Param>,
    pub(crate) covariates: Vec<Covariate>,
    pub(crate) inputs: Vec<String>,
    pub(crate) networks: Vec<Network>,
    /// `f_i`, one per state.
    pub(crate) rhs: Vec<Id>,
    /// `x_i(0)`.
    pub(crate) init: Vec<Id>,
    /// Dose attributes per state: lag, bioavailability, rate, duration.
    pub(crate) dose: Vec<[Option<Id>; 4]>,
    pub(crate) outputs: Vec<(String, Id)>,
    pub(crate) invariants: Vec<Vec<f64>>,
    pub(crate) noise: Vec<Option<Id>>,
    pub(crate) derived: Arc<Derivatives>,
}

/// The symbolic derivatives of a model's roots.
#[derive(Debug, Clone, Default)]
pub struct Derivatives {
    /// `∂f_i/∂x_j`, structural nonzeros in column-major order.
    pub jac: SparseNodes,
    /// `∂f_i/∂θ_k` for parameters that are not network weights.
    pub dfdp: SparseNodes,
    /// `∂f_i/∂N` for each network-output node `N` that `f` reads: `(i, n, node)`
    /// with `n` indexing [`Derivatives::net_nodes`] (weight gradients go
    /// through the network's own VJP).
    pub dfdnet: SparseNodes,
    /// Network-output nodes read by `f`.
    pub net_nodes: Vec<Id>,
    /// `∂y_k/∂x_j` per output.
    pub dydx: SparseNodes,
    /// `∂y_k/∂θ_j` per output (not weights).
    pub dydp: SparseNodes,
    /// `∂y_k/∂N` per output and network node read by the outputs (`n` indexes `out_net_nodes`).
    pub dydnet: SparseNodes,
    /// Network-output nodes read by the outputs.
    pub out_net_nodes: Vec<Id>,
    /// `∂f_i/∂t` (for non-autonomous models; empty when none depends on `t`).
    pub dfdt: Vec<(usize, Id)>,
    /// `∂x_i(0)/∂θ_k` (not weights).
    pub dinit: SparseNodes,
}

/// Which index of `[Option<Id>; 4]` holds each dose attribute.
pub(crate) fn attr_slot(a: DoseAttr) -> usize {
    match a {
        DoseAttr::Lag => 0,
        DoseAttr::Bioavailability => 1,
        DoseAttr::Rate => 2,
        DoseAttr::Duration => 3,
    }
}

impl Model {
    /// Compiles model text; `name` is used in messages (a file name, say).
    pub fn parse(text: &str, name: &str) -> Result<Model, ModelError> {
        let src = Source { file: name, text };
        let stmts = crate::parser::parse(&src)?;
        let stem = Path::new(name).file_stem().and_then(|s| s.to_str()).unwrap_or(name).to_string();
        let mut m = crate::lower::lower(&src, &stmts, stem)?;
        m.differentiate(&src)?;
        Ok(m)
    }

    /// Reads and compiles a model file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Model, ModelError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path)
            .map_err(|e| ModelError::Io { path: path.display().to_string(), reason: e.to_string() })?;
        Model::parse(&text, &path.display().to_string())
    }

    fn differentiate(&mut self, src: &Source<'_>) -> Result<(), ModelError> {
        let n = self.states.len();
        let g = &mut self.graph;
        let net_err = |net: u32, networks: &[Network]| {
            src.model_error(format!(
                "a second derivative of network `{}` is needed (a network inside a dose attribute's or output's derivative of a network); networks are differentiable once",
                networks.get(net as usize).map_or("?", |nw| nw.name.as_str())
            ))
        };
        let mut d = Derivatives::default();
        let scalar_params: Vec<usize> =
            (0..self.params.len()).filter(|&k| !matches!(self.params[k].kind, ParamKind::Weight { .. })).collect();
        for j in 0..n {
            for (i, &f) in self.rhs.iter().enumerate() {
                let e = g.diff(f, DiffVar::Var(Var::State(j as u32))).map_err(|k| net_err(k, &self.networks))?;
                if g.constant(e) != Some(0.0) {
                    d.jac.push((i, j, e));
                }
            }
        }
        for &k in &scalar_params {
            for (i, &f) in self.rhs.iter().enumerate() {
                let e = g.diff(f, DiffVar::Var(Var::Param(k as u32))).map_err(|k| net_err(k, &self.networks))?;
                if g.constant(e) != Some(0.0) {
                    d.dfdp.push((i, k, e));
                }
            }
        }
        let net_nodes_of = |g: &Graph, roots: &[Id]| -> Vec<Id> {
            g.closure(roots).into_iter().filter(|&id| matches!(g.op(id), Op::Net { .. })).collect()
        };
        d.net_nodes = net_nodes_of(g, &self.rhs);
        for (nidx, &node) in d.net_nodes.iter().enumerate() {
            for (i, &f) in self.rhs.iter().enumerate() {
                let e = g.diff(f, DiffVar::Node(node)).map_err(|k| net_err(k, &self.networks))?;
                if g.constant(e) != Some(0.0) {
                    d.dfdnet.push((i, nidx, e));
                }
            }
        }
        let outs: Vec<Id> = self.outputs.iter().map(|o| o.1).collect();
        for (k, &y) in outs.iter().enumerate() {
            for j in 0..n {
                let e = g.diff(y, DiffVar::Var(Var::State(j as u32))).map_err(|k| net_err(k, &self.networks))?;
                if g.constant(e) != Some(0.0) {
                    d.dydx.push((k, j, e));
                }
            }
            for &p in &scalar_params {
                let e = g.diff(y, DiffVar::Var(Var::Param(p as u32))).map_err(|k| net_err(k, &self.networks))?;
                if g.constant(e) != Some(0.0) {
                    d.dydp.push((k, p, e));
                }
            }
        }
        d.out_net_nodes = net_nodes_of(g, &outs);
        for (nidx, &node) in d.out_net_nodes.iter().enumerate() {
            for (k, &y) in outs.iter().enumerate() {
                let e = g.diff(y, DiffVar::Node(node)).map_err(|k| net_err(k, &self.networks))?;
                if g.constant(e) != Some(0.0) {
                    d.dydnet.push((k, nidx, e));
                }
            }
        }
        for (i, &f) in self.rhs.iter().enumerate() {
            let e = g.diff(f, DiffVar::Var(Var::Time)).map_err(|k| net_err(k, &self.networks))?;
            if g.constant(e) != Some(0.0) {
                d.dfdt.push((i, e));
            }
        }
        for &k in &scalar_params {
            for (i, &x0) in self.init.iter().enumerate() {
                let e = g.diff(x0, DiffVar::Var(Var::Param(k as u32))).map_err(|k| net_err(k, &self.networks))?;
                if g.constant(e) != Some(0.0) {
                    d.dinit.push((i, k, e));
                }
            }
        }
        self.derived = Arc::new(d);
        Ok(())
    }

    /// The model's name (the file stem).
    pub fn name(&self) -> &str {
        &self.name
    }
    /// State names in `states:` order (NONMEM's CMT numbering, 1-based).
    pub fn state_names(&self) -> Vec<&str> {
        self.states.iter().map(String::as_str).collect()
    }
    /// Number of states.
    pub fn nstates(&self) -> usize {
        self.states.len()
    }
    /// Every entry of `θ`: declared parameters, random effects, network weights.
    pub fn params(&self) -> &[Param] {
        &self.params
    }
    /// Index in `θ` of the parameter (or random effect) called `name` (case-insensitive).
    pub fn param_index(&self, name: &str) -> Option<usize> {
        self.params.iter().position(|p| p.name.eq_ignore_ascii_case(name))
    }
    /// Names of the declared parameters and random effects (not network weights).
    pub fn scalar_param_names(&self) -> Vec<&str> {
        self.params.iter().filter(|p| !matches!(p.kind, ParamKind::Weight { .. })).map(|p| p.name.as_str()).collect()
    }
    /// The covariates, in declaration order.
    pub fn covariates(&self) -> &[Covariate] {
        &self.covariates
    }
    /// Exogenous inputs (`inputs:`), in declaration order.
    pub fn inputs(&self) -> &[String] {
        &self.inputs
    }
    /// Networks, in declaration order.
    pub fn networks(&self) -> &[Network] {
        &self.networks
    }
    /// Output names, in declaration order.
    pub fn output_names(&self) -> Vec<&str> {
        self.outputs.iter().map(|o| o.0.as_str()).collect()
    }
    /// Declared linear invariants (one coefficient per state).
    pub fn invariants(&self) -> &[Vec<f64>] {
        &self.invariants
    }
    /// States with declared process noise, with the node of its SD.
    pub fn noise(&self) -> &[Option<Id>] {
        &self.noise
    }
    /// Whether state `i` has a dose attribute statement (`alag(s)`, `f(s)`, ...).
    pub fn has_dose_attr(&self, state: usize, attr: DoseAttr) -> bool {
        self.dose.get(state).is_some_and(|d| d[attr_slot(attr)].is_some())
    }
    /// The expression graph.
    pub fn graph(&self) -> &Graph {
        &self.graph
    }
    /// The symbolic derivatives.
    pub fn derivatives(&self) -> &Derivatives {
        &self.derived
    }
    /// The right-hand side roots.
    pub fn rhs_nodes(&self) -> &[Id] {
        &self.rhs
    }
    /// The output roots.
    pub fn output_nodes(&self) -> Vec<Id> {
        self.outputs.iter().map(|o| o.1).collect()
    }
    /// The initial-state roots.
    pub fn init_nodes(&self) -> &[Id] {
        &self.init
    }
    /// Structural nonzeros `(row, col)` of `∂f/∂x`, column-major.
    pub fn jacobian_pattern(&self) -> Vec<(usize, usize)> {
        self.derived.jac.iter().map(|&(i, j, _)| (i, j)).collect()
    }
    /// True when some right-hand side reads `t` directly.
    pub fn is_time_dependent(&self) -> bool {
        self.rhs.iter().any(|&f| self.graph.deps(f).time)
    }
    /// Default `θ`: written defaults, 0 for random effects, seeded weights (`seed`).
    /// Declared parameters without a default are NaN (they must be given).
    pub fn default_params(&self, seed: u64) -> Vec<f64> {
        let mut theta: Vec<f64> = self.params.iter().map(|p| p.default.unwrap_or(f64::NAN)).collect();
        for (k, net) in self.networks.iter().enumerate() {
            let w = net.mlp.init(seed.wrapping_add(k as u64), 0.1);
            theta[net.offset..net.offset + w.len()].copy_from_slice(&w);
        }
        theta
    }
    /// Checks every value of `θ` against its parameter's range (and that it
    /// is finite); the error names the parameter, its value and the range.
    pub fn check_params(&self, theta: &[f64]) -> Result<(), ModelError> {
        let bad = |message: String| ModelError::Values { model: self.name.clone(), message };
        if theta.len() != self.params.len() {
            return Err(bad(format!("{} parameter values for {} parameters", theta.len(), self.params.len())));
        }
        for (p, &v) in self.params.iter().zip(theta) {
            if !v.is_finite() {
                return Err(bad(format!("parameter `{}` = {v} is not a finite number", p.name)));
            }
            if let Some(b) = p.bounds {
                if !b.contains(v) {
                    return Err(bad(format!("parameter `{}` = {v} lies outside its range {b}", p.name)));
                }
            }
        }
        Ok(())
    }
    /// A human-readable summary: states (with CMT numbers), parameters with
    /// defaults and ranges, covariates, inputs, networks, outputs, invariants,
    /// dose attributes and the size of the derivatives.
    pub fn summary(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(s, "model {}", self.name);
        let states: Vec<String> = self.states.iter().enumerate().map(|(i, n)| format!("{n} (CMT {})", i + 1)).collect();
        let _ = writeln!(s, "  states       {}", states.join(", "));
        let params: Vec<String> = self
            .params
            .iter()
            .filter(|p| !matches!(p.kind, ParamKind::Weight { .. }))
            .map(|p| {
                let mut t = p.name.clone();
                if let Some(d) = p.default {
                    t += &format!(" = {d}");
                }
                if let Some(b) = p.bounds {
                    t += &format!(" in {b}");
                }
                if p.kind == ParamKind::Random {
                    t += " (random effect)";
                }
                t
            })
            .collect();
        let _ = writeln!(s, "  parameters   {}", if params.is_empty() { "none".into() } else { params.join(", ") });
        if !self.covariates.is_empty() {
            let c: Vec<String> = self
                .covariates
                .iter()
                .map(|c| c.default.map_or(c.name.clone(), |d| format!("{} (default {d})", c.name)))
                .collect();
            let _ = writeln!(s, "  covariates   {}", c.join(", "));
        }
        if !self.inputs.is_empty() {
            let _ = writeln!(s, "  inputs       {}", self.inputs.join(", "));
        }
        for nw in &self.networks {
            let w: Vec<String> = nw.mlp.widths().iter().map(|w| w.to_string()).collect();
            let _ = writeln!(
                s,
                "  network      {}: {} {}, {} weights",
                nw.name,
                w.join(" -> "),
                nw.mlp.activation().name(),
                nw.mlp.n_params()
            );
        }
        let _ = writeln!(s, "  outputs      {}", self.output_names().join(", "));
        for c in &self.invariants {
            let terms: Vec<String> = c
                .iter()
                .zip(&self.states)
                .filter(|(k, _)| **k != 0.0)
                .map(|(k, n)| if *k == 1.0 { n.clone() } else { format!("{k}*{n}") })
                .collect();
            let _ = writeln!(s, "  conserved    {} (verified)", terms.join(" + "));
        }
        for (i, d) in self.dose.iter().enumerate() {
            for (slot, kw) in ["alag", "f", "rate", "dur"].iter().enumerate() {
                if d[slot].is_some() {
                    let _ = writeln!(s, "  dosing       {kw}({})", self.states[i]);
                }
            }
        }
        let d = &self.derived;
        let _ = writeln!(
            s,
            "  derivatives  df/dx {} of {} entries, df/dtheta {} entries, {} graph nodes{}",
            d.jac.len(),
            self.states.len() * self.states.len(),
            d.dfdp.len(),
            self.graph.len(),
            if self.is_time_dependent() { "; reads t" } else { "" }
        );
        s
    }

    /// Default covariate values (NaN where the model gives none).
    pub fn default_covariates(&self) -> Vec<f64> {
        self.covariates.iter().map(|c| c.default.unwrap_or(f64::NAN)).collect()
    }
}
