//! The control file's YAML layer: one parse into a tree of nodes that know their line and
//! column, and a serde deserializer over that tree that reports every problem in the file at
//! once, each at its node, in the control file's own words.
//!
//! Why not `serde_yaml` for this: it is deprecated on its last release, and its maintained
//! drop-in fork `serde_yaml_ng` (which `inject`, `import` and `/config` use for
//! documents they rewrite) stops at the first error and knows a node's position only in that
//! error, so positions for later problems needed a second parse. `yaml-rust2` is maintained
//! and pure Rust; its parser marks every event, so one parse gives the tree and every position.
//! The config types keep their serde derives; only the deserializer is ours.
//!
//! **Every problem at once.** Derived serde code stops at the first error, so this reads the
//! file in passes. A node whose value is wrong (a type, an enum value, an unknown field, a
//! value its type's own parser refuses) has its problem recorded and is left out of the next
//! pass, where its siblings get checked. A field that becomes missing because its value was
//! left out is not reported twice. When a pass leaves nothing new out, a last pass builds the
//! result, the wrong nodes left out, so that the semantic checks run on what is left (and
//! `config::parse` drops their problems about a node that holds a wrong one). A part wrapped
//! in [`LENIENT`] (a route, a service, a section) comes out as failed when it is wrong as a
//! whole, or when one of its lists lost an item (later items' paths would shift); it keeps
//! its place, so later items keep their paths and references to it their target.
//! A valid file is read in one pass.

use std::{
    cell::{Cell, RefCell},
    collections::{BTreeSet, HashMap, HashSet},
    fmt,
};

use serde::de::{
    self, DeserializeSeed, EnumAccess, Expected, IntoDeserializer, MapAccess, SeqAccess,
    Unexpected, VariantAccess, Visitor,
};
use yaml_rust2::{
    parser::{Event, Parser},
    scanner::{Marker, TScalarStyle},
};

use super::{spelling::closest, Located, Pos};

mod fast;

/// The newtype name that marks a part parsed on its own (see [`super::file::Lenient`]).
pub const LENIENT: &str = "$remora::lenient";

/// Most nodes a document may expand to, aliases included (a "billion laughs" file is refused).
const MAX_NODES: usize = 1_000_000;

/// Most problems reported for one file; past it, the user has enough to fix first.
const MAX_PROBLEMS: usize = 200;

/// One node of the document.
#[derive(Debug, Clone)]
pub struct Node {
    /// Where the node starts.
    pub pos: Pos,
    /// Preorder number, unique in the document.
    id: u32,
    /// The largest `id` inside this node (its own when it has no children).
    last: u32,
    /// What the node holds.
    pub kind: Kind,
}

/// The three kinds of YAML node.
#[derive(Debug, Clone)]
pub enum Kind {
    /// A scalar: its text, and whether it was written plain (unquoted, so `1`, `true` and
    /// `~` mean a number, a boolean and null).
    Scalar {
        /// The scalar's text.
        text: String,
        /// Unquoted, untagged.
        plain: bool,
    },
    /// A sequence.
    Seq(Vec<Node>),
    /// A mapping, its entries in document order.
    Map(Vec<(Node, Node)>),
}

impl Node {
    /// The scalar text of this node, if it is a scalar.
    pub fn as_str(&self) -> Option<&str> {
        match &self.kind {
            Kind::Scalar { text, .. } => Some(text),
            _ => None,
        }
    }

    /// What an empty document is: a null at its start.
    fn empty_document() -> Node {
        Node {
            pos: Pos { line: 1, column: 1 },
            id: 0,
            last: 0,
            kind: Kind::Scalar {
                text: String::new(),
                plain: true,
            },
        }
    }

    fn is_null(&self) -> bool {
        matches!(&self.kind, Kind::Scalar { text, plain: true } if matches!(text.as_str(), "" | "~" | "null" | "Null" | "NULL"))
    }

    /// Every node's path (`outbound.routes[2].match`) with its position, and each mapping
    /// key's path with the key's position.
    pub fn positions(&self) -> (HashMap<String, Pos>, HashMap<String, Pos>) {
        fn walk(
            n: &Node,
            path: &mut String,
            values: &mut HashMap<String, Pos>,
            keys: &mut HashMap<String, Pos>,
        ) {
            values.entry(path.clone()).or_insert(n.pos);
            let len = path.len();
            match &n.kind {
                Kind::Scalar { .. } => {}
                Kind::Seq(items) => {
                    for (i, item) in items.iter().enumerate() {
                        path.push_str(&format!("[{i}]"));
                        walk(item, path, values, keys);
                        path.truncate(len);
                    }
                }
                Kind::Map(entries) => {
                    for (k, v) in entries {
                        if !path.is_empty() {
                            path.push('.');
                        }
                        path.push_str(k.as_str().unwrap_or("?"));
                        keys.entry(path.clone()).or_insert(k.pos);
                        walk(v, path, values, keys);
                        path.truncate(len);
                    }
                }
            }
        }
        let (mut values, mut keys) = (HashMap::new(), HashMap::new());
        walk(self, &mut String::new(), &mut values, &mut keys);
        (values, keys)
    }
}

