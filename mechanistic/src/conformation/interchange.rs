//! Markov-model interchange: rate or transition matrices from CSV (see
//! [`msm`](super::msm)), NumPy `.npy` (a dense 2-D float array) and SciPy
//! sparse `.npz` (`scipy.sparse.save_npz`: CSR, CSC or COO), with
//! validation errors that name the file and the row and column.
//!
//! Rows index the state left, as in deeptime and PyEMMA: rows of a
//! transition matrix sum to one, rows of a rate matrix to zero (the
//! diagonal is recomputed from the off-diagonal entries after the check).
//! A transition matrix needs its lag time and is analysed in discrete time;
//! a rate matrix in continuous time (see [`markov`](super::markov)).
//!
//! Row and column numbers in errors are 0-based for `.npy`/`.npz` (as NumPy
//! indexes them) and are file lines and 1-based columns for CSV.

use std::path::Path;

use super::markov::{Chain, Clock};
use super::msm::MsmMatrix;
use super::ConformationError;

/// Tolerance on row sums: `|Σ_j T_ij − 1| ≤ ROW_SUM_TOL`, or for a rate
/// matrix `|Σ_j Q_ij| ≤ ROW_SUM_TOL · max_j |Q_ij|`.
pub const ROW_SUM_TOL: f64 = 1e-8;

/// What a matrix file holds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MatrixKind {
    /// A rate matrix (1/time): continuous time.
    Rate,
    /// A transition matrix at a lag time (needed: `None` is an error).
    Transition {
        /// The lag time, in the time unit of the outputs.
        lag: Option<f64>,
    },
}

/// A square matrix read from a file, as sparse entries.
#[derive(Debug, Clone, PartialEq)]
pub struct MatrixFile {
    /// Number of states.
    pub n: usize,
    /// Entries `(row, col, value)`, zeros dropped (diagonal included).
    pub entries: Vec<(usize, usize, f64)>,
    /// State names (the CSV header), if any.
    pub names: Option<Vec<String>>,
    /// The file, for messages.
    pub source: String,
    /// For CSV: the file line of each row (to name it in errors).
    lines: Option<Vec<usize>>,
}

fn file_err(file: &str, reason: impl Into<String>) -> ConformationError {
    ConformationError::File { file: file.to_string(), reason: reason.into() }
}

impl MatrixFile {
    /// Reads `.csv`, `.npy` or `.npz` by extension.
    pub fn read(path: impl AsRef<Path>) -> Result<Self, ConformationError> {
        let path = path.as_ref();
        let source = path.display().to_string();
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
        match ext.as_str() {
            "csv" | "txt" => {
                let m = MsmMatrix::read(path)?;
                let n = m.rows.len();
                let entries = (0..n)
                    .flat_map(|i| {
                        m.rows[i].iter().enumerate().filter(|(_, v)| **v != 0.0).map(move |(j, &v)| (i, j, v))
                    })
                    .collect();
                let named = m.names.iter().enumerate().any(|(i, s)| *s != format!("S{i}"));
                Ok(MatrixFile {
                    n,
                    entries,
                    names: named.then(|| m.names.clone()),
                    source,
                    lines: Some(m.lines.clone()),
                })
            }
            "npy" | "npz" => {
                let bytes = std::fs::read(path).map_err(|e| file_err(&source, format!("cannot read the file: {e}")))?;
                if ext == "npy" {
                    Self::from_npy(&bytes, &source)
                } else {
                    Self::from_npz(&bytes, &source)
                }
            }
            _ => {
                Err(file_err(&source, "unknown matrix format: use .csv, .npy (NumPy) or .npz (scipy.sparse.save_npz)"))
            }
        }
    }

    /// A dense 2-D `.npy` array.
    pub fn from_npy(bytes: &[u8], source: &str) -> Result<Self, ConformationError> {
        let a = Npy::parse(bytes, source)?;
        if a.shape.len() != 2 || a.shape[0] != a.shape[1] || a.shape[0] == 0 {
            return Err(file_err(source, format!("array of shape {:?}: a square matrix is needed", a.shape)));
        }
        let n = a.shape[0];
        let v = a.floats(source)?;
        let mut entries = Vec::new();
        for i in 0..n {
            for j in 0..n {
                let x = if a.fortran { v[i + j * n] } else { v[i * n + j] };
                if !x.is_finite() {
                    return Err(file_err(source, format!("row {i}, column {j}: {x} is not finite")));
                }
                if x != 0.0 {
                    entries.push((i, j, x));
                }
            }
        }
        Ok(MatrixFile { n, entries, names: None, source: source.to_string(), lines: None })
    }

