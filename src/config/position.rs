//! Line and column of every node in the parsed control file, keyed by field path
//! (`outbound.routes[2].backends[0].service`), so problems found after parsing can point at
//! the text.

use std::collections::HashMap;

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
    /// Indexes the parsed document `root`.
    pub fn build(root: &super::yaml::Node) -> Self {
        let (values, keys) = root.positions();
        Self { values, keys }
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locates_nested_values_and_keys() {
        let text = "a:\n  b:\n    - x: 1\n      y: [10, 20]\n    - { x: 2 }\n";
        let idx = PositionIndex::build(&super::super::yaml::parse(text).unwrap());
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
        // Missing paths fall back to the nearest ancestor.
        assert_eq!(idx.locate("a.b[1].zzz"), idx.locate("a.b[1]"));
    }
}
