//! Chat messages (Matrix): templates in `templates/matrix/` write Markdown; [`to_html`] turns it into the
//! `formatted_body`, with every raw HTML tag dropped (as text) and links kept only to `http(s)` and `mailto`.
//! Text from agents and issues goes through the `fence` or `text` filters, so it can neither format nor link:
//! what an agent writes reaches the room as the characters it wrote.

use pulldown_cmark::{CowStr, Event, Options, Parser, Tag, html};
use serde::Serialize;

use super::TemplateContext;
use crate::core::FileChange;

/// A message for a chat room: a plain `body` (the Markdown source, which clients show when they cannot
/// render HTML) and its HTML.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatMessage {
    pub body: String,
    pub formatted_body: String,
}

impl ChatMessage {
    pub fn from_markdown(markdown: String) -> ChatMessage {
        let formatted_body = to_html(&markdown);
        ChatMessage { body: markdown, formatted_body }
    }
}

/// Markdown to HTML for a chat room. Raw HTML in the source is shown as text, and a link to anything but
/// `http:`, `https:` or `mailto:` keeps its text and loses its target.
pub fn to_html(markdown: &str) -> String {
    let events = Parser::new_ext(markdown, Options::ENABLE_STRIKETHROUGH).map(|e| match e {
        Event::Html(h) | Event::InlineHtml(h) => Event::Text(h),
        Event::Start(Tag::Link { dest_url, title, id, link_type }) if !safe_url(&dest_url) => {
            Event::Start(Tag::Link { dest_url: CowStr::Borrowed(""), title, id, link_type })
        }
        Event::Start(Tag::Image { .. }) => Event::Text(CowStr::Borrowed("")),
        other => other,
    });
    let mut out = String::new();
    html::push_html(&mut out, events);
    out.trim_end().to_string()
}

fn safe_url(url: &str) -> bool {
    let lower = url.trim().to_ascii_lowercase();
    ["http://", "https://", "mailto:"].iter().any(|p| lower.starts_with(p))
}

/// Text from elsewhere (an issue's title, an agent's name) as literal Markdown text on one line: every ASCII
/// punctuation character is escaped, so it cannot start a link, a heading, emphasis or a list.
pub fn text(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            c if c.is_control() => out.push(' '),
            c if c.is_ascii_punctuation() => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out
}

/// `matrix/task.md`: the one message a task has in the room, rendered anew (and edited in place) at each step.
#[derive(Debug, Clone, Serialize)]
pub struct ChatTask {
    pub repo: String,
    pub issue: u64,
    pub issue_url: String,
    pub title: String,
    pub task: u64,
    pub attempt: u32,
    /// `assigned`, `started`, `completed`, `retrying`, `verification_failed`, `timed_out`, `failed`,
    /// `cancelled`, `blocked`.
    pub state: String,
    pub agent: String,
    pub duration: Option<String>,
    pub pr_number: Option<u64>,
    pub pr_url: Option<String>,
    pub files: Vec<FileChange>,
    pub tokens: Option<String>,
    pub cost: Option<String>,
    pub class: Option<String>,
    pub message: Option<String>,
    pub explanation: Option<String>,
    pub retries_left: Option<u32>,
    pub not_before: Option<String>,
    pub reason: Option<String>,
}

/// `matrix/task_failed.md`: a message of its own when a task fails for good, because it needs a person.
#[derive(Debug, Clone, Serialize)]
#[serde(transparent)]
pub struct ChatTaskFailed(pub ChatTask);

/// `matrix/task_blocked.md`: a message of its own when an agent asks a question (in `message`), because it
/// needs a person's answer.
#[derive(Debug, Clone, Serialize)]
#[serde(transparent)]
pub struct ChatTaskBlocked(pub ChatTask);

/// `matrix/agent.md`: an agent's news, in its own thread.
#[derive(Debug, Clone, Serialize)]
pub struct ChatAgent {
    pub agent: String,
    /// `online`, `draining`, `offline`, `lost`.
    pub news: String,
    /// For `lost`: the task it held.
    pub repo: Option<String>,
    pub issue: Option<u64>,
    pub issue_url: Option<String>,
}

/// `matrix/progress.md`: a batch of an agent's progress lines, in its thread.
#[derive(Debug, Clone, Serialize)]
pub struct ChatProgress {
    pub agent: String,
    pub lines: Vec<String>,
    /// Lines left out of this batch to keep the room readable.
    pub skipped: u64,
}

