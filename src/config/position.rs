//! Line and column of every node in a YAML document, keyed by field path
//! (`outbound.routes[2].backends[0].service`), so config errors can point at the text.

use std::collections::HashMap;

use yaml_rust2::{
    parser::{Event, MarkedEventReceiver, Parser},
    scanner::Marker,
};

/// A 1-based line and column in the control file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pos {
    /// Line, starting at 1.
    pub line: usize,
    /// Column, starting at 1.
    pub column: usize,
}

/// Positions of keys and values by field path.
#[derive(Debug, Default)]
pub struct PositionIndex {
    values: HashMap<String, Pos>,
    keys: HashMap<String, Pos>,
}

impl PositionIndex {
    /// Indexes `text`; a document the indexer cannot read yields an empty index.
    pub fn build(text: &str) -> Self {
        let mut rx = Receiver::default();
        let mut parser = Parser::new_from_str(text);
        if parser.load(&mut rx, false).is_err() {
            return Self::default();
        }
        rx.index
    }

    /// The best position for an error at `path`: the value, else the key, else the nearest
    /// enclosing node that has a position.
    pub fn locate(&self, path: &str) -> Pos {
        let mut p = path;
        loop {
            if let Some(pos) = self.values.get(p).or_else(|| self.keys.get(p)) {
                return *pos;
            }
            match p.rfind(['.', '[']) {
                Some(i) => p = &p[..i],
                None => return Pos { line: 1, column: 1 },
            }
        }
    }

    /// The position of the key `field` inside the mapping at `path`, if it exists.
    pub fn key(&self, path: &str, field: &str) -> Option<Pos> {
        self.keys.get(&join(path, field)).copied()
    }
}

fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_owned()
    } else {
        format!("{parent}.{key}")
    }
}

enum Frame {
    Map { path: String, key: Option<String> },
    Seq { path: String, index: usize },
}

#[derive(Default)]
struct Receiver {
    stack: Vec<Frame>,
    index: PositionIndex,
}

impl Receiver {
    /// The path of the node that starts now, or `None` when it is a mapping key.
    fn next_path(&mut self, mark: Marker, scalar: Option<&str>) -> Option<String> {
        let pos = Pos {
            line: mark.line(),
            column: mark.col() + 1,
        };
        match self.stack.last_mut() {
            None => Some(String::new()),
            Some(Frame::Seq { path, index }) => {
                let p = format!("{path}[{index}]");
                *index += 1;
                Some(p)
            }
            Some(Frame::Map { path, key }) => match key.take() {
                Some(k) => Some(join(path, &k)),
                None => {
                    let k = scalar.unwrap_or("?").to_owned();
                    self.index.keys.insert(join(path, &k), pos);
                    *key = Some(k);
                    None
                }
            },
        }
        .inspect(|p| {
            self.index.values.entry(p.clone()).or_insert(pos);
        })
    }
}

impl MarkedEventReceiver for Receiver {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        match ev {
            Event::Scalar(ref v, ..) => {
                self.next_path(mark, Some(v));
            }
            Event::Alias(_) => {
                self.next_path(mark, None);
            }
            Event::MappingStart(..) => {
                let path = self.next_path(mark, None).unwrap_or_default();
                self.stack.push(Frame::Map { path, key: None });
            }
            Event::SequenceStart(..) => {
                let path = self.next_path(mark, None).unwrap_or_default();
                self.stack.push(Frame::Seq { path, index: 0 });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locates_nested_values_and_keys() {
        let text = "a:\n  b:\n    - x: 1\n      y: [10, 20]\n    - { x: 2 }\n";
        let idx = PositionIndex::build(text);
        assert_eq!(
            idx.locate("a.b[0].x"),
            Pos {
                line: 3,
                column: 10
            }
        );
        assert_eq!(
            idx.locate("a.b[0].y[1]"),
            Pos {
                line: 4,
                column: 15
            }
        );
        assert_eq!(
            idx.locate("a.b[1].x"),
            Pos {
                line: 5,
                column: 12
            }
        );
        assert_eq!(idx.key("a.b[0]", "y"), Some(Pos { line: 4, column: 7 }));
        // Missing paths fall back to the nearest ancestor.
        assert_eq!(idx.locate("a.b[1].zzz"), idx.locate("a.b[1]"));
    }
}
