//! A fast reader for the shape nearly every control file has: block mappings and
//! sequences, flow collections, and one-line plain and quoted scalars. It builds the very
//! tree [`super::parse`]'s full YAML parser builds, positions included, or gives up.
//!
//! Why hand-written: a fleet's control file (1,000 routes and services, 250 KB) takes
//! `yaml-rust2`'s scanner about 12 ms, a third of a reload, while this reads it in a
//! fraction of that. It never reports a problem: at anything it does not know (anchors,
//! tags, block scalars, multi-line plain or quoted scalars, tabs, complex keys, a second
//! document, any syntax error) it returns `None` and the full parser reads the file, and
//! says what is wrong. Where it answers, the answer is the full parser's: the tests compare
//! the two over every construct it reads and over thousands of mutated files.

use super::{Kind, Node, MAX_NODES};
use crate::config::Pos;

/// The document's tree, or `None` when the full parser must read it.
pub(super) fn parse(text: &str) -> Option<Node> {
    let b = text.as_bytes();
    // Tabs, carriage returns, other control bytes and a byte-order mark are the full
    // parser's to judge.
    if b.iter().any(|&c| c < 0x20 && c != b'\n') || text.starts_with('\u{feff}') {
        return None;
    }
    let mut p = Reader {
        text,
        b,
        i: 0,
        line: 1,
        line_start: 0,
        ascii: text.is_ascii(),
        next_id: 0,
    };
    p.skip_to_content();
    if p.at(0) == b'-' && p.at(1) == b'-' && p.at(2) == b'-' && p.col0() == 0 {
        if p.at(3) != b'\n' {
            return None;
        }
        p.i += 3;
        p.skip_to_content();
        if p.eof() {
            return None;
        }
    }
    if p.eof() {
        return Some(Node::empty_document());
    }
    if p.doc_marker() {
        return None;
    }
    let root = p.block(-1)?;
    p.eof().then_some(root)
}

/// The longest key read here, in bytes. YAML allows a simple key 1,024 characters; one
/// near that is left to the full parser, which judges it (and counts characters, not bytes).
const MAX_KEY: usize = 1000;

/// A scalar read but not yet numbered (a block mapping's id comes before its first key's).
struct Scalar {
    pos: Pos,
    text: String,
    plain: bool,
}

struct Reader<'a> {
    text: &'a str,
    b: &'a [u8],
    /// The byte at the cursor.
    i: usize,
    /// The cursor's line, from 1.
    line: usize,
    /// Where the cursor's line starts.
    line_start: usize,
    /// Whether a column is a byte count (else a count of characters).
    ascii: bool,
    next_id: u32,
}

fn is_flow_indicator(c: u8) -> bool {
    matches!(c, b',' | b'[' | b']' | b'{' | b'}')
}

/// Whether `c` ends a token in block context (a space, a line end, the end).
fn is_break(c: u8) -> bool {
    matches!(c, b' ' | b'\n' | 0)
}

