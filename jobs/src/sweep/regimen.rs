//! The `[regimen]` section of a sweep config: dose trains into the model's
//! states and exposure windows on its declared inputs (see the
//! [module documentation](super) for the keys).

use crate::kernels::schedule::MAX_TRAINS;
use crate::kernels::{DoseTrain, Regimen, RegimenError, WindowTrain};
use crate::model::{DoseAttr, Model};

/// What a train acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum TrainKind {
    /// Doses into a state.
    Dose,
    /// Exposure windows on an input.
    Exposure,
}

/// A key of a train, in the order its values become columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Field {
    /// `dose`: amount per dose (>= 0).
    Dose,
    /// `interval`: time between doses (> 0).
    Interval,
    /// `duration`: infusion duration (>= 0; 0 = bolus).
    Duration,
    /// `level`: the input's level while a window is open (>= 0).
    Level,
    /// `exposure`: window length (> 0).
    Exposure,
    /// `period`: time between window openings (> 0).
    Period,
    /// `count`: number of doses or windows (whole, >= 1).
    Count,
    /// `start`: first dose or opening (>= 0).
    Start,
}

const DOSE_FIELDS: [Field; 5] = [Field::Dose, Field::Interval, Field::Duration, Field::Count, Field::Start];
const EXPOSURE_FIELDS: [Field; 5] = [Field::Level, Field::Exposure, Field::Period, Field::Count, Field::Start];

impl Field {
    /// The config key.
    pub(super) fn key(self) -> &'static str {
        match self {
            Field::Dose => "dose",
            Field::Interval => "interval",
            Field::Duration => "duration",
            Field::Level => "level",
            Field::Exposure => "exposure",
            Field::Period => "period",
            Field::Count => "count",
            Field::Start => "start",
        }
    }
    /// Checks one value; `Err` says why not.
    pub(super) fn check(self, v: f64) -> Result<(), &'static str> {
        if !v.is_finite() {
            return Err("must be finite");
        }
        match self {
            Field::Interval | Field::Exposure | Field::Period if v <= 0.0 => Err("must be positive (a duration)"),
            Field::Count if v < 1.0 || v.fract() != 0.0 || v > u32::MAX as f64 => Err("must be a whole number >= 1"),
            _ if v < 0.0 => Err("must be non-negative"),
            _ => Ok(()),
        }
    }
    /// Whether the key may be a `[sample]` range (continuous values).
    pub(super) fn samplable(self) -> bool {
        self != Field::Count
    }
}

/// One dose train or window train.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Train {
    /// The state or input, spelt as in the model.
    pub(super) name: String,
    pub(super) kind: TrainKind,
    /// State or input index.
    pub(super) index: u32,
    /// The regimen variable of each field of its kind (in `DOSE_FIELDS` /
    /// `EXPOSURE_FIELDS` order); `None`: the default.
    pub(super) vars: [Option<usize>; 5],
}

/// A regimen variable: one key of one train, a column of the results.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct RegimenVar {
    /// Column name: the key, or `<train>_<key>` with several trains.
    pub(super) column: String,
    /// The key as written in messages: `[regimen.<train>] <key>`.
    pub(super) config_key: String,
    pub(super) field: Field,
}

/// The trains of a sweep and their variables.
#[derive(Debug, Clone, PartialEq, Default)]
pub(super) struct RegimenSpec {
    pub(super) trains: Vec<Train>,
    pub(super) vars: Vec<RegimenVar>,
}