    /// A SciPy sparse matrix saved by `scipy.sparse.save_npz` (CSR, CSC
    /// or COO).
    pub fn from_npz(bytes: &[u8], source: &str) -> Result<Self, ConformationError> {
        let files = read_zip(bytes, source)?;
        let get = |name: &str| -> Result<Npy, ConformationError> {
            let (_, b) = files.iter().find(|(n, _)| n == name).ok_or_else(|| {
                file_err(source, format!("no {name} in the archive: not a scipy.sparse.save_npz file"))
            })?;
            Npy::parse(b, &format!("{source}:{name}"))
        };
        let format = get("format.npy")?.text();
        let shape = get("shape.npy")?.ints(source)?;
        if shape.len() != 2 || shape[0] != shape[1] || shape[0] <= 0 {
            return Err(file_err(source, format!("shape {shape:?}: a square matrix is needed")));
        }
        let n = shape[0] as usize;
        let data = get("data.npy")?.floats(source)?;
        let idx = |v: i64, what: &str| -> Result<usize, ConformationError> {
            if v < 0 || v as usize >= n {
                Err(file_err(source, format!("{what} index {v} is outside the {n} states")))
            } else {
                Ok(v as usize)
            }
        };
        let mut entries = Vec::with_capacity(data.len());
        match format.as_str() {
            "csr" | "csc" => {
                let indices = get("indices.npy")?.ints(source)?;
                let indptr = get("indptr.npy")?.ints(source)?;
                if indptr.len() != n + 1 || indices.len() != data.len() {
                    return Err(file_err(source, "inconsistent indptr/indices/data lengths"));
                }
                for r in 0..n {
                    let (a, b) = (indptr[r], indptr[r + 1]);
                    if a < 0 || b < a || b as usize > data.len() {
                        return Err(file_err(source, format!("indptr[{r}..{}] = {a}..{b} is invalid", r + 1)));
                    }
                    for k in a as usize..b as usize {
                        let c = idx(indices[k], "column")?;
                        let (i, j) = if format == "csr" { (r, c) } else { (c, r) };
                        entries.push((i, j, data[k]));
                    }
                }
            }
            "coo" => {
                let row = get("row.npy")?.ints(source)?;
                let col = get("col.npy")?.ints(source)?;
                if row.len() != data.len() || col.len() != data.len() {
                    return Err(file_err(source, "inconsistent row/col/data lengths"));
                }
                for k in 0..data.len() {
                    entries.push((idx(row[k], "row")?, idx(col[k], "column")?, data[k]));
                }
            }
            f => return Err(file_err(source, format!("sparse format `{f}`: only csr, csc and coo are read"))),
        }
        // sum duplicates, drop zeros
        entries.sort_by_key(|e| (e.0, e.1));
        let mut out: Vec<(usize, usize, f64)> = Vec::with_capacity(entries.len());
        for (i, j, v) in entries {
            if !v.is_finite() {
                return Err(file_err(source, format!("row {i}, column {j}: {v} is not finite")));
            }
            match out.last_mut() {
                Some(l) if l.0 == i && l.1 == j => l.2 += v,
                _ => out.push((i, j, v)),
            }
        }
        out.retain(|e| e.2 != 0.0);
        Ok(MatrixFile { n, entries: out, names: None, source: source.to_string(), lines: None })
    }

    /// Names a matrix position in errors: CSV lines and 1-based columns,
    /// or 0-based rows and columns.
    fn at(&self, i: usize, j: usize, reason: String) -> ConformationError {
        match &self.lines {
            Some(lines) => ConformationError::Csv { file: self.source.clone(), line: lines[i], column: j + 1, reason },
            None => file_err(&self.source, format!("row {i}, column {j}: {reason}")),
        }
    }

