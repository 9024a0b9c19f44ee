//! Native code for the batched engine's register programs, generated at run
//! time with Cranelift.
//!
//! Why a JIT: a model loaded from a file at run time has no Rust code to
//! inline, and an interpreter pays a dispatch per instruction on every
//! right-hand side evaluation (about 6x the hand-written P1 model, measured
//! by `examples/model_engine_speed.rs`). Cranelift compiles the same
//! straight-line program to machine code in well under a millisecond per
//! model. Each instruction becomes the same IEEE operation (`+ − × ÷`,
//! `sqrt`, `|x|`, comparisons and selects inline; `exp`, `ln`, `pow`, `tanh`,
//! softplus and sigmoid as calls to the very Rust functions the interpreter
//! uses), with no fused multiply-add, so the JIT computes bit for bit what
//! the interpreter and the diffsol backend compute.
//!
//! Network instructions are not compiled; a program containing one runs on
//! the interpreter (a network evaluation dwarfs the dispatch cost anyway).

use cranelift_codegen::ir::condcodes::FloatCC;
use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{types, AbiParam, FuncRef, InstBuilder, MemFlagsData, Signature, Value};
use cranelift_codegen::settings::{self, Configurable};
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
use cranelift_jit::{JITBuilder, JITModule};
use cranelift_module::{Linkage, Module};

use crate::expr::{eval_binary, eval_unary, Op};
use crate::lanes::{LaneIns, LaneProgram, Layout};

/// A compiled program: `f(x, d, u, out)` writes the roots to `out[0..]`.
pub(crate) type NativeFn = unsafe extern "C" fn(*const f64, *const f64, *const f64, *mut f64);

/// The right-hand side over several lanes in one call:
/// `f(n, xs, ds, us, outs)` runs the program for `xs[l], ds[l], us[l]` into `outs[l]`, `l < n`.
pub(crate) type LanesFn =
    unsafe extern "C" fn(usize, *const *const f64, *const *const f64, *const *const f64, *const *mut f64);

/// Compiled programs and the module that owns their code.
pub(crate) struct Jit {
    /// Keeps the code alive; freed on drop.
    module: Option<JITModule>,
    /// One entry per program given to [`Jit::compile`] (`None`: not compiled).
    pub(crate) functions: Vec<Option<NativeFn>>,
    /// The first program (the right-hand side) over several lanes, if compiled.
    pub(crate) lanes: Option<LanesFn>,
}

// SAFETY: after `finalize_definitions` the module's code and data are
// immutable; the function pointers are plain code addresses that any thread
// may call. The module is only touched again in `drop`.
unsafe impl Send for Jit {}
// SAFETY: as above, nothing in `Jit` is mutated through a shared reference.
unsafe impl Sync for Jit {}

impl std::fmt::Debug for Jit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Jit({} of {} programs compiled)", self.functions.iter().flatten().count(), self.functions.len())
    }
}

impl Drop for Jit {
    fn drop(&mut self) {
        if let Some(m) = self.module.take() {
            // SAFETY: the function pointers die with `self`; nothing calls them after this.
            unsafe { m.free_memory() };
        }
    }
}

extern "C" fn ins_exp(x: f64) -> f64 {
    eval_unary(&Op::Exp(0), x)
}
extern "C" fn ins_log(x: f64) -> f64 {
    eval_unary(&Op::Log(0), x)
}
extern "C" fn ins_tanh(x: f64) -> f64 {
    eval_unary(&Op::Tanh(0), x)
}
extern "C" fn ins_softplus(x: f64) -> f64 {
    eval_unary(&Op::Softplus(0), x)
}
extern "C" fn ins_sigmoid(x: f64) -> f64 {
    eval_unary(&Op::Sigmoid(0), x)
}
extern "C" fn ins_pow(x: f64, y: f64) -> f64 {
    eval_binary(&Op::Pow(0, 0), x, y)
}

const CALLS_1: [(&str, extern "C" fn(f64) -> f64); 5] = [
    ("ins_exp", ins_exp),
    ("ins_log", ins_log),
    ("ins_tanh", ins_tanh),
    ("ins_softplus", ins_softplus),
    ("ins_sigmoid", ins_sigmoid),
];

/// Why a program could not be compiled.
#[derive(Debug)]
pub(crate) struct JitError(pub(crate) String);