impl RegimenSpec {
    /// Reads `[regimen]` for `model`: the trains in the model's order
    /// (dose trains in state order, then exposures in input order), and
    /// each variable's raw TOML value, in column order.
    pub(super) fn parse(table: &toml::Table, model: &Model) -> Result<(RegimenSpec, Vec<toml::Value>), String> {
        let states = model.state_names();
        let inputs = model.inputs();
        let targets = || {
            format!(
                "states: {}; inputs: {}",
                states.join(", "),
                if inputs.is_empty() { "none".to_string() } else { inputs.join(", ") }
            )
        };
        let mut found: Vec<(TrainKind, u32, &toml::Table)> = Vec::new();
        for (k, v) in table {
            let toml::Value::Table(t) = v else {
                return Err(format!(
                    "[regimen] {k}: expected a table [regimen.<state or input>] (a dose train into a state or \
                     exposure windows on an input of model `{}`: {})",
                    model.name(),
                    targets()
                ));
            };
            let (kind, index) = if let Some(i) = states.iter().position(|s| s.eq_ignore_ascii_case(k)) {
                let attrs = [DoseAttr::Lag, DoseAttr::Bioavailability, DoseAttr::Rate, DoseAttr::Duration];
                if attrs.iter().any(|&a| model.has_dose_attr(i, a)) {
                    return Err(format!(
                        "[regimen.{k}]: model `{}` sets alag/f/rate/dur of `{}`, which the sweep's batched engine \
                         does not apply (`simulate` does); dose another state or drop those statements",
                        model.name(),
                        states[i]
                    ));
                }
                (TrainKind::Dose, i as u32)
            } else if let Some(i) = inputs.iter().position(|s| s.eq_ignore_ascii_case(k)) {
                (TrainKind::Exposure, i as u32)
            } else {
                return Err(format!(
                    "[regimen.{k}]: `{k}` is neither a state nor an input of model `{}` ({})",
                    model.name(),
                    targets()
                ));
            };
            found.push((kind, index, t));
        }
        found.sort_by_key(|f| (f.0 == TrainKind::Exposure, f.1));
        for kind in [TrainKind::Dose, TrainKind::Exposure] {
            if found.iter().filter(|f| f.0 == kind).count() > MAX_TRAINS {
                return Err(format!(
                    "[regimen]: at most {MAX_TRAINS} dose trains and {MAX_TRAINS} exposure trains (the batched \
                     integrators' capacity)"
                ));
            }
        }
        let several = found.len() > 1;
        let mut spec = RegimenSpec::default();
        let mut values = Vec::new();
        for (kind, index, t) in found {
            let name = match kind {
                TrainKind::Dose => states[index as usize].to_string(),
                TrainKind::Exposure => inputs[index as usize].clone(),
            };
            let fields = match kind {
                TrainKind::Dose => DOSE_FIELDS,
                TrainKind::Exposure => EXPOSURE_FIELDS,
            };
            let section = format!("[regimen.{name}]");
            for k in t.keys() {
                if !fields.iter().any(|f| f.key() == k) {
                    let valid: Vec<&str> = fields.iter().map(|f| f.key()).collect();
                    return Err(format!(
                        "{section} {k}: unknown key of a {} (valid: {})",
                        match kind {
                            TrainKind::Dose => "dose train",
                            TrainKind::Exposure => "train of exposure windows",
                        },
                        valid.join(", ")
                    ));
                }
            }
            let mut vars = [None; 5];
            for (slot, f) in fields.iter().enumerate() {
                if let Some(v) = t.get(f.key()) {
                    vars[slot] = Some(spec.vars.len());
                    let column = if several { format!("{name}_{}", f.key()) } else { f.key().to_string() };
                    spec.vars.push(RegimenVar { column, config_key: format!("{section} {}", f.key()), field: *f });
                    values.push(v.clone());
                }
            }
            // Required keys: the amount or level, the window length, and the
            // spacing unless a single dose or window is given.
            let single = t.get("count").and_then(|c| c.as_integer()) == Some(1);
            let required: &[Field] = match kind {
                TrainKind::Dose if single => &[Field::Dose],
                TrainKind::Dose => &[Field::Dose, Field::Interval],
                TrainKind::Exposure if single => &[Field::Level, Field::Exposure],
                TrainKind::Exposure => &[Field::Level, Field::Exposure, Field::Period],
            };
            for f in required {
                if !t.contains_key(f.key()) {
                    return Err(format!("{section} {}: missing", f.key()));
                }
            }
            spec.trains.push(Train { name, kind, index, vars });
        }
        Ok((spec, values))
    }

    /// The regimen of one trajectory from its regimen variables `vals`
    /// (validated): doses at `start, start + interval, ...` (`count` of
    /// them, else while before `horizon`); windows `[start + k·period,
    /// start + k·period + exposure)`, one continuous window when `exposure
    /// >= period`; a train of amount or level 0 is left out.
    pub(super) fn regimen(&self, vals: &[f64], horizon: f64) -> Result<Regimen, RegimenError> {
        let mut r = Regimen::new();
        for t in &self.trains {
            let get = |slot: usize| t.vars[slot].map(|i| vals[i]);
            let start = get(4).unwrap_or(0.0);
            let count = |spacing: f64| match get(3) {
                Some(c) => c as u32,
                None => ((horizon - start) / spacing).ceil().max(1.0) as u32,
            };
            match t.kind {
                TrainKind::Dose => {
                    let amount = get(0).unwrap_or(0.0);
                    if amount == 0.0 {
                        continue;
                    }
                    let interval = get(1).unwrap_or(horizon);
                    r = r.with_doses(DoseTrain {
                        start,
                        interval,
                        count: count(interval),
                        amount,
                        target: t.index,
                        duration: get(2).unwrap_or(0.0),
                    })?;
                }
                TrainKind::Exposure => {
                    let (level, exposure) = (get(0).unwrap_or(0.0), get(1).unwrap_or(0.0));
                    if level == 0.0 {
                        continue;
                    }
                    let w = match get(2) {
                        Some(period) if exposure >= period => {
                            let duration = match get(3) {
                                Some(c) => c * period,
                                None => horizon - start,
                            };
                            if duration <= 0.0 {
                                continue;
                            }
                            WindowTrain { start, period: horizon, count: 1, duration, level, input: t.index }
                        }
                        Some(period) => WindowTrain {
                            start,
                            period,
                            count: count(period),
                            duration: exposure,
                            level,
                            input: t.index,
                        },
                        None => {
                            WindowTrain { start, period: horizon, count: 1, duration: exposure, level, input: t.index }
                        }
                    };
                    r = r.with_windows(w)?;
                }
            }
        }
        Ok(r)
    }

    /// The variable whose column is `name` (case-insensitive).
    pub(super) fn find(&self, name: &str) -> Option<usize> {
        self.vars.iter().position(|v| v.column.eq_ignore_ascii_case(name))
    }

    /// Column names in order.
    pub(super) fn columns(&self) -> Vec<&str> {
        self.vars.iter().map(|v| v.column.as_str()).collect()
    }
}
