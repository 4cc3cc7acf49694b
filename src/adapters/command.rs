//! The `command` adapter: any program. It gets the prompt on standard input (and in `FORGEFLEET_PROMPT`),
//! works in the worktree, and may commit or leave its changes for the runner to commit. Exit status 0 is
//! success; its last line of standard output becomes the summary.

use std::process::ExitStatus;

use super::{Adapter, AdapterKind, Finished, Job, Outcome, Tail, describe, last_lines, plain_line};
use crate::core::FailureClass;

/// At most this much of a failed run's output goes into the failure message.
const MESSAGE_LINES: usize = 10;

pub struct CommandAdapter {
    run: Vec<String>,
}

impl CommandAdapter {
    pub fn new(run: Vec<String>) -> CommandAdapter {
        CommandAdapter { run }
    }
}

impl Adapter for CommandAdapter {
    fn kind(&self) -> AdapterKind {
        AdapterKind::Command
    }

    fn command(&self, job: &Job<'_>) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(&self.run[0]);
        cmd.args(&self.run[1..]).env("FORGEFLEET_PROMPT", job.prompt);
        // A program that keeps sessions of its own may resume this one (its home is kept for the task).
        if let Some(session) = job.resume {
            cmd.env("FORGEFLEET_RESUME_SESSION", session);
        }
        cmd
    }

    fn env_prefixes(&self) -> &'static [&'static str] {
        // Its own come from the runner: FORGEFLEET_PROMPT, FORGEFLEET_TASK_ID, ..., GIT_AUTHOR_*.
        &[]
    }

    fn progress(&self, line: &str) -> Option<String> {
        plain_line(line)
    }

    fn outcome(&self, status: ExitStatus, tail: &Tail) -> Outcome {
        if status.success() {
            let summary = tail.stdout.iter().rev().find(|l| !l.trim().is_empty()).map(|l| l.trim().to_string());
            return Outcome::Done(Finished { summary: summary.unwrap_or_default(), ..Default::default() });
        }
        let lines = if tail.stderr.iter().any(|l| !l.trim().is_empty()) { &tail.stderr } else { &tail.stdout };
        let mut message = format!("`{}` ended with {}", self.run.join(" "), describe(status));
        if !lines.is_empty() {
            message.push_str(":\n");
            message.push_str(&last_lines(lines, MESSAGE_LINES));
        }
        Outcome::Failed { class: FailureClass::AgentError, message }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;

    use super::*;

    fn adapter() -> CommandAdapter {
        CommandAdapter::new(vec!["sh".into(), "-c".into(), "make fix".into()])
    }

    fn tail(stdout: &[&str], stderr: &[&str]) -> Tail {
        Tail {
            stdout: stdout.iter().map(|s| s.to_string()).collect(),
            stderr: stderr.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn success_takes_the_last_printed_line_as_the_summary() {
        let out = adapter().outcome(ExitStatus::from_raw(0), &tail(&["working", "Fixed the greeting.", "  "], &[]));
        assert_eq!(out, Outcome::Done(Finished { summary: "Fixed the greeting.".into(), ..Default::default() }));
    }

    #[test]
    fn failure_quotes_the_command_the_status_and_the_last_error_lines() {
        let out = adapter().outcome(ExitStatus::from_raw(2 << 8), &tail(&["ok so far"], &["make: *** no rule"]));
        let Outcome::Failed { class, message } = out else { panic!("{out:?}") };
        assert_eq!(class, FailureClass::AgentError);
        assert_eq!(message, "`sh -c make fix` ended with exit status 2:\nmake: *** no rule");
        let killed = adapter().outcome(ExitStatus::from_raw(9), &tail(&[], &[]));
        assert!(matches!(killed, Outcome::Failed { message, .. } if message.ends_with("killed by signal 9")));
    }

    #[test]
    fn blank_lines_are_not_progress() {
        assert_eq!(adapter().progress("   "), None);
        assert_eq!(adapter().progress("step 1\r").as_deref(), Some("step 1"));
    }
}
