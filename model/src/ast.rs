//! The syntax tree of a model file, before names are resolved.

use crate::error::Span;

/// An expression as written.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    /// A number literal.
    Num(f64, Span),
    /// A name (parameter, state, intermediate, covariate, input, `t`).
    Name(String, Span),
    /// Unary minus or logical not.
    Unary(UnOp, Box<Expr>, Span),
    /// A binary operation.
    Binary(BinOp, Box<Expr>, Box<Expr>, Span),
    /// A call `f(a, b, ...)`, optionally indexed `g(x)[k]` (network outputs, 1-based).
    Call {
        /// The function or network name.
        name: String,
        /// Span of the name.
        name_span: Span,
        /// Arguments.
        args: Vec<Expr>,
        /// 1-based output index, for networks with several outputs.
        index: Option<(usize, Span)>,
        /// Span of the whole call.
        span: Span,
    },
}

impl Expr {
    /// Where the expression is in the source.
    pub fn span(&self) -> Span {
        match self {
            Expr::Num(_, s) | Expr::Name(_, s) | Expr::Unary(_, _, s) | Expr::Binary(_, _, _, s) => *s,
            Expr::Call { span, .. } => *span,
        }
    }
}

/// Unary operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnOp {
    /// `-x`
    Neg,
    /// `!x`
    Not,
}

/// Binary operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinOp {
    /// `+`
    Add,
    /// `-`
    Sub,
    /// `*`
    Mul,
    /// `/`
    Div,
    /// `^` or `**`
    Pow,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// `==`
    Eq,
    /// `!=`
    Ne,
    /// `&&`
    And,
    /// `||`
    Or,
}

/// A name with where it was written.
#[derive(Debug, Clone, PartialEq)]
pub struct Ident {
    /// The name.
    pub name: String,
    /// Where.
    pub span: Span,
}

/// A declared name with an optional default value (`ka = 1.2`, `WT = 70`).
#[derive(Debug, Clone, PartialEq)]
pub struct Declared {
    /// The name.
    pub ident: Ident,
    /// The default value, if given.
    pub value: Option<f64>,
    /// Allowed range, if given (`ka = 1 in (0, inf)`).
    pub bounds: Option<Bounds>,
}

/// An allowed range `(lo, hi)`, `[lo, hi]` or half-open mixes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bounds {
    /// Lower end.
    pub lo: f64,
    /// Whether `lo` itself is allowed (`[`).
    pub lo_closed: bool,
    /// Upper end.
    pub hi: f64,
    /// Whether `hi` itself is allowed (`]`).
    pub hi_closed: bool,
}

impl Bounds {
    /// Whether `v` lies in the range (NaN never does).
    pub fn contains(&self, v: f64) -> bool {
        let above = if self.lo_closed { v >= self.lo } else { v > self.lo };
        let below = if self.hi_closed { v <= self.hi } else { v < self.hi };
        above && below
    }
}

impl std::fmt::Display for Bounds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let num = |v: f64| {
            if v.is_infinite() {
                if v > 0.0 {
                    "inf".to_string()
                } else {
                    "-inf".to_string()
                }
            } else {
                v.to_string()
            }
        };
        write!(
            f,
            "{}{}, {}{}",
            if self.lo_closed { '[' } else { '(' },
            num(self.lo),
            num(self.hi),
            if self.hi_closed { ']' } else { ')' }
        )
    }
}

/// Dose attributes that a statement can set for a state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DoseAttr {
    /// `alag(s)`: lag time of doses into `s`.
    Lag,
    /// `f(s)`: bioavailable fraction.
    Bioavailability,
    /// `rate(s)`: modelled rate of RATE = -1 doses.
    Rate,
    /// `dur(s)`: modelled duration of RATE = -2 doses.
    Duration,
}

impl DoseAttr {
    /// The keyword as written.
    pub fn keyword(&self) -> &'static str {
        match self {
            DoseAttr::Lag => "alag",
            DoseAttr::Bioavailability => "f",
            DoseAttr::Rate => "rate",
            DoseAttr::Duration => "dur",
        }
    }
}

/// One statement or declaration of a model file.
#[derive(Debug, Clone, PartialEq)]
pub enum Stmt {
    /// `parameters: a = 1, b`
    Parameters(Vec<Declared>),
    /// `covariates: WT = 70`
    Covariates(Vec<Declared>),
    /// `states: a, b, c`
    States(Vec<Ident>),
    /// `inputs: C_med`
    Inputs(Vec<Ident>),
    /// `random: ETA_CL, ETA_V`
    Random(Vec<Ident>),
    /// `network g: 1 -> 16 -> 16 -> 1 tanh`
    Network {
        /// Its name.
        ident: Ident,
        /// Layer widths, input first.
        widths: Vec<usize>,
        /// Hidden activation (`tanh` or `softplus`).
        activation: Ident,
    },
    /// `conserved: a + b + 2 * c`
    Conserved(Expr, Span),
    /// `output: cp, auc = ...`: named outputs, each an existing name or defined here.
    Output(Vec<(Ident, Option<Expr>)>),
    /// `noise: s ~ expr` (process noise SD per unit time on a state).
    Noise(Ident, Expr),
    /// `x = expr` (also `x <- expr`).
    Assign(Ident, Expr),
    /// `d/dt(s) = expr`.
    Derivative(Ident, Expr),
    /// `s(0) = expr`.
    Initial(Ident, Expr),
    /// `alag(s) = expr` and friends.
    Dose(DoseAttr, Ident, Expr),
    /// `flux a -> b = expr` (`out` as `b` leaves the system, `in` as `a` enters it).
    Flux {
        /// Source state (or `in`).
        from: Ident,
        /// Target state (or `out`).
        to: Ident,
        /// The flux (amount per time).
        expr: Expr,
        /// Span of the whole statement.
        span: Span,
    },
    /// `if (cond) { ... } else { ... }` with assignments inside.
    If {
        /// The condition.
        cond: Expr,
        /// Statements when true.
        then: Vec<Stmt>,
        /// Statements when false.
        otherwise: Vec<Stmt>,
        /// Span of `if`.
        span: Span,
    },
}
