//! Issue comments, chat messages and the agents' prompt, rendered from minijinja templates: the built-in ones in `templates/`,
//! each replaceable by a file of the same name in `[server] templates_dir`.

use std::collections::BTreeSet;
use std::path::Path;

use minijinja::Environment;

pub mod chat;
mod contexts;
pub use chat::{ChatAgent, ChatMessage, ChatProgress, ChatTask, ChatTaskBlocked, ChatTaskFailed};
pub use contexts::*;

/// A template's name, its built-in text, and its context's example as JSON (for the load-time check).
struct BuiltIn {
    name: &'static str,
    text: &'static str,
    example: fn() -> serde_json::Value,
}

const fn built_in<C: TemplateContext>(text: &'static str) -> BuiltIn {
    BuiltIn { name: C::NAME, text, example: example_json::<C> }
}

fn example_json<C: TemplateContext>() -> serde_json::Value {
    serde_json::to_value(C::example()).expect("a context serializes to JSON")
}

/// Every template forgefleet renders, with its built-in text.
const BUILT_IN: &[BuiltIn] = &[
    built_in::<StartedComment>(include_str!("../../../templates/comment_started.md")),
    built_in::<CompletedComment>(include_str!("../../../templates/comment_completed.md")),
    built_in::<RetryingComment>(include_str!("../../../templates/comment_retrying.md")),
    built_in::<FailedComment>(include_str!("../../../templates/comment_failed.md")),
    built_in::<CancelledComment>(include_str!("../../../templates/comment_cancelled.md")),
    built_in::<PullEndedComment>(include_str!("../../../templates/comment_pull_ended.md")),
    built_in::<BlockedComment>(include_str!("../../../templates/comment_blocked.md")),
    built_in::<RefusedReply>(include_str!("../../../templates/reply_refused.md")),
    built_in::<InvalidReply>(include_str!("../../../templates/reply_invalid.md")),
    built_in::<FailedReply>(include_str!("../../../templates/reply_failed.md")),
    built_in::<AgentPrompt>(include_str!("../../../templates/agent_prompt.md")),
    built_in::<ChatTask>(include_str!("../../../templates/matrix/task.md")),
    built_in::<ChatTaskFailed>(include_str!("../../../templates/matrix/task_failed.md")),
    built_in::<ChatTaskBlocked>(include_str!("../../../templates/matrix/task_blocked.md")),
    built_in::<ChatAgent>(include_str!("../../../templates/matrix/agent.md")),
    built_in::<ChatProgress>(include_str!("../../../templates/matrix/progress.md")),
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
    /// The built-in templates, with those found in `dir` (if given) in their place. A template that does not
    /// parse, or that reads a name its context does not have (a typo, a key from another template), is an
    /// error at start-up naming the file and the name, not a comment with a hole in it later.
    pub fn load(dir: Option<&Path>) -> Result<Templates, TemplateError> {
        let mut env = Environment::new();
        // A name the context lacks is an error when it is read, never empty text.
        env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
        env.add_filter("fence", |text: String| fence(&text));
        env.add_filter("code", |text: String| code(&text));
        env.add_filter("text", |s: String| chat::text(&s));
        let globals: BTreeSet<String> = env.globals().map(|(name, _)| name.to_string()).collect();
        for t in BUILT_IN {
            let path = dir.map(|d| d.join(t.name)).filter(|p| p.exists());
            let load_error = |detail: String| TemplateError::Load {
                name: t.name.to_string(),
                dir: match (&path, dir) {
                    (Some(_), Some(d)) => d.display().to_string(),
                    _ => "the built-in templates".into(),
                },
                detail,
            };
            let text = match &path {
                Some(path) => std::fs::read_to_string(path).map_err(|e| load_error(e.to_string()))?,
                None => t.text.to_string(),
            };
            env.add_template_owned(t.name.to_string(), text).map_err(|e| load_error(e.to_string()))?;
            let template = env.get_template(t.name).map_err(|e| load_error(e.to_string()))?;
            let example = (t.example)();
            let fields: BTreeSet<&str> =
                example.as_object().map(|o| o.keys().map(String::as_str).collect()).unwrap_or_default();
            let mut unknown: Vec<String> = template
                .undeclared_variables(false)
                .into_iter()
                .filter(|v| !fields.contains(v.as_str()) && !globals.contains(v))
                .collect();
            unknown.sort();
            if !unknown.is_empty() {
                let known = fields.iter().copied().collect::<Vec<_>>().join(", ");
                return Err(load_error(format!(
                    "it uses {}, which its context does not have (it has: {known})",
                    unknown.iter().map(|u| format!("`{u}`")).collect::<Vec<_>>().join(", ")
                )));
            }
            template.render(&example).map_err(|e| load_error(format!("it does not render: {e:#}")))?;
        }
        Ok(Templates { env })
    }

    /// A chat message from `ctx`'s template: the Markdown it writes, and that as HTML.
    pub fn render_chat<C: TemplateContext>(&self, ctx: &C) -> Result<ChatMessage, TemplateError> {
        Ok(ChatMessage::from_markdown(self.render(ctx)?))
    }

    /// The text of `ctx`'s template filled with it, trimmed.
    pub fn render<C: TemplateContext>(&self, ctx: &C) -> Result<String, TemplateError> {
        let render_error =
            |e: minijinja::Error| TemplateError::Render { name: C::NAME.to_string(), detail: format!("{e:#}") };
        let t = self.env.get_template(C::NAME).map_err(render_error)?;
        Ok(t.render(ctx).map_err(render_error)?.trim().to_string())
    }
}

