//! The OpenAPI document: its frame (info, tags, security schemes) and schemas for the domain types that
//! appear in answers. The operations themselves are described on the handlers (`#[utoipa::path]`) and
//! collected by the router, so the document and the served routes come from the same registration.
//!
//! `crate::core` and `crate::store` know nothing of OpenAPI; the types they lend to answers are described
//! here by mirrors (`#[schema(as = ...)]`) that the tests below hold to the real serialization.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

use super::error::{ErrorBody, ErrorCode, ErrorDetail};

/// The names of the security schemes, as the handlers' `security(...)` refer to them.
pub const REGISTRATION_TOKEN: &str = "registration_token";
pub const AGENT_TOKEN: &str = "agent_token";
pub const OPERATOR_TOKEN: &str = "operator_token";

pub const TAG_SYSTEM: &str = "system";
pub const TAG_AGENTS: &str = "agents";
pub const TAG_WORK: &str = "work";
pub const TAG_TASKS: &str = "tasks";
pub const TAG_WEBHOOKS: &str = "webhooks";
pub const TAG_OUTBOX: &str = "outbox";
/// The security scheme of Forgejo's webhook deliveries.
pub const WEBHOOK_SIGNATURE: &str = "webhook_signature";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "forgefleet",
        description = "The REST API of a forgefleet orchestrator: agents register, heartbeat, pull assignments \
                       and report on their tasks; operators look at and steer the fleet. Every error is JSON \
                       `{\"error\": {\"code\", \"message\"}}`. A human guide is docs/api.md in the repository."
    ),
    modifiers(&SecuritySchemes),
    components(schemas(ErrorBody, ErrorDetail, ErrorCode)),
    tags(
        (name = "system", description = "Health, metrics and this document: no token needed."),
        (name = "agents", description = "The agent registry: register, heartbeat, deregister, list, drain."),
        (name = "work", description = "An agent's work: pull an assignment, then start, progress and fail; \
                                       operators retry and cancel."),
        (name = "tasks", description = "Operator views of the task mirror."),
        (name = "webhooks", description = "Deliveries from Forgejo, signed with the webhook secret."),
        (name = "outbox", description = "Operators retry or drop deliveries (to Forgejo or Matrix) that became dead letters."),
    )
)]
pub struct ApiDoc;

struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let bearer = |description: &str| {
            SecurityScheme::Http(
                HttpBuilder::new().scheme(HttpAuthScheme::Bearer).description(Some(description)).build(),
            )
        };
        components.add_security_scheme(
            REGISTRATION_TOKEN,
            bearer(
                "The fleet's shared registration token (`[agents] registration_token` in the server's config). \
                 Only `POST /api/v1/agents/register` takes it; with none configured, registration is closed.",
            ),
        );
        components.add_security_scheme(
            AGENT_TOKEN,
            bearer(
                "An agent's own token, returned once by `POST /api/v1/agents/register` (`ffa_` and 64 hex \
                 digits). Registering the same name again replaces it; deregistering revokes it.",
            ),
        );
        components.add_security_scheme(
            WEBHOOK_SIGNATURE,
            SecurityScheme::ApiKey(utoipa::openapi::security::ApiKey::Header(
                utoipa::openapi::security::ApiKeyValue::with_description(
                    "X-Forgejo-Signature",
                    "Forgejo's signature of the delivery: lowercase hex HMAC-SHA256 of the exact body bytes, keyed \
                     with `[forgejo] webhook_secret` (`X-Gitea-Signature` is accepted too). Forgejo sets it itself.",
                ),
            )),
        );
        components.add_security_scheme(
            OPERATOR_TOKEN,
            bearer(
                "The operator token (`[api] operator_token` or `FORGEFLEET_API_OPERATOR_TOKEN`). With none \
                 configured, the operator routes are closed to everyone.",
            ),
        );
    }
}

// ---- Mirrors of domain types (crate::core, crate::store) as they appear in JSON ----

