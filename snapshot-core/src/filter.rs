//! containerd's filter language, used by `walk` (and `ctr snapshots ls`).
//!
//! ```text
//! selectors := selector ("," selector)*
//! selector  := fieldpath [operator value]
//! fieldpath := field ("." field)*
//! field     := quoted | [A-Za-z0-9_]+
//! operator  := "==" | "!=" | "~="
//! value     := quoted | [^\s,]+
//! quoted    := a Go string literal in "..."; values of "~=" may also use /.../ or |...|
//! ```
//!
//! A comma is AND inside one filter string; several strings are OR ([`FilterSet`]).
//! A selector without an operator tests presence. `==` needs the field present and
//! equal; `!=` matches when the value differs, so a missing field matches `!=`; `~=` is a
//! regular-expression search. An empty string matches everything.
//!
//! Parse errors carry containerd's exact messages and position marker
//! (`[labels. >|?|< "x"]: expected field or quoted`). Where Go and Rust strings differ,
//! the filter is stricter rather than silently different: a regular expression that does
//! not compile is InvalidArgument at parse time (containerd logs it and matches nothing),
//! a quoted string whose escapes do not form UTF-8 (`"\xff"`) is a quote syntax error,
//! and the position marker spans a whole character where Go cuts one byte.
//!
//! ```
//! use snapshot_core::filter::{FilterSet, Fields};
//! use std::borrow::Cow;
//!
//! struct Obj;
//! impl Fields for Obj {
//!     fn field(&self, path: &[String]) -> Option<Cow<'_, str>> {
//!         match path.first().map(String::as_str) {
//!             Some("name") => Some("layer-1".into()),
//!             _ => None,
//!         }
//!     }
//! }
//! let f = FilterSet::parse(&["name==layer-2", "name~=^layer"]).unwrap();
//! assert!(f.matches(&Obj));
//! assert!(!FilterSet::parse(&["labels.x"]).unwrap().matches(&Obj));
//! assert!(FilterSet::parse(&["name=="]).is_err());
//! ```

use std::borrow::Cow;
use std::fmt;
use std::sync::OnceLock;

use regex::Regex;

use crate::error::{Error, Result};
use crate::types::Info;

/// An object the filter language can look into: the value of a field path, or `None` if
/// the field is not present.
pub trait Fields {
    /// The value at `path` (e.g. `["labels", "containerd.io/gc.root"]`), if present.
    fn field(&self, path: &[String]) -> Option<Cow<'_, str>>;
}

