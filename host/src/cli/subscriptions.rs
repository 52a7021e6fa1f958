//! `sandbus subscribe`, `unsubscribe` and `status`: which events a listener gets, and how
//! its durable consumer is doing.

use std::time::Duration;

use clap::Args;

use sandbus::api::{NameRequest, StatusReply, StatusRequest, SubscribeRequest, endpoint};
use sandbus::bus::{ListenerStatus, Subscription};

use super::components::name_command;
use super::connect::{ClientArgs, with_client};
use super::output::{EXIT_OK, outln, print_json, print_json_or, printable};

/// `sandbus subscribe` arguments.
#[derive(Args, Debug)]
pub struct SubscribeArgs {
    /// The listener (an uploaded component).
    name: String,
    /// Event type pattern, e.g. 'vm.*' or 'device.>' (repeatable).
    #[arg(long = "events", value_name = "PATTERN", required = true)]
    events: Vec<String>,
    /// Events handled at once (per host; the consumer caps unacked events at this too).
    #[arg(long)]
    max_in_flight: Option<u32>,
    /// Deliveries before an event is dead-lettered.
    #[arg(long)]
    max_deliver: Option<u32>,
    /// Delays between retries, e.g. 1s,5s,30s (the last repeats).
    #[arg(long, value_delimiter = ',', value_parser = humantime::parse_duration)]
    backoff: Option<Vec<Duration>>,
    /// Return at once; the result comes as an event.
    #[arg(long)]
    cast: bool,
    #[command(flatten)]
    client: ClientArgs,
}

/// `sandbus unsubscribe` arguments.
#[derive(Args, Debug)]
pub struct UnsubscribeArgs {
    /// The listener.
    name: String,
    /// Return at once; the result comes as an event.
    #[arg(long)]
    cast: bool,
    #[command(flatten)]
    client: ClientArgs,
}

/// `sandbus status` arguments.
#[derive(Args, Debug)]
pub struct StatusArgs {
    /// The listener; all when absent.
    name: Option<String>,
    #[command(flatten)]
    client: ClientArgs,
}

/// `sandbus subscribe NAME --events P...`
pub async fn subscribe(args: SubscribeArgs) -> u8 {
    let request = SubscribeRequest {
        name: args.name,
        events: args.events,
        max_in_flight: args.max_in_flight,
        max_deliver: args.max_deliver,
        backoff_ms: args
            .backoff
            .map(|b| b.iter().map(|d| d.as_millis() as u64).collect()),
        cast: args.cast,
    };
    with_client(&args.client, |c| async move {
        if request.cast {
            return c.cast::<endpoint::Subscribe>(&request).await;
        }
        let s: Subscription = c.call::<endpoint::Subscribe>(&request).await?;
        print_json_or(c.json, &s, |s| {
            outln!(
                "subscribed {} to {} (max in flight {}, max deliver {}, backoff {})",
                s.listener,
                s.events.join(", "),
                s.max_in_flight,
                s.max_deliver,
                backoff_text(&s.backoff)
            );
        });
        Ok(EXIT_OK)
    })
    .await
}

fn backoff_text(backoff: &[Duration]) -> String {
    backoff
        .iter()
        .map(|d| humantime::format_duration(*d).to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// `sandbus unsubscribe NAME`
pub async fn unsubscribe(args: UnsubscribeArgs) -> u8 {
    let request = NameRequest {
        name: args.name,
        cast: args.cast,
    };
    name_command::<endpoint::Unsubscribe>(&args.client, request, |request, _| {
        outln!("unsubscribed {}", request.name);
        Ok(())
    })
    .await
}

/// `sandbus status [NAME]`
pub async fn status(args: StatusArgs) -> u8 {
    let StatusArgs { name, client } = args;
    with_client(&client, |c| async move {
        let one = name.is_some();
        let request = StatusRequest { name };
        let all: Vec<ListenerStatus> = match c.call::<endpoint::Status>(&request).await? {
            StatusReply::One(status) => vec![*status],
            StatusReply::All(all) => all,
        };
        if c.json {
            if one {
                print_json(&all[0]);
            } else {
                print_json(&all);
            }
            return Ok(EXIT_OK);
        }
        if all.is_empty() {
            outln!("no subscriptions; `sandbus subscribe NAME --events PATTERN` makes one");
        }
        for s in &all {
            print_status(s);
        }
        Ok(EXIT_OK)
    })
    .await
}

fn print_status(s: &ListenerStatus) {
    outln!("{}", s.subscription.listener);
    outln!("  events:        {}", s.subscription.events.join(", "));
    if let (true, Some(idle)) = (s.idle, &s.subscription.idle) {
        outln!(
            "  idle since:    {} (no consumer; its next event makes it again from seq {})",
            idle.since,
            idle.after_sequence.saturating_add(1)
        );
    }
    outln!("  pending:       {}", s.pending);
    outln!("  in flight:     {}", s.in_flight);
    outln!("  redelivered:   {}", s.redelivered);
    outln!("  dead-lettered: {}", s.dead_lettered);
    match &s.last_error {
        Some(e) => outln!(
            "  last error:    {} on {} (event {}, seq {}): {}",
            e.at,
            e.host,
            e.event_id.as_deref().unwrap_or("?"),
            e.sequence,
            printable(&e.reason)
        ),
        None => outln!("  last error:    none"),
    }
    if let Some(t) = &s.last_throttled {
        let over = if t.window_ms == 0 {
            "when it started".to_owned()
        } else {
            format!("in {:.1} s", t.window_ms as f64 / 1000.0)
        };
        outln!(
            "  throttled:     {} on {}: {} calls held back {over} ({} publishes waited {} ms in \
             all, {} refused); publish-rate={}/s, publish-budget={}",
            t.at,
            t.host,
            t.calls,
            t.waits,
            t.waited_ms,
            t.refused,
            t.publish_rate,
            t.publish_budget
        );
        outln!("                 {}", printable(&t.hint));
    }
}
