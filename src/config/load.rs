//! Reading a configuration: the file, then the environment, then the checks.

use std::path::Path;

use serde::Deserialize;
use toml::Spanned;
use toml::de::{DeTable, DeValue, ValueDeserializer};

use super::errors::{self, ConfigError, ConfigErrors};
use super::{Config, Secret, validate};

/// The sections of the file, in the order `Config` declares them.
const SECTIONS: [&str; 9] = ["server", "store", "api", "agents", "tasks", "retry", "labels", "forgejo", "matrix"];

impl Config {
    /// Reads the file (`None`: defaults only), applies the secrets found in the process environment and
    /// checks the result.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigErrors> {
        let env = |name: &str| std::env::var(name).ok();
        let Some(path) = path else {
            return Self::from_toml_str("", &env);
        };
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::new(path.display().to_string(), format!("cannot read the configuration file: {e}"))
        })?;
        Self::from_toml_str(&text, &env)
    }

    /// Parses `text`, takes secrets from `env` where it has them, and checks the result. `env` is asked for
    /// names such as `FORGEFLEET_FORGEJO_TOKEN`; tests pass a closure instead of touching the process
    /// environment.
    pub fn from_toml_str(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigErrors> {
        let mut config = Config::default();
        let mut problems = parse_into(text, &mut config);
        config.apply_env(env);
        // Sections that did not parse kept their defaults, which pass the checks, so what validation finds
        // is about the file and comes on top of the parse errors rather than instead of them.
        problems.extend(validate::check(&config));
        if problems.is_empty() { Ok(config) } else { Err(ConfigErrors(problems)) }
    }

    /// Every secret with its key path: the one list the environment overrides are derived from.
    pub(crate) fn secrets_mut(&mut self) -> [(&'static str, &mut Option<Secret>); 7] {
        [
            ("api.operator_token", &mut self.api.operator_token),
            ("agents.registration_token", &mut self.agents.registration_token),
            ("forgejo.token", &mut self.forgejo.token),
            ("forgejo.webhook_secret", &mut self.forgejo.webhook_secret),
            ("matrix.password", &mut self.matrix.password),
            ("matrix.access_token", &mut self.matrix.access_token),
            ("matrix.store_passphrase", &mut self.matrix.store_passphrase),
        ]
    }

    /// The secret settings and the environment variable each can come from, e.g.
    /// `("forgejo.token", "FORGEFLEET_FORGEJO_TOKEN")`.
    pub fn secret_env_vars() -> Vec<(&'static str, String)> {
        Config::default().secrets_mut().into_iter().map(|(key, _)| (key, env_var_name(key))).collect()
    }

    /// An environment variable wins over the file, except when it is empty: an empty variable is easier to
    /// leave behind by accident than to mean "no secret".
    fn apply_env(&mut self, env: &dyn Fn(&str) -> Option<String>) {
        for (key, slot) in self.secrets_mut() {
            if let Some(value) = env(&env_var_name(key)).filter(|v| !v.is_empty()) {
                *slot = Some(Secret::new(value));
            }
        }
    }

    /// The settings in effect as TOML with every key present: secrets print as `"***"` when set and `""`
    /// when not, unset optional strings as `""`. It parses back to the same settings, secrets aside.
    pub fn effective_toml(&self) -> String {
        // Every value here came from TOML or from the code's defaults, so it is representable in TOML.
        let body = toml::to_string(self).expect("a Config always serializes to TOML");
        format!("# The settings in effect; secrets are shown as \"***\" when set.\n\n{body}")
    }
}

/// `forgejo.webhook_secret` -> `FORGEFLEET_FORGEJO_WEBHOOK_SECRET`.
fn env_var_name(key: &str) -> String {
    format!("FORGEFLEET_{}", key.replace('.', "_").to_ascii_uppercase())
}

/// Reads `text` into `config` section by section, so one bad section does not hide the problems of the
/// others, and returns every problem found.
fn parse_into(text: &str, config: &mut Config) -> Vec<ConfigError> {
    parse_sections(text, &SECTIONS, |name, value| match name {
        "server" => section(value, &mut config.server),
        "store" => section(value, &mut config.store),
        "api" => section(value, &mut config.api),
        "agents" => section(value, &mut config.agents),
        "tasks" => section(value, &mut config.tasks),
        "retry" => section(value, &mut config.retry),
        "labels" => section(value, &mut config.labels),
        "forgejo" => section(value, &mut config.forgejo),
        _ => section(value, &mut config.matrix),
    })
}

/// Reads a TOML file of `sections`, handing each one found to `read` (only names from `sections` reach it),
/// and returns every problem: syntax errors, unknown sections, and what `read` refused, in the file's order.
pub(crate) fn parse_sections(
    text: &str,
    sections: &[&str],
    mut read: impl FnMut(&str, Spanned<DeValue<'_>>) -> Result<(), toml::de::Error>,
) -> Vec<ConfigError> {
    let (doc, syntax) = DeTable::parse_recoverable(text);
    if !syntax.is_empty() {
        // After a syntax error the document is a best guess; reading it would report guesses as problems.
        return syntax.iter().map(|e| errors::from_toml(e, text, doc.get_ref())).collect();
    }
    let mut problems = Vec::new();
    for (key, value) in doc.get_ref().clone() {
        let name = key.get_ref().as_ref();
        if !sections.contains(&name) {
            let at = key.span().start;
            problems.push((at, errors::unknown_section(name, value.get_ref().is_table(), sections, text, at)));
            continue;
        }
        let result = read(name, value);
        if let Err(e) = result {
            let at = e.span().map_or(0, |s| s.start);
            problems.push((at, errors::from_toml(&e, text, doc.get_ref())));
        }
    }
    // The document's tables iterate by name; the file's order is easier to follow.
    problems.sort_by_key(|(at, _)| *at);
    problems.into_iter().map(|(_, e)| e).collect()
}

pub(crate) fn section<'i, T: Deserialize<'i>>(
    value: Spanned<DeValue<'i>>,
    into: &mut T,
) -> Result<(), toml::de::Error> {
    *into = T::deserialize(ValueDeserializer::from(value))?;
    Ok(())
}