impl Fields for Info {
    /// containerd's snapshot adaptor: `name` and `parent` are always present (`parent` is
    /// "" for roots), `kind` is `active|view|committed`, `labels.<k>` is present only if
    /// the label exists (a label key holding dots is the rest of the path joined by ".").
    fn field(&self, path: &[String]) -> Option<Cow<'_, str>> {
        let (first, rest) = path.split_first()?;
        match first.as_str() {
            "name" => Some(Cow::Borrowed(&self.name)),
            "parent" => Some(Cow::Borrowed(&self.parent)),
            "kind" => Some(Cow::Borrowed(self.kind.as_filter_str())),
            "labels" => {
                if rest.is_empty() {
                    return None;
                }
                let key = rest.join(".");
                self.labels.get(&key).map(|v| Cow::Borrowed(v.as_str()))
            }
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
enum Op {
    Present,
    Equal(String),
    NotEqual(String),
    Matches(Regex),
}

#[derive(Debug, Clone)]
struct Selector {
    path: Vec<String>,
    op: Op,
}

impl Selector {
    fn matches(&self, obj: &dyn Fields) -> bool {
        let value = obj.field(&self.path);
        match &self.op {
            Op::Present => value.is_some(),
            Op::Equal(v) => value.is_some_and(|x| x == *v),
            Op::NotEqual(v) => value.as_deref().unwrap_or("") != v,
            Op::Matches(re) => re.is_match(value.as_deref().unwrap_or("")),
        }
    }
}

/// One parsed filter string: every selector must match (AND).
#[derive(Debug, Clone, Default)]
pub struct Filter {
    selectors: Vec<Selector>,
}

impl Filter {
    /// Parses one filter string. An empty string matches everything.
    ///
    /// # Errors
    /// InvalidArgument with containerd's message, which marks the position of the fault:
    /// `filters: parse error: [name==foo,]: expected field or quoted`.
    pub fn parse(input: &str) -> Result<Filter> {
        if input.is_empty() {
            return Ok(Filter::default());
        }
        Parser::new(input)
            .selectors()
            .map(|selectors| Filter { selectors })
            .map_err(|e| Error::invalid_argument(format!("filters: {e}")))
    }

    /// True if every selector matches `obj`.
    pub fn matches(&self, obj: &dyn Fields) -> bool {
        self.selectors.iter().all(|s| s.matches(obj))
    }
}

/// Several filter strings: an object matches if any of them matches (OR). No strings at
/// all match everything.
#[derive(Debug, Clone, Default)]
pub struct FilterSet {
    filters: Vec<Filter>,
}

impl FilterSet {
    /// Parses every string (containerd's `ParseAll`).
    ///
    /// # Errors
    /// InvalidArgument for the first string that does not parse.
    pub fn parse<S: AsRef<str>>(inputs: &[S]) -> Result<FilterSet> {
        let filters = inputs
            .iter()
            .map(|s| Filter::parse(s.as_ref()))
            .collect::<Result<_>>()?;
        Ok(FilterSet { filters })
    }

    /// True if no filter was given, so everything matches.
    pub fn is_empty(&self) -> bool {
        self.filters.is_empty()
    }

    /// True if any filter matches `obj`, or if there are no filters.
    pub fn matches(&self, obj: &dyn Fields) -> bool {
        self.filters.is_empty() || self.filters.iter().any(|f| f.matches(obj))
    }
}

/// A parse failure at a byte position of the input, rendered as containerd does.
struct ParseError {
    input: String,
    pos: usize,
    msg: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.pos < self.input.len() {
            let len = self.input[self.pos..]
                .chars()
                .next()
                .map_or(1, char::len_utf8);
            let (before, at) = self.input.split_at(self.pos);
            let (loc, after) = at.split_at(len);
            write!(f, "parse error: [{before} >|{loc}|< {after}]: {}", self.msg)
        } else {
            write!(f, "parse error: [{}]: {}", self.input, self.msg)
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tok {
    Eof,
    Quoted,
    Value,
    Field,
    Separator,
    Operator,
    Illegal,
    Char(char),
}

/// The next character as the scanner sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ch {
    Eof,
    Illegal,
    C(char),
}

struct Scanner<'a> {
    input: &'a str,
    pos: usize,
    ppos: usize,
    value: bool,
    err: Option<&'static str>,
}

impl<'a> Scanner<'a> {
    fn next(&mut self) -> Ch {
        if self.pos >= self.input.len() {
            return Ch::Eof;
        }
        self.pos = self.ppos;
        let Some(c) = self.input[self.ppos..].chars().next() else {
            return Ch::Eof;
        };
        self.ppos += c.len_utf8();
        // Go's scanner sees U+FFFD as a decoding error even when it is spelled out whole.
        if c == char::REPLACEMENT_CHARACTER {
            self.error("rune error");
            return Ch::Illegal;
        }
        if c == '\0' {
            self.error("unexpected null");
            return Ch::Illegal;
        }
        Ch::C(c)
    }

    fn peek(&mut self) -> Ch {
        let (pos, ppos) = (self.pos, self.ppos);
        let c = self.next();
        self.pos = pos;
        self.ppos = ppos;
        c
    }

    fn error(&mut self, msg: &'static str) {
        if self.err.is_none() {
            self.err = Some(msg);
        }
    }

    fn scan(&mut self) -> (usize, Tok, &'a str) {
        let mut ch = self.next();
        let mut pos = self.pos;
        loop {
            match ch {
                Ch::Eof => return (self.pos, Tok::Eof, ""),
                Ch::Illegal => return (self.pos, Tok::Illegal, ""),
                Ch::C(c) if is_quote(c) => {
                    let ok = self.scan_quoted(c);
                    let text = &self.input[pos..self.ppos];
                    return (pos, if ok { Tok::Quoted } else { Tok::Illegal }, text);
                }
                Ch::C(',' | '.') => {
                    self.value = false;
                    return (pos, Tok::Separator, &self.input[pos..self.ppos]);
                }
                Ch::C('=' | '!' | '~') => {
                    while matches!(self.peek(), Ch::C('=' | '!' | '~')) {
                        self.next();
                    }
                    self.value = true;
                    return (pos, Tok::Operator, &self.input[pos..self.ppos]);
                }
                Ch::C(c) if c.is_whitespace() => {
                    ch = self.next();
                    pos = self.pos;
                }
                Ch::C(_) if self.value => {
                    while matches!(self.peek(), Ch::C(c) if is_value(c)) {
                        self.next();
                    }
                    self.value = false;
                    return (pos, Tok::Value, &self.input[pos..self.ppos]);
                }
                Ch::C(c) if is_field(c) => {
                    while matches!(self.peek(), Ch::C(c) if is_field(c)) {
                        self.next();
                    }
                    return (pos, Tok::Field, &self.input[pos..self.ppos]);
                }
                Ch::C(c) => return (self.pos, Tok::Char(c), ""),
            }
        }
    }

    fn scan_quoted(&mut self, quote: char) -> bool {
        let mut illegal = false;
        let mut ch = self.next();
        while ch != Ch::C(quote) {
            match ch {
                Ch::C('\n') | Ch::Eof | Ch::Illegal => {
                    self.error("quoted literal not terminated");
                    return false;
                }
                Ch::C('\\') => {
                    let (c, legal) = self.scan_escape(quote);
                    ch = c;
                    illegal |= !legal;
                }
                _ => ch = self.next(),
            }
        }
        !illegal
    }

    fn scan_escape(&mut self, quote: char) -> (Ch, bool) {
        match self.next() {
            Ch::C('a' | 'b' | 'f' | 'n' | 'r' | 't' | 'v' | '\\') => (self.next(), true),
            Ch::C(c) if c == quote => (self.next(), true),
            Ch::C(c @ '0'..='7') => self.scan_digits(Ch::C(c), 8, 3),
            Ch::C('x') => {
                let c = self.next();
                self.scan_digits(c, 16, 2)
            }
            Ch::C('u') => {
                let c = self.next();
                self.scan_digits(c, 16, 4)
            }
            Ch::C('U') => {
                let c = self.next();
                self.scan_digits(c, 16, 8)
            }
            other => {
                self.error("illegal escape sequence");
                (other, false)
            }
        }
    }

    fn scan_digits(&mut self, mut ch: Ch, base: u32, mut n: u32) -> (Ch, bool) {
        while n > 0 && matches!(ch, Ch::C(c) if c.to_digit(16).is_some_and(|d| d < base)) {
            ch = self.next();
            n -= 1;
        }
        if n > 0 {
            self.error("illegal numeric escape sequence");
            return (ch, false);
        }
        (ch, true)
    }
}

fn is_quote(c: char) -> bool {
    matches!(c, '/' | '|' | '"')
}

fn is_field(c: char) -> bool {
    c == '_' || c.is_ascii_alphanumeric()
}

/// Go's `isValueRune`: not a comma, not a space, and graphic (Unicode categories L, M, N,
/// P, S); so format, private-use and unassigned code points end a value.
fn is_value(c: char) -> bool {
    if c.is_ascii() {
        return c != ',' && c.is_ascii_graphic();
    }
    static GRAPHIC: OnceLock<Regex> = OnceLock::new();
    let graphic = GRAPHIC.get_or_init(|| {
        Regex::new(r"^[\p{L}\p{M}\p{N}\p{P}\p{S}]$").expect("static character class")
    });
    let mut buf = [0u8; 4];
    !c.is_whitespace() && graphic.is_match(c.encode_utf8(&mut buf))
}

struct Parser<'a> {
    input: &'a str,
    scanner: Scanner<'a>,
}

type PResult<T> = std::result::Result<T, ParseError>;

impl<'a> Parser<'a> {
    fn new(input: &'a str) -> Self {
        Parser {
            input,
            scanner: Scanner {
                input,
                pos: 0,
                ppos: 0,
                value: false,
                err: None,
            },
        }
    }

