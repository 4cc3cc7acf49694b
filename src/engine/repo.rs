//! Per-repository settings from the repository itself (`.forgejo/fleet.yaml`): label names, time limits,
//! retry rules and the agent prompt. What a repository does not set comes from the server's configuration.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::core::{FailureClass, LabelScheme, Priority, RepoName, RetryPolicy, RetryRule};
use crate::store::ReadView;

/// The one way to the per-repository settings as the engine stored them: the key they live under and their
/// decoding. Everything that reads a repository's settings (the engine at start, the deliverer's labels, the
/// reconciler) goes through here.
pub struct RepoSettings;

/// The `meta` key prefix under which each repository's settings are kept.
const KEY_PREFIX: &str = "repo.settings:";

impl RepoSettings {
    /// Where `repo`'s settings are kept.
    pub fn key(repo: &RepoName) -> String {
        format!("{KEY_PREFIX}{repo}")
    }

    /// What the store holds for `repo`; `None` if nothing was read for it yet. Stored settings that no longer
    /// decode (written by another version) count as none, with a warning: the server's defaults apply.
    pub fn read(r: ReadView<'_>, repo: &RepoName) -> crate::store::Result<Option<RepoOverrides>> {
        Ok(r.meta(&Self::key(repo))?.and_then(|text| decode(repo, &text)))
    }

    /// Every repository's stored settings.
    pub fn read_all(r: ReadView<'_>) -> crate::store::Result<Vec<(RepoName, RepoOverrides)>> {
        let rows = r.meta_with_prefix(KEY_PREFIX)?;
        Ok(rows
            .into_iter()
            .filter_map(|(key, text)| {
                let repo = RepoName::parse(key.strip_prefix(KEY_PREFIX)?).ok()?;
                let overrides = decode(&repo, &text)?;
                Some((repo, overrides))
            })
            .collect())
    }

    /// The label scheme of `repo`: its `fleet.yaml`'s, or `base` (the server's).
    pub fn labels(r: ReadView<'_>, repo: &RepoName, base: &LabelScheme) -> crate::store::Result<LabelScheme> {
        Ok(Self::read(r, repo)?.and_then(|o| o.labels).unwrap_or_else(|| base.clone()))
    }
}

fn decode(repo: &RepoName, text: &str) -> Option<RepoOverrides> {
    serde_json::from_str(text)
        .inspect_err(
            |e| tracing::warn!(%repo, error = %e, "stored repository settings cannot be read; the defaults apply"),
        )
        .ok()
}

/// One failure class's retry rule as a repository writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetrySpec {
    pub max_retries: u32,
    pub base_secs: u64,
    pub cap_secs: u64,
}

/// What a repository's `fleet.yaml` changes; stored as the engine uses it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RepoOverrides {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<LabelScheme>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_timeout_secs: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_timeout_secs: Option<u64>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub retry: BTreeMap<FailureClass, RetrySpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    /// The Matrix room the repository's news goes to: one of the rooms the server allows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matrix_room: Option<String>,
    /// CI as a receipt check, as the repository sets it (checked when read); unset: the server's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub require_checks: Option<crate::core::ChecksSetting>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checks_timeout_secs: Option<u64>,
    /// What a task does when its pull request is closed without merging; unset: the server's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_pr_closed: Option<crate::core::OnPullClosed>,
    /// How many rounds of changes people may ask for; unset: the server's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub review_rounds: Option<u32>,
    /// Whether any comment on a blocked task's issue answers it; unset: the server's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer_any_comment: Option<bool>,
    /// Whether a conflicted pull request gets a round that merges its base branch in; unset: the server's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_rebase: Option<bool>,
    /// Why the file could not be used (then everything else is empty and the defaults apply).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    /// The file's blob id: read again only when it changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_sha: Option<String>,
}

impl RepoOverrides {
    pub fn retry_policy(&self, base: &RetryPolicy) -> RetryPolicy {
        self.retry.iter().fold(base.clone(), |p, (class, r)| {
            p.with_rule(
                *class,
                RetryRule {
                    max_retries: r.max_retries,
                    base: Duration::from_secs(r.base_secs),
                    cap: Duration::from_secs(r.cap_secs),
                },
            )
        })
    }
}

