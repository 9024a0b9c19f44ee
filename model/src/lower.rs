//! From the syntax tree to the expression graph: names resolved, statements
//! run in order, fluxes summed into right-hand sides, declared invariants
//! verified.

use std::collections::HashMap;
use std::sync::Arc;

use insilico_neural::{Activation, Mlp};

use crate::ast::{BinOp, Expr, Ident, Stmt, UnOp};
use crate::error::{suggest, ModelError, Source, Span};
use crate::expr::{Graph, Id, Op, Var};
use crate::model::{attr_slot, Covariate, Derivatives, Model, Network, Param, ParamKind};

/// What a name stands for while statements are lowered.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Binding {
    Node(Id),
    Network(usize),
}

/// Functions of the language: name, arity (None = two or more).
const FUNCTIONS: [(&str, Option<usize>); 17] = [
    ("exp", Some(1)),
    ("log", Some(1)),
    ("ln", Some(1)),
    ("log10", Some(1)),
    ("sqrt", Some(1)),
    ("abs", Some(1)),
    ("sign", Some(1)),
    ("tanh", Some(1)),
    ("softplus", Some(1)),
    ("sigmoid", Some(1)),
    ("expit", Some(1)),
    ("pow", Some(2)),
    ("min", None),
    ("max", None),
    ("ifelse", Some(3)),
    ("hill", Some(3)),
    ("logit", Some(1)),
];

struct Lowerer<'s> {
    src: &'s Source<'s>,
    g: Graph,
    env: HashMap<String, Binding>,
    /// Where each name was declared (for kinds that cannot be assigned).
    declared: HashMap<String, (&'static str, Span)>,
    states: Vec<Ident>,
    params: Vec<Param>,
    covariates: Vec<Covariate>,
    inputs: Vec<String>,
    networks: Vec<Network>,
    /// `d/dt(s)` per state, as lowered (key "d/dt(s)" in `env` while inside if blocks).
    fluxes: Vec<(usize, Option<usize>, Id, Span)>,
    inflows: Vec<(usize, Id, Span)>,
    init: Vec<Option<Id>>,
    dose: Vec<[Option<Id>; 4]>,
    outputs: Vec<(String, Id)>,
    conserved: Vec<(Expr, Span)>,
    noise: Vec<Option<Id>>,
    /// Signed terms of each top-level `d/dt(s)` with their spans, to name
    /// the term that breaks a declared invariant.
    dterms: HashMap<String, Vec<(Id, f64, Span)>>,
}

/// Lowers parsed statements into a [`Model`] (without derivatives).
pub fn lower(src: &Source<'_>, stmts: &[Stmt], name: String) -> Result<Model, ModelError> {
    let mut l = Lowerer {
        src,
        g: Graph::new(),
        env: HashMap::new(),
        declared: HashMap::new(),
        states: Vec::new(),
        params: Vec::new(),
        covariates: Vec::new(),
        inputs: Vec::new(),
        networks: Vec::new(),
        fluxes: Vec::new(),
        inflows: Vec::new(),
        init: Vec::new(),
        dose: Vec::new(),
        outputs: Vec::new(),
        conserved: Vec::new(),
        noise: Vec::new(),
        dterms: HashMap::new(),
    };
    l.declarations(stmts)?;
    for st in stmts {
        l.statement(st, true)?;
    }
    l.finish(name)
}

/// Names that cannot be declared or assigned. Function names may be: a call
/// `hill(...)` and a name `hill` are told apart by the parentheses.
fn is_reserved(name: &str) -> bool {
    matches!(name, "t" | "out" | "in" | "if" | "else" | "flux")
}

impl<'s> Lowerer<'s> {
    fn err(&self, span: Span, msg: impl Into<String>) -> ModelError {
        self.src.error(span, msg)
    }

