//! Receipt validation: forgefleet checks the agent's claim itself, through the Forgejo API and its own git
//! mirror, before a task is done. It runs on every task in `validating`, so a crash mid-way simply checks
//! again after the restart.

use std::path::PathBuf;

use super::types::PullRequest;
use super::{ForgejoClient, ForgejoError};
use crate::core::text::code;
use crate::core::{Check, FileChange, Task, TaskId, TaskState, Validation};
use crate::engine::{Command, EngineHandle};
use crate::integrations::git::{GitError, Mirror};
use crate::store::{ReadPool, ReadView, StoreError};

pub struct Validator {
    pub client: ForgejoClient,
    pub engine: EngineHandle,
    /// The store's read path, shared with the other workers.
    pub reads: ReadPool,
    /// Where the bare mirrors live: `<dir>/<owner>/<name>.git`.
    pub mirrors: PathBuf,
    /// `<git_url>/<owner>/<name>.git` is fetched.
    pub git_url: String,
    pub token: String,
    /// `[forgejo] ca_file`, for git over HTTPS to a Forgejo behind a private CA.
    pub ca: Option<crate::config::CaBundle>,
    /// `[forgejo] branch_prefix`: the pull request's head must be the branch the attempt was assigned.
    pub branch_prefix: String,
    /// `[forgejo] base_branch`: the branch the pull request must be against.
    pub base_branch: String,
    /// `[forgejo.agent_users]`: agent name → Forgejo login. The pull request must be opened by the login of
    /// the agent that held the attempt, when one is configured.
    pub agent_users: std::collections::BTreeMap<String, String>,
}

/// What the store says about a receipt besides the receipt itself.
struct Context {
    /// The name of the agent holding the attempt.
    agent: Option<String>,
    /// Another task already completed with the same pull request.
    claimed_by: Option<TaskId>,
}

impl Context {
    fn read(r: ReadView<'_>, task: &Task) -> crate::store::Result<Context> {
        let agent = match &task.lease {
            Some(l) => r.agent(l.agent)?.map(|a| a.name.to_string()),
            None => None,
        };
        let claimed_by = match &task.receipt {
            Some(receipt) => r.completed_with_pull(&task.issue.repo, receipt.pr_number, task.id)?,
            None => None,
        };
        Ok(Context { agent, claimed_by })
    }
}

/// How the receipt's head relates to the pull request's, as forgefleet's mirror sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HeadSeen {
    Same,
    /// The claimed commit is not in the repository at all.
    Missing,
    /// The claimed commit is on the base branch: it adds nothing.
    OnBase,
    /// The claimed commit is an earlier commit of the pull request's branch: it was pushed to since.
    Earlier,
    /// Neither: another branch's commit, or the branch was force-pushed.
    Elsewhere,
}

