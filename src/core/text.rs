//! Text from elsewhere (an agent, a CI job, whoever pushed a branch) made inert for Markdown: it cannot close
//! its fence, so it cannot mention people, embed images, run as a command or pass for forgefleet's own words.

/// The longest run of backticks in `text`.
fn longest_backtick_run(text: &str) -> usize {
    text.split(|c| c != '`').map(str::len).max().unwrap_or(0)
}

/// `text` as a fenced code block, with a fence longer than any run of backticks in it.
pub fn fence(text: &str) -> String {
    let f = "`".repeat(longest_backtick_run(text).max(2) + 1);
    format!("{f}text\n{}\n{f}", text.trim_end_matches('\n'))
}

/// A short `text` (a file or branch name, a CI job's name) as inline code on one line, with a fence longer
/// than any run of backticks in it. Line breaks become spaces; other control characters are written out.
pub fn code(text: &str) -> String {
    let one_line: String = text
        .chars()
        .map(|c| match c {
            '\n' | '\r' | '\t' => " ".to_string(),
            c if c.is_control() => c.escape_default().to_string(),
            c => c.to_string(),
        })
        .collect();
    let f = "`".repeat(longest_backtick_run(&one_line) + 1);
    // A space on each side keeps a backtick at either end from joining the fence; CommonMark strips it.
    let pad = if one_line.starts_with('`') || one_line.ends_with('`') { " " } else { "" };
    format!("{f}{pad}{one_line}{pad}{f}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_from_elsewhere_cannot_close_its_fence() {
        assert_eq!(fence("plain"), "```text\nplain\n```");
        assert_eq!(fence("a ```` b\n\n/cancel\n"), "`````text\na ```` b\n\n/cancel\n`````");
        assert_eq!(code("src/a.rs"), "`src/a.rs`");
        assert_eq!(code("`x\n@y"), "`` `x @y ``");
        assert_eq!(code("x`@alice`y"), "``x`@alice`y``");
        assert_eq!(code("`a``b"), "``` `a``b ```");
        assert_eq!(code("a\u{7}b"), "`a\\u{7}b`");
    }
}