    /// Validates the matrix as `kind` and builds the [`Chain`]: transition
    /// probabilities in `[0, 1]` with rows summing to one and a lag time;
    /// non-negative off-diagonal rates with rows summing to zero; and an
    /// irreducible transition graph (the error names the components).
    pub fn chain(&self, kind: MatrixKind) -> Result<Chain, ConformationError> {
        let n = self.n;
        let mut sum = vec![0.0; n];
        let mut scale = vec![0.0f64; n];
        let mut last_col = vec![0usize; n];
        for &(i, j, v) in &self.entries {
            sum[i] += v;
            scale[i] = scale[i].max(v.abs());
            last_col[i] = last_col[i].max(j);
        }
        let chain = match kind {
            MatrixKind::Transition { lag } => {
                let lag = lag.ok_or_else(|| {
                    file_err(
                        &self.source,
                        "a transition matrix needs its lag time (`lag = …` in the config, in the time unit of \
                         the outputs); give a rate matrix instead for continuous time",
                    )
                })?;
                if !(lag.is_finite() && lag > 0.0) {
                    return Err(file_err(&self.source, format!("lag time {lag} must be finite and positive")));
                }
                for &(i, j, v) in &self.entries {
                    if !(0.0..=1.0).contains(&v) {
                        return Err(self.at(i, j, format!("transition probability {v} is outside [0, 1]")));
                    }
                }
                for i in 0..n {
                    if (sum[i] - 1.0).abs() > ROW_SUM_TOL {
                        return Err(self.at(
                            i,
                            last_col[i],
                            format!(
                                "row {i} sums to {}, a transition matrix's rows sum to one (non-stochastic)",
                                sum[i]
                            ),
                        ));
                    }
                }
                Chain::from_transition_entries(n, &self.entries, lag)?
            }
            MatrixKind::Rate => {
                for &(i, j, v) in &self.entries {
                    if i != j && v < 0.0 {
                        return Err(self.at(i, j, format!("off-diagonal rate {v} is negative")));
                    }
                }
                for i in 0..n {
                    if sum[i].abs() > ROW_SUM_TOL * scale[i].max(f64::MIN_POSITIVE) {
                        return Err(self.at(
                            i,
                            i,
                            format!("row {i} sums to {:e}, a rate matrix's rows sum to zero", sum[i]),
                        ));
                    }
                }
                Chain::from_rates(n, &self.entries, Clock::Continuous)?
            }
        };
        chain.check_irreducible(self.names.as_deref(), &self.source)?;
        Ok(chain)
    }
}

/// A parsed `.npy` array.
#[derive(Debug, Clone, PartialEq)]
pub struct Npy {
    /// Shape.
    pub shape: Vec<usize>,
    /// Fortran (column-major) order.
    pub fortran: bool,
    /// Element type: `f8`, `f4`, `i8`, `i4`, `u4`, `u8`, `S<k>`, …
    pub kind: String,
    /// Raw little-endian payload.
    pub data: Vec<u8>,
    /// Bytes per element.
    pub itemsize: usize,
}