    fn declare(&mut self, id: &Ident, kind: &'static str, b: Binding) -> Result<(), ModelError> {
        if is_reserved(&id.name) {
            return Err(
                self.err(id.span, format!("`{}` is reserved (a function or keyword); choose another name", id.name))
            );
        }
        if let Some((k, _)) = self.declared.get(&id.name) {
            return Err(self.err(id.span, format!("`{}` is already declared as a {k}", id.name)));
        }
        self.declared.insert(id.name.clone(), (kind, id.span));
        self.env.insert(id.name.clone(), b);
        Ok(())
    }

    fn declarations(&mut self, stmts: &[Stmt]) -> Result<(), ModelError> {
        // Parameters and random effects first so θ has them before weights.
        let mut randoms = Vec::new();
        let mut nets = Vec::new();
        let mut seen_states = false;
        for st in stmts {
            match st {
                Stmt::Parameters(list) => {
                    for d in list {
                        let v = self.g.var(Var::Param(self.params.len() as u32));
                        self.declare(&d.ident, "parameter", Binding::Node(v))?;
                        self.params.push(Param {
                            name: d.ident.name.clone(),
                            kind: ParamKind::Declared,
                            default: d.value,
                            bounds: d.bounds,
                        });
                    }
                }
                Stmt::Random(list) => randoms.extend(list.iter().cloned()),
                Stmt::Covariates(list) => {
                    for d in list {
                        let v = self.g.var(Var::Covariate(self.covariates.len() as u32));
                        self.declare(&d.ident, "covariate", Binding::Node(v))?;
                        self.covariates.push(Covariate { name: d.ident.name.clone(), default: d.value });
                    }
                }
                Stmt::States(list) => {
                    if seen_states {
                        return Err(self
                            .err(list[0].span, "a second `states:` declaration; list every state once, in CMT order"));
                    }
                    seen_states = true;
                    for id in list {
                        let v = self.g.var(Var::State(self.states.len() as u32));
                        self.declare(id, "state", Binding::Node(v))?;
                        self.states.push(id.clone());
                    }
                }
                Stmt::Inputs(list) => {
                    for id in list {
                        let v = self.g.var(Var::Input(self.inputs.len() as u32));
                        self.declare(id, "input", Binding::Node(v))?;
                        self.inputs.push(id.name.clone());
                    }
                }
                Stmt::Network { ident, widths, activation } => {
                    nets.push((ident.clone(), widths.clone(), activation.clone()))
                }
                _ => {}
            }
        }
        for id in randoms {
            let v = self.g.var(Var::Param(self.params.len() as u32));
            self.declare(&id, "random effect", Binding::Node(v))?;
            self.params.push(Param {
                name: id.name.clone(),
                kind: ParamKind::Random,
                default: Some(0.0),
                bounds: None,
            });
        }
        for (ident, widths, act) in nets {
            let activation = Activation::parse(&act.name).ok_or_else(|| {
                self.err(act.span, format!("unknown activation `{}`: use `tanh` or `softplus`", act.name))
            })?;
            let mlp = Mlp::new(&widths, activation).map_err(|e| self.err(ident.span, e.to_string()))?;
            let net = self.networks.len();
            self.declare(&ident, "network", Binding::Network(net))?;
            let offset = self.params.len();
            for k in 0..mlp.n_params() {
                self.params.push(Param {
                    name: format!("{}.w{k}", ident.name),
                    kind: ParamKind::Weight { net, k },
                    default: None,
                    bounds: None,
                });
            }
            self.networks.push(Network { name: ident.name.clone(), mlp, offset });
        }
        if self.states.is_empty() {
            return Err(self.src.model_error("no `states:` declaration: list the model's states in CMT order"));
        }
        let n = self.states.len();
        self.init = vec![None; n];
        self.dose = vec![[None; 4]; n];
        self.noise = vec![None; n];
        Ok(())
    }

    fn state_index(&self, id: &Ident) -> Result<usize, ModelError> {
        self.states.iter().position(|s| s.name == id.name).ok_or_else(|| {
            let kind = self.declared.get(&id.name).map(|k| format!(" (it is a {})", k.0)).unwrap_or_default();
            self.err(
                id.span,
                format!(
                    "`{}` is not a state{kind}; states are declared with `states:`{}",
                    id.name,
                    suggest(&id.name, self.states.iter().map(|s| s.name.as_str()))
                ),
            )
        })
    }

