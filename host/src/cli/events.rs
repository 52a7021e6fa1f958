//! `sandbus publish` and `sandbus events`: canonical events straight into the stream (no
//! daemon needed), and out of it through a daemon (stored ones, and with `--follow` new
//! ones as they come).

use std::path::{Path, PathBuf};

use clap::Args;
use clap::builder::TypedValueParser as _;
use serde_json::json;

use sandbus::api::{
    ApiError, EventListRequest, MessagePage, StoredMessage, endpoint, outside_event,
};
use sandbus::bus::{self, DirectPublishStop, OutgoingEvent};
use sandbus::event::{CanonicalEvent, ContentMode};

use super::connect::{ClientArgs, stored_body, with_client};
use super::output::{self, EXIT_OK, outln, print_json, print_json_line, print_json_or, printable};

/// `sandbus publish` arguments.
#[derive(Args, Debug)]
pub struct PublishArgs {
    /// The event type, e.g. vm.started.
    #[arg(required_unless_present = "file")]
    r#type: Option<String>,
    /// The event data, JSON.
    #[arg(long, required_unless_present = "file", conflicts_with = "file")]
    data: Option<String>,
    /// The event id [default: random]. Publishing an id again within the stream's
    /// duplicate window adds nothing.
    #[arg(long, conflicts_with = "file")]
    id: Option<String>,
    /// The event source [default: /sandbus/cli].
    #[arg(long, conflicts_with = "file")]
    source: Option<String>,
    /// The event subject (what it is about).
    #[arg(long, conflicts_with = "file")]
    subject: Option<String>,
    /// Publish every CloudEvent of this JSON Lines file instead. The whole file is checked
    /// first: one bad line and nothing is published. If something fails mid-file, the
    /// command names the line to resume from (--from-line).
    #[arg(long, value_name = "FILE")]
    file: Option<PathBuf>,
    /// With --file: start at this line (1-based), skipping the lines before it.
    #[arg(long, value_name = "LINE", requires = "file", default_value_t = 1)]
    from_line: usize,
    /// How many events may wait for the stream's confirmation at once.
    #[arg(long, value_name = "N", default_value_t = bus::DEFAULT_WINDOW,
          value_parser = clap::value_parser!(u16).range(1..=bus::MAX_WINDOW as i64).map(usize::from))]
    window: usize,
    /// How the event is carried: `structured` (the body is the CloudEvents JSON) or `binary`
    /// (CloudEvents binary mode: the attributes in `ce-*` headers, the data as the body).
    /// Listeners get the same event either way.
    #[arg(long, value_name = "MODE", default_value = "structured",
          value_parser = clap::builder::PossibleValuesParser::new(["structured", "binary"])
              .map(|mode| if mode == "binary" { ContentMode::Binary } else { ContentMode::Structured }))]
    mode: ContentMode,
    /// Send without waiting for the stream's confirmations: faster, but nothing reports
    /// whether an event was stored, was a duplicate, or was lost (a missing stream, say).
    #[arg(long)]
    cast: bool,
    #[command(flatten)]
    client: ClientArgs,
}

/// `sandbus events` arguments.
#[derive(Args, Debug)]
pub struct EventsArgs {
    /// Event type pattern [default: every event].
    #[arg(default_value = ">")]
    pattern: String,
    /// Keep printing new events (only new ones, unless --all).
    #[arg(long)]
    follow: bool,
    /// With --follow, print the stored events first.
    #[arg(long)]
    all: bool,
    #[command(flatten)]
    client: ClientArgs,
}

/// The event `sandbus publish TYPE --data JSON` (or `hook call POINT --data JSON`)
/// describes, checked the way the daemon will check it.
pub fn event_from_flags(
    ty: &str,
    data: &str,
    id: Option<String>,
    source: Option<String>,
    subject: Option<String>,
) -> Result<serde_json::Value, ApiError> {
    let data: serde_json::Value = serde_json::from_str(data).map_err(|e| {
        ApiError::bad_request(format!(
            "--data is not JSON: {e}; quote text as a JSON string, e.g. '\"hello\"'"
        ))
    })?;
    let mut event = json!({
        "specversion": "1.0",
        "id": id.unwrap_or_else(|| hex::encode(rand::random::<[u8; 16]>())),
        "source": source.unwrap_or_else(|| "/sandbus/cli".into()),
        "type": ty,
        "time": humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
        "datacontenttype": "application/json",
        "data": data,
    });
    if let Some(subject) = subject {
        event["subject"] = json!(subject);
    }
    // Check it the way the daemon will, so a bad flag fails before anything is sent.
    CanonicalEvent::from_json(event.to_string().as_bytes())
        .map_err(|e| ApiError::bad_request(format!("the event is not valid: {e}")))?;
    Ok(event)
}

