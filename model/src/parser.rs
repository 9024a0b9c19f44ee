//! Lexer and recursive-descent parser of model files (see docs/models.md).

use crate::ast::{BinOp, Bounds, Declared, DoseAttr, Expr, Ident, Stmt, UnOp};
use crate::error::{ModelError, Source, Span};

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Num(f64),
    Ident(String),
    Plus,
    Minus,
    Star,
    Slash,
    Caret,
    Lt,
    Le,
    Gt,
    Ge,
    EqEq,
    Ne,
    AndAnd,
    OrOr,
    Bang,
    Assign,
    Arrow,
    Tilde,
    Colon,
    Comma,
    LParen,
    RParen,
    LBrace,
    RBrace,
    LBracket,
    RBracket,
    Newline,
    Eof,
}

impl Tok {
    fn describe(&self) -> String {
        match self {
            Tok::Num(v) => format!("number {v}"),
            Tok::Ident(s) => format!("`{s}`"),
            Tok::Newline => "end of line".into(),
            Tok::Eof => "end of file".into(),
            other => format!("`{}`", symbol(other)),
        }
    }
}

fn symbol(t: &Tok) -> &'static str {
    match t {
        Tok::Plus => "+",
        Tok::Minus => "-",
        Tok::Star => "*",
        Tok::Slash => "/",
        Tok::Caret => "^",
        Tok::Lt => "<",
        Tok::Le => "<=",
        Tok::Gt => ">",
        Tok::Ge => ">=",
        Tok::EqEq => "==",
        Tok::Ne => "!=",
        Tok::AndAnd => "&&",
        Tok::OrOr => "||",
        Tok::Bang => "!",
        Tok::Assign => "=",
        Tok::Arrow => "->",
        Tok::Tilde => "~",
        Tok::Colon => ":",
        Tok::Comma => ",",
        Tok::LParen => "(",
        Tok::RParen => ")",
        Tok::LBrace => "{",
        Tok::RBrace => "}",
        Tok::LBracket => "[",
        Tok::RBracket => "]",
        _ => "?",
    }
}