    /// A statement; `top` is false inside if blocks.
    fn statement(&mut self, st: &Stmt, top: bool) -> Result<(), ModelError> {
        match st {
            Stmt::Parameters(_) | Stmt::Covariates(_) | Stmt::States(_) | Stmt::Inputs(_) | Stmt::Random(_) => Ok(()),
            Stmt::Network { .. } => Ok(()),
            Stmt::Conserved(e, span) => {
                self.conserved.push((e.clone(), *span));
                Ok(())
            }
            Stmt::Assign(id, e) => {
                if let Some((kind, _)) = self.declared.get(&id.name) {
                    return Err(self.err(id.span, format!("cannot assign to `{}`: it is a {kind}", id.name)));
                }
                if is_reserved(&id.name) {
                    return Err(self.err(id.span, format!("`{}` is reserved; choose another name", id.name)));
                }
                let v = self.expr(e)?;
                self.env.insert(id.name.clone(), Binding::Node(v));
                Ok(())
            }
            Stmt::Derivative(id, e) => {
                self.state_index(id)?;
                let key = format!("d/dt({})", id.name);
                if top && self.env.contains_key(&key) {
                    return Err(self.err(id.span, format!("a second equation for d/dt({})", id.name)));
                }
                let v = self.expr(e)?;
                if top {
                    let mut terms = Vec::new();
                    self.ast_terms(e, 1.0, &mut terms)?;
                    self.dterms.insert(id.name.clone(), terms);
                } else {
                    self.dterms.remove(&id.name);
                }
                self.env.insert(key, Binding::Node(v));
                Ok(())
            }
            Stmt::Initial(id, e) => {
                let i = self.state_index(id)?;
                let v = self.expr(e)?;
                if !self.g.deps(v).is_static() {
                    return Err(self.err(e.span(), "an initial value may depend on parameters and covariates only"));
                }
                if self.init[i].replace(v).is_some() {
                    return Err(self.err(id.span, format!("a second initial value for `{}`", id.name)));
                }
                Ok(())
            }
            Stmt::Dose(attr, id, e) => {
                let i = self.state_index(id)?;
                let v = self.expr(e)?;
                if !self.g.deps(v).is_static() {
                    return Err(self.err(
                        e.span(),
                        format!("{}({}) may depend on parameters and covariates only", attr.keyword(), id.name),
                    ));
                }
                if self.dose[i][attr_slot(*attr)].replace(v).is_some() {
                    return Err(self.err(id.span, format!("a second {}({}) statement", attr.keyword(), id.name)));
                }
                Ok(())
            }
            Stmt::Flux { from, to, expr, span } => {
                let src = if from.name == "in" { None } else { Some(self.state_index(from)?) };
                let dst = if to.name == "out" { None } else { Some(self.state_index(to)?) };
                let v = self.expr(expr)?;
                match (src, dst) {
                    (Some(a), b) => self.fluxes.push((a, b, v, *span)),
                    (None, Some(b)) => self.inflows.push((b, v, *span)),
                    (None, None) => return Err(self.err(*span, "a flux from `in` to `out` moves nothing")),
                }
                Ok(())
            }
            Stmt::Output(list) => {
                for (id, e) in list {
                    if self.outputs.iter().any(|o| o.0 == id.name) {
                        return Err(self.err(id.span, format!("output `{}` is declared twice", id.name)));
                    }
                    let v = match e {
                        Some(e) => self.expr(e)?,
                        None => self.expr(&Expr::Name(id.name.clone(), id.span))?,
                    };
                    self.outputs.push((id.name.clone(), v));
                }
                Ok(())
            }
            Stmt::Noise(id, e) => {
                let i = self.state_index(id)?;
                let v = self.expr(e)?;
                if self.noise[i].replace(v).is_some() {
                    return Err(self.err(id.span, format!("a second noise statement for `{}`", id.name)));
                }
                Ok(())
            }
            Stmt::If { cond, then, otherwise, span } => {
                let c = self.expr(cond)?;
                let before = self.env.clone();
                for s in then {
                    self.statement(s, false)?;
                }
                let after_then = std::mem::replace(&mut self.env, before.clone());
                for s in otherwise {
                    self.statement(s, false)?;
                }
                let after_else = std::mem::replace(&mut self.env, before.clone());
                let mut names: Vec<&String> = after_then.keys().chain(after_else.keys()).collect();
                names.sort();
                names.dedup();
                for name in names {
                    let (a, b) = (after_then.get(name), after_else.get(name));
                    if a == b {
                        if let Some(v) = a {
                            self.env.insert(name.clone(), *v);
                        }
                        continue;
                    }
                    match (a, b) {
                        (Some(Binding::Node(x)), Some(Binding::Node(y))) => {
                            let v = self.g.select(c, *x, *y);
                            self.env.insert(name.clone(), Binding::Node(v));
                        }
                        _ => {
                            return Err(self.err(
                                *span,
                                format!(
                                    "`{name}` is set in only one branch of this if and has no value before it: \
                                     give it a value before the if or in both branches"
                                ),
                            ))
                        }
                    }
                }
                Ok(())
            }
        }
    }