pub use crate::core::text::{code, fence};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_agents_message_in_a_comment_cannot_mention_embed_or_command() {
        let t = Templates::load(None).unwrap();
        let hostile =
            FailedComment { message: "@alice ![i](http://x/i.png)\n\n/retry".into(), ..FailedComment::example() };
        let failed = t.render(&hostile).unwrap();
        let commands = crate::core::commands::parse(&failed, crate::core::commands::Place::Issue);
        assert!(commands.is_empty(), "{failed}");
    }

    /// docs/configuration.md lists each template's names; this keeps the table true. With
    /// `FORGEFLEET_WRITE_DOCS=1` it rewrites the table instead.
    #[test]
    fn the_documented_template_contexts_are_the_real_ones() {
        let rows: String = BUILT_IN
            .iter()
            .map(|t| {
                let example = (t.example)();
                let names: Vec<String> = example.as_object().unwrap().keys().map(|k| format!("`{k}`")).collect();
                format!("| `{}` | {} |\n", t.name, names.join(", "))
            })
            .collect();
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/configuration.md");
        let doc = std::fs::read_to_string(path).unwrap();
        let head = "| template | names |\n|---|---|\n";
        let start = doc.find(head).expect("the table's head") + head.len();
        let end = doc[start..].find("\n\n").map_or(doc.len(), |e| start + e + 1);
        if std::env::var_os("FORGEFLEET_WRITE_DOCS").is_some() {
            std::fs::write(path, format!("{}{rows}{}", &doc[..start], &doc[end..])).unwrap();
            return;
        }
        assert_eq!(&doc[start..end], rows, "docs/configuration.md is stale: run with FORGEFLEET_WRITE_DOCS=1");
    }

    #[test]
    fn every_built_in_template_renders_its_example() {
        let t = Templates::load(None).unwrap();
        let done = t.render(&CompletedComment::example()).unwrap();
        assert!(done.contains("#14") && done.contains("`src/a.rs` (+3 −1)") && done.contains("$0.12"), "{done}");
        assert!(done.contains("https://forgejo.example.com/acme/app/pulls/14"), "{done}");
        assert!(t.render(&RetryingComment::example()).unwrap().contains("1 more retry of this kind"));
        let prompt = t.render(&AgentPrompt::example()).unwrap();
        assert!(prompt.contains("Run `make check`.") && prompt.contains("fleet/issue-7-attempt-1"), "{prompt}");
        assert!(prompt.contains("use the v1 or the v2 API?") && prompt.contains("Use the v2 API."), "{prompt}");
        assert!(prompt.contains("`.forgefleet/question.md`"), "{prompt}");
        // A person's request and each review comment are fenced, the comment under its file and line.
        assert!(
            prompt.contains("alice asked for changes on pull request #12:\n\n```text\nName it `count`.\n```"),
            "{prompt}"
        );
        assert!(prompt.contains("- `src/a.rs`, line 4:\n\n```text\nNot here.\n```"), "{prompt}");
        let first = t.render(&AgentPrompt { question: None, answer: None, ..AgentPrompt::example() }).unwrap();
        assert!(!first.contains("stopped to ask") && first.contains(".forgefleet/question.md"), "{first}");
    }

    #[test]
    fn optional_values_left_out_leave_their_sections_out() {
        let t = Templates::load(None).unwrap();
        let bare = CompletedComment {
            duration: None,
            pr_number: None,
            pr_url: None,
            tokens: None,
            cost: None,
            files: vec![],
            checks: vec![],
            summary: String::new(),
            ..CompletedComment::example()
        };
        let done = t.render(&bare).unwrap();
        assert!(!done.contains("Pull request") && !done.contains("Tokens") && !done.contains(" in "), "{done}");
    }

    #[test]
    fn a_directory_overrides_by_file_name_and_a_broken_template_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("comment_started.md"), "Agent {{ agent }} is on it.").unwrap();
        let t = Templates::load(Some(dir.path())).unwrap();
        let started = StartedComment { agent: "x".into(), attempt: 1 };
        assert_eq!(t.render(&started).unwrap(), "Agent x is on it.");
        assert!(t.render(&FailedComment::example()).unwrap().contains("Failed"), "others stay built in");
        std::fs::write(dir.path().join("comment_failed.md"), "{% if %}").unwrap();
        let err = Templates::load(Some(dir.path())).unwrap_err();
        assert!(err.to_string().contains("comment_failed.md"), "{err}");
    }

    #[test]
    fn a_template_reading_a_name_its_context_lacks_fails_to_load_naming_the_file_and_the_name() {
        let dir = tempfile::tempdir().unwrap();
        // `agent_name` is a typo of `agent`: rendered leniently it would be empty text in every comment.
        std::fs::write(dir.path().join("comment_started.md"), "{% if attempt > 1 %}{{ agent_name }}{% endif %}")
            .unwrap();
        let err = Templates::load(Some(dir.path())).unwrap_err().to_string();
        assert!(err.contains("comment_started.md") && err.contains("`agent_name`"), "{err}");
        assert!(err.contains(&dir.path().display().to_string()) && err.contains("agent, attempt"), "{err}");
    }

    #[test]
    fn a_value_missing_at_render_time_is_an_error_not_empty_text() {
        let dir = tempfile::tempdir().unwrap();
        // Declared by the context, but read as an attribute it does not have: only rendering can tell.
        std::fs::write(
            dir.path().join("comment_started.md"),
            "{{ agent }}{% if attempt > 5 %}{{ attempt.x }}{% endif %}",
        )
        .unwrap();
        let t = Templates::load(Some(dir.path())).unwrap();
        let err = t.render(&StartedComment { agent: "a".into(), attempt: 6 }).unwrap_err().to_string();
        assert!(err.contains("comment_started.md"), "{err}");
    }
}
