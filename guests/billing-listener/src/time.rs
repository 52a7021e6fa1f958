//! RFC 3339 timestamps to and from unix seconds, for the billing listener (the `time` attribute
//! of `vm.started` / `vm.stopped` events, and the `started` / `stopped` fields of the
//! `billing.usage` events it emits). Pure code, unit-tested natively (`cargo test -p
//! billing-listener`); the billing tests in the sandbox tests exercise it through the host.
//!
//! Accepted: `YYYY-MM-DDTHH:MM:SS[.fraction](Z|+HH:MM|-HH:MM)`, with `t`/`z` in lower case and
//! a space instead of `T` also allowed (RFC 3339 §5.6 and its note on the separator). The
//! fraction is dropped (the result is the whole second the instant falls in), a leap second
//! (`:60`) counts as the first second of the next minute.

/// Seconds in a day.
const DAY: i64 = 86_400;

/// Parses an RFC 3339 timestamp into unix seconds (fraction dropped).
///
/// The error says what is wrong and where, for a `reject` reason.
pub fn parse_rfc3339(text: &str) -> Result<i64, String> {
    let err = |what: &str| format!("`{text}` is not an RFC 3339 timestamp: {what}");
    let b = text.as_bytes();
    if b.len() < 19 {
        return Err(err("too short (expected like 2026-11-21T10:00:00Z)"));
    }
    let year = digits(b, 0, 4).ok_or_else(|| err("expected a 4-digit year"))?;
    expect(b, 4, b'-').map_err(|()| err("expected `-` after the year"))?;
    let month = digits(b, 5, 2).ok_or_else(|| err("expected a 2-digit month"))?;
    expect(b, 7, b'-').map_err(|()| err("expected `-` after the month"))?;
    let day = digits(b, 8, 2).ok_or_else(|| err("expected a 2-digit day"))?;
    if !matches!(b[10], b'T' | b't' | b' ') {
        return Err(err("expected `T` between the date and the time"));
    }
    let hour = digits(b, 11, 2).ok_or_else(|| err("expected a 2-digit hour"))?;
    expect(b, 13, b':').map_err(|()| err("expected `:` after the hour"))?;
    let minute = digits(b, 14, 2).ok_or_else(|| err("expected 2-digit minutes"))?;
    expect(b, 16, b':').map_err(|()| err("expected `:` after the minutes"))?;
    let second = digits(b, 17, 2).ok_or_else(|| err("expected 2-digit seconds"))?;

    let mut pos = 19;
    if b.get(pos) == Some(&b'.') {
        pos += 1;
        let start = pos;
        while pos < b.len() && b[pos].is_ascii_digit() {
            pos += 1;
        }
        if pos == start {
            return Err(err("expected digits after the decimal point"));
        }
    }
    let offset = match b.get(pos) {
        Some(b'Z' | b'z') => {
            pos += 1;
            0
        }
        Some(&sign @ (b'+' | b'-')) => {
            let oh = digits(b, pos + 1, 2).ok_or_else(|| err("expected a 2-digit offset hour"))?;
            expect(b, pos + 3, b':').map_err(|()| err("expected `:` in the offset"))?;
            let om = digits(b, pos + 4, 2).ok_or_else(|| err("expected 2-digit offset minutes"))?;
            if oh > 23 || om > 59 {
                return Err(err("the offset is out of range"));
            }
            pos += 6;
            let magnitude = oh * 3600 + om * 60;
            if sign == b'-' { -magnitude } else { magnitude }
        }
        _ => return Err(err("expected `Z` or an offset like `+02:00`")),
    };
    if pos != b.len() {
        return Err(err("unexpected text after the offset"));
    }

    if !(1..=12).contains(&month) {
        return Err(err("the month is out of range"));
    }
    if day < 1 || day > days_in_month(year, month) {
        return Err(err("the day is out of range for the month"));
    }
    if hour > 23 || minute > 59 || second > 60 {
        return Err(err("the time of day is out of range"));
    }
    Ok(days_from_civil(year, month, day) * DAY + hour * 3600 + minute * 60 + second - offset)
}

