//! The command grammar people use from issue comments and from Matrix: one parser for both places.
//!
//! Markdown code (blocks and spans), block quotes and link targets are stripped first, so a command that is
//! quoted or shown as an example never runs. Each remaining line that starts with `/` (or `!` in Matrix,
//! where Element eats unknown slash commands) is a candidate; a parser answers "not mine", "mine and
//! valid", or "mine and wrong, here is why".
//!
//! `/answer <text>` is the one command that takes prose: the answer is the rest of the comment (or message)
//! after the command, as written, so the lines after it are the answer's and never run as commands.

use pulldown_cmark::{Event as Md, Parser, Tag, TagEnd};
use serde::{Deserialize, Serialize};
use std::ops::Range;

use super::ids::{AgentName, IssueRef};
use super::task::{MAX_QUESTION_BYTES, Task, TaskState};

/// Where a command was written: it decides whether the issue is implied or must be named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// A comment on the issue the command is about.
    Issue,
    /// A Matrix room: commands name their issue as `owner/repo#N`.
    Chat,
}

/// A command as it was parsed where it arrived: the event and the outbox row keep this, never raw lines.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum FleetCommand {
    /// Queue the task again (a new attempt, a fresh retry budget).
    Retry {
        issue: Option<IssueRef>,
    },
    /// Stop the task; its agent is told at its next heartbeat.
    Cancel {
        issue: Option<IssueRef>,
    },
    /// Answer the question a blocked task's agent asked: a new attempt is queued that is told it.
    Answer {
        issue: Option<IssueRef>,
        text: String,
    },
    /// Pin the task to one agent.
    Assign {
        agent: AgentName,
        issue: Option<IssueRef>,
    },
    /// Stop giving the agent work; it finishes what it holds.
    Drain {
        agent: AgentName,
    },
    /// The fleet at a glance.
    Status,
    /// The agents, each with its status, running task and last heartbeat.
    Agents,
    /// The queue by priority.
    Queue,
    /// One task: state, attempts, the receipt's checks, the pull request.
    Show {
        issue: Option<IssueRef>,
    },
    /// On a completed task's pull request: a round of changes, `instruction` saying what to do.
    Fix {
        instruction: String,
    },
    Help,
}

impl FleetCommand {
    /// Whether it changes something (and so needs write permission); reads are open to anyone who can ask.
    pub fn changes(&self) -> bool {
        matches!(
            self,
            FleetCommand::Retry { .. }
                | FleetCommand::Cancel { .. }
                | FleetCommand::Answer { .. }
                | FleetCommand::Assign { .. }
                | FleetCommand::Drain { .. }
                | FleetCommand::Fix { .. }
        )
    }

    /// The issue it names, if it names one.
    pub fn issue(&self) -> Option<&IssueRef> {
        match self {
            FleetCommand::Retry { issue } | FleetCommand::Cancel { issue } | FleetCommand::Show { issue } => {
                issue.as_ref()
            }
            FleetCommand::Assign { issue, .. } | FleetCommand::Answer { issue, .. } => issue.as_ref(),
            _ => None,
        }
    }

    /// Its word, as people type it after `/` or `/fleet`.
    pub fn word(&self) -> &'static str {
        match self {
            FleetCommand::Retry { .. } => "retry",
            FleetCommand::Cancel { .. } => "cancel",
            FleetCommand::Answer { .. } => "answer",
            FleetCommand::Assign { .. } => "assign",
            FleetCommand::Drain { .. } => "drain",
            FleetCommand::Status => "status",
            FleetCommand::Agents => "agents",
            FleetCommand::Queue => "queue",
            FleetCommand::Show { .. } => "show",
            FleetCommand::Fix { .. } => "fix",
            FleetCommand::Help => "help",
        }
    }
}

/// What the parser made of one candidate line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Parsed {
    Valid(FleetCommand),
    /// It is one of ours, but wrong: `why` is written for the person who typed it.
    Invalid {
        line: String,
        why: String,
    },
}