/// Where a task stands.
#[derive(ToSchema)]
#[schema(as = TaskState)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)]
pub enum TaskStateDoc {
    /// Waiting for an agent (possibly until `not_before`).
    Queued,
    /// Leased to an agent that has not acknowledged it yet.
    Assigned,
    /// The agent acknowledged it and is working.
    Running,
    /// A receipt arrived and is being checked.
    Validating,
    Completed,
    Failed,
    /// The agent vanished; the task waits for the retry decision.
    AgentLost,
    Cancelled,
    /// The agent asked a person a question (`block`) and waits for `/answer`: no lease, no timeout, no retry.
    Blocked,
}

/// What operators see of an agent: derived from its stored state and how many tasks it runs.
#[derive(ToSchema)]
#[schema(as = AgentStatus)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)]
pub enum AgentStatusDoc {
    /// Heartbeating, with free slots.
    Online,
    /// Heartbeating, every slot taken.
    Busy,
    /// Missed its heartbeats; its tasks were requeued.
    Offline,
    /// Takes no new work; finishes what it has.
    Draining,
}

/// How urgent a task is, from its `priority:*` label.
#[derive(ToSchema)]
#[schema(as = Priority)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)]
pub enum PriorityDoc {
    Critical,
    High,
    Medium,
    Low,
}

/// Why an attempt ended without success. Each class has its own retry budget.
#[derive(ToSchema)]
#[schema(as = FailureClass)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)]
pub enum FailureClassDoc {
    /// The agent stopped heartbeating (or never started the task in time).
    AgentLost,
    /// The task ran past its time limit.
    Timeout,
    /// The agent CLI failed.
    AgentError,
    /// The receipt did not check out.
    VerificationFailed,
    /// The pull request's CI failed or did not finish in time (where the repository requires checks).
    ChecksFailed,
    /// The model provider said to slow down: retried after a longer wait.
    RateLimited,
    /// Someone cancelled it: never retried.
    Cancelled,
}

/// The failure classes an agent may report (`cancelled` comes from people only and is refused).
#[derive(ToSchema)]
#[schema(as = AgentFailureClass)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)]
pub enum AgentFailureClassDoc {
    AgentLost,
    Timeout,
    AgentError,
    VerificationFailed,
    RateLimited,
}

/// A task as listed: enough to show a table without its body.
#[derive(ToSchema)]
#[schema(as = TaskSummary)]
#[allow(dead_code)]
pub struct TaskSummaryDoc {
    #[schema(minimum = 1)]
    id: i64,
    /// `owner/repo#number`.
    #[schema(example = "acme/app#7")]
    issue: String,
    title: String,
    state: TaskStateDoc,
    priority: PriorityDoc,
    attempt: u32,
    /// The agent holding the lease, or for a finished task the agent its last attempt was given to.
    agent: Option<String>,
    /// A retried task waits in the queue until then.
    #[schema(format = DateTime)]
    not_before: Option<String>,
    #[schema(format = DateTime)]
    updated_at: String,
}

/// One issue of one repository.
#[derive(ToSchema)]
#[schema(as = IssueRef)]
#[allow(dead_code)]
pub struct IssueRefDoc {
    /// `owner/name`.
    #[schema(example = "acme/app")]
    repo: String,
    number: u64,
}

/// What a task asks of the fleet, read from its labels.
#[derive(ToSchema)]
#[schema(as = TaskSpec)]
#[allow(dead_code)]
pub struct TaskSpecDoc {
    priority: PriorityDoc,
    /// From `type:*`, e.g. `bug`. Absent when unlabelled.
    #[serde(default)]
    kind: Option<String>,
    /// From `needs:*`: capabilities an agent must have. Absent when empty.
    #[serde(default)]
    needs: Vec<String>,
    /// From `agent:*`: only this agent may take it. Absent when unpinned.
    #[serde(default)]
    agent: Option<String>,
}