    /// `e` split at top-level sums and differences, each term lowered.
    fn ast_terms(&mut self, e: &Expr, sign: f64, out: &mut Vec<(Id, f64, Span)>) -> Result<(), ModelError> {
        match e {
            Expr::Binary(BinOp::Add, a, b, _) => {
                self.ast_terms(a, sign, out)?;
                self.ast_terms(b, sign, out)
            }
            Expr::Binary(BinOp::Sub, a, b, _) => {
                self.ast_terms(a, sign, out)?;
                self.ast_terms(b, -sign, out)
            }
            Expr::Unary(UnOp::Neg, a, _) => self.ast_terms(a, -sign, out),
            _ => {
                let id = self.expr(e)?;
                // A term that itself simplifies to a negation counts with the opposite sign.
                match *self.g.op(id) {
                    Op::Neg(inner) => out.push((inner, -sign, e.span())),
                    _ => out.push((id, sign, e.span())),
                }
                Ok(())
            }
        }
    }

    fn expr(&mut self, e: &Expr) -> Result<Id, ModelError> {
        match e {
            Expr::Num(v, _) => Ok(self.g.num(*v)),
            Expr::Name(name, span) => match self.env.get(name) {
                Some(Binding::Node(id)) => Ok(*id),
                Some(Binding::Network(_)) => {
                    Err(self.err(*span, format!("network `{name}` is a function: call it, as `{name}(x)`")))
                }
                None if name == "t" => Ok(self.g.var(Var::Time)),
                None => {
                    let known: Vec<&str> =
                        self.env.keys().filter(|k| !k.starts_with("d/dt(")).map(String::as_str).collect();
                    let hint = if self.states.iter().any(|s| &s.name == name) {
                        String::new()
                    } else {
                        suggest(name, known.iter().copied().chain(["t"]))
                    };
                    Err(self.err(
                        *span,
                        format!(
                            "unknown name `{name}`{hint} (declare parameters, covariates, states and inputs, \
                             or assign `{name} = ...` before using it)"
                        ),
                    ))
                }
            },
            Expr::Unary(op, a, _) => {
                let a = self.expr(a)?;
                Ok(match op {
                    UnOp::Neg => self.g.neg(a),
                    UnOp::Not => self.g.unary(Op::Not, a),
                })
            }
            Expr::Binary(op, a, b, _) => {
                let (a, b) = (self.expr(a)?, self.expr(b)?);
                Ok(match op {
                    BinOp::Add => self.g.add(a, b),
                    BinOp::Sub => self.g.sub(a, b),
                    BinOp::Mul => self.g.mul(a, b),
                    BinOp::Div => self.g.div(a, b),
                    BinOp::Pow => self.g.pow(a, b),
                    BinOp::Lt => self.g.binary(Op::Lt, a, b),
                    BinOp::Le => self.g.binary(Op::Le, a, b),
                    BinOp::Gt => self.g.binary(Op::Lt, b, a),
                    BinOp::Ge => self.g.binary(Op::Le, b, a),
                    BinOp::Eq => self.g.binary(Op::Eq, a, b),
                    BinOp::Ne => {
                        let e = self.g.binary(Op::Eq, a, b);
                        self.g.unary(Op::Not, e)
                    }
                    BinOp::And => self.g.binary(Op::And, a, b),
                    BinOp::Or => self.g.binary(Op::Or, a, b),
                })
            }
            Expr::Call { name, name_span, args, index, span } => self.call(name, *name_span, args, *index, *span),
        }
    }