impl Npy {
    /// Parses the bytes of a `.npy` file (format versions 1–3).
    pub fn parse(b: &[u8], source: &str) -> Result<Self, ConformationError> {
        let bad = |r: &str| file_err(source, format!("not a NumPy .npy file: {r}"));
        if b.len() < 10 || &b[..6] != b"\x93NUMPY" {
            return Err(bad("no magic string"));
        }
        let (hlen, start) = match b[6] {
            1 => (u16::from_le_bytes([b[8], b[9]]) as usize, 10),
            2 | 3 if b.len() >= 12 => (u32::from_le_bytes([b[8], b[9], b[10], b[11]]) as usize, 12),
            v => return Err(bad(&format!("format version {v}"))),
        };
        let header = b.get(start..start + hlen).ok_or_else(|| bad("truncated header"))?;
        let header = std::str::from_utf8(header).map_err(|_| bad("header is not text"))?;
        let field = |key: &str| -> Option<&str> {
            let k = header.find(&format!("'{key}'"))?;
            let rest = &header[k + key.len() + 2..];
            Some(rest[rest.find(':')? + 1..].trim_start())
        };
        let descr = field("descr").ok_or_else(|| bad("no descr"))?;
        let descr = descr.strip_prefix('\'').and_then(|d| d.split('\'').next()).ok_or_else(|| bad("descr"))?;
        let fortran = field("fortran_order").map(|f| f.starts_with("True")).unwrap_or(false);
        let shape_txt = field("shape").ok_or_else(|| bad("no shape"))?;
        let shape_txt = shape_txt.strip_prefix('(').and_then(|s| s.split(')').next()).ok_or_else(|| bad("shape"))?;
        let shape: Vec<usize> = shape_txt
            .split(',')
            .map(|s| s.trim())
            .filter(|s| !s.is_empty())
            .map(|s| s.trim_end_matches('L').parse::<usize>())
            .collect::<Result<_, _>>()
            .map_err(|_| bad("shape"))?;
        let (order, kind) = descr.split_at(1);
        if order == ">" && !kind.ends_with('1') {
            return Err(file_err(source, format!("big-endian dtype {descr}: save it little-endian")));
        }
        let kind = if "<>|=".contains(order) { kind.to_string() } else { descr.to_string() };
        let itemsize: usize = kind[1..].parse().map_err(|_| bad(&format!("dtype {descr}")))?;
        let count: usize = shape.iter().product();
        let data = b[start + hlen..].to_vec();
        if data.len() < count * itemsize {
            return Err(file_err(source, format!("truncated: {} bytes for {count} × {itemsize}", data.len())));
        }
        Ok(Npy { shape, fortran, kind, data, itemsize })
    }

    fn count(&self) -> usize {
        self.shape.iter().product()
    }

    /// The elements as doubles (float or integer dtypes).
    pub fn floats(&self, source: &str) -> Result<Vec<f64>, ConformationError> {
        let c = self.count();
        let d = &self.data;
        let v: Vec<f64> = match self.kind.as_str() {
            "f8" => (0..c).map(|k| f64::from_le_bytes(le8(d, k))).collect(),
            "f4" => (0..c).map(|k| f32::from_le_bytes(le4(d, k)) as f64).collect(),
            _ => return self.ints(source).map(|v| v.into_iter().map(|x| x as f64).collect()),
        };
        Ok(v)
    }

    /// The elements as integers (integer dtypes).
    pub fn ints(&self, source: &str) -> Result<Vec<i64>, ConformationError> {
        let c = self.count();
        let d = &self.data;
        Ok(match self.kind.as_str() {
            "i8" => (0..c).map(|k| i64::from_le_bytes(le8(d, k))).collect(),
            "u8" => (0..c).map(|k| u64::from_le_bytes(le8(d, k)) as i64).collect(),
            "i4" => (0..c).map(|k| i32::from_le_bytes(le4(d, k)) as i64).collect(),
            "u4" => (0..c).map(|k| u32::from_le_bytes(le4(d, k)) as i64).collect(),
            k => return Err(file_err(source, format!("dtype {k}: a numeric array is needed"))),
        })
    }

    /// A byte-string scalar (`|S<k>`) or unicode scalar (`<U<k>`) as text.
    pub fn text(&self) -> String {
        if self.kind.starts_with('U') {
            self.data
                .chunks(4)
                .filter_map(|c| char::from_u32(u32::from_le_bytes([c[0], c[1], c[2], c[3]])))
                .take_while(|c| *c != '\0')
                .collect()
        } else {
            self.data[..self.itemsize.min(self.data.len())]
                .iter()
                .take_while(|b| **b != 0)
                .map(|&b| b as char)
                .collect()
        }
    }
}

fn le8(d: &[u8], k: usize) -> [u8; 8] {
    let mut a = [0u8; 8];
    a.copy_from_slice(&d[8 * k..8 * k + 8]);
    a
}

fn le4(d: &[u8], k: usize) -> [u8; 4] {
    let mut a = [0u8; 4];
    a.copy_from_slice(&d[4 * k..4 * k + 4]);
    a
}

fn u16_at(b: &[u8], o: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(o..o + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], o: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(o..o + 4)?.try_into().ok()?))
}
fn u64_at(b: &[u8], o: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(o..o + 8)?.try_into().ok()?))
}