fn pos(m: &Marker) -> Pos {
    Pos {
        line: m.line(),
        column: m.col() + 1,
    }
}

fn earlier(a: Pos, b: Pos) -> Pos {
    if (b.line, b.column) < (a.line, a.column) {
        b
    } else {
        a
    }
}

/// Parses `text` as one YAML document; an empty document is a null scalar.
pub fn parse(text: &str) -> Result<Node, Located> {
    match fast::parse(text) {
        Some(root) => Ok(root),
        None => parse_full(text),
    }
}

/// Parses `text` with the full YAML parser, which reads everything and names what is wrong.
fn parse_full(text: &str) -> Result<Node, Located> {
    let mut b = Builder {
        parser: Parser::new_from_str(text),
        anchors: HashMap::new(),
        next_id: 0,
    };
    let fail = |at: Pos, message: String| Located {
        line: at.line,
        column: at.column,
        path: String::new(),
        message,
    };
    let mut root = None;
    loop {
        let (ev, mark) = b.next()?;
        match ev {
            Event::StreamEnd => break,
            Event::StreamStart | Event::DocumentStart | Event::DocumentEnd | Event::Nothing => {}
            ev if root.is_none() => root = Some(b.node(ev, mark)?),
            _ => {
                return Err(fail(
                    pos(&mark),
                    "a control file is one YAML document; this starts a second".into(),
                ))
            }
        }
    }
    Ok(root.unwrap_or_else(Node::empty_document))
}

struct Builder<'a> {
    parser: Parser<std::str::Chars<'a>>,
    anchors: HashMap<usize, Node>,
    next_id: u32,
}

impl Builder<'_> {
    fn next(&mut self) -> Result<(Event, Marker), Located> {
        self.parser.next_token().map_err(|e| {
            let at = pos(e.marker());
            Located {
                line: at.line,
                column: at.column,
                path: String::new(),
                message: format!("YAML syntax: {}", e.info()),
            }
        })
    }

    fn id(&mut self, at: Pos) -> Result<u32, Located> {
        let id = self.next_id;
        if id as usize >= MAX_NODES {
            return Err(Located {
                line: at.line,
                column: at.column,
                path: String::new(),
                message: format!("the document expands to more than {MAX_NODES} nodes"),
            });
        }
        self.next_id += 1;
        Ok(id)
    }

    /// The node that starts with `ev`, read to its end.
    fn node(&mut self, ev: Event, mark: Marker) -> Result<Node, Located> {
        let at = pos(&mark);
        let node = |id, last, pos, kind| Node {
            pos,
            id,
            last,
            kind,
        };
        let (anchor, node) = match ev {
            Event::Scalar(text, style, anchor, tag) => {
                let id = self.id(at)?;
                let plain = style == TScalarStyle::Plain && tag.is_none();
                (anchor, node(id, id, at, Kind::Scalar { text, plain }))
            }
            Event::SequenceStart(anchor, _) => {
                let id = self.id(at)?;
                let mut items = Vec::new();
                loop {
                    let (ev, mark) = self.next()?;
                    if matches!(ev, Event::SequenceEnd) {
                        break;
                    }
                    items.push(self.node(ev, mark)?);
                }
                let start = items.first().map_or(at, |first| earlier(at, first.pos));
                (anchor, node(id, self.next_id - 1, start, Kind::Seq(items)))
            }
            Event::MappingStart(anchor, _) => {
                let id = self.id(at)?;
                let mut entries = Vec::new();
                loop {
                    let (ev, mark) = self.next()?;
                    if matches!(ev, Event::MappingEnd) {
                        break;
                    }
                    let key = self.node(ev, mark)?;
                    let (ev, mark) = self.next()?;
                    entries.push((key, self.node(ev, mark)?));
                }
                // A block mapping's start is marked after its first key.
                let start = entries.first().map_or(at, |(k, _)| earlier(at, k.pos));
                (
                    anchor,
                    node(id, self.next_id - 1, start, Kind::Map(entries)),
                )
            }
            Event::Alias(anchor) => {
                let Some(target) = self.anchors.get(&anchor).cloned() else {
                    return Err(Located {
                        line: at.line,
                        column: at.column,
                        path: String::new(),
                        message: "alias to an unknown anchor".into(),
                    });
                };
                let mut copy = target;
                self.renumber(&mut copy, at)?;
                return Ok(copy);
            }
            other => {
                return Err(Located {
                    line: at.line,
                    column: at.column,
                    path: String::new(),
                    message: format!("YAML syntax: unexpected {other:?}"),
                })
            }
        };
        if anchor > 0 {
            self.anchors.insert(anchor, node.clone());
        }
        Ok(node)
    }

    /// Gives an alias's copy fresh ids, so every node's subtree is one range of ids.
    fn renumber(&mut self, n: &mut Node, at: Pos) -> Result<(), Located> {
        n.id = self.id(at)?;
        match &mut n.kind {
            Kind::Scalar { .. } => {}
            Kind::Seq(items) => {
                for item in items {
                    self.renumber(item, at)?;
                }
            }
            Kind::Map(entries) => {
                for (k, v) in entries {
                    self.renumber(k, at)?;
                    self.renumber(v, at)?;
                }
            }
        }
        n.last = self.next_id - 1;
        Ok(())
    }
}

