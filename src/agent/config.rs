//! The runner's configuration: one TOML file on the agent's host (`forgefleet agent --config agent.toml`).
//! Problems are reported like the server's: every one, each with its key.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::sandbox::{Network, SandboxMode};
use crate::adapters::AdapterKind;
use crate::adapters::claude::ClaudeSection;
use crate::adapters::codex::{CodexSection, SANDBOXES};
use crate::config::load::{parse_sections, section};
use crate::config::secret::optional;
use crate::config::validate::Problems;
use crate::config::{CaBundle, ConfigError, ConfigErrors, Secret};

const SECTIONS: [&str; 5] = ["agent", "command", "claude", "codex", "git"];

#[derive(Debug, Clone, Default, Serialize)]
pub struct AgentConfig {
    /// The file it was read from (hidden from the agent's sandbox).
    #[serde(skip)]
    pub source: Option<PathBuf>,
    pub agent: AgentSection,
    pub command: CommandSection,
    pub claude: ClaudeSection,
    pub codex: CodexSection,
    pub git: GitSection,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentSection {
    /// The agent's name in the fleet: re-registering the same name updates it. Required.
    #[serde(with = "optional")]
    pub name: Option<String>,
    /// The forgefleet server, e.g. `"http://fleet.example.com:8080"`. Required.
    #[serde(with = "optional")]
    pub server: Option<String>,
    /// The fleet's registration token (`[agents] registration_token` of the server). Secret; env
    /// `FORGEFLEET_AGENT_REGISTRATION_TOKEN`, or `registration_token_file`. Required.
    #[serde(with = "optional")]
    pub registration_token: Option<Secret>,
    /// A file (mode 0600 or stricter) holding the registration token, instead of `registration_token`.
    #[serde(with = "optional")]
    pub registration_token_file: Option<PathBuf>,
    /// `command`, `claude-code` or `codex`. Default: `"command"`.
    pub adapter: AdapterKind,
    /// What this agent can do; tasks with `needs:<capability>` labels go only to agents that have them.
    pub capabilities: Vec<String>,
    /// Tasks worked on at once, each in its own worktree. Default: `1`.
    pub max_concurrency: u32,
    /// Where the runner keeps its repository caches and worktrees. Default: `"forgefleet-agent"`.
    pub work_dir: PathBuf,
    /// How long one request for work waits on the server (at most the server's `max_wait_secs`).
    /// Default: `30`.
    pub wait_secs: u64,
    /// Stop an agent that prints nothing (on either stream) for this long, and fail the attempt with
    /// `agent_error`; 0 turns it off. For agents that can hang silently, e.g. Codex retrying an unreachable
    /// model for ever. Default: `0` (only the task's deadline stops it).
    pub idle_timeout_secs: u64,
    /// How long the runner keeps trying to open the pull request for pushed work while Forgejo answers 5xx
    /// or 429, or cannot be reached. When it gives up, the attempt fails and says its branch was pushed: the
    /// next attempt is assigned that branch and continues it. Default: `180`.
    pub pull_request_patience_secs: u64,
    /// A Forgejo API token of the agent's Forgejo user: it pushes the branch and opens the pull request.
    /// Secret; env `FORGEFLEET_AGENT_FORGEJO_TOKEN`, or `forgejo_token_file`. Required.
    #[serde(with = "optional")]
    pub forgejo_token: Option<Secret>,
    /// A file (mode 0600 or stricter) holding the Forgejo token, instead of `forgejo_token`.
    #[serde(with = "optional")]
    pub forgejo_token_file: Option<PathBuf>,
    /// The Forgejo the runner opens pull requests on, e.g. `"https://forgejo.example.com"`: the only place
    /// its Forgejo token goes to, whatever an assignment says. Required.
    #[serde(with = "optional")]
    pub forgejo_url: Option<String>,
    /// Where the runner may fetch and push with its token, when git is served elsewhere (the server's
    /// `[forgejo] git_url`). An assignment's `clone_url` must have the scheme, host and port of this or of
    /// `forgejo_url`. Default: unset (`forgejo_url` only).
    #[serde(with = "optional")]
    pub git_url: Option<String>,
    /// A PEM file of extra CA certificates to trust, for the server, the Forgejo API and git over HTTPS.
    /// Default: unset.
    #[serde(with = "optional")]
    pub ca_file: Option<PathBuf>,
    /// `bubblewrap`: each attempt's agent runs in a sandbox of its own (docs/agent.md, "Threat model");
    /// `none`: as the runner's user, seeing what it sees (logged as a warning at every start).
    /// Default: `"bubblewrap"`.
    pub sandbox: SandboxMode,
    /// The sandbox's network: `host` (model APIs, package registries) or `none` (loopback only).
    /// Default: `"host"`.
    pub network: Network,
    /// More paths the sandbox shows read-only (a toolchain outside /usr, e.g. `"/root/.rustup"`).
    /// Default: `[]`.
    pub sandbox_paths: Vec<PathBuf>,
    /// More names of the runner's environment variables passed to the agent, beyond `PATH`, `LANG`, `LC_*`,
    /// `TERM`, `TZ` and the adapter's own. Default: `[]`.
    pub env_passthrough: Vec<String>,
}

impl Default for AgentSection {
    fn default() -> Self {
        Self {
            name: None,
            server: None,
            registration_token: None,
            registration_token_file: None,
            adapter: AdapterKind::Command,
            capabilities: Vec::new(),
            max_concurrency: 1,
            work_dir: PathBuf::from("forgefleet-agent"),
            wait_secs: 30,
            idle_timeout_secs: 0,
            pull_request_patience_secs: 180,
            forgejo_token: None,
            forgejo_token_file: None,
            forgejo_url: None,
            git_url: None,
            ca_file: None,
            sandbox: SandboxMode::Bubblewrap,
            network: Network::Host,
            sandbox_paths: Vec::new(),
            env_passthrough: Vec::new(),
        }
    }
}

/// The `command` adapter: any program, run in the worktree with the prompt on its standard input.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CommandSection {
    /// The program and its arguments, e.g. `["sh", "-c", "make fix"]`. Required with `adapter = "command"`.
    pub run: Vec<String>,
}