/// Formats unix seconds as RFC 3339 in UTC, like `2026-11-21T10:00:00Z`.
pub fn format_rfc3339(unix: i64) -> String {
    let days = unix.div_euclid(DAY);
    let secs = unix.rem_euclid(DAY);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// The `len` ASCII digits at `at`, as a number; `None` if any is missing or not a digit.
fn digits(b: &[u8], at: usize, len: usize) -> Option<i64> {
    let slice = b.get(at..at.checked_add(len)?)?;
    slice.iter().try_fold(0i64, |acc, &c| {
        c.is_ascii_digit().then(|| acc * 10 + i64::from(c - b'0'))
    })
}

/// `Ok` if the byte at `at` is `want`.
fn expect(b: &[u8], at: usize, want: u8) -> Result<(), ()> {
    if b.get(at) == Some(&want) {
        Ok(())
    } else {
        Err(())
    }
}

fn is_leap_year(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap_year(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12; // March = 0
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day count since 1970-01-01 (H. Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_utc() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Ok(0));
        assert_eq!(parse_rfc3339("2026-11-21T10:00:00Z"), Ok(1_795_255_200));
        assert_eq!(parse_rfc3339("2000-03-01T00:00:00Z"), Ok(951_868_800));
        assert_eq!(parse_rfc3339("1969-12-31T23:59:59Z"), Ok(-1));
    }

    #[test]
    fn drops_the_fraction() {
        assert_eq!(parse_rfc3339("2026-11-21T10:00:00.999Z"), Ok(1_795_255_200));
        assert_eq!(
            parse_rfc3339("2026-11-21T10:00:00.123456789Z"),
            Ok(1_795_255_200)
        );
        assert_eq!(
            parse_rfc3339("2026-11-21T10:00:00.5+02:00"),
            Ok(1_795_248_000)
        );
    }

    #[test]
    fn applies_offsets() {
        // 10:00 at +02:00 is 08:00 UTC; 10:00 at -05:30 is 15:30 UTC.
        assert_eq!(
            parse_rfc3339("2026-11-21T10:00:00+02:00"),
            Ok(1_795_248_000)
        );
        assert_eq!(
            parse_rfc3339("2026-11-21T10:00:00-05:30"),
            Ok(1_795_255_200 + 5 * 3600 + 1800)
        );
        assert_eq!(
            parse_rfc3339("2026-11-21T10:00:00+00:00"),
            parse_rfc3339("2026-11-21T10:00:00Z")
        );
        assert_eq!(
            parse_rfc3339("2026-11-21T10:00:00-00:00"),
            parse_rfc3339("2026-11-21T10:00:00Z")
        );
    }

    #[test]
    fn accepts_lower_case_and_space() {
        assert_eq!(parse_rfc3339("2026-11-21t10:00:00z"), Ok(1_795_255_200));
        assert_eq!(parse_rfc3339("2026-11-21 10:00:00Z"), Ok(1_795_255_200));
    }

    #[test]
    fn checks_calendar() {
        assert!(parse_rfc3339("2024-02-29T00:00:00Z").is_ok());
        assert!(parse_rfc3339("2000-02-29T00:00:00Z").is_ok());
        assert!(parse_rfc3339("2023-02-29T00:00:00Z").is_err());
        assert!(parse_rfc3339("1900-02-29T00:00:00Z").is_err());
        assert!(parse_rfc3339("2026-04-31T00:00:00Z").is_err());
        assert!(parse_rfc3339("2026-13-01T00:00:00Z").is_err());
        assert!(parse_rfc3339("2026-00-01T00:00:00Z").is_err());
        assert!(parse_rfc3339("2026-01-00T00:00:00Z").is_err());
        assert!(parse_rfc3339("2026-01-01T24:00:00Z").is_err());
        assert!(parse_rfc3339("2026-01-01T00:60:00Z").is_err());
        assert!(parse_rfc3339("2026-01-01T00:00:61Z").is_err());
        assert!(parse_rfc3339("2026-01-01T00:00:00+24:00").is_err());
    }

    #[test]
    fn leap_second_is_the_next_minute() {
        assert_eq!(
            parse_rfc3339("2016-12-31T23:59:60Z"),
            parse_rfc3339("2017-01-01T00:00:00Z")
        );
    }

    #[test]
    fn rejects_malformed_text() {
        for bad in [
            "",
            "2026-11-21",
            "2026-11-21T10:00:00",
            "2026-11-21T10:00Z",
            "2026-11-21T10:00:00.Z",
            "2026-11-21T10:00:00ZZ",
            "2026-11-21T10:00:00+0200",
            "2026-11-21T10:00:00+02",
            "2026-11-21X10:00:00Z",
            "26-11-21T10:00:00Z",
            "+2026-11-21T10:00:00Z",
            "2026-1-21T10:00:00Z0",
            "2026-11-21T10:00:00 Z",
            "2026-11-21T1a:00:00Z",
            "2026-11-21T10:00:00Zé",
            "2026-11-2éT10:00:00Z",
            "２026-11-21T10:00:00Z",
        ] {
            assert!(parse_rfc3339(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn errors_name_the_problem() {
        let e = parse_rfc3339("2026-11-21T10:00:00").unwrap_err();
        assert!(e.contains("2026-11-21T10:00:00"), "{e}");
        assert!(e.contains("offset"), "{e}");
        let e = parse_rfc3339("2026-02-30T10:00:00Z").unwrap_err();
        assert!(e.contains("day"), "{e}");
    }

    #[test]
    fn formats_utc() {
        assert_eq!(format_rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_rfc3339(1_795_255_200), "2026-11-21T10:00:00Z");
        assert_eq!(format_rfc3339(-1), "1969-12-31T23:59:59Z");
        assert_eq!(format_rfc3339(951_868_799), "2000-02-29T23:59:59Z");
    }

    #[test]
    fn format_then_parse_round_trips() {
        // Every ~11.6 days from 1900 to 2200, plus odd seconds of the day.
        let mut t = -2_208_988_800; // 1900-01-01
        while t < 7_258_118_400 {
            let text = format_rfc3339(t);
            assert_eq!(parse_rfc3339(&text), Ok(t), "{text}");
            t += 1_000_003;
        }
    }
}
