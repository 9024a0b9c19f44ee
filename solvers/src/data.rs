//! NONMEM-layout datasets: reading the CSV files pharmacometric users bring,
//! and turning each subject's records into a [`Schedule`] plus its
//! observation records.
//!
//! # Layout
//!
//! The first non-blank, non-comment line is the header. Column names are
//! compared case-insensitively; `ID` and `TIME` are required, and `AMT`,
//! `DV`, `EVID`, `CMT`, `MDV`, `RATE`, `II`, `ADDL` and `SS` are read with
//! their NONMEM meaning. Every other column is a covariate, kept under its
//! original spelling (see [`ReadOptions::ignore`] to read a NONMEM-named
//! column as a plain covariate).
//!
//! * Fields are separated by commas; surrounding spaces are trimmed and a
//!   field may be enclosed in double quotes (`""` inside quotes is a quote).
//! * Line endings may be LF, CRLF or CR; blank lines and lines whose first
//!   non-blank character is `#` are skipped (line numbers in errors count
//!   every physical line, the header's line is 1 when it is the first line).
//!   NONMEM's `IGNORE=#` convention: a commented line before the header that
//!   names `ID` and `TIME` (`#ID,TIME,AMT,...`) is the header. A first line
//!   of numbers (no header) is an error saying so.
//!   Extra *empty* fields at the end of a row (a trailing comma) are allowed.
//! * `.` or an empty field means missing. Numbers are decimal (`1e-3`, `.5`,
//!   `-1`, `8.33333333333333`); infinities and NaN are rejected.
//! * A new subject starts whenever `ID` differs from the previous row's
//!   (NONMEM semantics: an ID that reappears later starts another subject).
//!   Within a subject `TIME` must not decrease.
//!
//! [`ReadOptions::columns`] reads a NONMEM column from a differently named
//! one (the config key `[columns] AMT = "DOSE"`).
//!
//! Defaults for absent columns or missing values: `AMT` 0 (but a dose record
//! needs an amount: a dose record without an AMT column or with a missing
//! AMT is an error, except a steady-state constant infusion), `RATE` 0, `II` 0,
//! `ADDL` 0, `SS` 0, `CMT` none, `DV` none; `EVID` is 1 when `AMT > 0` or
//! `RATE ≠ 0` and 0 otherwise; `MDV` is true when `EVID ≠ 0` or `DV` is
//! missing.
//!
//! # Checks made while reading
//!
//! Every record: `EVID` in 0..=4; `AMT ≥ 0`; `RATE ≥ 0` or exactly -1
//! (modelled rate) or -2 (modelled duration); `II ≥ 0`; `ADDL ≥ 0`; `SS` in
//! {0, 1, 2}; `MDV` in {0, 1}; `CMT ≥ 0`; `EVID`, `CMT`, `MDV`, `ADDL`, `SS`
//! whole numbers. A dose amount (`AMT > 0`) only on dose records (EVID 1 or
//! 4). Dose records additionally: `ADDL > 0` needs `II > 0`; `SS > 0` with
//! `II = 0` is a constant infusion at steady state and needs `RATE > 0` and
//! `AMT = 0`; `AMT = 0` with `RATE ≠ 0` is only legal as such a constant
//! infusion.
//!
//! # Example
//! ```
//! use insilico_solvers::data::{Dataset, DoseMapping, ReadOptions};
//! let text = "ID,TIME,AMT,DV,CMT\n1,0,100,.,1\n1,1,0,3.2,2\n1,2,0,2.9,2\n";
//! let ds = Dataset::from_str("example.csv", text, &ReadOptions::default()).unwrap();
//! assert_eq!(ds.subjects.len(), 1);
//! let map = DoseMapping::new(2, 1, 2);
//! let (schedule, obs) = ds.subjects[0].to_schedule(&ds, &map).unwrap();
//! assert_eq!(schedule.events.len(), 1);
//! assert_eq!(obs.len(), 2);
//! assert_eq!(obs[0].cmt, 2);
//! ```

#![warn(missing_docs)]

use std::path::Path;

use crate::schedule::{Attr, Dose, DoseKind, Event, Schedule, SteadyState};

/// Errors of reading a dataset or of turning a subject into a schedule.
///
/// Every message names the file and, where a field is concerned, the line
/// (1-based, counting every physical line of the file) and the column.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DataError {
    /// The file could not be read.
    #[error("{file}: cannot read the dataset: {reason}")]
    Io {
        /// File name as given.
        file: String,
        /// What went wrong.
        reason: String,
    },
    /// A required column (`ID` or `TIME`) is not in the header.
    #[error(
        "{file}: required column `{column}` is not in the header \
         (column names are compared case-insensitively)"
    )]
    MissingColumn {
        /// File name as given.
        file: String,
        /// The missing column.
        column: String,
    },
    /// A column name appears twice in the header (case-insensitively).
    #[error(
        "{file}: column `{column}` appears more than once in the header \
         (column names are compared case-insensitively); rename or drop one"
    )]
    DuplicateColumn {
        /// File name as given.
        file: String,
        /// The repeated column, as spelled at its second appearance.
        column: String,
    },
    /// A field is malformed or inconsistent with the NONMEM event grammar,
    /// or a dose cannot be mapped onto the model.
    #[error("{file}, line {line}, column `{column}`: {reason}")]
    Field {
        /// File name as given.
        file: String,
        /// 1-based line number.
        line: usize,
        /// Column name.
        column: String,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// `TIME` decreases within a subject.
    #[error(
        "{file}, line {line}, column `TIME`: time {time} of subject `{subject}` \
         is earlier than the previous record's time {previous}; \
         sort each subject's records by TIME"
    )]
    TimeBackwards {
        /// File name as given.
        file: String,
        /// 1-based line number of the offending record.
        line: usize,
        /// The subject's ID.
        subject: String,
        /// The offending time.
        time: f64,
        /// The time of the subject's previous record.
        previous: f64,
    },
    /// The file has no header or no data rows.
    #[error("{file}: the dataset is empty (it needs a header line and at least one data row)")]
    Empty {
        /// File name as given.
        file: String,
    },
    /// The [`DoseMapping`] itself is inconsistent (not tied to a record).
    #[error("{file}: invalid dose mapping: {reason}")]
    Mapping {
        /// File name of the dataset the mapping was applied to.
        file: String,
        /// What is wrong with the mapping.
        reason: String,
    },
}

/// Options of [`Dataset::from_path`] and [`Dataset::from_str`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadOptions {
    /// Columns (any case) to read as plain covariates even though their name
    /// is a NONMEM column, e.g. the `SS` column of a simulation that used it
    /// for something else. Default: empty.
    pub ignore: Vec<String>,
    /// NONMEM columns read from a differently named dataset column, as
    /// `(NONMEM name, dataset column)` pairs (any case), e.g.
    /// `("AMT", "DOSE")`. The dataset column then has the NONMEM meaning; a
    /// column that already bears the NONMEM name is read as a covariate.
    /// Default: empty.
    pub columns: Vec<(String, String)>,
}

/// One data row.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// 1-based line number in the file.
    pub line: usize,
    /// TIME.
    pub time: f64,
    /// AMT (0 when absent or missing).
    pub amt: f64,
    /// DV (`None` when absent or missing). Ignored on non-observation records.
    pub dv: Option<f64>,
    /// EVID: 0 observation, 1 dose, 2 other, 3 reset, 4 reset and dose.
    pub evid: u8,
    /// CMT as written in the file (1-based; `None` when absent or missing).
    pub cmt: Option<usize>,
    /// MDV: true when the observation is missing (or the record is not an
    /// observation).
    pub mdv: bool,
    /// RATE: 0 bolus, > 0 infusion rate, -1 modelled rate, -2 modelled duration.
    pub rate: f64,
    /// II: interdose interval.
    pub ii: f64,
    /// ADDL: number of additional doses.
    pub addl: u32,
    /// SS: steady-state flag 0, 1 or 2.
    pub ss: u8,
    /// Covariate values aligned with [`Dataset::covariate_names`]
    /// (`None` when missing).
    pub covariates: Vec<Option<f64>>,
}

/// The records of one subject (a run of rows with the same ID).
#[derive(Debug, Clone, PartialEq)]
pub struct Subject {
    /// The ID as written (trimmed).
    pub id: String,
    /// The subject's records in file order.
    pub records: Vec<Record>,
}

/// A NONMEM-layout dataset.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    /// File name used in error messages.
    pub file: String,
    /// Covariate column names in header order, original spelling.
    pub covariate_names: Vec<String>,
    /// Subjects in file order.
    pub subjects: Vec<Subject>,
}

/// A dose attribute's source in a [`DoseMapping`].
#[derive(Debug, Clone, PartialEq)]
pub enum ColumnOrValue {
    /// Read from this covariate column (any case) on the dose record itself.
    Column(String),
    /// A fixed value.
    Value(f64),
    /// Model parameter `θ[i]` (becomes [`Attr::Param`]).
    Param(usize),
}