/// Who the runner's own commits are by (work the agent left uncommitted).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GitSection {
    /// Default: `"forgefleet agent <name>"`.
    #[serde(with = "optional")]
    pub author_name: Option<String>,
    /// Default: `"<name>@agents.forgefleet.invalid"`.
    #[serde(with = "optional")]
    pub author_email: Option<String>,
}

impl AgentConfig {
    /// Reads and checks the file; secrets from the environment (or passed on by the runner's first image: see
    /// [`super::secrets`]) win over the file.
    pub fn load(path: &Path) -> Result<AgentConfig, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::new(path.display().to_string(), format!("cannot read the configuration file: {e}"))
        })?;
        let passed = super::secrets::inherited();
        let mut c = Self::from_toml_str(&text, &|name| passed.get(name).cloned().or_else(|| std::env::var(name).ok()))?;
        c.source = Some(path.to_path_buf());
        Ok(c)
    }

    pub fn from_toml_str(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<AgentConfig, ConfigErrors> {
        let mut c = AgentConfig::default();
        let mut problems = parse_sections(text, &SECTIONS, |name, value| match name {
            "agent" => section(value, &mut c.agent),
            "command" => section(value, &mut c.command),
            "claude" => section(value, &mut c.claude),
            "codex" => section(value, &mut c.codex),
            _ => section(value, &mut c.git),
        });
        let a = &mut c.agent;
        for (var, key, slot, file) in [
            (
                super::secrets::REGISTRATION_TOKEN,
                "agent.registration_token",
                &mut a.registration_token,
                &a.registration_token_file,
            ),
            (super::secrets::FORGEJO_TOKEN, "agent.forgejo_token", &mut a.forgejo_token, &a.forgejo_token_file),
        ] {
            if let Some(path) = file {
                if slot.is_some() {
                    problems.push(ConfigError::new(key, format!("is given twice: here and in {key}_file")));
                }
                match super::secrets::read_file(path) {
                    Ok(v) => *slot = Some(v),
                    Err(e) => problems.push(ConfigError::new(format!("{key}_file"), e)),
                }
            }
            if let Some(v) = env(var).filter(|v| !v.is_empty()) {
                *slot = Some(Secret::new(v));
            }
        }
        problems.extend(c.check());
        if problems.is_empty() { Ok(c) } else { Err(ConfigErrors(problems)) }
    }

    fn check(&self) -> Vec<ConfigError> {
        let mut p = Problems(Vec::new());
        let a = &self.agent;
        match a.name.as_deref() {
            None => p.add("agent.name", "is required: the agent's name in the fleet"),
            Some(n) if n.len() > 64 || !n.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) => {
                p.add("agent.name", format!("{n:?}: use 1 to 64 letters, digits, '-', '_' or '.'"))
            }
            Some(_) => {}
        }
        if a.server.is_none() {
            p.add("agent.server", "is required: the forgefleet server's URL, e.g. \"http://fleet:8080\"");
        }
        p.url("agent.server", a.server.as_deref());
        if a.registration_token.is_none() {
            p.add(
                "agent.registration_token",
                "is required (or registration_token_file, or FORGEFLEET_AGENT_REGISTRATION_TOKEN): the server's \
                 [agents] registration_token",
            );
        }
        if a.forgejo_token.is_none() {
            p.add(
                "agent.forgejo_token",
                "is required (or forgejo_token_file, or FORGEFLEET_AGENT_FORGEJO_TOKEN): a Forgejo token that may \
                 push and open pull requests",
            );
        }
        if a.forgejo_url.is_none() {
            p.add(
                "agent.forgejo_url",
                "is required: the Forgejo the runner's token may be sent to, e.g. \"https://forgejo.example.com\"",
            );
        }
        p.url("agent.forgejo_url", a.forgejo_url.as_deref());
        p.url("agent.git_url", a.git_url.as_deref());
        p.positive("agent.max_concurrency", u64::from(a.max_concurrency));
        if a.work_dir.as_os_str().is_empty() {
            p.add("agent.work_dir", "must not be empty");
        }
        if let Some(ca) = &a.ca_file
            && let Err(e) = CaBundle::load(ca)
        {
            p.add("agent.ca_file", e);
        }
        if a.adapter == AdapterKind::Command && self.command.run.first().is_none_or(|p| p.trim().is_empty()) {
            p.add("command.run", "is required with adapter = \"command\": the program and its arguments");
        }
        const MODES: [&str; 6] = ["acceptEdits", "auto", "bypassPermissions", "default", "dontAsk", "plan"];
        if !MODES.contains(&self.claude.permission_mode.as_str()) {
            p.add(
                "claude.permission_mode",
                format!("{:?} is not one of {}", self.claude.permission_mode, MODES.join(", ")),
            );
        }
        if !SANDBOXES.contains(&self.codex.sandbox.as_str()) {
            p.add("codex.sandbox", format!("{:?} is not one of {}", self.codex.sandbox, SANDBOXES.join(", ")));
        }
        if self.codex.sandbox == "bypass" && a.sandbox == SandboxMode::None {
            p.add(
                "codex.sandbox",
                "\"bypass\" turns Codex's own sandbox off; it is allowed only inside forgefleet's (agent.sandbox = \"bubblewrap\")",
            );
        }
        for path in a.sandbox_paths.iter().filter(|p| !p.is_absolute()) {
            p.add("agent.sandbox_paths", format!("{} is not an absolute path", path.display()));
        }
        for name in a.env_passthrough.iter().filter(|n| n.is_empty() || n.contains(['=', '\0'])) {
            p.add("agent.env_passthrough", format!("{name:?} is not an environment variable's name"));
        }
        for (key, program) in [("claude.program", &self.claude.program), ("codex.program", &self.codex.program)] {
            if program.trim().is_empty() {
                p.add(key, "must not be empty");
            }
        }
        p.0
    }

    /// The agent's name (checked present by `load`).
    pub fn name(&self) -> &str {
        self.agent.name.as_deref().unwrap_or_default()
    }

    /// Where the runner's Forgejo token may go: the `(scheme, host, port)` of `forgejo_url` and `git_url`.
    pub fn token_origins(&self) -> Vec<Origin> {
        [&self.agent.forgejo_url, &self.agent.git_url].into_iter().flatten().filter_map(|u| Origin::of(u)).collect()
    }

    pub fn ca(&self) -> Result<Option<CaBundle>, String> {
        self.agent.ca_file.as_deref().map(CaBundle::load).transpose()
    }

    pub fn author(&self) -> (String, String) {
        let name = self.git.author_name.clone().unwrap_or_else(|| format!("forgefleet agent {}", self.name()));
        let email =
            self.git.author_email.clone().unwrap_or_else(|| format!("{}@agents.forgefleet.invalid", self.name()));
        (name, email)
    }
}