impl Jit {
    /// Compiles each program; a program with a network instruction is left
    /// to the interpreter (`None`).
    pub(crate) fn compile(layout: &Layout, programs: &[&LaneProgram]) -> Result<Jit, JitError> {
        let e = |m: &dyn std::fmt::Display| JitError(m.to_string());
        let mut flags = settings::builder();
        flags.set("opt_level", "speed").map_err(|x| e(&x))?;
        flags.set("use_colocated_libcalls", "false").map_err(|x| e(&x))?;
        flags.set("is_pic", "false").map_err(|x| e(&x))?;
        let isa =
            cranelift_native::builder().map_err(|x| e(&x))?.finish(settings::Flags::new(flags)).map_err(|x| e(&x))?;
        let mut jb = JITBuilder::with_isa(isa, cranelift_module::default_libcall_names());
        for (name, f) in CALLS_1 {
            jb.symbol(name, f as *const u8);
        }
        jb.symbol("ins_pow", ins_pow as extern "C" fn(f64, f64) -> f64 as *const u8);
        let mut module = JITModule::new(jb);
        let ptr = module.target_config().pointer_type();
        let mut sig1 = Signature::new(module.target_config().default_call_conv);
        sig1.params.push(AbiParam::new(types::F64));
        sig1.returns.push(AbiParam::new(types::F64));
        let mut sig2 = sig1.clone();
        sig2.params.push(AbiParam::new(types::F64));
        let mut ids1 = Vec::new();
        for (name, _) in CALLS_1 {
            ids1.push(module.declare_function(name, Linkage::Import, &sig1).map_err(|x| e(&x))?);
        }
        let id_pow = module.declare_function("ins_pow", Linkage::Import, &sig2).map_err(|x| e(&x))?;

        let frontend = module.target_config();
        let mut ctx = module.make_context();
        let mut fctx = FunctionBuilderContext::new();
        let mut ids = Vec::new();
        for (k, prog) in programs.iter().enumerate() {
            if prog.code.iter().any(|i| matches!(i, LaneIns::Net { .. })) {
                ids.push(None);
                continue;
            }
            ctx.func.signature = Signature::new(module.target_config().default_call_conv);
            for _ in 0..4 {
                ctx.func.signature.params.push(AbiParam::new(ptr));
            }
            {
                let mut b = FunctionBuilder::new(&mut ctx.func, &mut fctx);
                let fr1: Vec<_> = ids1.iter().map(|id| module.declare_func_in_func(*id, b.func)).collect();
                let fr_pow = module.declare_func_in_func(id_pow, b.func);
                let block = b.create_block();
                b.append_block_params_for_function_params(block);
                b.switch_to_block(block);
                b.seal_block(block);
                let params = b.block_params(block).to_vec();
                let (px, pd, pu, pout) = (params[0], params[1], params[2], params[3]);
                emit_body(&mut b, layout, prog, [px, pd, pu, pout], &fr1, fr_pow)?;
                b.ins().return_(&[]);
                b.finalize(frontend);
            }
            let id =
                module.declare_function(&format!("prog{k}"), Linkage::Local, &ctx.func.signature).map_err(|x| e(&x))?;
            module.define_function(id, &mut ctx).map_err(|x| e(&x))?;
            module.clear_context(&mut ctx);
            ids.push(Some(id));
        }
        // The right-hand side once more, looping over lanes inside one call.
        let mut lanes_id = None;
        if let (Some(prog), Some(Some(_))) = (programs.first(), ids.first()) {
            ctx.func.signature = Signature::new(module.target_config().default_call_conv);
            for _ in 0..5 {
                ctx.func.signature.params.push(AbiParam::new(ptr));
            }
            {
                let mut b = FunctionBuilder::new(&mut ctx.func, &mut fctx);
                let fr1: Vec<_> = ids1.iter().map(|id| module.declare_func_in_func(*id, b.func)).collect();
                let fr_pow = module.declare_func_in_func(id_pow, b.func);
                let entry = b.create_block();
                let header = b.create_block();
                let body = b.create_block();
                let exit = b.create_block();
                b.append_block_params_for_function_params(entry);
                b.append_block_param(header, ptr);
                b.switch_to_block(entry);
                let params = b.block_params(entry).to_vec();
                let (n, xs, ds, us, outs) = (params[0], params[1], params[2], params[3], params[4]);
                let zero = b.ins().iconst(ptr, 0);
                b.ins().jump(header, &[zero.into()]);
                b.switch_to_block(header);
                let l = b.block_params(header)[0];
                let more = b.ins().icmp(IntCC::UnsignedLessThan, l, n);
                b.ins().brif(more, body, &[], exit, &[]);
                b.switch_to_block(body);
                let flags = MemFlagsData::trusted();
                let off = b.ins().imul_imm_u(l, i64::from(ptr.bytes()));
                let at = |b: &mut FunctionBuilder<'_>, base: Value| {
                    let a = b.ins().iadd(base, off);
                    b.ins().load(ptr, flags, a, 0)
                };
                let (px, pd, pu, pout) = (at(&mut b, xs), at(&mut b, ds), at(&mut b, us), at(&mut b, outs));
                emit_body(&mut b, layout, prog, [px, pd, pu, pout], &fr1, fr_pow)?;
                let next = b.ins().iadd_imm_u(l, 1);
                b.ins().jump(header, &[next.into()]);
                b.switch_to_block(exit);
                b.ins().return_(&[]);
                b.seal_all_blocks();
                b.finalize(frontend);
            }
            let id = module.declare_function("lanes0", Linkage::Local, &ctx.func.signature).map_err(|x| e(&x))?;
            module.define_function(id, &mut ctx).map_err(|x| e(&x))?;
            module.clear_context(&mut ctx);
            lanes_id = Some(id);
        }
        module.finalize_definitions().map_err(|x| e(&x))?;
        // SAFETY: compiled above with exactly the `LanesFn` signature.
        let lanes =
            lanes_id.map(|id| unsafe { std::mem::transmute::<*const u8, LanesFn>(module.get_finalized_function(id)) });
        let functions = ids
            .iter()
            .map(|id| {
                id.map(|id| {
                    let code = module.get_finalized_function(id);
                    // SAFETY: `code` was compiled above with exactly the `NativeFn` signature
                    // (four pointer arguments, no return value, the target's default call conv).
                    unsafe { std::mem::transmute::<*const u8, NativeFn>(code) }
                })
            })
            .collect();
        Ok(Jit { module: Some(module), functions, lanes })
    }
}

