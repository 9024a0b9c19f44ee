//! The sweep's folder: manifest, progress, Parquet part files (written with
//! the `parquet` crate's low-level column writers, no Arrow), and reading
//! them back.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parquet::basic::Compression;
use parquet::column::reader::ColumnReader;
use parquet::data_type::{ByteArray, ByteArrayType, DoubleType, Int32Type, Int64Type};
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
    /// Double (outputs, `efficacy` and `failed_at` are nullable: null for
    /// a failed trajectory, or `failed_at` of one that succeeded).
    F64,
    /// UTF-8 text (`status`).
    Text,
}

const MANIFEST: &str = "manifest.json";
const PROGRESS: &str = "progress.json";

/// File name of part `k`.
pub fn part_name(k: u64) -> String {
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

/// Writes `bytes` to `path` with the one atomic writer ([`crate::atomic`]).
pub(crate) fn atomic_write(path: &Path, bytes: &[u8]) -> Result<(), SweepError> {
    crate::atomic::write_bytes(path, bytes).map_err(|e| SweepError::output(&e.path, format!("I/O error: {}", e.reason)))
}

/// Checks part `k` on resume: a readable footer, the row and column counts
/// the manifest's chunking gives, and every page decoded with the chunk's
/// ids. `Err` says what is wrong.
fn verify_part(sweep: &Sweep, path: &Path, k: u64) -> Result<(), String> {
    let file = File::open(path).map_err(|e| e.to_string())?;
    let reader = SerializedFileReader::new(file).map_err(|e| format!("unreadable Parquet ({e})"))?;
    let rows = reader.metadata().file_metadata().num_rows();
    let want = sweep.chunk_range(k).1 as i64;
    if rows != want {
        return Err(format!("{rows} rows where the manifest's chunking gives {want}"));
    }
    let cols = reader.metadata().file_metadata().schema_descr().num_columns();
    if cols != sweep.columns().len() {
        return Err(format!("{cols} columns where the sweep has {}", sweep.columns().len()));
    }
    drop(reader);
    // Every page must decode, to the row count (a damaged page with an intact footer fails here).
    let t = read_part(path).map_err(|e| e.to_string())?;
    let ids = t.ints("id").ok_or("no id column")?;
    let first = sweep.chunk_range(k).0 as i64;
    if ids.len() as i64 != want || ids.iter().enumerate().any(|(i, &id)| id != first + i as i64) {
        return Err(format!("its ids are not {first}..{}", first + want));
    }
    Ok(())
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
    let (done, damaged) =
        prepare_folder_verified(dir, &manifest_json(sweep), &sweep.fingerprint(), sweep.chunks(), |p, k| {
            verify_part(sweep, p, k)
        })?;
    let todo: Vec<u64> = (0..sweep.chunks()).filter(|&k| !done[k as usize]).collect();
    let ndone = sweep.chunks() - todo.len() as u64;
    let done_rows = (0..sweep.chunks()).filter(|&k| done[k as usize]).map(|k| sweep.chunk_range(k).1 as u64).sum();
    Ok(Plan { todo, done: ndone, done_rows, damaged })
}

/// [`prepare_folder_verified`] for result folders whose parts are checked
/// by their footer alone (a readable Parquet file): `perturb`'s.
pub(crate) fn prepare_folder(
    dir: &Path,
    manifest: &serde_json::Value,
    fp: &str,
    chunks: u64,
) -> Result<Vec<bool>, SweepError> {
    let (done, _) = prepare_folder_verified(dir, manifest, fp, chunks, |p, _| {
        let file = File::open(p).map_err(|e| e.to_string())?;
        SerializedFileReader::new(file).map(|_| ()).map_err(|e| format!("unreadable Parquet ({e})"))
    })?;
    Ok(done)
}

/// Which parts of a result folder are complete, and the damaged ones
/// (removed, to be recomputed) with the reason.
pub(crate) type FolderState = (Vec<bool>, Vec<(u64, String)>);

/// Prepares a result folder shared by `sweep` and `perturb`: creates it,
/// writes `manifest` (or checks that an existing manifest has the same
/// `fingerprint`), removes unfinished temporary files of a killed run, and
/// returns which of the `chunks` part files are complete, with the damaged
/// ones (removed, to be recomputed) and why (`verify` judges each part).
pub(crate) fn prepare_folder_verified(
    dir: &Path,
    manifest: &serde_json::Value,
    fp: &str,
    chunks: u64,
    verify: impl Fn(&Path, u64) -> Result<(), String>,
) -> Result<FolderState, SweepError> {
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
    let mut damaged: Vec<(u64, String)> = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|e| SweepError::output(dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| SweepError::output(dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if crate::atomic::is_temp_name(&name) {
            // An unfinished write of a killed run.
            let p = entry.path();
            std::fs::remove_file(&p).map_err(|e| SweepError::output(&p, e))?;
        } else if let Some(k) = parse_part_name(&name) {
            if let Some(d) = done.get_mut(k as usize) {
                // Verified, not trusted: a damaged part is removed and recomputed.
                let p = entry.path();
                match verify(&p, k) {
                    Ok(()) => *d = true,
                    Err(why) => {
                        std::fs::remove_file(&p).map_err(|e| SweepError::output(&p, e))?;
                        damaged.push((k, why));
                    }
                }
            }
        }
    }
    damaged.sort();
    Ok((done, damaged))
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

/// Values of one column to write with [`write_parquet`].
pub(crate) enum Column {
    /// INT64.
    I64(Vec<i64>),
    /// INT32.
    I32(Vec<i32>),
    /// DOUBLE.
    F64(Vec<f64>),
}

/// Writes one Parquet file of REQUIRED columns (one row group, Snappy),
/// encoded in memory and written by the one atomic writer: `perturb`'s part
/// files (the sweep's, with nullable results and text, are [`write_part`]).
pub(crate) fn write_parquet(path: &Path, names: &[String], cols: Vec<Column>) -> Result<(), SweepError> {
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
    let mut writer = SerializedFileWriter::new(Vec::new(), schema, props).map_err(pq(path))?;
    {
        let mut rg = writer.next_row_group().map_err(pq(path))?;
        let mut it = cols.into_iter();
        while let Some(mut col) = rg.next_column().map_err(pq(path))? {
            match it.next() {
                Some(Column::I64(v)) => {
                    col.typed::<Int64Type>().write_batch(&v, None, None).map_err(pq(path))?;
                }
                Some(Column::I32(v)) => {
                    col.typed::<Int32Type>().write_batch(&v, None, None).map_err(pq(path))?;
                }
                Some(Column::F64(v)) => {
                    col.typed::<DoubleType>().write_batch(&v, None, None).map_err(pq(path))?;
                }
                None => return Err(SweepError::output(path, "fewer columns than the schema")),
            }
            col.close().map_err(pq(path))?;
        }
        rg.close().map_err(pq(path))?;
    }
    let bytes = writer.into_inner().map_err(pq(path))?;
    atomic_write(path, &bytes)
}

pub(super) fn write_part(sweep: &Sweep, dir: &Path, k: u64, r: &ChunkResult) -> Result<(), SweepError> {
    let path = dir.join(part_name(k));
    let tmp = path.clone();
    let cols = sweep.columns();
    let mut msg = String::from("message sweep {\n");
    let nr = sweep.regimen.vars.len();
    let np = sweep.param_names.len();
    let first_f64 = cols.iter().position(|c| c.1 == Kind::F64).unwrap_or(0);
    for (c, (name, kind)) in cols.iter().enumerate() {
        let t = match kind {
            Kind::I64 => "REQUIRED INT64",
            Kind::I32 => "REQUIRED INT32",
            // Inputs are always there; results are null for failed trajectories.
            Kind::F64 if c < first_f64 + nr + np => "REQUIRED DOUBLE",
            Kind::F64 => "OPTIONAL DOUBLE",
            Kind::Text => "REQUIRED BYTE_ARRAY",
        };
        let ann = if *kind == Kind::Text { " (UTF8)" } else { "" };
        msg += &format!("  {t} {name}{ann};\n");
    }
    msg += "}\n";
    let schema = Arc::new(parse_message_type(&msg).map_err(pq(&path))?);
    let props = Arc::new(WriterProperties::builder().set_compression(Compression::SNAPPY).build());
    // Encoded in memory (a chunk is bounded by the `chunk` check), then
    // written by the one atomic writer.
    let mut writer = SerializedFileWriter::new(Vec::new(), schema, props).map_err(pq(&tmp))?;
    let n = r.inputs.len();
    let nout = sweep.outputs.len();
    let ok: Vec<bool> = r.status.iter().map(|&s| s == 0).collect();
    {
        let mut rg = writer.next_row_group().map_err(pq(&tmp))?;
        let mut c = 0usize;
        while let Some(mut col) = rg.next_column().map_err(pq(&tmp))? {
            let name = cols[c].0.as_str();
            match cols[c].1 {
                Kind::I64 => {
                    let v: Vec<i64> = match name {
                        "id" => (0..n as u64).map(|i| (r.start + i) as i64).collect(),
                        "member" => r.inputs.iter().map(|t| t.member as i64).collect(),
                        _ => r.inputs.iter().map(|t| t.sample as i64).collect(),
                    };
                    col.typed::<Int64Type>().write_batch(&v, None, None).map_err(pq(&tmp))?;
                }
                Kind::I32 => {
                    col.typed::<Int32Type>().write_batch(&r.steps, None, None).map_err(pq(&tmp))?;
                }
                Kind::Text => {
                    let v: Vec<ByteArray> =
                        r.status.iter().map(|&s| ByteArray::from(super::status_name(s).as_bytes().to_vec())).collect();
                    col.typed::<ByteArrayType>().write_batch(&v, None, None).map_err(pq(&tmp))?;
                }
                Kind::F64 => {
                    // Doubles follow the integer columns: regimen vars, params, outputs, efficacy.
                    let j = c - first_f64;
                    let required = j < nr + np;
                    let (v, present): (Vec<f64>, Vec<bool>) = if j < nr {
                        (r.inputs.iter().map(|t| t.regimen_vars[j]).collect(), vec![true; n])
                    } else if j < nr + np {
                        (r.inputs.iter().map(|t| t.params[j - nr]).collect(), vec![true; n])
                    } else if name == "failed_at" {
                        (r.reached.clone(), (0..n).map(|i| !ok[i] && r.reached[i].is_finite()).collect())
                    } else if j < nr + np + nout {
                        ((0..n).map(|i| r.outputs[i * nout + (j - nr - np)]).collect(), ok.clone())
                    } else {
                        (r.efficacy.clone(), ok.clone())
                    };
                    let typed = col.typed::<DoubleType>();
                    if required {
                        typed.write_batch(&v, None, None).map_err(pq(&tmp))?;
                    } else {
                        // Nulls (definition level 0) where the value is absent: never a sentinel number.
                        let defs: Vec<i16> = present.iter().map(|&p| i16::from(p)).collect();
                        let vals: Vec<f64> = v.iter().zip(&present).filter(|(_, &p)| p).map(|(x, _)| *x).collect();
                        typed.write_batch(&vals, Some(&defs), None).map_err(pq(&tmp))?;
                    }
                }
            }
            col.close().map_err(pq(&tmp))?;
            c += 1;
        }
        rg.close().map_err(pq(&tmp))?;
    }
    let bytes = writer.into_inner().map_err(pq(&tmp))?;
    atomic_write(&path, &bytes)
}

/// A column read back from part files.
#[derive(Debug, Clone, PartialEq)]
pub enum Values {
    /// Integers (INT64 and INT32 columns).
    Int(Vec<i64>),
    /// Doubles (a null reads as NaN).
    Float(Vec<f64>),
    /// Text.
    Text(Vec<String>),
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
            Some(Values::Text(v)) => v.len(),
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
            _ => None,
        }
    }
    /// A double column by name.
    pub fn floats(&self, name: &str) -> Option<&[f64]> {
        let i = self.names.iter().position(|n| n == name)?;
        match &self.columns[i] {
            Values::Float(v) => Some(v),
            _ => None,
        }
    }
    /// A text column by name.
    pub fn texts(&self, name: &str) -> Option<&[String]> {
        let i = self.names.iter().position(|n| n == name)?;
        match &self.columns[i] {
            Values::Text(v) => Some(v),
            _ => None,
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
                (Values::Text(a), Values::Text(b)) => a.extend(b),
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
                    let mut vals = Vec::with_capacity(rows);
                    let mut defs: Vec<i16> = Vec::with_capacity(rows);
                    r.read_records(rows, Some(&mut defs), None, &mut vals).map_err(pq(path))?;
                    let v: Vec<f64> = if defs.is_empty() || vals.len() == rows {
                        vals
                    } else {
                        let mut it = vals.into_iter();
                        defs.iter().map(|&d| if d > 0 { it.next().unwrap_or(f64::NAN) } else { f64::NAN }).collect()
                    };
                    match slot {
                        Values::Float(a) => a.extend(v),
                        Values::Int(a) if a.is_empty() => *slot = Values::Float(v),
                        _ => return Err(SweepError::output(path, "mixed column types")),
                    }
                }
                ColumnReader::ByteArrayColumnReader(mut r) => {
                    let mut v: Vec<ByteArray> = Vec::with_capacity(rows);
                    r.read_records(rows, None, None, &mut v).map_err(pq(path))?;
                    let v: Vec<String> = v.iter().map(|b| String::from_utf8_lossy(b.data()).into_owned()).collect();
                    match slot {
                        Values::Text(a) => a.extend(v),
                        Values::Int(a) if a.is_empty() => *slot = Values::Text(v),
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