/// An agent's hold on one attempt of a task.
#[derive(ToSchema)]
#[schema(as = Lease)]
#[allow(dead_code)]
pub struct LeaseDoc {
    /// The agent's id.
    agent: i64,
    attempt: u32,
    #[schema(format = DateTime)]
    assigned_at: String,
    /// The agent must acknowledge (`start`) before this, or the task is requeued.
    #[schema(format = DateTime)]
    start_by: String,
    #[schema(format = DateTime)]
    started_at: Option<String>,
    /// The task times out after this.
    #[schema(format = DateTime)]
    deadline: String,
    /// The idempotency key of the request answered with this lease. Absent when none was given.
    #[serde(default)]
    request_key: Option<String>,
    /// When the agent handed in its receipt. Absent before.
    #[serde(default)]
    #[schema(format = DateTime)]
    receipt_at: Option<String>,
    /// When the agent's slot was freed while the task goes on without it (its receipt checked out and the
    /// task waits for the pull request's CI). Absent while the agent holds the attempt.
    #[serde(default)]
    #[schema(format = DateTime)]
    released_at: Option<String>,
}

/// The CI a task waits for after its receipt checked out (the repository requires checks).
#[derive(ToSchema)]
#[schema(as = AwaitedChecks)]
#[allow(dead_code)]
pub struct AwaitedChecksDoc {
    pr_number: u64,
    /// The verified head commit whose statuses are read.
    head_sha: String,
    /// `"all"` (every status on the commit), or `{"named": [contexts]}`.
    #[schema(value_type = Object)]
    required: String,
    #[schema(format = DateTime)]
    since: String,
    /// Past this with checks still pending, the attempt fails with `checks_failed`.
    #[schema(format = DateTime)]
    deadline: String,
}

/// Why the last attempt ended.
#[derive(ToSchema)]
#[schema(as = Failure)]
#[allow(dead_code)]
pub struct FailureDoc {
    attempt: u32,
    class: FailureClassDoc,
    message: String,
    #[schema(format = DateTime)]
    at: String,
}

/// A task in full, as the mirror holds it.
#[derive(ToSchema)]
#[schema(as = Task)]
#[allow(dead_code)]
pub struct TaskDoc {
    #[schema(minimum = 1)]
    id: i64,
    issue: IssueRefDoc,
    title: String,
    body: String,
    labels: Vec<String>,
    spec: TaskSpecDoc,
    state: TaskStateDoc,
    /// 1 for the first attempt; every retry adds one.
    attempt: u32,
    /// Retries used so far, per failure class (keys are failure classes).
    retries: std::collections::BTreeMap<String, u32>,
    /// A retried task waits in the queue until then.
    #[schema(format = DateTime)]
    not_before: Option<String>,
    /// When it was last queued by a person: the age the queue orders by.
    #[schema(format = DateTime)]
    queued_at: String,
    #[schema(format = DateTime)]
    updated_at: String,
    lease: Option<LeaseDoc>,
    last_failure: Option<FailureDoc>,
    /// The receipt of the current attempt, as the agent submitted it.
    #[schema(value_type = Option<Object>)]
    receipt: Option<String>,
    /// What forgefleet found when it checked the receipt: `checks` (`name`, `passed`, `detail`) and the
    /// `files` git says the pull request changes (`path`, `status`, `additions`, `deletions`). Absent until checked.
    #[schema(value_type = Option<Object>)]
    validation: Option<String>,
    /// A branch an earlier attempt pushed before it failed (its `fail` report said so): the current and every
    /// later attempt are assigned it and continue its work. Absent when each attempt gets a fresh branch.
    pushed_branch: Option<String>,
    /// The pull request's CI the task waits for, still `validating` but holding no agent slot. Absent otherwise.
    checks: Option<AwaitedChecksDoc>,
    /// How the completed attempt's pull request ended: merged, or closed without merging. Absent before.
    pull_end: Option<PullEndDoc>,
    /// The round of changes a person asked for on the pull request (a review, or `/fleet fix`). Absent when none.
    follow_up: Option<FollowUpDoc>,
    /// The last time the completed attempt's pull request stopped merging (its base branch moved and Forgejo
    /// said `mergeable: false`), and what forgefleet did. Absent when it never did since the task was queued.
    conflict: Option<PullConflictDoc>,
    /// The question an attempt asked a person (`block`), and the answer once one came; the attempts after the
    /// answer are told both. Absent when no attempt asked.
    question: Option<QuestionDoc>,
    /// The agent and CLI session of the attempt that last handed in work (a receipt) or a question: an attempt
    /// that goes on from it is kept for that agent for a while and resumes the session. Absent before, and
    /// after a person queues the task afresh.
    last_session: Option<LastSessionDoc>,
}

