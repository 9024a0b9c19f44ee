//! Evaluating the graph: a compiled straight-line program (a "tape") over
//! registers, for any set of roots. Every engine without generated native
//! code runs these programs; the CUDA backend prints the same instructions
//! as C in the same order.

use std::cell::RefCell;

use insilico_neural::{Mlp, Workspace};

use crate::expr::{eval_binary, eval_unary, Graph, Id, Op, Var};
use crate::model::Network;

/// Values of the leaves for one evaluation.
#[derive(Debug, Clone, Copy)]
pub struct Env<'a> {
    /// States.
    pub x: &'a [f64],
    /// Parameters `θ` (declared, random effects, network weights).
    pub p: &'a [f64],
    /// Inputs `u`.
    pub u: &'a [f64],
    /// Covariates of the subject.
    pub cov: &'a [f64],
    /// Time.
    pub t: f64,
}

impl Env<'_> {
    fn leaf(&self, v: Var) -> f64 {
        let get = |s: &[f64], i: u32| s.get(i as usize).copied().unwrap_or(f64::NAN);
        match v {
            Var::State(i) => get(self.x, i),
            Var::Param(i) => get(self.p, i),
            Var::Input(i) => get(self.u, i),
            Var::Covariate(i) => get(self.cov, i),
            Var::Time => self.t,
        }
    }
}

/// One instruction; operands are register numbers.
#[derive(Debug, Clone, PartialEq)]
pub enum Ins {
    /// A constant.
    Const(f64),
    /// A leaf.
    Leaf(Var),
    /// One-operand operation (its graph op, operands renumbered).
    Unary(Op, u32),
    /// Two-operand operation.
    Binary(Op, u32, u32),
    /// `c != 0 ? a : b`
    Select(u32, u32, u32),
    /// Network output (`grad = Some(k)`: its derivative by argument `k`).
    Net {
        /// Network.
        net: u32,
        /// Output.
        out: u32,
        /// Derivative by this argument, or the value.
        grad: Option<u32>,
        /// Argument registers.
        args: Vec<u32>,
    },
}

/// A straight-line program computing a list of roots.
#[derive(Debug, Clone, Default)]
pub struct Program {
    /// Instructions; instruction `k` writes register `k`.
    pub code: Vec<Ins>,
    /// Register of each root.
    pub roots: Vec<u32>,
    /// Graph node of each instruction.
    pub nodes: Vec<Id>,
}

impl Program {
    /// The program computing `roots` of graph `g`.
    pub fn new(g: &Graph, roots: &[Id]) -> Program {
        let order = g.closure(roots);
        let mut reg = vec![u32::MAX; g.len()];
        let mut code = Vec::with_capacity(order.len());
        for (k, &id) in order.iter().enumerate() {
            reg[id as usize] = k as u32;
            let r = |a: &Id| reg[*a as usize];
            let ins = match g.op(id) {
                Op::Const(b) => Ins::Const(f64::from_bits(*b)),
                Op::Var(v) => Ins::Leaf(*v),
                Op::Select(c, a, b) => Ins::Select(r(c), r(a), r(b)),
                Op::Net { net, out, args } => {
                    Ins::Net { net: *net, out: *out, grad: None, args: args.iter().map(r).collect() }
                }
                Op::NetGrad { net, out, wrt, args } => {
                    Ins::Net { net: *net, out: *out, grad: Some(*wrt), args: args.iter().map(r).collect() }
                }
                op => {
                    let ops = op.operands();
                    match ops.len() {
                        1 => Ins::Unary(op.clone(), r(&ops[0])),
                        _ => Ins::Binary(op.clone(), r(&ops[0]), r(&ops[1])),
                    }
                }
            };
            code.push(ins);
        }
        let roots = roots.iter().map(|&id| reg[id as usize]).collect();
        Program { code, roots, nodes: order }
    }

    /// Number of registers the program needs.
    pub fn len(&self) -> usize {
        self.code.len()
    }
    /// True when the program computes nothing.
    pub fn is_empty(&self) -> bool {
        self.code.is_empty()
    }

    /// Runs the program; `regs` must hold at least [`Program::len`] values.
    pub fn run(&self, env: &Env<'_>, networks: &[Network], regs: &mut [f64]) {
        for (k, ins) in self.code.iter().enumerate() {
            regs[k] = match ins {
                Ins::Const(v) => *v,
                Ins::Leaf(v) => env.leaf(*v),
                Ins::Unary(op, a) => eval_unary(op, regs[*a as usize]),
                Ins::Binary(op, a, b) => eval_binary(op, regs[*a as usize], regs[*b as usize]),
                Ins::Select(c, a, b) => {
                    if regs[*c as usize] != 0.0 {
                        regs[*a as usize]
                    } else {
                        regs[*b as usize]
                    }
                }
                Ins::Net { net, out, grad, args } => {
                    let a: Vec<f64> = args.iter().map(|&r| regs[r as usize]).collect();
                    eval_network(&networks[*net as usize], env.p, &a, *out, *grad)
                }
            };
        }
    }

    /// Runs the program and returns the roots' values.
    pub fn eval(&self, env: &Env<'_>, networks: &[Network]) -> Vec<f64> {
        with_scratch(self.len(), |regs| {
            self.run(env, networks, regs);
            self.roots.iter().map(|&r| regs[r as usize]).collect()
        })
    }
}

