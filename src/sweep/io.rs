//! The sweep's folder: manifest, progress, Parquet part files (written with
//! the `parquet` crate's low-level column writers, no Arrow), and reading
//! them back.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parquet::basic::Compression;
use parquet::column::reader::ColumnReader;
use parquet::data_type::{DoubleType, Int32Type, Int64Type};
use parquet::file::properties::WriterProperties;
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;

use super::{ChunkResult, Plan, Sweep, SweepError};

/// Physical type of a column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// 64-bit integer.
    I64,
    /// 32-bit integer.
    I32,
    /// Double.
    F64,
}

const MANIFEST: &str = "manifest.json";
const PROGRESS: &str = "progress.json";

/// File name of part `k`.
pub(crate) fn part_name(k: u64) -> String {
    format!("part-{k:06}.parquet")
}

fn parse_part_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("part-")?.strip_suffix(".parquet")?;
    if digits.len() == 6 && digits.bytes().all(|b| b.is_ascii_digit()) {
        digits.parse().ok()
    } else {
        None
    }
}

/// Writes `bytes` to `path` through `path.tmp`, fsync and rename.
pub(crate) fn atomic_write(path: &Path, bytes: &[u8]) -> Result<(), SweepError> {
    let tmp = tmp_path(path);
    let mut f = File::create(&tmp).map_err(|e| SweepError::output(&tmp, e))?;
    f.write_all(bytes).and_then(|_| f.sync_all()).map_err(|e| SweepError::output(&tmp, e))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(|e| SweepError::output(path, e))
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".tmp");
    PathBuf::from(s)
}

fn manifest_json(sweep: &Sweep) -> serde_json::Value {
    let cols: Vec<serde_json::Value> = sweep
        .columns()
        .iter()
        .map(|(n, k)| serde_json::json!({"name": n, "type": format!("{k:?}").to_lowercase()}))
        .collect();
    serde_json::json!({
        "format": "insilico-sweep/1",
        "config": sweep.source,
        "fingerprint": sweep.fingerprint(),
        "model": sweep.model.name(),
        "trajectories": sweep.len(),
        "chunk": sweep.chunk,
        "chunks": sweep.chunks(),
        "columns": cols,
    })
}

pub(super) fn prepare(sweep: &Sweep, dir: &Path) -> Result<Plan, SweepError> {
    let done = prepare_folder(dir, &manifest_json(sweep), &sweep.fingerprint(), sweep.chunks())?;
    let todo: Vec<u64> = (0..sweep.chunks()).filter(|&k| !done[k as usize]).collect();
    let ndone = sweep.chunks() - todo.len() as u64;
    let done_rows = (0..sweep.chunks()).filter(|&k| done[k as usize]).map(|k| sweep.chunk_range(k).1 as u64).sum();
    Ok(Plan { todo, done: ndone, done_rows })
}

/// Prepares a result folder shared by `sweep` and `perturb`: creates it,
/// writes `manifest` (or checks that an existing manifest has the same
/// `fingerprint`), removes unfinished `*.tmp` files of a killed run, and
/// returns which of the `chunks` part files are complete.
pub(crate) fn prepare_folder(
    dir: &Path,
    manifest: &serde_json::Value,
    fp: &str,
    chunks: u64,
) -> Result<Vec<bool>, SweepError> {
    std::fs::create_dir_all(dir).map_err(|e| SweepError::output(dir, format!("cannot create the folder: {e}")))?;
    let path = dir.join(MANIFEST);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let v: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| SweepError::output(&path, format!("unreadable manifest ({e}); remove the folder")))?;
            let theirs = v.get("fingerprint").and_then(|f| f.as_str()).unwrap_or("");
            if theirs != fp {
                return Err(SweepError::output(
                    dir,
                    format!(
                        "holds the results of a different sweep or study (config {}, fingerprint {theirs}; this config's is \
                         {fp}): choose another --out folder or remove this one",
                        v.get("config").and_then(|c| c.as_str()).unwrap_or("?")
                    ),
                ));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let text = serde_json::to_string_pretty(manifest).unwrap_or_default();
            atomic_write(&path, (text + "\n").as_bytes())?;
        }
        Err(e) => return Err(SweepError::output(&path, e)),
    }
    let mut done = vec![false; chunks as usize];
    let entries = std::fs::read_dir(dir).map_err(|e| SweepError::output(dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| SweepError::output(dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".tmp") {
            // An unfinished write of a killed run.
            let p = entry.path();
            std::fs::remove_file(&p).map_err(|e| SweepError::output(&p, e))?;
        } else if let Some(k) = parse_part_name(&name) {
            if let Some(d) = done.get_mut(k as usize) {
                *d = true;
            }
        }
    }
    Ok(done)
}