/// The agent and CLI session of the attempt that last worked on a task.
#[derive(ToSchema)]
#[schema(as = LastSession)]
#[allow(dead_code)]
pub struct LastSessionDoc {
    /// The agent's id.
    agent: i64,
    attempt: u32,
    /// Claude Code's `session_id` or Codex's `thread_id`, as the agent reported it. Absent when it reported none.
    #[serde(default)]
    session_id: Option<String>,
    /// What that attempt said it did (its receipt's summary). Absent after a question.
    #[serde(default)]
    summary: Option<String>,
    /// When the task was queued again to go on from this work: that agent's preference window starts then
    /// (or when the backoff ends). Absent while an attempt holds the task.
    #[serde(default)]
    #[schema(format = DateTime)]
    requeued_at: Option<String>,
}

/// A round of changes on a completed task's pull request.
#[derive(ToSchema)]
#[schema(as = FollowUp)]
#[allow(dead_code)]
pub struct FollowUpDoc {
    /// 1 for the first round.
    round: u32,
    pr_number: u64,
    /// The pull request's branch, which every attempt of the round is assigned.
    branch: String,
    /// The head verified last: the round's receipt must build on it.
    verified_head: String,
    /// Who asked (a Forgejo login).
    by: String,
    /// What they asked for.
    instruction: String,
    /// The review's comments (`path`, `line`, `body`). Absent when none.
    #[serde(default)]
    #[schema(value_type = Option<Vec<Object>>)]
    notes: Option<Vec<String>>,
    /// The review it came from. Absent for `/fleet fix`.
    #[serde(default)]
    review_id: Option<i64>,
}

/// A completed task's pull request that stopped merging into its moved base branch.
#[derive(ToSchema)]
#[schema(as = PullConflict)]
#[allow(dead_code)]
pub struct PullConflictDoc {
    pr_number: u64,
    /// The pull request's head that conflicts: each head is decided once.
    head_sha: String,
    base_branch: String,
    /// The base branch's tip it conflicts with.
    base_sha: String,
    /// What forgefleet did: `{"merge": {"round": n}}` (`auto_rebase`: round `n` of changes merges the base in),
    /// `"tell"` (people were told) or `{"rounds_spent": {"rounds": n}}` (told: the rounds are spent).
    #[schema(value_type = Object)]
    then: String,
}

/// How a completed task's pull request ended.
#[derive(ToSchema)]
#[schema(as = PullEnd)]
#[allow(dead_code)]
pub struct PullEndDoc {
    pr_number: u64,
    merged: bool,
    /// Who merged it, as Forgejo says. Absent when unknown (a close without merging).
    #[serde(default)]
    by: Option<String>,
    /// When forgefleet saw it.
    #[schema(format = DateTime)]
    at: String,
}

/// A question an agent asked a person, and the answer.
#[derive(ToSchema)]
#[schema(as = Question)]
#[allow(dead_code)]
pub struct QuestionDoc {
    /// The attempt that asked.
    attempt: u32,
    text: String,
    /// Absent until a person answers (`/answer`).
    answer: Option<String>,
    /// Who answered.
    answered_by: Option<String>,
}

