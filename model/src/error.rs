//! Errors of the model language: every one points at a file, line and column.

use std::fmt;

/// Where in a model's source something is: byte offset and length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Span {
    /// Byte offset of the first character.
    pub start: usize,
    /// Byte offset one past the last character.
    pub end: usize,
}

impl Span {
    /// A span from `start` to `end` (byte offsets).
    pub fn new(start: usize, end: usize) -> Self {
        Span { start, end: end.max(start) }
    }
    /// The smallest span covering both.
    pub fn to(self, other: Span) -> Span {
        Span::new(self.start.min(other.start), self.end.max(other.end))
    }
}

/// A model that could not be loaded or compiled.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ModelError {
    /// Something wrong at a place in the source (syntax, an unknown name, a
    /// broken invariant, ...). Displayed with the line and a caret under the spot.
    #[error("{}", render(.file, .line, .column, .message, .source_line, .width))]
    At {
        /// The model file (or `<inline>` for a string).
        file: String,
        /// 1-based line.
        line: usize,
        /// 1-based column (in characters).
        column: usize,
        /// What is wrong, and what to do about it.
        message: String,
        /// The offending line of source, for the caret display.
        source_line: String,
        /// Width of the underlined spot in characters (at least 1).
        width: usize,
    },
    /// Something wrong with the model as a whole (no states, say).
    #[error("{file}: {message}")]
    Model {
        /// The model file.
        file: String,
        /// What is wrong.
        message: String,
    },
    /// The model file could not be read.
    #[error("cannot read model file {path}: {reason}")]
    Io {
        /// The path given.
        path: String,
        /// The operating system's reason.
        reason: String,
    },
    /// The model uses something an engine cannot run (time-dependent
    /// right-hand side on the batched engine, too many states, ...).
    #[error("model {model}: {engine} cannot run it: {reason}")]
    Engine {
        /// The model's name.
        model: String,
        /// The engine that refuses.
        engine: &'static str,
        /// Why, and which engine can run it.
        reason: String,
    },
    /// Parameter values given to a compiled model are unusable.
    #[error("model {model}: {message}")]
    Values {
        /// The model's name.
        model: String,
        /// What is wrong.
        message: String,
    },
}

fn render(file: &str, line: &usize, column: &usize, message: &str, source_line: &str, width: &usize) -> String {
    let num = line.to_string();
    let pad = " ".repeat(num.len());
    let caret_pad = " ".repeat(column.saturating_sub(1));
    let carets = "^".repeat((*width).max(1));
    format!("{file}:{line}:{column}: {message}\n{pad} |\n{num} | {source_line}\n{pad} | {caret_pad}{carets}")
}

/// The source text of a model and its name, to turn spans into positions.
#[derive(Debug, Clone)]
pub struct Source<'a> {
    /// File name used in messages.
    pub file: &'a str,
    /// The text.
    pub text: &'a str,
}

impl Source<'_> {
    /// An error at `span` with `message`.
    pub fn error(&self, span: Span, message: impl Into<String>) -> ModelError {
        let start = span.start.min(self.text.len());
        let line_start = self.text[..start].rfind('\n').map_or(0, |i| i + 1);
        let line_end = self.text[start..].find('\n').map_or(self.text.len(), |i| start + i);
        let line = self.text[..start].matches('\n').count() + 1;
        let column = self.text[line_start..start].chars().count() + 1;
        let end = span.end.min(line_end).max(start);
        let width = self.text[start..end].chars().count().max(1);
        ModelError::At {
            file: self.file.to_string(),
            line,
            column,
            message: message.into(),
            source_line: self.text[line_start..line_end].trim_end_matches('\r').to_string(),
            width,
        }
    }
    /// An error about the model as a whole.
    pub fn model_error(&self, message: impl Into<String>) -> ModelError {
        ModelError::Model { file: self.file.to_string(), message: message.into() }
    }
}

/// Levenshtein distance, for "did you mean" suggestions.
pub(crate) fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.to_lowercase().chars().collect();
    let b: Vec<char> = b.to_lowercase().chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// "; did you mean `x` or `y`?" for the known names nearest to `name`, or "".
pub(crate) fn suggest<'a>(name: &str, known: impl IntoIterator<Item = &'a str>) -> String {
    let mut cands: Vec<(usize, &str)> = known
        .into_iter()
        .map(|k| (edit_distance(name, k), k))
        .filter(|(d, k)| *d <= (name.len().max(k.len()) / 2).max(1) || k.eq_ignore_ascii_case(name))
        .collect();
    cands.sort();
    cands.dedup_by(|a, b| a.1 == b.1);
    let names: Vec<String> = cands.iter().take(3).map(|(_, k)| format!("`{k}`")).collect();
    match names.len() {
        0 => String::new(),
        1 => format!("; did you mean {}?", names[0]),
        _ => format!("; did you mean {}?", names.join(" or ")),
    }
}

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}..{}", self.start, self.end)
    }
}
