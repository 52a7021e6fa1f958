//! The NATS service protocol ("micro" v1, NATS ADR-32) that makes the control API
//! discoverable: `$SRV.PING`, `$SRV.INFO` and `$SRV.STATS` answered for the service, and one
//! queue-group subscription per endpoint whose requests carry their own counters.
//!
//! Why not async-nats's `service` module: its STATS reply leaves out the service's
//! `metadata` (the protocol's schema has it, and `nats micro` shows it), it can only give
//! every endpoint `data` from one callback that knows nothing of the endpoint's own
//! counters, and it answers discovery to whatever reply subject a request names, with the
//! daemon's rights. Here a discovery request is answered only to a reply inbox (as control
//! requests are), STATS carries `metadata`, and each endpoint's `data` holds what the
//! protocol has no field for: requests refused because the role was busy, and requests
//! dropped because their reply subject was not an inbox.
//!
//! Counting follows the protocol: `num_requests` counts every request answered (errors
//! included), `num_errors` those answered with a service error, `processing_time` the
//! nanoseconds from receipt to the reply, and `last_error` is `"<code>:<description>"` of the
//! latest error (empty when none).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use async_nats::{HeaderMap, Message, Subscriber};
use bytes::Bytes;
use futures::StreamExt as _;
use serde::Serialize;

use crate::subject::is_reply_inbox;

/// The queue group every endpoint joins, as the protocol names it: one daemon answers each
/// request.
const QUEUE_GROUP: &str = "q";

/// Header of an error reply: its description.
pub const SERVICE_ERROR: &str = "Nats-Service-Error";
/// Header of an error reply: its code.
pub const SERVICE_ERROR_CODE: &str = "Nats-Service-Error-Code";

/// What the service says of itself in every discovery reply.
#[derive(Debug, Clone)]
pub struct ServiceInfo {
    /// The service's name (`$SRV.PING.<name>` reaches every instance).
    pub name: &'static str,
    /// Its version (semver).
    pub version: &'static str,
    /// One line on what it does.
    pub description: &'static str,
    /// Strings about this instance (for sandbus, its host id).
    pub metadata: BTreeMap<String, String>,
}

/// One endpoint to serve.
#[derive(Debug, Clone)]
pub struct EndpointSpec {
    /// Its name in discovery (`[A-Za-z0-9_-]+`).
    pub name: String,
    /// The subject it answers on.
    pub subject: String,
    /// Strings about the endpoint (for sandbus, its role).
    pub metadata: BTreeMap<String, String>,
}

/// An endpoint's counters, as STATS reports them.
#[derive(Debug, Default)]
struct Counters {
    requests: u64,
    errors: u64,
    processing: Duration,
    last_error: String,
    busy: u64,
    dropped: u64,
}

/// One served endpoint: what it is, and its counters.
#[derive(Debug)]
struct Endpoint {
    spec: EndpointSpec,
    counters: Mutex<Counters>,
}

impl Endpoint {
    fn counters(&self) -> std::sync::MutexGuard<'_, Counters> {
        self.counters.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The service, registered: its discovery task runs until [`MicroService::stop`] (or drop).
#[derive(Debug)]
pub struct MicroService {
    discovery: tokio::task::JoinHandle<()>,
}

/// The requests of one endpoint, as they arrive.
pub struct EndpointRequests {
    endpoint: Arc<Endpoint>,
    client: async_nats::Client,
    subscriber: Subscriber,
}

impl EndpointRequests {
    /// The next request, or `None` once the subscription has ended.
    pub async fn next(&mut self) -> Option<Request> {
        let message = self.subscriber.next().await?;
        Some(Request {
            message,
            endpoint: self.endpoint.clone(),
            client: self.client.clone(),
            received: Instant::now(),
        })
    }

    /// The requests as a stream (each endpoint's subscription, unsubscribed when dropped).
    pub fn into_stream(self) -> impl futures::Stream<Item = Request> + Send + 'static {
        futures::stream::unfold(self, |mut requests| async move {
            let request = requests.next().await?;
            Some((request, requests))
        })
    }
}

/// One request to an endpoint. Answer it with [`Request::respond`] or
/// [`Request::respond_error`]; both count it in the endpoint's STATS.
#[derive(Debug)]
pub struct Request {
    /// The message as received.
    pub message: Message,
    endpoint: Arc<Endpoint>,
    client: async_nats::Client,
    received: Instant,
}