/// One event of the task's log. `type` names it (`task_queued`, `task_assigned`, `task_started`,
/// `attempt_failed`, `task_lost`, `task_cancelled`, `task_retried`, `receipt_received`, `task_completed`,
/// `task_blocked`, `task_answered`, ...);
/// the other fields depend on the type.
#[derive(ToSchema)]
#[schema(as = LoggedEvent)]
#[allow(dead_code)]
pub struct LoggedEventDoc {
    /// Its position in the append-only log.
    seq: i64,
    #[serde(rename = "type")]
    #[schema(example = "task_queued")]
    kind: String,
    #[schema(format = DateTime)]
    at: String,
    /// The task's id (absent for agent events).
    #[serde(default)]
    task: Option<i64>,
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use serde_json::Value;
    use utoipa::PartialSchema;

    use super::*;
    use crate::core::{
        AgentId, AgentStatus, Event, FailureClass, IssueRef, Lease, Priority, Task, TaskId, TaskSpec, TaskState,
        Timestamp,
    };
    use crate::store::TaskSummary;

    fn schema_of<T: PartialSchema>() -> Value {
        serde_json::to_value(T::schema()).unwrap()
    }

    fn enum_values<T: PartialSchema>() -> Vec<String> {
        let s = schema_of::<T>();
        let values = s["enum"].as_array().or_else(|| s["oneOf"].as_array()).expect("an enum schema");
        values
            .iter()
            .map(|v| v.as_str().map(String::from).unwrap_or_else(|| v["enum"][0].as_str().unwrap().to_string()))
            .collect()
    }

    fn as_json<T: serde::Serialize>(v: T) -> String {
        serde_json::to_value(v).unwrap().as_str().unwrap().to_string()
    }

    fn properties<T: PartialSchema>() -> BTreeSet<String> {
        schema_of::<T>()["properties"].as_object().unwrap().keys().cloned().collect()
    }

    fn keys(v: &Value) -> BTreeSet<String> {
        v.as_object().unwrap().keys().cloned().collect()
    }

    #[test]
    fn the_enum_mirrors_list_exactly_the_values_the_domain_serializes() {
        let states: Vec<_> = TaskState::ALL.into_iter().map(as_json).collect();
        assert_eq!(enum_values::<TaskStateDoc>(), states);
        let statuses = [AgentStatus::Online, AgentStatus::Busy, AgentStatus::Offline, AgentStatus::Draining];
        assert_eq!(enum_values::<AgentStatusDoc>(), statuses.map(as_json));
        assert_eq!(enum_values::<PriorityDoc>(), Priority::ALL.map(as_json));
        let classes: Vec<_> = FailureClass::ALL.into_iter().map(as_json).collect();
        assert_eq!(enum_values::<FailureClassDoc>(), classes);
        let reportable: Vec<_> = FailureClass::ALL
            .into_iter()
            .filter(|c| !matches!(c, FailureClass::Cancelled | FailureClass::ChecksFailed))
            .map(|c| c.as_str().to_string())
            .collect();
        assert_eq!(enum_values::<AgentFailureClassDoc>(), reportable);
    }

