//! The domain, pure: no tokio, no SQL, no HTTP. Time comes in as an argument.

pub mod agent;
pub mod checks;
pub mod commands;
pub mod effects;
pub mod event;
pub mod ids;
pub mod labels;
pub mod logbatch;
pub mod policy;
pub mod pull;
pub mod queue;
pub mod receipt;
pub mod task;
pub mod text;
pub mod time;

pub use agent::{Agent, AgentState, AgentStatus};
pub use checks::{AwaitedChecks, ChecksSetting, ChecksVerdict, CommitStatus, RequiredChecks, judge as judge_checks};
pub use effects::{
    AgentNews, CHAT_KINDS, CommandOrigin, CommitState, Destination, Effect, Notice, STATUS_CONTEXT, agent_effects_of,
    effects_of,
};
pub use event::{CancelledBy, Event};
pub use ids::{AgentId, AgentName, CommitSha, InvalidId, IssueRef, RepoName, TaskId};
pub use labels::{LabelChange, LabelReading, LabelScheme, Priority, StatusLabel, TaskSpec};
pub use policy::{FailureClass, RetryDecision, RetryPolicy, RetryRule};
pub use pull::{FollowUp, OnConflict, OnPullClosed, PullConflict, PullEnd, ReviewNote};
pub use receipt::{Artifact, Check, FileChange, Receipt, Spent, Usage, Validation};
pub use task::{
    LastSession, Lease, MAX_QUESTION_BYTES, MAX_SESSION_ID_BYTES, QUESTION_FILE, Question, Task, TaskState,
    TransitionError, is_session_id, work_branch,
};
pub use time::Timestamp;