/// Deserializes `T` from `root`: the value when the last pass built one, and every problem
/// found, in document order.
pub fn from_node<T: de::DeserializeOwned>(root: &Node) -> (Option<T>, Vec<Located>) {
    let sink = Sink::default();
    let mut first = true;
    loop {
        let value = T::deserialize(De {
            node: root,
            trail: &Trail::Root,
            sink: &sink,
        });
        if first && sink.fresh.borrow().is_empty() && sink.problems.borrow().is_empty() {
            // Nothing wrong and nothing left out: this pass built what the last would.
            return (value.ok(), Vec::new());
        }
        first = false;
        let fresh = std::mem::take(&mut *sink.fresh.borrow_mut());
        let mut removed = sink.removed.borrow_mut();
        let before = removed.len();
        removed.extend(fresh);
        if removed.len() == before || sink.problems.borrow().len() >= MAX_PROBLEMS {
            break;
        }
    }
    sink.taint();
    sink.last_pass.set(true);
    let value = T::deserialize(De {
        node: root,
        trail: &Trail::Root,
        sink: &sink,
    })
    .ok();
    let mut problems: Vec<Located> = sink.problems.into_inner().into_values().collect();
    problems.sort_by(|a, b| (a.line, a.column, &a.path).cmp(&(b.line, b.column, &b.path)));
    if problems.len() > MAX_PROBLEMS {
        problems.truncate(MAX_PROBLEMS);
        let at = problems.last().map_or((1, 1), |p| (p.line, p.column));
        problems.push(Located {
            line: at.0,
            column: at.1,
            path: String::new(),
            message: format!("more than {MAX_PROBLEMS} problems; fix these first"),
        });
    }
    (value, problems)
}

/// Parses `text` and deserializes `T` from it: the tree (for positions of later problems),
/// the value, and every problem. A syntax error is the one problem and there is no tree.
pub fn from_str<T: de::DeserializeOwned>(text: &str) -> (Option<Node>, Option<T>, Vec<Located>) {
    match parse(text) {
        Ok(root) => {
            let (value, problems) = from_node(&root);
            (Some(root), value, problems)
        }
        Err(e) => (None, None, vec![e]),
    }
}

/// What the passes learn.
#[derive(Default)]
struct Sink {
    /// Problems by the node they are about and their text (a problem is found again in
    /// every pass that reads its node).
    problems: RefCell<std::collections::BTreeMap<(u32, String), Located>>,
    /// Ids of list items with a problem, to find the parts whose lists lose an item.
    items: RefCell<BTreeSet<u32>>,
    /// Nodes left out of this pass.
    removed: RefCell<HashSet<u32>>,
    /// Nodes found wrong in this pass, left out of the next.
    fresh: RefCell<Vec<u32>>,
    /// The parts read on their own, as first and last node id.
    parts: RefCell<std::collections::BTreeMap<u32, u32>>,
    /// The parts that fail as a whole in the last pass.
    tainted: RefCell<HashSet<u32>>,
    /// The pass that builds the result.
    last_pass: Cell<bool>,
}

impl Sink {
    fn record(&self, node: &Node, trail: &Trail<'_>, message: String) {
        if matches!(trail, Trail::Index(..)) {
            self.items.borrow_mut().insert(node.id);
        }
        let path = trail.path();
        self.problems
            .borrow_mut()
            .entry((node.id, message.clone()))
            .or_insert(Located {
                line: node.pos.line,
                column: node.pos.column,
                path,
                message,
            });
    }

