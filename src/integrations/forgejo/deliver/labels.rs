//! The status label an issue carries: set to what the task's state calls for now, in one replace, so
//! deliveries that arrive late or twice end in the same place.

use super::{Deliverer, DeliveryError};
use crate::core::{IssueRef, StatusLabel};

impl Deliverer {
    /// Leaves exactly the status label the task's state calls for *now*: deliveries that arrive out of
    /// order or twice end in the same place.
    pub(super) async fn set_status_label(
        &self,
        issue: &IssueRef,
        fallback: Option<StatusLabel>,
    ) -> Result<(), DeliveryError> {
        let lookup = issue.clone();
        let task = self.read(move |r| r.task_by_issue(&lookup)).await?;
        let want = task.map_or(fallback, |t| t.state.status_label());
        let current = self.client.issue_labels(&issue.repo, issue.number).await?;
        let names: Vec<String> = current.iter().map(|l| l.name.clone()).collect();
        let change = self.scheme(issue).await.status_change(&names, want);
        if change.is_empty() {
            return Ok(());
        }
        // One replace, so the issue goes from its old labels to the new ones in a single step: webhooks never
        // show it with two status labels, nor with none in between (which would read as a person calling the
        // work off).
        let mut ids: Vec<i64> = current.iter().filter(|l| !change.remove.contains(&l.name)).map(|l| l.id).collect();
        ids.extend(self.label_ids(issue, &change.add).await?);
        self.client.replace_labels(&issue.repo, issue.number, &ids).await?;
        Ok(())
    }

    /// The ids of the named repository labels (the lowest of duplicates), creating the ones that are missing.
    pub(super) async fn label_ids(&self, issue: &IssueRef, names: &[String]) -> Result<Vec<i64>, DeliveryError> {
        Ok(self.label_maker.ids(&issue.repo, names).await?)
    }
}
