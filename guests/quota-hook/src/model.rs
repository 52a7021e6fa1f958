//! The quota hook's pure logic: reading the tenant a proposal names, the keys it reads, the
//! stored numbers, and the decision with its sentence. No host calls here, so it is
//! unit-tested natively (`cargo test -p quota-hook`).
//!
//! What the hook reads (every number is decimal text, in seconds):
//!
//! | space                        | key                      | value                                 | when absent            |
//! |------------------------------|--------------------------|---------------------------------------|------------------------|
//! | its own (`kv`)               | `limit/<tenant>`         | the tenant's quota                    | `limit/default`        |
//! | its own (`kv`)               | `limit/default`          | the quota of every other tenant       | no quota: allow        |
//! | its own (`kv`)               | `config/usage-namespace` | the component whose totals are read   | `billing`              |
//! | that component's (`kv-read`) | `total/<tenant>`         | vm seconds billed so far (the billing listener's total) | 0 |
//!
//! A tenant literally named `default` shares its key with the default quota.

use serde_json::Value;

/// Own kv key of the quota of tenants without a `limit/<tenant>` of their own.
pub const DEFAULT_LIMIT_KEY: &str = "limit/default";
/// Own kv key naming the component whose space holds the usage totals.
pub const USAGE_NAMESPACE_KEY: &str = "config/usage-namespace";
/// The usage space when [`USAGE_NAMESPACE_KEY`] is not set: the billing listener's usual name.
pub const DEFAULT_USAGE_NAMESPACE: &str = "billing";
/// Longest tenant accepted, in bytes (as in the billing listener, which writes the totals).
pub const MAX_NAME_LEN: usize = 200;
/// How many characters of a bad stored value an error quotes.
const QUOTED_CHARS: usize = 64;

/// What the hook says, with the sentence that explains it (logged; shown to the asker on a
/// deny).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The operation may go ahead.
    Allow(String),
    /// The operation must not go ahead.
    Deny(String),
}

/// Reads the tenant a proposal of type `ty` names: its data must be a JSON object whose
/// `tenant` is a valid name ([`validate_name`]). The error says what is wrong; the hook denies
/// such a proposal rather than failing, so a malformed request never slips through a
/// fail-open extension point.
pub fn parse_proposal(ty: &str, data: &[u8]) -> Result<String, String> {
    let wrong = |what: String| format!("the proposed {ty} {what}");
    if data.is_empty() {
        return Err(wrong(
            "has no data; it must be a JSON object naming a `tenant`".into(),
        ));
    }
    let value: Value = serde_json::from_slice(data)
        .map_err(|e| wrong(format!("does not have valid JSON data: {e}")))?;
    let tenant = match value.get("tenant") {
        Some(Value::String(tenant)) => tenant,
        Some(other) => {
            return Err(wrong(format!(
                "has a `tenant` that is not a string: {other}"
            )));
        }
        None if value.is_object() => return Err(wrong("names no `tenant` in its data".into())),
        None => return Err(wrong("does not have a JSON object as its data".into())),
    };
    validate_name("tenant", tenant).map_err(|e| wrong(format!("has an invalid {e}")))?;
    Ok(tenant.clone())
}

/// Checks that a name can be one part of a key: non-empty, at most [`MAX_NAME_LEN`] bytes,
/// only `[A-Za-z0-9._=-]` and no empty `.`-separated part. The error names the field.
pub fn validate_name(field: &str, value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err(format!("`{field}`: it is empty"));
    }
    if value.len() > MAX_NAME_LEN {
        return Err(format!(
            "`{field}`: it is {} bytes long; at most {MAX_NAME_LEN} are allowed",
            value.len()
        ));
    }
    if let Some(c) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '=' | '-')))
    {
        return Err(format!(
            "`{field}` `{value}`: it has the character {c:?}; only [A-Za-z0-9._=-] are allowed"
        ));
    }
    if value.starts_with('.') || value.ends_with('.') || value.contains("..") {
        return Err(format!(
            "`{field}` `{value}`: it must not start or end with `.` or contain `..`"
        ));
    }
    Ok(())
}

/// Own kv key of a tenant's quota.
pub fn limit_key(tenant: &str) -> String {
    format!("limit/{tenant}")
}

/// Key of a tenant's total in the usage space (the billing listener's `total/<tenant>`).
pub fn usage_key(tenant: &str) -> String {
    format!("total/{tenant}")
}

/// Reads a stored number of seconds: decimal digits only, fitting 64 bits. `what` names where
/// the value was read, for the error.
pub fn parse_seconds(what: &str, value: &[u8]) -> Result<u64, String> {
    std::str::from_utf8(value)
        .ok()
        .filter(|text| !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|text| text.parse().ok())
        .ok_or_else(|| {
            format!(
                "{what} holds {:?}, not a non-negative decimal integer of seconds (64 bits)",
                quoted(value)
            )
        })
}

/// Reads the stored name of the usage space: non-empty UTF-8.
pub fn parse_namespace(value: &[u8]) -> Result<String, String> {
    match std::str::from_utf8(value) {
        Ok(name) if !name.is_empty() => Ok(name.to_string()),
        _ => Err(format!(
            "kv `{USAGE_NAMESPACE_KEY}` holds {:?}, not a component name",
            quoted(value)
        )),
    }
}

/// The error when reading the usage space is not granted, saying how to fix it.
pub fn not_granted(namespace: &str, key: &str) -> String {
    format!(
        "cannot read `{key}` from the space of `{namespace}`: not granted; upload the hook with \
         --grant kv-read={namespace} (or set `{USAGE_NAMESPACE_KEY}` to the billing listener's \
         name)"
    )
}