/// The command words, for help and for "did you mean".
const WORDS: [&str; 11] =
    ["retry", "cancel", "answer", "assign", "drain", "status", "agents", "queue", "show", "fix", "help"];

/// Every command in `text`, in order. An `/answer` takes the rest of the text: nothing after it runs.
pub fn parse(text: &str, place: Place) -> Vec<Parsed> {
    let mut out = Vec::new();
    for line in plain_lines(text) {
        if matches!(split_command(&line, place), Some((word, _)) if word == "answer") {
            let rest = answer_rest(text, place).unwrap_or_default();
            out.push(match answer(&rest, place) {
                Ok(cmd) => Parsed::Valid(cmd),
                Err(why) => invalid(&line, why),
            });
            break;
        }
        out.extend(parse_line(&line, place));
    }
    // The plain text shows code spans as `…`; a `/fleet fix` instruction keeps them, from its line as written.
    let mut raw = raw_fix_lines(text).into_iter();
    for p in &mut out {
        if let Parsed::Valid(FleetCommand::Fix { instruction }) = p
            && let Some(line) = raw.next()
        {
            *instruction = line;
        }
    }
    out
}

/// The instructions of the `/fix` and `/fleet fix` lines of `text` as written, outside fenced code and quotes,
/// in order.
fn raw_fix_lines(text: &str) -> Vec<String> {
    let mut fenced = false;
    let mut out = Vec::new();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with("```") || t.starts_with("~~~") {
            fenced = !fenced;
            continue;
        }
        if fenced || t.starts_with('>') || !t.starts_with('/') {
            continue;
        }
        let mut words = t[1..].split_whitespace();
        let skip = match (words.next(), words.next()) {
            (Some(w), _) if w.eq_ignore_ascii_case("fix") => 1,
            (Some(f), Some(w)) if f.eq_ignore_ascii_case("fleet") && w.eq_ignore_ascii_case("fix") => 2,
            _ => continue,
        };
        out.push(after_words(&t[1..], skip).to_string());
    }
    out
}

/// The command word of a line addressed to us (lower case), and the text after it; `None` when the line is
/// not addressed to us.
fn split_command(line: &str, place: Place) -> Option<(String, &str)> {
    let line = line.trim();
    let rest = match (line.chars().next(), place) {
        (Some('/'), _) => &line[1..],
        (Some('!'), Place::Chat) => &line[1..],
        _ => return None,
    };
    let (first, after) = next_word(rest)?;
    let word = first.to_ascii_lowercase();
    // `/fleet retry ...` and `!fleet ...` address the bot by name; `/fleet` alone asks for status.
    if word == "fleet" {
        return Some(match next_word(after) {
            Some((w, after)) => (w.to_ascii_lowercase(), after),
            None => ("status".into(), after),
        });
    }
    if place == Place::Chat && line.starts_with('!') {
        // In chat only `!fleet ...` is ours; other bots own other `!` words.
        return None;
    }
    Some((word, after))
}

/// The first whitespace-separated word of `s` and what follows it.
fn next_word(s: &str) -> Option<(&str, &str)> {
    let s = s.trim_start();
    if s.is_empty() {
        return None;
    }
    let end = s.find(char::is_whitespace).unwrap_or(s.len());
    Some((&s[..end], &s[end..]))
}

/// The text of the first `/answer` in `markdown` that a reader sees as prose (not in code or a quote), from
/// just after the command word to the end, as written.
fn answer_rest(markdown: &str, place: Place) -> Option<String> {
    let hidden: Vec<Range<usize>> = Parser::new(markdown)
        .into_offset_iter()
        .filter(|(e, _)| matches!(e, Md::Start(Tag::CodeBlock(_) | Tag::BlockQuote(_) | Tag::HtmlBlock)))
        .map(|(_, range)| range)
        .collect();
    let mut offset = 0;
    for line in markdown.split_inclusive('\n') {
        let at = offset;
        offset += line.len();
        if hidden.iter().any(|r| r.contains(&at)) {
            continue;
        }
        if let Some((word, after)) = split_command(line, place)
            && word == "answer"
        {
            // `split_command` trims the line: its line break goes back between it and the lines after it.
            let newline = if line.ends_with('\n') { "\n" } else { "" };
            return Some(format!("{}{newline}{}", after.trim(), &markdown[offset..]));
        }
    }
    None
}

