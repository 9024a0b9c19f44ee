//! Solving a chunk of a sweep: the model compiled once for the batched
//! engine ([`LaneModel`]) at its state count, one pass per observed output,
//! and the untreated reference of the efficacy.

use std::collections::HashMap;
use std::sync::Mutex;

use rayon::prelude::*;

use super::{Sweep, SweepError, TrajectoryInputs};
use crate::kernels::reductions::{Reducer, Reduction};
use crate::kernels::{integrate, integrate_lanes, Regimen, Status, TrajectoryStats, LANES};
use crate::model::{LaneModel, Model};

/// Most states of a model the sweep runs: its engine is compiled for every
/// state count `1..=MAX_STATES` (a larger model runs in `simulate`, on diffsol).
pub const MAX_STATES: usize = 16;

/// Most untreated references kept between chunks (then the cache starts over).
const UNTREATED_CACHE: usize = 1 << 16;

/// Runs `$body` with the const `$N` equal to the runtime state count `$n`:
/// `Some(body)` for `1..=MAX_STATES`, `None` above. The one place the
/// sweep turns a model's size into a type.
macro_rules! with_states {
    ($n:expr, $N:ident => $body:expr) => {
        $crate::sweep::with_states!(@arms $n, $N, $body; 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16)
    };
    (@arms $n:expr, $N:ident, $body:expr; $($k:literal)*) => {
        match $n {
            $($k => {
                const $N: usize = $k;
                Some($body)
            })*
            _ => None,
        }
    };
}
pub(crate) use with_states;

fn too_large(model: &Model) -> String {
    format!(
        "model `{}` has {} states; the sweep's batched engine runs models of at most {MAX_STATES} states \
         (`simulate`, on diffsol, runs it)",
        model.name(),
        model.nstates()
    )
}

/// Whether the sweep's engine can run `model`; `Err` says why not and which engine can.
pub(crate) fn check_model(model: &Model) -> Result<(), String> {
    if model.nstates() == 0 || model.nstates() > MAX_STATES {
        return Err(too_large(model));
    }
    if !model.networks().is_empty() {
        return Err(format!(
            "model `{}` declares networks; the sweep runs models without networks (their weights would be \
             untrained), `fit` and `simulate` run it",
            model.name()
        ));
    }
    if model.output_names().is_empty() {
        return Err(format!("model `{}` declares no output (`output:` line)", model.name()));
    }
    crate::model::batched_engine_report(model).map(|_| ()).map_err(|e| e.to_string())
}

/// Where the trajectories are integrated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    /// All CPU cores (rayon).
    Cpu,
    /// The CUDA kernels (feature `cuda`).
    Cuda,
}

/// Where a pass's reduction goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dest {
    /// Output column `k`.
    Output(usize),
    /// The final treated value of the efficacy's quantity.
    Final,
}

/// One pass: the model observing one output, its reductions and where
/// each reduction's value goes.
struct Pass<M> {
    model: M,
    reductions: Vec<Reduction>,
    dest: Vec<Dest>,
}

/// Results of one chunk, columnar.
#[derive(Debug, Clone, PartialEq)]
pub struct ChunkResult {
    /// First trajectory id.
    pub start: u64,
    /// Per-trajectory inputs.
    pub inputs: Vec<TrajectoryInputs>,
    /// `n × outputs` (trajectory-major).
    pub outputs: Vec<f64>,
    /// Efficacy per trajectory when configured, else empty.
    pub efficacy: Vec<f64>,
    /// Status code per trajectory (worst over the passes and the efficacy's
    /// untreated solve; 0 = ok, see [`status_name`]). A trajectory that
    /// reached the horizon with a non-finite output is [`Status::NonFinite`] too.
    pub status: Vec<i32>,
    /// Last output time each trajectory reached (the horizon when it
    /// succeeded; NaN where the device does not report it).
    pub reached: Vec<f64>,
    /// Accepted steps per trajectory (first pass).
    pub steps: Vec<i32>,
}

/// Per-chunk buffers the passes fill.
struct Buffers<'a> {
    outputs: &'a mut [f64],
    fin: &'a mut [f64],
    status: &'a mut [i32],
    steps: &'a mut [i32],
    reached: &'a mut [f64],
}

