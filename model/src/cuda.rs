//! Backend 3: CUDA C device functions for NVRTC, printed from the same
//! register programs as the batched CPU engine ([`crate::lanes`]), one
//! statement per instruction in the same order. The kernels are compiled
//! without FMA contraction, so the GPU and its CPU twin do the same
//! operations: bitwise equal results where only `+ − × ÷` and `sqrt` are
//! involved (linear PK, P1), within the device math library's last-place
//! differences where `exp`, `log`, `pow` or `tanh` are.

use std::fmt::Write;

use insilico_kernels::CudaSource;

use crate::expr::{Op, Var};
use crate::lanes::{LaneInner, LaneIns, LaneProgram};
use crate::tape::{Ins, Program};

/// A C literal for `v` that reads back as exactly `v`.
fn literal(v: f64) -> String {
    if v.is_nan() {
        "(0.0 / 0.0)".into()
    } else if v.is_infinite() {
        if v > 0.0 { "(1.0 / 0.0)" } else { "(-1.0 / 0.0)" }.into()
    } else {
        // Rust's shortest round-trip form always has a '.' or an exponent.
        format!("{v:?}")
    }
}

fn c_unary(op: &Op, a: &str) -> String {
    match op {
        Op::Neg(_) => format!("-{a}"),
        Op::Powi(_, n) => format!("ins_powi({a}, {n})"),
        Op::Exp(_) => format!("exp({a})"),
        Op::Log(_) => format!("log({a})"),
        Op::Sqrt(_) => format!("sqrt({a})"),
        Op::Abs(_) => format!("fabs({a})"),
        Op::Sign(_) => format!("({a} > 0.0 ? 1.0 : ({a} < 0.0 ? -1.0 : 0.0))"),
        Op::Tanh(_) => format!("tanh({a})"),
        Op::Softplus(_) => format!("ins_softplus({a})"),
        Op::Sigmoid(_) => format!("ins_sigmoid({a})"),
        Op::Not(_) => format!("({a} == 0.0 ? 1.0 : 0.0)"),
        _ => "(0.0 / 0.0)".into(),
    }
}

fn c_binary(op: &Op, a: &str, b: &str) -> String {
    match op {
        Op::Add(..) => format!("{a} + {b}"),
        Op::Sub(..) => format!("{a} - {b}"),
        Op::Mul(..) => format!("{a} * {b}"),
        Op::Div(..) => format!("{a} / {b}"),
        Op::Pow(..) => format!("pow({a}, {b})"),
        Op::Min(..) => format!("({a} <= {b} ? {a} : {b})"),
        Op::Max(..) => format!("({b} <= {a} ? {a} : {b})"),
        Op::Lt(..) => format!("({a} < {b} ? 1.0 : 0.0)"),
        Op::Le(..) => format!("({a} <= {b} ? 1.0 : 0.0)"),
        Op::Eq(..) => format!("({a} == {b} ? 1.0 : 0.0)"),
        Op::And(..) => format!("(({a} != 0.0 && {b} != 0.0) ? 1.0 : 0.0)"),
        Op::Or(..) => format!("(({a} != 0.0 || {b} != 0.0) ? 1.0 : 0.0)"),
        _ => "(0.0 / 0.0)".into(),
    }
}

/// Helpers shared by every generated model (twins of [`crate::expr::powi`],
/// [`crate::expr::softplus`], [`crate::expr::sigmoid`]).
const HELPERS: &str = r#"
__device__ __forceinline__ double ins_powi(double x, int n) {
    double base = n < 0 ? 1.0 / x : x;
    unsigned int e = n < 0 ? (unsigned int)(-(long long)n) : (unsigned int)n;
    double acc = 1.0; int first = 1;
    while (e > 0) {
        if (e & 1u) { acc = first ? base : acc * base; first = 0; }
        e >>= 1;
        if (e > 0) base *= base;
    }
    return acc;
}
__device__ __forceinline__ double ins_softplus(double z) { return z > 0.0 ? z + log1p(exp(-z)) : log1p(exp(z)); }
__device__ __forceinline__ double ins_sigmoid(double z) {
    if (z >= 0.0) return 1.0 / (1.0 + exp(-z));
    double e = exp(z); return e / (1.0 + e);
}
"#;