impl Request {
    /// Whether its reply subject is a reply inbox (the only kind the service answers).
    pub fn replies_to_an_inbox(&self) -> bool {
        self.message
            .reply
            .as_ref()
            .is_some_and(|reply| is_reply_inbox(reply.as_str()))
    }

    /// Counts it as dropped unanswered (its reply subject is not an inbox).
    pub fn count_dropped(&self) {
        self.endpoint.counters().dropped += 1;
    }

    /// Answers with `body`.
    pub async fn respond(&self, body: Bytes) -> Result<(), async_nats::PublishError> {
        let sent = match &self.message.reply {
            Some(reply) => self.client.publish(reply.clone(), body).await,
            None => Ok(()),
        };
        self.count(None, false);
        sent
    }

    /// Answers with a service error: `description` and `code` in the protocol's headers,
    /// `headers` added, an empty body. `busy` marks a refusal because the role's concurrent
    /// requests were all taken (counted in the endpoint's `data`).
    pub async fn respond_error(
        &self,
        description: &str,
        code: usize,
        mut headers: HeaderMap,
        busy: bool,
    ) -> Result<(), async_nats::PublishError> {
        headers.insert(SERVICE_ERROR, description);
        headers.insert(SERVICE_ERROR_CODE, code.to_string().as_str());
        let sent = match &self.message.reply {
            Some(reply) => {
                self.client
                    .publish_with_headers(reply.clone(), headers, Bytes::new())
                    .await
            }
            None => Ok(()),
        };
        self.count(Some(format!("{code}:{description}")), busy);
        sent
    }

    fn count(&self, error: Option<String>, busy: bool) {
        let mut counters = self.endpoint.counters();
        counters.requests += 1;
        counters.processing += self.received.elapsed();
        if let Some(error) = error {
            counters.errors += 1;
            counters.last_error = error;
        }
        if busy {
            counters.busy += 1;
        }
    }
}

/// The three discovery verbs.
#[derive(Debug, Clone, Copy)]
enum Verb {
    Ping,
    Info,
    Stats,
}

impl Verb {
    fn token(self) -> &'static str {
        match self {
            Verb::Ping => "PING",
            Verb::Info => "INFO",
            Verb::Stats => "STATS",
        }
    }
}

impl MicroService {
    /// Subscribes every endpoint (queue group `q`) and the discovery subjects
    /// (`$SRV.<VERB>`, `$SRV.<VERB>.<name>`, `$SRV.<VERB>.<name>.<id>`), and starts answering
    /// discovery. Returns the service and each endpoint's requests, in `endpoints`' order.
    pub async fn start(
        client: &async_nats::Client,
        info: ServiceInfo,
        endpoints: Vec<EndpointSpec>,
    ) -> Result<(Self, Vec<EndpointRequests>), async_nats::SubscribeError> {
        let id = nuid::next().to_string();
        let mut served = Vec::with_capacity(endpoints.len());
        let mut requests = Vec::with_capacity(endpoints.len());
        for spec in endpoints {
            let subscriber = client
                .queue_subscribe(spec.subject.clone(), QUEUE_GROUP.to_owned())
                .await?;
            let endpoint = Arc::new(Endpoint {
                spec,
                counters: Mutex::default(),
            });
            served.push(endpoint.clone());
            requests.push(EndpointRequests {
                endpoint,
                client: client.clone(),
                subscriber,
            });
        }
        let mut verbs = Vec::new();
        for verb in [Verb::Ping, Verb::Info, Verb::Stats] {
            let base = format!("$SRV.{}", verb.token());
            for subject in [
                base.clone(),
                format!("{base}.{}", info.name),
                format!("{base}.{}.{id}", info.name),
            ] {
                let subscriber = client.subscribe(subject).await?;
                verbs.push(subscriber.map(move |m| (verb, m)).boxed());
            }
        }
        let discovery = Discovery {
            info,
            id,
            started: humantime::format_rfc3339_nanos(SystemTime::now()).to_string(),
            endpoints: served,
        };
        let client = client.clone();
        let discovery = tokio::spawn(async move {
            let mut verbs = futures::stream::select_all(verbs);
            while let Some((verb, message)) = verbs.next().await {
                let Some(reply) = message.reply.filter(|reply| is_reply_inbox(reply.as_str()))
                else {
                    continue;
                };
                let body = match verb {
                    Verb::Ping => discovery.ping(),
                    Verb::Info => discovery.info(),
                    Verb::Stats => discovery.stats(),
                };
                match body {
                    Ok(body) => {
                        if let Err(e) = client.publish(reply, body.into()).await {
                            tracing::debug!(error = %e, "could not answer a discovery request");
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "could not write a discovery reply"),
                }
            }
        });
        Ok((Self { discovery }, requests))
    }

    /// Stops answering discovery (the endpoints' subscriptions end when their
    /// [`EndpointRequests`] are dropped).
    pub fn stop(self) {
        self.discovery.abort();
    }
}

impl Drop for MicroService {
    fn drop(&mut self) {
        self.discovery.abort();
    }
}

/// What the discovery task answers from.
struct Discovery {
    info: ServiceInfo,
    id: String,
    started: String,
    endpoints: Vec<Arc<Endpoint>>,
}

#[derive(Serialize)]
struct Identity<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    name: &'a str,
    id: &'a str,
    version: &'a str,
    metadata: &'a BTreeMap<String, String>,
}

