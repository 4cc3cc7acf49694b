//! `retry`, `cancel`, `agents drain`, `agents forget` and `outbox retry|drop`: commands that change something
//! go through the running server, because
//! its engine is the only writer of the database. They speak the operator API over HTTP.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use reqwest::{StatusCode, Url};
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::CliError;
use crate::api::TaskAck;
use crate::config::Config;
use crate::core::{AgentName, TaskId, TaskState};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the running forgefleet is, and the operator token to show it.
#[derive(Debug)]
pub struct Remote {
    /// `http://host:port` (and any path prefix), without a trailing slash.
    base: String,
    /// Whether the server is on this machine: then no HTTP proxy from the environment is used.
    loopback: bool,
    token: String,
}

impl Remote {
    /// The server named by `--server` (or `FORGEFLEET_SERVER`), else the one `[server] listen` describes; the
    /// token of `[api] operator_token` (or `FORGEFLEET_API_OPERATOR_TOKEN`).
    pub fn new(config: &Config, server: Option<&str>) -> Result<Self, CliError> {
        let url = match server {
            Some(s) => parse_server(s)?,
            None => default_server(config.server.listen),
        };
        let token = match config.api.operator_token.as_ref() {
            Some(t) if !t.expose().trim().is_empty() => t.expose().trim().to_string(),
            _ => {
                return Err(CliError::usage(
                    "no operator token: set `[api] operator_token` in the configuration file or the \
                     FORGEFLEET_API_OPERATOR_TOKEN environment variable to the token the server uses",
                ));
            }
        };
        let loopback = url.host_str().is_some_and(|h| {
            let h = h.trim_start_matches('[').trim_end_matches(']');
            h.eq_ignore_ascii_case("localhost") || h.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
        });
        Ok(Self { base: url.as_str().trim_end_matches('/').to_string(), loopback, token })
    }

    /// `POST <base><path>` with the operator token; the answer's JSON on success.
    ///
    /// Errors: the server cannot be reached or does not answer in time (exit 1); it refuses with 4xx (exit 2:
    /// what the user asked for does not apply) or fails with 5xx (exit 1), showing the server's own message.
    pub fn post(&self, path: &str) -> Result<Value, CliError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| CliError::failure(format!("cannot start the async runtime: {e}")))?;
        runtime.block_on(self.post_async(path))
    }

    async fn post_async(&self, path: &str) -> Result<Value, CliError> {
        let mut builder = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .user_agent(concat!("forgefleet-cli/", env!("CARGO_PKG_VERSION")));
        if self.loopback {
            builder = builder.no_proxy();
        }
        let client =
            builder.build().map_err(|e| CliError::failure(format!("cannot set up the HTTP client: {}", cause(&e))))?;
        let url = format!("{}{path}", self.base);
        let response = client.post(&url).bearer_auth(&self.token).send().await.map_err(|e| self.unreachable(&e))?;
        let status = response.status();
        let body = response.bytes().await.map_err(|e| self.unreachable(&e))?;
        let json: Option<Value> = serde_json::from_slice(&body).ok();
        if status.is_success() {
            return json.ok_or_else(|| {
                CliError::failure(format!(
                    "{url} answered {status} with something that is not JSON: {}",
                    snippet(&body)
                ))
            });
        }
        let message = json
            .as_ref()
            .and_then(|v| v["error"]["message"].as_str())
            .map(str::to_string)
            .unwrap_or_else(|| format!("{url} answered {status}: {}", snippet(&body)));
        let message = if status == StatusCode::UNAUTHORIZED {
            format!(
                "{message} (this command sends the token of `[api] operator_token` or FORGEFLEET_API_OPERATOR_TOKEN)"
            )
        } else {
            message
        };
        if status.is_client_error() { Err(CliError::usage(message)) } else { Err(CliError::failure(message)) }
    }

    fn unreachable(&self, e: &reqwest::Error) -> CliError {
        let base = &self.base;
        if e.is_connect() {
            CliError::failure(format!(
                "cannot reach forgefleet at {base}: is `forgefleet serve` running? ({})",
                cause(e)
            ))
        } else if e.is_timeout() {
            CliError::failure(format!(
                "forgefleet at {base} did not answer within {} s; it may be overloaded",
                REQUEST_TIMEOUT.as_secs()
            ))
        } else {
            CliError::failure(format!("the request to forgefleet at {base} failed: {}", cause(e)))
        }
    }
}