/// A plain comment on a blocked task's issue read as the answer to its question (`answer_any_comment`), as
/// if it were `/answer <the comment>`.
pub fn comment_as_answer(body: &str) -> Parsed {
    answer(body, Place::Issue).map_or_else(|why| Parsed::Invalid { line: "/answer".into(), why }, Parsed::Valid)
}

/// `/answer <text>` (in chat `/answer <owner/repo#N> <text>`): `rest` is what follows the command word.
fn answer(rest: &str, place: Place) -> Result<FleetCommand, String> {
    let usage = usage("answer", place);
    let (issue, text) = match place {
        Place::Issue => (None, rest),
        Place::Chat => {
            let (first, after) =
                next_word(rest).ok_or_else(|| format!("name the issue as `owner/repo#N`: `{usage}`"))?;
            let issue = first.parse::<IssueRef>().map_err(|e| format!("{e}. Usage: `{usage}`"))?;
            (Some(issue), after)
        }
    };
    let text = text.trim();
    if text.is_empty() {
        return Err(format!("`/answer` needs the answer after it: `{usage}`"));
    }
    if text.len() > MAX_QUESTION_BYTES {
        return Err(format!("the answer is longer than {} KiB; say it in fewer words", MAX_QUESTION_BYTES / 1024));
    }
    Ok(FleetCommand::Answer { issue, text: text.to_string() })
}

/// One line: `None` when it is not addressed to us.
pub fn parse_line(line: &str, place: Place) -> Option<Parsed> {
    let line = line.trim();
    let (word, after) = split_command(line, place)?;
    if word == "answer" {
        return Some(answer(after, place).map_or_else(|why| invalid(line, why), Parsed::Valid));
    }
    let words = after.split_whitespace();
    if !WORDS.contains(&word.as_str()) {
        // In a comment, `/something` may be prose or another bot's: only `/fleet ...` is surely ours.
        return line
            .split_whitespace()
            .next()
            .is_some_and(|w| w.trim_start_matches(['/', '!']).eq_ignore_ascii_case("fleet"))
            .then(|| invalid(line, format!("unknown command `{word}`{}.\n{}", did_you_mean(&word), help(place))));
    }
    if word == "fix" {
        // Free text: the rest of the line is the instruction, as written.
        let instruction = after.trim();
        return Some(match place {
            Place::Issue => Parsed::Valid(FleetCommand::Fix { instruction: instruction.to_string() }),
            Place::Chat => invalid(line, "`/fleet fix` is written in a comment on the pull request it is about".into()),
        });
    }
    let args: Vec<&str> = words.collect();
    Some(match build(&word, &args, place) {
        Ok(cmd) => Parsed::Valid(cmd),
        Err(why) => invalid(line, why),
    })
}

/// `text` after its first `n` words, trimmed.
fn after_words(text: &str, n: usize) -> &str {
    let mut rest = text.trim_start();
    for _ in 0..n {
        rest = rest.split_once(char::is_whitespace).map_or("", |(_, r)| r).trim_start();
    }
    rest.trim_end()
}

fn invalid(line: &str, why: String) -> Parsed {
    Parsed::Invalid { line: line.to_string(), why }
}