    /// Whether the node is left out of this pass: a wrong one, except, in the last pass, a
    /// part (which keeps its place, failed).
    fn skipped(&self, node: &Node) -> bool {
        let removed = self.removed.borrow();
        !removed.is_empty()
            && removed.contains(&node.id)
            && !(self.last_pass.get() && self.parts.borrow().contains_key(&node.id))
    }

    /// The parts that fail as a whole: those wrong themselves, and the innermost part
    /// holding each list item left out.
    fn taint(&self) {
        let parts = self.parts.borrow();
        let removed = self.removed.borrow();
        let mut tainted = self.tainted.borrow_mut();
        tainted.extend(parts.keys().filter(|id| removed.contains(id)));
        for &p in self.items.borrow().iter() {
            let owner = parts.range(..=p).rev().find(|(_, last)| p <= **last);
            if let Some((&id, _)) = owner {
                tainted.insert(id);
            }
        }
    }
}

/// The field path to a node, kept on the stack while the deserializer descends.
enum Trail<'a> {
    Root,
    Key(&'a Trail<'a>, &'a str),
    Index(&'a Trail<'a>, usize),
}

impl Trail<'_> {
    fn path(&self) -> String {
        let mut s = String::new();
        self.write(&mut s);
        s
    }

    fn write(&self, s: &mut String) {
        match self {
            Trail::Root => {}
            Trail::Key(parent, key) => {
                parent.write(s);
                if !s.is_empty() {
                    s.push('.');
                }
                s.push_str(key);
            }
            Trail::Index(parent, i) => {
                parent.write(s);
                s.push_str(&format!("[{i}]"));
            }
        }
    }
}

/// A problem on its way up from the node it is about.
#[derive(Debug)]
pub struct Error {
    message: String,
    /// Already recorded at its node (the ancestors only pass it on).
    recorded: bool,
    /// A required field that is absent, named by serde's `missing_field`.
    missing: Option<&'static str>,
}

impl Error {
    fn new(message: String) -> Self {
        Self {
            message,
            recorded: false,
            missing: None,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

impl de::Error for Error {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Self::new(msg.to_string())
    }

    fn invalid_type(unexp: Unexpected<'_>, exp: &dyn Expected) -> Self {
        Self::new(format!(
            "expected {}, found {}",
            expected(exp),
            found(&unexp)
        ))
    }

    fn invalid_value(unexp: Unexpected<'_>, exp: &dyn Expected) -> Self {
        Self::new(format!(
            "expected {}, found {}",
            expected(exp),
            found(&unexp)
        ))
    }

    fn invalid_length(len: usize, exp: &dyn Expected) -> Self {
        Self::new(format!("expected {}, found {len} items", expected(exp)))
    }

    fn unknown_variant(variant: &str, known: &'static [&'static str]) -> Self {
        Self::new(format!(
            "unknown value `{variant}`: expected one of {}{}",
            known.join(", "),
            suggestion(variant, known)
        ))
    }

    fn unknown_field(field: &str, known: &'static [&'static str]) -> Self {
        let hint = suggestion(field, known);
        Self::new(if hint.is_empty() && !known.is_empty() {
            format!(
                "unknown field `{field}`; the fields here are {}",
                known.join(", ")
            )
        } else {
            format!("unknown field `{field}`{hint}")
        })
    }

    fn missing_field(field: &'static str) -> Self {
        Self {
            message: format!("`{field}` is required"),
            recorded: false,
            missing: Some(field),
        }
    }

    fn duplicate_field(field: &'static str) -> Self {
        Self::new(format!("`{field}` is given twice"))
    }
}

fn suggestion(name: &str, known: &[&str]) -> String {
    closest(name, known.iter().copied())
        .map(|k| format!(" (did you mean `{k}`?)"))
        .unwrap_or_default()
}

/// serde's name for what a visitor wants, in the control file's terms.
fn expected(exp: &dyn Expected) -> String {
    let text = exp.to_string();
    match text.as_str() {
        "u8" | "u16" | "u32" | "u64" | "u128" | "usize" => "a whole number, 0 or more".into(),
        "i8" | "i16" | "i32" | "i64" | "i128" | "isize" => "a whole number".into(),
        "f32" | "f64" => "a number".into(),
        "a boolean" => "true or false".into(),
        "a string" | "a borrowed string" | "a character" => "a string".into(),
        "a sequence" => "a list".into(),
        "a map" => "a mapping".into(),
        "unit" => "nothing".into(),
        t if t.starts_with("struct ") || t.starts_with("a map") => "a mapping of fields".into(),
        t if t.starts_with("enum ") => "one of the values listed for this field".into(),
        _ => text,
    }
}