/// The model compiled at one state count.
trait ChunkSolver: Send + Sync {
    /// Fills `buf` for `inputs`; returns the efficacy's untreated final values (empty without one).
    fn solve(
        &self,
        sweep: &Sweep,
        device: Device,
        inputs: &[TrajectoryInputs],
        buf: Buffers<'_>,
        tick: &(dyn Fn(u64) + Sync),
    ) -> Result<Vec<f64>, SweepError>;
}

/// A compiled device context for a sweep: the model at its state count
/// (and, on CUDA, the kernels of every pass).
pub struct Engine {
    device: Device,
    solver: Box<dyn ChunkSolver>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Engine({:?})", self.device)
    }
}

/// Whether this build can use CUDA and, if so, the GPU's name (or why not).
pub fn cuda_status() -> Result<String, String> {
    #[cfg(feature = "cuda")]
    {
        crate::kernels::cuda::available().map_err(|e| e.to_string())
    }
    #[cfg(not(feature = "cuda"))]
    {
        Err("this build of insilico has no CUDA support (rebuild with `--features cuda`)".to_string())
    }
}

impl Engine {
    /// An engine on `device`: compiles the model for the batched engine
    /// (CUDA: and the kernels of every pass).
    pub fn new(sweep: &Sweep, device: Device) -> Result<Self, SweepError> {
        if device == Device::Cuda {
            cuda_status().map_err(|e| SweepError::Device(format!("--device cuda: {e}")))?;
        }
        let n = sweep.model.nstates();
        let solver =
            with_states!(n, N => Compiled::<N>::new(sweep, device).map(|c| Box::new(c) as Box<dyn ChunkSolver>))
                .unwrap_or_else(|| {
                    Err(SweepError::Config {
                        file: sweep.source.clone(),
                        reason: format!("model: {}", too_large(&sweep.model)),
                    })
                })?;
        Ok(Engine { device, solver })
    }
    /// The device.
    pub fn device(&self) -> Device {
        self.device
    }
}

/// The model compiled for `N` states: one pass per observed output.
struct Compiled<const N: usize> {
    /// The model observing its first output (initial states).
    base: LaneModel<N>,
    passes: Vec<Pass<LaneModel<N>>>,
    /// The model observing the efficacy's quantity, for the untreated solve.
    reference: Option<LaneModel<N>>,
    /// Untreated final values and statuses by parameter vector (bits), kept
    /// across chunks: a pure function of the parameters, so a cached value
    /// is bit for bit what a new solve gives.
    untreated_cache: Mutex<HashMap<Vec<u64>, (f64, Status)>>,
    #[cfg(feature = "cuda")]
    gpu: Vec<crate::kernels::cuda::GpuEnsemble>,
}

impl<const N: usize> Compiled<N> {
    fn new(sweep: &Sweep, device: Device) -> Result<Self, SweepError> {
        let cfg = |e: crate::model::ModelError| SweepError::Config {
            file: sweep.source.clone(),
            reason: format!("model: {e}"),
        };
        let names = sweep.model.output_names();
        let first = names.first().copied().unwrap_or_default();
        let base = LaneModel::<N>::new(&sweep.model, &[], first).map_err(cfg)?;
        let mut passes = Vec::new();
        for q in &names {
            let mut reductions = Vec::new();
            let mut dest = Vec::new();
            for (k, o) in sweep.outputs.iter().enumerate() {
                if o.quantity == *q {
                    reductions.push(o.reduction);
                    dest.push(Dest::Output(k));
                }
            }
            if sweep.efficacy.as_ref().is_some_and(|e| e.quantity == *q) {
                reductions.push(Reduction::last());
                dest.push(Dest::Final);
            }
            if !reductions.is_empty() {
                passes.push(Pass { model: base.with_output(q).map_err(cfg)?, reductions, dest });
            }
        }
        let reference = match &sweep.efficacy {
            Some(e) => Some(base.with_output(&e.quantity).map_err(cfg)?),
            None => None,
        };
        #[cfg(feature = "cuda")]
        let gpu = match device {
            Device::Cpu => vec![],
            Device::Cuda => {
                use crate::kernels::cuda::GpuEnsemble;
                let dev = |e: crate::kernels::cuda::CudaError| SweepError::Device(format!("--device cuda: {e}"));
                passes.iter().map(|p| GpuEnsemble::new(&p.model).map_err(dev)).collect::<Result<Vec<_>, _>>()?
            }
        };
        #[cfg(not(feature = "cuda"))]
        if device == Device::Cuda {
            return Err(SweepError::Device("--device cuda: no CUDA support in this build".into()));
        }
        Ok(Compiled {
            base,
            passes,
            reference,
            untreated_cache: Mutex::new(HashMap::new()),
            #[cfg(feature = "cuda")]
            gpu,
        })
    }

