//! Whether this host can give a component every interface it imports, and when it cannot, a
//! refusal that lists **every** import it lacks at once (a person fixes them in one rebuild,
//! not one upload per missing interface) with the usual cause and fix per toolchain: a WASI
//! 0.3 or unversioned build, a guest built against another version of this host's WIT, a
//! device interface outside a script, a standard interface this host does not offer.

use super::component::{InterfaceName, PACKAGE, PACKAGE_VERSION, World, compatible_version};
use super::error::{LoadError, LoadErrorKind};

/// WASI 0.2 packages every world gets (locked down; see `imports::wasi`).
const WASI_PACKAGES: &[&str] = &[
    "wasi:cli",
    "wasi:io",
    "wasi:clocks",
    "wasi:random",
    "wasi:filesystem",
    "wasi:sockets",
];
const WASI_VERSION: &str = "0.2.0";
/// Standard interfaces offered besides WASI 0.2 (vendored in `wit/deps/`): the package, its
/// interfaces provided, and the version provided (`wasi:logging` is also provided
/// unversioned, as wasmCloud's tooling writes it).
const STANDARD: &[(&str, &[&str], &str)] = &[
    ("wasi:logging", &["logging"], "0.1.0-draft"),
    ("wasi:config", &["store"], "0.2.0-draft"),
    (
        "wasi:keyvalue",
        &["store", "atomics", "batch"],
        "0.2.0-draft",
    ),
    ("wasmcloud:messaging", &["types", "consumer"], "0.2.0"),
];
/// The `wasi:http` interfaces a guest may import (present, every request denied; see
/// `imports::http`). `incoming-handler` is something a guest exports, never imports.
const WASI_HTTP_INTERFACES: &[&str] = &["types", "outgoing-handler"];

/// Most import names listed under one reason in a refusal.
const NAMES_PER_REASON: usize = 10;
/// Most reasons a refusal lists.
const MAX_REASONS: usize = 20;

/// One import this host does not provide to the component's world.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RefusedImport<'a> {
    /// The import's name, as the component spells it.
    import: &'a str,
    /// Why it is refused.
    why: String,
    /// The usual cause and its fix, when the import's shape says which toolchain made it.
    fix: Option<String>,
}

/// Checks every import of a component of `world`; refuses with `unknown-import`, naming each
/// one this host does not provide (grouped by reason), what to do about it, and what the
/// world may import.
pub(super) fn check_imports(world: World, imports: &[String]) -> Result<(), LoadError> {
    let refused: Vec<RefusedImport<'_>> = imports
        .iter()
        .filter_map(|import| refuse(world, import))
        .collect();
    if refused.is_empty() {
        return Ok(());
    }
    // Imports refused for the same reason are named together (a JavaScript runtime may
    // lack a dozen interfaces of one package; one line says it). A component can declare
    // millions of imports: at most NAMES_PER_REASON names a reason, then a count.
    let mut groups: Vec<(Vec<&str>, usize, &str, Option<&str>)> = Vec::new();
    let mut index: std::collections::HashMap<(&str, Option<&str>), usize> =
        std::collections::HashMap::new();
    for r in &refused {
        let key = (r.why.as_str(), r.fix.as_deref());
        let at = *index.entry(key).or_insert_with(|| {
            groups.push((Vec::new(), 0, key.0, key.1));
            groups.len() - 1
        });
        let (names, more, _, _) = &mut groups[at];
        if names.len() < NAMES_PER_REASON {
            names.push(r.import);
        } else {
            *more += 1;
        }
    }
    let reasons: Vec<String> = groups
        .iter()
        .take(MAX_REASONS)
        .map(|(names, more, why, fix)| {
            let mut names = names
                .iter()
                .map(|n| format!("`{n}`"))
                .collect::<Vec<_>>()
                .join(", ");
            if *more > 0 {
                names.push_str(&format!(" and {more} more"));
            }
            match fix {
                Some(fix) => format!("{names}: {why} ({fix})"),
                None => format!("{names}: {why}"),
            }
        })
        .collect();
    let mut reasons = reasons.join("; ");
    if groups.len() > MAX_REASONS {
        reasons.push_str(&format!(
            "; and {} more reasons",
            groups.len() - MAX_REASONS
        ));
    }
    Err(LoadError::new(
        LoadErrorKind::UnknownImport,
        format!(
            "the component imports {} this host does not provide to a {world}: {}. A {world} \
             may import {PACKAGE}/{{{}}}@{PACKAGE_VERSION} and WASI 0.2 (cli, io, clocks, \
             random; filesystem, sockets and http are present but empty), \
             wasi:logging/logging, wasi:config/store@0.2.0-draft, \
             wasi:keyvalue/{{store, atomics, batch}}@0.2.0-draft and \
             wasmcloud:messaging/{{types, consumer}}@0.2.0",
            if refused.len() == 1 {
                "1 interface".to_owned()
            } else {
                format!("{} interfaces", refused.len())
            },
            reasons,
            world.importable().join(", ")
        ),
    ))
}

