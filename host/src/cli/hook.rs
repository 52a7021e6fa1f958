//! `sandbus hook ...`: register hooks at extension points, set a point's policy, list them,
//! and ask a point about a proposed operation (what a platform does before it acts).

use clap::{Args, Subcommand, ValueEnum};
use sandbus::api::endpoint::Call;
use sandbus::api::{
    ApiError, Empty, HookCallReply, HookCallRequest, HookOutcome, HookPolicyRequest, HookRequest,
    endpoint,
};
use sandbus::bus::{HookPoint, HookPolicy};

use super::connect::{ClientArgs, with_client};
use super::events::event_from_flags;
use super::output::{self, EXIT_FAIL, EXIT_OK, outln, print_json_or, printable};

/// What a failed hook counts as, on the command line.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum PolicyArg {
    /// As an allow.
    FailOpen,
    /// As a deny.
    FailClosed,
}

impl From<PolicyArg> for HookPolicy {
    fn from(p: PolicyArg) -> Self {
        match p {
            PolicyArg::FailOpen => HookPolicy::FailOpen,
            PolicyArg::FailClosed => HookPolicy::FailClosed,
        }
    }
}

/// One hook at one extension point.
#[derive(Args, Debug)]
pub struct HookAt {
    /// The hook's component name (as uploaded).
    name: String,
    /// The extension point, e.g. vm.pre-create.
    #[arg(long)]
    point: String,
    /// Return at once; the result comes as an event.
    #[arg(long)]
    cast: bool,
    #[command(flatten)]
    client: ClientArgs,
}

impl HookAt {
    fn request(self) -> (ClientArgs, HookRequest) {
        let request = HookRequest {
            name: self.name,
            point: self.point,
            cast: self.cast,
        };
        (self.client, request)
    }
}

