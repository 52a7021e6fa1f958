//! How a client command reaches sandbus: its flags, the connection (settings from
//! [`super::nats_settings`]), the control API's calls, and [`with_client`], which runs a command's body and turns its error into output
//! and an exit code.
//!
//! A client reaches sandbus through the control API (component bytes are staged through it
//! too), and publishes canonical events straight onto the events stream
//! ([`Client::direct_publisher`]); the NATS permissions of its role are all it needs.

use std::time::Duration;

use clap::Args;

use sandbus::api::endpoint::Call;
use sandbus::api::{ApiError, ApiErrorKind, CastAccepted, MessagePage, StoredMessage};
use sandbus::bus::{self, ApiClient};

use super::nats_settings::{NatsArgs, SelectedContext};
use super::output::{self, EXIT_OK};

/// What every client command takes.
#[derive(Args, Debug, Clone)]
pub struct ClientArgs {
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// How long to wait for the daemon's reply.
    #[arg(long = "reply-timeout", value_name = "DURATION", default_value = "60s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Last: the help heading of the NATS flags holds for what follows.
    #[command(flatten)]
    pub nats: NatsArgs,
}

/// A connected client of the control API, and how its command prints.
pub struct Client {
    api: ApiClient,
    /// Print JSON rather than text (`--json`).
    pub json: bool,
}

impl Client {
    async fn connect(args: &ClientArgs) -> Result<Self, ApiError> {
        let options = args
            .nats
            .settings(SelectedContext::Follow)
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        // Options that cannot work (a malformed server list, half of user/password) are the
        // caller's mistake, not the bus being down: a usage error, before connecting.
        options
            .validate()
            .map_err(|e| ApiError::bad_request(e.message))?;
        let (nats, refusals) = bus::connect_client(&options)
            .await
            .map_err(|e| ApiError::new(ApiErrorKind::Unavailable, e.message))?;
        Ok(Self {
            api: ApiClient::new(nats, refusals, args.timeout),
            json: args.json,
        })
    }

    /// Calls the endpoint `E` on whichever daemon answers; the request and the reply are the
    /// types the endpoint table gives it.
    pub async fn call<E: Call>(&self, request: &E::Request) -> Result<E::Reply, ApiError> {
        self.api.call_endpoint::<E>(request).await
    }

    /// Calls the per-host endpoint `E` on one host's daemon (the one that has the run or the
    /// device).
    pub async fn call_host<E: Call>(
        &self,
        host: &str,
        request: &E::Request,
    ) -> Result<E::Reply, ApiError> {
        self.api.call_host_endpoint::<E>(host, request).await
    }

    /// Sends a request to `E` as a cast (the daemon answers at once, the result comes later
    /// as an event), prints that it was accepted, and ends the command.
    pub async fn cast<E: Call>(&self, request: &E::Request) -> Result<u8, ApiError> {
        let accepted = self.cast_accepted::<E>(request).await?;
        output::print_cast(&accepted, self.json);
        Ok(EXIT_OK)
    }

    /// Sends a request to `E` as a cast and gives back the daemon's acceptance, for a command
    /// that sends several.
    pub async fn cast_accepted<E: Call>(
        &self,
        request: &E::Request,
    ) -> Result<CastAccepted, ApiError> {
        self.api.cast_endpoint::<E>(request).await
    }

    /// Asks `E` for a page of stored messages. While `following`, a daemon that is busy (or
    /// a reply lost) is asked again a moment later rather than ending the command.
    pub async fn page<E: Call<Reply = MessagePage>>(
        &self,
        following: bool,
        request: &E::Request,
    ) -> Result<MessagePage, ApiError> {
        loop {
            match self.call::<E>(request).await {
                Err(e) if following && e.kind == ApiErrorKind::Unavailable => {
                    tracing::debug!(error = %e.message, "asking again");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                result => return result,
            }
        }
    }

    /// How long a call waits for its reply (`--reply-timeout`).
    pub fn reply_timeout(&self) -> Duration {
        self.api.timeout()
    }

    /// Events straight onto the events stream over this client's connection (no daemon in
    /// the path), each ack awaited at most `--reply-timeout`.
    pub fn direct_publisher(&self) -> bus::DirectPublisher {
        self.api.direct_publisher(self.api.timeout())
    }

    /// The largest message the server takes, in bytes.
    pub fn max_payload(&self) -> usize {
        self.api.max_payload()
    }
}

/// Connects and runs a client command's body; an error (connecting, or from the body) is
/// printed and becomes the command's exit code.
pub async fn with_client<F, Fut>(args: &ClientArgs, body: F) -> u8
where
    F: FnOnce(Client) -> Fut,
    Fut: Future<Output = Result<u8, ApiError>>,
{
    let json = args.json;
    let result = match Client::connect(args).await {
        Ok(client) => body(client).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(code) => code,
        Err(e) => output::fail(&e, json),
    }
}

/// The body of a stored message (an event, a run's log line or report), as stored.
pub fn stored_body(message: &StoredMessage) -> Vec<u8> {
    use base64::Engine as _;
    match (&message.json, &message.base64) {
        (Some(json), _) => json.get().as_bytes().to_vec(),
        (None, Some(b64)) => base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap_or_default(),
        (None, None) => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct ClientCommand {
        #[command(flatten)]
        client: ClientArgs,
    }

    #[test]
    fn a_client_command_takes_the_nats_flags_json_and_a_reply_timeout() {
        let parsed = ClientCommand::try_parse_from([
            "sandbus",
            "--nats",
            "nats://bus:4222",
            "--json",
            "--reply-timeout",
            "5s",
        ])
        .unwrap();
        assert_eq!(parsed.client.nats.url.as_deref(), Some("nats://bus:4222"));
        assert!(parsed.client.json);
        assert_eq!(parsed.client.timeout, Duration::from_secs(5));
    }
}