/// What a node held, in the control file's terms.
fn found(unexp: &Unexpected<'_>) -> String {
    match unexp {
        Unexpected::Str(s) => format!("the string {s:?}"),
        Unexpected::Unsigned(n) => format!("the number {n}"),
        Unexpected::Signed(n) => format!("the number {n}"),
        Unexpected::Float(n) => format!("the number {n}"),
        Unexpected::Bool(b) => format!("{b}"),
        Unexpected::Unit => "an empty value".into(),
        Unexpected::Seq => "a list".into(),
        Unexpected::Map => "a mapping".into(),
        other => other.to_string(),
    }
}

/// What a plain scalar means under YAML 1.2's core schema.
enum Resolved<'a> {
    Null,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(&'a str),
}

fn resolve(text: &str, plain: bool) -> Resolved<'_> {
    if !plain {
        return Resolved::Str(text);
    }
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Resolved::Null,
        "true" | "True" | "TRUE" => return Resolved::Bool(true),
        "false" | "False" | "FALSE" => return Resolved::Bool(false),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => {
            return Resolved::Float(f64::INFINITY)
        }
        "-.inf" | "-.Inf" | "-.INF" => return Resolved::Float(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => return Resolved::Float(f64::NAN),
        _ => {}
    }
    if let Some(i) = int(text) {
        return Resolved::Int(i);
    }
    let float_like = text
        .bytes()
        .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-'))
        && text.bytes().any(|b| b.is_ascii_digit());
    match text.parse::<f64>() {
        Ok(f) if float_like => Resolved::Float(f),
        _ => Resolved::Str(text),
    }
}

fn int(text: &str) -> Option<i128> {
    let (neg, digits) = match text.as_bytes().first()? {
        b'-' => (true, &text[1..]),
        b'+' => (false, &text[1..]),
        _ => (false, text),
    };
    let value = if let Some(hex) = digits.strip_prefix("0x") {
        i128::from_str_radix(hex, 16).ok()?
    } else if let Some(oct) = digits.strip_prefix("0o") {
        i128::from_str_radix(oct, 8).ok()?
    } else if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        digits.parse().ok()?
    } else {
        return None;
    };
    Some(if neg { -value } else { value })
}

/// The deserializer for one node.
#[derive(Clone, Copy)]
struct De<'n, 't> {
    node: &'n Node,
    trail: &'t Trail<'t>,
    sink: &'n Sink,
}

impl<'n> De<'n, '_> {
    /// Records a problem that arose at this node (unless a child already did, or it is a
    /// field missing only because its value was left out) and leaves the node out of the
    /// next pass.
    fn fail(&self, mut e: Error) -> Error {
        if e.recorded {
            return e;
        }
        e.recorded = true;
        let consequence = e.missing.is_some_and(|field| match &self.node.kind {
            Kind::Map(entries) => entries.iter().any(|(k, _)| k.as_str() == Some(field)),
            _ => false,
        });
        if !consequence {
            let message = std::mem::take(&mut e.message);
            self.sink.record(self.node, self.trail, message);
            self.sink.fresh.borrow_mut().push(self.node.id);
        }
        e
    }

    fn unexpected(&self) -> Unexpected<'n> {
        match &self.node.kind {
            Kind::Scalar { text, plain } => match resolve(text, *plain) {
                Resolved::Null => Unexpected::Unit,
                Resolved::Bool(b) => Unexpected::Bool(b),
                Resolved::Int(i) => match u64::try_from(i) {
                    Ok(u) => Unexpected::Unsigned(u),
                    Err(_) => Unexpected::Signed(i64::try_from(i).unwrap_or(i64::MIN)),
                },
                Resolved::Float(f) => Unexpected::Float(f),
                Resolved::Str(s) => Unexpected::Str(s),
            },
            Kind::Seq(_) => Unexpected::Seq,
            Kind::Map(_) => Unexpected::Map,
        }
    }

    fn wrong_type<T>(&self, exp: &dyn Expected) -> Result<T, Error> {
        Err(self.fail(de::Error::invalid_type(self.unexpected(), exp)))
    }

    /// Runs `f` and records whatever it returns as an error at this node.
    fn at<T>(&self, f: impl FnOnce() -> Result<T, Error>) -> Result<T, Error> {
        f().map_err(|e| self.fail(e))
    }

    fn integer<'de, V: Visitor<'de>>(
        self,
        min: i128,
        max: i128,
        visitor: V,
    ) -> Result<V::Value, Error> {
        let Kind::Scalar { text, plain: true } = &self.node.kind else {
            return self.wrong_type(&visitor);
        };
        let Resolved::Int(i) = resolve(text, true) else {
            return self.wrong_type(&visitor);
        };
        if i < min || i > max {
            let range = if min == 0 {
                format!("expected a whole number from 0 to {max}, found {i}")
            } else {
                format!("expected a whole number from {min} to {max}, found {i}")
            };
            return Err(self.fail(Error::new(range)));
        }
        self.at(|| match u64::try_from(i) {
            Ok(u) => visitor.visit_u64(u),
            Err(_) => visitor.visit_i64(i as i64),
        })
    }
}

