//! The command line: `serve`, `config check`, `store rebuild`, `tasks`, `agents`, `status`, `outbox list`, and
//! the operator commands that go through the running server: `retry`, `cancel`, `agents drain`, `agents
//! forget`, `outbox retry|drop`.

mod remote;
mod serve;
mod setup;
mod views;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing::Instrument;

use crate::config::{Config, LogFormat};
use crate::core::{AgentName, AgentStatus, TaskId, TaskState};
use crate::store::{Store, StoreError, StoreLock};

#[derive(Debug, Parser)]
#[command(name = "forgefleet", version, about = "Runs a fleet of AI coding agents from Forgejo issues")]
pub struct Cli {
    /// The configuration file (TOML). Without one, every setting has its default.
    #[arg(long, short, global = true, env = "FORGEFLEET_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Log as JSON lines instead of human-readable text (overrides `[server] log_format`).
    #[arg(long, global = true)]
    log_json: bool,
    /// The running forgefleet that `retry`, `cancel` and `agents drain` talk to [default: http:// and
    /// `[server] listen`, with 0.0.0.0 or [::] meaning this machine].
    #[arg(long, global = true, env = "FORGEFLEET_SERVER", value_name = "URL")]
    server: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the orchestrator: HTTP API, engine and periodic checks.
    Serve,
    /// Run an agent host: take tasks from the server and do them with the configured adapter. `--config`
    /// names the agent's own file (see docs/agent.md), not the server's.
    Agent {
        /// Check this host instead (the sandbox, the adapter's CLI, the server, the Forgejo token), one line
        /// each; exit 0 when all are ok, 1 otherwise.
        #[arg(long)]
        check: bool,
        /// With --check: a repository (`owner/name`) the token must be able to push to (probed with
        /// `git push --dry-run`).
        #[arg(long, requires = "check", value_name = "OWNER/NAME")]
        repo: Option<String>,
    },
    /// Work with the Forgejo instance.
    Forgejo {
        #[command(subcommand)]
        command: ForgejoCommand,
    },
    /// Work with configuration files.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Maintain the database.
    Store {
        #[command(subcommand)]
        command: StoreCommand,
    },
    /// List tasks, most recently changed first.
    #[command(args_conflicts_with_subcommands = true)]
    Tasks {
        #[command(subcommand)]
        command: Option<TasksCommand>,
        /// Only tasks in this state (queued, assigned, running, validating, completed, failed, agent_lost, cancelled).
        #[arg(long)]
        state: Option<String>,
        /// At most this many; 0 for all of them.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Print JSON for scripts instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// List the registered agents with their status and load, drain one (`agents drain NAME`) or forget one
    /// (`agents forget NAME`).
    #[command(args_conflicts_with_subcommands = true)]
    Agents {
        #[command(subcommand)]
        command: Option<AgentsCommand>,
        /// Only agents with this status (online, busy, draining, offline).
        #[arg(long, value_parser = parse_agent_status)]
        status: Option<AgentStatus>,
        /// Only agents that have this capability.
        #[arg(long)]
        capability: Option<String>,
        /// Print JSON for scripts instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Give a failed or cancelled task a new attempt (through the running server).
    Retry {
        /// The task's id, as `forgefleet tasks` shows it.
        #[arg(value_name = "TASK_ID")]
        task: TaskId,
        /// Print the server's JSON answer instead of a sentence.
        #[arg(long)]
        json: bool,
    },
    /// Cancel a task; an agent working on it is told to stop (through the running server).
    Cancel {
        /// The task's id, as `forgefleet tasks` shows it.
        #[arg(value_name = "TASK_ID")]
        task: TaskId,
        /// Print the server's JSON answer instead of a sentence.
        #[arg(long)]
        json: bool,
    },
    /// The deliveries (to Forgejo, to Matrix) that wait, and the dead letters; retry or drop one (through the running
    /// server).
    #[command(args_conflicts_with_subcommands = true)]
    Outbox {
        #[command(subcommand)]
        command: Option<OutboxCommand>,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Print JSON for scripts instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Summarise the fleet: tasks by state, queue depth, agents.
    Status {
        /// Print JSON for scripts instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum OutboxCommand {
    /// List the deliveries that wait, dead letters first (reads the database; works without `serve`).
    List {
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Print JSON for scripts instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Try a dead letter again now (through the running server).
    Retry {
        /// The row's id, as `forgefleet outbox list` shows it.
        #[arg(value_name = "ID")]
        id: i64,
        /// Print the server's JSON answer instead of a sentence.
        #[arg(long)]
        json: bool,
    },
    /// Give up on a delivery: it is kept, marked dropped, and never tried again (through the running server).
    Drop {
        /// The row's id, as `forgefleet outbox list` shows it.
        #[arg(value_name = "ID")]
        id: i64,
        /// Print the server's JSON answer instead of a sentence.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum AgentsCommand {
    /// Stop giving an agent new work; it finishes what it runs (through the running server).
    Drain {
        /// The agent's name.
        #[arg(value_parser = parse_agent_name)]
        name: AgentName,
        /// Print the server's JSON answer instead of a sentence.
        #[arg(long)]
        json: bool,
    },
    /// Remove an agent so that its name can be registered again; the tasks it held go back to the queue at
    /// once (through the running server).
    Forget {
        /// The agent's name.
        #[arg(value_parser = parse_agent_name)]
        name: AgentName,
        /// Print the server's JSON answer instead of a sentence.
        #[arg(long)]
        json: bool,
    },
}

fn parse_agent_status(s: &str) -> Result<AgentStatus, String> {
    [AgentStatus::Online, AgentStatus::Busy, AgentStatus::Draining, AgentStatus::Offline]
        .into_iter()
        .find(|st| st.as_str() == s)
        .ok_or_else(|| format!("unknown status {s:?}; expected online, busy, draining or offline"))
}

fn parse_agent_name(s: &str) -> Result<AgentName, String> {
    AgentName::parse(s).map_err(|e| e.to_string())
}

#[derive(Debug, Subcommand)]
enum TasksCommand {
    /// One task: its state, lease, the receipt and each check forgefleet made of it, and its history.
    Show {
        /// The task's id.
        id: String,
        /// Print JSON for scripts instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum ForgejoCommand {
    /// Prepare a repository: create the labels forgefleet uses and the webhook to this server.
    Setup {
        /// The repository, `owner/name`.
        #[arg(long)]
        repo: String,
        /// Where Forgejo should deliver webhooks (default: `[forgejo] webhook_url`).
        #[arg(long)]
        webhook_url: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Check a configuration file: prints `ok` and the effective settings, or each problem with its key.
    Check {
        /// The file to check.
        file: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum StoreCommand {
    /// Recompute every projection (tasks, agents, leases) from the event log. Refuses while `serve` runs.
    Rebuild,
}

/// A failure the user can act on, with the exit code it deserves: 2 for a problem with what the user gave us
/// (configuration, a locked or damaged database), 1 for anything else.
#[derive(Debug)]
pub struct CliError {
    pub code: u8,
    pub message: String,
}

impl CliError {
    pub fn usage(message: impl Into<String>) -> Self {
        Self { code: 2, message: message.into() }
    }
    pub fn failure(message: impl Into<String>) -> Self {
        Self { code: 1, message: message.into() }
    }
}

impl From<StoreError> for CliError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Corrupt { .. } | StoreError::TooNew { .. } | StoreError::Open { .. } => {
                CliError::usage(e.to_string())
            }
            other => CliError::failure(other.to_string()),
        }
    }
}

/// Parses the command line, runs the command, and turns the outcome into an exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("forgefleet: {}", e.message);
            ExitCode::from(e.code)
        }
    }
}

fn run(cli: Cli) -> Result<(), CliError> {
    if let Command::Config { command: ConfigCommand::Check { file } } = &cli.command {
        return config_check(file);
    }
    if let Command::Agent { check, repo } = &cli.command {
        return run_agent(&cli, *check, repo.as_deref());
    }
    let config = load_config(&cli)?;
    match cli.command {
        Command::Serve => serve::run(config),
        Command::Config { .. } | Command::Agent { .. } => unreachable!("handled above"),
        Command::Store { command: StoreCommand::Rebuild } => rebuild(&config),
        Command::Tasks { command: Some(TasksCommand::Show { id, json }), .. } => {
            let id: crate::core::TaskId =
                id.parse().map_err(|e: crate::core::InvalidId| CliError::usage(e.to_string()))?;
            let store = Store::open_read_only(&config.store.path)?;
            views::task(&store, id, json)
        }
        Command::Tasks { command: None, state, limit, json } => {
            let state = match state {
                None => None,
                Some(s) => Some(TaskState::parse(&s).ok_or_else(|| {
                    let names: Vec<_> = TaskState::ALL.iter().map(|s| s.as_str()).collect();
                    CliError::usage(format!("unknown state {s:?}; expected one of {}", names.join(", ")))
                })?),
            };
            let store = Store::open_read_only(&config.store.path)?;
            views::tasks(&store, state, limit, json)
        }
        Command::Agents { command: None, status, capability, json } => {
            let store = Store::open_read_only(&config.store.path)?;
            views::agents(&store, status, capability.as_deref(), json)
        }
        Command::Agents { command: Some(AgentsCommand::Drain { name, json }), .. } => {
            remote::drain(&remote::Remote::new(&config, cli.server.as_deref())?, &name, json)
        }
        Command::Agents { command: Some(AgentsCommand::Forget { name, json }), .. } => {
            remote::forget(&remote::Remote::new(&config, cli.server.as_deref())?, &name, json)
        }
        Command::Retry { task, json } => {
            remote::retry(&remote::Remote::new(&config, cli.server.as_deref())?, task, json)
        }
        Command::Cancel { task, json } => {
            remote::cancel(&remote::Remote::new(&config, cli.server.as_deref())?, task, json)
        }
        Command::Outbox { command: None, limit, json }
        | Command::Outbox { command: Some(OutboxCommand::List { limit, json }), .. } => {
            if limit == 0 {
                return Err(CliError::usage("--limit must be at least 1"));
            }
            let store = Store::open_read_only(&config.store.path)?;
            views::outbox(&store, limit, json)
        }
        Command::Outbox { command: Some(OutboxCommand::Retry { id, json }), .. } => {
            remote::outbox(&remote::Remote::new(&config, cli.server.as_deref())?, id, "retry", json)
        }
        Command::Outbox { command: Some(OutboxCommand::Drop { id, json }), .. } => {
            remote::outbox(&remote::Remote::new(&config, cli.server.as_deref())?, id, "drop", json)
        }
        Command::Status { json } => {
            let store = Store::open_read_only(&config.store.path)?;
            views::status(&store, json)
        }
        Command::Forgejo { command: ForgejoCommand::Setup { repo, webhook_url } } => {
            setup::run(&config, &repo, webhook_url.as_deref())
        }
    }
}

fn load_config(cli: &Cli) -> Result<Config, CliError> {
    let mut config = Config::load(cli.config.as_deref()).map_err(|errors| {
        let source = cli.config.as_ref().map_or("the defaults".to_string(), |p| p.display().to_string());
        CliError::usage(format!("the configuration in {source} has problems:\n{errors}"))
    })?;
    if cli.log_json {
        config.server.log_format = LogFormat::Json;
    }
    crate::telemetry::init_logging(config.server.log_format, &config.server.log_level);
    Ok(config)
}

fn run_agent(cli: &Cli, check: bool, repo: Option<&str>) -> Result<(), CliError> {
    let path =
        cli.config.as_deref().ok_or_else(|| CliError::usage("`agent` needs its configuration: --config FILE"))?;
    // Before anything else: no process of the runner's keeps its secrets in its start-up environment.
    crate::agent::secrets::reexec_without_secrets().map_err(CliError::failure)?;
    let config = crate::agent::config::AgentConfig::load(path).map_err(|errors| {
        CliError::usage(format!("the configuration in {} has problems:\n{errors}", path.display()))
    })?;
    let format = if cli.log_json { LogFormat::Json } else { LogFormat::Human };
    let level = std::env::var("FORGEFLEET_LOG").unwrap_or_else(|_| "info".into());
    crate::telemetry::init_logging(format, &level);
    // Every line of this runner carries its name (`runner{agent=a1}`): a host may run several.
    let span = crate::agent::span(&config);
    let _entered = span.enter();
    if check {
        let repo = repo
            .map(|r| crate::core::RepoName::parse(r).map(|r| r.to_string()))
            .transpose()
            .map_err(|e| CliError::usage(format!("--repo: {e}")))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| CliError::failure(format!("cannot start the async runtime: {e}")))?;
        let target = crate::agent::check::Forgejo {
            url: config.agent.forgejo_url.as_deref(),
            git_url: config.agent.git_url.as_deref(),
            repo: repo.as_deref(),
        };
        let ok = runtime.block_on(crate::agent::check::run(&config, target).instrument(span.clone()));
        return if ok { Ok(()) } else { Err(CliError::failure("some checks failed (see above)")) };
    }
    let runner = crate::agent::Runner::new(&config).map_err(|e| CliError::usage(e.to_string()))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("forgefleet-agent")
        .build()
        .map_err(|e| CliError::failure(format!("cannot start the async runtime: {e}")))?;
    runtime
        .block_on(std::sync::Arc::new(runner).run(&config, serve::shutdown_signal()).instrument(span.clone()))
        .map_err(|e| CliError::failure(e.to_string()))
}

fn config_check(file: &std::path::Path) -> Result<(), CliError> {
    match Config::load(Some(file)) {
        Ok(config) => {
            // The templates are part of the configuration: one that reads a name its context lacks would
            // otherwise be found only when `serve` starts.
            if let Err(e) = crate::integrations::templates::Templates::load(config.server.templates_dir.as_deref()) {
                println!("[server] templates_dir: {e}");
                return Err(CliError::usage(format!("{}: 1 problem(s)", file.display())));
            }
            println!("ok");
            println!("{}", matrix_summary(&config.matrix));
            print!("{}", config.effective_toml());
            Ok(())
        }
        Err(errors) => {
            println!("{errors}");
            Err(CliError::usage(format!("{}: {} problem(s)", file.display(), errors.0.len())))
        }
    }
}

/// One comment line on whether `serve` starts the Matrix bot, and as whom.
fn matrix_summary(m: &crate::config::MatrixConfig) -> String {
    match m.homeserver_url.as_deref() {
        None => "# matrix: off (no [matrix] homeserver_url): the Matrix bot does not start".to_string(),
        Some(url) => {
            let login = if m.access_token.is_some() { "an access token" } else { "a password" };
            let user = m.user.as_deref().unwrap_or("the token's user");
            format!("# matrix: on: {user} at {url}, with {login}, in {} room(s)", m.rooms.len())
        }
    }
}

fn rebuild(config: &Config) -> Result<(), CliError> {
    let _lock = StoreLock::acquire(&config.store.path, "forgefleet store rebuild")
        .map_err(|e| CliError::usage(e.to_string()))?;
    let mut store = Store::open(&config.store.path)?;
    let report = store.rebuild()?;
    let secs = report.elapsed.as_secs_f64();
    println!(
        "rebuilt {} tasks and {} agents from {} events in {:.3} s ({:.0} events/s)",
        report.tasks,
        report.agents,
        report.events,
        secs,
        report.events as f64 / secs.max(1e-9)
    );
    Ok(())
}