    fn full_task() -> Task {
        let at = Timestamp(1_800_000_000_000);
        Task {
            id: TaskId(7),
            issue: IssueRef { repo: "acme/app".parse().unwrap(), number: 7 },
            issue_id: None,
            title: "t".into(),
            body: "b".into(),
            labels: vec!["status:todo".into()],
            spec: TaskSpec {
                priority: Priority::High,
                kind: Some("bug".into()),
                needs: ["gpu".to_string()].into(),
                agent: Some(crate::core::AgentName::parse("a1").unwrap()),
            },
            state: TaskState::Running,
            attempt: 2,
            retries: BTreeMap::from([(FailureClass::AgentLost, 1)]),
            not_before: Some(at),
            queued_at: at,
            updated_at: at,
            lease: Some(Lease {
                agent: AgentId(1),
                attempt: 2,
                assigned_at: at,
                start_by: at,
                started_at: Some(at),
                deadline: at,
                request_key: Some("k".into()),
                receipt_at: Some(at),
                released_at: Some(at),
            }),
            last_failure: Some(crate::core::task::Failure {
                attempt: 1,
                class: FailureClass::AgentLost,
                message: "m".into(),
                at,
            }),
            receipt: None,
            validation: Some(crate::core::Validation::default()),
            pushed_branch: Some("forgefleet/issue-7-attempt-1".into()),
            checks: Some(crate::core::AwaitedChecks {
                pr_number: 3,
                head_sha: "a".repeat(40),
                required: crate::core::RequiredChecks::Named(vec!["ci/build".into()]),
                since: at,
                deadline: at,
            }),
            pull_end: Some(crate::core::PullEnd { pr_number: 3, merged: true, by: Some("alice".into()), at }),
            follow_up: Some(crate::core::FollowUp {
                round: 1,
                pr_number: 3,
                branch: "forgefleet/issue-7-attempt-1".into(),
                verified_head: "a".repeat(40),
                by: "alice".into(),
                instruction: "rename x".into(),
                notes: vec![crate::core::ReviewNote {
                    path: Some("src/lib.rs".into()),
                    line: Some(3),
                    body: "here".into(),
                }],
                review_id: Some(9),
            }),
            conflict: Some(crate::core::PullConflict {
                pr_number: 3,
                head_sha: "b".repeat(40),
                base_branch: "main".into(),
                base_sha: "c".repeat(40),
                then: crate::core::OnConflict::Merge { round: 2 },
            }),
            question: Some(crate::core::Question {
                attempt: 1,
                text: "q".into(),
                answer: Some("a".into()),
                answered_by: Some("@alice".into()),
            }),
            last_session: Some(crate::core::LastSession {
                agent: AgentId(1),
                attempt: 1,
                session_id: Some("4f1c2a9e-0000-4000-8000-000000000001".into()),
                summary: "did it".into(),
                requeued_at: Some(at),
            }),
        }
    }

    #[test]
    fn the_object_mirrors_have_exactly_the_fields_the_domain_serializes() {
        let task = serde_json::to_value(full_task()).unwrap();
        assert_eq!(properties::<TaskDoc>(), keys(&task));
        assert_eq!(properties::<IssueRefDoc>(), keys(&task["issue"]));
        assert_eq!(properties::<TaskSpecDoc>(), keys(&task["spec"]));
        assert_eq!(properties::<LeaseDoc>(), keys(&task["lease"]));
        assert_eq!(properties::<FailureDoc>(), keys(&task["last_failure"]));
        assert_eq!(properties::<AwaitedChecksDoc>(), keys(&task["checks"]));
        assert_eq!(properties::<PullEndDoc>(), keys(&task["pull_end"]));
        assert_eq!(properties::<FollowUpDoc>(), keys(&task["follow_up"]));
        assert_eq!(properties::<PullConflictDoc>(), keys(&task["conflict"]));
        assert_eq!(properties::<QuestionDoc>(), keys(&task["question"]));
        assert_eq!(properties::<LastSessionDoc>(), keys(&task["last_session"]));

        let summary = TaskSummary {
            id: TaskId(7),
            issue: "acme/app#7".into(),
            title: "t".into(),
            state: TaskState::Queued,
            priority: Priority::Low,
            attempt: 1,
            agent: Some("a1".into()),
            not_before: Some("x".into()),
            updated_at: "x".into(),
        };
        assert_eq!(properties::<TaskSummaryDoc>(), keys(&serde_json::to_value(summary).unwrap()));

        // Every event has a type and a time; task events name their task.
        let event = super::super::tasks::LoggedEvent {
            seq: 3,
            event: Event::TaskStarted { task: TaskId(7), attempt: 1, at: Timestamp(0) },
        };
        let event = serde_json::to_value(event).unwrap();
        assert!(properties::<LoggedEventDoc>().is_subset(&keys(&event)), "{event}");
    }

    #[test]
    fn required_fields_are_those_always_present() {
        let required = |s: Value| -> BTreeSet<String> {
            s["required"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect()
        };
        // Fields that serde skips when empty must not be required.
        let spec = required(schema_of::<TaskSpecDoc>());
        assert_eq!(spec, BTreeSet::from(["priority".to_string()]));
        assert!(!required(schema_of::<LeaseDoc>()).contains("request_key"));
    }
}