    fn call(
        &mut self,
        name: &str,
        name_span: Span,
        args: &[Expr],
        index: Option<(usize, Span)>,
        span: Span,
    ) -> Result<Id, ModelError> {
        if let Some(Binding::Network(net)) = self.env.get(name).copied() {
            let (nin, nout) = (self.networks[net].mlp.n_inputs(), self.networks[net].mlp.n_outputs());
            if args.len() != nin {
                return Err(self.err(span, format!("network `{name}` takes {nin} input(s), got {}", args.len())));
            }
            let out = match index {
                Some((k, at)) if k > nout => {
                    return Err(
                        self.err(at, format!("network `{name}` has {nout} output(s); index {k} is out of range"))
                    )
                }
                Some((k, _)) => k - 1,
                None if nout == 1 => 0,
                None => {
                    return Err(self.err(
                        span,
                        format!("network `{name}` has {nout} outputs: pick one with an index, as `{name}(...)[1]`"),
                    ))
                }
            };
            let ids = args.iter().map(|a| self.expr(a)).collect::<Result<Vec<_>, _>>()?;
            return Ok(self.g.net(net as u32, out as u32, ids));
        }
        if let Some((_, at)) = index {
            return Err(self.err(at, "only network calls take an output index"));
        }
        let Some(&(_, arity)) = FUNCTIONS.iter().find(|(f, _)| *f == name) else {
            let mut known: Vec<&str> = FUNCTIONS.iter().map(|f| f.0).collect();
            known.extend(self.networks.iter().map(|n| n.name.as_str()));
            return Err(self.err(name_span, format!("unknown function `{name}`{}", suggest(name, known))));
        };
        match arity {
            Some(k) if args.len() != k => {
                return Err(self.err(span, format!("`{name}` takes {k} argument(s), got {}", args.len())))
            }
            None if args.len() < 2 => {
                return Err(self.err(span, format!("`{name}` takes two or more arguments, got {}", args.len())))
            }
            _ => {}
        }
        let a = args.iter().map(|a| self.expr(a)).collect::<Result<Vec<_>, _>>()?;
        let g = &mut self.g;
        Ok(match name {
            "exp" => g.exp(a[0]),
            "log" | "ln" => g.log(a[0]),
            "log10" => {
                let l = g.log(a[0]);
                let c = g.num(std::f64::consts::LN_10);
                g.div(l, c)
            }
            "sqrt" => g.sqrt(a[0]),
            "abs" => g.unary(Op::Abs, a[0]),
            "sign" => g.unary(Op::Sign, a[0]),
            "tanh" => g.unary(Op::Tanh, a[0]),
            "softplus" => g.unary(Op::Softplus, a[0]),
            "sigmoid" | "expit" => g.unary(Op::Sigmoid, a[0]),
            "logit" => {
                let one = g.num(1.0);
                let d = g.sub(one, a[0]);
                let r = g.div(a[0], d);
                g.log(r)
            }
            "pow" => g.pow(a[0], a[1]),
            "min" | "max" => {
                let f = if name == "min" { Op::Min } else { Op::Max };
                let mut acc = a[0];
                for &b in &a[1..] {
                    acc = g.binary(f, acc, b);
                }
                acc
            }
            "ifelse" => g.select(a[0], a[1], a[2]),
            "hill" => {
                // hill(x, K, n) = x^n / (K^n + x^n)
                let xn = g.pow(a[0], a[2]);
                let kn = g.pow(a[1], a[2]);
                let den = g.add(kn, xn);
                g.div(xn, den)
            }
            _ => unreachable!("every function of FUNCTIONS is lowered above"),
        })
    }

