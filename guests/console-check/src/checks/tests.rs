//! The console check against a fake FTDI adapter with a scripted board behind it.

use sandbus_usb::fakes::{FakeBotDisk, FakeFtdi, args_with, leased};
use sandbus_usb::script::{StepOutcome, Verdict};

use super::*;

/// A board as the lab's simulator behaves: banner, `login: `; an empty line before logging
/// in prints `login: ` again; after the user name `$ ` (only `root` may log in); after each
/// command its answer on a line, then `$ `.
fn board(answer: &'static str) -> FakeFtdi {
    let mut logged_in = false;
    let mut fake = FakeFtdi::new()
        .with_bytes_per_read(7)
        .with_board(move |line| {
            if !logged_in && line.is_empty() {
                return "login: ".to_string();
            }
            if !logged_in {
                if line != "root" {
                    return "Login incorrect\r\nlogin: ".to_string();
                }
                logged_in = true;
                return "$ ".to_string();
            }
            format!("{answer}\r\n$ ")
        });
    fake.board_prints("sandbus board simulator 1.0\r\nlogin: ");
    fake
}

/// Logging in as root and running `uname -a`, with `changes`.
fn args(changes: &[(&str, &str)]) -> Vec<(String, String)> {
    let base = [
        ("user", "root"),
        ("command", "uname -a"),
        ("expect", "Linux"),
        ("timeout-ms", "200"),
    ];
    args_with(&base, changes)
}

fn check(fake: &mut FakeFtdi, pairs: &[(String, String)]) -> RunReport {
    run(pairs, || Ok(leased(fake)))
}

#[test]
fn logging_in_and_running_a_command_passes_every_step() {
    let mut fake = board("Linux sandbus 6.1.0 x86_64");
    let report = check(&mut fake, &args(&[]));
    assert_eq!(report.verdict, Verdict::Pass, "{report:#?}");
    let names: Vec<&str> = report.steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "configure-line",
            "wait-for-login",
            "log-in",
            "run-command",
            "check-answer"
        ]
    );
    assert_eq!(fake.written(), b"root\nuname -a\n");
    assert_eq!(fake.baud(), Some(115_384), "115200 as the chip makes it");
    assert_eq!(fake.resets(), 0, "what the board printed before is kept");
    assert!(
        report.summary.contains("\"Linux sandbus 6.1.0 x86_64\""),
        "{}",
        report.summary
    );
}

#[test]
fn a_login_prompt_printed_before_the_run_and_lost_is_brought_back_with_an_empty_line() {
    let mut fake = FakeFtdi::new().with_board(|line| match line {
        "" => "login: ".to_string(),
        "root" => "$ ".to_string(),
        _ => "Linux\r\n$ ".to_string(),
    });
    let report = check(&mut fake, &args(&[("timeout-ms", "3000")]));
    assert_eq!(report.verdict, Verdict::Pass, "{report:#?}");
    let detail = report.steps[1].detail.as_deref().unwrap();
    assert!(detail.contains("after 1 empty line"), "{detail}");
    assert_eq!(fake.written(), b"\nroot\nuname -a\n");
}

#[test]
fn an_answer_without_the_expected_text_fails_the_last_step() {
    let mut fake = board("Darwin");
    let report = check(&mut fake, &args(&[]));
    assert_eq!(report.verdict, Verdict::Fail);
    assert_eq!(report.steps[4].outcome, StepOutcome::Failed);
    assert!(
        report
            .summary
            .contains("\"Darwin\" does not contain \"Linux\""),
        "{}",
        report.summary
    );
}

#[test]
fn a_board_that_never_prompts_fails_with_what_it_printed() {
    let mut fake = FakeFtdi::new();
    fake.board_prints("U-Boot 2024.01\r\n=> ");
    let report = check(&mut fake, &args(&[]));
    assert_eq!(report.steps[1].outcome, StepOutcome::Failed);
    assert!(
        report.summary.contains("\"login:\" did not arrive"),
        "{}",
        report.summary
    );
    assert!(report.summary.contains("U-Boot"), "{}", report.summary);
}

#[test]
fn a_refused_login_fails_the_log_in_step() {
    let report = check(&mut board("Linux"), &args(&[("user", "guest")]));
    assert_eq!(report.steps[2].outcome, StepOutcome::Failed);
    assert!(
        report.summary.contains("Login incorrect"),
        "{}",
        report.summary
    );
}

#[test]
fn the_baud_rate_is_set_as_asked() {
    let mut fake = board("Linux");
    let report = check(&mut fake, &args(&[("baud", "9600")]));
    assert_eq!(report.verdict, Verdict::Pass, "{report:#?}");
    assert_eq!(fake.baud(), Some(9600));
    let report = check(&mut board("Linux"), &args(&[("baud", "10")]));
    assert!(
        report.summary.contains("cannot run at 10 baud"),
        "{}",
        report.summary
    );
}

#[test]
fn a_device_that_is_not_an_ftdi_adapter_fails_at_the_first_step() {
    let mut disk = FakeBotDisk::new(1);
    let report = run(&args(&[]), || Ok(leased(&mut disk)));
    assert_eq!(report.steps[0].outcome, StepOutcome::Failed);
    assert!(
        report.summary.contains("not an FTDI adapter"),
        "{}",
        report.summary
    );
}

#[test]
fn bad_arguments_end_the_run_before_the_device_is_touched() {
    let report = run::<&mut FakeFtdi>(&args(&[("speed", "fast")]), || unreachable!("not opened"));
    assert_eq!(report.verdict, Verdict::Error);
    assert!(report.steps.is_empty());
}

#[test]
fn the_answer_is_what_follows_the_echoed_command_up_to_the_prompt() {
    assert_eq!(
        answer_of("uname -a\r\nLinux box\r\n$ ", "uname -a"),
        "Linux box"
    );
    assert_eq!(answer_of("Linux box\r\n$ ", "uname -a"), "Linux box");
    assert_eq!(
        answer_of("$ uname\r\nLinux\r\nx86\r\n$ ", "uname"),
        "Linux\nx86"
    );
}