pub(super) fn write_progress(sweep: &Sweep, dir: &Path, plan: &Plan) -> Result<(), SweepError> {
    let v = serde_json::json!({
        "chunks_done": plan.done,
        "chunks": sweep.chunks(),
        "trajectories_done": plan.done_rows,
        "trajectories": sweep.len(),
    });
    atomic_write(&dir.join(PROGRESS), (v.to_string() + "\n").as_bytes())
}

fn pq(path: &Path) -> impl Fn(parquet::errors::ParquetError) -> SweepError + '_ {
    move |e| SweepError::output(path, format!("Parquet: {e}"))
}

/// Values of one column to write.
pub(crate) enum Column {
    /// INT64.
    I64(Vec<i64>),
    /// INT32.
    I32(Vec<i32>),
    /// DOUBLE.
    F64(Vec<f64>),
}

/// Writes one Parquet file of REQUIRED columns (one row group, Snappy)
/// through `path.tmp`, fsync and an atomic rename: the writer of
/// `sweep` and `perturb` part files.
pub(crate) fn write_parquet(path: &Path, names: &[String], cols: Vec<Column>) -> Result<(), SweepError> {
    let tmp = tmp_path(path);
    let mut msg = String::from("message sweep {\n");
    for (name, col) in names.iter().zip(&cols) {
        let t = match col {
            Column::I64(_) => "INT64",
            Column::I32(_) => "INT32",
            Column::F64(_) => "DOUBLE",
        };
        msg += &format!("  REQUIRED {t} {name};\n");
    }
    msg += "}\n";
    let schema = Arc::new(parse_message_type(&msg).map_err(pq(path))?);
    let props = Arc::new(WriterProperties::builder().set_compression(Compression::SNAPPY).build());
    let file = File::create(&tmp).map_err(|e| SweepError::output(&tmp, e))?;
    let mut writer = SerializedFileWriter::new(file, schema, props).map_err(pq(&tmp))?;
    {
        let mut rg = writer.next_row_group().map_err(pq(&tmp))?;
        let mut it = cols.into_iter();
        while let Some(mut col) = rg.next_column().map_err(pq(&tmp))? {
            match it.next() {
                Some(Column::I64(v)) => {
                    col.typed::<Int64Type>().write_batch(&v, None, None).map_err(pq(&tmp))?;
                }
                Some(Column::I32(v)) => {
                    col.typed::<Int32Type>().write_batch(&v, None, None).map_err(pq(&tmp))?;
                }
                Some(Column::F64(v)) => {
                    col.typed::<DoubleType>().write_batch(&v, None, None).map_err(pq(&tmp))?;
                }
                None => return Err(SweepError::output(&tmp, "fewer columns than the schema")),
            }
            col.close().map_err(pq(&tmp))?;
        }
        rg.close().map_err(pq(&tmp))?;
    }
    let file = writer.into_inner().map_err(pq(&tmp))?;
    file.sync_all().map_err(|e| SweepError::output(&tmp, e))?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(|e| SweepError::output(path, e))
}

pub(super) fn write_part(sweep: &Sweep, dir: &Path, k: u64, r: &ChunkResult) -> Result<(), SweepError> {
    let path = dir.join(part_name(k));
    let cols = sweep.columns();
    let n = r.inputs.len();
    let nr = sweep.model.regimen_vars().len();
    let np = sweep.model.param_names().len();
    let nout = sweep.outputs.len();
    // Doubles follow the integer columns: regimen vars, params, outputs, efficacy.
    let first_f64 = cols.iter().position(|c| c.1 == Kind::F64).unwrap_or(0);
    let data: Vec<Column> = cols
        .iter()
        .enumerate()
        .map(|(c, (name, kind))| match kind {
            Kind::I64 => Column::I64(match name.as_str() {
                "id" => (0..n as u64).map(|i| (r.start + i) as i64).collect(),
                "member" => r.inputs.iter().map(|t| t.member as i64).collect(),
                _ => r.inputs.iter().map(|t| t.sample as i64).collect(),
            }),
            Kind::I32 => Column::I32(if name == "status" { r.status.clone() } else { r.steps.clone() }),
            Kind::F64 => {
                let j = c - first_f64;
                Column::F64(if j < nr {
                    r.inputs.iter().map(|t| t.regimen_vars[j]).collect()
                } else if j < nr + np {
                    r.inputs.iter().map(|t| t.params[j - nr]).collect()
                } else if j < nr + np + nout {
                    (0..n).map(|i| r.outputs[i * nout + (j - nr - np)]).collect()
                } else {
                    r.efficacy.clone()
                })
            }
        })
        .collect();
    let names: Vec<String> = cols.into_iter().map(|c| c.0).collect();
    write_parquet(&path, &names, data)
}