/// A check that could not be made now (Forgejo or git unreachable): the task stays `validating` and is
/// checked again on the next pass.
#[derive(Debug, thiserror::Error)]
pub enum NotYet {
    #[error(transparent)]
    Forgejo(#[from] ForgejoError),
    #[error(transparent)]
    Git(#[from] GitError),
    #[error("{0}")]
    Local(String),
}

impl From<StoreError> for NotYet {
    fn from(e: StoreError) -> Self {
        NotYet::Local(e.to_string())
    }
}

fn check(name: &str, passed: bool, detail: String) -> Check {
    Check { name: name.to_string(), passed, detail }
}

/// Whether `text` mentions issue `n` as `#n` (not `#n0`, not `x#n` of another repository's short form).
pub fn refers_to(text: &str, repo: &str, n: u64) -> bool {
    let needle = format!("#{n}");
    let mut rest = text;
    while let Some(i) = rest.find(&needle) {
        let before = &rest[..i];
        let after = &rest[i + needle.len()..];
        let ends = !after.starts_with(|c: char| c.is_ascii_digit());
        // `other/repo#N` names another repository's issue; `this/repo#N` or a bare `#N` names ours.
        let prefix_ok = match before.rsplit(|c: char| c.is_whitespace() || c == '(' || c == '[').next() {
            Some("") | None => true,
            Some(p) => p == repo || !p.contains('/'),
        };
        if ends && prefix_ok {
            return true;
        }
        rest = &rest[i + needle.len()..];
    }
    false
}

impl Validator {
    /// Checks every task waiting in `validating`; returns how many got a verdict.
    pub async fn validate_pending(&self) -> Result<usize, NotYet> {
        let waiting = self
            .reads
            .with(move |r| -> crate::store::Result<Vec<(Task, Context)>> {
                let ids: Vec<TaskId> = r.tasks(Some(TaskState::Validating), 100)?.into_iter().map(|t| t.id).collect();
                let mut tasks = Vec::new();
                for id in ids {
                    // A task waiting for CI had its receipt checked already: the checks poller has it.
                    if let Some(task) = r.task(id)?.filter(|t| t.checks.is_none()) {
                        let context = Context::read(r, &task)?;
                        tasks.push((task, context));
                    }
                }
                Ok(tasks)
            })
            .await?;
        let mut done = 0;
        for (task, context) in waiting {
            match self.validate_with(&task, &context).await {
                Ok(validation) => {
                    let cmd = Command::FinishValidation { task: task.id, attempt: task.attempt, validation };
                    match self.engine.send(cmd).await {
                        Ok(_) => done += 1,
                        Err(e) => tracing::warn!(task = %task.id, error = %e, "recording a validation failed"),
                    }
                }
                Err(e) => tracing::warn!(task = %task.id, error = %e, "cannot check the receipt now; will try again"),
            }
        }
        Ok(done)
    }

    /// Every check of one receipt, each with its outcome.
    pub async fn validate(&self, task: &Task) -> Result<Validation, NotYet> {
        let t = task.clone();
        let context = self.reads.with(move |r| Context::read(r, &t)).await?;
        self.validate_with(task, &context).await
    }

    /// The checks, with what the store says about the receipt read already.
    async fn validate_with(&self, task: &Task, context: &Context) -> Result<Validation, NotYet> {
        let Some(receipt) = &task.receipt else {
            return Ok(Validation {
                checks: vec![check("receipt", false, "no receipt was recorded".into())],
                files: vec![],
            });
        };
        let repo = &task.issue.repo;
        let n = receipt.pr_number;
        let pr = match self.client.pull_request(repo, n).await {
            Ok(pr) => pr,
            Err(e) if e.is_not_found() => {
                let detail = format!("there is no pull request #{n} in {repo} (the agent claimed it)");
                return Ok(Validation { checks: vec![check("pull_request_exists", false, detail)], files: vec![] });
            }
            Err(e) => return Err(e.into()),
        };
        let mut checks = Vec::new();
        let open_or_merged = pr.state == "open" || pr.merged;
        let opener = pr.user.as_ref().map(|u| u.login.as_str()).unwrap_or("an unknown user");
        checks.push(check(
            "pull_request_exists",
            open_or_merged,
            if open_or_merged {
                format!(
                    "pull request #{n} exists in {repo}, opened by {opener}, and is {}",
                    if pr.merged { "merged" } else { "open" }
                )
            } else {
                format!("pull request #{n} in {repo} was closed without being merged")
            },
        ));
        let issue = task.issue.number;
        let refers = refers_to(&pr.title, repo.as_str(), issue) || refers_to(&pr.body, repo.as_str(), issue);
        checks.push(check(
            "refers_to_issue",
            refers,
            if refers {
                format!("it refers to #{issue}")
            } else {
                format!("neither its title nor its description mentions #{issue} (e.g. `Closes #{issue}`)")
            },
        ));
        checks.push(head_branch_check(&pr, task, &self.branch_prefix));
        checks.push(base_branch_check(&pr, &self.base_branch));
        if let Some(c) = self.opened_by_check(&pr, context.agent.as_deref()) {
            checks.push(c);
        }
        checks.push(match context.claimed_by {
            Some(other) => check(
                "not_claimed_before",
                false,
                format!(
                    "task {other} was already completed with pull request #{n}: one pull request is one task's work"
                ),
            ),
            None => check("not_claimed_before", true, format!("no other task was completed with #{n}")),
        });
        let claimed = receipt.head_sha.as_str();
        let (git_check, files, seen, builds_on) = self.inspect(task, &pr.base.name, claimed, &pr.head.sha).await?;
        checks.push(head_matches_check(seen, &pr, claimed));
        checks.push(git_check);
        if let Some(f) = &task.follow_up {
            // A round of changes works on the same pull request, on top of what was verified before.
            checks.push(if n == f.pr_number {
                check("same_pull_request", true, format!("it is #{n}, the pull request the changes were asked on"))
            } else {
                check(
                    "same_pull_request",
                    false,
                    format!("it is #{n}, but the changes were asked on #{}: a round works on that one", f.pr_number),
                )
            });
            checks.extend(builds_on);
        }
        Ok(Validation { checks, files })
    }

    /// The pull request was opened by the agent's own Forgejo user, when `[forgejo.agent_users]` names one;
    /// `None` (no check) when it does not.
    fn opened_by_check(&self, pr: &PullRequest, agent: Option<&str>) -> Option<Check> {
        let agent = agent?;
        let login = self.agent_users.get(agent)?;
        let opener = pr.user.as_ref().map(|u| u.login.as_str());
        Some(match opener {
            Some(o) if o.eq_ignore_ascii_case(login) => {
                check("opened_by_agent", true, format!("it was opened by {o}, the Forgejo user of agent {agent}"))
            }
            Some(o) => check(
                "opened_by_agent",
                false,
                format!(
                    "it was opened by {o}, not by {login}, the Forgejo user of agent {agent}: it is not the agent's work"
                ),
            ),
            None => check("opened_by_agent", false, format!("Forgejo does not say who opened it (expected {login})")),
        })
    }

    /// Fetches the base branch and the pull request's head into forgefleet's own mirror and looks at what the
    /// claimed head changes.
    async fn inspect(
        &self,
        task: &Task,
        base: &str,
        head: &str,
        pr_head: &str,
    ) -> Result<(Check, Vec<FileChange>, HeadSeen, Option<Check>), NotYet> {
        let repo = task.issue.repo.clone();
        let n = task.receipt.as_ref().map(|r| r.pr_number).unwrap_or_default();
        let dir = self.mirrors.join(repo.owner()).join(format!("{}.git", repo.name()));
        let url = format!("{}/{}/{}.git", self.git_url.trim_end_matches('/'), repo.owner(), repo.name());
        let (token, ca) = (self.token.clone(), self.ca.clone());
        let base = base.to_string();
        let head_sha = head.to_string();
        let pr_head = pr_head.to_string();
        let previous = task.follow_up.as_ref().map(|f| f.verified_head.clone());
        let (inspection, seen, builds_on) = tokio::task::spawn_blocking(move || -> Result<_, GitError> {
            let head = head_sha;
            let mirror = Mirror::open_or_init(&dir)?.with_ca(ca);
            let refspecs =
                [format!("+refs/heads/{base}:refs/heads/{base}"), format!("+refs/pull/{n}/head:refs/pull/{n}/head")];
            let refspecs: Vec<&str> = refspecs.iter().map(String::as_str).collect();
            mirror.fetch(&url, Some(&token), &refspecs)?;
            let inspection = mirror.inspect(&format!("refs/heads/{base}"), &head)?;
            let seen = if head.eq_ignore_ascii_case(&pr_head) {
                HeadSeen::Same
            } else if !inspection.head_exists {
                HeadSeen::Missing
            } else if inspection.commits.is_empty() {
                HeadSeen::OnBase
            } else {
                // The claimed commit is an ancestor of the pull request's head: the branch moved on since.
                let later = mirror.inspect(&head, &pr_head)?;
                if later.head_exists && later.merge_base.as_deref().is_some_and(|m| m.eq_ignore_ascii_case(&head)) {
                    HeadSeen::Earlier
                } else {
                    HeadSeen::Elsewhere
                }
            };
            // A round of changes: the claimed head descends from the verified one and adds a commit that changes
            // something.
            let builds_on = match previous {
                None => None,
                Some(previous) => {
                    let since = mirror.inspect(&previous, &head)?;
                    let (old, new) = (short(&previous).to_string(), short(&head).to_string());
                    Some(if !since.head_exists {
                        check("builds_on_verified_head", false, format!("commit {new} is not in the repository"))
                    } else if !since.merge_base.as_deref().is_some_and(|m| m.eq_ignore_ascii_case(&previous)) {
                        check(
                            "builds_on_verified_head",
                            false,
                            format!(
                                "{new} does not descend from {old}, the head verified before: the branch was rewritten"
                            ),
                        )
                    } else if since.commits.is_empty() || !since.tree_changed {
                        check(
                            "builds_on_verified_head",
                            false,
                            format!("{new} adds nothing to {old}, the head verified before: no change was made"),
                        )
                    } else {
                        check(
                            "builds_on_verified_head",
                            true,
                            format!("{} new commit(s) on top of {old}, the head verified before", since.commits.len()),
                        )
                    })
                }
            };
            keep_packs_in_check(&mirror);
            Ok((inspection, seen, builds_on))
        })
        .await
        .map_err(|e| NotYet::Local(e.to_string()))??;
        let files: Vec<FileChange> = inspection
            .changed_files
            .iter()
            .map(|f| FileChange {
                path: f.path.clone(),
                status: f.status.as_str().into(),
                additions: f.additions,
                deletions: f.deletions,
            })
            .collect();
        let c = if !inspection.head_exists {
            check("commits_change_something", false, format!("commit {} is not in the repository", short(head)))
        } else if inspection.commits.is_empty() {
            check("commits_change_something", false, format!("{} adds no commits to the base branch", short(head)))
        } else if !inspection.tree_changed {
            check(
                "commits_change_something",
                false,
                format!("its {} commit(s) change no file (an empty diff)", inspection.commits.len()),
            )
        } else {
            check(
                "commits_change_something",
                true,
                format!(
                    "git: {} commit(s) changing {} file(s), +{} −{} lines",
                    inspection.commits.len(),
                    files.len(),
                    inspection.additions(),
                    inspection.deletions()
                ),
            )
        };
        Ok((c, files, seen, builds_on))
    }
}

/// The pull request's head branch is in the task's own repository (not a fork) and is exactly the branch the
/// attempt was assigned ([`Task::branch`]: its own, or the one an earlier attempt pushed, which it continues).
/// An earlier attempt's branch that was not handed on is refused: it holds work that was not this attempt's.
fn head_branch_check(pr: &PullRequest, task: &Task, prefix: &str) -> Check {
    let repo = task.issue.repo.as_str();
    let (name, branch) = (pr.head.name.as_str(), code(&pr.head.name));
    let expected = task.branch(prefix);
    match pr.head.repo.as_ref().map(|r| r.full_name.as_str()) {
        Some(r) if r.eq_ignore_ascii_case(repo) => {}
        Some(r) => {
            return check(
                "head_branch",
                false,
                format!("its head branch {branch} is in {r}, not in {repo}: work comes from the task's own repository"),
            );
        }
        None => {
            return check(
                "head_branch",
                false,
                format!("its head branch {branch} is in a repository that no longer exists, not in {repo}"),
            );
        }
    }
    if name == expected {
        return check("head_branch", true, format!("its head is {branch} in {repo}, the assignment's branch"));
    }
    check(
        "head_branch",
        false,
        format!("its head branch is {branch}, not the assignment's {}: it is not this task's work", code(&expected)),
    )
}

/// The pull request is against the task's base branch.
fn base_branch_check(pr: &PullRequest, base: &str) -> Check {
    if pr.base.name == base {
        check("base_branch", true, format!("it is against {}", code(base)))
    } else {
        let detail = format!("it is against {}, not the task's base branch {}", code(&pr.base.name), code(base));
        check("base_branch", false, detail)
    }
}

/// The pull request's head is the receipt's, and if not, what the receipt names instead.
fn head_matches_check(seen: HeadSeen, pr: &PullRequest, claimed: &str) -> Check {
    let (head, claimed) = (short(&pr.head.sha), short(claimed));
    let detail = match seen {
        HeadSeen::Same => return check("head_matches", true, format!("its head is {head}, as the receipt says")),
        HeadSeen::Missing => {
            format!(
                "its head is {head} but the receipt names {claimed}, a commit that does not exist in the repository"
            )
        }
        HeadSeen::OnBase => format!(
            "its head is {head} but the receipt names {claimed}, a commit of the base branch {}: it adds no work",
            code(&pr.base.name)
        ),
        HeadSeen::Earlier => format!(
            "its head is {head} but the receipt names {claimed}, an earlier commit of the branch: the branch was pushed to after the receipt"
        ),
        HeadSeen::Elsewhere => format!(
            "its head is {head} but the receipt names {claimed}, which is not on the pull request's branch (another branch's commit, or the branch was force-pushed since)"
        ),
    };
    check("head_matches", false, detail)
}

fn short(sha: &str) -> &str {
    sha.get(..10).unwrap_or(sha)
}

/// Past this many packs a mirror is repacked: git's own `gc.autoPackLimit` default.
const PACK_LIMIT: usize = 50;

/// Repacks the mirror when fetches have piled up packs. It is a cache: a failure is logged, never a reason
/// to hold up a validation; without `git` installed it is said once, then only at debug level.
fn keep_packs_in_check(mirror: &Mirror) {
    static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    match mirror.maintain(PACK_LIMIT) {
        Ok(None) => {}
        Ok(Some(r)) => tracing::info!(
            mirror = %mirror.path().display(),
            packs_before = r.packs_before,
            packs_after = r.packs_after,
            elapsed_ms = r.elapsed.as_millis() as u64,
            "repacked the git mirror"
        ),
        Err(e) if !WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) => {
            tracing::warn!(error = %e, "cannot repack the git mirror; validation goes on while its packs pile up")
        }
        Err(e) => tracing::debug!(error = %e, "cannot repack the git mirror"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::{Event, Timestamp};

    /// Task 1 for acme/app#7, on `attempt`.
    fn task(attempt: u32) -> Task {
        let queued = Event::TaskQueued {
            task: TaskId(1),
            issue: "acme/app#7".parse().unwrap(),
            title: "t".into(),
            body: String::new(),
            labels: vec![],
            spec: Default::default(),
            at: Timestamp(0),
            issue_id: None,
        };
        let mut t = Task::queued(&queued).unwrap();
        t.attempt = attempt;
        t
    }

    /// A pull request from `branch` of `head_repo` (None: the repository is gone) into `base`.
    fn pull(branch: &str, head_repo: Option<&str>, base: &str) -> PullRequest {
        serde_json::from_value(serde_json::json!({
            "number": 3, "title": "t", "state": "open",
            "head": {"ref": branch, "sha": "a".repeat(40), "repo": head_repo.map(|r| serde_json::json!({"full_name": r}))},
            "base": {"ref": base, "sha": "b".repeat(40), "repo": {"full_name": "acme/app"}},
            "user": {"id": 5, "login": "agent"}
        }))
        .unwrap()
    }

    #[test]
    fn the_head_branch_must_be_the_attempts_assigned_branch_in_the_tasks_own_repository() {
        let check = |branch: &str, repo: Option<&str>, attempt: u32| {
            head_branch_check(&pull(branch, repo, "main"), &task(attempt), "forgefleet/")
        };
        let ours = check("forgefleet/issue-7-attempt-2", Some("acme/app"), 2);
        assert!(ours.passed && ours.detail.contains("the assignment's branch"), "{ours:?}");
        let ours_in = check("forgefleet/issue-7-attempt-2", Some("Acme/App"), 2);
        assert!(ours_in.passed, "the repository's name is compared without regard to case: {ours_in:?}");
        // An earlier attempt's branch only when it was handed on (its agent said it pushed it).
        let earlier = check("forgefleet/issue-7-attempt-1", Some("acme/app"), 2);
        assert!(!earlier.passed && earlier.detail.contains("not the assignment's"), "{earlier:?}");
        let mut continuing = task(2);
        continuing.pushed_branch = Some("forgefleet/issue-7-attempt-1".into());
        let pull_1 = pull("forgefleet/issue-7-attempt-1", Some("acme/app"), "main");
        let continued = head_branch_check(&pull_1, &continuing, "forgefleet/");
        assert!(continued.passed && continued.detail.contains("the assignment's branch"), "{continued:?}");
        let pull_2 = pull("forgefleet/issue-7-attempt-2", Some("acme/app"), "main");
        let own = head_branch_check(&pull_2, &continuing, "forgefleet/");
        assert!(!own.passed && own.detail.contains("not the assignment's `forgefleet/issue-7-attempt-1`"), "{own:?}");
        let later = check("forgefleet/issue-7-attempt-3", Some("acme/app"), 2);
        assert!(!later.passed && later.detail.contains("not the assignment's `forgefleet/issue-7-attempt-2`"));
        let other_task = check("forgefleet/issue-8-attempt-1", Some("acme/app"), 1);
        assert!(!other_task.passed, "{other_task:?}");
        let fork = check("forgefleet/issue-7-attempt-1", Some("mallory/app"), 1);
        assert!(!fork.passed && fork.detail.contains("is in mallory/app, not in acme/app"), "{fork:?}");
        let gone = check("forgefleet/issue-7-attempt-1", None, 1);
        assert!(!gone.passed && gone.detail.contains("no longer exists"), "{gone:?}");
    }

    #[test]
    fn a_branch_name_with_backticks_stays_inside_its_code_span() {
        let c = head_branch_check(&pull("x`@alice", Some("acme/app"), "main"), &task(1), "forgefleet/");
        assert!(c.detail.contains("``x`@alice``"), "{c:?}");
    }

    #[test]
    fn the_base_branch_must_be_the_tasks() {
        assert!(base_branch_check(&pull("x", Some("acme/app"), "main"), "main").passed);
        let c = base_branch_check(&pull("x", Some("acme/app"), "release"), "main");
        assert!(!c.passed && c.detail.contains("`release`, not the task's base branch `main`"), "{c:?}");
    }

    #[test]
    fn references_to_the_issue_are_found_and_others_are_not() {
        assert!(refers_to("Closes #12", "acme/app", 12));
        assert!(refers_to("Fix login (#12)", "acme/app", 12));
        assert!(refers_to("see acme/app#12", "acme/app", 12));
        assert!(!refers_to("Closes #123", "acme/app", 12));
        assert!(!refers_to("Closes other/repo#12", "acme/app", 12));
        assert!(!refers_to("nothing here", "acme/app", 12));
        assert!(refers_to("#120 and also #12.", "acme/app", 12));
    }
}
