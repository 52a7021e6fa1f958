//! The header → canonical event mapping of binary mode, and how a message's mode is told.

use super::*;

/// The required attributes of a binary-mode `vm.started`, as a publisher would send them.
const REQUIRED: [(&str, &str); 4] = [
    ("ce-specversion", "1.0"),
    ("ce-id", "e-1"),
    ("ce-source", "/crm"),
    ("ce-type", "vm.started"),
];

fn with(extra: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
    REQUIRED.iter().chain(extra).copied().collect()
}

fn without(attribute: &str) -> Vec<(&'static str, &'static str)> {
    REQUIRED
        .iter()
        .filter(|(name, _)| *name != attribute)
        .copied()
        .collect()
}

#[test]
fn every_attribute_header_becomes_its_attribute_and_the_body_its_data() {
    let headers = with(&[
        ("ce-subject", "vm-7"),
        ("ce-time", "2026-11-21T10:00:00Z"),
        ("ce-dataschema", "https://example.com/vm.json"),
        ("ce-sandbusdepth", "2"),
        ("content-type", "application/json"),
    ]);
    let event = CanonicalEvent::from_message(&headers, br#"{"tenant":"acme"}"#).unwrap();
    assert_eq!(
        event,
        CanonicalEvent {
            id: "e-1".into(),
            source: "/crm".into(),
            ty: "vm.started".into(),
            subject: Some("vm-7".into()),
            time: Some("2026-11-21T10:00:00Z".into()),
            datacontenttype: Some("application/json".into()),
            data: br#"{"tenant":"acme"}"#.to_vec(),
            depth: 2,
        }
    );
}

#[test]
fn a_binary_event_is_the_same_canonical_event_as_its_structured_form() {
    let structured = br#"{"specversion":"1.0","id":"e-1","source":"/crm","type":"vm.started","subject":"vm-7","datacontenttype":"application/json","data":{"tenant":"acme","cpus":4}}"#;
    let from_json = CanonicalEvent::from_json(structured).unwrap();
    let headers = with(&[("ce-subject", "vm-7"), ("content-type", "application/json")]);
    let from_headers =
        CanonicalEvent::from_message(&headers, br#"{"tenant":"acme","cpus":4}"#).unwrap();
    assert_eq!(from_headers, from_json);
}

#[test]
fn header_names_are_matched_in_any_case() {
    let headers = [
        ("CE-SpecVersion", "1.0"),
        ("Ce-Id", "e-1"),
        ("CE-SOURCE", "/crm"),
        ("ce-Type", "vm.started"),
        ("Content-Type", "text/plain"),
    ];
    let event = CanonicalEvent::from_message(&headers, b"hello").unwrap();
    assert_eq!(
        (event.id.as_str(), event.ty.as_str()),
        ("e-1", "vm.started")
    );
    assert_eq!(event.datacontenttype.as_deref(), Some("text/plain"));
    assert_eq!(event.data, b"hello");
}

#[test]
fn extensions_are_accepted_and_not_handed_on_like_in_the_structured_form() {
    let plain = CanonicalEvent::from_message(&REQUIRED, b"").unwrap();
    let extended = CanonicalEvent::from_message(
        &with(&[("ce-traceparent", "00-abc-def-01"), ("ce-tenant", "acme")]),
        b"",
    )
    .unwrap();
    assert_eq!(extended, plain);
}

#[test]
fn data_of_any_other_content_type_is_the_body_byte_for_byte() {
    let bytes: Vec<u8> = (0u8..=255).collect();
    let headers = with(&[("content-type", "application/octet-stream")]);
    let event = CanonicalEvent::from_message(&headers, &bytes).unwrap();
    assert_eq!(event.data, bytes);
    // Its structured form carries it as data_base64, and reads back the same.
    let json = event.to_json();
    assert!(String::from_utf8_lossy(&json).contains("data_base64"));
    assert_eq!(CanonicalEvent::from_json(&json).unwrap(), event);
}

#[test]
fn a_json_content_type_needs_a_json_body() {
    let headers = with(&[("content-type", "application/cloudevent-data+json")]);
    let err = CanonicalEvent::from_message(&headers, b"{not json").unwrap_err();
    assert!(
        matches!(err, EventError::Invalid { name: "data", .. }),
        "{err}"
    );
    assert!(err.to_string().contains("not JSON"), "{err}");
    assert!(
        CanonicalEvent::from_message(&headers, b"").is_ok(),
        "no data"
    );
}

#[test]
fn the_content_type_may_come_as_ce_datacontenttype_but_not_contradicted() {
    let event =
        CanonicalEvent::from_message(&with(&[("ce-datacontenttype", "text/plain")]), b"hello")
            .unwrap();
    assert_eq!(event.datacontenttype.as_deref(), Some("text/plain"));
    let agreeing = with(&[
        ("ce-datacontenttype", "text/plain"),
        ("content-type", "TEXT/PLAIN"),
    ]);
    assert!(CanonicalEvent::from_message(&agreeing, b"hello").is_ok());
    let contradicting = with(&[
        ("ce-datacontenttype", "text/plain"),
        ("content-type", "application/json"),
    ]);
    let err = CanonicalEvent::from_message(&contradicting, b"1").unwrap_err();
    assert!(
        matches!(
            err,
            EventError::Invalid {
                name: "datacontenttype",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn a_missing_required_attribute_is_the_structured_forms_error() {
    for (header, attribute) in [
        ("ce-id", "id"),
        ("ce-source", "source"),
        ("ce-type", "type"),
        ("ce-specversion", "specversion"),
    ] {
        let err = CanonicalEvent::from_message(&without(header), b"").unwrap_err();
        assert_eq!(err, EventError::Missing(attribute), "without {header}");
    }
    let empty_id: Vec<_> = without("ce-id")
        .into_iter()
        .chain([("ce-id", "")])
        .collect();
    assert_eq!(
        CanonicalEvent::from_message(&empty_id, b"").unwrap_err(),
        EventError::Missing("id")
    );
}

#[test]
fn attribute_values_are_checked_as_in_the_structured_form() {
    let cases: [(&str, &str, &str); 5] = [
        ("ce-specversion", "0.3", "specversion must be"),
        ("ce-type", "vm..started", "`type`"),
        ("ce-time", "yesterday", "`time`"),
        ("ce-sandbusdepth", "-1", DEPTH_ATTRIBUTE),
        ("ce-id", "a%0Ab", "control character"),
    ];
    for (header, value, needle) in cases {
        let headers: Vec<_> = without(header)
            .into_iter()
            .chain([(header, value)])
            .collect();
        let err = CanonicalEvent::from_message(&headers, b"")
            .unwrap_err()
            .to_string();
        assert!(err.contains(needle), "{header}: {value}: {err:?}");
    }
}

#[test]
fn values_are_percent_decoded_and_may_be_double_quoted() {
    let headers = [
        ("ce-specversion", "\"1.0\""),
        ("ce-id", "Euro%20%E2%82%AC%20%f0%9f%98%80"),
        ("ce-source", "\"/a \\\"quoted\\\" source\""),
        ("ce-type", "vm.started"),
    ];
    let event = CanonicalEvent::from_message(&headers, b"").unwrap();
    assert_eq!(event.id, "Euro € 😀");
    assert_eq!(event.source, "/a \"quoted\" source");
}

#[test]
fn unreadable_headers_are_named() {
    let cases: [(&[(&str, &str)], &str); 4] = [
        (&[("ce-id", "%C0%A0")], "not UTF-8"),
        (&[("ce-subject", "\"open")], "not closed"),
        (
            &[("ce-subject", "a"), ("CE-Subject", "b")],
            "more than once",
        ),
        (
            &[
                ("content-type", "text/plain"),
                ("Content-Type", "text/html"),
            ],
            "more than once",
        ),
    ];
    for (extra, needle) in cases {
        let headers: Vec<_> = without("ce-id")
            .into_iter()
            .chain([("ce-id", "e-1")])
            .filter(|(name, _)| !extra.iter().any(|(n, _)| n == name))
            .chain(extra.iter().copied())
            .collect();
        let err = CanonicalEvent::from_message(&headers, b"").unwrap_err();
        assert!(matches!(err, EventError::Header { .. }), "{err}");
        assert!(err.to_string().contains(needle), "{extra:?}: {err}");
    }
}

#[test]
fn the_mode_is_told_by_content_type_then_by_ce_headers() {
    assert_eq!(ContentMode::of(&[]), ContentMode::Structured);
    assert_eq!(
        ContentMode::of(&[("Nats-Msg-Id", "5:/crme-1")]),
        ContentMode::Structured,
        "sandbus's own publishes: a JSON body with only a message id"
    );
    assert_eq!(ContentMode::of(&REQUIRED), ContentMode::Binary);
    assert_eq!(ContentMode::of(&[("ce-id", "x")]), ContentMode::Binary);
    let marked: Vec<_> = with(&[(
        "Content-Type",
        "Application/CloudEvents+JSON; charset=utf-8",
    )]);
    assert_eq!(ContentMode::of(&marked), ContentMode::Structured);
    // Structured, so the body is read: the ce-* headers are not.
    let body = br#"{"specversion":"1.0","id":"body","source":"/s","type":"a.b"}"#;
    assert_eq!(
        CanonicalEvent::from_message(&marked, body).unwrap().id,
        "body"
    );
}

#[test]
fn an_event_written_in_binary_mode_reads_back_the_same() {
    let event = CanonicalEvent {
        id: "e 1/€".into(),
        source: "/crm \"eu\"".into(),
        ty: "vm.started".into(),
        subject: Some("100%".into()),
        time: Some("2026-11-21T10:00:00.5+02:00".into()),
        datacontenttype: Some("application/json; charset=utf-8".into()),
        data: br#"{"tenant":"acme"}"#.to_vec(),
        depth: 3,
    };
    let headers = event.binary_headers();
    for (name, value) in &headers {
        assert!(
            value.bytes().all(|b| b.is_ascii_graphic() || b == b' '),
            "{name}: {value:?} is printable ASCII"
        );
    }
    let id = headers.iter().find(|(n, _)| *n == "ce-id").unwrap();
    assert_eq!(id.1, "e%201/%E2%82%AC");
    let borrowed: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
    assert_eq!(ContentMode::of(&borrowed), ContentMode::Binary);
    assert_eq!(
        CanonicalEvent::from_message(&borrowed, &event.data).unwrap(),
        event
    );
}

#[test]
fn an_event_about_events_keeps_its_content_type_out_of_content_type() {
    let event = CanonicalEvent {
        id: "1".into(),
        source: "/s".into(),
        ty: "a.b".into(),
        subject: None,
        time: None,
        datacontenttype: Some("application/cloudevents+json".into()),
        data: br#"{"inner":true}"#.to_vec(),
        depth: 0,
    };
    let headers = event.binary_headers();
    assert!(!headers.iter().any(|(n, _)| *n == CONTENT_TYPE_HEADER));
    let borrowed: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
    assert_eq!(
        CanonicalEvent::from_message(&borrowed, &event.data).unwrap(),
        event
    );
}

#[test]
fn thousands_of_ce_headers_are_refused_at_the_attribute_limit() {
    let names: Vec<String> = (0..5000).map(|i| format!("ce-x{i}")).collect();
    let headers: Vec<(&str, &str)> = REQUIRED
        .iter()
        .copied()
        .chain(names.iter().map(|n| (n.as_str(), "v")))
        .collect();
    let err = CanonicalEvent::from_message(&headers, b"").unwrap_err();
    assert!(matches!(err, EventError::Header { .. }), "{err}");
    assert!(
        err.to_string()
            .contains(&format!("at most {MAX_ATTRIBUTES}")),
        "{err}"
    );
    // Up to the limit, extensions are fine.
    let fits: Vec<(&str, &str)> = REQUIRED
        .iter()
        .copied()
        .chain(
            names
                .iter()
                .take(MAX_ATTRIBUTES - REQUIRED.len())
                .map(|n| (n.as_str(), "v")),
        )
        .collect();
    assert!(CanonicalEvent::from_message(&fits, b"").is_ok());
}