/// A column read back from part files.
#[derive(Debug, Clone, PartialEq)]
pub enum Values {
    /// Integers (INT64 and INT32 columns).
    Int(Vec<i64>),
    /// Doubles.
    Float(Vec<f64>),
}

/// Columns of one or more part files, in file order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Table {
    /// Column names.
    pub names: Vec<String>,
    /// Column values.
    pub columns: Vec<Values>,
}

impl Table {
    /// Rows.
    pub fn len(&self) -> usize {
        match self.columns.first() {
            Some(Values::Int(v)) => v.len(),
            Some(Values::Float(v)) => v.len(),
            None => 0,
        }
    }
    /// True without rows.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// An integer column by name.
    pub fn ints(&self, name: &str) -> Option<&[i64]> {
        let i = self.names.iter().position(|n| n == name)?;
        match &self.columns[i] {
            Values::Int(v) => Some(v),
            Values::Float(_) => None,
        }
    }
    /// A double column by name.
    pub fn floats(&self, name: &str) -> Option<&[f64]> {
        let i = self.names.iter().position(|n| n == name)?;
        match &self.columns[i] {
            Values::Float(v) => Some(v),
            Values::Int(_) => None,
        }
    }
    fn append(&mut self, other: Table) {
        if self.names.is_empty() {
            *self = other;
            return;
        }
        for (a, b) in self.columns.iter_mut().zip(other.columns) {
            match (a, b) {
                (Values::Int(a), Values::Int(b)) => a.extend(b),
                (Values::Float(a), Values::Float(b)) => a.extend(b),
                _ => {}
            }
        }
    }
}

/// Reads one part file.
pub fn read_part(path: &Path) -> Result<Table, SweepError> {
    let file = File::open(path).map_err(|e| SweepError::output(path, e))?;
    let reader = SerializedFileReader::new(file).map_err(pq(path))?;
    let schema = reader.metadata().file_metadata().schema_descr_ptr();
    let mut t = Table { names: schema.columns().iter().map(|c| c.name().to_string()).collect(), columns: vec![] };
    let ncols = t.names.len();
    let mut cols: Vec<Values> = (0..ncols).map(|_| Values::Int(vec![])).collect();
    for g in 0..reader.num_row_groups() {
        let rg = reader.get_row_group(g).map_err(pq(path))?;
        let rows = rg.metadata().num_rows() as usize;
        for (c, slot) in cols.iter_mut().enumerate() {
            match rg.get_column_reader(c).map_err(pq(path))? {
                ColumnReader::Int64ColumnReader(mut r) => {
                    let mut v = Vec::with_capacity(rows);
                    r.read_records(rows, None, None, &mut v).map_err(pq(path))?;
                    extend_int(slot, v);
                }
                ColumnReader::Int32ColumnReader(mut r) => {
                    let mut v: Vec<i32> = Vec::with_capacity(rows);
                    r.read_records(rows, None, None, &mut v).map_err(pq(path))?;
                    extend_int(slot, v.into_iter().map(i64::from).collect());
                }
                ColumnReader::DoubleColumnReader(mut r) => {
                    let mut v = Vec::with_capacity(rows);
                    r.read_records(rows, None, None, &mut v).map_err(pq(path))?;
                    match slot {
                        Values::Float(a) => a.extend(v),
                        Values::Int(a) if a.is_empty() => *slot = Values::Float(v),
                        _ => return Err(SweepError::output(path, "mixed column types")),
                    }
                }
                _ => return Err(SweepError::output(path, "unexpected column type")),
            }
        }
    }
    t.columns = cols;
    Ok(t)
}

fn extend_int(slot: &mut Values, v: Vec<i64>) {
    if let Values::Int(a) = slot {
        a.extend(v);
    }
}

/// Reads every part file of a sweep folder (`part-NNNNNN.parquet`, in chunk
/// order) into one table.
pub fn read_parts(dir: &Path) -> Result<Table, SweepError> {
    let mut parts: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
        .map_err(|e| SweepError::output(dir, e))?
        .filter_map(|e| e.ok())
        .filter_map(|e| parse_part_name(&e.file_name().to_string_lossy()).map(|k| (k, e.path())))
        .collect();
    parts.sort();
    let mut t = Table::default();
    for (_, p) in parts {
        t.append(read_part(&p)?);
    }
    Ok(t)
}

/// Paths of the parts of a complete sweep in chunk order, or an error naming
/// the first missing part.
pub(super) fn complete_parts(sweep: &Sweep, dir: &Path) -> Result<Vec<PathBuf>, SweepError> {
    (0..sweep.chunks())
        .map(|k| {
            let p = dir.join(part_name(k));
            if p.exists() {
                Ok(p)
            } else {
                Err(SweepError::output(&p, "missing: the sweep is not complete"))
            }
        })
        .collect()
}