impl TemplateContext for ChatTask {
    const NAME: &'static str = "matrix/task.md";
    fn example() -> Self {
        ChatTask {
            repo: "acme/app".into(),
            issue: 3,
            issue_url: "https://forgejo.example.com/acme/app/issues/3".into(),
            title: "Fix the parser".into(),
            task: 12,
            attempt: 2,
            state: "completed".into(),
            agent: "claude-1".into(),
            duration: Some("3 min".into()),
            pr_number: Some(14),
            pr_url: Some("https://forgejo.example.com/acme/app/pulls/14".into()),
            files: vec![FileChange { path: "src/a.rs".into(), status: "modified".into(), additions: 3, deletions: 1 }],
            tokens: Some("1200 in / 300 out".into()),
            cost: Some("0.12".into()),
            class: Some("agent_error".into()),
            message: Some("exit status 1".into()),
            explanation: Some("The agent's command failed.".into()),
            retries_left: Some(1),
            not_before: Some("2026-11-24T04:10:00Z".into()),
            reason: Some("cancelled by @alice".into()),
        }
    }
}

impl TemplateContext for ChatTaskFailed {
    const NAME: &'static str = "matrix/task_failed.md";
    fn example() -> Self {
        ChatTaskFailed(ChatTask { state: "failed".into(), ..ChatTask::example() })
    }
}

impl TemplateContext for ChatTaskBlocked {
    const NAME: &'static str = "matrix/task_blocked.md";
    fn example() -> Self {
        ChatTaskBlocked(ChatTask {
            state: "blocked".into(),
            message: Some("Should the parser use the v1 or the v2 API?".into()),
            ..ChatTask::example()
        })
    }
}

impl TemplateContext for ChatAgent {
    const NAME: &'static str = "matrix/agent.md";
    fn example() -> Self {
        ChatAgent {
            agent: "claude-1".into(),
            news: "lost".into(),
            repo: Some("acme/app".into()),
            issue: Some(3),
            issue_url: Some("https://forgejo.example.com/acme/app/issues/3".into()),
        }
    }
}

impl TemplateContext for ChatProgress {
    const NAME: &'static str = "matrix/progress.md";
    fn example() -> Self {
        ChatProgress { agent: "claude-1".into(), lines: vec!["→ Write: src/a.rs".into()], skipped: 3 }
    }
}

#[cfg(test)]
mod tests {
    use super::super::Templates;
    use super::*;

    const HOSTILE: &str = "@room <img src=x onerror=alert(1)> [click](javascript:alert(1)) **bold** /retry acme/app#1";

    #[test]
    fn every_state_of_a_task_renders_and_hostile_text_stays_text() {
        let t = Templates::load(None).unwrap();
        for state in
            ["assigned", "started", "completed", "retrying", "verification_failed", "timed_out", "failed", "cancelled"]
        {
            let ctx = ChatTask {
                state: state.into(),
                title: HOSTILE.into(),
                agent: HOSTILE.into(),
                message: Some(HOSTILE.into()),
                reason: Some(HOSTILE.into()),
                ..ChatTask::example()
            };
            let m = t.render_chat(&ctx).unwrap();
            assert!(m.body.contains("acme/app#3"), "{state}: {}", m.body);
            assert!(
                !m.formatted_body.contains("<img") && !m.formatted_body.contains("href=\"javascript"),
                "{state}: {}",
                m.formatted_body
            );
            assert!(!m.formatted_body.contains("<strong>bold</strong>"), "{state}: {}", m.formatted_body);
            assert!(
                m.formatted_body.contains("&lt;img"),
                "{state}: the text is shown, not dropped: {}",
                m.formatted_body
            );
        }
        let done = t.render_chat(&ChatTask::example()).unwrap();
        assert!(
            done.formatted_body.contains(r#"<a href="https://forgejo.example.com/acme/app/pulls/14">#14</a>"#),
            "{}",
            done.formatted_body
        );
    }

    #[test]
    fn markdown_links_only_to_the_web_and_raw_html_is_text() {
        assert_eq!(to_html("[a](javascript:alert(1))"), r#"<p><a href="">a</a></p>"#);
        assert_eq!(to_html("<b>x</b>"), "<p>&lt;b&gt;x&lt;/b&gt;</p>");
        assert_eq!(to_html("![i](https://x/i.png)"), "<p>i</p>", "an image is its alt text: no fetch from the room");
        assert_eq!(to_html("[a](https://x)"), r#"<p><a href="https://x">a</a></p>"#);
        assert_eq!(text("a [b](c) #d\ne"), r"a \[b\]\(c\) \#d e");
    }

    #[test]
    fn progress_says_how_many_lines_it_left_out() {
        let t = Templates::load(None).unwrap();
        let m = t
            .render_chat(&ChatProgress { agent: "a1".into(), lines: vec!["one".into(), "```".into()], skipped: 5 })
            .unwrap();
        assert!(m.body.starts_with("… 5 lines skipped …"), "{}", m.body);
        assert!(m.formatted_body.contains("<pre><code"), "{}", m.formatted_body);
        let lost = t.render_chat(&ChatAgent::example()).unwrap();
        assert!(lost.body.contains("was lost") && lost.body.contains("acme/app#3"), "{}", lost.body);
    }
}