/// The instructions of `prog`, reading `x`, `d`, `u` through the first three
/// pointers and storing the roots through the fourth.
fn emit_body(
    b: &mut FunctionBuilder<'_>,
    layout: &Layout,
    prog: &LaneProgram,
    [px, pd, pu, pout]: [Value; 4],
    fr1: &[FuncRef],
    fr_pow: FuncRef,
) -> Result<(), JitError> {
    let flags = MemFlagsData::trusted();
    let nd = layout.derived.len();
    let base = layout.base();
    let mut vals: Vec<Option<Value>> = vec![None; base + prog.code.len()];
    // Leading registers are loaded on first use.
    let get = |b: &mut FunctionBuilder<'_>, vals: &mut Vec<Option<Value>>, r: u16| -> Value {
        let r = r as usize;
        if let Some(v) = vals[r] {
            return v;
        }
        let (p, i) = if r < layout.n {
            (px, r)
        } else if r < layout.n + nd {
            (pd, r - layout.n)
        } else {
            (pu, r - layout.n - nd)
        };
        let v = b.ins().load(types::F64, flags, p, (8 * i) as i32);
        vals[r] = Some(v);
        v
    };
    let zero = b.ins().f64const(0.0);
    let one = b.ins().f64const(1.0);
    for (k, ins) in prog.code.iter().enumerate() {
        let v = match ins {
            LaneIns::Const(c) => b.ins().f64const(*c),
            LaneIns::Select(c, x, y) => {
                let (c, x, y) = (get(b, &mut vals, *c), get(b, &mut vals, *x), get(b, &mut vals, *y));
                let t = b.ins().fcmp(FloatCC::NotEqual, c, zero);
                b.ins().select(t, x, y)
            }
            LaneIns::Unary(op, a) => {
                let a = get(b, &mut vals, *a);
                let call1 = |b: &mut FunctionBuilder<'_>, which: usize| {
                    let call = b.ins().call(fr1[which], &[a]);
                    b.inst_results(call)[0]
                };
                match op {
                    Op::Neg(_) => b.ins().fneg(a),
                    Op::Abs(_) => b.ins().fabs(a),
                    Op::Sqrt(_) => b.ins().sqrt(a),
                    Op::Exp(_) => call1(b, 0),
                    Op::Log(_) => call1(b, 1),
                    Op::Tanh(_) => call1(b, 2),
                    Op::Softplus(_) => call1(b, 3),
                    Op::Sigmoid(_) => call1(b, 4),
                    Op::Not(_) => {
                        let t = b.ins().fcmp(FloatCC::Equal, a, zero);
                        b.ins().select(t, one, zero)
                    }
                    Op::Sign(_) => {
                        let minus = b.ins().f64const(-1.0);
                        let pos = b.ins().fcmp(FloatCC::GreaterThan, a, zero);
                        let neg = b.ins().fcmp(FloatCC::LessThan, a, zero);
                        let s = b.ins().select(neg, minus, zero);
                        b.ins().select(pos, one, s)
                    }
                    Op::Powi(_, n) => powi(b, a, *n),
                    other => return Err(JitError(format!("no JIT rule for {other:?}"))),
                }
            }
            LaneIns::Binary(op, x, y) => {
                let (x, y) = (get(b, &mut vals, *x), get(b, &mut vals, *y));
                let cmp = |b: &mut FunctionBuilder<'_>, cc: FloatCC| {
                    let t = b.ins().fcmp(cc, x, y);
                    b.ins().select(t, one, zero)
                };
                match op {
                    Op::Add(..) => b.ins().fadd(x, y),
                    Op::Sub(..) => b.ins().fsub(x, y),
                    Op::Mul(..) => b.ins().fmul(x, y),
                    Op::Div(..) => b.ins().fdiv(x, y),
                    Op::Pow(..) => {
                        let call = b.ins().call(fr_pow, &[x, y]);
                        b.inst_results(call)[0]
                    }
                    Op::Min(..) => {
                        let t = b.ins().fcmp(FloatCC::LessThanOrEqual, x, y);
                        b.ins().select(t, x, y)
                    }
                    Op::Max(..) => {
                        let t = b.ins().fcmp(FloatCC::LessThanOrEqual, y, x);
                        b.ins().select(t, x, y)
                    }
                    Op::Lt(..) => cmp(b, FloatCC::LessThan),
                    Op::Le(..) => cmp(b, FloatCC::LessThanOrEqual),
                    Op::Eq(..) => cmp(b, FloatCC::Equal),
                    Op::And(..) | Op::Or(..) => {
                        let tx = b.ins().fcmp(FloatCC::NotEqual, x, zero);
                        let ty = b.ins().fcmp(FloatCC::NotEqual, y, zero);
                        let t = if matches!(op, Op::And(..)) { b.ins().band(tx, ty) } else { b.ins().bor(tx, ty) };
                        b.ins().select(t, one, zero)
                    }
                    other => return Err(JitError(format!("no JIT rule for {other:?}"))),
                }
            }
            LaneIns::Net { .. } => return Err(JitError("network instructions are not compiled".into())),
        };
        vals[base + k] = Some(v);
    }
    for (i, &r) in prog.roots.iter().enumerate() {
        let v = get(b, &mut vals, r);
        b.ins().store(flags, v, pout, (8 * i) as i32);
    }
    for (i, &r) in prog.roots.iter().enumerate() {
        let v = get(b, &mut vals, r);
        b.ins().store(flags, v, pout, (8 * i) as i32);
    }
    Ok(())
}

/// `a^n` as the multiplications of [`crate::expr::powi`], unrolled.
fn powi(b: &mut FunctionBuilder<'_>, a: Value, n: i32) -> Value {
    let mut base = if n < 0 {
        let one = b.ins().f64const(1.0);
        b.ins().fdiv(one, a)
    } else {
        a
    };
    let mut e = n.unsigned_abs();
    let mut acc: Option<Value> = None;
    while e > 0 {
        if e & 1 == 1 {
            acc = Some(match acc {
                None => base,
                Some(v) => b.ins().fmul(v, base),
            });
        }
        e >>= 1;
        if e > 0 {
            base = b.ins().fmul(base, base);
        }
    }
    acc.unwrap_or_else(|| b.ins().f64const(1.0))
}