/// How dataset compartments map onto a model, and where modelled dose
/// attributes (F, lag, rate, duration) come from.
///
/// Compartment numbers are NONMEM's 1-based `CMT`; compartment `c` is the
/// model's state `c - 1`. Each attribute list holds at most one entry per
/// compartment.
#[derive(Debug, Clone, PartialEq)]
pub struct DoseMapping {
    /// Number of model compartments, numbered `1..=n_compartments`.
    pub n_compartments: usize,
    /// Compartment (1-based) of dose records whose CMT is absent or missing.
    pub default_dose_cmt: usize,
    /// Compartment (1-based) of observations whose CMT is absent, missing or 0.
    pub default_obs_cmt: usize,
    /// Bioavailability F per compartment (default 1).
    pub bioavailability: Vec<(usize, ColumnOrValue)>,
    /// Lag time per compartment (default 0).
    pub lag: Vec<(usize, ColumnOrValue)>,
    /// Modelled rate per compartment, used by records with `RATE = -1`.
    pub rate: Vec<(usize, ColumnOrValue)>,
    /// Modelled duration per compartment, used by records with `RATE = -2`.
    pub duration: Vec<(usize, ColumnOrValue)>,
}

impl DoseMapping {
    /// A mapping for `n_compartments` compartments with the given default
    /// dose and observation compartments (1-based), F = 1, no lag, and no
    /// modelled rate or duration.
    pub fn new(n_compartments: usize, default_dose_cmt: usize, default_obs_cmt: usize) -> Self {
        DoseMapping {
            n_compartments,
            default_dose_cmt,
            default_obs_cmt,
            bioavailability: Vec::new(),
            lag: Vec::new(),
            rate: Vec::new(),
            duration: Vec::new(),
        }
    }
    /// Sets the bioavailability of doses into compartment `cmt` (1-based).
    pub fn with_bioavailability(mut self, cmt: usize, f: ColumnOrValue) -> Self {
        self.bioavailability.retain(|(c, _)| *c != cmt);
        self.bioavailability.push((cmt, f));
        self
    }
    /// Sets the lag time of doses into compartment `cmt` (1-based).
    pub fn with_lag(mut self, cmt: usize, lag: ColumnOrValue) -> Self {
        self.lag.retain(|(c, _)| *c != cmt);
        self.lag.push((cmt, lag));
        self
    }
    /// Sets the modelled rate (`RATE = -1`) of doses into `cmt` (1-based).
    pub fn with_rate(mut self, cmt: usize, rate: ColumnOrValue) -> Self {
        self.rate.retain(|(c, _)| *c != cmt);
        self.rate.push((cmt, rate));
        self
    }
    /// Sets the modelled duration (`RATE = -2`) of doses into `cmt` (1-based).
    pub fn with_duration(mut self, cmt: usize, duration: ColumnOrValue) -> Self {
        self.duration.retain(|(c, _)| *c != cmt);
        self.duration.push((cmt, duration));
        self
    }

    /// Checks that every compartment named in the mapping exists and is
    /// named at most once per attribute.
    fn check(&self, file: &str) -> Result<(), DataError> {
        let n = self.n_compartments;
        let err = |reason: String| DataError::Mapping { file: file.to_string(), reason };
        if n == 0 {
            return Err(err("the model has no compartments (n_compartments = 0)".into()));
        }
        for (what, list) in [
            ("bioavailability", &self.bioavailability),
            ("lag", &self.lag),
            ("rate", &self.rate),
            ("duration", &self.duration),
        ] {
            for (i, (c, _)) in list.iter().enumerate() {
                if *c == 0 || *c > n {
                    return Err(err(format!(
                        "{what} is mapped for compartment {c}, but compartments are numbered 1..={n}"
                    )));
                }
                if list[..i].iter().any(|(d, _)| d == c) {
                    return Err(err(format!("{what} is mapped twice for compartment {c}; keep one entry")));
                }
            }
        }
        Ok(())
    }
}

/// An observation record (EVID 0) of a subject.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    /// Observation time.
    pub time: f64,
    /// Observed compartment (1-based).
    pub cmt: usize,
    /// Observed value (`None` when missing).
    pub dv: Option<f64>,
    /// True when the value is missing (MDV = 1) and must not enter a fit.
    pub mdv: bool,
    /// 1-based line number in the file.
    pub line: usize,
}

/// NONMEM column names, upper case.
const NM_COLUMNS: [&str; 11] = ["ID", "TIME", "AMT", "DV", "EVID", "CMT", "MDV", "RATE", "II", "ADDL", "SS"];

/// Positions of the NONMEM columns in a row, and of the covariates.
#[derive(Debug, Default)]
struct Layout {
    /// Original header names.
    names: Vec<String>,
    /// Index of each of [`NM_COLUMNS`] in the row, if present.
    nm: [Option<usize>; 11],
    /// Row indices of the covariate columns.
    covariates: Vec<usize>,
}

const ID: usize = 0;
const TIME: usize = 1;
const AMT: usize = 2;
const DV: usize = 3;
const EVID: usize = 4;
const CMT: usize = 5;
const MDV: usize = 6;
const RATE: usize = 7;
const II: usize = 8;
const ADDL: usize = 9;
const SS: usize = 10;

/// Splits a line into trimmed fields; handles double-quoted fields.
fn split_fields(line: &str) -> Result<Vec<String>, String> {
    let mut fields = Vec::new();
    let mut cur = String::new();
    let mut chars = line.chars().peekable();
    // state: are we inside quotes; has the current field had a quoted part
    let mut in_quotes = false;
    let mut quoted = false;
    while let Some(c) = chars.next() {
        if in_quotes {
            if c == '"' {
                if chars.peek() == Some(&'"') {
                    chars.next();
                    cur.push('"');
                } else {
                    in_quotes = false;
                }
            } else {
                cur.push(c);
            }
        } else if c == ',' {
            fields.push(finish_field(&cur, quoted));
            cur.clear();
            quoted = false;
        } else if c == '"' && cur.trim().is_empty() && !quoted {
            cur.clear();
            in_quotes = true;
            quoted = true;
        } else if quoted {
            if !c.is_whitespace() {
                return Err(format!(
                    "unexpected character `{c}` after a closing double quote \
                     (field {}); put the whole field in quotes",
                    fields.len() + 1
                ));
            }
        } else {
            cur.push(c);
        }
    }
    if in_quotes {
        return Err(format!("unterminated double quote in field {}; close the quote", fields.len() + 1));
    }
    fields.push(finish_field(&cur, quoted));
    Ok(fields)
}

fn finish_field(s: &str, quoted: bool) -> String {
    if quoted {
        s.to_string()
    } else {
        s.trim().to_string()
    }
}

/// True when a commented line (without its `#`) is a header: its fields
/// include `ID` and `TIME` (any case).
fn is_commented_header(rest: &str) -> bool {
    let Ok(names) = split_fields(rest) else { return false };
    let has = |c: &str| names.iter().any(|n| n.eq_ignore_ascii_case(c));
    has("ID") && has("TIME")
}

/// Resolves [`ReadOptions::columns`] against the header: `(NONMEM column
/// index, header position)` pairs.
fn check_renames(file: &str, names: &[String], opts: &ReadOptions) -> Result<Vec<(usize, usize)>, DataError> {
    let mut out: Vec<(usize, usize)> = Vec::new();
    for (nm, col) in &opts.columns {
        let err = |reason: String| DataError::Mapping { file: file.to_string(), reason };
        let k = NM_COLUMNS
            .iter()
            .position(|c| c.eq_ignore_ascii_case(nm.trim()))
            .ok_or_else(|| err(format!("[columns] {nm}: not a NONMEM column (valid: {})", NM_COLUMNS.join(", "))))?;
        let i = names.iter().position(|n| n.eq_ignore_ascii_case(col.trim())).ok_or_else(|| {
            err(format!("[columns] {nm} = \"{col}\": the header has no column `{col}` (columns: {})", names.join(", ")))
        })?;
        if out.iter().any(|(a, b)| *a == k || *b == i) {
            return Err(err(format!("[columns] {nm} = \"{col}\": a NONMEM column or dataset column is mapped twice")));
        }
        out.push((k, i));
    }
    Ok(out)
}

/// Parses a numeric field: `Ok(None)` for missing (`.` or empty).
fn parse_num(s: &str) -> Result<Option<f64>, String> {
    let s = s.trim();
    if s.is_empty() || s == "." {
        return Ok(None);
    }
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() => Ok(Some(v)),
        Ok(_) => Err(format!("`{}` is not a finite number; write a decimal number, or `.` for missing", shorten(s))),
        Err(_) => Err(format!(
            "`{}` is not a number; write a decimal number such as 1, 0.5 or 1e-3, or `.` for missing",
            shorten(s)
        )),
    }
}

/// Cuts long text for error messages.
fn shorten(s: &str) -> String {
    const MAX: usize = 40;
    if s.chars().count() <= MAX {
        s.to_string()
    } else {
        let head: String = s.chars().take(MAX).collect();
        format!("{head}…")
    }
}

/// Checks that `v` is a whole number within `0..=max`.
fn whole(v: f64, max: f64, what: &str) -> Result<f64, String> {
    if v.fract() != 0.0 {
        return Err(format!("{what} must be a whole number, found {v}"));
    }
    if v < 0.0 {
        return Err(format!("{what} must not be negative, found {v}"));
    }
    if v > max {
        return Err(format!("{what} must be at most {max}, found {v}"));
    }
    Ok(v)
}