/// The scheme, host and port of a URL: what must match before a token is sent to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub scheme: String,
    pub host: String,
    pub port: Option<u16>,
}

impl Origin {
    /// `None` for anything but a plain `http(s)://host[:port]/path` URL: no user or password, query or
    /// fragment.
    pub fn of(url: &str) -> Option<Origin> {
        let parsed = reqwest::Url::parse(url).ok()?;
        let plain = matches!(parsed.scheme(), "http" | "https")
            && parsed.username().is_empty()
            && parsed.password().is_none()
            && parsed.query().is_none()
            && parsed.fragment().is_none();
        plain.then(|| Origin {
            scheme: parsed.scheme().to_string(),
            host: parsed.host_str().unwrap_or_default().to_ascii_lowercase(),
            port: parsed.port_or_known_default(),
        })
    }
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}://{}", self.scheme, self.host)?;
        match self.port {
            Some(p) => write!(f, ":{p}"),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    const GOOD: &str = r#"
[agent]
name = "builder-1"
server = "http://127.0.0.1:8080"
forgejo_url = "http://127.0.0.1:3000"
registration_token = "reg"
forgejo_token = "fj"
capabilities = ["rust"]

[command]
run = ["sh", "-c", "true"]
"#;

    #[test]
    fn a_complete_file_loads_with_defaults_for_the_rest() {
        let c = AgentConfig::from_toml_str(GOOD, &no_env).unwrap();
        assert_eq!(c.name(), "builder-1");
        assert_eq!(c.agent.max_concurrency, 1);
        assert_eq!(c.agent.adapter, AdapterKind::Command);
        assert_eq!(c.author().1, "builder-1@agents.forgefleet.invalid");
    }

    #[test]
    fn every_problem_is_reported_with_its_key() {
        let text = "[agent]\nserver = \"fleet:8080\"\nmax_concurrency = 0\nadapter = \"gpt\"\n[comand]\nrun = []\n";
        let err = AgentConfig::from_toml_str(text, &no_env).unwrap_err();
        let keys: Vec<&str> = err.0.iter().map(|e| e.key.as_str()).collect();
        assert!(err.to_string().contains("adapter"), "{err}");
        assert!(err.to_string().contains("[comand]"), "{err}");
        let text = "[agent]\nserver = \"fleet:8080\"\nmax_concurrency = 0\n";
        let err = AgentConfig::from_toml_str(text, &no_env).unwrap_err();
        let keys2: Vec<&str> = err.0.iter().map(|e| e.key.as_str()).collect();
        for k in [
            "agent.name",
            "agent.server",
            "agent.registration_token",
            "agent.forgejo_token",
            "agent.forgejo_url",
            "agent.max_concurrency",
            "command.run",
        ] {
            assert!(keys2.contains(&k), "{k} missing from {keys2:?}");
        }
        assert!(!keys.is_empty());
    }

    #[test]
    fn the_example_file_loads_once_its_secrets_are_given() {
        let text = include_str!("../../agent.example.toml");
        let env = |n: &str| n.starts_with("FORGEFLEET_AGENT_").then(|| "secret".to_string());
        let c = AgentConfig::from_toml_str(text, &env).unwrap();
        assert_eq!(c.claude.permission_mode, "acceptEdits");
        assert_eq!(c.codex.sandbox, "workspace-write");
        let bad = text.replace("sandbox = \"workspace-write\"", "sandbox = \"yolo\"");
        let err = AgentConfig::from_toml_str(&bad, &env).unwrap_err();
        assert_eq!(err.0.len(), 1, "{err}");
        assert_eq!(err.0[0].key, "codex.sandbox");
    }

    #[test]
    fn codex_bypass_needs_forgefleets_sandbox() {
        let text = format!("{GOOD}\n[codex]\nsandbox = \"bypass\"\n");
        assert!(AgentConfig::from_toml_str(&text, &no_env).is_ok());
        let text = text.replace("[command]", "sandbox = \"none\"\n\n[command]");
        let err = AgentConfig::from_toml_str(&text, &no_env).unwrap_err();
        assert_eq!(err.0.len(), 1, "{err}");
        assert_eq!(err.0[0].key, "codex.sandbox");
        assert!(err.0[0].to_string().contains("only inside forgefleet's"), "{err}");
    }

    #[test]
    fn sandbox_keys_are_checked() {
        let text = GOOD.replace(
            "[command]",
            "sandbox = \"none\"\nnetwork = \"none\"\nsandbox_paths = [\"opt/x\"]\nenv_passthrough = [\"A=B\"]\n\n[command]",
        );
        let err = AgentConfig::from_toml_str(&text, &no_env).unwrap_err();
        let keys: Vec<&str> = err.0.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["agent.sandbox_paths", "agent.env_passthrough"], "{err}");
        let err = AgentConfig::from_toml_str(&GOOD.replace("[command]", "sandbox = \"docker\"\n[command]"), &no_env)
            .unwrap_err();
        assert!(err.to_string().contains("sandbox"), "{err}");
    }

    #[test]
    fn secrets_come_from_the_environment_too() {
        let text = GOOD.replace("registration_token = \"reg\"\n", "").replace("forgejo_token = \"fj\"\n", "");
        assert!(AgentConfig::from_toml_str(&text, &no_env).is_err());
        let env = |n: &str| Some(format!("from-{n}"));
        let c = AgentConfig::from_toml_str(&text, &env).unwrap();
        assert_eq!(c.agent.forgejo_token.unwrap().expose(), "from-FORGEFLEET_AGENT_FORGEJO_TOKEN");
    }

    #[test]
    fn secrets_come_from_files_only_their_owner_can_read() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("forgejo-token");
        std::fs::write(&file, "from-file\n").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let text = GOOD.replace("forgejo_token = \"fj\"", &format!("forgejo_token_file = {:?}", file));
        let c = AgentConfig::from_toml_str(&text, &no_env).unwrap();
        assert_eq!(c.agent.forgejo_token.unwrap().expose(), "from-file");

        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = AgentConfig::from_toml_str(&text, &no_env).unwrap_err();
        assert_eq!(err.0[0].key, "agent.forgejo_token_file", "{err}");
        assert!(err.to_string().contains("chmod 600"), "{err}");

        let both =
            GOOD.replace("forgejo_token = \"fj\"", &format!("forgejo_token = \"fj\"\nforgejo_token_file = {:?}", file));
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o400)).unwrap();
        let err = AgentConfig::from_toml_str(&both, &no_env).unwrap_err();
        assert!(err.to_string().contains("given twice"), "{err}");
    }

    #[test]
    fn only_plain_http_urls_have_an_origin() {
        let o = Origin::of("https://Forgejo.example.com/git/").unwrap();
        assert_eq!(o.to_string(), "https://forgejo.example.com:443");
        assert_eq!(Origin::of("http://h:3000/a/b.git").unwrap().port, Some(3000));
        for bad in ["--upload-pack=x", "ext::sh -c x", "file:///etc", "https://u:p@h/", "https://h/?q", "ssh://h/x"] {
            assert!(Origin::of(bad).is_none(), "{bad}");
        }
    }
}
