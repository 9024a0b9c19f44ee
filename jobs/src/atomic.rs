//! One atomic writer for every output file of every command.
//!
//! [`write_file`] fills a temporary file beside the target (same folder, so
//! the rename cannot cross file systems), flushes and fsyncs it, renames it
//! over the target and fsyncs the folder. On any error the temporary file is
//! removed and the target is left as it was: a reader sees the old file or
//! the complete new one, never a truncated or zero-byte file. Errors are
//! [`WriteError`]s, which name the path and say that writing failed (not the
//! config or the data).
//!
//! The temporary file is `STEM.tmp.EXT` (`pred.tmp.csv`, `heatmap.tmp.png`:
//! the extension is kept for writers that choose a format by it); see
//! [`is_temp_name`].
//!
//! # Fault injection
//!
//! With the environment variable `INSILICO_FAULT_ENOSPC_AFTER=N` set, every
//! write through this module fails with "No space left on device" once `N`
//! bytes of the file are written (a full disk, for the tests). With
//! `INSILICO_FAULT_ENOSPC_AT_WRITE=K`, the process's writes are counted from
//! 0 and the K-th and every later one fail at their first byte (a disk that
//! fills up at that write): stepping K through 0, 1, 2, ... hits each write
//! of a command in turn.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Writing an output file failed; the message names the path.
#[derive(Debug, thiserror::Error)]
#[error("cannot write {}: {reason}", path.display())]
pub struct WriteError {
    /// The file that could not be written (the target, or its temporary file).
    pub path: PathBuf,
    /// What failed (the operating system's message).
    pub reason: String,
}

impl WriteError {
    fn new(path: &Path, reason: impl std::fmt::Display) -> Self {
        WriteError { path: path.to_path_buf(), reason: reason.to_string() }
    }
}

/// The temporary file [`write_file`] fills for `path`: `STEM.tmp.EXT` in the
/// same folder (`STEM.tmp` without an extension).
pub fn temp_path(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = match name.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() => format!("{stem}.tmp.{ext}"),
        _ => format!("{name}.tmp"),
    };
    path.with_file_name(tmp)
}

/// True for a name [`temp_path`] makes (an unfinished write of a killed run).
pub fn is_temp_name(name: &str) -> bool {
    name.ends_with(".tmp") || name.contains(".tmp.")
}

/// A file writer that fails with `ENOSPC` after a byte budget (fault injection).
struct Budget<'a> {
    inner: &'a mut File,
    left: Option<u64>,
}

impl Write for Budget<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Some(left) = self.left.as_mut() {
            if *left == 0 {
                return Err(io::Error::from_raw_os_error(28));
            }
            let n = (buf.len() as u64).min(*left) as usize;
            let n = self.inner.write(&buf[..n])?;
            *left -= n as u64;
            return Ok(n);
        }
        self.inner.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Atomic writes started by this process (for `INSILICO_FAULT_ENOSPC_AT_WRITE`).
static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The byte budget of the write now starting, if a fault is injected.
fn fault_budget() -> Option<u64> {
    let index = WRITES.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let env = |k: &str| std::env::var(k).ok().and_then(|v| v.trim().parse::<u64>().ok());
    if env("INSILICO_FAULT_ENOSPC_AT_WRITE").is_some_and(|k| index >= k) {
        return Some(0);
    }
    env("INSILICO_FAULT_ENOSPC_AFTER")
}

/// Writes `path` atomically: `fill` writes the content into `w`; the result
/// is flushed, fsynced and renamed over `path`.
pub fn write_file<F>(path: &Path, fill: F) -> Result<(), WriteError>
where
    F: FnOnce(&mut dyn Write) -> io::Result<()>,
{
    through_temp(path, |tmp| {
        let mut file = File::create(tmp).map_err(|e| WriteError::new(path, e))?;
        {
            let mut budget = Budget { inner: &mut file, left: fault_budget() };
            let mut w = io::BufWriter::new(&mut budget);
            fill(&mut w).and_then(|_| w.flush()).map_err(|e| WriteError::new(path, e))?;
        }
        Ok(file)
    })
}

/// Writes `bytes` to `path` atomically (see [`write_file`]).
pub fn write_bytes(path: &Path, bytes: &[u8]) -> Result<(), WriteError> {
    write_file(path, |w| w.write_all(bytes))
}

/// Writes `path` atomically through a writer that needs a path of its own
/// (a plotting back end): `render` writes the temporary file it is given;
/// its error text becomes the [`WriteError`]'s reason.
pub fn write_via_path<F>(path: &Path, render: F) -> Result<(), WriteError>
where
    F: FnOnce(&Path) -> Result<(), String>,
{
    through_temp(path, |tmp| {
        render(tmp).map_err(|e| WriteError::new(path, e))?;
        if let Some(budget) = fault_budget() {
            let len = std::fs::metadata(tmp).map(|m| m.len()).unwrap_or(0);
            if len > budget || budget == 0 {
                return Err(WriteError::new(path, io::Error::from_raw_os_error(28)));
            }
        }
        File::open(tmp).map_err(|e| WriteError::new(tmp, e))
    })
}

/// The one commit protocol of every write: `write` fills the temporary file
/// beside `path` and hands it back open; it is fsynced and renamed over
/// `path`, and the folder fsynced. On any error the temporary is removed.
fn through_temp(path: &Path, write: impl FnOnce(&Path) -> Result<File, WriteError>) -> Result<(), WriteError> {
    let tmp = temp_path(path);
    let result = (|| {
        let file = write(&tmp)?;
        file.sync_all().map_err(|e| WriteError::new(path, e))?;
        drop(file);
        std::fs::rename(&tmp, path).map_err(|e| WriteError::new(path, e))?;
        sync_parent(path);
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Fsyncs the folder holding `path` so that the rename itself survives a
/// crash (best effort: not every platform can open a folder).
fn sync_parent(path: &Path) {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_names_keep_the_extension() {
        assert_eq!(temp_path(Path::new("a/pred.csv")), PathBuf::from("a/pred.tmp.csv"));
        assert_eq!(temp_path(Path::new("heatmap.png")), PathBuf::from("heatmap.tmp.png"));
        assert_eq!(temp_path(Path::new("x/README")), PathBuf::from("x/README.tmp"));
        assert!(is_temp_name("part-000001.tmp.parquet") && is_temp_name("a.tmp") && !is_temp_name("a.csv"));
    }

    #[test]
    fn a_failed_write_leaves_the_old_file_and_no_temporary() {
        let dir = std::env::temp_dir().join(format!("insilico-atomic-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("out.csv");
        write_bytes(&p, b"old\n").unwrap();
        let e = write_file(&p, |w| {
            w.write_all(b"partial")?;
            Err(io::Error::from_raw_os_error(28))
        })
        .unwrap_err();
        assert!(e.to_string().contains("out.csv"), "{e}");
        assert_eq!(std::fs::read(&p).unwrap(), b"old\n");
        assert!(!temp_path(&p).exists());
        let e = write_bytes(&p.join("below-a-file"), b"x").unwrap_err();
        assert!(e.to_string().contains("below-a-file"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