    fn finish(mut self, name: String) -> Result<Model, ModelError> {
        let n = self.states.len();
        let zero = self.g.num(0.0);
        let mut rhs = vec![zero; n];
        let mut has_eq = vec![false; n];
        for (i, s) in self.states.iter().enumerate() {
            if let Some(Binding::Node(v)) = self.env.get(&format!("d/dt({})", s.name)) {
                rhs[i] = *v;
                has_eq[i] = true;
            }
        }
        // Fluxes in statement order: out of the source, into the target.
        for &(a, b, v, _) in &self.fluxes {
            rhs[a] = self.g.sub(rhs[a], v);
            has_eq[a] = true;
            if let Some(b) = b {
                rhs[b] = self.g.add(rhs[b], v);
                has_eq[b] = true;
            }
        }
        for &(b, v, _) in &self.inflows {
            rhs[b] = self.g.add(rhs[b], v);
            has_eq[b] = true;
        }
        for (i, s) in self.states.iter().enumerate() {
            if !has_eq[i] {
                return Err(self.err(
                    s.span,
                    format!(
                        "state `{}` has no equation: add `d/dt({}) = ...` or a flux into or out of it \
                         (`d/dt({}) = 0` for a constant state)",
                        s.name, s.name, s.name
                    ),
                ));
            }
        }
        if self.outputs.is_empty() {
            for (i, s) in self.states.iter().enumerate() {
                let v = self.g.var(Var::State(i as u32));
                self.outputs.push((s.name.clone(), v));
            }
        }
        let invariants = self.invariants(&rhs)?;
        let init = self.init.iter().map(|v| v.unwrap_or(zero)).collect();
        let states = self.states.iter().map(|s| s.name.clone()).collect();
        Ok(Model {
            name,
            graph: self.g,
            states,
            params: self.params,
            covariates: self.covariates,
            inputs: self.inputs,
            networks: self.networks,
            rhs,
            init,
            dose: self.dose,
            outputs: self.outputs,
            invariants,
            noise: self.noise,
            derived: Arc::new(Derivatives::default()),
        })
    }