fn build(word: &str, args: &[&str], place: Place) -> Result<FleetCommand, String> {
    let issue_arg = |arg: Option<&&str>, usage: &str| -> Result<Option<IssueRef>, String> {
        match (arg, place) {
            (None, Place::Issue) => Ok(None),
            (Some(a), _) => a.parse::<IssueRef>().map(Some).map_err(|e| format!("{e}. Usage: `{usage}`")),
            (None, Place::Chat) => Err(format!("name the issue as `owner/repo#N`: `{usage}`")),
        }
    };
    let usage = |cmd: &str| usage(cmd, place);
    if word == "assign" {
        return assign(args, place, &usage(word));
    }
    let max_args = match word {
        "retry" | "cancel" | "show" | "drain" => 1,
        _ => 0,
    };
    if args.len() > max_args {
        return Err(format!("`/{word}` takes at most {max_args} argument(s): `{}`", usage(word)));
    }
    match word {
        "retry" => Ok(FleetCommand::Retry { issue: issue_arg(args.first(), &usage(word))? }),
        "cancel" => Ok(FleetCommand::Cancel { issue: issue_arg(args.first(), &usage(word))? }),
        "show" => Ok(FleetCommand::Show { issue: issue_arg(args.first(), &usage(word))? }),
        "drain" => {
            let name = args.first().ok_or_else(|| format!("`/fleet drain` needs an agent name: `{}`", usage(word)))?;
            let agent = AgentName::parse(name)
                .map_err(|e| format!("`{name}` is not an agent name: {}. Usage: `{}`", e.why, usage(word)))?;
            Ok(FleetCommand::Drain { agent })
        }
        "status" => Ok(FleetCommand::Status),
        "agents" => Ok(FleetCommand::Agents),
        "queue" => Ok(FleetCommand::Queue),
        _ => Ok(FleetCommand::Help),
    }
}

/// ", did you mean `retry`?" for a word one or two typos from a command; nothing otherwise.
fn did_you_mean(word: &str) -> String {
    let nearest = WORDS.iter().map(|w| (edit_distance(word, w), *w)).min();
    match nearest {
        Some((d, w)) if d <= 2 && d < word.len() => format!("; did you mean `{w}`?"),
        _ => String::new(),
    }
}

/// Levenshtein distance, over characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let next = (row[j + 1] + 1).min(row[j] + 1).min(diagonal + usize::from(ca != *cb));
            diagonal = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

/// `/assign <agent> [<owner/repo#N>]`: the issue is the last word when it reads as one (it must in chat); the
/// words before it are the agent's name, so a name that is wrong is reported as the name, not as the issue.
fn assign(args: &[&str], place: Place, usage: &str) -> Result<FleetCommand, String> {
    let (issue, name) = match args.split_last() {
        Some((last, rest)) if !rest.is_empty() => match last.parse::<IssueRef>() {
            Ok(issue) => (Some(issue), rest),
            Err(_) if place == Place::Chat => return Err(format!("name the issue last, as `owner/repo#N`: `{usage}`")),
            Err(_) => (None, args),
        },
        _ if place == Place::Chat => return Err(format!("name the issue as `owner/repo#N`: `{usage}`")),
        _ => (None, args),
    };
    let name = name.join(" ");
    if name.is_empty() {
        return Err(format!("`/assign` needs an agent name: `{usage}`"));
    }
    let agent =
        AgentName::parse(&name).map_err(|e| format!("`{name}` is not an agent name: {}. Usage: `{usage}`", e.why))?;
    Ok(FleetCommand::Assign { agent, issue })
}

fn usage(word: &str, place: Place) -> String {
    let issue = match place {
        Place::Issue => "",
        Place::Chat => " <owner/repo#N>",
    };
    match word {
        "assign" => format!("/assign <agent>{issue}"),
        "retry" | "cancel" => format!("/{word}{issue}"),
        "answer" => format!("/answer{issue} <text>"),
        "show" => format!("/fleet show{issue}"),
        "drain" => "/fleet drain <agent>".to_string(),
        "fix" => "/fleet fix <what to change>".to_string(),
        other => format!("/fleet {other}"),
    }
}

