//! The Forgejo side of the command path: a comment's author's permission is their collaborator permission
//! on the repository the command is about; the bot's own comments never run; `/assign`'s pin is written as the
//! issue's `agent:` label. The commands themselves run through [`crate::integrations::commands::Runner`].

use super::observation;
use super::{Deliverer, DeliveryError};
use crate::core::commands::Parsed;
use crate::core::{AgentName, CommandOrigin, IssueRef, RepoName};
use crate::engine::Command;
use crate::integrations::commands::{Permission, Runner, Verdict};
use crate::integrations::forgejo::types::Permission as Collaborator;
use crate::integrations::templates::RefusedReply;

/// Forgejo's rule: write, admin or owner on the repository.
pub(super) struct CollaboratorPermission<'a>(pub &'a Deliverer);

impl Permission for CollaboratorPermission<'_> {
    async fn check(&self, author: &str, repo: Option<&RepoName>, line: &str) -> Result<Verdict, DeliveryError> {
        let Some(repo) = repo else {
            return Ok(Verdict::Refused(format!(
                "@{author} `{line}` is about the whole fleet: run it from the operator CLI or a Matrix room as a fleet admin."
            )));
        };
        let d = self.0;
        let permission = match d.client.permission(repo, author).await {
            Ok(p) => p,
            Err(e) if e.is_not_found() => Collaborator { permission: "none".into() },
            Err(e) if e.status().is_some_and(|s| s.as_u16() == 403) => {
                // Forgejo shows other people's permission only to repository admins: without it, nobody's
                // command can be checked, and guessing would let anyone steer the fleet.
                tracing::error!(repo = %repo, "forgefleet's Forgejo account needs admin access to read permissions");
                return Ok(Verdict::Refused(format!(
                    "@{author} I cannot check who may command me in {repo}: my account needs admin access to the \
                     repository. Nothing was run."
                )));
            }
            Err(e) => return Err(e.into()),
        };
        if permission.can_write() {
            return Ok(Verdict::Allowed);
        }
        let refused = RefusedReply {
            author: author.into(),
            repo: repo.to_string(),
            permission: permission.permission,
            command: line.into(),
        };
        Ok(Verdict::Refused(d.templates.render(&refused).map_err(|e| DeliveryError::Other(e.to_string()))?))
    }
}

/// Matrix's rule: a fleet admin (`[matrix] admins`) may do anything; anyone else needs a mapping
/// (`[matrix.users]`) to a Forgejo login with write permission on the repository the command is about.
pub(super) struct MatrixPermission<'a>(pub &'a Deliverer);

impl Permission for MatrixPermission<'_> {
    async fn check(&self, author: &str, repo: Option<&RepoName>, line: &str) -> Result<Verdict, DeliveryError> {
        let d = self.0;
        if d.matrix_admins.iter().any(|a| a == author) {
            return Ok(Verdict::Allowed);
        }
        let Some(repo) = repo else {
            return Ok(Verdict::Refused(format!(
                "`{line}` is about the whole fleet: only fleet admins (`[matrix] admins` in forgefleet's configuration) may run it."
            )));
        };
        let Some(login) = d.matrix_users.get(author) else {
            return Ok(Verdict::Refused(format!(
                "{author} is not mapped to a Forgejo user, so `{line}` was not run. Changes need a Forgejo user with \
                 write access to {repo}: ask an operator to add `\"{author}\" = \"<forgejo login>\"` under \
                 `[matrix.users]` in forgefleet's configuration. Anyone may read (`/fleet status`)."
            )));
        };
        match CollaboratorPermission(d).check(login, Some(repo), line).await? {
            Verdict::Allowed => Ok(Verdict::Allowed),
            Verdict::Refused(_) => Ok(Verdict::Refused(format!(
                "{author} is mapped to the Forgejo user `{login}`, who has no write access to {repo}, so `{line}` \
                 was not run."
            ))),
        }
    }
}

impl Deliverer {
    /// Runs the commands of one comment or chat message. A comment by forgefleet itself commands nothing, and
    /// none runs until forgefleet knows its own login.
    pub(super) async fn run_commands(
        &self,
        origin: &CommandOrigin,
        author: &str,
        commands: &[Parsed],
        quiet: bool,
    ) -> Result<(), DeliveryError> {
        if let CommandOrigin::Comment { .. } = origin
            && self.is_bot(author, "commands")?
        {
            return Ok(());
        }
        match origin {
            CommandOrigin::Comment { .. } => {
                self.runner(&CollaboratorPermission(self)).run(origin, author, commands, quiet).await
            }
            CommandOrigin::Matrix { .. } => {
                self.runner(&MatrixPermission(self)).run(origin, author, commands, quiet).await
            }
        }
    }

    /// Whether `login` is forgefleet's own Forgejo account, whose words command nothing. Until forgefleet knows
    /// its login, the delivery waits (an error: tried again later), as `what` says.
    pub(super) fn is_bot(&self, login: &str, what: &str) -> Result<bool, DeliveryError> {
        self.bot.is(login).ok_or_else(|| {
            DeliveryError::Other(format!("forgefleet does not know its own Forgejo login yet (GET /user): {what} wait"))
        })
    }

    fn runner<'a, P: Permission>(&'a self, permission: &'a P) -> Runner<'a, P> {
        Runner {
            engine: &self.engine,
            templates: &self.templates,
            permission,
            clock: &self.clock,
            reads: &self.reads,
            todo_label: &self.labels.todo,
        }
    }

    /// Pins the issue to one agent: its `agent:` labels become just this one, and the engine sees the issue
    /// as it now is. Setting a target, not toggling: delivering it twice changes nothing.
    pub(super) async fn set_agent_label(&self, issue: &IssueRef, agent: &AgentName) -> Result<(), DeliveryError> {
        let scheme = self.scheme(issue).await;
        let want = format!("{}{agent}", scheme.agent_prefix);
        let current = self.client.issue_labels(&issue.repo, issue.number).await?;
        for l in current.iter().filter(|l| l.name.starts_with(&scheme.agent_prefix) && l.name != want) {
            self.client.remove_label(&issue.repo, issue.number, l.id).await?;
        }
        if !current.iter().any(|l| l.name == want) {
            let ids = self.label_ids(issue, std::slice::from_ref(&want)).await?;
            self.client.add_labels(&issue.repo, issue.number, &ids).await?;
        }
        let now = self.client.issue(&issue.repo, issue.number).await?;
        self.engine.send(Command::ObserveIssue(observation(&issue.repo, &now))).await?;
        Ok(())
    }
}