/// The file as people write it. Every part is optional; unknown keys are errors, so a typo is reported
/// rather than silently ignored.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FleetFile {
    #[serde(default)]
    labels: Option<LabelsPart>,
    #[serde(default)]
    timeouts: Option<TimeoutsPart>,
    #[serde(default)]
    retry: BTreeMap<String, RetrySpec>,
    #[serde(default)]
    prompt: Option<String>,
    #[serde(default)]
    matrix: Option<MatrixPart>,
    #[serde(default)]
    require_checks: Option<crate::core::ChecksSetting>,
    #[serde(default)]
    on_pr_closed: Option<crate::core::OnPullClosed>,
    #[serde(default)]
    review_rounds: Option<u32>,
    #[serde(default)]
    answer_any_comment: Option<bool>,
    #[serde(default)]
    auto_rebase: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct MatrixPart {
    room: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LabelsPart {
    todo: Option<String>,
    doing: Option<String>,
    done: Option<String>,
    failed: Option<String>,
    blocked: Option<String>,
    priority_prefix: Option<String>,
    type_prefix: Option<String>,
    needs_prefix: Option<String>,
    agent_prefix: Option<String>,
    default_priority: Option<Priority>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TimeoutsPart {
    task_mins: Option<u64>,
    start_secs: Option<u64>,
    checks_mins: Option<u64>,
}

/// Reads a `fleet.yaml` on top of the server's label scheme. `rooms` are the Matrix rooms the server allows
/// the repository (`[matrix.repos]`, else the default room); `None` when Matrix is off. An error says what is
/// wrong and where.
pub fn parse_fleet_yaml(
    text: &str,
    base_labels: &LabelScheme,
    rooms: Option<&[&str]>,
) -> Result<RepoOverrides, String> {
    let file: FleetFile = if text.trim().is_empty() {
        FleetFile::default()
    } else {
        serde_saphyr::from_str(text).map_err(|e| e.to_string())?
    };
    let mut out = RepoOverrides::default();
    if let Some(l) = file.labels {
        let mut s = base_labels.clone();
        let set = |slot: &mut String, v: Option<String>| {
            if let Some(v) = v {
                *slot = v;
            }
        };
        set(&mut s.todo, l.todo);
        set(&mut s.doing, l.doing);
        set(&mut s.done, l.done);
        set(&mut s.failed, l.failed);
        set(&mut s.blocked, l.blocked);
        set(&mut s.priority_prefix, l.priority_prefix);
        set(&mut s.type_prefix, l.type_prefix);
        set(&mut s.needs_prefix, l.needs_prefix);
        set(&mut s.agent_prefix, l.agent_prefix);
        if let Some(p) = l.default_priority {
            s.default_priority = p;
        }
        let statuses = [&s.todo, &s.doing, &s.done, &s.failed, &s.blocked];
        if statuses.iter().any(|n| n.trim().is_empty()) {
            return Err("labels: the status label names must not be empty".into());
        }
        for (i, a) in statuses.iter().enumerate() {
            if statuses[i + 1..].contains(a) {
                return Err(format!("labels: `{a}` is used for two statuses"));
            }
        }
        out.labels = Some(s);
    }
    if let Some(t) = file.timeouts {
        if t.task_mins == Some(0) || t.start_secs == Some(0) || t.checks_mins == Some(0) {
            return Err("timeouts: a time limit must be at least 1".into());
        }
        out.task_timeout_secs = t.task_mins.map(|m| m.saturating_mul(60));
        out.start_timeout_secs = t.start_secs;
        out.checks_timeout_secs = t.checks_mins.map(|m| m.saturating_mul(60));
    }
    for (name, spec) in file.retry {
        let class: FailureClass = name.parse().map_err(|e| format!("retry.{name}: {e}"))?;
        if class == FailureClass::Cancelled {
            return Err("retry.cancelled: cancelled tasks are never retried".into());
        }
        if spec.base_secs == 0 || spec.cap_secs < spec.base_secs {
            return Err(format!("retry.{name}: base_secs must be at least 1 and cap_secs at least base_secs"));
        }
        out.retry.insert(class, spec);
    }
    out.prompt = file.prompt.filter(|p| !p.trim().is_empty());
    out.on_pr_closed = file.on_pr_closed;
    out.review_rounds = file.review_rounds;
    out.answer_any_comment = file.answer_any_comment;
    out.auto_rebase = file.auto_rebase;
    if let Some(setting) = file.require_checks {
        setting.required().map_err(|why| format!("require_checks: {why}"))?;
        out.require_checks = Some(setting);
    }
    if let (Some(room), Some(allowed)) = (file.matrix.and_then(|m| m.room), rooms) {
        // A repository's writers may pick among the fleet's rooms for it, never send its news elsewhere.
        if !allowed.contains(&room.as_str()) {
            return Err(format!(
                "matrix.room: `{room}` is not a room forgefleet allows this repository (its configuration's \
                 [matrix.repos] entry allows: {})",
                allowed.iter().map(|r| format!("`{r}`")).collect::<Vec<_>>().join(", ")
            ));
        }
        out.matrix_room = Some(room);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_settings_read_back_through_the_one_accessor_and_damaged_ones_give_the_defaults() {
        let mut store = crate::store::Store::open_in_memory().unwrap();
        let (app, other, broken) = (
            RepoName::parse("acme/app").unwrap(),
            RepoName::parse("acme/other").unwrap(),
            RepoName::parse("acme/x").unwrap(),
        );
        let mine = parse_fleet_yaml("labels:\n  todo: fleet/todo\n", &LabelScheme::default(), None).unwrap();
        let tx = store.write().unwrap();
        tx.set_meta(&RepoSettings::key(&app), &serde_json::to_string(&mine).unwrap()).unwrap();
        tx.set_meta(&RepoSettings::key(&broken), "{not json").unwrap();
        tx.set_meta("cursor:acme/app", "2026-01-01T00:00:00Z").unwrap();
        tx.commit().unwrap();
        let r = store.read();
        assert_eq!(RepoSettings::read(r, &app).unwrap(), Some(mine.clone()));
        assert_eq!(RepoSettings::read(r, &other).unwrap(), None);
        assert_eq!(RepoSettings::read(r, &broken).unwrap(), None, "damaged: the defaults apply");
        assert_eq!(RepoSettings::read_all(r).unwrap(), vec![(app.clone(), mine)]);
        let base = LabelScheme::default();
        assert_eq!(RepoSettings::labels(r, &app, &base).unwrap().todo, "fleet/todo");
        assert_eq!(RepoSettings::labels(r, &other, &base).unwrap(), base);
    }

    #[test]
    fn a_full_file_overrides_labels_timeouts_retries_and_the_prompt() {
        let text = "labels:\n  todo: fleet/todo\n  default_priority: high\ntimeouts:\n  task_mins: 90\n  start_secs: 45\n\
                    retry:\n  agent_error: {max_retries: 5, base_secs: 10, cap_secs: 100}\nprompt: |\n  Be brief.\n";
        let o = parse_fleet_yaml(text, &LabelScheme::default(), None).unwrap();
        let labels = o.labels.as_ref().unwrap();
        assert_eq!((labels.todo.as_str(), labels.doing.as_str()), ("fleet/todo", "status:doing"));
        assert_eq!(labels.default_priority, Priority::High);
        assert_eq!((o.task_timeout_secs, o.start_timeout_secs), (Some(5400), Some(45)));
        let policy = o.retry_policy(&RetryPolicy::default());
        assert_eq!(policy.rule(FailureClass::AgentError).unwrap().max_retries, 5);
        assert_eq!(policy.rule(FailureClass::Timeout), RetryPolicy::default().rule(FailureClass::Timeout));
        assert_eq!(o.prompt.as_deref(), Some("Be brief.\n"));
    }

    #[test]
    fn an_empty_file_changes_nothing() {
        assert_eq!(parse_fleet_yaml("", &LabelScheme::default(), None).unwrap(), RepoOverrides::default());
        assert_eq!(parse_fleet_yaml("# nothing\n", &LabelScheme::default(), None).unwrap(), RepoOverrides::default());
    }

    #[test]
    fn mistakes_are_reported_with_where_they_are() {
        let bad = |text: &str| parse_fleet_yaml(text, &LabelScheme::default(), None).unwrap_err();
        assert!(bad("lables:\n  todo: x\n").contains("lables"));
        assert!(bad("retry:\n  oops: {max_retries: 1, base_secs: 1, cap_secs: 1}\n").contains("retry.oops"));
        assert!(bad("retry:\n  cancelled: {max_retries: 1, base_secs: 1, cap_secs: 1}\n").contains("never retried"));
        assert!(bad("retry:\n  timeout: {max_retries: 1, base_secs: 9, cap_secs: 1}\n").contains("cap_secs"));
        assert!(bad("labels:\n  todo: status:done\n").contains("two statuses"));
        assert!(bad("timeouts:\n  task_mins: 0\n").contains("at least 1"));
        assert!(!bad("labels: [unclosed\n").is_empty());
    }

    #[test]
    fn a_repository_may_require_ci_and_bound_the_wait() {
        let labels = LabelScheme::default();
        let o = parse_fleet_yaml("require_checks: [ci/build]\ntimeouts:\n  checks_mins: 20\n", &labels, None).unwrap();
        assert_eq!(o.require_checks, Some(crate::core::ChecksSetting::Names(vec!["ci/build".into()])));
        assert_eq!(o.checks_timeout_secs, Some(1200));
        let all = parse_fleet_yaml("require_checks: true\n", &labels, None).unwrap();
        assert_eq!(all.require_checks, Some(crate::core::ChecksSetting::Flag(true)));
        let err = parse_fleet_yaml("require_checks: []\n", &labels, None).unwrap_err();
        assert!(err.starts_with("require_checks: an empty list"), "{err}");
        assert!(parse_fleet_yaml("require_checks: 3\n", &labels, None).is_err());
        let o = parse_fleet_yaml("on_pr_closed: requeue\n", &labels, None).unwrap();
        assert_eq!(o.on_pr_closed, Some(crate::core::OnPullClosed::Requeue));
        let err = parse_fleet_yaml("on_pr_closed: retry\n", &labels, None).unwrap_err();
        assert!(err.contains("requeue"), "the choices are named: {err}");
    }

    #[test]
    fn a_repository_may_let_any_comment_answer_a_blocked_task() {
        let labels = LabelScheme::default();
        let o = parse_fleet_yaml("answer_any_comment: true\nreview_rounds: 1\n", &labels, None).unwrap();
        assert_eq!((o.answer_any_comment, o.review_rounds), (Some(true), Some(1)));
        let mut s = crate::engine::EngineSettings::default();
        let repo: crate::core::RepoName = "acme/app".parse().unwrap();
        assert!(!s.answer_any_comment_for(&repo), "off unless configured");
        s.repos.insert(repo.clone(), o);
        assert!(s.answer_any_comment_for(&repo));
        let err = parse_fleet_yaml("answer_any_comment: sometimes\n", &labels, None).unwrap_err();
        assert!(err.contains("answer_any_comment"), "{err}");
    }

    #[test]
    fn a_repository_may_turn_auto_rebase_on_over_the_servers_default() {
        let labels = LabelScheme::default();
        let o = parse_fleet_yaml("auto_rebase: true\n", &labels, None).unwrap();
        assert_eq!(o.auto_rebase, Some(true));
        let mut s = crate::engine::EngineSettings::default();
        let repo: crate::core::RepoName = "acme/app".parse().unwrap();
        assert!(!s.auto_rebase_for(&repo), "off unless configured");
        s.repos.insert(repo.clone(), o);
        assert!(s.auto_rebase_for(&repo));
        let err = parse_fleet_yaml("auto_rebase: yes please\n", &labels, None).unwrap_err();
        assert!(err.contains("auto_rebase"), "{err}");
    }

    #[test]
    fn a_repository_may_choose_its_room_only_among_those_the_server_allows() {
        let labels = LabelScheme::default();
        let allowed = ["!ops:example.org", "!app:example.org"];
        let o = parse_fleet_yaml("matrix:\n  room: \"!app:example.org\"\n", &labels, Some(&allowed)).unwrap();
        assert_eq!(o.matrix_room.as_deref(), Some("!app:example.org"));
        let err = parse_fleet_yaml("matrix:\n  room: \"!mine:evil.org\"\n", &labels, Some(&allowed)).unwrap_err();
        assert!(
            err.starts_with("matrix.room: `!mine:evil.org` is not a room") && err.contains("`!ops:example.org`"),
            "{err}"
        );
        let off = parse_fleet_yaml("matrix:\n  room: \"!any\"\n", &labels, None).unwrap();
        assert_eq!(off.matrix_room, None, "with Matrix off the choice means nothing and breaks nothing");
        assert!(parse_fleet_yaml("matrix:\n  rom: x\n", &labels, Some(&allowed)).is_err(), "a typo is reported");
    }
}