/// Splits source into tokens. Newlines inside parentheses or brackets are
/// dropped (an expression may continue over lines there); so is a newline
/// after a binary operator or a comma.
fn lex(src: &Source<'_>) -> Result<Vec<(Tok, Span)>, ModelError> {
    let text = src.text;
    let bytes = text.as_bytes();
    let mut out: Vec<(Tok, Span)> = Vec::new();
    let mut depth: i64 = 0;
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        let start = i;
        if c == b'#' || (c == b'/' && bytes.get(i + 1) == Some(&b'/')) {
            while i < bytes.len() && bytes[i] != b'\n' {
                i += 1;
            }
            continue;
        }
        if c == b'\n' || c == b';' {
            i += 1;
            let continues = matches!(
                out.last().map(|t| &t.0),
                Some(
                    Tok::Plus
                        | Tok::Minus
                        | Tok::Star
                        | Tok::Slash
                        | Tok::Caret
                        | Tok::Comma
                        | Tok::Assign
                        | Tok::AndAnd
                        | Tok::OrOr
                        | Tok::Lt
                        | Tok::Le
                        | Tok::Gt
                        | Tok::Ge
                        | Tok::EqEq
                        | Tok::Ne
                        | Tok::Arrow
                        | Tok::Tilde
                        | Tok::Newline
                )
            );
            if depth <= 0 && !(continues && c == b'\n') && !out.is_empty() {
                out.push((Tok::Newline, Span::new(start, i)));
            }
            continue;
        }
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        if c.is_ascii_digit() || (c == b'.' && bytes.get(i + 1).is_some_and(|b| b.is_ascii_digit())) {
            while i < bytes.len() && (bytes[i].is_ascii_digit() || bytes[i] == b'.') {
                i += 1;
            }
            if i < bytes.len() && (bytes[i] == b'e' || bytes[i] == b'E') {
                let mut j = i + 1;
                if j < bytes.len() && (bytes[j] == b'+' || bytes[j] == b'-') {
                    j += 1;
                }
                if j < bytes.len() && bytes[j].is_ascii_digit() {
                    i = j;
                    while i < bytes.len() && bytes[i].is_ascii_digit() {
                        i += 1;
                    }
                }
            }
            let s = &text[start..i];
            let v: f64 = s.parse().map_err(|_| src.error(Span::new(start, i), format!("malformed number `{s}`")))?;
            out.push((Tok::Num(v), Span::new(start, i)));
            continue;
        }
        if c.is_ascii_alphabetic() || c == b'_' {
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_' || bytes[i] == b'.') {
                i += 1;
            }
            // A trailing '.' is not part of a name.
            while i > start + 1 && bytes[i - 1] == b'.' {
                i -= 1;
            }
            out.push((Tok::Ident(text[start..i].to_string()), Span::new(start, i)));
            continue;
        }
        let two = text.get(i..i + 2).unwrap_or("");
        let (tok, len) = match two {
            "<=" => (Tok::Le, 2),
            ">=" => (Tok::Ge, 2),
            "==" => (Tok::EqEq, 2),
            "!=" => (Tok::Ne, 2),
            "&&" => (Tok::AndAnd, 2),
            "||" => (Tok::OrOr, 2),
            "->" => (Tok::Arrow, 2),
            "<-" => (Tok::Assign, 2),
            "**" => (Tok::Caret, 2),
            _ => match c {
                b'+' => (Tok::Plus, 1),
                b'-' => (Tok::Minus, 1),
                b'*' => (Tok::Star, 1),
                b'/' => (Tok::Slash, 1),
                b'^' => (Tok::Caret, 1),
                b'<' => (Tok::Lt, 1),
                b'>' => (Tok::Gt, 1),
                b'!' => (Tok::Bang, 1),
                b'=' => (Tok::Assign, 1),
                b'~' => (Tok::Tilde, 1),
                b':' => (Tok::Colon, 1),
                b',' => (Tok::Comma, 1),
                b'(' => (Tok::LParen, 1),
                b')' => (Tok::RParen, 1),
                b'{' => (Tok::LBrace, 1),
                b'}' => (Tok::RBrace, 1),
                b'[' => (Tok::LBracket, 1),
                b']' => (Tok::RBracket, 1),
                _ => {
                    let ch = text[i..].chars().next().unwrap_or('?');
                    return Err(src.error(Span::new(i, i + ch.len_utf8()), format!("unexpected character `{ch}`")));
                }
            },
        };
        match tok {
            Tok::LParen | Tok::LBracket => depth += 1,
            Tok::RParen | Tok::RBracket => depth -= 1,
            _ => {}
        }
        out.push((tok, Span::new(start, start + len)));
        i += len;
    }
    out.push((Tok::Eof, Span::new(text.len(), text.len())));
    Ok(out)
}

/// Parses a whole model file into statements.
pub fn parse(src: &Source<'_>) -> Result<Vec<Stmt>, ModelError> {
    let toks = lex(src)?;
    let mut p = Parser { src, toks, pos: 0, depth: 0 };
    let mut stmts = Vec::new();
    p.skip_newlines();
    while p.peek() != &Tok::Eof {
        stmts.push(p.statement()?);
        p.end_of_statement()?;
        p.skip_newlines();
    }
    Ok(stmts)
}

/// Deepest nesting of expressions and blocks accepted (guards the stack).
const MAX_DEPTH: usize = 200;

struct Parser<'s> {
    src: &'s Source<'s>,
    toks: Vec<(Tok, Span)>,
    pos: usize,
    depth: usize,
}

const DECLARATIONS: [&str; 10] =
    ["parameters", "params", "covariates", "states", "inputs", "random", "conserved", "output", "outputs", "noise"];

