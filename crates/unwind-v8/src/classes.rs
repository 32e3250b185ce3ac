//! Where a script's class bodies are, from its source text: a small JavaScript scanner that
//! knows strings, template literals, comments and regular expression literals well enough to
//! match braces, and remembers the `{ ... }` that follows `class [Name] [extends ...]`.
//!
//! V8 keeps a class's scope (and so its source range) in a method's ScopeInfo only when the
//! class needs a context (it does in sloppy code, not in strict code unless the class refers
//! to itself or uses `super`), so naming `Class.method` cannot rely on it. The scanner reads
//! a source in chunks (it never needs the whole text at once) and keeps only the bodies.
//!
//! Regular expressions are told from divisions by the token before the `/`, as every
//! JavaScript tokenizer does without a full parser; the ambiguous cases (`) /x/` after an
//! `if (...)`, `} /x/` after a block) are taken as divisions, which in practice only ever
//! misreads code that no one writes.

/// One class body in a script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassBody {
    /// Where the `class` keyword is (UTF-16 units).
    pub keyword: u32,
    /// Where the body's `{` is.
    pub body_start: u32,
    /// Where its `}` is.
    pub body_end: u32,
    /// `class Name`'s name; `None` for a class expression without one.
    pub name: Option<String>,
}

/// Most class bodies remembered per script.
pub const MAX_CLASSES: usize = 1 << 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Code,
    LineComment,
    BlockComment,
    String(u16),
    Template,
    Regex { in_class: bool },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Open {
    /// A `{`; `Some(i)`: the body of the `i`-th class seen.
    Brace(Option<usize>),
    Paren,
    Bracket,
    /// `${` inside a template literal.
    TemplateExpr,
}

/// What the last significant token was, to tell a regular expression from a division.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Prev {
    /// Nothing yet, an operator or opening punctuation, or a keyword that an expression
    /// follows: a `/` starts a regular expression.
    ExpressionStart,
    /// A value (identifier, number, string, `)`, `]`, `}`): a `/` divides.
    Value,
    /// A `.`: the next identifier is a property name, never a keyword.
    Dot,
}

/// A class keyword seen, waiting for its body.
#[derive(Debug, Clone)]
struct Pending {
    keyword: u32,
    depth: usize,
    name: Option<String>,
    /// Still right after `class`: the next identifier is the name (unless `extends`).
    expect_name: bool,
}

/// The scanner: feed it the source in order, then take the bodies.
#[derive(Debug, Clone)]
pub struct ClassScanner {
    at: u32,
    mode: Mode,
    stack: Vec<Open>,
    prev: Prev,
    /// A unit held back because the next one decides what it is (`/`, `$`, `*`, `\`).
    held: Option<u16>,
    ident: Vec<u16>,
    ident_start: u32,
    pending: Option<Pending>,
    bodies: Vec<ClassBody>,
    /// Bodies opened and not closed yet (indexes into `bodies`).
    open_bodies: usize,
}

impl Default for ClassScanner {
    fn default() -> Self {
        Self::new()
    }
}

const KEYWORDS_BEFORE_EXPRESSION: &[&str] = &[
    "return",
    "typeof",
    "instanceof",
    "in",
    "of",
    "new",
    "delete",
    "void",
    "throw",
    "case",
    "do",
    "else",
    "yield",
    "await",
];

fn is_id_start(c: u16) -> bool {
    matches!(c, 0x24 | 0x5f) || (0x41..=0x5a).contains(&c) || (0x61..=0x7a).contains(&c) || c > 0x7f
}

fn is_id_part(c: u16) -> bool {
    is_id_start(c) || (0x30..=0x39).contains(&c)
}

fn is_line_end(c: u16) -> bool {
    matches!(c, 0x0a | 0x0d | 0x2028 | 0x2029)
}

impl ClassScanner {
    /// A scanner at the start of a script.
    pub fn new() -> Self {
        ClassScanner {
            at: 0,
            mode: Mode::Code,
            stack: Vec::new(),
            prev: Prev::ExpressionStart,
            held: None,
            ident: Vec::new(),
            ident_start: 0,
            pending: None,
            bodies: Vec::new(),
            open_bodies: 0,
        }
    }

    /// The scanner's brace, paren and bracket depth now.
    pub fn depth(&self) -> usize {
        self.stack.len()
    }

    /// Scans the next part of the source.
    pub fn feed(&mut self, chunk: &[u16]) {
        for &c in chunk {
            self.unit(c);
            self.at = self.at.wrapping_add(1);
        }
    }