/// A device function per network: output `out` (grad < 0) or its derivative
/// by input `grad`, forward mode, over the weights at `w + offset`
/// (the flat layout of `insilico_neural::Mlp`: per layer W column by input, then b).
fn network_function(name: &str, idx: usize, widths: &[usize], tanh: bool) -> String {
    let maxw = widths.iter().copied().max().unwrap_or(1);
    let nl = widths.len() - 1;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "// network `{name}`: {}\n__device__ double ins_net{idx}(const double* w, const double* in, int out, int grad) {{",
        widths.iter().map(|w| w.to_string()).collect::<Vec<_>>().join(" -> ")
    );
    let _ = writeln!(s, "    double a[{maxw}], t[{maxw}], z[{maxw}], tz[{maxw}];");
    let _ =
        writeln!(s, "    for (int i = 0; i < {}; ++i) {{ a[i] = in[i]; t[i] = (i == grad) ? 1.0 : 0.0; }}", widths[0]);
    let mut off = 0;
    for l in 0..nl {
        let (ni, no) = (widths[l], widths[l + 1]);
        let bo = off + ni * no;
        let _ = writeln!(s, "    for (int o = 0; o < {no}; ++o) {{ z[o] = w[{bo} + o]; tz[o] = 0.0; }}");
        let _ = writeln!(
            s,
            "    for (int j = 0; j < {ni}; ++j) for (int o = 0; o < {no}; ++o) {{ z[o] += w[{off} + j * {no} + o] * a[j]; tz[o] += w[{off} + j * {no} + o] * t[j]; }}"
        );
        if l + 1 < nl {
            let act = if tanh {
                "double h = tanh(z[o]); a[o] = h; t[o] = (1.0 - h * h) * tz[o];"
            } else {
                "a[o] = ins_softplus(z[o]); t[o] = ins_sigmoid(z[o]) * tz[o];"
            };
            let _ = writeln!(s, "    for (int o = 0; o < {no}; ++o) {{ {act} }}");
        }
        off = bo + no;
    }
    let _ = writeln!(s, "    return grad < 0 ? z[out] : tz[out];\n}}");
    s
}

/// Prints a lane program as C statements; `regs` names the register file's
/// leading parts (`x`, derived constants `d`, inputs `u`).
fn emit(inner: &LaneInner, prog: &LaneProgram, code: &mut String) {
    let lay = &inner.layout;
    let nd = lay.derived.len();
    let base = lay.base();
    let name = |r: u16| -> String {
        let r = r as usize;
        if r < lay.n {
            format!("x[{r}]")
        } else if r < lay.n + nd {
            format!("d[{}]", r - lay.n)
        } else if r < base {
            format!("u[{}]", r - lay.n - nd)
        } else {
            format!("r{}", r - base)
        }
    };
    for (k, ins) in prog.code.iter().enumerate() {
        let rhs = match ins {
            LaneIns::Const(v) => literal(*v),
            LaneIns::Unary(op, a) => c_unary(op, &name(*a)),
            LaneIns::Binary(op, a, b) => c_binary(op, &name(*a), &name(*b)),
            LaneIns::Select(c, a, b) => format!("({} != 0.0 ? {} : {})", name(*c), name(*a), name(*b)),
            LaneIns::Net { net, out, grad, args } => {
                let nw = &inner.model.networks()[*net as usize];
                let _ = writeln!(
                    code,
                    "    double in{k}[{}] = {{{}}};",
                    args.len(),
                    args.iter().map(|&a| name(a)).collect::<Vec<_>>().join(", ")
                );
                format!(
                    "ins_net{net}(w + {}, in{k}, {out}, {})",
                    nw.offset - inner.n_scalar,
                    grad.map_or(-1, |g| g as i64)
                )
            }
        };
        let _ = writeln!(code, "    const double r{k} = {rhs};");
    }
}