thread_local! {
    static SCRATCH: RefCell<Vec<f64>> = const { RefCell::new(Vec::new()) };
    static NET_WS: RefCell<Workspace> = RefCell::new(Workspace::default());
}

/// Calls `f` with a thread-local scratch buffer of at least `n` values
/// (allocated once per thread and size, so hot loops do not allocate).
pub fn with_scratch<R>(n: usize, f: impl FnOnce(&mut [f64]) -> R) -> R {
    SCRATCH.with(|s| {
        let mut s = match s.try_borrow_mut() {
            Ok(s) => s,
            // Re-entrant use (a program run inside another's callback): a fresh buffer.
            Err(_) => return f(&mut vec![0.0; n]),
        };
        if s.len() < n {
            s.resize(n, 0.0);
        }
        f(&mut s[..n])
    })
}

/// Calls `f` with the network, its weights (its slice of `theta`) and the
/// thread's workspace sized for it; `missing` when `theta` is too short.
fn with_network<R>(net: &Network, theta: &[f64], missing: R, f: impl FnOnce(&Mlp, &[f64], &mut Workspace) -> R) -> R {
    let mlp = &net.mlp;
    let Some(w) = theta.get(net.offset..net.offset + mlp.n_params()) else {
        return missing;
    };
    NET_WS.with(|ws| {
        let mut ws = ws.borrow_mut();
        ws.ensure(mlp);
        f(mlp, w, &mut ws)
    })
}

/// Output `out` of a network at `args` (`grad = Some(k)`: its derivative by argument `k`).
pub fn eval_network(net: &Network, theta: &[f64], args: &[f64], out: u32, grad: Option<u32>) -> f64 {
    with_network(net, theta, f64::NAN, |mlp, w, ws| {
        let mut y = vec![0.0; mlp.n_outputs()];
        match grad {
            None => {
                mlp.forward(w, args, ws, &mut y);
                y[out as usize]
            }
            Some(k) => {
                let mut v = vec![0.0; args.len()];
                v[k as usize] = 1.0;
                let mut jv = vec![0.0; mlp.n_outputs()];
                mlp.jvp_input(w, args, &v, ws, &mut y, &mut jv);
                jv[out as usize]
            }
        }
    })
}

/// Adds `(∂ net_out/∂w)ᵀ · ybar` (one output's cotangent) into `gw` (the network's weights).
pub fn network_weight_vjp(net: &Network, theta: &[f64], args: &[f64], out: u32, ybar: f64, gw: &mut [f64]) {
    with_network(net, theta, (), |mlp, w, ws| {
        let mut y = vec![0.0; mlp.n_outputs()];
        mlp.forward(w, args, ws, &mut y);
        let mut gy = vec![0.0; mlp.n_outputs()];
        gy[out as usize] = ybar;
        let mut g = vec![0.0; mlp.n_params()];
        mlp.backward(w, &gy, ws, None, Some(&mut g));
        for (a, b) in gw.iter_mut().zip(&g) {
            *a += b;
        }
    })
}

/// `(∂ net_out/∂w) · v` for weight tangent `v`.
pub fn network_weight_jvp(net: &Network, theta: &[f64], args: &[f64], out: u32, v: &[f64]) -> f64 {
    with_network(net, theta, f64::NAN, |mlp, w, ws| {
        let mut y = vec![0.0; mlp.n_outputs()];
        let mut jv = vec![0.0; mlp.n_outputs()];
        mlp.jvp_params(w, args, v, ws, &mut y, &mut jv);
        jv[out as usize]
    })
}

/// Evaluates `order` (topological) into `vals`, indexed by node id, with
/// leaves from `leaf`. Returns false when a value is not finite.
pub(crate) fn eval_nodes_generic(
    g: &Graph,
    order: &[Id],
    vals: &mut [f64],
    leaf: impl Fn(Var) -> f64,
    networks: &[Network],
) -> bool {
    let p: Vec<f64> = (0..networks.iter().map(|n| n.offset + n.mlp.n_params()).max().unwrap_or(0) as u32)
        .map(|i| leaf(Var::Param(i)))
        .collect();
    for &id in order {
        let v = match g.op(id) {
            Op::Const(b) => f64::from_bits(*b),
            Op::Var(v) => leaf(*v),
            Op::Select(c, a, b) => {
                if vals[*c as usize] != 0.0 {
                    vals[*a as usize]
                } else {
                    vals[*b as usize]
                }
            }
            Op::Net { net, out, args } => {
                let a: Vec<f64> = args.iter().map(|&r| vals[r as usize]).collect();
                eval_network(&networks[*net as usize], &p, &a, *out, None)
            }
            Op::NetGrad { net, out, wrt, args } => {
                let a: Vec<f64> = args.iter().map(|&r| vals[r as usize]).collect();
                eval_network(&networks[*net as usize], &p, &a, *out, Some(*wrt))
            }
            op => {
                let ops = op.operands();
                if ops.len() == 1 {
                    eval_unary(op, vals[ops[0] as usize])
                } else {
                    eval_binary(op, vals[ops[0] as usize], vals[ops[1] as usize])
                }
            }
        };
        vals[id as usize] = v;
    }
    order.iter().all(|&id| vals[id as usize].is_finite())
}