    /// The final value of the efficacy's quantity without doses and
    /// exposures, for each trajectory, with its status: every distinct
    /// parameter vector is solved once (a pure function of the parameters,
    /// so the values do not depend on the chunking or the cache).
    fn untreated(&self, sweep: &Sweep, inputs: &[TrajectoryInputs], x0: &[[f64; N]]) -> (Vec<f64>, Vec<Status>) {
        let (Some(model), Some(eff)) = (&self.reference, &sweep.efficacy) else {
            return (vec![], vec![]);
        };
        // A poisoned lock only means another chunk panicked; the map itself is intact.
        let mut cache = self.untreated_cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() > UNTREATED_CACHE {
            cache.clear();
        }
        let keys: Vec<Vec<u64>> = inputs.iter().map(|inp| inp.params.iter().map(|v| v.to_bits()).collect()).collect();
        let mut index: HashMap<&[u64], usize> = HashMap::new();
        let mut first = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            if !cache.contains_key(key) {
                index.entry(key).or_insert_with(|| {
                    first.push(i);
                    first.len() - 1
                });
            }
        }
        let t_end = sweep.times.last().copied().unwrap_or(sweep.horizon);
        let reds = [Reduction::last()];
        let none = Regimen::new();
        let solved: Vec<(f64, Status)> = first
            .par_iter()
            .map(|&i| {
                let Ok(mut r) = Reducer::new(&reds) else { return (f64::NAN, Status::NonFinite) };
                let st = integrate(
                    model,
                    sweep.stepper,
                    &inputs[i].params,
                    &x0[i],
                    &none,
                    &[t_end],
                    t_end,
                    &eff.tol,
                    &mut r,
                );
                let mut v = [f64::NAN];
                r.values(&mut v);
                (v[0], st.status)
            })
            .collect();
        for (&i, r) in first.iter().zip(solved) {
            cache.insert(keys[i].clone(), r);
        }
        keys.iter().map(|k| cache.get(k).copied().unwrap_or((f64::NAN, Status::NonFinite))).unzip()
    }
}

fn worst(a: Status, b: Status) -> Status {
    if a as u8 >= b as u8 {
        a
    } else {
        b
    }
}