    /// The class bodies found (those closed before the end).
    pub fn finish(mut self) -> Vec<ClassBody> {
        self.end_ident();
        self.bodies.retain(|b| b.body_end != u32::MAX);
        self.bodies
    }

    fn end_ident(&mut self) {
        if self.ident.is_empty() {
            return;
        }
        let word = String::from_utf16_lossy(&self.ident);
        self.ident.clear();
        let after_dot = self.prev == Prev::Dot;
        if !after_dot && word == "class" {
            self.pending = Some(Pending {
                keyword: self.ident_start,
                depth: self.stack.len(),
                name: None,
                expect_name: true,
            });
            self.prev = Prev::ExpressionStart;
            return;
        }
        if let Some(p) = &mut self.pending
            && p.expect_name
        {
            p.expect_name = false;
            if word != "extends" && p.depth == self.stack.len() {
                p.name = Some(word.clone());
            }
        }
        self.prev = if !after_dot && KEYWORDS_BEFORE_EXPRESSION.contains(&word.as_str()) {
            Prev::ExpressionStart
        } else {
            Prev::Value
        };
    }

    fn open(&mut self, o: Open) {
        if self.stack.len() < 4096 {
            self.stack.push(o);
        }
    }

    fn close(&mut self, c: u16) {
        // A `}` that closes a template's `${`: back in the template.
        let top = self.stack.last().copied();
        match (c, top) {
            (0x7d, Some(Open::TemplateExpr)) => {
                self.stack.pop();
                self.mode = Mode::Template;
            }
            (0x7d, Some(Open::Brace(class))) => {
                self.stack.pop();
                if let Some(i) = class {
                    if let Some(b) = self.bodies.get_mut(i) {
                        b.body_end = self.at;
                    }
                    self.open_bodies = self.open_bodies.saturating_sub(1);
                }
            }
            (0x29, Some(Open::Paren)) | (0x5d, Some(Open::Bracket)) => {
                self.stack.pop();
            }
            // Unbalanced: keep going (the source is malformed or was misread).
            _ => {}
        }
        if let Some(p) = &self.pending
            && self.stack.len() < p.depth
        {
            self.pending = None;
        }
        self.prev = Prev::Value;
    }

    fn code(&mut self, c: u16) {
        if is_id_part(c) && (!self.ident.is_empty() || is_id_start(c)) {
            if self.ident.is_empty() {
                self.ident_start = self.at;
            }
            self.ident.push(c);
            return;
        }
        if (0x30..=0x39).contains(&c) {
            // A number: a value, its digits never start an identifier.
            self.end_ident();
            self.prev = Prev::Value;
            return;
        }
        self.end_ident();
        match c {
            0x20 | 0x09 | 0x0b | 0x0c | 0xa0 | 0xfeff => {}
            c if is_line_end(c) => {}
            0x27 | 0x22 => self.mode = Mode::String(c),
            0x60 => self.mode = Mode::Template,
            0x2f => self.held = Some(0x2f),
            0x7b => {
                let body = match &self.pending {
                    Some(p) if p.depth == self.stack.len() => {
                        let p = self.pending.take().unwrap_or(Pending {
                            keyword: self.at,
                            depth: 0,
                            name: None,
                            expect_name: false,
                        });
                        if self.bodies.len() < MAX_CLASSES {
                            self.bodies.push(ClassBody {
                                keyword: p.keyword,
                                body_start: self.at,
                                body_end: u32::MAX,
                                name: p.name,
                            });
                            self.open_bodies += 1;
                            Some(self.bodies.len() - 1)
                        } else {
                            None
                        }
                    }
                    _ => None,
                };
                self.open(Open::Brace(body));
                self.prev = Prev::ExpressionStart;
            }
            0x28 => {
                self.open(Open::Paren);
                self.prev = Prev::ExpressionStart;
            }
            0x5b => {
                self.open(Open::Bracket);
                self.prev = Prev::ExpressionStart;
            }
            0x7d | 0x29 | 0x5d => self.close(c),
            0x2e => self.prev = Prev::Dot,
            0x3b => {
                if self
                    .pending
                    .as_ref()
                    .is_some_and(|p| p.depth == self.stack.len())
                {
                    self.pending = None;
                }
                self.prev = Prev::ExpressionStart;
            }
            _ => {
                if let Some(p) = &mut self.pending {
                    p.expect_name = false;
                }
                self.prev = Prev::ExpressionStart;
            }
        }
    }