/// The members of a zip archive (stored or deflated; zip64 aware), as
/// `(name, bytes)`.
pub fn read_zip(b: &[u8], source: &str) -> Result<Vec<(String, Vec<u8>)>, ConformationError> {
    let bad = |r: &str| file_err(source, format!("not a readable .npz (zip) archive: {r}"));
    let eocd = (0..b.len().saturating_sub(21))
        .rev()
        .take(65_557)
        .find(|&o| u32_at(b, o) == Some(0x0605_4b50))
        .ok_or_else(|| bad("no end-of-central-directory record"))?;
    let mut entries = u16_at(b, eocd + 10).ok_or_else(|| bad("eocd"))? as u64;
    let mut cd = u32_at(b, eocd + 16).ok_or_else(|| bad("eocd"))? as u64;
    if cd == 0xFFFF_FFFF || entries == 0xFFFF {
        // zip64 end-of-central-directory locator just before
        let loc = eocd.checked_sub(20).ok_or_else(|| bad("zip64 locator"))?;
        if u32_at(b, loc) != Some(0x0706_4b50) {
            return Err(bad("zip64 locator"));
        }
        let rec = u64_at(b, loc + 8).ok_or_else(|| bad("zip64 locator"))? as usize;
        entries = u64_at(b, rec + 32).ok_or_else(|| bad("zip64 record"))?;
        cd = u64_at(b, rec + 48).ok_or_else(|| bad("zip64 record"))?;
    }
    let mut out = Vec::new();
    let mut o = cd as usize;
    for _ in 0..entries {
        if u32_at(b, o) != Some(0x0201_4b50) {
            return Err(bad("central directory"));
        }
        let method = u16_at(b, o + 10).ok_or_else(|| bad("cd"))?;
        let mut csize = u32_at(b, o + 20).ok_or_else(|| bad("cd"))? as u64;
        let mut usize_ = u32_at(b, o + 24).ok_or_else(|| bad("cd"))? as u64;
        let nlen = u16_at(b, o + 28).ok_or_else(|| bad("cd"))? as usize;
        let xlen = u16_at(b, o + 30).ok_or_else(|| bad("cd"))? as usize;
        let clen = u16_at(b, o + 32).ok_or_else(|| bad("cd"))? as usize;
        let mut local = u32_at(b, o + 42).ok_or_else(|| bad("cd"))? as u64;
        let name = String::from_utf8_lossy(b.get(o + 46..o + 46 + nlen).ok_or_else(|| bad("name"))?).into_owned();
        // zip64 extra field
        let mut x = o + 46 + nlen;
        let xend = x + xlen;
        while x + 4 <= xend {
            let id = u16_at(b, x).ok_or_else(|| bad("extra"))?;
            let sz = u16_at(b, x + 2).ok_or_else(|| bad("extra"))? as usize;
            if id == 1 {
                let mut p = x + 4;
                if usize_ == 0xFFFF_FFFF {
                    usize_ = u64_at(b, p).ok_or_else(|| bad("zip64 extra"))?;
                    p += 8;
                }
                if csize == 0xFFFF_FFFF {
                    csize = u64_at(b, p).ok_or_else(|| bad("zip64 extra"))?;
                    p += 8;
                }
                if local == 0xFFFF_FFFF {
                    local = u64_at(b, p).ok_or_else(|| bad("zip64 extra"))?;
                }
            }
            x += 4 + sz;
        }
        o = xend + clen;
        let l = local as usize;
        if u32_at(b, l) != Some(0x0403_4b50) {
            return Err(bad("local header"));
        }
        let start = l
            + 30
            + u16_at(b, l + 26).ok_or_else(|| bad("local"))? as usize
            + u16_at(b, l + 28).ok_or_else(|| bad("local"))? as usize;
        let raw = b.get(start..start + csize as usize).ok_or_else(|| bad("truncated member"))?;
        let data = match method {
            0 => raw.to_vec(),
            8 => miniz_oxide::inflate::decompress_to_vec(raw).map_err(|e| bad(&format!("{name}: deflate: {e:?}")))?,
            m => return Err(bad(&format!("{name}: compression method {m} (only stored and deflate)"))),
        };
        if data.len() as u64 != usize_ {
            return Err(bad(&format!("{name}: size mismatch")));
        }
        out.push((name, data));
    }
    Ok(out)
}