impl<const N: usize> ChunkSolver for Compiled<N> {
    fn solve(
        &self,
        sweep: &Sweep,
        device: Device,
        inputs: &[TrajectoryInputs],
        buf: Buffers<'_>,
        tick: &(dyn Fn(u64) + Sync),
    ) -> Result<Vec<f64>, SweepError> {
        let Buffers { outputs, fin, status, steps, reached } = buf;
        let cfg = |reason: String| SweepError::Config { file: sweep.source.clone(), reason };
        let regimens: Vec<Regimen> = inputs
            .iter()
            .map(|i| sweep.regimen.regimen(&i.regimen_vars, sweep.horizon))
            .collect::<Result<_, _>>()
            .map_err(|e| cfg(format!("[regimen]: {e}")))?;
        let x0: Vec<[f64; N]> = inputs.par_iter().map(|i| self.base.initial_state(&i.params)).collect();
        let nout = sweep.outputs.len();
        match device {
            Device::Cpu => {
                let reducers: Vec<Reducer> = self
                    .passes
                    .iter()
                    .map(|p| Reducer::new(&p.reductions))
                    .collect::<Result<_, _>>()
                    .map_err(|e| cfg(e.to_string()))?;
                let row_len = nout.max(1);
                let mut scratch = vec![0.0; inputs.len() * row_len];
                // `LANES` trajectories at a time through the lane-interleaved
                // integrator (each result bit-for-bit what it gets alone).
                scratch
                    .par_chunks_mut(row_len * LANES)
                    .zip(fin.par_chunks_mut(LANES))
                    .zip(status.par_chunks_mut(LANES).zip(steps.par_chunks_mut(LANES)))
                    .zip(inputs.par_chunks(LANES).zip(reached.par_chunks_mut(LANES)))
                    .zip(regimens.par_chunks(LANES).zip(x0.par_chunks(LANES)))
                    .for_each(|((((out, fin), (st, sp)), (inp, reach)), (regs, xs))| {
                        let m = inp.len();
                        let mut worst_status = vec![Status::Ok; m];
                        let mut vals = [0.0; 64];
                        for (k, (pass, red)) in self.passes.iter().zip(&reducers).enumerate() {
                            let mut rs: Vec<Traced> = (0..m)
                                .map(|_| {
                                    let mut r = red.clone();
                                    r.reset();
                                    Traced { reducer: r, last_t: f64::NAN }
                                })
                                .collect();
                            let ts: Vec<TrajectoryStats> =
                                match <[&mut Traced; LANES]>::try_from(rs.iter_mut().collect::<Vec<_>>()) {
                                    Ok(obs) => integrate_lanes(
                                        &pass.model,
                                        sweep.stepper,
                                        std::array::from_fn(|l| &inp[l].params[..]),
                                        std::array::from_fn(|l| &xs[l]),
                                        std::array::from_fn(|l| &regs[l]),
                                        &sweep.times,
                                        sweep.horizon,
                                        &sweep.tol,
                                        obs,
                                    )
                                    .to_vec(),
                                    Err(rest) => rest
                                        .into_iter()
                                        .enumerate()
                                        .map(|(l, r)| {
                                            integrate(
                                                &pass.model,
                                                sweep.stepper,
                                                &inp[l].params,
                                                &xs[l],
                                                &regs[l],
                                                &sweep.times,
                                                sweep.horizon,
                                                &sweep.tol,
                                                r,
                                            )
                                        })
                                        .collect(),
                                };
                            for (l, (r, t)) in rs.iter().zip(&ts).enumerate() {
                                if k == 0 {
                                    sp[l] = t.steps as i32;
                                }
                                worst_status[l] = worst(worst_status[l], t.status);
                                reach[l] = reach[l].min(if r.last_t.is_nan() { f64::NEG_INFINITY } else { r.last_t });
                                r.reducer.values(&mut vals[..pass.reductions.len()]);
                                for (d, v) in pass.dest.iter().zip(&vals) {
                                    match d {
                                        Dest::Final => fin[l] = *v,
                                        Dest::Output(c) => out[l * row_len + c] = *v,
                                    }
                                }
                            }
                        }
                        for (s, w) in st.iter_mut().zip(&worst_status) {
                            *s = *w as i32;
                        }
                        tick(m as u64);
                    });
                if nout > 0 {
                    outputs.copy_from_slice(&scratch[..outputs.len()]);
                }
            }
            Device::Cuda => {
                #[cfg(feature = "cuda")]
                {
                    use crate::kernels::reductions::summaries_needed;
                    use crate::kernels::Batch;
                    let rows: Vec<Vec<f64>> = inputs.iter().map(|i| i.params.clone()).collect();
                    let mut batch = Batch::<N>::from_rows(&rows, regimens)
                        .map_err(|e| SweepError::Device(format!("--device cuda: {e}")))?;
                    let n = inputs.len();
                    for (i, x) in x0.iter().enumerate() {
                        for (s, xs) in x.iter().enumerate() {
                            batch.x0[s * n + i] = *xs;
                        }
                    }
                    for (k, (pass, gpu)) in self.passes.iter().zip(&self.gpu).enumerate() {
                        let (windows, slots) = summaries_needed(&pass.reductions).map_err(|e| cfg(e.to_string()))?;
                        for (w, &(a, b, thr)) in windows.iter().enumerate() {
                            let (sums, stats, _) = gpu
                                .solve_summaries(
                                    &pass.model,
                                    sweep.stepper,
                                    &batch,
                                    &sweep.times,
                                    sweep.horizon,
                                    &sweep.tol,
                                    (a, b),
                                    thr,
                                )
                                .map_err(|e| SweepError::Device(format!("--device cuda: {e}")))?;
                            for i in 0..n {
                                if k == 0 && w == 0 {
                                    steps[i] = stats[i].steps as i32;
                                    reached[i] = f64::NAN;
                                }
                                status[i] = worst(status_of(status[i]), stats[i].status) as i32;
                                for ((red, d), slot) in pass.reductions.iter().zip(&pass.dest).zip(&slots) {
                                    if *slot == w {
                                        let v = red.of(&sums[i]);
                                        match d {
                                            Dest::Final => fin[i] = v,
                                            Dest::Output(c) => outputs[i * nout + c] = v,
                                        }
                                    }
                                }
                            }
                        }
                    }
                    tick(n as u64);
                }
                #[cfg(not(feature = "cuda"))]
                {
                    let _ = (outputs, fin, steps, reached, tick, nout, regimens);
                    return Err(SweepError::Device("--device cuda: no CUDA support in this build".into()));
                }
            }
        }
        // The efficacy's untreated reference (on the CPU on either device: one solve per distinct organism).
        let (untreated, ust) = self.untreated(sweep, inputs, &x0);
        for (s, u) in status.iter_mut().zip(&ust) {
            *s = worst(status_of(*s), *u) as i32;
        }
        Ok(untreated)
    }
}