    fn unit(&mut self, c: u16) {
        if let Some(h) = self.held.take()
            && self.held_then(h, c)
        {
            return;
        }
        match self.mode {
            Mode::Code => self.code(c),
            Mode::LineComment => {
                if is_line_end(c) {
                    self.mode = Mode::Code;
                }
            }
            Mode::BlockComment => {
                if c == 0x2a {
                    self.held = Some(c);
                }
            }
            Mode::String(q) => {
                if c == 0x5c {
                    self.held = Some(c);
                } else if c == q || is_line_end(c) {
                    self.mode = Mode::Code;
                    self.prev = Prev::Value;
                }
            }
            Mode::Template => match c {
                0x5c | 0x24 => self.held = Some(c),
                0x60 => {
                    self.mode = Mode::Code;
                    self.prev = Prev::Value;
                }
                _ => {}
            },
            Mode::Regex { in_class } => match c {
                0x5c => self.held = Some(c),
                0x5b => self.mode = Mode::Regex { in_class: true },
                0x5d => self.mode = Mode::Regex { in_class: false },
                0x2f if !in_class => {
                    self.mode = Mode::Code;
                    self.prev = Prev::Value;
                }
                c if is_line_end(c) => self.mode = Mode::Code,
                _ => {}
            },
        }
    }

    /// Decides what a held unit was, now that the next one is known; true when `c` was
    /// consumed with it.
    fn held_then(&mut self, h: u16, c: u16) -> bool {
        match (self.mode, h) {
            (Mode::Code, 0x2f) => match c {
                0x2f => {
                    self.mode = Mode::LineComment;
                    true
                }
                0x2a => {
                    self.mode = Mode::BlockComment;
                    true
                }
                _ if self.prev == Prev::Value => {
                    // A division.
                    if let Some(p) = &mut self.pending {
                        p.expect_name = false;
                    }
                    self.prev = Prev::ExpressionStart;
                    false
                }
                _ => {
                    self.mode = Mode::Regex { in_class: false };
                    false
                }
            },
            (Mode::BlockComment, 0x2a) if c == 0x2f => {
                self.mode = Mode::Code;
                true
            }
            // An escape: the next unit is taken as it is.
            (_, 0x5c) => true,
            (Mode::Template, 0x24) if c == 0x7b => {
                self.open(Open::TemplateExpr);
                self.mode = Mode::Code;
                self.prev = Prev::ExpressionStart;
                true
            }
            _ => false,
        }
    }
}

/// The class bodies of a whole source.
pub fn class_bodies(source: &[u16]) -> Vec<ClassBody> {
    let mut s = ClassScanner::new();
    s.feed(source);
    s.finish()
}

/// Whether `position` is a direct member of the class body `body` of `source`: inside the
/// body's braces and not inside anything nested in them. `window` is the source from just
/// after the body's `{` up to the position.
pub fn is_direct_member(window: &[u16]) -> bool {
    let mut s = ClassScanner::new();
    s.feed(window);
    s.depth() == 0 && s.mode == Mode::Code
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u(s: &str) -> Vec<u16> {
        s.encode_utf16().collect()
    }

    fn names(src: &str) -> Vec<(Option<String>, String)> {
        let text = u(src);
        class_bodies(&text)
            .into_iter()
            .map(|b| {
                (
                    b.name,
                    String::from_utf16_lossy(&text[b.body_start as usize..=b.body_end as usize]),
                )
            })
            .collect()
    }

    #[test]
    fn classes_are_found_with_their_bodies() {
        let got = names(
            "'use strict';\nclass A { m() { return '}' + `${ {a:1}.a }`; } }\n\
             const B = class extends mixin({ x: 1 }) { n() { return /[}]/.test(x) / 2; } };\n\
             // class Commented { }\n/* class Block { } */\n\
             obj.class = 3; class C extends (q ? A : B) { static s() {} }",
        );
        assert_eq!(
            got,
            vec![
                (
                    Some("A".to_string()),
                    "{ m() { return '}' + `${ {a:1}.a }`; } }".to_string()
                ),
                (None, "{ n() { return /[}]/.test(x) / 2; } }".to_string()),
                (Some("C".to_string()), "{ static s() {} }".to_string()),
            ]
        );
    }

    #[test]
    fn nested_classes_and_divisions() {
        let got = names("class Outer { m() { class Inner { k() { return a / b / c; } } } }");
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].0.as_deref(), Some("Outer"));
        assert_eq!(got[1].0.as_deref(), Some("Inner"));
        assert!(got[1].1.ends_with("} }"));
    }

    #[test]
    fn direct_members() {
        assert!(is_direct_member(&u(" a() { return 1; } b")));
        assert!(!is_direct_member(&u(" a() { return { c")));
        assert!(!is_direct_member(&u(" a() { const s = '")));
        assert!(is_direct_member(&u(" a() { return `}`; } static b")));
    }
}