/// The help text, built from the commands themselves so a new command cannot miss its line.
pub fn help(place: Place) -> String {
    let describe = |c: &FleetCommand| match c {
        FleetCommand::Retry { .. } => "queue the task again, with a fresh retry budget",
        FleetCommand::Cancel { .. } => "stop the task; its agent is told at its next heartbeat",
        FleetCommand::Answer { .. } => {
            "answer the question the task's agent asked (the rest of the message is the answer); a new attempt \
             is queued with it"
        }
        FleetCommand::Assign { .. } => "pin the task to one agent",
        FleetCommand::Drain { .. } => "give the agent no new work; it finishes what it holds",
        FleetCommand::Status => "agents, the queue and the last day's failures",
        FleetCommand::Agents => "each agent: status, running task, last heartbeat",
        FleetCommand::Queue => "queued tasks by priority",
        FleetCommand::Show { .. } => "one task: state, attempts, the receipt's checks, the pull request",
        FleetCommand::Fix { .. } => "(a comment on a completed task's pull request) a round of changes on it",
        FleetCommand::Help => "this help",
    };
    let example_agent = AgentName::parse("agent").expect("a valid name");
    let all = [
        FleetCommand::Retry { issue: None },
        FleetCommand::Cancel { issue: None },
        FleetCommand::Answer { issue: None, text: String::new() },
        FleetCommand::Assign { agent: example_agent.clone(), issue: None },
        FleetCommand::Drain { agent: example_agent },
        FleetCommand::Status,
        FleetCommand::Agents,
        FleetCommand::Queue,
        FleetCommand::Show { issue: None },
        FleetCommand::Fix { instruction: String::new() },
        FleetCommand::Help,
    ];
    let mut out = String::from("Commands:\n");
    for c in &all {
        out.push_str(&format!("- `{}`: {}\n", usage(c.word(), place), describe(c)));
    }
    if place == Place::Chat {
        out.push_str("\n`!fleet ...` works as well as `/fleet ...`.\n");
    }
    out
}

/// The text of `markdown` that a reader sees as prose: without code, block quotes, HTML and link targets,
/// one entry per line.
pub fn plain_lines(markdown: &str) -> Vec<String> {
    let mut lines = vec![String::new()];
    let mut hidden = 0usize;
    for event in Parser::new(markdown) {
        match event {
            Md::Start(Tag::CodeBlock(_) | Tag::BlockQuote(_) | Tag::HtmlBlock) => hidden += 1,
            Md::End(TagEnd::CodeBlock | TagEnd::BlockQuote(_) | TagEnd::HtmlBlock) => hidden = hidden.saturating_sub(1),
            Md::Text(t) if hidden == 0 => {
                let mut parts = t.split('\n');
                if let Some(first) = parts.next() {
                    lines.last_mut().expect("never empty").push_str(first);
                }
                for p in parts {
                    lines.push(p.to_string());
                }
            }
            // Inline code is an example, never a command; keep a placeholder so the line does not start
            // with what follows it.
            Md::Code(_) if hidden == 0 => lines.last_mut().expect("never empty").push('\u{2026}'),
            Md::SoftBreak | Md::HardBreak if hidden == 0 => lines.push(String::new()),
            Md::End(TagEnd::Paragraph | TagEnd::Item | TagEnd::Heading(_)) => lines.push(String::new()),
            _ => {}
        }
    }
    lines.into_iter().map(|l| l.trim().to_string()).filter(|l| !l.is_empty()).collect()
}

/// The commands of an edited comment that were not in its previous text: only those run.
pub fn new_commands(before: &str, after: &str, place: Place) -> Vec<Parsed> {
    let mut old = parse(before, place);
    parse(after, place)
        .into_iter()
        .filter(|c| match old.iter().position(|o| o == c) {
            Some(i) => {
                old.remove(i);
                false
            }
            None => true,
        })
        .collect()
}

/// A task's state as a person reads it after "task 22 is ...".
fn described(state: TaskState) -> &'static str {
    match state {
        TaskState::Queued => "queued",
        TaskState::Assigned => "assigned to an agent",
        TaskState::Running => "running",
        TaskState::Validating => "being checked (its receipt arrived)",
        TaskState::Completed => "already completed",
        TaskState::Failed => "already failed",
        TaskState::AgentLost => "waiting for another attempt (its agent was lost)",
        TaskState::Cancelled => "already cancelled",
        TaskState::Blocked => "blocked, waiting for an answer to its agent's question",
    }
}