/// The `hook` subcommands.
#[derive(Subcommand, Debug)]
pub enum HookCommand {
    /// Register a hook (a component of world `hook`) at an extension point.
    Add(HookAt),
    /// Remove a hook from an extension point.
    Rm(HookAt),
    /// List the extension points: policy, deadline, hooks.
    Ls {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Set what a failed hook counts as at a point, and how long a call waits for the hooks
    /// (default fail-closed, 1s).
    Policy {
        /// The extension point.
        point: String,
        /// fail-open: a hook that errs or misses the deadline counts as allow; fail-closed:
        /// as deny.
        #[arg(long, value_enum)]
        on_failure: Option<PolicyArg>,
        /// How long a call waits for the hooks (at most 60s), e.g. 200ms.
        #[arg(long, value_parser = humantime::parse_duration)]
        deadline: Option<std::time::Duration>,
        /// Return at once; the result comes as an event.
        #[arg(long)]
        cast: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Ask an extension point about a proposed operation: every hook there is asked, and
    /// the combined verdict printed. Exit code 0 allowed, 1 denied.
    Call {
        /// The extension point.
        point: String,
        /// The proposed operation's data, JSON.
        #[arg(long, required_unless_present = "file", conflicts_with = "file")]
        data: Option<String>,
        /// Its event type [default: the point's name].
        #[arg(long = "type", conflicts_with = "file")]
        ty: Option<String>,
        /// Its event id [default: random].
        #[arg(long, conflicts_with = "file")]
        id: Option<String>,
        /// Its subject.
        #[arg(long, conflicts_with = "file")]
        subject: Option<String>,
        /// The proposed operation as one CloudEvents JSON object, from this file.
        #[arg(long, value_name = "FILE")]
        file: Option<std::path::PathBuf>,
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// Runs a `hook` subcommand; its exit code.
pub async fn run(command: HookCommand) -> u8 {
    match command {
        HookCommand::Add(at) => {
            let (client, request) = at.request();
            let cast = request.cast;
            change::<endpoint::HookAdd>(&client, request, cast).await
        }
        HookCommand::Rm(at) => {
            let (client, request) = at.request();
            let cast = request.cast;
            change::<endpoint::HookRemove>(&client, request, cast).await
        }
        HookCommand::Policy {
            point,
            on_failure,
            deadline,
            cast,
            client,
        } => {
            let request = HookPolicyRequest {
                point,
                policy: on_failure.map(HookPolicy::from),
                deadline_ms: deadline.map(|d| d.as_millis() as u64),
                cast,
            };
            change::<endpoint::HookPolicy>(&client, request, cast).await
        }
        HookCommand::Ls { client } => list(&client).await,
        HookCommand::Call {
            point,
            data,
            ty,
            id,
            subject,
            file,
            client,
        } => {
            let event = match (file, data) {
                (Some(path), _) => read_event(&path),
                (None, Some(data)) => event_from_flags(
                    ty.as_deref().unwrap_or(&point),
                    &data,
                    id,
                    Some("/sandbus/cli".into()),
                    subject,
                ),
                (None, None) => Err(ApiError::bad_request("give --data JSON or --file FILE")),
            };
            match event {
                Ok(event) => call(&client, point, event).await,
                Err(e) => output::fail(&e, client.json),
            }
        }
    }
}

/// One CloudEvents JSON object from a file.
fn read_event(path: &std::path::Path) -> Result<serde_json::Value, ApiError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ApiError::bad_request(format!("cannot read {}: {e}", path.display())))?;
    serde_json::from_str(&text).map_err(|e| {
        ApiError::bad_request(format!(
            "{} is not one JSON object (a CloudEvent): {e}",
            path.display()
        ))
    })
}

/// `add`, `rm`, `policy`: prints the point as it now is (or, for a cast, that it was
/// accepted).
async fn change<E: Call<Reply = HookPoint>>(
    args: &ClientArgs,
    request: E::Request,
    cast: bool,
) -> u8 {
    with_client(args, |c| async move {
        if cast {
            return c.cast::<E>(&request).await;
        }
        let point = c.call::<E>(&request).await?;
        print_json_or(c.json, &point, print_point);
        Ok(EXIT_OK)
    })
    .await
}

fn print_point(point: &HookPoint) {
    outln!(
        "{:<24} {:<12} {:>6} ms  hooks: {}",
        printable(&point.point),
        point.policy.as_str(),
        point.deadline_ms,
        if point.hooks.is_empty() {
            "-".to_owned()
        } else {
            point.hooks.join(", ")
        }
    );
}

async fn list(args: &ClientArgs) -> u8 {
    with_client(args, |c| async move {
        let points: Vec<HookPoint> = c.call::<endpoint::HookList>(&Empty {}).await?;
        print_json_or(c.json, &points, |points| {
            if points.is_empty() {
                outln!("no extension points; `sandbus hook add NAME --point POINT` makes one");
            }
            for point in points {
                print_point(point);
            }
        });
        Ok(EXIT_OK)
    })
    .await
}

async fn call(args: &ClientArgs, point: String, event: serde_json::Value) -> u8 {
    with_client(args, |c| async move {
        let raw = serde_json::value::to_raw_value(&event)
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        let reply: HookCallReply = c
            .call::<endpoint::HookCall>(&HookCallRequest { point, event: raw })
            .await?;
        print_json_or(c.json, &reply, print_verdict);
        Ok(if reply.allowed { EXIT_OK } else { EXIT_FAIL })
    })
    .await
}

/// Prints a point's combined verdict, its reasons, and each hook's answer.
fn print_verdict(reply: &HookCallReply) {
    outln!(
        "{}: {}",
        printable(&reply.point),
        if reply.allowed { "allowed" } else { "denied" }
    );
    for reason in &reply.reasons {
        outln!("  {}", printable(reason));
    }
    for answer in &reply.hooks {
        let reason = answer.reason.as_deref().map(printable).unwrap_or_default();
        outln!(
            "  {:<20} {:<8} {:>5} ms  {reason}",
            printable(&answer.hook),
            answer.outcome.as_str(),
            answer.elapsed_ms
        );
    }
    if reply.hooks.iter().any(|a| a.outcome != HookOutcome::Allow) && reply.allowed {
        outln!("  (failed hooks counted as allow: the point is fail-open)");
    }
}
