//! Configuration problems, each tied to the key it is about, and the translation of toml's errors into them.

use std::fmt;
use std::ops::Range;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

/// One problem with the configuration: the key it concerns (`retry.timeout.cap_secs`, `forgejo.repos[2]`;
/// `line 3, column 7` when no key can be named; the file's path when it cannot be read) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct ConfigError {
    pub key: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self { key: key.into(), message: message.into() }
    }
}

/// Every problem found in a configuration, in the order of the file. `Display` prints one `KEY: WHY` a line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    /// The problems about `key`, for tests and callers that look for one in particular.
    pub fn about(&self, key: &str) -> Vec<&ConfigError> {
        self.0.iter().filter(|e| e.key == key).collect()
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl From<ConfigError> for ConfigErrors {
    fn from(e: ConfigError) -> Self {
        Self(vec![e])
    }
}

/// One step of a key path: a table key or an array index.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Key(String),
    Index(usize),
}

/// Renders a path the way a user would write it: `forgejo.repos[2]`, quoting keys that need quotes in TOML.
fn render(path: &[Step]) -> String {
    let mut out = String::new();
    for step in path {
        match step {
            Step::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                let bare = !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
                if bare {
                    out.push_str(k);
                } else {
                    out.push_str(&format!("{k:?}"));
                }
            }
            Step::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

fn covers(span: &Range<usize>, pos: usize) -> bool {
    // Errors at the end of input carry an empty span; treat it as covering its start.
    span.start <= pos && pos < span.end.max(span.start + 1)
}

/// The path of the innermost key whose name or value covers byte `pos`. Children are searched before their
/// parent because the span of a `[table]` is only its header, not the keys under it.
fn path_at(table: &DeTable<'_>, pos: usize) -> Option<Vec<Step>> {
    for (key, value) in table.iter() {
        let here = Step::Key(key.get_ref().to_string());
        if let Some(mut rest) = path_in_value(value, pos) {
            rest.insert(0, here);
            return Some(rest);
        }
        if covers(&key.span(), pos) || covers(&value.span(), pos) {
            return Some(vec![here]);
        }
    }
    None
}

fn path_in_value(value: &Spanned<DeValue<'_>>, pos: usize) -> Option<Vec<Step>> {
    match value.get_ref() {
        DeValue::Table(t) => path_at(t, pos),
        DeValue::Array(items) => items.iter().enumerate().find_map(|(i, item)| {
            let mut rest = path_in_value(item, pos).unwrap_or_default();
            if rest.is_empty() && !covers(&item.span(), pos) {
                return None;
            }
            rest.insert(0, Step::Index(i));
            Some(rest)
        }),
        _ => None,
    }
}

/// 1-based line and column (in characters) of byte `pos`.
fn line_col(text: &str, pos: usize) -> (usize, usize) {
    let mut pos = pos.min(text.len());
    while !text.is_char_boundary(pos) {
        pos -= 1;
    }
    let before = &text[..pos];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, text[line_start..pos].chars().count() + 1)
}

/// Turns a toml parse or deserialization error into a [`ConfigError`] naming the key, found by mapping the
/// error's span onto `doc` (the parsed document, possibly partial after a syntax error). The position is
/// always kept, because a key alone does not find a typo in a long file.
pub(crate) fn from_toml(err: &toml::de::Error, text: &str, doc: &DeTable<'_>) -> ConfigError {
    let Some(span) = err.span() else {
        return ConfigError::new("(file)", reword(err.message().trim(), &[]));
    };
    let (line, col) = line_col(text, span.start);
    let path = path_at(doc, span.start).unwrap_or_default();
    let message = reword(err.message().trim(), &path);
    if path.is_empty() {
        ConfigError::new(format!("line {line}, column {col}"), message)
    } else {
        ConfigError::new(render(&path), format!("{message} (line {line}, column {col})"))
    }
}

/// The error for a top-level key that is not a section; `at` is where the key starts in `text`.
pub(crate) fn unknown_section(name: &str, is_table: bool, sections: &[&str], text: &str, at: usize) -> ConfigError {
    let expected = sections.iter().map(|s| format!("[{s}]")).collect::<Vec<_>>().join(", ");
    let (line, col) = line_col(text, at);
    let why = if is_table {
        format!("unknown section [{name}]; expected one of {expected}")
    } else {
        format!("unknown key `{name}` outside any section; every key belongs in one of {expected}")
    };
    ConfigError::new(render(&[Step::Key(name.to_string())]), format!("{why} (line {line}, column {col})"))
}

/// Rewrites serde's messages in the words of a configuration file: keys rather than fields, the section
/// an unknown key was found in, and what was expected before what was found.
fn reword(message: &str, path: &[Step]) -> String {
    if let Some(rest) = message.strip_prefix("unknown field `") {
        let (name, expected) = rest.split_once('`').unwrap_or((rest, ""));
        let expected = expected.trim_start_matches(',').trim();
        let expected = if expected == "there are no fields" { "this section takes no keys" } else { expected };
        let section = match path.split_last() {
            Some((Step::Key(last), parent)) if last == name => render(parent),
            _ => render(path),
        };
        let where_ = if section.is_empty() { "at the top level".to_string() } else { format!("in [{section}]") };
        let mut out = format!("unknown key `{name}` {where_}; {expected}");
        if section == "retry" && name == "cancelled" {
            out.push_str("; cancelled tasks are never retried, so there is nothing to configure");
        }
        return out;
    }
    for prefix in ["invalid type: ", "invalid value: "] {
        if let Some(rest) = message.strip_prefix(prefix)
            && let Some((found, expected)) = rest.rsplit_once(", expected ")
        {
            return format!("expected {}, found {found}", plain_type(expected));
        }
    }
    if let Some(rest) = message.strip_prefix("unknown variant ") {
        return format!("unknown value {rest}");
    }
    message.to_string()
}

/// serde names Rust types; a config file has integers and strings.
fn plain_type(expected: &str) -> &str {
    match expected {
        "u8" | "u16" | "u32" | "u64" | "usize" => "a non-negative integer",
        "i8" | "i16" | "i32" | "i64" | "isize" => "an integer",
        "a sequence" => "an array",
        "path string" => "a path (a string)",
        _ if expected.starts_with("struct ") => "a table",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_display_one_key_and_reason_per_line() {
        let errs = ConfigErrors(vec![ConfigError::new("a.b", "too small"), ConfigError::new("c[1]", "bad")]);
        assert_eq!(errs.to_string(), "a.b: too small\nc[1]: bad");
    }

    #[test]
    fn positions_are_one_based_lines_and_character_columns() {
        let text = "a = 1\nb = \"é\" x\n";
        assert_eq!(line_col(text, 0), (1, 1));
        assert_eq!(line_col(text, text.find('x').unwrap()), (2, 9));
        assert_eq!(line_col(text, text.len() + 5), (3, 1));
    }

    #[test]
    fn spans_map_to_dotted_paths_with_array_indices() {
        let text = "[forgejo]\nrepos = [\"a/b\", \"c\"]\n[retry.timeout]\ncap_secs = 1\n";
        let doc = DeTable::parse(text).unwrap();
        let at = |needle: &str| render(&path_at(doc.get_ref(), text.find(needle).unwrap()).unwrap());
        assert_eq!(at("\"c\""), "forgejo.repos[1]");
        assert_eq!(at("cap_secs"), "retry.timeout.cap_secs");
        assert_eq!(at("1\n"), "retry.timeout.cap_secs");
        assert_eq!(render(&[Step::Key("a.b".into())]), "\"a.b\"");
    }
}