impl Reader<'_> {
    /// The byte `k` past the cursor; 0 at the end (the text holds no NUL).
    fn at(&self, k: usize) -> u8 {
        self.b.get(self.i + k).copied().unwrap_or(0)
    }

    fn eof(&self) -> bool {
        self.i >= self.b.len()
    }

    fn col0(&self) -> usize {
        if self.ascii {
            self.i - self.line_start
        } else {
            self.text[self.line_start..self.i].chars().count()
        }
    }

    fn pos(&self) -> Pos {
        Pos {
            line: self.line,
            column: self.col0() + 1,
        }
    }

    fn id(&mut self) -> Option<u32> {
        let id = self.next_id;
        if id as usize >= MAX_NODES {
            return None;
        }
        self.next_id += 1;
        Some(id)
    }

    fn leaf(&mut self, s: Scalar) -> Option<Node> {
        let id = self.id()?;
        Some(Node {
            pos: s.pos,
            id,
            last: id,
            kind: Kind::Scalar {
                text: s.text,
                plain: s.plain,
            },
        })
    }

    fn skip_spaces(&mut self) {
        while self.at(0) == b' ' {
            self.i += 1;
        }
    }

    fn newline(&mut self) {
        self.i += 1;
        self.line += 1;
        self.line_start = self.i;
    }

    /// A `#` here starts a comment: it is first on its line or follows a space.
    fn at_comment(&self) -> bool {
        self.at(0) == b'#' && (self.i == self.line_start || self.b[self.i - 1] == b' ')
    }

    fn skip_comment(&mut self) {
        while !matches!(self.at(0), b'\n' | 0) {
            self.i += 1;
        }
    }

    /// Past spaces, comments and line ends, to the next content or the end.
    fn skip_to_content(&mut self) {
        loop {
            self.skip_spaces();
            if self.at(0) == b'\n' {
                self.newline();
            } else if self.at_comment() {
                self.skip_comment();
            } else {
                return;
            }
        }
    }

    /// Whether only spaces and a comment are left on the line.
    fn rest_of_line_empty(&mut self) -> bool {
        self.skip_spaces();
        matches!(self.at(0), b'\n' | 0) || self.at_comment()
    }

    /// `---` or `...` at a line's start: another document, the full parser's.
    fn doc_marker(&self) -> bool {
        self.col0() == 0
            && ((self.at(0) == b'-' && self.at(1) == b'-' && self.at(2) == b'-')
                || (self.at(0) == b'.' && self.at(1) == b'.' && self.at(2) == b'.'))
            && is_break(self.at(3))
    }

    /// A block sequence's `- ` here.
    fn dash(&self) -> bool {
        self.at(0) == b'-' && is_break(self.at(1))
    }

    /// A block mapping's `: ` here.
    fn colon(&self) -> bool {
        self.at(0) == b':' && is_break(self.at(1))
    }

    /// The null a missing value stands for, where the full parser marks it: at the next
    /// content.
    fn empty_here(&mut self) -> Option<Node> {
        let pos = self.pos();
        if self.eof() && self.b.last() != Some(&b'\n') {
            // Where the full parser marks the end of a file without a final line end is
            // its own business.
            return None;
        }
        self.leaf(Scalar {
            pos,
            text: String::new(),
            plain: true,
        })
    }

    /// The null of an empty sequence item followed by the next item: marked after that
    /// item's dash and spaces.
    fn empty_before_dash(&mut self) -> Option<Node> {
        let mut k = 1;
        while self.at(k) == b' ' {
            k += 1;
        }
        let pos = Pos {
            line: self.line,
            column: self.col0() + k + 1,
        };
        self.leaf(Scalar {
            pos,
            text: String::new(),
            plain: true,
        })
    }

    /// After a scalar or a flow collection in a block: the line ends, and the next
    /// content is no deeper than the collection holding it (deeper would continue a plain
    /// scalar or be a mistake).
    fn after_value(&mut self, parent: isize) -> Option<()> {
        if !self.rest_of_line_empty() {
            return None;
        }
        self.skip_to_content();
        if !self.eof() && (self.col0() as isize > parent || self.doc_marker()) {
            return None;
        }
        Some(())
    }

    /// The block node at the cursor, inside a collection indented `parent` columns.
    fn block(&mut self, parent: isize) -> Option<Node> {
        let col = self.col0() as isize;
        if col <= parent {
            return None;
        }
        if self.dash() {
            return self.block_seq(col, false);
        }
        if matches!(self.at(0), b'[' | b'{') {
            let node = self.flow(parent)?;
            self.after_value(parent)?;
            return Some(node);
        }
        let first = self.scalar(false)?;
        self.skip_spaces();
        if self.colon() {
            return self.block_map(col, first);
        }
        let node = self.leaf(first)?;
        self.after_value(parent)?;
        Some(node)
    }

    /// A block mapping at `indent` whose first key has been read; the cursor is at its `:`.
    fn block_map(&mut self, indent: isize, first: Scalar) -> Option<Node> {
        let id = self.id()?;
        let pos = first.pos;
        let mut entries = Vec::new();
        let mut key = first;
        loop {
            if key.text.len() > MAX_KEY {
                return None;
            }
            self.i += 1;
            let k = self.leaf(key)?;
            let v = self.map_value(indent)?;
            entries.push((k, v));
            if self.eof() {
                break;
            }
            let col = self.col0() as isize;
            if col < indent {
                break;
            }
            if col > indent || self.doc_marker() || self.dash() {
                return None;
            }
            if matches!(self.at(0), b'[' | b'{') {
                return None;
            }
            key = self.scalar(false)?;
            self.skip_spaces();
            if !self.colon() {
                return None;
            }
        }
        Some(Node {
            pos,
            id,
            last: self.next_id - 1,
            kind: Kind::Map(entries),
        })
    }

    /// The value after a block mapping's `:`; leaves the cursor at the next content.
    fn map_value(&mut self, indent: isize) -> Option<Node> {
        self.skip_spaces();
        if matches!(self.at(0), b'\n' | 0) || self.at_comment() {
            self.skip_to_content();
            if self.eof() {
                return self.empty_here();
            }
            let col = self.col0() as isize;
            if col > indent {
                return self.block(indent);
            }
            if col == indent && self.dash() {
                return self.block_seq(indent, true);
            }
            return self.empty_here();
        }
        if matches!(self.at(0), b'[' | b'{') {
            let node = self.flow(indent)?;
            self.after_value(indent)?;
            return Some(node);
        }
        if self.dash() {
            return None;
        }
        let s = self.scalar(false)?;
        let node = self.leaf(s)?;
        self.after_value(indent)?;
        Some(node)
    }

    /// A block sequence whose dashes are at `indent`; the cursor is at the first. One
    /// written at its mapping key's indent (`indentless`) is marked after its first dash.
    fn block_seq(&mut self, indent: isize, indentless: bool) -> Option<Node> {
        let id = self.id()?;
        let mut items = Vec::new();
        let mut pos = None;
        loop {
            let dash = self.pos();
            self.i += 1;
            self.skip_spaces();
            pos.get_or_insert(if indentless { self.pos() } else { dash });
            let item = if matches!(self.at(0), b'\n' | 0) {
                self.skip_to_content();
                let col = self.col0() as isize;
                if self.eof() {
                    self.empty_here()?
                } else if col > indent {
                    self.block(indent)?
                } else if col == indent && self.dash() {
                    self.empty_before_dash()?
                } else {
                    self.empty_here()?
                }
            } else if self.at(0) == b'#' || self.dash() {
                return None;
            } else {
                self.block(indent)?
            };
            items.push(item);
            if self.eof() {
                break;
            }
            let col = self.col0() as isize;
            if col < indent {
                break;
            }
            if col > indent || self.doc_marker() {
                return None;
            }
            if !self.dash() {
                if indentless {
                    break;
                }
                return None;
            }
        }
        Some(Node {
            pos: pos?,
            id,
            last: self.next_id - 1,
            kind: Kind::Seq(items),
        })
    }

    /// Spaces, comments and line ends inside a flow collection; a line it moves to must
    /// be indented past the block holding the collection. Whether it crossed a line.
    fn flow_space(&mut self, parent: isize) -> Option<bool> {
        let mut crossed = false;
        loop {
            self.skip_spaces();
            if self.at(0) == b'\n' {
                self.newline();
                crossed = true;
            } else if self.at_comment() {
                self.skip_comment();
            } else {
                break;
            }
        }
        if crossed && !self.eof() && self.col0() as isize <= parent {
            return None;
        }
        Some(crossed)
    }

    /// A flow sequence or mapping at the cursor (`[` or `{`).
    fn flow(&mut self, parent: isize) -> Option<Node> {
        let pos = self.pos();
        let id = self.id()?;
        let open = self.at(0);
        self.i += 1;
        let kind = if open == b'[' {
            let mut items = Vec::new();
            loop {
                self.flow_space(parent)?;
                if self.at(0) == b']' {
                    break;
                }
                items.push(self.flow_node(parent)?);
                self.flow_space(parent)?;
                match self.at(0) {
                    b',' => self.i += 1,
                    b']' => break,
                    _ => return None,
                }
            }
            Kind::Seq(items)
        } else {
            let mut entries = Vec::new();
            loop {
                self.flow_space(parent)?;
                if self.at(0) == b'}' {
                    break;
                }
                if matches!(self.at(0), b'[' | b'{') {
                    return None;
                }
                let key = self.scalar(true)?;
                if key.text.len() > MAX_KEY {
                    return None;
                }
                self.skip_spaces();
                if self.at(0) != b':' {
                    return None;
                }
                self.i += 1;
                let k = self.leaf(key)?;
                self.flow_space(parent)?;
                if matches!(self.at(0), b',' | b'}') {
                    return None;
                }
                let v = self.flow_node(parent)?;
                entries.push((k, v));
                self.flow_space(parent)?;
                match self.at(0) {
                    b',' => self.i += 1,
                    b'}' => break,
                    _ => return None,
                }
            }
            Kind::Map(entries)
        };
        self.i += 1;
        Some(Node {
            pos,
            id,
            last: self.next_id - 1,
            kind,
        })
    }

    /// A node inside a flow collection.
    fn flow_node(&mut self, parent: isize) -> Option<Node> {
        if matches!(self.at(0), b'[' | b'{') {
            return self.flow(parent);
        }
        let s = self.scalar(true)?;
        if s.plain && matches!(self.at(0), b'\n') {
            // A plain scalar may go on past a line end: only a separator may follow.
            let save = (self.i, self.line, self.line_start);
            self.flow_space(parent)?;
            if !matches!(self.at(0), b',' | b']' | b'}') {
                return None;
            }
            (self.i, self.line, self.line_start) = save;
        }
        self.leaf(s)
    }

    /// A one-line scalar at the cursor: plain, single- or double-quoted.
    fn scalar(&mut self, flow: bool) -> Option<Scalar> {
        let pos = self.pos();
        match self.at(0) {
            b'"' | b'\'' => self.quoted(pos, flow),
            _ => self.plain(pos, flow),
        }
    }

    fn plain(&mut self, pos: Pos, flow: bool) -> Option<Scalar> {
        let first = self.at(0);
        if matches!(
            first,
            b'#' | b'&' | b'*' | b'!' | b'|' | b'>' | b'%' | b'@' | b'`' | b'?' | b':'
        ) || is_flow_indicator(first)
            || is_break(first)
            || (first == b'-' && (is_break(self.at(1)) || is_flow_indicator(self.at(1))))
        {
            return None;
        }
        let start = self.i;
        let mut end = self.i;
        loop {
            let c = self.at(0);
            match c {
                0 | b'\n' => break,
                b' ' => {
                    self.i += 1;
                    // The full parser reads a word after a space as a scalar's start.
                    if self.at(0) == b'-' && is_flow_indicator(self.at(1)) {
                        return None;
                    }
                    continue;
                }
                b'#' if self.b[self.i - 1] == b' ' => break,
                b':' if is_break(self.at(1)) || (flow && is_flow_indicator(self.at(1))) => break,
                c if flow && is_flow_indicator(c) => break,
                _ => {
                    self.i += 1;
                    end = self.i;
                }
            }
        }
        Some(Scalar {
            pos,
            text: self.text[start..end].to_owned(),
            plain: true,
        })
    }

    /// After a quoted scalar: what may follow it on its line.
    fn after_quote(&self, flow: bool) -> bool {
        let c = self.at(0);
        is_break(c) || c == b':' || (flow && is_flow_indicator(c))
    }

    /// A one-line quoted scalar: in single quotes `''` is a quote; in double quotes a few
    /// common escapes are read (any other is the full parser's).
    fn quoted(&mut self, pos: Pos, flow: bool) -> Option<Scalar> {
        let quote = self.at(0);
        self.i += 1;
        let mut text = String::new();
        let mut from = self.i;
        loop {
            let c = self.at(0);
            let escaped = match (quote, c) {
                (_, 0 | b'\n') => return None,
                (b'\'', b'\'') if self.at(1) == b'\'' => '\'',
                (b'"', b'\\') => match self.at(1) {
                    b'"' => '"',
                    b'\\' => '\\',
                    b'/' => '/',
                    b'n' => '\n',
                    b't' => '\t',
                    b'r' => '\r',
                    b'0' => '\0',
                    _ => return None,
                },
                _ if c == quote => break,
                _ => {
                    self.i += 1;
                    continue;
                }
            };
            text.push_str(&self.text[from..self.i]);
            text.push(escaped);
            self.i += 2;
            from = self.i;
        }
        text.push_str(&self.text[from..self.i]);
        self.i += 1;
        self.after_quote(flow).then_some(Scalar {
            pos,
            text,
            plain: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The full parser's tree, as text.
    fn full(text: &str) -> Result<String, String> {
        super::super::parse_full(text)
            .map(|n| format!("{n:?}"))
            .map_err(|e| e.message)
    }

    /// Where the fast reader answers, it answers as the full parser does.
    fn agrees(text: &str) -> bool {
        let Some(fast) = parse(text) else {
            return false;
        };
        match full(text) {
            Ok(tree) => assert_eq!(format!("{fast:?}"), tree, "for:\n{text}"),
            Err(e) => panic!("the full parser refuses ({e}), the fast one reads: {text:?}"),
        }
        true
    }

    const READ: &[&str] = &[
        "",
        "# only a comment\n",
        "a: 1\n",
        "a: 1",
        "---\na: 1\n",
        "a: 1\nb:\nc:\n  - x\n  - \"q\"\n  -\n  - y: 1\n    z: 's'\nd:\n- 1\n- 2\ne: { f: g, h: [1, 2,], i: 127.0.0.1:80 }\nk:   \n# c\nl: [ ]\n",
        "d:\n-\n- 2\nf:\n  -\n  - 3\ng:\n  - a: \n      b\n  -   c  # x\n  - \"k\": v\n    'l' : w\nh: [\n  1, 2\n  ]\ni: x y\nj:\n",
        "a:\n  b:\n",
        "- a\n-\n",
        "a:\n  b:\nc: 1\nd:\n-\n-\n- 2\ne:\n  - f:\n  -   g:\n",
        "a: b#c\nd: 'it''s'\ne: \"x\\ty\\\"z\\\\\"\nf: -1\ng: a:b\nh: http://x/y?z=1\n",
        "outbound:\n  listen: 127.0.0.1:0\n  routes:\n    - name: r0\n      match: { host: a.b, path: { prefix: /api/ } }\n      backends: [{ service: s0 }]\n      timeout: 2s\n",
        "- [a, b]\n- {a: 1}\n- 'q'\n-   \"d\"   # c\n",
        "a: [ \"x\", 'y', z ]\nb: {\"k\": 1, 'l': [2]}\n",
        "a: Grüße # ç\nb: ü\n",
        "a:\n  - b\n  -\nc: 1\n",
        "-\n  - a\n  -\n- b\n",
        "-\n  a: 1\n-\n  - x\n",
        "a:\n\n  b: 1\n\n\nc: 2\n",
        "top:\n  - name: x\n    list:\n    - 1\n    - 2\n    next: y\n  - name: z\n",
        "a: {}\nb: []\nc: {x: [], y: {}}\n",
        "a: [1,\n    2,\n    3]\n",
    ];

    #[test]
    fn reads_what_a_control_file_holds_as_the_full_parser_does() {
        for text in READ {
            assert!(agrees(text), "the fast reader gave up on:\n{text}");
        }
    }

    #[test]
    fn leaves_the_rest_to_the_full_parser() {
        for text in [
            "a: &x 1\nb: *x\n",
            "a: !!str 1\n",
            "a: |\n  text\n",
            "a: >\n  text\n",
            "a: b\n  c\n",
            "a: \"b\n  c\"\n",
            "a:\tb\n",
            "a: b\r\n",
            "? a\n: b\n",
            "a: 1\n---\nb: 2\n",
            "a: 1\n...\n",
            "a: b: c\n",
            "a:\n  b: 1\n   c: 2\n",
            "- - a\n",
            "a: [b\n c]\n",
            "a: \"\\u00e9\"\n",
            "[a]: b\n",
            "{a: }\n",
            "a:\n  b:",
            "- a\n -b\n",
            "a: 'x'y\n",
        ] {
            assert!(!agrees(text), "the fast reader read:\n{text}");
        }
    }

    #[test]
    fn reads_the_shipped_configs() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/config");
        let mut read = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "yaml") {
                let text = std::fs::read_to_string(&path).unwrap();
                assert!(agrees(&text), "gave up on {}", path.display());
                read += 1;
            }
        }
        assert!(read >= 2);
    }

    /// A small deterministic generator, so a failure repeats.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> usize {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 >> 16) as usize
        }
    }

    #[test]
    fn agrees_with_the_full_parser_on_mutated_files() {
        let pieces = [
            " ", "  ", "\n", "\n  ", "- ", "-", ":", ": ", "#", " #", "'", "\"", "[", "]", "{",
            "}", ",", "a", "b: ", "\\", "---", "...", "x: [", "''", "\\\"", "~", "ü",
        ];
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        let (mut fast, mut total) = (0, 0);
        for base in READ {
            for _ in 0..400 {
                let mut text: Vec<char> = base.chars().collect();
                for _ in 0..1 + rng.next() % 3 {
                    let at = rng.next() % (text.len() + 1);
                    match rng.next() % 3 {
                        0 if at < text.len() => {
                            text.remove(at);
                        }
                        _ => {
                            let piece = pieces[rng.next() % pieces.len()];
                            for (k, c) in piece.chars().enumerate() {
                                text.insert(at + k, c);
                            }
                        }
                    }
                }
                let text: String = text.into_iter().collect();
                total += 1;
                if agrees(&text) {
                    fast += 1;
                }
            }
        }
        // The mutations must leave plenty for the fast reader to answer, or this proves
        // nothing.
        assert!(
            fast * 5 > total,
            "the fast reader answered {fast} of {total}"
        );
    }
}
