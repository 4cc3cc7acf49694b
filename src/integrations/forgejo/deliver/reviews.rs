//! A pull request's reviews, read back from Forgejo after a review webhook (or by reconciliation): a review
//! that requests changes of the pull request's head, by a person with write permission, becomes a round of
//! changes for the completed task whose receipt names the pull request. What the webhook carried is never
//! acted on; what does not apply is answered on the pull request once.

use super::run_commands::CollaboratorPermission;
use super::{Deliverer, DeliveryError};
use crate::core::{Effect, IssueRef, ReviewNote};
use crate::engine::{Command, CommandOutcome, Reply};
use crate::integrations::commands::{Permission, Verdict};
use crate::integrations::forgejo::types::{PullReview, PullReviewComment};
use crate::integrations::templates::FailedReply;

/// How a review is named where a command's line would be: in the permission check and in answers.
const WHAT: &str = "request changes";

impl Deliverer {
    pub(super) async fn confirm_reviews(&self, pull: &IssueRef) -> Result<(), DeliveryError> {
        let pr = match self.client.pull_request(&pull.repo, pull.number).await {
            Ok(pr) => pr,
            Err(e) if e.is_not_found() => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        if pr.state != "open" || pr.merged {
            return Ok(());
        }
        let reviews = self.client.pull_reviews(&pull.repo, pull.number).await?;
        for review in reviews.iter().filter(|r| r.asks_changes_of(&pr.head.sha)) {
            let Some(reviewer) = review.user.as_ref().map(|u| u.login.as_str()) else { continue };
            if self.is_bot(reviewer, "reviews")? {
                continue;
            }
            if let Verdict::Refused(_) = CollaboratorPermission(self).check(reviewer, Some(&pull.repo), WHAT).await? {
                // Anyone who may read may review; only a writer's review is work for the fleet. Nobody is told:
                // a review is not a command addressed to forgefleet.
                tracing::info!(pull = %pull, reviewer, review = review.id, "a review without write permission asks for nothing");
                continue;
            }
            self.request_changes(pull, reviewer, review).await?;
        }
        Ok(())
    }

    async fn request_changes(&self, pull: &IssueRef, reviewer: &str, review: &PullReview) -> Result<(), DeliveryError> {
        let comments = self.client.review_comments(&pull.repo, pull.number, review.id).await?;
        let command = Command::RequestChanges {
            pull: pull.clone(),
            by: reviewer.to_string(),
            review_id: review.id,
            commit_id: review.commit_id.clone(),
            body: review.body.clone(),
            notes: comments.into_iter().map(note).collect(),
        };
        let why = match self.engine.send(command).await? {
            Reply::Ran(CommandOutcome::NotApplicable(why)) => why,
            // Applied, seen before, of an older head, or no task's pull request: nothing to say.
            Reply::Ran(_) => return Ok(()),
            other => return Err(DeliveryError::Other(format!("the engine answered a review with {other:?}"))),
        };
        let reply = FailedReply { author: reviewer.to_string(), command: WHAT.into(), why };
        let body = self.templates.render(&reply).map_err(|e| DeliveryError::Other(e.to_string()))?;
        // Enqueued once under the review's own key, and posted once under its marker.
        let key = format!("review:{}", review.id);
        let effect = Effect::Reply { issue: pull.clone(), key: key.clone(), body };
        let record =
            Command::FromWebhook { key: format!("{key}:{pull}:answer"), inner: Box::new(Command::Enqueue(effect)) };
        self.engine.send(record).await?;
        Ok(())
    }
}

/// A line comment as the agent is told it: its file, and its line in the new file when it is on that side.
fn note(c: PullReviewComment) -> ReviewNote {
    ReviewNote {
        path: Some(c.path).filter(|p| !p.is_empty()),
        line: (c.position > 0).then_some(c.position),
        body: c.body,
    }
}
