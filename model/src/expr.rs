//! The intermediate representation: one expression graph per model, with
//! common subexpressions shared (hash-consing), constants folded, and exact
//! symbolic derivatives.
//!
//! Every node is created through [`Graph`]'s constructors, which simplify
//! (`x + 0 → x`, `x * 1 → x`, constant folding) and look the node up before
//! adding it, so the same subexpression written twice is one node. Operands of
//! commutative operations are put in a fixed order, which changes no result
//! (IEEE addition and multiplication are commutative) but lets `a*b` and `b*a`
//! share a node. Nothing is reassociated: `(a+b)+c` stays what it was, so the
//! generated code of every engine does the same floating-point operations in
//! the same order.

use std::collections::HashMap;

/// Index of a node in a [`Graph`].
pub type Id = u32;

/// A leaf of the graph: what the model's expressions read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Var {
    /// State `x[i]` (in `states:` order).
    State(u32),
    /// Parameter `θ[i]` (declared parameters, then random effects, then network weights).
    Param(u32),
    /// Exogenous input `u[i]` (piecewise constant, set by exposure windows).
    Input(u32),
    /// Covariate `i` of the subject (dataset column).
    Covariate(u32),
    /// Time `t`.
    Time,
}

/// Operations of the graph.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Op {
    /// A constant (its bits, so that nodes hash).
    Const(u64),
    /// A leaf.
    Var(Var),
    /// `a + b`
    Add(Id, Id),
    /// `a - b`
    Sub(Id, Id),
    /// `a * b`
    Mul(Id, Id),
    /// `a / b`
    Div(Id, Id),
    /// `-a`
    Neg(Id),
    /// `a ^ n` for a whole exponent (repeated multiplication).
    Powi(Id, i32),
    /// `a ^ b` (real power: `exp(b ln a)`, NaN for a negative base).
    Pow(Id, Id),
    /// `exp(a)`
    Exp(Id),
    /// `ln(a)` (NaN below zero; no hidden floor).
    Log(Id),
    /// `sqrt(a)`
    Sqrt(Id),
    /// `|a|`
    Abs(Id),
    /// `sign(a)`: −1, 0 or 1 (the derivative of `|a|`).
    Sign(Id),
    /// `tanh(a)`
    Tanh(Id),
    /// `ln(1 + e^a)`, computed without overflow.
    Softplus(Id),
    /// `1 / (1 + e^-a)`
    Sigmoid(Id),
    /// `min(a, b)`
    Min(Id, Id),
    /// `max(a, b)`
    Max(Id, Id),
    /// `a < b` as 1 or 0.
    Lt(Id, Id),
    /// `a <= b` as 1 or 0.
    Le(Id, Id),
    /// `a == b` as 1 or 0.
    Eq(Id, Id),
    /// `a && b` (nonzero is true) as 1 or 0.
    And(Id, Id),
    /// `a || b` as 1 or 0.
    Or(Id, Id),
    /// `!a` as 1 or 0.
    Not(Id),
    /// `c != 0 ? a : b`
    Select(Id, Id, Id),
    /// Output `out` of network `net` at the arguments.
    Net {
        /// Network index in the model.
        net: u32,
        /// Output index (0-based).
        out: u32,
        /// Inputs of the network.
        args: Vec<Id>,
    },
    /// `∂ net_out / ∂ arg_k` at the arguments.
    NetGrad {
        /// Network index.
        net: u32,
        /// Output index.
        out: u32,
        /// Which argument.
        wrt: u32,
        /// Inputs of the network.
        args: Vec<Id>,
    },
}