impl Layout {
    fn from_header(file: &str, line: usize, header: &str, opts: &ReadOptions) -> Result<Self, DataError> {
        let names = split_fields(header).map_err(|reason| DataError::Field {
            file: file.to_string(),
            line,
            column: "(header)".into(),
            reason,
        })?;
        let mut layout = Layout::default();
        let mut seen: Vec<String> = Vec::new();
        let renamed = check_renames(file, &names, opts)?;
        for (i, name) in names.iter().enumerate() {
            if name.is_empty() {
                return Err(DataError::Field {
                    file: file.to_string(),
                    line,
                    column: format!("(column {})", i + 1),
                    reason: "empty column name in the header; name every column".into(),
                });
            }
            let upper = name.to_uppercase();
            if seen.contains(&upper) {
                return Err(DataError::DuplicateColumn { file: file.to_string(), column: name.clone() });
            }
            seen.push(upper.clone());
            let ignored = opts.ignore.iter().any(|g| g.trim().to_uppercase() == upper);
            // A mapped column takes its NONMEM name; a column bearing a mapped-away name is a covariate.
            let nm = match renamed.iter().find(|(_, col)| *col == i) {
                Some((k, _)) => Some(*k),
                None => NM_COLUMNS
                    .iter()
                    .position(|c| *c == upper)
                    .filter(|k| !ignored && !renamed.iter().any(|(r, _)| r == k)),
            };
            match nm {
                Some(k) => layout.nm[k] = Some(i),
                None => layout.covariates.push(i),
            }
        }
        for k in [ID, TIME] {
            if layout.nm[k].is_none() {
                let numeric = names.iter().all(|n| parse_num(n).is_ok())
                    && names.iter().any(|n| parse_num(n).is_ok_and(|v| v.is_some()));
                if numeric {
                    return Err(DataError::Field {
                        file: file.to_string(),
                        line,
                        column: "(header)".into(),
                        reason: "the first line that is not blank or a comment holds numbers, not column names: \
                             the dataset has no header; add a header line such as `ID,TIME,AMT,DV` \
                             (a header commented out as `#ID,TIME,...`, NONMEM's IGNORE=# convention, is \
                             read as the header when it names ID and TIME; found no such line)"
                            .into(),
                    });
                }
                return Err(DataError::MissingColumn { file: file.to_string(), column: NM_COLUMNS[k].to_string() });
            }
        }
        layout.names = names;
        Ok(layout)
    }

    /// Parses one data row.
    fn record(&self, file: &str, line: usize, text: &str) -> Result<(String, Record), DataError> {
        let field_err = |col: usize, reason: String| DataError::Field {
            file: file.to_string(),
            line,
            column: self.names.get(col).cloned().unwrap_or_default(),
            reason,
        };
        let mut fields = split_fields(text).map_err(|reason| DataError::Field {
            file: file.to_string(),
            line,
            column: "(row)".into(),
            reason,
        })?;
        let n = self.names.len();
        if fields.len() < n {
            return Err(field_err(
                fields.len(),
                format!(
                    "the row has {} fields but the header has {n} columns; \
                     this and the following columns are missing (use `.` for a missing value)",
                    fields.len()
                ),
            ));
        }
        if fields.len() > n {
            if fields[n..].iter().all(|f| f.is_empty()) {
                fields.truncate(n);
            } else {
                return Err(DataError::Field {
                    file: file.to_string(),
                    line,
                    column: format!("(extra field {})", n + 1),
                    reason: format!(
                        "the row has {} fields but the header has {n} columns; \
                         remove the extra fields or name them in the header",
                        fields.len()
                    ),
                });
            }
        }
        let num = |k: usize| -> Result<Option<f64>, DataError> {
            match self.nm[k] {
                None => Ok(None),
                Some(c) => parse_num(&fields[c]).map_err(|r| field_err(c, r)),
            }
        };
        // column index of NONMEM column k (only called for present columns)
        let col = |k: usize| self.nm[k].unwrap_or(usize::MAX);

        let id = fields[col(ID)].clone();
        if id.is_empty() || id == "." {
            return Err(field_err(col(ID), "missing ID; every row needs a subject ID".into()));
        }
        let time = num(TIME)?.ok_or_else(|| field_err(col(TIME), "missing TIME; every row needs a time".into()))?;
        let amt = num(AMT)?.unwrap_or(0.0);
        if amt < 0.0 {
            return Err(field_err(col(AMT), format!("AMT must not be negative, found {amt}")));
        }
        let rate = num(RATE)?.unwrap_or(0.0);
        if rate < 0.0 && rate != -1.0 && rate != -2.0 {
            return Err(field_err(
                col(RATE),
                format!(
                    "RATE must be ≥ 0 (0 bolus, > 0 infusion rate), -1 (modelled rate) \
                     or -2 (modelled duration), found {rate}"
                ),
            ));
        }
        let ii = num(II)?.unwrap_or(0.0);
        if ii < 0.0 {
            return Err(field_err(col(II), format!("II must not be negative, found {ii}")));
        }
        let addl = match num(ADDL)? {
            None => 0,
            Some(v) => whole(v, u32::MAX as f64, "ADDL").map_err(|r| field_err(col(ADDL), r))? as u32,
        };
        let ss = match num(SS)? {
            None => 0,
            Some(v) => {
                if v != 0.0 && v != 1.0 && v != 2.0 {
                    return Err(field_err(
                        col(SS),
                        format!(
                            "SS must be 0 (no steady state), 1 (reset to steady state) \
                             or 2 (add steady state), found {v}; if this column is not \
                             NONMEM's SS flag, read it as a covariate (ReadOptions::ignore)"
                        ),
                    ));
                }
                v as u8
            }
        };
        let cmt = match num(CMT)? {
            None => None,
            Some(v) if v < 0.0 => {
                return Err(field_err(
                    col(CMT),
                    format!(
                        "negative CMT ({v}, turning a compartment off) is not supported; \
                         use a positive compartment number"
                    ),
                ))
            }
            Some(v) => Some(whole(v, 1e9, "CMT").map_err(|r| field_err(col(CMT), r))? as usize),
        };
        let dv = num(DV)?;
        let evid = match num(EVID)? {
            Some(v) => {
                if v.fract() != 0.0 || !(0.0..=4.0).contains(&v) {
                    return Err(field_err(
                        col(EVID),
                        format!(
                            "EVID must be 0 (observation), 1 (dose), 2 (other), 3 (reset) \
                             or 4 (reset and dose), found {v}"
                        ),
                    ));
                }
                v as u8
            }
            None => u8::from(amt > 0.0 || rate != 0.0),
        };
        let mdv = match num(MDV)? {
            Some(v) => {
                if v != 0.0 && v != 1.0 {
                    return Err(field_err(col(MDV), format!("MDV must be 0 or 1, found {v}")));
                }
                v == 1.0
            }
            None => evid != 0 || dv.is_none(),
        };
        let mut covariates = Vec::with_capacity(self.covariates.len());
        for &c in &self.covariates {
            let v = parse_num(&fields[c]).map_err(|r| {
                field_err(c, format!("{r}; covariates must be numeric (recode text values as numbers)"))
            })?;
            covariates.push(v);
        }

        // Event-grammar consistency.
        let is_dose = evid == 1 || evid == 4;
        let constant_infusion = ss > 0 && ii == 0.0 && rate > 0.0;
        if is_dose && !constant_infusion {
            match self.nm[AMT] {
                None => {
                    return Err(field_err(
                        self.nm[EVID].unwrap_or(usize::MAX),
                        format!(
                            "a dose record (EVID {evid}) needs an amount, but the header has no AMT \
                             column; name the amount column AMT, or map it in the config \
                             (`[columns] AMT = \"DOSE\"`)"
                        ),
                    ))
                }
                Some(c) if fields[c].is_empty() || fields[c] == "." => {
                    return Err(field_err(
                        c,
                        format!("the amount is missing on a dose record (EVID {evid}); give AMT (0 for no drug)"),
                    ))
                }
                Some(_) => {}
            }
        }
        if !is_dose && amt > 0.0 {
            return Err(field_err(
                col(AMT),
                format!(
                    "AMT = {amt} on a record with EVID {evid}; only dose records \
                     (EVID 1 or 4) may carry an amount"
                ),
            ));
        }
        if is_dose {
            if addl > 0 && ii == 0.0 {
                let c = self.nm[II].or(self.nm[ADDL]).unwrap_or(usize::MAX);
                return Err(field_err(c, format!("ADDL = {addl} additional doses need an interdose interval II > 0")));
            }
            if ss > 0 && ii == 0.0 {
                if rate <= 0.0 {
                    let c = self.nm[II].or(self.nm[SS]).unwrap_or(usize::MAX);
                    return Err(field_err(
                        c,
                        format!(
                            "SS = {ss} with II = 0 is a steady-state constant infusion and \
                             needs RATE > 0 given in the data (found RATE = {rate}); \
                             give II > 0 for repeated doses"
                        ),
                    ));
                }
                if amt != 0.0 {
                    return Err(field_err(
                        col(AMT),
                        format!(
                            "a steady-state constant infusion (SS = {ss}, II = 0, RATE = {rate}) \
                             must have AMT = 0, found {amt}"
                        ),
                    ));
                }
            } else if amt == 0.0 && rate != 0.0 {
                let c = self.nm[AMT].or(self.nm[RATE]).unwrap_or(usize::MAX);
                return Err(field_err(
                    c,
                    format!(
                        "an infusion (RATE = {rate}) with AMT = 0 delivers nothing; \
                         AMT = 0 with RATE > 0 is only meaningful as a steady-state \
                         constant infusion (SS = 1 or 2, II = 0)"
                    ),
                ));
            }
        }

        Ok((id, Record { line, time, amt, dv, evid, cmt, mdv, rate, ii, addl, ss, covariates }))
    }
}