impl<'de> de::Deserializer<'de> for De<'de, '_> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match &self.node.kind {
            Kind::Scalar { text, plain } => self.at(|| match resolve(text, *plain) {
                Resolved::Null => visitor.visit_unit(),
                Resolved::Bool(b) => visitor.visit_bool(b),
                Resolved::Int(i) => match u64::try_from(i) {
                    Ok(u) => visitor.visit_u64(u),
                    Err(_) => match i64::try_from(i) {
                        Ok(s) => visitor.visit_i64(s),
                        Err(_) => visitor.visit_f64(i as f64),
                    },
                },
                Resolved::Float(f) => visitor.visit_f64(f),
                Resolved::Str(s) => visitor.visit_borrowed_str(s),
            }),
            Kind::Seq(_) => self.deserialize_seq(visitor),
            Kind::Map(_) => self.deserialize_map(visitor),
        }
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match &self.node.kind {
            Kind::Scalar { text, plain: true } => match resolve(text, true) {
                Resolved::Bool(b) => self.at(|| visitor.visit_bool(b)),
                _ => self.wrong_type(&visitor),
            },
            _ => self.wrong_type(&visitor),
        }
    }

    fn deserialize_i8<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        self.integer(i8::MIN.into(), i8::MAX.into(), v)
    }
    fn deserialize_i16<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        self.integer(i16::MIN.into(), i16::MAX.into(), v)
    }
    fn deserialize_i32<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        self.integer(i32::MIN.into(), i32::MAX.into(), v)
    }
    fn deserialize_i64<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        self.integer(i64::MIN.into(), i64::MAX.into(), v)
    }
    fn deserialize_u8<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        self.integer(0, u8::MAX.into(), v)
    }
    fn deserialize_u16<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        self.integer(0, u16::MAX.into(), v)
    }
    fn deserialize_u32<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        self.integer(0, u32::MAX.into(), v)
    }
    fn deserialize_u64<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        self.integer(0, u64::MAX.into(), v)
    }

    fn deserialize_f32<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        self.deserialize_f64(v)
    }

    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match &self.node.kind {
            Kind::Scalar { text, plain: true } => match resolve(text, true) {
                Resolved::Int(i) => self.at(|| visitor.visit_f64(i as f64)),
                Resolved::Float(f) => self.at(|| visitor.visit_f64(f)),
                _ => self.wrong_type(&visitor),
            },
            _ => self.wrong_type(&visitor),
        }
    }

    fn deserialize_char<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        self.deserialize_str(v)
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match &self.node.kind {
            Kind::Scalar { text, .. } if !self.node.is_null() => {
                self.at(|| visitor.visit_borrowed_str(text))
            }
            _ => self.wrong_type(&visitor),
        }
    }

    fn deserialize_string<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        self.deserialize_str(v)
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        self.deserialize_str(v)
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        self.deserialize_str(v)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        if self.node.is_null() {
            self.at(|| visitor.visit_none())
        } else {
            visitor.visit_some(self)
        }
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        if self.node.is_null() {
            self.at(|| visitor.visit_unit())
        } else {
            self.wrong_type(&visitor)
        }
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        v: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_unit(v)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        if name == LENIENT {
            if !self.sink.last_pass.get() {
                let mut parts = self.sink.parts.borrow_mut();
                parts.insert(self.node.id, self.node.last);
            } else if self.sink.tainted.borrow().contains(&self.node.id) {
                // Failed as a whole; its problems are recorded.
                return visitor.visit_unit();
            }
        }
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let Kind::Seq(items) = &self.node.kind else {
            return self.wrong_type(&visitor);
        };
        let sink = self.sink;
        let access = Seq {
            items: items.iter().enumerate(),
            trail: self.trail,
            sink,
        };
        self.at(|| visitor.visit_seq(access))
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, _len: usize, v: V) -> Result<V::Value, Error> {
        self.deserialize_seq(v)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        v: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_seq(v)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let Kind::Map(entries) = &self.node.kind else {
            return self.wrong_type(&visitor);
        };
        let mut seen = HashSet::new();
        let mut twice = HashSet::new();
        for (i, (k, _)) in entries.iter().enumerate() {
            if let Some(text) = k.as_str() {
                // Most mappings are a few keys: compared in place, without hashing.
                let again = if entries.len() <= 16 {
                    entries[..i].iter().any(|(e, _)| e.as_str() == Some(text))
                } else {
                    !seen.insert(text)
                };
                if again {
                    let trail = Trail::Key(self.trail, text);
                    self.sink
                        .record(k, &trail, format!("`{text}` is given twice"));
                    twice.insert(k.id);
                }
            }
        }
        let access = Map {
            entries: entries.iter(),
            twice,
            value: None,
            trail: self.trail,
            sink: self.sink,
        };
        self.at(|| visitor.visit_map(access))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_map(v)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        let sink = self.sink;
        match &self.node.kind {
            Kind::Scalar { .. } if !self.node.is_null() => self.at(|| {
                visitor.visit_enum(Enum {
                    tag: self.node,
                    content: None,
                    trail: self.trail,
                    sink,
                })
            }),
            Kind::Map(entries) if entries.len() == 1 => self.at(|| {
                visitor.visit_enum(Enum {
                    tag: &entries[0].0,
                    content: Some(&entries[0].1),
                    trail: self.trail,
                    sink,
                })
            }),
            _ => self.wrong_type(&visitor),
        }
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        self.deserialize_str(v)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_unit()
    }
}