impl Op {
    /// The operands, in order.
    pub fn operands(&self) -> Vec<Id> {
        use Op::*;
        match self {
            Const(_) | Var(_) => vec![],
            Neg(a)
            | Powi(a, _)
            | Exp(a)
            | Log(a)
            | Sqrt(a)
            | Abs(a)
            | Sign(a)
            | Tanh(a)
            | Softplus(a)
            | Sigmoid(a)
            | Not(a) => vec![*a],
            Add(a, b)
            | Sub(a, b)
            | Mul(a, b)
            | Div(a, b)
            | Pow(a, b)
            | Min(a, b)
            | Max(a, b)
            | Lt(a, b)
            | Le(a, b)
            | Eq(a, b)
            | And(a, b)
            | Or(a, b) => vec![*a, *b],
            Select(c, a, b) => vec![*c, *a, *b],
            Net { args, .. } | NetGrad { args, .. } => args.clone(),
        }
    }
}

/// What a node depends on, to hoist per-trajectory constants out of the
/// right-hand side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Deps {
    /// Reads a state.
    pub state: bool,
    /// Reads an input `u`.
    pub input: bool,
    /// Reads `t`.
    pub time: bool,
}

impl Deps {
    /// Constant for a given trajectory (depends on parameters and covariates only).
    pub fn is_static(&self) -> bool {
        !(self.state || self.input || self.time)
    }
}

/// The expression graph.
#[derive(Debug, Clone, Default)]
pub struct Graph {
    nodes: Vec<Op>,
    deps: Vec<Deps>,
    index: HashMap<Op, Id>,
    /// Derivatives computed so far: (node, variable) → node.
    dcache: HashMap<(Id, DiffVar), Id>,
}

/// What a derivative is taken with respect to: a leaf, or a node treated as
/// an independent variable (a network output, for weight gradients).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DiffVar {
    /// A leaf variable.
    Var(Var),
    /// A node.
    Node(Id),
}