    /// Turns each `conserved:` expression into coefficients and checks that
    /// `c · f = 0`: symbolically where the terms cancel as written (fluxes
    /// always do), numerically at random points otherwise. A violation names
    /// the statements whose terms do not cancel.
    fn invariants(&mut self, rhs: &[Id]) -> Result<Vec<Vec<f64>>, ModelError> {
        let n = self.states.len();
        let mut out = Vec::new();
        for (e, span) in self.conserved.clone() {
            let v = self.expr(&e)?;
            let mut c = vec![0.0; n];
            for (i, ci) in c.iter_mut().enumerate() {
                let d = self
                    .g
                    .diff(v, crate::expr::DiffVar::Var(Var::State(i as u32)))
                    .map_err(|_| self.err(span, "a conserved quantity cannot contain a network"))?;
                *ci = self.g.constant(d).ok_or_else(|| {
                    self.err(span, "a conserved quantity must be linear in the states with constant coefficients")
                })?;
            }
            let deps = self.g.deps(v);
            if deps.input || deps.time {
                return Err(self.err(span, "a conserved quantity must be a linear combination of states"));
            }
            // Symbolic: Σ c_i f_i with terms grouped by node.
            let mut terms: HashMap<Id, (f64, Span)> = HashMap::new();
            let add_term = |terms: &mut HashMap<Id, (f64, Span)>, id: Id, coef: f64, sp: Span| {
                let e = terms.entry(id).or_insert((0.0, sp));
                e.0 += coef;
            };
            for (i, s) in self.states.clone().iter().enumerate() {
                if c[i] == 0.0 {
                    continue;
                }
                if let Some(dt) = self.dterms.get(&s.name) {
                    for &(id, sign, sp) in dt {
                        add_term(&mut terms, id, c[i] * sign, sp);
                    }
                } else if let Some(Binding::Node(d)) = self.env.get(&format!("d/dt({})", s.name)).copied() {
                    for (id, sign) in self.signed_terms(d) {
                        add_term(&mut terms, id, c[i] * sign, s.span);
                    }
                }
            }
            for &(a, b, f, sp) in &self.fluxes {
                let coef = b.map_or(0.0, |b| c[b]) - c[a];
                add_term(&mut terms, f, coef, sp);
            }
            for &(b, f, sp) in &self.inflows {
                add_term(&mut terms, f, c[b], sp);
            }
            let mut bad: Vec<(f64, Span)> = terms.values().filter(|(k, _)| k.abs() > 1e-12).copied().collect();
            if bad.is_empty() {
                out.push(c);
                continue;
            }
            // Terms written differently may still cancel: check numerically.
            if self.cancels_numerically(rhs, &c) {
                out.push(c);
                continue;
            }
            bad.sort_by_key(|b| b.1.start);
            let listed: Vec<String> = bad
                .iter()
                .map(|(coef, at)| {
                    let line = self.src.text[..at.start].matches('\n').count() + 1;
                    format!(
                        "`{}` (line {line}, net coefficient {coef})",
                        self.src.text.get(at.start..at.end).unwrap_or("?")
                    )
                })
                .collect();
            return Err(self.err(
                bad[0].1,
                format!(
                    "the declared invariant `{}` is not conserved; these terms do not cancel: {} \
                     (a flux between states with equal coefficients keeps it; a d/dt term needs its opposite elsewhere)",
                    self.src.text.get(span.start..span.end).unwrap_or("?").trim(),
                    listed.join(", ")
                ),
            ));
        }
        Ok(out)
    }

    /// `f` split at top-level sums and differences into signed terms.
    fn signed_terms(&self, f: Id) -> Vec<(Id, f64)> {
        let mut out = Vec::new();
        let mut stack = vec![(f, 1.0)];
        while let Some((id, s)) = stack.pop() {
            match *self.g.op(id) {
                Op::Add(a, b) => {
                    stack.push((a, s));
                    stack.push((b, s));
                }
                Op::Sub(a, b) => {
                    stack.push((a, s));
                    stack.push((b, -s));
                }
                Op::Neg(a) => stack.push((a, -s)),
                _ => out.push((id, s)),
            }
        }
        out
    }

    fn cancels_numerically(&self, rhs: &[Id], c: &[f64]) -> bool {
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            0.5 + (seed >> 11) as f64 / (1u64 << 53) as f64
        };
        for _ in 0..3 {
            let mut vals = vec![0.0; self.g.len()];
            let order = self.g.closure(rhs);
            let draw: Vec<f64> = (0..256).map(|_| next()).collect();
            let ok = crate::tape::eval_nodes_generic(
                &self.g,
                &order,
                &mut vals,
                |v| match v {
                    Var::State(i) | Var::Param(i) | Var::Input(i) | Var::Covariate(i) => draw[i as usize % 256],
                    Var::Time => draw[255],
                },
                &self.networks,
            );
            if !ok {
                return false;
            }
            let (mut s, mut scale) = (0.0, 0.0);
            for (i, &f) in rhs.iter().enumerate() {
                s += c[i] * vals[f as usize];
                scale += (c[i] * vals[f as usize]).abs();
            }
            if s.is_nan() || s.abs() > 1e-10 * scale.max(1e-300) {
                return false;
            }
        }
        true
    }
}
