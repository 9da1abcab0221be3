//! Configuration: TOML on disk -> raw serde structs -> validated [`Config`] (SPEC §2).
//!
//! - `raw`: the TOML shape (`deny_unknown_fields`), values kept as written;
//! - `validate`: every SPEC §2 rule, all problems collected, addressed by key path;
//! - `locate`: key path <-> line number, from a second span-preserving parse;
//! - `defaults`: every default value, named once;
//! - `duration`, `syntax`: the value grammars (durations, addresses, host patterns, tokens).
//!
//! Nothing binds or connects here; certificate and CA files are read (through `tls::pem`, the
//! only part of `tls` this module may use: the rest of `tls` depends on these types) so that
//! `check` catches them.

mod auth;
mod defaults;
mod duration;
mod locate;
mod model;
mod raw;
mod syntax;
mod validate;

#[cfg(test)]
mod tests;

use std::fmt;
use std::path::{Path, PathBuf};

pub(crate) use model::*;

use locate::Locator;
use raw::RawConfig;

/// Reads, parses and validates the config file at `path`.
///
/// On failure every problem found is returned at once (a TOML syntax or type error stops the
/// parse, so it is reported alone), each with the file, line and key, ready for `check` to print.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let fail = |errors: Vec<ConfigError>| ConfigErrors {
        file: path.to_owned(),
        errors,
    };
    let text = std::fs::read_to_string(path).map_err(|err| {
        fail(vec![ConfigError {
            line: None,
            key: None,
            problem: format!("cannot read config file: {err}"),
        }])
    })?;
    let locator = Locator::new(&text);
    let raw: RawConfig =
        toml::from_str(&text).map_err(|err| fail(vec![parse_error(&err, &text, &locator)]))?;
    validate::validate(&raw, &config_dir(path), path).map_err(|problems| {
        let mut errors: Vec<ConfigError> = problems
            .into_iter()
            .map(|(at, problem)| ConfigError {
                line: locator.line_of(&at),
                key: (!at.is_root()).then(|| at.to_string()),
                problem,
            })
            .collect();
        // File order reads best; the sort is stable, so one line's problems keep their order.
        errors.sort_by_key(|e| e.line);
        fail(errors)
    })
}

/// Every problem with one config file.
///
/// `Display` prints one problem per line, in file order:
///
/// ```text
/// FILE:LINE: KEY: problem        e.g. switchyard.toml:41: route[0].subprotocol[1].upstream: undefined upstream "mqt" ...
/// FILE:LINE: problem             a TOML syntax error (no key to name; the problem quotes the text)
/// FILE: KEY: problem             a key whose line cannot be known (e.g. a missing [[listener]])
/// FILE: problem                  the file itself (missing, unreadable)
/// ```
///
/// FILE is the path as given, LINE is 1-based, KEY is a dotted path with array indices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors {
    /// The config file, as given to [`load`].
    pub(crate) file: PathBuf,
    /// Never empty.
    pub(crate) errors: Vec<ConfigError>,
}

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ConfigError {
    /// 1-based line of the offending key or value, when known.
    pub(crate) line: Option<usize>,
    /// Dotted key path such as `limits.bogus_key` or `route[0].fallback`, when known.
    pub(crate) key: Option<String>,
    /// What is wrong, quoting the offending value; a single line.
    pub(crate) problem: String,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}", self.file.display())?;
            if let Some(line) = error.line {
                write!(f, ":{line}")?;
            }
            if let Some(key) = &error.key {
                write!(f, ": {key}")?;
            }
            write!(f, ": {}", error.problem)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// A TOML syntax error or serde shape error (unknown key, wrong type, missing key): toml gives a
/// message and a span; the span names the line and, through `locator`, the key.
fn parse_error(err: &toml::de::Error, text: &str, locator: &Locator<'_>) -> ConfigError {
    let message = err
        .message()
        .replace("unknown field", "unknown key")
        .replace("missing field", "missing key");
    let message = one_line(&message);
    let Some(span) = err.span() else {
        return ConfigError {
            line: None,
            key: None,
            problem: message,
        };
    };
    let key = locator.path_at(span.start).map(|p| p.to_string());
    let problem = match key {
        Some(_) => message,
        None => format!("{message} (in {:?})", line_text(text, span.start)),
    };
    ConfigError {
        line: Some(locator.line_at(span.start)),
        key,
        problem,
    }
}

/// toml's messages may span lines; `check` prints one problem per line.
fn one_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

/// The text of the line holding byte `offset`, trimmed and shortened for a message.
fn line_text(text: &str, offset: usize) -> String {
    let bytes = text.as_bytes();
    let offset = offset.min(bytes.len());
    let start = bytes[..offset]
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    let end = bytes[offset..]
        .iter()
        .position(|&b| b == b'\n')
        .map_or(bytes.len(), |i| offset + i);
    let line = String::from_utf8_lossy(&bytes[start..end]);
    let line = line.trim();
    match line.char_indices().nth(80) {
        Some((cut, _)) => format!("{}...", &line[..cut]),
        None => line.to_owned(),
    }
}

/// The directory relative file names in the config are resolved against (SPEC §2), made
/// absolute so that the gateway's later working directory does not matter.
fn config_dir(path: &Path) -> PathBuf {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    std::path::absolute(dir).unwrap_or_else(|_| dir.to_owned())
}