struct Seq<'n, 't> {
    items: std::iter::Enumerate<std::slice::Iter<'n, Node>>,
    trail: &'t Trail<'t>,
    sink: &'n Sink,
}

impl<'de> SeqAccess<'de> for Seq<'de, '_> {
    type Error = Error;

    fn next_element_seed<S: DeserializeSeed<'de>>(
        &mut self,
        seed: S,
    ) -> Result<Option<S::Value>, Error> {
        for (i, node) in self.items.by_ref() {
            if self.sink.skipped(node) {
                continue;
            }
            let trail = Trail::Index(self.trail, i);
            let de = De {
                node,
                trail: &trail,
                sink: self.sink,
            };
            return seed.deserialize(de).map(Some).map_err(|e| de.fail(e));
        }
        Ok(None)
    }
}

struct Map<'n, 't> {
    entries: std::slice::Iter<'n, (Node, Node)>,
    /// Keys given a second time (recorded), left out.
    twice: HashSet<u32>,
    value: Option<&'n (Node, Node)>,
    trail: &'t Trail<'t>,
    sink: &'n Sink,
}

impl<'de> MapAccess<'de> for Map<'de, '_> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        for entry in self.entries.by_ref() {
            let (k, v) = entry;
            if self.sink.skipped(k) || self.sink.skipped(v) || self.twice.contains(&k.id) {
                continue;
            }
            let text = k.as_str().unwrap_or("?");
            let trail = Trail::Key(self.trail, text);
            let de = De {
                node: k,
                trail: &trail,
                sink: self.sink,
            };
            if k.as_str().is_none() {
                return Err(de.fail(Error::new("a key must be a plain name".into())));
            }
            self.value = Some(entry);
            return seed.deserialize(de).map(Some).map_err(|e| de.fail(e));
        }
        Ok(None)
    }

    fn next_value_seed<S: DeserializeSeed<'de>>(&mut self, seed: S) -> Result<S::Value, Error> {
        let (k, v) = self
            .value
            .take()
            .expect("serde asks for a value after its key");
        let trail = Trail::Key(self.trail, k.as_str().unwrap_or("?"));
        let de = De {
            node: v,
            trail: &trail,
            sink: self.sink,
        };
        seed.deserialize(de).map_err(|e| de.fail(e))
    }
}

struct Enum<'n, 't> {
    tag: &'n Node,
    content: Option<&'n Node>,
    trail: &'t Trail<'t>,
    sink: &'n Sink,
}

impl<'de, 't> EnumAccess<'de> for Enum<'de, 't> {
    type Error = Error;
    type Variant = Self;

    fn variant_seed<S: DeserializeSeed<'de>>(self, seed: S) -> Result<(S::Value, Self), Error> {
        let text = self.tag.as_str().unwrap_or_default();
        let v = seed.deserialize(text.into_deserializer())?;
        Ok((v, self))
    }
}

impl<'de> VariantAccess<'de> for Enum<'de, '_> {
    type Error = Error;

    fn unit_variant(self) -> Result<(), Error> {
        match self.content {
            None => Ok(()),
            Some(node) if node.is_null() => Ok(()),
            Some(_) => Err(Error::new("this value takes no settings".into())),
        }
    }

