//! Issue comments, chat messages and the agents' prompt, rendered from minijinja templates: the built-in ones in `templates/`,
//! each replaceable by a file of the same name in `[server] templates_dir`.

use std::path::Path;

use minijinja::Environment;
use serde::Serialize;

/// Every template forgefleet renders, with its built-in text.
const BUILT_IN: &[(&str, &str)] = &[
    ("comment_started.md", include_str!("../../templates/comment_started.md")),
    ("comment_completed.md", include_str!("../../templates/comment_completed.md")),
    ("comment_retrying.md", include_str!("../../templates/comment_retrying.md")),
    ("comment_failed.md", include_str!("../../templates/comment_failed.md")),
    ("comment_cancelled.md", include_str!("../../templates/comment_cancelled.md")),
    ("reply_refused.md", include_str!("../../templates/reply_refused.md")),
    ("reply_invalid.md", include_str!("../../templates/reply_invalid.md")),
    ("reply_failed.md", include_str!("../../templates/reply_failed.md")),
    ("agent_prompt.md", include_str!("../../templates/agent_prompt.md")),
];

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("template {name} in {dir}: {detail}")]
    Load { name: String, dir: String, detail: String },
    #[error("rendering {name}: {detail}")]
    Render { name: String, detail: String },
}

pub struct Templates {
    env: Environment<'static>,
}

impl std::fmt::Debug for Templates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Templates").finish_non_exhaustive()
    }
}

impl Templates {
    /// The built-in templates, with those found in `dir` (if given) in their place. A template in `dir` that
    /// does not parse is an error at start-up, not a broken comment later.
    pub fn load(dir: Option<&Path>) -> Result<Templates, TemplateError> {
        let mut env = Environment::new();
        env.set_undefined_behavior(minijinja::UndefinedBehavior::Chainable);
        env.add_filter("fence", |text: String| fence(&text));
        env.add_filter("code", |text: String| code(&text));
        for (name, text) in BUILT_IN {
            let text = match dir.map(|d| d.join(name)).filter(|p| p.exists()) {
                Some(path) => std::fs::read_to_string(&path).map_err(|e| TemplateError::Load {
                    name: name.to_string(),
                    dir: path.display().to_string(),
                    detail: e.to_string(),
                })?,
                None => text.to_string(),
            };
            env.add_template_owned(name.to_string(), text).map_err(|e| TemplateError::Load {
                name: name.to_string(),
                dir: dir.map(|d| d.display().to_string()).unwrap_or_else(|| "the built-in templates".into()),
                detail: e.to_string(),
            })?;
        }
        Ok(Templates { env })
    }

    pub fn render(&self, name: &str, ctx: impl Serialize) -> Result<String, TemplateError> {
        let render_error =
            |e: minijinja::Error| TemplateError::Render { name: name.to_string(), detail: e.to_string() };
        let t = self.env.get_template(name).map_err(render_error)?;
        Ok(t.render(ctx).map_err(render_error)?.trim().to_string())
    }
}

/// The longest run of backticks in `text`.
fn longest_backtick_run(text: &str) -> usize {
    text.split(|c| c != '`').map(str::len).max().unwrap_or(0)
}

/// Text from elsewhere (an agent's message or summary) as a fenced code block, with a fence longer than any run
/// of backticks in it: it cannot close the block, so it cannot mention people, embed images, run as a command
/// or pass for a forgefleet section.
pub fn fence(text: &str) -> String {
    let f = "`".repeat(longest_backtick_run(text).max(2) + 1);
    format!("{f}text\n{}\n{f}", text.trim_end_matches('\n'))
}

/// A short text from elsewhere (a file name) as inline code, on one line, that it cannot close.
pub fn code(text: &str) -> String {
    let f = "`".repeat(longest_backtick_run(text) + 1);
    let one_line: String = text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    // A space on each side keeps a backtick at either end from joining the fence; CommonMark strips it.
    let pad = if one_line.starts_with('`') || one_line.ends_with('`') { " " } else { "" };
    format!("{f}{pad}{one_line}{pad}{f}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_built_in_template_renders_with_typical_values() {
        let t = Templates::load(None).unwrap();
        let ctx = json!({
            "agent": "claude-1", "attempt": 2, "duration": "3 min", "pr_number": 14, "summary": "Fixed it.",
            "files": [{"path": "src/a.rs", "additions": 3, "deletions": 1}], "tokens": "1,200 in / 300 out",
            "cost": "0.12", "class": "agent_error", "message": "exit status 1", "retries_left": 1,
            "not_before": "2026-11-24 04:10 UTC", "explanation": "The agent's command failed.",
            "reason": "the issue was closed", "todo_label": "status:todo", "author": "bob", "repo": "acme/app",
            "permission": "read", "command": "/retry", "line": "/assign", "why": "it needs a name",
        });
        for (name, _) in BUILT_IN {
            let text = t.render(name, &ctx).unwrap();
            assert!(!text.is_empty() && !text.contains("{{"), "{name}: {text}");
        }
        let done = t.render("comment_completed.md", &ctx).unwrap();
        assert!(done.contains("#14") && done.contains("`src/a.rs` (+3 −1)") && done.contains("$0.12"), "{done}");
        assert!(t.render("comment_retrying.md", &ctx).unwrap().contains("1 more retry of this kind"));
    }

    #[test]
    fn text_from_agents_is_fenced_so_that_it_cannot_close_its_fence() {
        assert_eq!(fence("plain"), "```text\nplain\n```");
        assert_eq!(fence("a ```` b\n\n/cancel\n"), "`````text\na ```` b\n\n/cancel\n`````");
        assert_eq!(code("src/a.rs"), "`src/a.rs`");
        assert_eq!(code("`x\n@y"), "`` `x @y ``");
        let t = Templates::load(None).unwrap();
        let failed =
            t.render("comment_failed.md", json!({"message": "@alice ![i](http://x/i.png)\n\n/retry"})).unwrap();
        let commands = crate::core::commands::parse(&failed, crate::core::commands::Place::Issue);
        assert!(commands.is_empty(), "{failed}");
    }

    #[test]
    fn a_directory_overrides_by_file_name_and_a_broken_template_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("comment_started.md"), "Agent {{ agent }} is on it.").unwrap();
        let t = Templates::load(Some(dir.path())).unwrap();
        assert_eq!(t.render("comment_started.md", json!({"agent": "x"})).unwrap(), "Agent x is on it.");
        assert!(t.render("comment_failed.md", json!({})).unwrap().contains("Failed"), "others stay built in");
        std::fs::write(dir.path().join("comment_failed.md"), "{% if %}").unwrap();
        let err = Templates::load(Some(dir.path())).unwrap_err();
        assert!(err.to_string().contains("comment_failed.md"), "{err}");
    }
}