impl Graph {
    /// An empty graph.
    pub fn new() -> Self {
        Self::default()
    }
    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }
    /// True when the graph has no node.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
    /// The operation of node `id`.
    pub fn op(&self, id: Id) -> &Op {
        &self.nodes[id as usize]
    }
    /// What node `id` depends on.
    pub fn deps(&self, id: Id) -> Deps {
        self.deps[id as usize]
    }
    /// The constant value of `id`, if it is a constant.
    pub fn constant(&self, id: Id) -> Option<f64> {
        match self.op(id) {
            Op::Const(b) => Some(f64::from_bits(*b)),
            _ => None,
        }
    }

    fn intern(&mut self, op: Op) -> Id {
        if let Some(&id) = self.index.get(&op) {
            return id;
        }
        let deps = match &op {
            Op::Var(Var::State(_)) => Deps { state: true, ..Deps::default() },
            Op::Var(Var::Input(_)) => Deps { input: true, ..Deps::default() },
            Op::Var(Var::Time) => Deps { time: true, ..Deps::default() },
            _ => op.operands().iter().fold(Deps::default(), |acc, &a| {
                let d = self.deps[a as usize];
                Deps { state: acc.state || d.state, input: acc.input || d.input, time: acc.time || d.time }
            }),
        };
        let id = self.nodes.len() as Id;
        self.nodes.push(op.clone());
        self.deps.push(deps);
        self.index.insert(op, id);
        id
    }

    /// A constant.
    pub fn num(&mut self, v: f64) -> Id {
        // -0.0 and 0.0 are one constant (both fold the same way).
        let v = if v == 0.0 { 0.0 } else { v };
        self.intern(Op::Const(v.to_bits()))
    }
    /// A leaf.
    pub fn var(&mut self, v: Var) -> Id {
        self.intern(Op::Var(v))
    }
    fn is(&self, id: Id, v: f64) -> bool {
        self.constant(id) == Some(v)
    }
    fn ordered(a: Id, b: Id) -> (Id, Id) {
        if a <= b {
            (a, b)
        } else {
            (b, a)
        }
    }
    /// `a + b`
    pub fn add(&mut self, a: Id, b: Id) -> Id {
        match (self.constant(a), self.constant(b)) {
            (Some(x), Some(y)) => self.num(x + y),
            (Some(0.0), _) => b,
            (_, Some(0.0)) => a,
            _ => {
                if let Op::Neg(nb) = *self.op(b) {
                    return self.sub(a, nb);
                }
                let (a, b) = Self::ordered(a, b);
                self.intern(Op::Add(a, b))
            }
        }
    }
    /// `a - b`
    pub fn sub(&mut self, a: Id, b: Id) -> Id {
        match (self.constant(a), self.constant(b)) {
            (Some(x), Some(y)) => self.num(x - y),
            (_, Some(0.0)) => a,
            (Some(0.0), _) => self.neg(b),
            _ if a == b => self.num(0.0),
            _ => {
                if let Op::Neg(nb) = *self.op(b) {
                    return self.add(a, nb);
                }
                self.intern(Op::Sub(a, b))
            }
        }
    }
    /// `a * b`
    pub fn mul(&mut self, a: Id, b: Id) -> Id {
        match (self.constant(a), self.constant(b)) {
            (Some(x), Some(y)) => self.num(x * y),
            (Some(0.0), _) => a,
            (_, Some(0.0)) => b,
            (Some(1.0), _) => b,
            (_, Some(1.0)) => a,
            (Some(-1.0), _) => self.neg(b),
            (_, Some(-1.0)) => self.neg(a),
            _ => {
                // (−x)·y = −(x·y) exactly in IEEE arithmetic; pulling the sign out
                // lets `-k*a` and `k*a` be recognised as one term with two signs.
                if let Op::Neg(x) = *self.op(a) {
                    let m = self.mul(x, b);
                    return self.neg(m);
                }
                if let Op::Neg(y) = *self.op(b) {
                    let m = self.mul(a, y);
                    return self.neg(m);
                }
                let (a, b) = Self::ordered(a, b);
                self.intern(Op::Mul(a, b))
            }
        }
    }
    /// `a / b`
    pub fn div(&mut self, a: Id, b: Id) -> Id {
        match (self.constant(a), self.constant(b)) {
            (Some(x), Some(y)) => self.num(x / y),
            (Some(0.0), _) => a,
            (_, Some(1.0)) => a,
            _ => {
                if let Op::Neg(x) = *self.op(a) {
                    let q = self.div(x, b);
                    return self.neg(q);
                }
                // A state-dependent value over a per-trajectory constant (`central / V`)
                // becomes a product with the hoisted reciprocal: engines then divide
                // once per trajectory, not in every right-hand side (as a hand-written
                // model would, at a cost of at most one extra rounding). Every engine
                // uses this graph, so they still agree bit for bit.
                if !self.deps(a).is_static() && self.deps(b).is_static() && self.constant(b).is_none() {
                    let one = self.num(1.0);
                    let r = self.intern(Op::Div(one, b));
                    return self.mul(a, r);
                }
                self.intern(Op::Div(a, b))
            }
        }
    }
    /// `-a`
    pub fn neg(&mut self, a: Id) -> Id {
        if let Some(x) = self.constant(a) {
            return self.num(-x);
        }
        if let Op::Neg(inner) = *self.op(a) {
            return inner;
        }
        self.intern(Op::Neg(a))
    }
    /// `a ^ b`: a whole constant exponent becomes repeated multiplication.
    pub fn pow(&mut self, a: Id, b: Id) -> Id {
        if let Some(y) = self.constant(b) {
            if y == 0.0 {
                return self.num(1.0);
            }
            if y == 1.0 {
                return a;
            }
            if y.fract() == 0.0 && y.abs() <= 64.0 {
                return self.powi(a, y as i32);
            }
            if y == 0.5 {
                return self.sqrt(a);
            }
        }
        if let (Some(x), Some(y)) = (self.constant(a), self.constant(b)) {
            return self.num(x.powf(y));
        }
        self.intern(Op::Pow(a, b))
    }
    /// `a ^ n`
    pub fn powi(&mut self, a: Id, n: i32) -> Id {
        match n {
            0 => self.num(1.0),
            1 => a,
            _ => match self.constant(a) {
                Some(x) => self.num(powi(x, n)),
                None => self.intern(Op::Powi(a, n)),
            },
        }
    }
    /// A unary function by its operation constructor (`Op::Exp`, ...).
    pub fn unary(&mut self, f: fn(Id) -> Op, a: Id) -> Id {
        let op = f(a);
        if let Some(x) = self.constant(a) {
            let v = eval_unary(&op, x);
            return self.num(v);
        }
        self.intern(op)
    }
    /// `exp(a)`
    pub fn exp(&mut self, a: Id) -> Id {
        self.unary(Op::Exp, a)
    }
    /// `ln(a)`
    pub fn log(&mut self, a: Id) -> Id {
        self.unary(Op::Log, a)
    }
    /// `sqrt(a)`
    pub fn sqrt(&mut self, a: Id) -> Id {
        self.unary(Op::Sqrt, a)
    }
    /// A binary operation that is not arithmetic (min, max, comparisons, logic).
    pub fn binary(&mut self, f: fn(Id, Id) -> Op, a: Id, b: Id) -> Id {
        let op = f(a, b);
        if let (Some(x), Some(y)) = (self.constant(a), self.constant(b)) {
            let v = eval_binary(&op, x, y);
            return self.num(v);
        }
        let op = match op {
            Op::Min(a, b) => {
                let (a, b) = Self::ordered(a, b);
                Op::Min(a, b)
            }
            Op::Max(a, b) => {
                let (a, b) = Self::ordered(a, b);
                Op::Max(a, b)
            }
            o => o,
        };
        self.intern(op)
    }
    /// `c ? a : b`
    pub fn select(&mut self, c: Id, a: Id, b: Id) -> Id {
        if a == b {
            return a;
        }
        match self.constant(c) {
            Some(x) if x != 0.0 => a,
            Some(_) => b,
            None => self.intern(Op::Select(c, a, b)),
        }
    }
    /// Network output `out` of `net` at `args`.
    pub fn net(&mut self, net: u32, out: u32, args: Vec<Id>) -> Id {
        self.intern(Op::Net { net, out, args })
    }

    /// The derivative of node `f` with respect to `v`, as a node.
    ///
    /// Every operation has an exact rule; piecewise operations (`abs`,
    /// `min`, `max`, `if`) take the derivative of the branch in force, and
    /// comparisons have derivative 0. A network output differentiates through
    /// [`Op::NetGrad`]; a second derivative of a network is refused
    /// (`Err` names the network).
    pub fn diff(&mut self, f: Id, v: DiffVar) -> Result<Id, u32> {
        if let Some(&d) = self.dcache.get(&(f, v)) {
            return Ok(d);
        }
        if v == DiffVar::Node(f) {
            return Ok(self.num(1.0));
        }
        if let DiffVar::Var(var) = v {
            let deps = self.deps(f);
            let may_depend = match var {
                Var::State(_) => deps.state,
                Var::Input(_) => deps.input,
                Var::Time => deps.time,
                _ => true,
            };
            if !may_depend {
                return Ok(self.num(0.0));
            }
        }
        let op = self.op(f).clone();
        let zero = self.num(0.0);
        let one = self.num(1.0);
        let d = match op {
            Op::Const(_) => zero,
            Op::Var(x) => {
                if v == DiffVar::Var(x) {
                    one
                } else {
                    zero
                }
            }
            Op::Add(a, b) => {
                let (da, db) = (self.diff(a, v)?, self.diff(b, v)?);
                self.add(da, db)
            }
            Op::Sub(a, b) => {
                let (da, db) = (self.diff(a, v)?, self.diff(b, v)?);
                self.sub(da, db)
            }
            Op::Mul(a, b) => {
                let (da, db) = (self.diff(a, v)?, self.diff(b, v)?);
                let l = self.mul(da, b);
                let r = self.mul(a, db);
                self.add(l, r)
            }
            Op::Div(a, b) => {
                // (da − (a/b)·db) / b, reusing the node a/b itself.
                let (da, db) = (self.diff(a, v)?, self.diff(b, v)?);
                let q = self.mul(f, db);
                let num = self.sub(da, q);
                self.div(num, b)
            }
            Op::Neg(a) => {
                let da = self.diff(a, v)?;
                self.neg(da)
            }
            Op::Powi(a, n) => {
                // n·a^(n−1)·da (never a^n/a: exact at a = 0).
                let da = self.diff(a, v)?;
                let p = self.powi(a, n - 1);
                let nn = self.num(n as f64);
                let c = self.mul(nn, p);
                self.mul(c, da)
            }
            Op::Pow(a, b) => {
                // b·a^(b−1)·da + a^b·ln(a)·db; the second term only where b varies.
                let (da, db) = (self.diff(a, v)?, self.diff(b, v)?);
                let bm1 = self.sub(b, one);
                let p = self.pow(a, bm1);
                let t1 = self.mul(b, p);
                let t1 = self.mul(t1, da);
                if self.is(db, 0.0) {
                    t1
                } else {
                    let la = self.log(a);
                    let t2 = self.mul(f, la);
                    let t2 = self.mul(t2, db);
                    self.add(t1, t2)
                }
            }
            Op::Exp(a) => {
                let da = self.diff(a, v)?;
                self.mul(f, da)
            }
            Op::Log(a) => {
                let da = self.diff(a, v)?;
                self.div(da, a)
            }
            Op::Sqrt(a) => {
                let da = self.diff(a, v)?;
                let two = self.num(2.0);
                let den = self.mul(two, f);
                self.div(da, den)
            }
            Op::Abs(a) => {
                let da = self.diff(a, v)?;
                let s = self.unary(Op::Sign, a);
                self.mul(s, da)
            }
            Op::Tanh(a) => {
                let da = self.diff(a, v)?;
                let sq = self.powi(f, 2);
                let c = self.sub(one, sq);
                self.mul(c, da)
            }
            Op::Softplus(a) => {
                let da = self.diff(a, v)?;
                let s = self.unary(Op::Sigmoid, a);
                self.mul(s, da)
            }
            Op::Sigmoid(a) => {
                let da = self.diff(a, v)?;
                let c = self.sub(one, f);
                let c = self.mul(f, c);
                self.mul(c, da)
            }
            Op::Min(a, b) => {
                let (da, db) = (self.diff(a, v)?, self.diff(b, v)?);
                let c = self.binary(Op::Le, a, b);
                self.select(c, da, db)
            }
            Op::Max(a, b) => {
                let (da, db) = (self.diff(a, v)?, self.diff(b, v)?);
                let c = self.binary(Op::Le, b, a);
                self.select(c, da, db)
            }
            Op::Select(c, a, b) => {
                let (da, db) = (self.diff(a, v)?, self.diff(b, v)?);
                self.select(c, da, db)
            }
            Op::Sign(_) | Op::Lt(..) | Op::Le(..) | Op::Eq(..) | Op::And(..) | Op::Or(..) | Op::Not(_) => zero,
            Op::Net { net, out, args } => {
                let mut acc = zero;
                for (k, &a) in args.iter().enumerate() {
                    let da = self.diff(a, v)?;
                    if self.is(da, 0.0) {
                        continue;
                    }
                    let g = self.intern(Op::NetGrad { net, out, wrt: k as u32, args: args.clone() });
                    let term = self.mul(g, da);
                    acc = self.add(acc, term);
                }
                acc
            }
            Op::NetGrad { net, args, .. } => {
                if args.iter().all(|&a| self.diff(a, v).is_ok_and(|d| self.is(d, 0.0))) {
                    zero
                } else {
                    return Err(net);
                }
            }
        };
        self.dcache.insert((f, v), d);
        Ok(d)
    }

    /// The nodes `roots` need, in an order where every operand comes before
    /// its user (the order of creation, which is topological).
    pub fn closure(&self, roots: &[Id]) -> Vec<Id> {
        let mut need = vec![false; self.nodes.len()];
        let mut stack: Vec<Id> = roots.to_vec();
        while let Some(n) = stack.pop() {
            if need[n as usize] {
                continue;
            }
            need[n as usize] = true;
            stack.extend(self.op(n).operands());
        }
        (0..self.nodes.len() as Id).filter(|&i| need[i as usize]).collect()
    }
}