/// `forgefleet retry <task>`.
pub fn retry(remote: &Remote, task: TaskId, as_json: bool) -> Result<(), CliError> {
    let answer = remote.post(&format!("/api/v1/tasks/{task}/retry"))?;
    if as_json {
        println!("{answer}");
        return Ok(());
    }
    let ack: TaskAck = decode(remote, answer)?;
    match ack.state {
        TaskState::Queued => println!("task {} is queued again (attempt {})", ack.task_id, ack.attempt),
        other => println!("task {} is {other} (attempt {})", ack.task_id, ack.attempt),
    }
    Ok(())
}

/// `forgefleet cancel <task>`.
pub fn cancel(remote: &Remote, task: TaskId, as_json: bool) -> Result<(), CliError> {
    let answer = remote.post(&format!("/api/v1/tasks/{task}/cancel"))?;
    if as_json {
        println!("{answer}");
        return Ok(());
    }
    let ack: TaskAck = decode(remote, answer)?;
    match ack.state {
        TaskState::Cancelled => println!(
            "task {} is cancelled (attempt {}); an agent working on it is told to stop at its next heartbeat",
            ack.task_id, ack.attempt
        ),
        other => println!("task {} is {other} (attempt {})", ack.task_id, ack.attempt),
    }
    Ok(())
}

/// `forgefleet outbox retry|drop <id>`.
pub fn outbox(remote: &Remote, id: i64, action: &str, as_json: bool) -> Result<(), CliError> {
    let answer = remote.post(&format!("/api/v1/outbox/{id}/{action}"))?;
    if as_json {
        println!("{answer}");
        return Ok(());
    }
    let ack: crate::api::OutboxAck = decode(remote, answer)?;
    match ack.state.as_str() {
        "dropped" => println!("outbox row {} ({}) is dropped: it is never tried again", ack.id, ack.destination),
        _ => println!("outbox row {} ({}) is tried again now", ack.id, ack.destination),
    }
    Ok(())
}

/// `forgefleet agents drain <name>`.
pub fn drain(remote: &Remote, name: &AgentName, as_json: bool) -> Result<(), CliError> {
    let answer = remote.post(&format!("/api/v1/agents/{name}/drain"))?;
    if as_json {
        println!("{answer}");
        return Ok(());
    }
    let status = answer["status"].as_str().unwrap_or("draining");
    println!("agent {name} is {status}: it takes no new work and finishes what it is running");
    Ok(())
}

/// `forgefleet agents forget <name>`.
pub fn forget(remote: &Remote, name: &AgentName, as_json: bool) -> Result<(), CliError> {
    let answer = remote.post(&format!("/api/v1/agents/{name}/forget"))?;
    if as_json {
        println!("{answer}");
        return Ok(());
    }
    let requeued: Vec<String> = answer["requeued"]
        .as_array()
        .map(|a| a.iter().filter_map(|t| t.as_i64()).map(|t| t.to_string()).collect())
        .unwrap_or_default();
    if requeued.is_empty() {
        println!("agent {name} is forgotten: its name can be registered again");
    } else {
        println!(
            "agent {name} is forgotten: its name can be registered again; task(s) {} went back to the queue",
            requeued.join(", ")
        );
    }
    Ok(())
}

fn decode<T: DeserializeOwned>(remote: &Remote, answer: Value) -> Result<T, CliError> {
    serde_json::from_value(answer.clone()).map_err(|e| {
        CliError::failure(format!(
            "forgefleet at {} gave an answer this command does not understand ({e}): {answer}",
            remote.base
        ))
    })
}