/// The verdict for a tenant without any quota.
pub fn no_quota(tenant: &str) -> Verdict {
    Verdict::Allow(format!("tenant {tenant} has no quota"))
}

/// The verdict for a tenant that has used `usage` seconds of a `limit`: denied once the usage
/// reaches the limit (a limit of 0 denies every operation).
pub fn decide(tenant: &str, usage: u64, limit: u64) -> Verdict {
    let sentence = format!("tenant {tenant} has used {usage} s of its {limit} s quota");
    if usage >= limit {
        Verdict::Deny(sentence)
    } else {
        Verdict::Allow(sentence)
    }
}

/// The start of a stored value, as text, for an error message.
fn quoted(value: &[u8]) -> String {
    String::from_utf8_lossy(value)
        .chars()
        .take(QUOTED_CHARS)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TY: &str = "vm.create";

    #[test]
    fn reads_the_tenant_and_ignores_other_fields() {
        let data = br#"{"tenant":"acme","image":"debian","cpus":4}"#;
        assert_eq!(parse_proposal(TY, data), Ok("acme".to_string()));
        assert_eq!(
            parse_proposal(TY, br#"{"tenant":"Acme_Corp.eu-1=x"}"#),
            Ok("Acme_Corp.eu-1=x".to_string())
        );
    }

    #[test]
    fn malformed_proposals_say_what_is_wrong() {
        let cases: [(&[u8], &str); 12] = [
            (b"", "has no data"),
            (b"not json", "valid JSON"),
            (&[0xff, 0xfe], "valid JSON"),
            (b"[1,2]", "JSON object"),
            (b"\"acme\"", "JSON object"),
            (br#"{"instance":"vm-1"}"#, "names no `tenant`"),
            (br#"{"tenant":42}"#, "not a string: 42"),
            (br#"{"tenant":null}"#, "not a string: null"),
            (br#"{"tenant":""}"#, "`tenant`: it is empty"),
            (br#"{"tenant":"ac/me"}"#, "'/'"),
            (br#"{"tenant":"a..b"}"#, "`..`"),
            (br#"{"tenant":"acme."}"#, "`.`"),
        ];
        for (data, want) in cases {
            let e = parse_proposal(TY, data).unwrap_err();
            assert!(e.starts_with("the proposed vm.create "), "{e}");
            assert!(e.contains(want), "{:?}: {e}", String::from_utf8_lossy(data));
        }
    }

    #[test]
    fn names_follow_the_key_rules() {
        assert_eq!(validate_name("tenant", &"a".repeat(MAX_NAME_LEN)), Ok(()));
        let e = validate_name("tenant", &"a".repeat(MAX_NAME_LEN + 1)).unwrap_err();
        assert!(e.contains("201 bytes"), "{e}");
        for bad in ["acmé", "a b", "a*", ".a", "a:b"] {
            assert!(validate_name("tenant", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn keys() {
        assert_eq!(limit_key("acme"), "limit/acme");
        assert_eq!(limit_key("default"), DEFAULT_LIMIT_KEY);
        assert_eq!(usage_key("acme"), "total/acme");
        // The longest tenant still makes a key well under the host's 512-byte limit.
        assert!(limit_key(&"a".repeat(MAX_NAME_LEN)).len() <= 512);
    }

    #[test]
    fn stored_seconds() {
        assert_eq!(parse_seconds("kv `limit/acme`", b"3600"), Ok(3600));
        assert_eq!(parse_seconds("kv `limit/acme`", b"0"), Ok(0));
        assert_eq!(parse_seconds("k", b"007"), Ok(7));
        assert_eq!(
            parse_seconds("k", u64::MAX.to_string().as_bytes()),
            Ok(u64::MAX)
        );
        for bad in [
            &b""[..],
            b"-5",
            b"+5",
            b"1.5",
            b"1e3",
            b" 60",
            b"60\n",
            b"an hour",
            b"18446744073709551616",
            &[0xff],
        ] {
            let e = parse_seconds("kv `limit/acme`", bad).unwrap_err();
            assert!(e.starts_with("kv `limit/acme` holds "), "{e}");
            assert!(e.contains("not a non-negative decimal integer"), "{e}");
        }
        let e = parse_seconds("k", "9".repeat(1000).as_bytes()).unwrap_err();
        assert!(e.len() < 200, "the value is quoted in full: {e}");
    }

    #[test]
    fn usage_namespace() {
        assert_eq!(parse_namespace(b"billing-eu"), Ok("billing-eu".to_string()));
        for bad in [&b""[..], &[0xff]] {
            let e = parse_namespace(bad).unwrap_err();
            assert!(e.contains(USAGE_NAMESPACE_KEY), "{e}");
        }
    }

    #[test]
    fn not_granted_says_which_grant_is_missing() {
        let e = not_granted("billing", "total/acme");
        assert!(e.contains("--grant kv-read=billing"), "{e}");
        assert!(e.contains("`total/acme`"), "{e}");
    }

    #[test]
    fn denies_once_the_usage_reaches_the_limit() {
        assert_eq!(
            decide("acme", 4000, 3600),
            Verdict::Deny("tenant acme has used 4000 s of its 3600 s quota".to_string())
        );
        assert_eq!(
            decide("acme", 3600, 3600),
            Verdict::Deny("tenant acme has used 3600 s of its 3600 s quota".to_string())
        );
        assert_eq!(
            decide("acme", 3599, 3600),
            Verdict::Allow("tenant acme has used 3599 s of its 3600 s quota".to_string())
        );
        assert!(matches!(decide("acme", 0, 0), Verdict::Deny(_)));
        assert!(matches!(decide("acme", 0, 1), Verdict::Allow(_)));
        assert_eq!(
            no_quota("acme"),
            Verdict::Allow("tenant acme has no quota".to_string())
        );
    }
}