/// `x^n` by repeated squaring, the same sequence of multiplications in every
/// engine (the CUDA code calls a device twin of this function).
pub fn powi(x: f64, n: i32) -> f64 {
    let mut base = if n < 0 { 1.0 / x } else { x };
    let mut e = n.unsigned_abs();
    let mut acc = 1.0;
    let mut first = true;
    while e > 0 {
        if e & 1 == 1 {
            acc = if first { base } else { acc * base };
            first = false;
        }
        e >>= 1;
        if e > 0 {
            base *= base;
        }
    }
    acc
}

/// `ln(1 + e^z)` and `1 / (1 + e^-z)`: the network library's own functions, so that a
/// `softplus` written in a model and one inside a network are the same arithmetic (the CUDA
/// twins `ins_softplus` and `ins_sigmoid` compute the same values branch by branch).
pub use insilico_neural::mlp::{sigmoid, softplus};

fn truth(b: bool) -> f64 {
    if b {
        1.0
    } else {
        0.0
    }
}

/// Value of a one-operand operation.
pub fn eval_unary(op: &Op, x: f64) -> f64 {
    match op {
        Op::Neg(_) => -x,
        Op::Powi(_, n) => powi(x, *n),
        Op::Exp(_) => x.exp(),
        Op::Log(_) => x.ln(),
        Op::Sqrt(_) => x.sqrt(),
        Op::Abs(_) => x.abs(),
        Op::Sign(_) => {
            if x > 0.0 {
                1.0
            } else if x < 0.0 {
                -1.0
            } else {
                0.0
            }
        }
        Op::Tanh(_) => x.tanh(),
        Op::Softplus(_) => softplus(x),
        Op::Sigmoid(_) => sigmoid(x),
        Op::Not(_) => truth(x == 0.0),
        _ => f64::NAN,
    }
}