impl Dataset {
    /// Reads the dataset at `path`; errors name the path as given.
    pub fn from_path(path: impl AsRef<Path>, opts: &ReadOptions) -> Result<Dataset, DataError> {
        let path = path.as_ref();
        let file = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|e| DataError::Io { file: file.clone(), reason: e.to_string() })?;
        let text = String::from_utf8(bytes).map_err(|e| DataError::Io {
            file: file.clone(),
            reason: format!(
                "the file is not UTF-8 text (invalid byte at offset {}); save it as UTF-8 or ASCII CSV",
                e.utf8_error().valid_up_to()
            ),
        })?;
        Self::from_str(&file, &text, opts)
    }

    /// Parses a dataset from `text`; `name` is the file name used in errors.
    #[allow(clippy::should_implement_trait)]
    pub fn from_str(name: &str, text: &str, opts: &ReadOptions) -> Result<Dataset, DataError> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let normalized;
        let text = if text.contains('\r') {
            normalized = text.replace("\r\n", "\n").replace('\r', "\n");
            normalized.as_str()
        } else {
            text
        };
        let mut layout: Option<Layout> = None;
        let mut subjects: Vec<Subject> = Vec::new();
        for (i, raw) in text.split('\n').enumerate() {
            let line = i + 1;
            let trimmed = raw.trim();
            if trimmed.is_empty() {
                continue;
            }
            if let Some(rest) = trimmed.strip_prefix('#') {
                // NONMEM's IGNORE=# convention: a commented line before the data
                // that names ID and TIME is the header (`#ID,TIME,AMT,...`).
                if layout.is_none() && is_commented_header(rest) {
                    layout = Some(Layout::from_header(name, line, rest, opts)?);
                }
                continue;
            }
            let Some(lay) = &layout else {
                layout = Some(Layout::from_header(name, line, raw, opts)?);
                continue;
            };
            let (id, rec) = lay.record(name, line, raw)?;
            match subjects.last_mut() {
                Some(s) if s.id == id => {
                    if let Some(prev) = s.records.last() {
                        if rec.time < prev.time {
                            return Err(DataError::TimeBackwards {
                                file: name.to_string(),
                                line,
                                subject: id,
                                time: rec.time,
                                previous: prev.time,
                            });
                        }
                    }
                    s.records.push(rec);
                }
                _ => subjects.push(Subject { id, records: vec![rec] }),
            }
        }
        let Some(layout) = layout else {
            return Err(DataError::Empty { file: name.to_string() });
        };
        if subjects.is_empty() {
            return Err(DataError::Empty { file: name.to_string() });
        }
        let covariate_names = layout.covariates.iter().map(|&c| layout.names[c].clone()).collect();
        Ok(Dataset { file: name.to_string(), covariate_names, subjects })
    }

    /// Index of covariate `name` (any case) in [`Dataset::covariate_names`].
    pub fn covariate(&self, name: &str) -> Option<usize> {
        let name = name.trim();
        self.covariate_names.iter().position(|c| c.to_uppercase() == name.to_uppercase())
    }

    /// Total number of records over all subjects.
    pub fn n_records(&self) -> usize {
        self.subjects.iter().map(|s| s.records.len()).sum()
    }
}

/// Which dose attribute is being resolved, for validation and messages.
#[derive(Clone, Copy)]
enum AttrKind {
    Bioavailability,
    Lag,
    Rate,
    Duration,
}

impl AttrKind {
    fn name(self) -> &'static str {
        match self {
            AttrKind::Bioavailability => "bioavailability F",
            AttrKind::Lag => "lag time",
            AttrKind::Rate => "modelled rate",
            AttrKind::Duration => "modelled duration",
        }
    }
    /// `Err(requirement)` when `v` is not allowed.
    fn check(self, v: f64) -> Result<(), &'static str> {
        if !v.is_finite() {
            return Err("a finite number");
        }
        match self {
            AttrKind::Bioavailability | AttrKind::Lag if v < 0.0 => Err("≥ 0"),
            AttrKind::Rate | AttrKind::Duration if v <= 0.0 => Err("> 0"),
            _ => Ok(()),
        }
    }
}

impl Subject {
    /// Turns the subject's records into a [`Schedule`] and its observation
    /// records (EVID 0), both in record order.
    ///
    /// EVID 0 becomes an [`Observation`] (CMT absent, missing or 0: the
    /// mapping's default observation compartment); EVID 1 a
    /// [`Event::Dose`]; EVID 2 nothing; EVID 3 an [`Event::Reset`]; EVID 4
    /// a reset followed by a dose. A dose goes into state `CMT - 1` (the
    /// default dose compartment when CMT is absent or missing); RATE 0 is a
    /// bolus, RATE > 0 an infusion at that rate, RATE -1 an infusion at the
    /// mapped rate and RATE -2 an infusion over the mapped duration; F and
    /// lag come from the mapping (default 1 and 0). A mapped
    /// [`ColumnOrValue::Column`] is read on the dose record itself.
    pub fn to_schedule(&self, ds: &Dataset, map: &DoseMapping) -> Result<(Schedule, Vec<Observation>), DataError> {
        map.check(&ds.file)?;
        let mut schedule = Schedule::new();
        let mut observations = Vec::new();
        for r in &self.records {
            match r.evid {
                0 => observations.push(Observation {
                    time: r.time,
                    cmt: obs_cmt(r, ds, map)?,
                    dv: r.dv,
                    mdv: r.mdv,
                    line: r.line,
                }),
                1 => schedule.events.push(Event::Dose(dose(r, ds, map)?)),
                2 => {}
                3 => schedule.events.push(Event::Reset { time: r.time }),
                4 => {
                    let d = dose(r, ds, map)?;
                    schedule.events.push(Event::Reset { time: r.time });
                    schedule.events.push(Event::Dose(d));
                }
                e => return Err(field(ds, r, "EVID", format!("EVID must be 0, 1, 2, 3 or 4, found {e}"))),
            }
        }
        Ok((schedule, observations))
    }
}

fn field(ds: &Dataset, r: &Record, column: &str, reason: String) -> DataError {
    DataError::Field { file: ds.file.clone(), line: r.line, column: column.to_string(), reason }
}

fn obs_cmt(r: &Record, ds: &Dataset, map: &DoseMapping) -> Result<usize, DataError> {
    let n = map.n_compartments;
    match r.cmt {
        None | Some(0) => {
            let c = map.default_obs_cmt;
            if c == 0 || c > n {
                return Err(field(
                    ds,
                    r,
                    "CMT",
                    format!(
                        "the observation has no CMT and the default observation compartment \
                         {c} is not among the model's compartments 1..={n}; give CMT or fix \
                         the mapping's default_obs_cmt"
                    ),
                ));
            }
            Ok(c)
        }
        Some(c) if c > n => {
            Err(field(ds, r, "CMT", format!("observation in compartment {c}, but the model has compartments 1..={n}")))
        }
        Some(c) => Ok(c),
    }
}