/// The prepare function: derived constants from `p = [scalar θ | covariates]`.
fn emit_prepare(inner: &LaneInner, out: &mut String) {
    let prog: &Program = &inner.prepare;
    for (k, ins) in prog.code.iter().enumerate() {
        let r = |a: &u32| format!("s{a}");
        let rhs = match ins {
            Ins::Const(v) => literal(*v),
            Ins::Leaf(Var::Param(i)) => format!("p[{i}]"),
            Ins::Leaf(Var::Covariate(i)) => format!("p[{}]", inner.n_scalar + *i as usize),
            Ins::Leaf(_) => "(0.0 / 0.0)".into(),
            Ins::Unary(op, a) => c_unary(op, &r(a)),
            Ins::Binary(op, a, b) => c_binary(op, &r(a), &r(b)),
            Ins::Select(c, a, b) => format!("({} != 0.0 ? {} : {})", r(c), r(a), r(b)),
            // Networks of parameters alone are not supported on the device.
            Ins::Net { .. } => "(0.0 / 0.0)".into(),
        };
        let _ = writeln!(out, "    const double s{k} = {rhs};");
    }
    for (slot, &root) in prog.roots.iter().enumerate() {
        let _ = writeln!(out, "    d[{slot}] = s{root};");
    }
}

/// The CUDA source of a compiled lane model observing output `output`.
pub(crate) fn cuda_source(inner: &LaneInner, output: usize) -> CudaSource {
    let n = inner.layout.n;
    let lay = &inner.layout;
    let nd = lay.derived.len();
    let base = lay.base();
    let reg = |r: u16| -> String {
        let r = r as usize;
        if r < n {
            format!("x[{r}]")
        } else if r < n + nd {
            format!("d[{}]", r - n)
        } else if r < base {
            format!("u[{}]", r - n - nd)
        } else {
            format!("r{}", r - base)
        }
    };
    let mut c = String::new();
    let _ = writeln!(c, "// Generated from model `{}` by insilico-model; do not edit.", inner.model.name());
    c.push_str(HELPERS);
    for (k, nw) in inner.model.networks().iter().enumerate() {
        let tanh = matches!(nw.mlp.activation(), insilico_neural::Activation::Tanh);
        c.push_str(&network_function(&nw.name, k, nw.mlp.widths(), tanh));
    }
    c.push_str("__device__ __forceinline__ void model_prepare(const double* p, double* d) {\n");
    emit_prepare(inner, &mut c);
    c.push_str("}\n");
    c.push_str("__device__ __forceinline__ void model_rhs(const double* x, const double* d, const double* u, const double* w, double* dx) {\n");
    emit(inner, &inner.rhs, &mut c);
    for (i, &r) in inner.rhs.roots.iter().enumerate() {
        let _ = writeln!(c, "    dx[{i}] = {};", reg(r));
    }
    c.push_str("}\n");
    c.push_str("__device__ __forceinline__ void model_jac(const double* x, const double* d, const double* u, const double* w, double* jac) {\n");
    let _ = writeln!(c, "    for (int k = 0; k < {}; ++k) jac[k] = 0.0;", n * n);
    emit(inner, &inner.jac, &mut c);
    for (&(i, j), &r) in inner.jac_entries.iter().zip(&inner.jac.roots) {
        let _ = writeln!(c, "    jac[{}] = {};", i * n + j, reg(r));
    }
    c.push_str("}\n");
    c.push_str("__device__ __forceinline__ double model_output(const double* x, const double* d, const double* w) {\n");
    let _ = writeln!(c, "    const double u[{}] = {{0.0}};", lay.ninputs.max(1));
    let prog = &inner.outputs[output];
    emit(inner, prog, &mut c);
    let _ = writeln!(c, "    (void)u;\n    return {};\n}}", reg(prog.roots[0]));
    CudaSource { code: c }
}