/// Value of a two-operand operation.
pub fn eval_binary(op: &Op, x: f64, y: f64) -> f64 {
    match op {
        Op::Add(..) => x + y,
        Op::Sub(..) => x - y,
        Op::Mul(..) => x * y,
        Op::Div(..) => x / y,
        Op::Pow(..) => x.powf(y),
        Op::Min(..) => {
            if x <= y {
                x
            } else {
                y
            }
        }
        Op::Max(..) => {
            if y <= x {
                x
            } else {
                y
            }
        }
        Op::Lt(..) => truth(x < y),
        Op::Le(..) => truth(x <= y),
        Op::Eq(..) => truth(x == y),
        Op::And(..) => truth(x != 0.0 && y != 0.0),
        Op::Or(..) => truth(x != 0.0 || y != 0.0),
        _ => f64::NAN,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_subexpressions_are_shared() {
        let mut g = Graph::new();
        let a = g.var(Var::State(0));
        let b = g.var(Var::Param(1));
        let x = g.mul(a, b);
        let y = g.mul(b, a);
        assert_eq!(x, y);
        let z = g.add(x, y);
        let zero = g.num(0.0);
        assert_eq!(g.add(z, zero), z);
    }

    #[test]
    fn powi_matches_powf() {
        for n in -7..=9 {
            let x = 1.37_f64;
            assert!((powi(x, n) - x.powi(n)).abs() <= 1e-14 * x.powi(n).abs(), "{n}");
        }
    }
}