/// Reads a JSON Lines file of events for `publish --file`, with their line numbers, each
/// checked as the daemon checks an event published from outside ([`outside_event`]); every
/// bad line is reported, and one is enough to refuse the file.
fn read_event_file(path: &Path) -> Result<Vec<(usize, CanonicalEvent)>, ApiError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ApiError::bad_request(format!("cannot read {}: {e}", path.display())))?;
    let mut events = Vec::new();
    let mut bad = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match outside_event(line.as_bytes()) {
            Ok(event) => events.push((i + 1, event)),
            Err(e) => bad.push(format!("line {}: {}", i + 1, e.message)),
        }
    }
    if bad.is_empty() {
        Ok(events)
    } else {
        Err(ApiError::bad_request(format!(
            "{}: {} bad line(s), nothing was published:\n  {}",
            path.display(),
            bad.len(),
            bad.join("\n  ")
        )))
    }
}

/// `sandbus publish`: one event from flags, or the lines of a JSON Lines file, in order,
/// straight onto the events stream (no daemon needs to run; see [`bus::DirectPublisher`]).
///
/// Every event is checked first, as the daemon checks an event published from outside: a
/// file with a bad line is refused whole, so nothing is half-published. Then up to
/// `--window` events wait for the stream's acks at once, and each is reported (stored, or
/// already there: a duplicate) as its ack comes, in order.
///
/// When something fails mid-file (the server goes away, an ack does not come within
/// `--reply-timeout`), the command names the first line whose ack did not arrive: every line
/// before it is stored, and some after it may be too. Resuming there (`--from-line`) sends
/// those again, which is safe: an event keeps its id, and the stream keeps one message per
/// id (`Nats-Msg-Id`, the event's source and id) within its duplicate window (2 minutes by
/// default); listeners de-duplicate on event ids past that, as under redelivery.
pub async fn publish(args: PublishArgs) -> u8 {
    let PublishArgs {
        r#type,
        data,
        id,
        source,
        subject,
        file,
        from_line,
        window,
        mode,
        cast,
        client,
    } = args;
    let events = match (&file, r#type, data) {
        (Some(path), _, _) => read_event_file(path).map(|events| {
            events
                .into_iter()
                .filter(|(line, _)| *line >= from_line)
                .collect()
        }),
        (None, Some(ty), Some(data)) => event_from_flags(&ty, &data, id, source, subject)
            .and_then(|e| outside_event(e.to_string().as_bytes()))
            .map(|e| vec![(1, e)]),
        _ => Err(ApiError::bad_request(
            "give TYPE and --data, or --file FILE",
        )),
    };
    let events: Vec<OutgoingEvent> = match events {
        Ok(events) => events
            .iter()
            .map(|(line, event)| OutgoingEvent::new(*line, event, mode))
            .collect(),
        Err(e) => return output::fail(&e, client.json),
    };
    let resume = |stop: DirectPublishStop| {
        let mut message = stop.to_string();
        if let Some(path) = &file {
            message.push_str(&format!(
                "; nothing from line {0} on was confirmed stored: resume with `sandbus publish \
                 --file {1} --from-line {0}` (events already stored are not stored twice \
                 within the stream's duplicate window)",
                stop.line,
                path.display()
            ));
        }
        let mut error = ApiError::from(stop.error);
        error.message = message;
        error
    };
    with_client(&client, |c| async move {
        let publisher = c.direct_publisher();
        if let Some(too_big) = events.iter().find(|e| e.size() > publisher.max_payload()) {
            return Err(ApiError::bad_request(format!(
                "line {}: the event `{}` is about {} bytes; this server takes at most {} bytes \
                 a message (its max_payload): nothing was published",
                too_big.line,
                printable(&too_big.id),
                too_big.size(),
                publisher.max_payload()
            )));
        }
        if cast {
            publisher.send(&events).await.map_err(resume)?;
            print_json_or(c.json, &json!({ "sent": events.len() }), |_| {
                outln!(
                    "sent {} event(s) without waiting for the stream (--cast: not confirmed)",
                    events.len()
                );
            });
            return Ok(EXIT_OK);
        }
        let mut published = 0;
        let mut duplicates = 0;
        publisher
            .publish(&events, window, |_, p| {
                print_json_or(c.json, &p, |p| {
                    if p.duplicate {
                        outln!(
                            "{} was already in {} (seq {}): not added again",
                            p.id,
                            p.stream,
                            p.sequence
                        );
                    } else {
                        outln!("published {} on {} (seq {})", p.id, p.subject, p.sequence);
                    }
                });
                published += 1;
                duplicates += usize::from(p.duplicate);
            })
            .await
            .map_err(resume)?;
        if !c.json && published > 1 {
            outln!("{published} events, {duplicates} duplicates");
        }
        Ok(EXIT_OK)
    })
    .await
}

