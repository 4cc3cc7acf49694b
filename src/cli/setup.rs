//! `forgefleet forgejo setup --repo owner/name`: the labels and the webhook a watched repository needs.

use super::CliError;
use crate::config::Config;
use crate::core::RepoName;
use crate::integrations::forgejo::ForgejoClient;
use crate::integrations::forgejo::labels::LabelMaker;

pub fn run(config: &Config, repo: &str, webhook_url: Option<&str>) -> Result<(), CliError> {
    let repo = RepoName::parse(repo).map_err(|e| CliError::usage(format!("--repo: {e}")))?;
    let url = config
        .forgejo
        .url
        .as_deref()
        .ok_or_else(|| CliError::usage("[forgejo] url is not set in the configuration"))?;
    let token = config
        .forgejo
        .token
        .clone()
        .ok_or_else(|| CliError::usage("no Forgejo token: set [forgejo] token or FORGEFLEET_FORGEJO_TOKEN"))?;
    let secret = config.forgejo.webhook_secret.as_ref().map(|s| s.expose().to_string()).ok_or_else(|| {
        CliError::usage("no webhook secret: set [forgejo] webhook_secret or FORGEFLEET_FORGEJO_WEBHOOK_SECRET first")
    })?;
    let hook_url = webhook_url.or(config.forgejo.webhook_url.as_deref()).ok_or_else(|| {
        CliError::usage("where should Forgejo deliver webhooks? pass --webhook-url or set [forgejo] webhook_url")
    })?;
    if !(hook_url.starts_with("http://") || hook_url.starts_with("https://")) {
        return Err(CliError::usage(format!("the webhook URL {hook_url:?} must start with http:// or https://")));
    }
    let ca = config.forgejo.ca().map_err(|why| CliError::usage(format!("forgejo.ca_file: {why}")))?;
    let client = ForgejoClient::new(url, token, ca.as_ref())
        .map_err(|e| CliError::failure(e.to_string()))?
        .with_timeout(std::time::Duration::from_secs(config.forgejo.request_timeout_secs));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::failure(format!("cannot start the async runtime: {e}")))?;
    runtime.block_on(async {
        let fail = |e: crate::integrations::forgejo::ForgejoError| match e.status() {
            Some(s) if s.is_client_error() => CliError::usage(e.to_string()),
            _ => CliError::failure(e.to_string()),
        };
        let created = LabelMaker::new(client.clone()).ensure_managed(&repo, &config.label_scheme()).await.map_err(fail)?;
        if created.is_empty() {
            println!("labels: all present in {repo}");
        } else {
            println!("labels: created {} in {repo}", created.join(", "));
        }
        let hooks = client.hooks(&repo).await.map_err(fail)?;
        match hooks.iter().find(|h| h.config.get("url").map(String::as_str) == Some(hook_url)) {
            Some(hook) if hook.delivers_reviews() => println!("webhook: {hook_url} already delivers to forgefleet"),
            // A hook made by an older forgefleet, or by hand: reviews that request changes are work too.
            Some(hook) => {
                client.add_hook_events(&repo, hook.id, &hook.events).await.map_err(fail)?;
                println!("webhook: {hook_url} already delivers to forgefleet; added pull_request_review to its events");
            }
            None => {
                let hook = client.create_hook(&repo, hook_url, &secret).await.map_err(fail)?;
                let events = crate::integrations::forgejo::client::HOOK_EVENTS.join(", ");
                println!("webhook: created (id {}) delivering {events} to {hook_url}", hook.id);
            }
        }
        println!(
            "If forgefleet listens on a private or loopback address, Forgejo's [webhook] ALLOWED_HOST_LIST must allow it."
        );
        Ok(())
    })
}
