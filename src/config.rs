//! The control file: its serde shape (`file`), its compilation into runtime settings
//! (`compile`), and error reports that point at the file's line and column.
//!
//! A config is loaded in three steps: YAML syntax and types (serde, each route, service and
//! section on its own so one mistake does not hide the next), then semantic checks
//! (addresses, regexes, references between routes and services), then positions for every
//! problem from an index of the document's nodes.

pub mod compile;
pub mod diff;
pub mod duration;
pub mod file;
mod lint;
mod position;
pub mod size;
pub mod spelling;
pub mod yaml;

use std::{fmt, path::Path};

pub use compile::{
    Compiled, Effective, InboundSpec, Limits, OutboundSpec, Problem, ShutdownSettings, Startup,
};
pub use position::Pos;
use position::PositionIndex;

/// The environment variable whose comma-separated ports join both directions'
/// `opaque_ports` (how `remora inject` passes a pod's `remora.io/opaque-ports`).
pub const OPAQUE_PORTS_ENV: &str = "REMORA_OPAQUE_PORTS";

/// A config that cannot be used, with every problem found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file name as given (used as the prefix of each line).
    pub file: String,
    /// The problems, in document order.
    pub problems: Vec<Located>,
}

/// A problem with its place in the file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Located {
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// Field path (empty for the document as a whole).
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigError {
    /// One line per problem: `FILE:LINE:COLUMN: field.path: message`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{}:{}:{}: ", self.file, p.line, p.column)?;
            if !p.path.is_empty() {
                write!(f, "{}: ", p.path)?;
            }
            f.write_str(&p.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

impl Located {
    /// `FILE:LINE:COLUMN: warning: field.path: message`, as `check` prints a warning.
    pub fn warning_in(&self, file: &str) -> String {
        let path = if self.path.is_empty() {
            String::new()
        } else {
            format!("{}: ", self.path)
        };
        format!(
            "{file}:{}:{}: warning: {path}{}",
            self.line, self.column, self.message
        )
    }
}

/// Reads and compiles the control file at `path`.
pub fn load(path: &Path) -> Result<Compiled, ConfigError> {
    load_with_text(path).map(|(_, compiled)| compiled)
}

/// Reads and compiles the control file at `path`, returning the text it was made from too.
pub fn load_with_text(path: &Path) -> Result<(String, Compiled), ConfigError> {
    let name = path.display().to_string();
    let read = crate::files::read_bounded(path, crate::files::MAX_CONFIG_BYTES).and_then(|b| {
        String::from_utf8(b).map_err(|_| "cannot read: the file is not UTF-8".to_owned())
    });
    match read {
        Ok(text) => parse(&name, &text).map(|c| (text, c)),
        Err(e) => Err(ConfigError {
            file: name,
            problems: vec![Located {
                line: 1,
                column: 1,
                path: String::new(),
                message: e,
            }],
        }),
    }
}

/// The deepest nesting a control file may have: a flow collection inside another (`[[[`),
/// or columns of indentation and sequence dashes before a line's content. Real configs nest
/// a few levels; a file that nests thousands deep is an attack on the parser's time.
const MAX_FLOW_DEPTH: usize = 64;
const MAX_INDENT: usize = 256;

/// Refuses text too large or nested too deep to parse in bounded time and memory, before
/// the YAML parser sees it.
fn check_shape(text: &str) -> Option<Located> {
    let at = |line: usize, column: usize, message: String| Located {
        line,
        column,
        path: String::new(),
        message,
    };
    if text.len() as u64 > crate::files::MAX_CONFIG_BYTES {
        return Some(at(
            1,
            1,
            format!(
                "the file is {} bytes; at most {} are allowed",
                text.len(),
                crate::files::MAX_CONFIG_BYTES
            ),
        ));
    }
    let mut depth = 0usize;
    for (i, line) in text.lines().enumerate() {
        let lead = line
            .bytes()
            .take_while(|b| matches!(b, b' ' | b'-'))
            .count();
        if lead > MAX_INDENT {
            return Some(at(
                i + 1,
                1,
                format!("nested more than {MAX_INDENT} columns deep"),
            ));
        }
        let mut quote = None;
        for (j, b) in line.bytes().enumerate() {
            match (quote, b) {
                (Some(q), _) if b == q => quote = None,
                (Some(_), _) => {}
                (None, b'\'' | b'"') => quote = Some(b),
                (None, b'#') if j == 0 || line.as_bytes()[j - 1] == b' ' => break,
                (None, b'[' | b'{') => {
                    depth += 1;
                    if depth > MAX_FLOW_DEPTH {
                        return Some(at(
                            i + 1,
                            j + 1,
                            format!("brackets nested more than {MAX_FLOW_DEPTH} deep"),
                        ));
                    }
                }
                (None, b']' | b'}') => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
    }
    None
}

/// Parses and compiles control file text; `name` prefixes the error lines. Every problem is
/// reported: those of the YAML and its types, and those of the parts that read whole.
pub fn parse(name: &str, text: &str) -> Result<Compiled, ConfigError> {
    let fail = |mut problems: Vec<Located>| {
        problems.sort_by_key(|l| (l.line, l.column));
        ConfigError {
            file: name.to_owned(),
            problems,
        }
    };
    let (root, file, mut problems) = deserialize(text);
    let (Some(root), Some(file)) = (root, file) else {
        return Err(fail(problems));
    };
    match compile::compile(file, text, Path::new(name).parent()) {
        Ok(mut compiled) if problems.is_empty() => {
            let found = lint::warnings(&compiled);
            if !found.is_empty() {
                let index = PositionIndex::build(&root);
                compiled.warnings = found.into_iter().map(|p| locate(&index, p)).collect();
                compiled.warnings.sort_by_key(|l| (l.line, l.column));
            }
            Ok(compiled)
        }
        Ok(_) => Err(fail(problems)),
        Err(found) => {
            // A semantic problem about a node that holds a wrong value may only be that
            // value's absence: the wrong value's own problem says it.
            let holds_wrong = |path: &str| {
                problems.iter().any(|p| {
                    p.path
                        .strip_prefix(path)
                        .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
                })
            };
            let index = PositionIndex::build(&root);
            let found: Vec<Located> = found
                .into_iter()
                .filter(|p| !holds_wrong(&p.path))
                .map(|p| locate(&index, p))
                .collect();
            problems.extend(found);
            Err(fail(problems))
        }
    }
}

/// How long the proxy may take to stop (`shutdown.grace + drain_timeout`) under control file
/// `text`, checked for syntax and types only: what `remora inject` reads from a ConfigMap,
/// away from the files the config names.
pub fn shutdown_budget(name: &str, text: &str) -> Result<std::time::Duration, ConfigError> {
    let (_, file, problems) = deserialize(text);
    let shutdown = match file.map(|f| f.shutdown) {
        Some(None) if problems.is_empty() => file::ShutdownFile::default(),
        Some(Some(file::Lenient::Ok(s))) if problems.is_empty() => s,
        _ => {
            return Err(ConfigError {
                file: name.to_owned(),
                problems,
            })
        }
    };
    Ok(shutdown.grace.0 + shutdown.drain_timeout.0)
}

/// What changes from control file `old` to `new` (each a name and its text), when `new` is
/// valid; `Err` lists `new`'s problems (or `old`'s, when only it is broken).
pub fn diff(old: (&str, &str), new: (&str, &str)) -> Result<diff::Diff, ConfigError> {
    parse(new.0, new.1)?;
    let read = |(name, text): (&str, &str)| match deserialize(text) {
        (_, Some(file), problems) if problems.is_empty() => Ok(file),
        (_, _, problems) => Err(ConfigError {
            file: name.to_owned(),
            problems,
        }),
    };
    Ok(diff::diff(&read(old)?, &read(new)?))
}

/// A JSON Schema (draft 2020-12) of the control file, from its serde types and their docs:
/// for editors with a YAML language server, which then check and complete the file as it is
/// typed. Semantic checks (addresses, references, regexes) remain `remora check`'s.
pub fn schema() -> String {
    let mut schema = schemars::schema_for!(file::File);
    schema.insert("title".into(), "Remora control file".into());
    schema.insert(
        "$id".into(),
        "https://remora.dev/schema/control-file-v1.json".into(),
    );
    serde_json::to_string_pretty(&schema).expect("a schema serializes")
}

/// Reads `text` (a YAML file of the CLI's other than the control file, such as route test
/// cases) as `T`, with every problem at its line and column.
pub fn parse_as<T: serde::de::DeserializeOwned>(name: &str, text: &str) -> Result<T, ConfigError> {
    let fail = |problems| ConfigError {
        file: name.to_owned(),
        problems,
    };
    if let Some(problem) = check_shape(text) {
        return Err(fail(vec![problem]));
    }
    match yaml::from_str(text) {
        (_, Some(value), problems) if problems.is_empty() => Ok(value),
        (_, _, problems) => Err(fail(problems)),
    }
}

/// The file's tree and serde shape (absent after a syntax error, or a problem outside every
/// part that can fail alone), and every problem of syntax and types.
fn deserialize(text: &str) -> (Option<yaml::Node>, Option<file::File>, Vec<Located>) {
    if let Some(problem) = check_shape(text) {
        return (None, None, vec![problem]);
    }
    yaml::from_str(text)
}

fn locate(index: &PositionIndex, p: Problem) -> Located {
    let pos = index.locate(&p.path);
    Located {
        line: pos.line,
        column: pos.column,
        path: p.path,
        message: p.message,
    }
}