/// How long a follower's request waits on the daemon for something new.
const FOLLOW_WAIT_MS: u64 = 10_000;

/// `sandbus events [PATTERN] [--follow] [--all]`: prints stored events (all of them, or none
/// with `--follow` alone), then with `--follow` new ones as they arrive. Pages come from a
/// daemon (`event.list`); a follower's next page waits on the daemon for new events.
pub async fn events(args: EventsArgs) -> u8 {
    let EventsArgs {
        pattern,
        follow,
        all,
        client,
    } = args;
    if let Err(why) = bus::validate_event_pattern(&pattern) {
        return output::fail(&ApiError::bad_request(why), client.json);
    }
    with_client(&client, |c| async move {
        let mut after = 0;
        if follow && !all {
            let now: MessagePage = c
                .call::<endpoint::Events>(&EventListRequest {
                    pattern: Some(pattern.clone()),
                    max: Some(0),
                    ..Default::default()
                })
                .await?;
            after = now.last_sequence;
        }
        loop {
            let page = c
                .page::<endpoint::Events>(
                    follow,
                    &EventListRequest {
                        pattern: Some(pattern.clone()),
                        after,
                        max: None,
                        // A long poll, well inside the reply timeout.
                        wait_ms: if follow {
                            FOLLOW_WAIT_MS.min(
                                u64::try_from(c.reply_timeout().as_millis() / 2)
                                    .unwrap_or(u64::MAX),
                            )
                        } else {
                            0
                        },
                    },
                )
                .await?;
            if page.messages.is_empty() && !follow {
                return Ok(EXIT_OK);
            }
            for message in &page.messages {
                after = after.max(message.sequence);
                print_event(message, c.json);
            }
        }
    })
    .await
}

fn print_event(message: &StoredMessage, json: bool) {
    let sequence = message.sequence;
    if let Some(size) = message.too_large {
        if json {
            print_json(&json!({ "sequence": sequence, "too_large": size }));
        } else {
            outln!("{sequence:>6} (an event of {size} bytes, too large to show here)");
        }
        return;
    }
    let payload = stored_body(message);
    if json {
        print_json_line(&payload);
        return;
    }
    match CanonicalEvent::from_json(&payload) {
        Ok(e) => {
            let data = String::from_utf8_lossy(&e.data);
            let mut data = printable(&data);
            if data.len() > 160 {
                let mut cut = 160;
                while !data.is_char_boundary(cut) {
                    cut -= 1;
                }
                data.truncate(cut);
                data.push('…');
            }
            outln!(
                "{sequence:>6} {} {} {} {} {}",
                e.time.as_deref().unwrap_or("-"),
                printable(&e.ty),
                printable(&e.id),
                printable(&e.source),
                data
            );
        }
        Err(err) => outln!("{sequence:>6} (not a valid event: {err})"),
    }
    let _ = std::io::Write::flush(&mut std::io::stdout().lock());
}