impl Parser<'_> {
    fn peek(&self) -> &Tok {
        &self.toks[self.pos].0
    }
    fn peek_at(&self, k: usize) -> &Tok {
        &self.toks[(self.pos + k).min(self.toks.len() - 1)].0
    }
    fn span(&self) -> Span {
        self.toks[self.pos].1
    }
    fn prev_span(&self) -> Span {
        self.toks[self.pos.saturating_sub(1)].1
    }
    fn bump(&mut self) -> (Tok, Span) {
        let t = self.toks[self.pos].clone();
        if self.pos + 1 < self.toks.len() {
            self.pos += 1;
        }
        t
    }
    fn skip_newlines(&mut self) {
        while self.peek() == &Tok::Newline {
            self.bump();
        }
    }
    fn err_here(&self, what: &str) -> ModelError {
        self.src.error(self.span(), format!("expected {what}, found {}", self.peek().describe()))
    }
    fn expect(&mut self, t: Tok, what: &str) -> Result<Span, ModelError> {
        if self.peek() == &t {
            Ok(self.bump().1)
        } else {
            Err(self.err_here(what))
        }
    }
    fn ident(&mut self, what: &str) -> Result<Ident, ModelError> {
        match self.peek().clone() {
            Tok::Ident(name) => {
                let span = self.bump().1;
                Ok(Ident { name, span })
            }
            _ => Err(self.err_here(what)),
        }
    }
    fn end_of_statement(&mut self) -> Result<(), ModelError> {
        match self.peek() {
            Tok::Newline | Tok::Eof | Tok::RBrace => Ok(()),
            _ => Err(self.err_here("the end of the statement (a new line)")),
        }
    }
    fn enter(&mut self) -> Result<(), ModelError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.src.error(self.span(), format!("nesting deeper than {MAX_DEPTH} levels")));
        }
        Ok(())
    }

    fn statement(&mut self) -> Result<Stmt, ModelError> {
        let Tok::Ident(word) = self.peek().clone() else {
            return Err(self.err_here("a statement (a declaration, an assignment, `d/dt(...)`, `flux` or `if`)"));
        };
        let lower = word.to_ascii_lowercase();
        if DECLARATIONS.contains(&lower.as_str()) && self.peek_at(1) == &Tok::Colon {
            self.bump();
            self.bump();
            return self.declaration(&lower);
        }
        if lower == "network" && matches!(self.peek_at(1), Tok::Ident(_)) {
            self.bump();
            return self.network();
        }
        if lower == "flux" && matches!(self.peek_at(1), Tok::Ident(_)) && self.peek_at(2) == &Tok::Arrow {
            let start = self.bump().1;
            let from = self.ident("the source state of the flux")?;
            self.expect(Tok::Arrow, "`->`")?;
            let to = self.ident("the target state of the flux (or `out`)")?;
            self.expect(Tok::Assign, "`=` after the flux")?;
            let expr = self.expr()?;
            let span = start.to(expr.span());
            return Ok(Stmt::Flux { from, to, expr, span });
        }
        if lower == "if" && self.peek_at(1) == &Tok::LParen {
            return self.if_statement();
        }
        // d/dt(s) = expr
        if word == "d" && self.peek_at(1) == &Tok::Slash && self.peek_at(2) == &Tok::Ident("dt".into()) {
            self.bump();
            self.bump();
            self.bump();
            self.expect(Tok::LParen, "`(` after d/dt")?;
            let s = self.ident("a state name")?;
            self.expect(Tok::RParen, "`)`")?;
            self.expect(Tok::Assign, "`=`")?;
            return Ok(Stmt::Derivative(s, self.expr()?));
        }
        // s(0) = expr, alag(s) = expr, ...
        if self.peek_at(1) == &Tok::LParen {
            let attr = match word.as_str() {
                "alag" | "lag" | "ALAG" => Some(DoseAttr::Lag),
                "f" | "F" => Some(DoseAttr::Bioavailability),
                "rate" | "RATE" => Some(DoseAttr::Rate),
                "dur" | "DUR" => Some(DoseAttr::Duration),
                _ => None,
            };
            if let (Some(attr), Tok::Ident(_), Tok::RParen, Tok::Assign) =
                (attr, self.peek_at(2).clone(), self.peek_at(3).clone(), self.peek_at(4).clone())
            {
                self.bump();
                self.bump();
                let s = self.ident("a state name")?;
                self.bump();
                self.bump();
                return Ok(Stmt::Dose(attr, s, self.expr()?));
            }
            if matches!(self.peek_at(2), Tok::Num(v) if *v == 0.0)
                && self.peek_at(3) == &Tok::RParen
                && self.peek_at(4) == &Tok::Assign
            {
                let s = self.ident("a state name")?;
                self.bump();
                self.bump();
                self.bump();
                self.bump();
                return Ok(Stmt::Initial(s, self.expr()?));
            }
        }
        let name = self.ident("a name")?;
        match self.peek() {
            Tok::Assign => {
                self.bump();
                Ok(Stmt::Assign(name, self.expr()?))
            }
            Tok::Colon => Err(self.src.error(
                name.span,
                format!(
                    "unknown declaration `{}:`{}",
                    name.name,
                    crate::error::suggest(&name.name, DECLARATIONS.iter().copied().chain(["network"]))
                ),
            )),
            _ => Err(self.err_here(&format!("`=` after `{}`", name.name))),
        }
    }

    fn if_statement(&mut self) -> Result<Stmt, ModelError> {
        self.enter()?;
        let span = self.bump().1;
        self.expect(Tok::LParen, "`(` after if")?;
        let cond = self.expr()?;
        self.expect(Tok::RParen, "`)` closing the condition")?;
        let then = self.block()?;
        let mut otherwise = Vec::new();
        // `else` may follow on the same line as `}` or on the next one.
        let save = self.pos;
        self.skip_newlines();
        if matches!(self.peek(), Tok::Ident(w) if w == "else") {
            self.bump();
            if matches!(self.peek(), Tok::Ident(w) if w == "if") {
                otherwise.push(self.if_statement()?);
            } else {
                otherwise = self.block()?;
            }
        } else {
            self.pos = save;
        }
        self.depth -= 1;
        Ok(Stmt::If { cond, then, otherwise, span })
    }

    fn block(&mut self) -> Result<Vec<Stmt>, ModelError> {
        self.skip_newlines();
        self.expect(Tok::LBrace, "`{`")?;
        let mut out = Vec::new();
        self.skip_newlines();
        while self.peek() != &Tok::RBrace {
            if self.peek() == &Tok::Eof {
                return Err(self.err_here("`}` closing the block"));
            }
            let st = self.statement()?;
            if !matches!(st, Stmt::Assign(..) | Stmt::Derivative(..) | Stmt::If { .. }) {
                return Err(self.src.error(
                    self.prev_span(),
                    "only assignments, d/dt(...) and nested if/else may appear inside an if block",
                ));
            }
            out.push(st);
            self.end_of_statement()?;
            self.skip_newlines();
        }
        self.bump();
        Ok(out)
    }

    fn declaration(&mut self, kind: &str) -> Result<Stmt, ModelError> {
        match kind {
            "parameters" | "params" => Ok(Stmt::Parameters(self.declared_list()?)),
            "covariates" => Ok(Stmt::Covariates(self.declared_list()?)),
            "states" => Ok(Stmt::States(self.ident_list()?)),
            "inputs" => Ok(Stmt::Inputs(self.ident_list()?)),
            "random" => Ok(Stmt::Random(self.ident_list()?)),
            "conserved" => {
                let start = self.span();
                let e = self.expr()?;
                Ok(Stmt::Conserved(e, start.to(self.prev_span())))
            }
            "output" | "outputs" => {
                let mut outs = Vec::new();
                loop {
                    let id = self.ident("an output name")?;
                    let e = if self.peek() == &Tok::Assign {
                        self.bump();
                        Some(self.expr()?)
                    } else {
                        None
                    };
                    outs.push((id, e));
                    if self.peek() != &Tok::Comma {
                        break;
                    }
                    self.bump();
                }
                Ok(Stmt::Output(outs))
            }
            "noise" => {
                let s = self.ident("a state name")?;
                self.expect(Tok::Tilde, "`~` (noise: state ~ SD per unit time)")?;
                Ok(Stmt::Noise(s, self.expr()?))
            }
            _ => Err(self.err_here("a declaration")),
        }
    }

    fn ident_list(&mut self) -> Result<Vec<Ident>, ModelError> {
        let mut v = vec![self.ident("a name")?];
        while self.peek() == &Tok::Comma {
            self.bump();
            v.push(self.ident("a name")?);
        }
        Ok(v)
    }

    fn declared_list(&mut self) -> Result<Vec<Declared>, ModelError> {
        let mut v = Vec::new();
        loop {
            let ident = self.ident("a name")?;
            let value = if self.peek() == &Tok::Assign {
                self.bump();
                Some(self.signed_number()?)
            } else {
                None
            };
            let bounds = if matches!(self.peek(), Tok::Ident(w) if w == "in") {
                self.bump();
                Some(self.bounds()?)
            } else {
                None
            };
            if let (Some(b), Some(v)) = (bounds, value) {
                if !b.contains(v) {
                    return Err(self
                        .src
                        .error(ident.span, format!("the default {v} of `{}` lies outside its range {b}", ident.name)));
                }
            }
            v.push(Declared { ident, value, bounds });
            if self.peek() != &Tok::Comma {
                break;
            }
            self.bump();
        }
        Ok(v)
    }

    /// `(lo, hi)`, `[lo, hi]`, `(0, inf)`, ...
    fn bounds(&mut self) -> Result<Bounds, ModelError> {
        let lo_closed = match self.peek() {
            Tok::LParen => false,
            Tok::LBracket => true,
            _ => return Err(self.err_here("`(` or `[` opening a range, as `in (0, inf)`")),
        };
        self.bump();
        let lo = self.bound_number()?;
        self.expect(Tok::Comma, "`,` between the ends of the range")?;
        let hi = self.bound_number()?;
        let hi_closed = match self.peek() {
            Tok::RParen => false,
            Tok::RBracket => true,
            _ => return Err(self.err_here("`)` or `]` closing the range")),
        };
        self.bump();
        if lo.partial_cmp(&hi) != Some(std::cmp::Ordering::Less) {
            return Err(self.src.error(self.prev_span(), format!("an empty range: {lo} is not below {hi}")));
        }
        Ok(Bounds { lo, lo_closed, hi, hi_closed })
    }

    fn bound_number(&mut self) -> Result<f64, ModelError> {
        let neg = if self.peek() == &Tok::Minus {
            self.bump();
            true
        } else {
            false
        };
        let v = match self.peek().clone() {
            Tok::Num(v) => v,
            Tok::Ident(w) if w.eq_ignore_ascii_case("inf") => f64::INFINITY,
            _ => return Err(self.err_here("a number or `inf`")),
        };
        self.bump();
        Ok(if neg { -v } else { v })
    }

    fn signed_number(&mut self) -> Result<f64, ModelError> {
        let neg = if self.peek() == &Tok::Minus {
            self.bump();
            true
        } else {
            false
        };
        match self.peek().clone() {
            Tok::Num(v) => {
                self.bump();
                Ok(if neg { -v } else { v })
            }
            _ => Err(self.err_here("a number")),
        }
    }

    fn network(&mut self) -> Result<Stmt, ModelError> {
        let ident = self.ident("the network's name")?;
        self.expect(Tok::Colon, "`:` after the network's name")?;
        let mut widths = Vec::new();
        loop {
            match self.peek().clone() {
                Tok::Num(v) if v >= 1.0 && v.fract() == 0.0 && v <= 4096.0 => {
                    self.bump();
                    widths.push(v as usize);
                }
                _ => return Err(self.err_here("a layer width (a whole number from 1 to 4096)")),
            }
            if self.peek() != &Tok::Arrow {
                break;
            }
            self.bump();
        }
        if widths.len() < 2 {
            return Err(self
                .src
                .error(ident.span, "a network needs at least an input and an output width (`1 -> 16 -> 1`)"));
        }
        let activation = self.ident("the hidden activation (`tanh` or `softplus`)")?;
        Ok(Stmt::Network { ident, widths, activation })
    }

    // ---- expressions -------------------------------------------------

    /// An expression (lowest precedence: `||`).
    pub(crate) fn expr(&mut self) -> Result<Expr, ModelError> {
        self.enter()?;
        let r = self.binary_level(0);
        self.depth -= 1;
        r
    }

    fn binary_level(&mut self, level: usize) -> Result<Expr, ModelError> {
        const LEVELS: [&[(Tok, BinOp)]; 5] = [
            &[(Tok::OrOr, BinOp::Or)],
            &[(Tok::AndAnd, BinOp::And)],
            &[
                (Tok::Lt, BinOp::Lt),
                (Tok::Le, BinOp::Le),
                (Tok::Gt, BinOp::Gt),
                (Tok::Ge, BinOp::Ge),
                (Tok::EqEq, BinOp::Eq),
                (Tok::Ne, BinOp::Ne),
            ],
            &[(Tok::Plus, BinOp::Add), (Tok::Minus, BinOp::Sub)],
            &[(Tok::Star, BinOp::Mul), (Tok::Slash, BinOp::Div)],
        ];
        if level == LEVELS.len() {
            return self.unary();
        }
        let mut lhs = self.binary_level(level + 1)?;
        loop {
            let Some(op) = LEVELS[level].iter().find(|(t, _)| t == self.peek()).map(|(_, o)| *o) else {
                return Ok(lhs);
            };
            self.bump();
            let rhs = self.binary_level(level + 1)?;
            let span = lhs.span().to(rhs.span());
            lhs = Expr::Binary(op, Box::new(lhs), Box::new(rhs), span);
            if level == 2 && LEVELS[2].iter().any(|(t, _)| t == self.peek()) {
                return Err(self.src.error(self.span(), "comparisons do not chain: write `a < b && b < c`"));
            }
        }
    }

    fn unary(&mut self) -> Result<Expr, ModelError> {
        let op = match self.peek() {
            Tok::Minus => UnOp::Neg,
            Tok::Bang => UnOp::Not,
            Tok::Plus => {
                self.bump();
                return self.unary();
            }
            _ => return self.power(),
        };
        self.enter()?;
        let start = self.bump().1;
        let e = self.unary()?;
        self.depth -= 1;
        let span = start.to(e.span());
        Ok(Expr::Unary(op, Box::new(e), span))
    }

    /// `a ^ b`, right-associative and tighter than unary minus on its left
    /// (`-x^2` is `-(x^2)`); the exponent may carry a sign (`x^-2`).
    fn power(&mut self) -> Result<Expr, ModelError> {
        let base = self.primary()?;
        if self.peek() == &Tok::Caret {
            self.bump();
            self.enter()?;
            let exp = self.unary()?;
            self.depth -= 1;
            let span = base.span().to(exp.span());
            return Ok(Expr::Binary(BinOp::Pow, Box::new(base), Box::new(exp), span));
        }
        Ok(base)
    }

    fn primary(&mut self) -> Result<Expr, ModelError> {
        match self.peek().clone() {
            Tok::Num(v) => Ok(Expr::Num(v, self.bump().1)),
            Tok::LParen => {
                self.bump();
                let e = self.expr()?;
                self.expect(Tok::RParen, "`)`")?;
                Ok(e)
            }
            Tok::Ident(name) => {
                let name_span = self.bump().1;
                if self.peek() != &Tok::LParen {
                    return Ok(Expr::Name(name, name_span));
                }
                self.bump();
                let mut args = Vec::new();
                if self.peek() != &Tok::RParen {
                    loop {
                        args.push(self.expr()?);
                        if self.peek() != &Tok::Comma {
                            break;
                        }
                        self.bump();
                    }
                }
                let close = self.expect(Tok::RParen, "`)` or `,` in the argument list")?;
                let mut span = name_span.to(close);
                let mut index = None;
                if self.peek() == &Tok::LBracket {
                    self.bump();
                    let at = self.span();
                    match self.peek().clone() {
                        Tok::Num(v) if v >= 1.0 && v.fract() == 0.0 && v < 1e6 => {
                            self.bump();
                            index = Some((v as usize, at));
                        }
                        _ => return Err(self.err_here("an output index (1, 2, ...)")),
                    }
                    span = span.to(self.expect(Tok::RBracket, "`]`")?);
                }
                Ok(Expr::Call { name, name_span, args, index, span })
            }
            _ => Err(self.err_here("an expression")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(s: &str) -> Result<Vec<Stmt>, ModelError> {
        parse(&Source { file: "m.model", text: s })
    }

    #[test]
    fn precedence_and_power() {
        let st = parse_str("x = -a^2 + b * c ^ -d").unwrap();
        let Stmt::Assign(_, e) = &st[0] else { panic!() };
        let Expr::Binary(BinOp::Add, l, r, _) = e else { panic!("{e:?}") };
        assert!(matches!(**l, Expr::Unary(UnOp::Neg, ref inner, _) if matches!(**inner, Expr::Binary(BinOp::Pow, ..))));
        assert!(matches!(**r, Expr::Binary(BinOp::Mul, _, ref p, _) if matches!(**p, Expr::Binary(BinOp::Pow, ..))));
    }

    #[test]
    fn statements_of_every_kind() {
        let st = parse_str(
            "parameters: ka = 1.2, CL = -5e-1\nstates: depot, central\nnetwork g: 1 -> 4 -> 1 tanh\n\
             d/dt(depot) = -ka * depot\ncentral(0) = 0\nalag(depot) = 0.5\nf(depot) = 1\n\
             flux depot -> central = ka *\n  depot\nif (t > 2) { x = 1 } else { x = 2 }\noutput: cp = central / 2, x\n",
        )
        .unwrap();
        assert_eq!(st.len(), 10);
        assert!(matches!(&st[0], Stmt::Parameters(v) if v[1].value == Some(-0.5)));
        assert!(matches!(&st[2], Stmt::Network { widths, .. } if widths == &vec![1, 4, 1]));
        assert!(matches!(&st[5], Stmt::Dose(DoseAttr::Lag, ..)));
    }

    #[test]
    fn errors_have_line_column_and_caret() {
        let e = parse_str("states: a\nd/dt(a) = 2 * * a\n").unwrap_err().to_string();
        assert!(e.starts_with("m.model:2:15: expected an expression, found `*`"), "{e}");
        assert!(e.contains("2 | d/dt(a) = 2 * * a\n  |               ^"), "{e}");
    }
}