    fn newtype_variant_seed<S: DeserializeSeed<'de>>(self, seed: S) -> Result<S::Value, Error> {
        let Some(node) = self.content else {
            return Err(Error::new("this value needs settings under it".into()));
        };
        let key = self.tag.as_str().unwrap_or("?");
        let trail = Trail::Key(self.trail, key);
        seed.deserialize(De {
            node,
            trail: &trail,
            sink: self.sink,
        })
    }

    fn tuple_variant<V: Visitor<'de>>(self, _len: usize, visitor: V) -> Result<V::Value, Error> {
        self.struct_variant(&[], visitor)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        let Some(node) = self.content else {
            return Err(Error::new("this value needs settings under it".into()));
        };
        let key = self.tag.as_str().unwrap_or("?");
        let trail = Trail::Key(self.trail, key);
        de::Deserializer::deserialize_any(
            De {
                node,
                trail: &trail,
                sink: self.sink,
            },
            visitor,
        )
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Service {
        #[serde(default)]
        load_balancer: Balancer,
        #[serde(default)]
        connect_timeout: Option<u32>,
        #[serde(default)]
        weight: u8,
        name: String,
    }

    #[derive(Debug, Default, Deserialize, PartialEq)]
    #[serde(rename_all = "snake_case")]
    enum Balancer {
        #[default]
        RoundRobin,
        LeastRequest,
    }

    fn problems(text: &str) -> Vec<String> {
        let (_, _, problems) = from_str::<Vec<Service>>(text);
        problems
            .into_iter()
            .map(|p| format!("{}:{} {}: {}", p.line, p.column, p.path, p.message))
            .collect()
    }

    #[test]
    fn every_problem_in_one_part_is_found() {
        let text =
            "- name: a\n  load_balancer: leastrequest\n  connect_timeout: \"1\"\n  wieght: 300\n";
        assert_eq!(
            problems(text),
            [
                "2:18 [0].load_balancer: unknown value `leastrequest`: expected one of round_robin, least_request (did you mean `least_request`?)",
                "3:20 [0].connect_timeout: expected a whole number, 0 or more, found the string \"1\"",
                "4:3 [0].wieght: unknown field `wieght` (did you mean `weight`?)",
            ]
        );
    }

    #[test]
    fn a_missing_field_is_reported_once() {
        assert_eq!(problems("- weight: 1\n"), ["1:3 [0]: `name` is required"]);
        // `name` is there but wrong: its own problem, not "required" as well.
        assert_eq!(
            problems("- name: [x]\n"),
            ["1:9 [0].name: expected a string, found a list"]
        );
        assert_eq!(
            problems("- name: a\n  weight: 256\n"),
            ["2:11 [0].weight: expected a whole number from 0 to 255, found 256"]
        );
    }

    #[test]
    fn a_valid_document_deserializes_in_one_pass() {
        let (_, value, problems) =
            from_str::<Vec<Service>>("- { name: a, weight: 0x10, load_balancer: least_request }");
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(
            value.unwrap(),
            [Service {
                load_balancer: Balancer::LeastRequest,
                connect_timeout: None,
                weight: 16,
                name: "a".into()
            }]
        );
    }

    #[test]
    fn syntax_errors_duplicates_and_aliases() {
        let p = problems("- name: [a\n");
        assert_eq!(p.len(), 1);
        assert!(p[0].contains("YAML syntax"), "{p:?}");
        assert_eq!(
            problems("- name: a\n  name: b\n"),
            ["2:3 [0].name: `name` is given twice"]
        );
        let (_, value, problems) =
            from_str::<Vec<Service>>("- &s { name: a }\n- *s\n- name: \"null\"\n");
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(value.unwrap()[1].name, "a");
        let laughs = "a: &a [x,x,x,x,x,x,x,x,x,x]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b]\nd: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d,*d]\nf: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e,*e]\n";
        let err = parse(laughs).unwrap_err();
        assert!(err.message.contains("more than"), "{err:?}");
    }

    #[test]
    fn core_schema_scalars() {
        assert!(matches!(resolve("1.5", true), Resolved::Float(_)));
        assert!(matches!(resolve("-7", true), Resolved::Int(-7)));
        assert!(matches!(resolve("0o17", true), Resolved::Int(15)));
        assert!(matches!(resolve("~", true), Resolved::Null));
        assert!(matches!(resolve("1.2.3.4", true), Resolved::Str(_)));
        assert!(matches!(resolve("1e3", true), Resolved::Float(_)));
        assert!(matches!(resolve("true", false), Resolved::Str(_)));
        assert!(matches!(resolve("yes", true), Resolved::Str(_)));
    }
}