fn dose(r: &Record, ds: &Dataset, map: &DoseMapping) -> Result<Dose, DataError> {
    let n = map.n_compartments;
    let cmt = match r.cmt {
        None => {
            let c = map.default_dose_cmt;
            if c == 0 || c > n {
                return Err(field(
                    ds,
                    r,
                    "CMT",
                    format!(
                        "the dose has no CMT and the default dose compartment {c} is not among \
                         the model's compartments 1..={n}; give CMT or fix the mapping's \
                         default_dose_cmt"
                    ),
                ));
            }
            c
        }
        Some(0) => return Err(field(ds, r, "CMT", format!("a dose needs a compartment 1..={n}, found CMT = 0"))),
        Some(c) if c > n => {
            return Err(field(
                ds,
                r,
                "CMT",
                format!("dose into compartment {c}, but the model has compartments 1..={n}"),
            ))
        }
        Some(c) => c,
    };
    if !(r.amt.is_finite() && r.amt >= 0.0) {
        return Err(field(ds, r, "AMT", format!("AMT must be a number ≥ 0, found {}", r.amt)));
    }
    if !(r.ii.is_finite() && r.ii >= 0.0) {
        return Err(field(ds, r, "II", format!("II must be a number ≥ 0, found {}", r.ii)));
    }
    let lookup = |list: &[(usize, ColumnOrValue)]| list.iter().find(|(c, _)| *c == cmt).map(|(_, v)| v.clone());
    let kind = if r.rate == 0.0 {
        DoseKind::Bolus
    } else if r.rate > 0.0 && r.rate.is_finite() {
        DoseKind::Rate(Attr::Value(r.rate))
    } else if r.rate == -1.0 {
        let src = lookup(&map.rate).ok_or_else(|| {
            field(
                ds,
                r,
                "RATE",
                format!(
                    "RATE = -1 asks for a modelled rate, but the mapping gives no rate for \
                     compartment {cmt}; map one (DoseMapping::rate) or give the rate in the data"
                ),
            )
        })?;
        DoseKind::Rate(resolve(&src, AttrKind::Rate, cmt, r, ds)?)
    } else if r.rate == -2.0 {
        let src = lookup(&map.duration).ok_or_else(|| {
            field(
                ds,
                r,
                "RATE",
                format!(
                    "RATE = -2 asks for a modelled duration, but the mapping gives no duration \
                     for compartment {cmt}; map one (DoseMapping::duration)"
                ),
            )
        })?;
        DoseKind::Duration(resolve(&src, AttrKind::Duration, cmt, r, ds)?)
    } else {
        return Err(field(ds, r, "RATE", format!("RATE must be ≥ 0, -1 or -2, found {}", r.rate)));
    };
    let bioavailability = match lookup(&map.bioavailability) {
        Some(src) => resolve(&src, AttrKind::Bioavailability, cmt, r, ds)?,
        None => Attr::Value(1.0),
    };
    let lag = match lookup(&map.lag) {
        Some(src) => resolve(&src, AttrKind::Lag, cmt, r, ds)?,
        None => Attr::Value(0.0),
    };
    let ss = match r.ss {
        0 => SteadyState::No,
        1 => SteadyState::Reset,
        2 => SteadyState::Add,
        s => return Err(field(ds, r, "SS", format!("SS must be 0, 1 or 2, found {s}"))),
    };
    Ok(Dose {
        time: r.time,
        cmt: cmt - 1,
        amount: r.amt,
        kind,
        bioavailability,
        lag,
        ii: r.ii,
        addl: r.addl,
        ss,
        line: Some(r.line),
    })
}