/// `--server`: `http://host:port`, optionally with a path prefix; `host:port` alone means `http://host:port`.
fn parse_server(s: &str) -> Result<Url, CliError> {
    let text = s.trim();
    let with_scheme = if text.contains("://") { text.to_string() } else { format!("http://{text}") };
    let bad = |why: &str| CliError::usage(format!("--server {s:?} (or FORGEFLEET_SERVER) is not usable: {why}"));
    let url =
        Url::parse(&with_scheme).map_err(|e| bad(&format!("{e}; expected a URL such as http://127.0.0.1:8080")))?;
    match url.scheme() {
        "http" | "https" => {}
        other => return Err(bad(&format!("the scheme must be http or https, not {other}"))),
    }
    if url.host().is_none() {
        return Err(bad("it names no host"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad("it must not have a query or a fragment"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad("it must not carry credentials; the operator token comes from the configuration"));
    }
    Ok(url)
}

/// The server `[server] listen` describes, as seen from this machine: a wildcard address means loopback.
fn default_server(listen: SocketAddr) -> Url {
    let ip = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    Url::parse(&format!("http://{}", SocketAddr::new(ip, listen.port()))).expect("a socket address is a valid host")
}

/// The innermost cause of an error: the part that says what actually went wrong (`Connection refused`).
fn cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut inner = e;
    while let Some(next) = inner.source() {
        inner = next;
    }
    inner.to_string()
}

fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return "(empty body)".into();
    }
    let mut out: String = text.chars().take(200).collect();
    if out.len() < text.len() {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    fn config(listen: &str, token: Option<&str>) -> Config {
        let mut c = Config::default();
        c.server.listen = listen.parse().unwrap();
        c.api.operator_token = token.map(Secret::new);
        c
    }

    #[test]
    fn the_default_server_is_the_listen_address_with_wildcards_made_loopback() {
        let base = |listen| Remote::new(&config(listen, Some("t")), None).unwrap().base;
        assert_eq!(base("127.0.0.1:8080"), "http://127.0.0.1:8080");
        assert_eq!(base("0.0.0.0:9000"), "http://127.0.0.1:9000");
        assert_eq!(base("[::]:9000"), "http://[::1]:9000");
        assert_eq!(base("[::1]:81"), "http://[::1]:81");
        assert_eq!(base("10.1.2.3:80"), "http://10.1.2.3");
    }

    #[test]
    fn server_flag_overrides_and_is_checked() {
        let c = config("127.0.0.1:8080", Some("t"));
        let remote = |s| Remote::new(&c, Some(s));
        let r = remote("http://fleet.example:8080/").unwrap();
        assert_eq!((r.base.as_str(), r.loopback), ("http://fleet.example:8080", false));
        assert_eq!(remote("localhost:7000").unwrap().base, "http://localhost:7000");
        assert!(remote("localhost:7000").unwrap().loopback);
        assert_eq!(remote("http://10.0.0.1/forgefleet/").unwrap().base, "http://10.0.0.1/forgefleet");
        assert_eq!(remote("https://fleet.example").unwrap().base, "https://fleet.example");
        for bad in ["ftp://x", "http://", "http://h/?q=1", "http://u:p@h"] {
            let e = remote(bad).unwrap_err();
            assert_eq!(e.code, 2, "{bad}: {}", e.message);
            assert!(e.message.contains("--server"), "{}", e.message);
        }
    }

    #[test]
    fn no_operator_token_is_a_usage_error_naming_both_places() {
        for token in [None, Some("  ")] {
            let e = Remote::new(&config("127.0.0.1:8080", token), None).unwrap_err();
            assert_eq!(e.code, 2);
            assert!(e.message.contains("[api] operator_token"), "{}", e.message);
            assert!(e.message.contains("FORGEFLEET_API_OPERATOR_TOKEN"), "{}", e.message);
        }
    }

    #[test]
    fn the_innermost_cause_is_shown_and_bodies_are_shortened() {
        #[derive(Debug, thiserror::Error)]
        #[error("error sending request")]
        struct Outer(#[source] std::io::Error);
        let e = Outer(std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "Connection refused"));
        assert_eq!(cause(&e), "Connection refused");
        assert_eq!(snippet(b"  "), "(empty body)");
        assert_eq!(snippet("x".repeat(300).as_bytes()).chars().count(), 201);
    }
}