#[derive(Serialize)]
struct EndpointInfo<'a> {
    name: &'a str,
    subject: &'a str,
    queue_group: &'static str,
    metadata: &'a BTreeMap<String, String>,
}

#[derive(Serialize)]
struct EndpointStats<'a> {
    name: &'a str,
    subject: &'a str,
    queue_group: &'static str,
    num_requests: u64,
    num_errors: u64,
    last_error: String,
    processing_time: u64,
    average_processing_time: u64,
    data: EndpointData,
}

/// What an endpoint's STATS `data` holds: counts the protocol has no field for.
#[derive(Serialize)]
struct EndpointData {
    /// Requests refused at once because the role's concurrent requests were all taken
    /// (also in `num_errors`).
    busy: u64,
    /// Requests dropped unanswered: their reply subject was not a reply inbox.
    dropped: u64,
}

impl Discovery {
    fn identity(&self, kind: &'static str) -> Identity<'_> {
        Identity {
            kind,
            name: self.info.name,
            id: &self.id,
            version: self.info.version,
            metadata: &self.info.metadata,
        }
    }

    fn ping(&self) -> serde_json::Result<Vec<u8>> {
        serde_json::to_vec(&self.identity("io.nats.micro.v1.ping_response"))
    }

    fn info(&self) -> serde_json::Result<Vec<u8>> {
        #[derive(Serialize)]
        struct Info<'a> {
            #[serde(flatten)]
            identity: Identity<'a>,
            description: &'static str,
            endpoints: Vec<EndpointInfo<'a>>,
        }
        serde_json::to_vec(&Info {
            identity: self.identity("io.nats.micro.v1.info_response"),
            description: self.info.description,
            endpoints: self
                .endpoints
                .iter()
                .map(|e| EndpointInfo {
                    name: &e.spec.name,
                    subject: &e.spec.subject,
                    queue_group: QUEUE_GROUP,
                    metadata: &e.spec.metadata,
                })
                .collect(),
        })
    }

    fn stats(&self) -> serde_json::Result<Vec<u8>> {
        #[derive(Serialize)]
        struct Stats<'a> {
            #[serde(flatten)]
            identity: Identity<'a>,
            started: &'a str,
            endpoints: Vec<EndpointStats<'a>>,
        }
        let nanos = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        serde_json::to_vec(&Stats {
            identity: self.identity("io.nats.micro.v1.stats_response"),
            started: &self.started,
            endpoints: self
                .endpoints
                .iter()
                .map(|e| {
                    let c = e.counters();
                    let average = match u32::try_from(c.requests) {
                        Ok(0) => Duration::ZERO,
                        Ok(n) => c.processing / n,
                        Err(_) => Duration::from_nanos(nanos(c.processing) / c.requests),
                    };
                    EndpointStats {
                        name: &e.spec.name,
                        subject: &e.spec.subject,
                        queue_group: QUEUE_GROUP,
                        num_requests: c.requests,
                        num_errors: c.errors,
                        last_error: c.last_error.clone(),
                        processing_time: nanos(c.processing),
                        average_processing_time: nanos(average),
                        data: EndpointData {
                            busy: c.busy,
                            dropped: c.dropped,
                        },
                    }
                })
                .collect(),
        })
    }
}