fn resolve(src: &ColumnOrValue, kind: AttrKind, cmt: usize, r: &Record, ds: &Dataset) -> Result<Attr, DataError> {
    match src {
        ColumnOrValue::Param(i) => Ok(Attr::Param(*i)),
        ColumnOrValue::Value(v) => {
            kind.check(*v).map_err(|req| {
                field(
                    ds,
                    r,
                    &format!("(mapped {} of compartment {cmt})", kind.name()),
                    format!("the mapping's fixed {} for compartment {cmt} must be {req}, found {v}", kind.name()),
                )
            })?;
            Ok(Attr::Value(*v))
        }
        ColumnOrValue::Column(name) => {
            let Some(k) = ds.covariate(name) else {
                return Err(field(
                    ds,
                    r,
                    name,
                    format!(
                        "the {} of compartment {cmt} is mapped to column `{name}`, which is not \
                         a covariate column of the dataset (covariates: {})",
                        kind.name(),
                        if ds.covariate_names.is_empty() { "none".to_string() } else { ds.covariate_names.join(", ") }
                    ),
                ));
            };
            let col = ds.covariate_names.get(k).map_or(name.as_str(), |s| s.as_str());
            let Some(v) = r.covariates.get(k).copied().flatten() else {
                return Err(field(
                    ds,
                    r,
                    col,
                    format!(
                        "the dose into compartment {cmt} takes its {} from this column, \
                         but the value is missing on the dose record",
                        kind.name()
                    ),
                ));
            };
            kind.check(v).map_err(|req| {
                field(
                    ds,
                    r,
                    col,
                    format!("the {} of a dose into compartment {cmt} must be {req}, found {v}", kind.name()),
                )
            })?;
            Ok(Attr::Value(v))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NMTEST: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/data/nmtest.csv");
    const THEOPH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/data/theoph.csv");
    const UDE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/data/ude_train.csv");
    const ORAL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/data/oral_1cpt.csv");

    fn opts() -> ReadOptions {
        ReadOptions::default()
    }

    fn parse(text: &str) -> Result<Dataset, DataError> {
        Dataset::from_str("test.csv", text, &opts())
    }

    /// The mapping NONMEM used for nmtest.csv: depot (1) and central (2);
    /// F, lag, modelled rate and duration of doses into central from columns.
    fn nmtest_map() -> DoseMapping {
        DoseMapping::new(2, 1, 2)
            .with_bioavailability(2, ColumnOrValue::Column("bioav".into()))
            .with_lag(2, ColumnOrValue::Column("LAGT".into()))
            .with_rate(2, ColumnOrValue::Column("rat2".into()))
            .with_duration(2, ColumnOrValue::Column("dur2".into()))
    }

    fn subject<'a>(ds: &'a Dataset, id: &str) -> &'a Subject {
        ds.subjects.iter().find(|s| s.id == id).unwrap_or_else(|| panic!("no subject {id}"))
    }

    fn doses(s: &Schedule) -> Vec<&Dose> {
        s.events
            .iter()
            .filter_map(|e| match e {
                Event::Dose(d) => Some(d),
                _ => None,
            })
            .collect()
    }

    /// Asserts that `err`'s message names the file, the line and the column.
    fn assert_names(err: &DataError, line: usize, column: &str) {
        let msg = err.to_string();
        assert!(msg.contains("test.csv"), "no file in: {msg}");
        assert!(msg.contains(&format!("line {line},")), "no line {line} in: {msg}");
        assert!(msg.contains(&format!("`{column}`")), "no column {column} in: {msg}");
    }

    fn field_err(text: &str) -> (usize, String, String) {
        match parse(text) {
            Err(e @ DataError::Field { .. }) => {
                let DataError::Field { line, column, .. } = &e else { unreachable!() };
                (*line, column.clone(), e.to_string())
            }
            other => panic!("expected a field error for {text:?}, got {other:?}"),
        }
    }

    // ---- the shipped data files -------------------------------------------

    #[test]
    fn shared_data_path_resolves() {
        assert!(Path::new(NMTEST).is_file(), "{NMTEST} not found");
        assert!(Path::new(NMTEST).canonicalize().unwrap().ends_with("shared/data/nmtest.csv"));
    }

    #[test]
    fn theoph() {
        let ds = Dataset::from_path(THEOPH, &opts()).unwrap();
        assert_eq!(ds.subjects.len(), 12);
        assert_eq!(ds.n_records(), 144);
        assert_eq!(ds.covariate_names, vec!["WT"]);
        assert_eq!(ds.covariate("wt"), Some(0));
        assert_eq!(ds.covariate("DV"), None);
        let s1 = &ds.subjects[0];
        assert_eq!(s1.id, "1");
        let r = &s1.records[0];
        assert_eq!((r.line, r.time, r.amt, r.evid, r.cmt, r.mdv), (2, 0.0, 320.0, 1, Some(1), true));
        assert_eq!(r.dv, None);
        assert_eq!(r.covariates, vec![Some(79.6)]);
        let r = &s1.records[1];
        assert_eq!((r.time, r.dv, r.evid, r.cmt, r.mdv), (0.0, Some(0.74), 0, Some(2), false));
        for s in &ds.subjects {
            assert_eq!(s.records.len(), 12);
            let (sched, obs) = s.to_schedule(&ds, &DoseMapping::new(2, 1, 2)).unwrap();
            assert_eq!(obs.len(), 11);
            assert!(obs.iter().all(|o| o.cmt == 2 && !o.mdv && o.dv.is_some()));
            let d = doses(&sched);
            assert_eq!(d.len(), 1);
            assert_eq!((d[0].cmt, d[0].kind, d[0].time), (0, DoseKind::Bolus, 0.0));
            assert_eq!(d[0].line, Some(s.records[0].line));
        }
        let ids: Vec<&str> = ds.subjects.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids[..3], ["1", "2", "3"]);
    }

    #[test]
    fn ude_train() {
        let ds = Dataset::from_path(UDE, &opts()).unwrap();
        assert_eq!(ds.subjects.len(), 24);
        assert_eq!(ds.n_records(), 298);
        assert!(ds.covariate_names.is_empty());
        let r = &ds.subjects[0].records[1];
        assert_eq!((r.time, r.dv, r.evid, r.cmt), (0.25, Some(0.634032), 0, Some(2)));
        let amts: Vec<f64> = ds.subjects.iter().map(|s| s.records[0].amt).collect();
        assert!(amts.iter().all(|a| [50.0, 100.0, 200.0].contains(a)));
        for s in &ds.subjects {
            let (sched, obs) = s.to_schedule(&ds, &DoseMapping::new(2, 1, 2)).unwrap();
            assert_eq!(sched.events.len(), 1);
            assert_eq!(obs.len(), s.records.len() - 1);
        }
    }

    #[test]
    fn oral_1cpt_with_ss_as_covariate() {
        let o = ReadOptions { ignore: vec!["ss".into()], ..Default::default() };
        let ds = Dataset::from_path(ORAL, &o).unwrap();
        assert_eq!(ds.subjects.len(), 120);
        assert_eq!(ds.n_records(), 7920);
        assert_eq!(ds.covariate_names, vec!["LNDV", "DOSE", "V", "CL", "KA", "SS", "SD"]);
        let ss = ds.covariate("SS").unwrap();
        let r = &ds.subjects[0].records[0];
        assert_eq!((r.amt, r.evid, r.cmt, r.ss, r.ii), (60000.0, 1, Some(1), 0, 0.0));
        assert_eq!(r.covariates[ss], Some(99.0));
        assert_eq!(r.covariates[ds.covariate("v").unwrap()], Some(86.51));
        // EVID 2 records are neither doses nor observations.
        let mut n_evid2 = 0;
        let mut n_obs = 0;
        let mut n_dose = 0;
        for s in &ds.subjects {
            let (sched, obs) = s.to_schedule(&ds, &DoseMapping::new(2, 1, 2)).unwrap();
            n_evid2 += s.records.iter().filter(|r| r.evid == 2).count();
            n_obs += obs.len();
            n_dose += sched.events.len();
        }
        assert_eq!((n_obs, n_dose, n_evid2), (6947, 960, 13));
    }

    #[test]
    fn oral_1cpt_ss_99_is_not_a_nonmem_flag() {
        let err = Dataset::from_path(ORAL, &opts()).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(&err, DataError::Field { line: 2, column, .. } if column == "SS"), "{err:?}");
        assert!(msg.contains("oral_1cpt.csv") && msg.contains("ReadOptions::ignore"), "{msg}");
    }

    #[test]
    fn nmtest_reads() {
        let ds = Dataset::from_path(NMTEST, &opts()).unwrap();
        assert_eq!(ds.subjects.len(), 54);
        assert_eq!(ds.n_records(), 7157);
        assert_eq!(ds.covariate_names, vec!["cp", "lagt", "bioav", "rat2", "dur2", "mode"]);
        // No DV column: every observation has a missing DV, so MDV defaults to true.
        let r = &ds.subjects[0].records[2];
        assert_eq!((r.time, r.dv, r.mdv, r.evid), (1.0, None, true, 0));
        assert_eq!(r.covariates[0], Some(3754.4));
        let r = &subject(&ds, "6").records[0];
        assert_eq!(r.rate, 8.33333333333333);
        let r = &subject(&ds, "26").records[0];
        assert_eq!((r.amt, r.rate, r.ss, r.ii, r.evid), (0.0, 100.0, 1, 0.0, 1));
        // Every subject converts.
        let map = nmtest_map();
        let mut n_obs = 0;
        for s in &ds.subjects {
            let (_, obs) = s.to_schedule(&ds, &map).unwrap();
            n_obs += obs.len();
        }
        assert_eq!(n_obs, 7074);
    }

    #[test]
    fn nmtest_schedules() {
        let ds = Dataset::from_path(NMTEST, &opts()).unwrap();
        let map = nmtest_map();

        // 1: bolus into the depot, 3 additional doses every 24 h; F/lag of
        // compartment 2 do not apply.
        let (s, obs) = subject(&ds, "1").to_schedule(&ds, &map).unwrap();
        let d = doses(&s);
        assert_eq!(d.len(), 1);
        assert_eq!(*d[0], Dose { line: Some(2), ..Dose::bolus(0.0, 0, 100.0).repeated(24.0, 3) });
        assert!(obs.iter().all(|o| o.cmt == 2));
        assert_eq!(obs[0].line, 3);

        // 2: bolus into central with lag 12.13 and F 2.23 from columns.
        let (s, _) = subject(&ds, "2").to_schedule(&ds, &map).unwrap();
        let d = doses(&s)[0];
        assert_eq!(d.cmt, 1);
        assert_eq!(d.bioavailability, Attr::Value(2.23));
        assert_eq!(d.lag, Attr::Value(12.13));

        // 3: infusion at RATE 10.
        let (s, _) = subject(&ds, "3").to_schedule(&ds, &map).unwrap();
        assert_eq!(doses(&s)[0].kind, DoseKind::Rate(Attr::Value(10.0)));

        // 5: RATE = -2 with dur2 = 48 and F 0.5.
        let (s, _) = subject(&ds, "5").to_schedule(&ds, &map).unwrap();
        let d = doses(&s)[0];
        assert_eq!(d.kind, DoseKind::Duration(Attr::Value(48.0)));
        assert_eq!(d.bioavailability, Attr::Value(0.5));
        assert_eq!((d.amount, d.cmt, d.ss), (480.0, 1, SteadyState::No));

        // 19: modelled duration at steady state.
        let (s, _) = subject(&ds, "19").to_schedule(&ds, &map).unwrap();
        let d = doses(&s)[0];
        assert_eq!(d.kind, DoseKind::Duration(Attr::Value(9.0)));
        assert_eq!((d.ss, d.ii, d.addl), (SteadyState::Reset, 24.0, 3));

        // 26: constant infusion at steady state, amount 0.
        let (s, _) = subject(&ds, "26").to_schedule(&ds, &map).unwrap();
        let d = doses(&s)[0];
        assert_eq!((d.amount, d.kind, d.ss, d.ii), (0.0, DoseKind::Rate(Attr::Value(100.0)), SteadyState::Reset, 0.0));

        // 21: EVID 4 -> reset then dose.
        let (s, _) = subject(&ds, "21").to_schedule(&ds, &map).unwrap();
        assert_eq!(s.events[0], Event::Reset { time: 0.0 });
        assert!(matches!(&s.events[1], Event::Dose(d) if d.ss == SteadyState::Reset && d.ii == 12.0));

        // 23: EVID 3 at time 50 resets; 20: EVID 4 at time 50.
        let (s, _) = subject(&ds, "23").to_schedule(&ds, &map).unwrap();
        assert!(s.events.contains(&Event::Reset { time: 50.0 }));
        let (s, _) = subject(&ds, "20").to_schedule(&ds, &map).unwrap();
        let k = s.events.iter().position(|e| *e == Event::Reset { time: 50.0 }).unwrap();
        assert!(matches!(&s.events[k + 1], Event::Dose(d) if d.time == 50.0 && d.amount == 120.0));

        // SS = 2.
        let any_ss2 = ds.subjects.iter().any(|sub| {
            let (s, _) = sub.to_schedule(&ds, &map).unwrap();
            doses(&s).iter().any(|d| d.ss == SteadyState::Add)
        });
        assert!(any_ss2);

        // Parameters as attributes.
        let pmap = DoseMapping::new(2, 1, 2)
            .with_bioavailability(2, ColumnOrValue::Param(3))
            .with_lag(2, ColumnOrValue::Value(0.5))
            .with_duration(2, ColumnOrValue::Param(4));
        let (s, _) = subject(&ds, "5").to_schedule(&ds, &pmap).unwrap();
        let d = doses(&s)[0];
        assert_eq!(d.kind, DoseKind::Duration(Attr::Param(4)));
        assert_eq!((d.bioavailability, d.lag), (Attr::Param(3), Attr::Value(0.5)));

        // Without a duration mapping RATE = -2 is an error naming line and column.
        let err = subject(&ds, "5").to_schedule(&ds, &DoseMapping::new(2, 1, 2)).unwrap_err();
        let line5 = subject(&ds, "5").records[0].line;
        assert!(matches!(&err, DataError::Field { line, column, .. } if *line == line5 && column == "RATE"), "{err:?}");
        assert!(err.to_string().contains(&format!("nmtest.csv, line {line5}, column `RATE`")));
    }

    // ---- parsing details --------------------------------------------------

    #[test]
    fn formats_crlf_blank_spaces_quotes_comments() {
        let text = "\u{feff} id , Time ,\"AMT\", dv ,wt\r\n\r\n# a comment\r\n  1 , 0 , 100 , . , 70 \r\n1,.5,0,1e-3,\"7.0e1\"\r\n\r\n1,1.,,\"\",\r\n";
        let ds = parse(text).unwrap();
        assert_eq!(ds.covariate_names, vec!["wt"]);
        let r = &ds.subjects[0].records;
        assert_eq!(r.len(), 3);
        assert_eq!((r[0].line, r[0].time, r[0].amt, r[0].evid, r[0].mdv), (4, 0.0, 100.0, 1, true));
        assert_eq!((r[1].line, r[1].time, r[1].dv, r[1].evid, r[1].mdv), (5, 0.5, Some(1e-3), 0, false));
        assert_eq!(r[1].covariates, vec![Some(70.0)]);
        assert_eq!((r[2].line, r[2].time, r[2].amt, r[2].dv, r[2].mdv), (7, 1.0, 0.0, None, true));
        assert_eq!(r[2].covariates, vec![None]);
        // CR-only line endings and a trailing comma.
        let ds = parse("ID,TIME,DV\r1,0,-1,\r1,2,.5").unwrap();
        assert_eq!(ds.subjects[0].records[0].dv, Some(-1.0));
        assert_eq!(ds.subjects[0].records[1].line, 3);
        // Quoted commas are part of the field.
        assert_eq!(split_fields(r#"a,"b,c",  "d""e" ,"#).unwrap(), vec!["a", "b,c", "d\"e", ""]);
    }

    #[test]
    fn defaults_and_whole_numbers() {
        let ds = parse("ID,TIME,AMT,RATE,EVID,CMT,ADDL,SS,II,MDV,DV\n1,0,10,,1.0,2.0,1,0,12,1,.\n1,1,,,,,,,,,5\n1,2,,,,.,.,.,.,.,.\n").unwrap();
        let r = &ds.subjects[0].records;
        assert_eq!((r[0].evid, r[0].cmt, r[0].addl, r[0].ii, r[0].rate), (1, Some(2), 1, 12.0, 0.0));
        assert_eq!((r[1].evid, r[1].cmt, r[1].mdv, r[1].dv), (0, None, false, Some(5.0)));
        assert_eq!((r[2].evid, r[2].mdv, r[2].amt, r[2].ss), (0, true, 0.0, 0));
        // EVID absent: AMT > 0 is a dose; MDV absent: dose -> true.
        let ds = parse("ID,TIME,AMT,DV\n1,0,5,.\n1,1,0,2\n").unwrap();
        let r = &ds.subjects[0].records;
        assert_eq!((r[0].evid, r[0].mdv, r[1].evid, r[1].mdv), (1, true, 0, false));
        // Whole-number columns reject fractions.
        for (col, val) in [("EVID", "1.5"), ("CMT", "1.5"), ("ADDL", "0.5"), ("SS", "1.5"), ("MDV", "0.5")] {
            let text = format!("ID,TIME,AMT,II,{col}\n1,0,1,24,{val}\n");
            let (line, column, msg) = field_err(&text);
            assert_eq!((line, column.as_str()), (2, col), "{msg}");
        }
    }

    #[test]
    fn subjects_split_on_id_change_and_keep_file_order() {
        let ds = parse("ID,TIME\n b ,0\nb,1\na,0\nb,0\nb,3\n").unwrap();
        let ids: Vec<(&str, usize)> = ds.subjects.iter().map(|s| (s.id.as_str(), s.records.len())).collect();
        assert_eq!(ids, vec![("b", 2), ("a", 1), ("b", 2)]);
        // IDs are strings: "01" and "1" differ.
        assert_eq!(parse("ID,TIME\n1,0\n01,0\n").unwrap().subjects.len(), 2);
    }

    #[test]
    fn ignore_option_turns_nonmem_columns_into_covariates() {
        let o = ReadOptions { ignore: vec!["Rate".into(), "dv".into()], ..Default::default() };
        let ds = Dataset::from_str("test.csv", "ID,TIME,RATE,DV\n1,0,-7,x1\n", &o);
        // a non-numeric covariate is an error naming it
        assert!(matches!(ds, Err(DataError::Field { ref column, .. }) if column == "DV"));
        let ds = Dataset::from_str("test.csv", "ID,TIME,RATE,DV\n1,0,-7,3\n", &o).unwrap();
        assert_eq!(ds.covariate_names, vec!["RATE", "DV"]);
        let r = &ds.subjects[0].records[0];
        assert_eq!((r.rate, r.dv, r.covariates.clone()), (0.0, None, vec![Some(-7.0), Some(3.0)]));
    }

    // ---- errors -----------------------------------------------------------

    #[test]
    fn io_error() {
        let err = Dataset::from_path("/nonexistent/dir/x.csv", &opts()).unwrap_err();
        assert!(matches!(err, DataError::Io { .. }));
        assert!(err.to_string().contains("/nonexistent/dir/x.csv"));
        // Not UTF-8.
        let dir = std::env::temp_dir().join(format!("insilico-data-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("latin1.csv");
        std::fs::write(&p, b"ID,TIME,WT\n1,0,\xe9\n").unwrap();
        let err = Dataset::from_path(&p, &opts()).unwrap_err();
        std::fs::remove_dir_all(&dir).ok();
        assert!(matches!(&err, DataError::Io { reason, .. } if reason.contains("UTF-8")), "{err:?}");
    }

    #[test]
    fn missing_and_duplicate_columns() {
        let err = parse("ID,AMT\n1,0\n").unwrap_err();
        assert_eq!(err, DataError::MissingColumn { file: "test.csv".into(), column: "TIME".into() });
        assert!(err.to_string().contains("test.csv") && err.to_string().contains("`TIME`"));
        let err = parse("time,dv\n1,0\n").unwrap_err();
        assert!(matches!(&err, DataError::MissingColumn { column, .. } if column == "ID"));
        // Ignoring a required column makes it missing.
        let o = ReadOptions { ignore: vec!["time".into()], ..Default::default() };
        let err = Dataset::from_str("test.csv", "ID,TIME\n1,0\n", &o).unwrap_err();
        assert!(matches!(&err, DataError::MissingColumn { column, .. } if column == "TIME"));
        let err = parse("ID,Time,WT,TIME\n1,0,1,0\n").unwrap_err();
        assert_eq!(err, DataError::DuplicateColumn { file: "test.csv".into(), column: "TIME".into() });
        let msg = err.to_string();
        assert!(msg.contains("test.csv") && msg.contains("`TIME`"), "{msg}");
        let err = parse("ID,TIME,wt,WT\n1,0,1,0\n").unwrap_err();
        assert!(matches!(&err, DataError::DuplicateColumn { column, .. } if column == "WT"));
    }

    #[test]
    fn empty() {
        for text in ["", "\n\n  \r\n", "# only a comment\n", "ID,TIME\n", "ID,TIME\n\n# nothing\n"] {
            let err = parse(text).unwrap_err();
            assert_eq!(err, DataError::Empty { file: "test.csv".into() }, "{text:?}");
            assert!(err.to_string().contains("test.csv"));
        }
    }

    #[test]
    fn time_backwards() {
        let err = parse("ID,TIME\n1,0\n1,2\n\n1,1\n2,0\n").unwrap_err();
        assert_eq!(
            err,
            DataError::TimeBackwards {
                file: "test.csv".into(),
                line: 5,
                subject: "1".into(),
                time: 1.0,
                previous: 2.0
            }
        );
        assert_names(&err, 5, "TIME");
        // Equal times are fine, and a new subject restarts time.
        assert!(parse("ID,TIME\n1,2\n1,2\n2,0\n").is_ok());
    }

    #[test]
    fn field_errors_name_file_line_and_column() {
        let h = "ID,TIME,AMT,EVID,CMT,RATE,II,ADDL,SS,MDV,DV,WT";
        // (row after the header on line 2, expected column, expected text)
        let cases: &[(&str, &str, &str)] = &[
            ("1,0,100,1,1,0,0,0,0,1,.", "WT", "header has 12"),
            ("1,0,100,1,1,0,0,0,0,1,.,70,5", "(extra field 13)", "remove the extra"),
            ("1,x,100,1,1,0,0,0,0,1,.,70", "TIME", "not a number"),
            ("1,.,100,1,1,0,0,0,0,1,.,70", "TIME", "missing TIME"),
            ("1,inf,100,1,1,0,0,0,0,1,.,70", "TIME", "finite"),
            ("1,0,NaN,1,1,0,0,0,0,1,.,70", "AMT", "finite"),
            (".,0,100,1,1,0,0,0,0,1,.,70", "ID", "missing ID"),
            ("1,0,-5,1,1,0,0,0,0,1,.,70", "AMT", "negative"),
            ("1,0,100,5,1,0,0,0,0,1,.,70", "EVID", "EVID must be"),
            ("1,0,100,-1,1,0,0,0,0,1,.,70", "EVID", "EVID must be"),
            ("1,0,100,1,-1,0,0,0,0,1,.,70", "CMT", "negative CMT"),
            ("1,0,100,1,1,-3,0,0,0,1,.,70", "RATE", "RATE must be"),
            ("1,0,100,1,1,-1.5,0,0,0,1,.,70", "RATE", "RATE must be"),
            ("1,0,100,1,1,0,-24,0,0,1,.,70", "II", "negative"),
            ("1,0,100,1,1,0,24,-1,0,1,.,70", "ADDL", "negative"),
            ("1,0,100,1,1,0,24,0,3,1,.,70", "SS", "SS must be"),
            ("1,0,100,1,1,0,24,0,0,2,.,70", "MDV", "MDV must be"),
            ("1,0,0,0,1,0,0,0,0,0,abc,70", "DV", "not a number"),
            ("1,0,0,0,1,0,0,0,0,0,1,M", "WT", "covariates must be numeric"),
            ("1,0,100,1,1,0,0,3,0,1,.,70", "II", "II > 0"),
            ("1,0,100,1,1,0,0,0,1,1,.,70", "II", "RATE > 0"),
            ("1,0,100,1,1,-2,0,0,1,1,.,70", "II", "RATE > 0"),
            ("1,0,100,1,1,10,0,0,1,1,.,70", "AMT", "AMT = 0"),
            ("1,0,0,1,1,10,0,0,0,1,.,70", "AMT", "delivers nothing"),
            ("1,0,100,0,1,0,0,0,0,0,1,70", "AMT", "only dose records"),
            ("1,0,100,3,1,0,0,0,0,1,.,70", "AMT", "only dose records"),
            ("1,0,\"100,1,1,0,0,0,0,1,.,70", "(row)", "unterminated"),
            ("1,0,\"10\"0,1,1,0,0,0,0,1,.,70", "(row)", "after a closing"),
        ];
        for (row, column, text) in cases {
            let (line, col, msg) = field_err(&format!("{h}\n{row}\n"));
            assert_eq!((line, col.as_str()), (2, *column), "{row}: {msg}");
            assert!(msg.contains(text), "{row}: {msg}");
            assert!(msg.starts_with("test.csv, line 2, column `"), "{msg}");
        }
        // A header problem is reported on line 1.
        let (line, col, _) = field_err("ID,,TIME\n1,0,0\n");
        assert_eq!((line, col.as_str()), (1, "(column 2)"));
        // Original spelling of the column in messages.
        let (_, col, _) = field_err("id,time,amt\n1,0,-1\n");
        assert_eq!(col, "amt");
        // Constant infusion at steady state is legal.
        let ds = parse(&format!("{h}\n1,0,0,1,1,10,0,0,1,1,.,70\n")).unwrap();
        assert_eq!(ds.subjects[0].records[0].ss, 1);
    }

    #[test]
    fn schedule_errors_name_file_line_and_column() {
        let text = "ID,TIME,AMT,CMT,RATE,F,LAG,D,EVID\n\
                    1,0,100,3,0,1,0,2,1\n\
                    1,0,100,0,0,1,0,2,1\n\
                    1,0,100,1,-1,1,0,2,1\n\
                    1,0,100,1,0,-0.5,0,2,1\n\
                    1,0,100,1,0,1,-1,2,1\n\
                    1,0,100,1,-2,1,0,0,1\n\
                    1,0,100,1,0,.,0,2,1\n\
                    1,0,0,3,0,1,0,2,0\n\
                    1,0,100,.,0,1,0,2,4\n";
        let ds = parse(text).unwrap();
        let map = DoseMapping::new(2, 1, 2)
            .with_bioavailability(1, ColumnOrValue::Column("f".into()))
            .with_lag(1, ColumnOrValue::Column("lag".into()))
            .with_duration(1, ColumnOrValue::Column("d".into()));
        let one = |i: usize, map: &DoseMapping| -> Result<(Schedule, Vec<Observation>), DataError> {
            let s = Subject { id: "1".into(), records: vec![ds.subjects[0].records[i].clone()] };
            s.to_schedule(&ds, map)
        };
        let expect = |i: usize, map: &DoseMapping, column: &str, text: &str| {
            let err = one(i, map).unwrap_err();
            assert!(matches!(err, DataError::Field { .. }), "{err:?}");
            assert_names(&err, i + 2, column);
            assert!(err.to_string().contains(text), "{err}");
        };
        expect(0, &map, "CMT", "compartments 1..=2");
        expect(1, &map, "CMT", "CMT = 0");
        expect(2, &map, "RATE", "RATE = -1");
        expect(3, &map, "F", "≥ 0");
        expect(4, &map, "LAG", "≥ 0");
        expect(5, &map, "D", "> 0");
        expect(6, &map, "F", "missing");
        expect(7, &map, "CMT", "observation in compartment 3");
        // EVID 4 without CMT goes to the default dose compartment...
        let (s, _) = one(8, &map).unwrap();
        assert!(matches!(&s.events[..], [Event::Reset { time }, Event::Dose(d)] if *time == 0.0 && d.cmt == 0));
        // ...which must exist.
        let mut bad = map.clone();
        bad.default_dose_cmt = 5;
        expect(8, &bad, "CMT", "default_dose_cmt");
        // A mapped column the dataset lacks.
        let m = DoseMapping::new(2, 1, 2).with_lag(1, ColumnOrValue::Column("tlag".into()));
        expect(3, &m, "tlag", "not a covariate column");
        // A non-finite or out-of-range fixed value.
        let m = DoseMapping::new(2, 1, 2).with_bioavailability(1, ColumnOrValue::Value(f64::NAN));
        expect(3, &m, "(mapped bioavailability F of compartment 1)", "finite");
        let m = DoseMapping::new(2, 1, 2).with_rate(1, ColumnOrValue::Value(0.0));
        expect(2, &m, "(mapped modelled rate of compartment 1)", "> 0");
        // Default observation compartment must exist.
        let obs = "ID,TIME,DV\n1,0,1\n";
        let ods = parse(obs).unwrap();
        let err = ods.subjects[0].to_schedule(&ods, &DoseMapping::new(2, 1, 3)).unwrap_err();
        assert_names(&err, 2, "CMT");
        // Hand-built records with out-of-grammar values fail cleanly.
        let mut r = ds.subjects[0].records[8].clone();
        r.ss = 7;
        let s = Subject { id: "x".into(), records: vec![r.clone()] };
        assert!(matches!(s.to_schedule(&ds, &map), Err(DataError::Field { column, .. }) if column == "SS"));
        r.ss = 0;
        r.evid = 9;
        let s = Subject { id: "x".into(), records: vec![r.clone()] };
        assert!(matches!(s.to_schedule(&ds, &map), Err(DataError::Field { column, .. }) if column == "EVID"));
        r.evid = 1;
        r.rate = -5.0;
        r.covariates.clear();
        let s = Subject { id: "x".into(), records: vec![r] };
        assert!(matches!(s.to_schedule(&ds, &map), Err(DataError::Field { column, .. }) if column == "RATE"));
    }

    #[test]
    fn mapping_errors() {
        let ds = parse("ID,TIME,AMT\n1,0,1\n").unwrap();
        let s = &ds.subjects[0];
        for map in [
            DoseMapping::new(0, 1, 1),
            DoseMapping::new(2, 1, 2).with_lag(3, ColumnOrValue::Value(1.0)),
            DoseMapping::new(2, 1, 2).with_rate(0, ColumnOrValue::Value(1.0)),
            DoseMapping {
                duration: vec![(1, ColumnOrValue::Value(1.0)), (1, ColumnOrValue::Value(2.0))],
                ..DoseMapping::new(2, 1, 2)
            },
        ] {
            let err = s.to_schedule(&ds, &map).unwrap_err();
            assert!(matches!(err, DataError::Mapping { .. }), "{err:?}");
            assert!(err.to_string().starts_with("test.csv: invalid dose mapping"));
        }
        // The builder replaces an earlier entry for the same compartment.
        let m = DoseMapping::new(2, 1, 2).with_lag(1, ColumnOrValue::Value(1.0)).with_lag(1, ColumnOrValue::Value(2.0));
        assert_eq!(m.lag, vec![(1, ColumnOrValue::Value(2.0))]);
    }

    // ---- robustness -------------------------------------------------------

    /// Deterministic pseudo-random numbers (64-bit LCG, Knuth's MMIX constants).
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            self.0 >> 33
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }
    }

    #[test]
    fn garbage_never_panics() {
        const PIECES: &[&str] = &[
            "ID",
            "TIME",
            "AMT",
            "DV",
            "EVID",
            "CMT",
            "MDV",
            "RATE",
            "II",
            "ADDL",
            "SS",
            "wt",
            ",",
            ",",
            ",",
            "\n",
            "\r\n",
            "\r",
            "\"",
            "\"\"",
            ".",
            "-",
            "-1",
            "-2",
            "0",
            "1",
            "2",
            "3",
            "4",
            "5",
            "24",
            "1e-3",
            "1e400",
            "nan",
            "inf",
            "1.5",
            " ",
            "#",
            "é",
            "→",
            "\u{feff}",
            "x",
            "999999999999999999999",
            "4294967296",
            "1e10",
        ];
        let mut rng = Lcg(0x5eed);
        let valid = "ID,TIME,AMT,EVID,CMT,RATE,II,ADDL,SS,MDV,DV,F\n\
                     1,0,100,1,1,0,24,2,0,1,.,0.5\n\
                     1,1,0,0,2,0,0,0,0,0,3.1,0.5\n\
                     1,2,50,1,2,-2,12,1,1,1,.,0.5\n\
                     2,0,0,1,2,10,0,0,1,1,.,1\n\
                     2,5,100,4,1,0,0,0,0,1,.,1\n";
        let map = DoseMapping::new(2, 1, 2)
            .with_bioavailability(2, ColumnOrValue::Column("F".into()))
            .with_duration(2, ColumnOrValue::Value(2.0))
            .with_rate(1, ColumnOrValue::Column("dv".into()));
        let mut n_ok = 0;
        for case in 0..3000 {
            let text: String = match case % 3 {
                // Random pieces.
                0 => (0..rng.below(200)).map(|_| PIECES[rng.below(PIECES.len())]).collect(),
                // A valid dataset truncated at a random character.
                1 => valid.chars().take(rng.below(valid.len() + 1)).collect(),
                // A valid dataset with random pieces spliced in.
                _ => {
                    let mut t: Vec<char> = valid.chars().collect();
                    for _ in 0..1 + rng.below(4) {
                        let at = rng.below(t.len() + 1);
                        let piece = PIECES[rng.below(PIECES.len())];
                        let cut = rng.below(3).min(t.len() - at.min(t.len()));
                        t.splice(at..at + cut, piece.chars());
                    }
                    t.into_iter().collect()
                }
            };
            if let Ok(ds) = parse(&text) {
                n_ok += 1;
                for s in &ds.subjects {
                    let _ = s.to_schedule(&ds, &map);
                }
            }
        }
        // The generator must exercise both outcomes.
        assert!(n_ok > 50, "only {n_ok} garbage inputs parsed");
        assert!(parse(valid).is_ok());
    }
}