impl Sweep {
    /// Integrates trajectories `[start, start + n)` on `engine`, calling
    /// `tick(k)` as `k` more trajectories finish (from worker threads).
    pub fn solve_chunk(
        &self,
        engine: &Engine,
        start: u64,
        n: usize,
        tick: &(dyn Fn(u64) + Sync),
    ) -> Result<ChunkResult, SweepError> {
        let inputs: Vec<TrajectoryInputs> = (0..n as u64).into_par_iter().map(|i| self.inputs(start + i)).collect();
        let nout = self.outputs.len();
        let mut outputs = vec![0.0; n * nout];
        let mut fin = vec![f64::NAN; n];
        let mut status = vec![0i32; n];
        let mut steps = vec![0i32; n];
        let mut reached = vec![f64::INFINITY; n];
        let buf = Buffers {
            outputs: &mut outputs,
            fin: &mut fin,
            status: &mut status,
            steps: &mut steps,
            reached: &mut reached,
        };
        let untreated = engine.solver.solve(self, engine.device, &inputs, buf, tick)?;
        let efficacy: Vec<f64> = fin.iter().zip(&untreated).map(|(v, u)| 1.0 - v / u).collect();
        // A trajectory that finished with a non-finite output failed: its
        // numbers are never written (the part holds nulls and the cause).
        for i in 0..n {
            let bad_out = outputs[i * nout..(i + 1) * nout].iter().any(|v| !v.is_finite());
            let bad_eff = efficacy.get(i).is_some_and(|v| !v.is_finite());
            if status[i] == 0 && (bad_out || bad_eff) {
                status[i] = Status::NonFinite as i32;
            }
        }
        Ok(ChunkResult { start, inputs, outputs, efficacy, status, steps, reached })
    }
}

/// A reducer that also remembers the last output time it saw (where a
/// failed trajectory stopped).
struct Traced<'a> {
    reducer: Reducer<'a>,
    last_t: f64,
}

impl crate::kernels::Observer for Traced<'_> {
    fn observe(&mut self, k: usize, t: f64, y: f64) {
        self.last_t = t;
        self.reducer.observe(k, t, y);
    }
}

/// The `status` text of a status code: `ok`, `max_steps` (raise
/// `max_steps`), `step_too_small`, `non_finite` (a NaN or infinite state or
/// output) or `singular` (a singular Rosenbrock matrix).
pub fn status_name(code: i32) -> &'static str {
    crate::status::of_kernel_code(code)
}

/// The kernels' status of a code.
fn status_of(c: i32) -> Status {
    match c {
        0 => Status::Ok,
        1 => Status::MaxSteps,
        2 => Status::StepTooSmall,
        3 => Status::NonFinite,
        _ => Status::Singular,
    }
}
