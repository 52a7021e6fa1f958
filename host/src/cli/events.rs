//! `sandbus publish` and `sandbus events`: canonical events into the stream through a
//! daemon, and out of it (stored ones, and with `--follow` new ones as they come).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Args;
use serde_json::json;

use sandbus::api::{
    ApiError, ApiErrorKind, CastAccepted, EventListRequest, MessagePage, PublishRequest,
    StoredMessage, endpoint,
};
use sandbus::bus::{self, PublishedEvent};
use sandbus::event::CanonicalEvent;

use super::connect::{ClientArgs, stored_body, with_client};
use super::output::{
    self, EXIT_OK, outln, print_cast, print_json, print_json_line, print_json_or, printable,
};

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
    /// Publish every CloudEvent of this JSON Lines file instead. A lost reply is retried
    /// (the stream keeps an id once), so a daemon that dies mid-file costs a retry on
    /// another; if no daemon takes an event within --reply-timeout, the command stops
    /// and says which line to resume from.
    #[arg(long, value_name = "FILE")]
    file: Option<PathBuf>,
    /// With --file: start at this line (1-based), skipping the lines before it.
    #[arg(long, value_name = "LINE", requires = "file", default_value_t = 1)]
    from_line: usize,
    /// Return at once; the result comes as an event.
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

/// Reads a JSON Lines file of events for `publish --file`, with their line numbers; every
/// bad line is reported.
fn read_event_file(path: &Path) -> Result<Vec<(usize, serde_json::Value)>, ApiError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ApiError::bad_request(format!("cannot read {}: {e}", path.display())))?;
    let events = sandbus::dev::read_events(&text).map_err(|errors| {
        let lines: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        ApiError::bad_request(format!(
            "{}: {} bad line(s), nothing was published:\n  {}",
            path.display(),
            lines.len(),
            lines.join("\n  ")
        ))
    })?;
    Ok(events
        .into_iter()
        .map(|(line, e)| {
            (
                line,
                serde_json::from_slice(&e.to_json()).unwrap_or_default(),
            )
        })
        .collect())
}

/// How long one try of a publish waits for its reply before it is sent again (to whichever
/// daemon takes it: a dead one no longer can).
const PUBLISH_TRY: Duration = Duration::from_secs(5);

/// `sandbus publish`: one event from flags, or the lines of a JSON Lines file, in order.
///
/// Each event goes until a daemon stored it: a try whose reply is lost (the daemon died, the
/// connection dropped) is sent again, after a short pause, for up to `--reply-timeout` per
/// event. That is safe because an event keeps its id and the stream stores an id once within
/// its duplicate window. When an event still did not go, the command stops and names the line
/// to resume from (`--from-line`).
pub async fn publish(args: PublishArgs) -> u8 {
    let PublishArgs {
        r#type,
        data,
        id,
        source,
        subject,
        file,
        from_line,
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
        (None, Some(ty), Some(data)) => {
            event_from_flags(&ty, &data, id, source, subject).map(|e| vec![(1, e)])
        }
        _ => Err(ApiError::bad_request(
            "give TYPE and --data, or --file FILE",
        )),
    };
    match events {
        Ok(events) => publish_events(&client, events, file.as_deref(), cast).await,
        Err(e) => output::fail(&e, client.json),
    }
}

async fn publish_events(
    args: &ClientArgs,
    events: Vec<(usize, serde_json::Value)>,
    file: Option<&Path>,
    cast: bool,
) -> u8 {
    let resume = |line: usize| match file {
        Some(path) => format!(
            "; nothing from line {line} on was published for sure: resume with `sandbus publish \
             --file {} --from-line {line}` (events already stored are kept once)",
            path.display()
        ),
        None => String::new(),
    };
    with_client(args, |c| async move {
        let patient = c.with_reply_timeout(PUBLISH_TRY.min(c.reply_timeout()));
        let mut published = 0;
        let mut duplicates = 0;
        for (line, event) in events {
            let raw = serde_json::value::to_raw_value(&event)
                .map_err(|e| ApiError::new(ApiErrorKind::Internal, e.to_string()))?;
            let request = PublishRequest { event: raw, cast };
            let started = Instant::now();
            let mut tries = 0u32;
            let reply = loop {
                tries += 1;
                let sent = if cast {
                    patient
                        .cast_accepted::<endpoint::Publish>(&request)
                        .await
                        .map(Published::Accepted)
                } else {
                    patient
                        .call::<endpoint::Publish>(&request)
                        .await
                        .map(Published::Stored)
                };
                match sent {
                    Ok(reply) => break reply,
                    Err(e)
                        if e.kind == ApiErrorKind::Unavailable
                            && started.elapsed() < c.reply_timeout() =>
                    {
                        if !c.json {
                            eprintln!(
                                "line {line}: {}; trying again (try {})",
                                e.message,
                                tries + 1
                            );
                        }
                        tokio::time::sleep(Duration::from_millis(200 * u64::from(tries.min(10))))
                            .await;
                    }
                    Err(e) => {
                        let mut message = format!("line {line}: {}", e.message);
                        if e.kind == ApiErrorKind::Unavailable {
                            message.push_str(&resume(line));
                        }
                        return Err(ApiError::new(e.kind, message));
                    }
                }
            };
            let p = match reply {
                Published::Accepted(accepted) => {
                    print_cast(&accepted, c.json);
                    continue;
                }
                Published::Stored(p) => p,
            };
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
            if p.duplicate {
                duplicates += 1;
            }
        }
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

/// What the daemon answered to one published line.
enum Published {
    /// Taken as a cast: stored later, reported as an event.
    Accepted(CastAccepted),
    /// Stored (or found already stored).
    Stored(PublishedEvent),
}
