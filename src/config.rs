//! The control file: its serde shape (`file`), its compilation into runtime settings
//! (`compile`), and error reports that point at the file's line and column.
//!
//! A config is loaded in three steps: YAML syntax and types (serde, each route, service and
//! section on its own so one mistake does not hide the next), then semantic checks
//! (addresses, regexes, references between routes and services), then positions for every
//! problem from an index of the document's nodes.

pub mod compile;
pub mod duration;
pub mod file;
mod position;

use std::{fmt, path::Path};

pub use compile::{
    Compiled, Effective, InboundSpec, Limits, OutboundSpec, Problem, ShutdownSettings, Startup,
};
use position::{Pos, PositionIndex};

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
#[derive(Debug, Clone, PartialEq, Eq)]
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

/// Parses and compiles control file text; `name` prefixes the error lines.
pub fn parse(name: &str, text: &str) -> Result<Compiled, ConfigError> {
    let fail = |problems| ConfigError {
        file: name.to_owned(),
        problems,
    };
    let file = deserialize(name, text)?;
    compile::compile(file, text, Path::new(name).parent()).map_err(|problems| {
        let index = PositionIndex::build(text);
        let mut located: Vec<Located> = problems.into_iter().map(|p| locate(&index, p)).collect();
        located.sort_by_key(|l| (l.line, l.column));
        fail(located)
    })
}

/// How long the proxy may take to stop (`shutdown.grace + drain_timeout`) under control file
/// `text`, checked for syntax and types only: what `remora inject` reads from a ConfigMap,
/// away from the files the config names.
pub fn shutdown_budget(name: &str, text: &str) -> Result<std::time::Duration, ConfigError> {
    let shutdown = match deserialize(name, text)?.shutdown {
        None => file::ShutdownFile::default(),
        Some(file::Lenient::Ok(s)) => s,
        Some(file::Lenient::Err { path, message }) => {
            let path = if path.is_empty() {
                "shutdown".to_owned()
            } else {
                format!("shutdown.{path}")
            };
            let pos = PositionIndex::build(text).locate(&path);
            return Err(ConfigError {
                file: name.to_owned(),
                problems: vec![Located {
                    line: pos.line,
                    column: pos.column,
                    path,
                    message: strip_location(&message),
                }],
            });
        }
    };
    Ok(shutdown.grace.0 + shutdown.drain_timeout.0)
}

/// The file's serde shape, or its first syntax error with its position.
fn deserialize(name: &str, text: &str) -> Result<file::File, ConfigError> {
    let fail = |problems| ConfigError {
        file: name.to_owned(),
        problems,
    };
    if let Some(problem) = check_shape(text) {
        return Err(fail(vec![problem]));
    }
    let de = serde_yaml::Deserializer::from_str(text);
    match serde_path_to_error::deserialize(de) {
        Ok(f) => Ok(f),
        Err(e) => {
            let path = e.path().to_string();
            let path = if path == "." { String::new() } else { path };
            let inner = e.into_inner();
            let pos = match inner.location() {
                Some(l) => Pos {
                    line: l.line(),
                    column: l.column(),
                },
                None => PositionIndex::build(text).locate(&path),
            };
            let message = strip_location(&inner.to_string());
            Err(fail(vec![Located {
                line: pos.line,
                column: pos.column,
                path,
                message,
            }]))
        }
    }
}

fn locate(index: &PositionIndex, p: Problem) -> Located {
    // serde names an unknown field in the message; point at that key, not its mapping.
    // serde_path_to_error may or may not have appended the field to the path.
    let unknown_key = p
        .message
        .strip_prefix("unknown field `")
        .and_then(|rest| rest.split('`').next())
        .and_then(|field| {
            let parent = p.path.strip_suffix(field).map(|s| s.trim_end_matches('.'));
            index
                .key(&p.path, field)
                .or_else(|| index.key(parent?, field))
        });
    let pos = unknown_key.unwrap_or_else(|| index.locate(&p.path));
    Located {
        line: pos.line,
        column: pos.column,
        path: p.path,
        message: strip_location(&p.message),
    }
}

/// serde_yaml appends " at line L column C" to some messages; the report has its own.
fn strip_location(message: &str) -> String {
    match message.find(" at line ") {
        Some(i) => message[..i].to_owned(),
        None => message.to_owned(),
    }
}