/// Why `/retry`, `/cancel` or `/answer` does not apply to `task` as it is; `None` when it does.
pub fn not_applicable(word: &str, task: &Task) -> Option<String> {
    let applies = match word {
        "retry" => matches!(task.state, TaskState::Failed | TaskState::Cancelled),
        "cancel" => !task.state.is_terminal(),
        "answer" => task.state == TaskState::Blocked,
        _ => true,
    };
    let only = match word {
        "retry" => "`/retry` only applies to failed or cancelled tasks",
        "answer" => "`/answer` only applies to a blocked task, whose agent asked a question; this does not apply",
        _ => "`/cancel` only applies to tasks that are queued or under way",
    };
    (!applies).then(|| format!("task {} is {}; {only}", task.id, described(task.state)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid(text: &str, place: Place) -> Vec<FleetCommand> {
        parse(text, place)
            .into_iter()
            .map(|p| match p {
                Parsed::Valid(c) => c,
                Parsed::Invalid { why, .. } => panic!("{text:?}: {why}"),
            })
            .collect()
    }

    #[test]
    fn issue_comments_take_retry_cancel_and_assign() {
        assert_eq!(valid("/retry", Place::Issue), [FleetCommand::Retry { issue: None }]);
        assert_eq!(valid("Looks flaky.\n\n/cancel", Place::Issue), [FleetCommand::Cancel { issue: None }]);
        assert_eq!(
            valid("/assign claude-1", Place::Issue),
            [FleetCommand::Assign { agent: AgentName::parse("claude-1").unwrap(), issue: None }]
        );
        assert_eq!(valid("/RETRY", Place::Issue).len(), 1);
    }

    #[test]
    fn chat_commands_name_their_issue_and_accept_bang_fleet() {
        let i: IssueRef = "acme/app#3".parse().unwrap();
        assert_eq!(valid("/retry acme/app#3", Place::Chat), [FleetCommand::Retry { issue: Some(i.clone()) }]);
        assert_eq!(valid("!fleet retry acme/app#3", Place::Chat), [FleetCommand::Retry { issue: Some(i.clone()) }]);
        assert_eq!(valid("/fleet status", Place::Chat), [FleetCommand::Status]);
        assert_eq!(valid("!fleet", Place::Chat), [FleetCommand::Status]);
        assert_eq!(
            valid("/assign a1 acme/app#3", Place::Chat),
            [FleetCommand::Assign { agent: AgentName::parse("a1").unwrap(), issue: Some(i) }]
        );
        assert!(parse("!ping", Place::Chat).is_empty(), "other bots' words are not ours");
        assert_eq!(valid("!fleet agents\n/fleet queue", Place::Chat), [FleetCommand::Agents, FleetCommand::Queue]);
        assert_eq!(
            valid("/fleet show acme/app#3\n!fleet drain a1", Place::Chat),
            [
                FleetCommand::Show { issue: Some("acme/app#3".parse().unwrap()) },
                FleetCommand::Drain { agent: AgentName::parse("a1").unwrap() }
            ]
        );
        assert!(matches!(&parse("/fleet show", Place::Chat)[..], [Parsed::Invalid { .. }]));
        assert!(matches!(&parse("/fleet drain", Place::Chat)[..], [Parsed::Invalid { .. }]));
    }

    #[test]
    fn commands_in_code_quotes_and_inline_code_are_ignored() {
        for text in [
            "```\n/retry\n```",
            "    /retry",
            "> /retry",
            "> quoted\n> /cancel",
            "Type `/retry` to try again.",
            "<div>\n/retry\n</div>",
        ] {
            assert!(parse(text, Place::Issue).is_empty(), "{text:?}: {:?}", parse(text, Place::Issue));
        }
        assert_eq!(valid("> /cancel\n\n/retry", Place::Issue), [FleetCommand::Retry { issue: None }]);
    }

    #[test]
    fn mistakes_say_what_is_wrong_and_how_to_write_it() {
        let p = parse("/assign", Place::Issue);
        assert!(matches!(&p[..], [Parsed::Invalid { why, .. }] if why.contains("`/assign <agent>`")), "{p:?}");
        let p = parse("/retry", Place::Chat);
        assert!(matches!(&p[..], [Parsed::Invalid { why, .. }] if why.contains("owner/repo#N")), "{p:?}");
        let p = parse("/retry acme#x", Place::Chat);
        assert!(matches!(&p[..], [Parsed::Invalid { .. }]), "{p:?}");
        let p = parse("/assign bad name!", Place::Issue);
        assert!(
            matches!(&p[..], [Parsed::Invalid { why, .. }] if why.starts_with("`bad name!` is not an agent name")),
            "{p:?}"
        );
        let p = parse("/assign bad name! acme/app#3", Place::Chat);
        assert!(matches!(&p[..], [Parsed::Invalid { why, .. }] if why.contains("not an agent name")), "{p:?}");
        let p = parse("/assign a1 nope", Place::Chat);
        assert!(matches!(&p[..], [Parsed::Invalid { why, .. }] if why.contains("owner/repo#N")), "{p:?}");
        let p = parse("/fleet frobnicate", Place::Issue);
        assert!(matches!(&p[..], [Parsed::Invalid { why, .. }] if why.contains("unknown command")), "{p:?}");
        assert!(!p.iter().any(|c| matches!(c, Parsed::Invalid { why, .. } if why.contains("did you mean"))));
        let p = parse("!fleet stauts", Place::Chat);
        assert!(matches!(&p[..], [Parsed::Invalid { why, .. }] if why.contains("did you mean `status`?")), "{p:?}");
        let p = parse("/fleet rety acme/app#3", Place::Chat);
        assert!(matches!(&p[..], [Parsed::Invalid { why, .. }] if why.contains("`retry`")), "{p:?}");
    }

    #[test]
    fn a_parsed_command_keeps_its_shape_through_json() {
        for text in
            ["/retry acme/app#3", "/assign a1 acme/app#3", "!fleet drain a1", "/fleet show acme/app#1", "/fleet"]
        {
            for p in parse(text, Place::Chat) {
                let back: Parsed = serde_json::from_str(&serde_json::to_string(&p).unwrap()).unwrap();
                assert_eq!(back, p, "{text}");
            }
        }
    }

    #[test]
    fn an_answer_is_the_rest_of_the_comment_as_written_and_nothing_after_it_runs() {
        let text = "Thanks for asking.\n\n/answer use the v2 API\n\n```rust\nlet x = v2::client();\n```\n/cancel";
        let [Parsed::Valid(FleetCommand::Answer { issue: None, text })] = &parse(text, Place::Issue)[..] else {
            panic!("{:?}", parse(text, Place::Issue))
        };
        assert_eq!(text, "use the v2 API\n\n```rust\nlet x = v2::client();\n```\n/cancel");
        // On a line of its own, the answer is what follows.
        assert_eq!(
            valid("/answer\nthe v2 one", Place::Issue),
            [FleetCommand::Answer { issue: None, text: "the v2 one".into() }]
        );
        // Quoted or shown as an example, it is not an answer.
        assert!(parse("> /answer no\n\n`/answer x`", Place::Issue).is_empty());
        let p = parse("/answer", Place::Issue);
        assert!(matches!(&p[..], [Parsed::Invalid { why, .. }] if why.contains("`/answer <text>`")), "{p:?}");
        let p = parse(&format!("/answer {}", "x".repeat(MAX_QUESTION_BYTES + 1)), Place::Issue);
        assert!(matches!(&p[..], [Parsed::Invalid { why, .. }] if why.contains("longer")), "{p:?}");
        // In chat the issue comes first.
        assert_eq!(
            valid("!fleet answer acme/app#3 use v2\nplease", Place::Chat),
            [FleetCommand::Answer { issue: Some("acme/app#3".parse().unwrap()), text: "use v2\nplease".into() }]
        );
        let p = parse("/answer use v2", Place::Chat);
        assert!(matches!(&p[..], [Parsed::Invalid { why, .. }] if why.contains("owner/repo#N")), "{p:?}");
    }

    #[test]
    fn other_slash_words_are_not_ours() {
        assert!(parse("/shrug\n/usr/bin is a path", Place::Issue).is_empty());
        assert!(parse("a/retry in the middle", Place::Issue).is_empty());
    }

    #[test]
    fn an_edit_runs_only_the_commands_it_added() {
        assert_eq!(new_commands("/retry", "/retry\nfixed a typo", Place::Issue), []);
        assert_eq!(
            new_commands("hello", "hello\n\n/cancel", Place::Issue),
            [Parsed::Valid(FleetCommand::Cancel { issue: None })]
        );
        assert_eq!(new_commands("/retry", "/retry\n\n/retry", Place::Issue).len(), 1, "a second one is new");
    }

    #[test]
    fn help_lists_every_command_with_its_usage() {
        let h = help(Place::Chat);
        for word in WORDS {
            assert!(h.contains(word), "{word} missing from {h}");
        }
        assert!(h.contains("/assign <agent> <owner/repo#N>"), "{h}");
        assert!(help(Place::Issue).contains("`/assign <agent>`"));
    }

    #[test]
    fn a_command_that_does_not_apply_says_so_in_words() {
        let e = crate::core::Event::TaskQueued {
            task: crate::core::TaskId(22),
            issue: IssueRef { repo: crate::core::RepoName::parse("a/b").unwrap(), number: 1 },
            title: String::new(),
            body: String::new(),
            labels: vec![],
            spec: crate::core::TaskSpec::default(),
            at: crate::core::Timestamp(0),
            issue_id: None,
        };
        let mut t = Task::queued(&e).unwrap();
        assert_eq!(not_applicable("cancel", &t), None);
        let why = not_applicable("retry", &t).unwrap();
        assert_eq!(why, "task 22 is queued; `/retry` only applies to failed or cancelled tasks");
        t.state = TaskState::Completed;
        assert_eq!(
            not_applicable("retry", &t).unwrap(),
            "task 22 is already completed; `/retry` only applies to failed or cancelled tasks"
        );
        assert!(not_applicable("cancel", &t).unwrap().contains("already completed"));
        t.state = TaskState::Failed;
        assert_eq!(not_applicable("retry", &t), None);
        assert!(not_applicable("answer", &t).unwrap().contains("does not apply"));
        t.state = TaskState::Blocked;
        assert_eq!(not_applicable("answer", &t), None);
        assert_eq!(not_applicable("cancel", &t), None, "a blocked task can be cancelled");
    }
}

#[cfg(test)]
mod fix_tests {
    use super::*;

    #[test]
    fn fix_takes_the_rest_of_its_line_as_the_instruction_and_only_in_a_comment() {
        let fix = |text: &str| parse(text, Place::Issue);
        let want = |i: &str| vec![Parsed::Valid(FleetCommand::Fix { instruction: i.into() })];
        assert_eq!(fix("/fleet fix   rename `x` to `count`  "), want("rename `x` to `count`"));
        assert_eq!(fix("/fix fix the typo in README"), want("fix the typo in README"));
        assert_eq!(fix("/fleet fix"), want(""));
        assert_eq!(fix("> /fleet fix quoted\n"), vec![], "a quoted command never runs");
        assert!(FleetCommand::Fix { instruction: String::new() }.changes());
        let chat = parse("!fleet fix it", Place::Chat);
        assert!(
            matches!(&chat[..], [Parsed::Invalid { why, .. }] if why.contains("comment on the pull request")),
            "{chat:?}"
        );
        assert!(help(Place::Issue).contains("/fleet fix <what to change>"));
    }
}