    fn err(&self, pos: usize, msg: impl Into<String>) -> ParseError {
        ParseError {
            input: self.input.to_string(),
            pos,
            msg: msg.into(),
        }
    }

    fn scanner_err(&self, pos: usize) -> ParseError {
        self.err(pos, self.scanner.err.unwrap_or("illegal input"))
    }

    fn selectors(&mut self) -> PResult<Vec<Selector>> {
        let mut out = vec![self.selector()?];
        loop {
            match self.scanner.peek() {
                Ch::C(',') => {
                    let (pos, tok, _) = self.scanner.scan();
                    if tok != Tok::Separator {
                        return Err(self.err(pos, "expected a separator"));
                    }
                    out.push(self.selector()?);
                }
                Ch::Eof => return Ok(out),
                Ch::C(c) => {
                    return Err(self.err(self.scanner.ppos, format!("unexpected input: {c}")))
                }
                // Go prints the illegal token as a rune, which renders as U+FFFD.
                Ch::Illegal => {
                    return Err(self.err(
                        self.scanner.ppos,
                        format!("unexpected input: {}", char::REPLACEMENT_CHARACTER),
                    ))
                }
            }
        }
    }

    fn selector(&mut self) -> PResult<Selector> {
        let path = self.fieldpath()?;
        if matches!(self.scanner.peek(), Ch::C(',') | Ch::Eof) {
            return Ok(Selector {
                path,
                op: Op::Present,
            });
        }
        let (pos, tok, text) = self.scanner.scan();
        let op = match tok {
            Tok::Operator => match text {
                "==" | "!=" | "~=" => text,
                _ => return Err(self.err(pos, format!("unsupported operator {text:?}"))),
            },
            Tok::Illegal => return Err(self.scanner_err(pos)),
            _ => return Err(self.err(pos, r#"expected an operator ("=="|"!="|"~=")"#)),
        };
        let value = self.value(op == "~=")?;
        let op = match op {
            "==" => Op::Equal(value),
            "!=" => Op::NotEqual(value),
            _ => match Regex::new(&value) {
                Ok(re) => Op::Matches(re),
                Err(e) => return Err(self.err(pos, format!("invalid regular expression: {e}"))),
            },
        };
        Ok(Selector { path, op })
    }

    fn fieldpath(&mut self) -> PResult<Vec<String>> {
        let mut path = vec![self.field()?];
        while self.scanner.peek() == Ch::C('.') {
            let (pos, tok, _) = self.scanner.scan();
            if tok != Tok::Separator {
                return Err(self.err(pos, "expected a field separator (`.`)"));
            }
            path.push(self.field()?);
        }
        Ok(path)
    }

    fn field(&mut self) -> PResult<String> {
        let (pos, tok, text) = self.scanner.scan();
        match tok {
            Tok::Field => Ok(text.to_string()),
            Tok::Quoted => self.unquote(pos, text, false),
            Tok::Illegal => Err(self.scanner_err(pos)),
            _ => Err(self.err(pos, "expected field or quoted")),
        }
    }

    fn value(&mut self, alt_quotes: bool) -> PResult<String> {
        let (pos, tok, text) = self.scanner.scan();
        match tok {
            Tok::Value | Tok::Field => Ok(text.to_string()),
            Tok::Quoted => self.unquote(pos, text, alt_quotes),
            Tok::Illegal => Err(self.scanner_err(pos)),
            _ => Err(self.err(pos, "expected value or quoted")),
        }
    }

    fn unquote(&self, pos: usize, s: &str, alt_quotes: bool) -> PResult<String> {
        if !alt_quotes && !s.starts_with('"') && !s.starts_with('\'') {
            return Err(self.err(pos, "invalid quote encountered"));
        }
        unquote(s).ok_or_else(|| self.err(pos, "unquoting failed: quote syntax error"))
    }
}

/// Go's `strconv.Unquote` for `"`, `/` and `|` quotes (the last two escape their own
/// quote character as `"` does).
fn unquote(s: &str) -> Option<String> {
    let quote = s.chars().next()?;
    if s.len() < 2 || !s.ends_with(quote) {
        return None;
    }
    let body = &s[1..s.len() - 1];
    let mut out = Vec::with_capacity(body.len());
    let mut chars = body.chars();
    while let Some(c) = chars.next() {
        if c == quote || c == '\n' {
            return None;
        }
        if c != '\\' {
            let mut buf = [0u8; 4];
            out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            continue;
        }
        let e = chars.next()?;
        let simple = match e {
            'a' => Some(7u8),
            'b' => Some(8),
            'f' => Some(12),
            'n' => Some(b'\n'),
            'r' => Some(b'\r'),
            't' => Some(b'\t'),
            'v' => Some(11),
            '\\' => Some(b'\\'),
            '\'' | '"' | '|' | '/' if e == quote => Some(e as u8),
            _ => None,
        };
        if let Some(b) = simple {
            out.push(b);
            continue;
        }
        match e {
            'x' | 'u' | 'U' => {
                let n = match e {
                    'x' => 2,
                    'u' => 4,
                    _ => 8,
                };
                let mut v: u32 = 0;
                for _ in 0..n {
                    v = v << 4 | chars.next()?.to_digit(16)?;
                }
                if e == 'x' {
                    out.push(v as u8);
                } else {
                    if v > u32::from(char::MAX) {
                        return None;
                    }
                    // Go encodes a surrogate half as U+FFFD instead of refusing it.
                    let c = char::from_u32(v).unwrap_or(char::REPLACEMENT_CHARACTER);
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
            }
            '0'..='7' => {
                let mut v = e.to_digit(8)?;
                for _ in 0..2 {
                    v = v << 3 | chars.next()?.to_digit(8)?;
                }
                out.push(u8::try_from(v).ok()?);
            }
            _ => return None,
        }
    }
    String::from_utf8(out).ok()
}