/// Why `import` is refused to a component of `world`, or `None` when it is provided.
fn refuse<'a>(world: World, import: &'a str) -> Option<RefusedImport<'a>> {
    let refused = |why: String, fix: Option<String>| Some(RefusedImport { import, why, fix });
    let Some(name) = InterfaceName::parse(import) else {
        return refused(
            "it is not an interface import".into(),
            Some(
                "import functions through a WIT interface of the world, not at the \
                 component's top level"
                    .into(),
            ),
        );
    };
    if name.package == PACKAGE {
        if !compatible_version(name.version, PACKAGE_VERSION) {
            return refused(
                format!(
                    "it was built against version {} of the WIT",
                    name.version.unwrap_or("(none)")
                ),
                Some(format!(
                    "rebuild against this host's wit/ ({PACKAGE}@{PACKAGE_VERSION}, the `wit/` \
                     folder of this sandbus release)"
                )),
            );
        }
        if !world.importable().contains(&name.interface) {
            let fix = (name.interface == "usb").then(|| {
                "only a script runs against a leased device: build it against the `script` \
                 world"
                    .to_owned()
            });
            return refused(
                format!("no interface `{}` for this role", name.interface),
                fix,
            );
        }
        return None;
    }
    if let Some((package, interfaces, version)) =
        STANDARD.iter().find(|(p, _, _)| *p == name.package)
    {
        let unversioned_ok = *package == "wasi:logging" && name.version.is_none();
        if name.version != Some(*version) && !unversioned_ok {
            return refused(
                format!(
                    "`{package}` is provided at {version}, not {}",
                    name.version.unwrap_or("unversioned")
                ),
                Some(format!(
                    "build against {package}@{version}, vendored in sandbus's wit/deps/"
                )),
            );
        }
        if !interfaces.contains(&name.interface) {
            return refused(
                format!(
                    "of `{package}`, only {} {} provided",
                    interfaces.join(", "),
                    if interfaces.len() == 1 { "is" } else { "are" }
                ),
                None,
            );
        }
        return None;
    }
    let wasi_http = name.package == "wasi:http";
    if WASI_PACKAGES.contains(&name.package) || wasi_http {
        if compatible_version(name.version, WASI_VERSION) {
            if wasi_http && !WASI_HTTP_INTERFACES.contains(&name.interface) {
                return refused(
                    format!(
                        "of `wasi:http`, only {} are provided",
                        WASI_HTTP_INTERFACES.join(" and ")
                    ),
                    None,
                );
            }
            return None;
        }
        return refused(
            format!(
                "only WASI 0.2 is provided, not {}",
                name.version.unwrap_or("an unversioned WASI")
            ),
            Some(
                "build for WASI 0.2: cargo `--target wasm32-wasip2`, componentize-py and \
                 componentize-js at their current releases"
                    .into(),
            ),
        );
    }
    refused(format!("package `{}` is not provided", name.package), None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn imports(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| (*n).to_owned()).collect()
    }

    #[test]
    fn what_a_world_is_given_passes() {
        let ok = imports(&[
            "wasi:cli/environment@0.2.6",
            "sandbus:host/kv@0.1.0",
            "wasi:io/streams@0.2.0",
            // What componentize-js links in for `fetch`.
            "wasi:http/types@0.2.10",
            "wasi:http/outgoing-handler@0.2.10",
            // wasi:logging, as the proposal versions it and as wasmCloud's tooling does not.
            "wasi:logging/logging@0.1.0-draft",
            "wasi:logging/logging",
            "wasi:keyvalue/store@0.2.0-draft",
            "wasi:keyvalue/atomics@0.2.0-draft",
            "wasi:keyvalue/batch@0.2.0-draft",
            "wasi:config/store@0.2.0-draft",
            // What a wasmCloud messaging component imports to send.
            "wasmcloud:messaging/types@0.2.0",
            "wasmcloud:messaging/consumer@0.2.0",
        ]);
        assert!(check_imports(World::Listener, &ok).is_ok());
        assert!(check_imports(World::Script, &imports(&["sandbus:host/usb@0.1.0"])).is_ok());
    }

    #[test]
    fn each_refused_import_is_named_with_its_reason_and_fix() {
        for (import, why, fix) in [
            (
                "wasi:http/incoming-handler@0.2.0",
                "of `wasi:http`, only types and outgoing-handler are provided",
                None,
            ),
            (
                "wasi:http/types@0.3.0-rc-2025-09-16",
                "only WASI 0.2",
                Some("wasm32-wasip2"),
            ),
            (
                "sandbus:host/usb@0.1.0",
                "no interface `usb`",
                Some("`script` world"),
            ),
            (
                "wasi:cli/environment@0.3.0",
                "only WASI 0.2",
                Some("wasm32-wasip2"),
            ),
            (
                "sandbus:host/kv@0.2.0",
                "version 0.2.0",
                Some("rebuild against this host's wit/"),
            ),
            ("log", "not an interface import", Some("WIT interface")),
            (
                "wasi:logging/logging@0.2.0",
                "`wasi:logging` is provided at 0.1.0-draft, not 0.2.0",
                Some("wit/deps/"),
            ),
            (
                "wasi:keyvalue/watcher@0.2.0-draft",
                "of `wasi:keyvalue`, only store, atomics, batch are provided",
                None,
            ),
            (
                "wasi:keyvalue/store",
                "`wasi:keyvalue` is provided at 0.2.0-draft, not unversioned",
                Some("wit/deps/"),
            ),
            (
                "wasi:config/runtime@0.2.0-draft",
                "of `wasi:config`, only store is provided",
                None,
            ),
            (
                "wasi:blobstore/container@0.2.0-draft",
                "package `wasi:blobstore`",
                None,
            ),
            (
                "wasmcloud:messaging/handler@0.2.0",
                "of `wasmcloud:messaging`, only types, consumer are provided",
                None,
            ),
            (
                "wasmcloud:messaging/consumer@0.3.0",
                "`wasmcloud:messaging` is provided at 0.2.0, not 0.3.0",
                Some("wit/deps/"),
            ),
            ("acme:thing/api@1.0.0", "package `acme:thing`", None),
        ] {
            let err = check_imports(World::Listener, &imports(&[import])).unwrap_err();
            assert_eq!(err.kind, LoadErrorKind::UnknownImport);
            let message = err.message;
            assert!(message.contains(&format!("`{import}`")), "{message}");
            assert!(message.contains(why), "{message} should say {why}");
            assert!(message.contains("1 interface this host"), "{message}");
            match fix {
                Some(fix) => assert!(message.contains(fix), "{message} should say {fix}"),
                None => {
                    let reasons = message.split(". A listener").next().unwrap_or_default();
                    assert!(!reasons.contains(" ("), "{message} has no fix to give");
                }
            }
        }
    }

    #[test]
    fn a_component_with_countless_imports_gets_a_refusal_of_bounded_size() {
        let many: Vec<String> = (0..200_000)
            .map(|i| format!("sandbus:host/x{i}@0.1.0"))
            .chain((0..50).map(|i| format!("acme:p{i}/api@1.0.0")))
            .collect();
        let err = check_imports(World::Listener, &many).unwrap_err();
        assert!(err.message.len() < 8192, "{} bytes", err.message.len());
        assert!(
            err.message
                .starts_with("the component imports 200050 interfaces"),
            "{}",
            &err.message[..200]
        );
        assert!(
            err.message.contains("and 200030 more reasons"),
            "{}",
            err.message
        );
    }

    #[test]
    fn every_missing_import_is_listed_at_once_and_alike_ones_together() {
        let err = check_imports(
            World::Listener,
            &imports(&[
                "wasi:cli/environment@0.3.0",
                "wasi:cli/stdout@0.2.0",
                "wasi:blobstore/container@0.2.0-draft",
                "wasi:io/streams@0.3.0",
                "wasi:keyvalue/store@0.2.1",
            ]),
        )
        .unwrap_err();
        let message = err.message;
        assert!(
            message.starts_with(
                "the component imports 4 interfaces this host does not provide to a listener: \
                 `wasi:cli/environment@0.3.0`, `wasi:io/streams@0.3.0`: only WASI 0.2 is \
                 provided, not 0.3.0 (build for WASI 0.2"
            ),
            "{message}"
        );
        assert!(
            message.contains(
                "; `wasi:blobstore/container@0.2.0-draft`: package `wasi:blobstore` is not \
                 provided"
            ),
            "{message}"
        );
        assert!(
            message.contains(
                "; `wasi:keyvalue/store@0.2.1`: `wasi:keyvalue` is provided at 0.2.0-draft"
            ),
            "{message}"
        );
        assert!(!message.contains("wasi:cli/stdout"), "{message}");
        assert!(
            message.ends_with(
                "A listener may import sandbus:host/{types, log, bus, kv, kv-read}@0.1.0 and \
                 WASI 0.2 (cli, io, clocks, random; filesystem, sockets and http are present but \
                 empty), wasi:logging/logging, wasi:config/store@0.2.0-draft, \
                 wasi:keyvalue/{store, atomics, batch}@0.2.0-draft and \
                 wasmcloud:messaging/{types, consumer}@0.2.0"
            ),
            "{message}"
        );
    }
}
