//! The one path that creates repository labels: it looks before each creation, and one creation runs at a
//! time, so forgefleet never makes a label that exists (its own start-up check and its deliveries included).

use std::sync::Arc;

use super::types::Label;
use super::{ForgejoClient, ForgejoError};
use crate::core::{LabelScheme, RepoName};

/// Finds labels by name and creates the missing ones. Clones share the one lock.
#[derive(Clone)]
pub struct LabelMaker {
    client: ForgejoClient,
    creating: Arc<tokio::sync::Mutex<()>>,
}

impl LabelMaker {
    pub fn new(client: ForgejoClient) -> Self {
        Self { client, creating: Arc::new(tokio::sync::Mutex::new(())) }
    }

    /// The ids of the named labels of `repo`, in order, creating those that do not exist.
    pub async fn ids(&self, repo: &RepoName, names: &[String]) -> Result<Vec<i64>, ForgejoError> {
        Ok(self.ensure(repo, names).await?.into_iter().map(|(id, _)| id).collect())
    }

    /// Creates the labels `scheme` manages that `repo` lacks; returns the names it created.
    pub async fn ensure_managed(&self, repo: &RepoName, scheme: &LabelScheme) -> Result<Vec<String>, ForgejoError> {
        let names = scheme.managed_labels();
        let found = self.ensure(repo, &names).await?;
        Ok(names.into_iter().zip(found).filter(|(_, (_, created))| *created).map(|(n, _)| n).collect())
    }

    /// Each name's label id, and whether forgefleet just created it.
    async fn ensure(&self, repo: &RepoName, names: &[String]) -> Result<Vec<(i64, bool)>, ForgejoError> {
        let mut existing = self.client.repo_labels(repo).await?;
        if names.iter().all(|n| lowest(&existing, n).is_some()) {
            return Ok(names.iter().filter_map(|n| lowest(&existing, n)).map(|id| (id, false)).collect());
        }
        let _one_at_a_time = self.creating.lock().await;
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            if let Some(id) = lowest(&existing, name) {
                out.push((id, false));
                continue;
            }
            // Look again right before creating: another creation, or a person, may have made it since.
            existing = self.client.repo_labels(repo).await?;
            if let Some(id) = lowest(&existing, name) {
                out.push((id, false));
                continue;
            }
            // A lost answer is not resent blind (the client's rule for a `POST`): the next try looks first.
            let made = self.client.create_label(repo, name, label_color(name), "managed by forgefleet").await?;
            existing.push(made.clone());
            out.push((made.id, true));
        }
        Ok(out)
    }
}

/// The label named `name`; of duplicates (people can make them), the one with the lowest id.
pub fn lowest(labels: &[Label], name: &str) -> Option<i64> {
    labels.iter().filter(|l| l.name == name).map(|l| l.id).min()
}

/// Colours for the labels forgefleet creates.
pub fn label_color(name: &str) -> &'static str {
    match name.rsplit(':').next().unwrap_or(name) {
        "todo" => "#0075ca",
        "doing" => "#fbca04",
        "done" => "#0e8a16",
        "failed" => "#d73a4a",
        "blocked" => "#8250df",
        "critical" => "#b60205",
        "high" => "#d93f0b",
        "medium" => "#fbca04",
        "low" => "#c2e0c6",
        _ => "#ededed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_status_has_its_colour() {
        assert_eq!(label_color("status:done"), "#0e8a16");
        assert_eq!(label_color("fleet/whatever"), "#ededed");
    }

    #[test]
    fn of_duplicates_the_lowest_id_is_used_whatever_the_listing_order() {
        let label = |id: i64, name: &str| {
            serde_json::from_value::<Label>(serde_json::json!({"id": id, "name": name, "color": "ededed"})).unwrap()
        };
        let labels = [label(9, "status:doing"), label(4, "status:todo"), label(3, "status:doing")];
        assert_eq!(lowest(&labels, "status:doing"), Some(3));
        assert_eq!(lowest(&labels, "status:done"), None);
    }
}
