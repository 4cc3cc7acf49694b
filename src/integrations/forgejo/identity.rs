//! Who forgefleet is on Forgejo: the bot's login, read from `GET /user` at start (`[forgejo] bot_user` only
//! overrides it). Until it is known, comment commands wait: a comment by the bot itself must never run as one.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use super::ForgejoClient;

/// The bot's login, shared by the workers; `None` until known.
#[derive(Debug, Clone, Default)]
pub struct BotLogin(Arc<RwLock<Option<String>>>);

impl BotLogin {
    pub fn new(login: Option<String>) -> BotLogin {
        BotLogin(Arc::new(RwLock::new(login.filter(|l| !l.trim().is_empty()))))
    }

    pub fn get(&self) -> Option<String> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn set(&self, login: String) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Some(login);
    }

    /// Whether `login` is the bot (Forgejo's logins are case-insensitive); `None` while the bot's is unknown.
    pub fn is(&self, login: &str) -> Option<bool> {
        self.get().map(|bot| bot.eq_ignore_ascii_case(login.trim()))
    }
}

/// Reads the bot's login until Forgejo answers (1 s doubling to 1 min between tries).
pub async fn learn(client: ForgejoClient, bot: BotLogin) {
    let mut wait = Duration::from_secs(1);
    loop {
        match client.current_user().await {
            Ok(user) => {
                tracing::info!(login = %user.login, "forgefleet's Forgejo account");
                bot.set(user.login);
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read forgefleet's own Forgejo login (GET /user); comment commands wait");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(60));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logins_compare_without_regard_to_case_and_unknown_is_not_a_no() {
        let bot = BotLogin::new(None);
        assert_eq!(bot.is("forgefleet"), None);
        bot.set("ForgeFleet".into());
        assert_eq!(bot.is("forgefleet"), Some(true));
        assert_eq!(bot.is("alice"), Some(false));
        assert_eq!(BotLogin::new(Some(" ".into())).get(), None);
    }
}
