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
