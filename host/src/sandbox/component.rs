//! Reading a component before compiling it: what it is, what it imports and exports, which
//! role (world) it plays, and whether this host can give it what it asks for.
//!
//! These checks run on the raw bytes with `wasmparser`, before any compilation, so a wrong
//! upload is refused quickly and with an error that names the problem: not wasm, a core
//! module, the wrong world, a missing export, an import this host does not provide.

use std::fmt;

use sha2::{Digest as _, Sha256};
use wasmparser::{Parser, Payload};

use super::error::{LoadError, LoadErrorKind};

/// The WIT package every guest builds against.
pub const PACKAGE: &str = "sandbus:host";
/// The package version this host implements; components built against any `0.1.x` load.
pub const PACKAGE_VERSION: &str = "0.1.0";

/// wasmCloud's messaging handler: a component exporting it (any `0.2.x`) is a listener, its
/// events handed over as broker messages.
pub const MESSAGING_HANDLER: &str = "wasmcloud:messaging/handler@0.2.0";
/// The package and version of [`MESSAGING_HANDLER`].
const MESSAGING_PACKAGE: &str = "wasmcloud:messaging";
const MESSAGING_VERSION: &str = "0.2.0";

/// The interface a listener's events arrive through: what its world's `listener` means for
/// this component. Everything else about a listener (subscriptions, retries, dead letters,
/// limits, metering) is the same for both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ListenerHandler {
    /// `sandbus:host/handler`: handed the canonical event, answers with an outcome.
    Sandbus,
    /// `wasmcloud:messaging/handler`: handed a broker message (the event's subject, the event
    /// as CloudEvents JSON); an `Err` is a failed delivery with that reason.
    WasmcloudMessaging,
}

/// The role a component plays, named after its WIT world.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum World {
    /// Exports `sandbus:host/handler`: handed canonical events.
    Listener,
    /// Exports `sandbus:host/runner`: run on demand, ends in a report.
    Script,
    /// Exports `sandbus:host/check`: asked to allow or deny proposed operations at the
    /// extension points it is registered at.
    Hook,
}

impl World {
    /// The world's name in the WIT.
    pub fn as_str(self) -> &'static str {
        match self {
            World::Listener => "listener",
            World::Script => "script",
            World::Hook => "hook",
        }
    }

    /// The interface the world exports.
    pub fn export_interface(self) -> &'static str {
        match self {
            World::Listener => "handler",
            World::Script => "runner",
            World::Hook => "check",
        }
    }

    fn from_export(name: &InterfaceName<'_>) -> Option<World> {
        if ListenerHandler::from_export(name) == Some(ListenerHandler::WasmcloudMessaging) {
            return Some(World::Listener);
        }
        if name.package != PACKAGE || !compatible_version(name.version, PACKAGE_VERSION) {
            return None;
        }
        match name.interface {
            "handler" => Some(World::Listener),
            "runner" => Some(World::Script),
            "check" => Some(World::Hook),
            _ => None,
        }
    }

    /// Interfaces of our package a component of this world may import.
    pub(super) fn importable(self) -> &'static [&'static str] {
        match self {
            World::Listener | World::Hook => &["types", "log", "bus", "kv", "kv-read"],
            // Only a script runs against a leased device.
            World::Script => &["types", "log", "bus", "kv", "kv-read", "usb"],
        }
    }
}

impl ListenerHandler {
    /// The interface's name, as a component exports it.
    pub fn interface(self) -> String {
        match self {
            ListenerHandler::Sandbus => format!("{PACKAGE}/handler@{PACKAGE_VERSION}"),
            ListenerHandler::WasmcloudMessaging => MESSAGING_HANDLER.to_owned(),
        }
    }

    fn from_export(name: &InterfaceName<'_>) -> Option<ListenerHandler> {
        if name.interface != "handler" {
            return None;
        }
        if name.package == PACKAGE && compatible_version(name.version, PACKAGE_VERSION) {
            Some(ListenerHandler::Sandbus)
        } else if name.package == MESSAGING_PACKAGE
            && compatible_version(name.version, MESSAGING_VERSION)
        {
            Some(ListenerHandler::WasmcloudMessaging)
        } else {
            None
        }
    }
}

impl fmt::Display for World {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A parsed `namespace:package/interface@version` name.
pub(super) struct InterfaceName<'a> {
    /// `namespace:package`.
    pub(super) package: &'a str,
    /// The interface within the package.
    pub(super) interface: &'a str,
    /// The package version, if the name has one.
    pub(super) version: Option<&'a str>,
}

impl<'a> InterfaceName<'a> {
    /// `None` for a name that is not `namespace:package/interface[@version]`.
    pub(super) fn parse(name: &'a str) -> Option<Self> {
        let (path, version) = match name.split_once('@') {
            Some((p, v)) => (p, Some(v)),
            None => (name, None),
        };
        let (package, interface) = path.split_once('/')?;
        Some(Self {
            package,
            interface,
            version,
        })
    }
}

/// Semver compatibility as the component model links it: same major, and for 0.x the same
/// minor. A missing version never matches a versioned package.
pub(super) fn compatible_version(found: Option<&str>, ours: &str) -> bool {
    let Some(found) = found else { return false };
    let parts = |v: &str| -> Option<(u64, u64)> {
        let mut it = v.split(['.', '-', '+']);
        Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
    };
    match (parts(found), parts(ours)) {
        (Some((fmaj, fmin)), Some((omaj, omin))) => fmaj == omaj && (omaj != 0 || fmin == omin),
        _ => false,
    }
}

/// The outside of a component: what it imports and exports, by name.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ComponentShape {
    /// Top-level import names, in order.
    pub imports: Vec<String>,
    /// Top-level export names, in order.
    pub exports: Vec<String>,
}

impl ComponentShape {
    /// Reads the top-level imports and exports of a component.
    ///
    /// Fails with `not-wasm` for bytes that are not WebAssembly, `core-module` for a core
    /// module, and `invalid` for a truncated or malformed component.
    pub fn read(bytes: &[u8]) -> Result<Self, LoadError> {
        if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
            return Err(LoadError::new(
                LoadErrorKind::NotWasm,
                "not a WebAssembly file (it does not start with the `\\0asm` magic); \
                 build a component with `cargo build --target wasm32-wasip2` (Rust), \
                 `componentize-py componentize` (Python) or `jco componentize` (JavaScript); \
                 docs/guest-guide.md has the steps",
            ));
        }
        if Parser::is_core_wasm(bytes) {
            return Err(LoadError::new(
                LoadErrorKind::CoreModule,
                "this is a core WebAssembly module, not a component (cargo's \
                 `wasm32-wasip1` and `wasm32-unknown-unknown` targets make those); build it \
                 with `cargo build --target wasm32-wasip2` (which makes a component) or wrap \
                 it with `wasm-tools component new`",
            ));
        }
        if !Parser::is_component(bytes) {
            return Err(LoadError::new(
                LoadErrorKind::Invalid,
                "unsupported WebAssembly version or layer; expected a component",
            ));
        }
        let mut shape = ComponentShape {
            imports: Vec::new(),
            exports: Vec::new(),
        };
        // Nested modules and components have their own sections; only depth 0 counts.
        let mut depth = 0usize;
        for payload in Parser::new(0).parse_all(bytes) {
            let payload = payload.map_err(|e| {
                LoadError::new(LoadErrorKind::Invalid, format!("malformed component: {e}"))
            })?;
            match payload {
                Payload::ModuleSection { .. } | Payload::ComponentSection { .. } => depth += 1,
                Payload::End(_) => depth = depth.saturating_sub(1),
                Payload::ComponentImportSection(reader) if depth == 0 => {
                    for import in reader {
                        let import = import.map_err(|e| {
                            LoadError::new(LoadErrorKind::Invalid, format!("malformed import: {e}"))
                        })?;
                        shape.imports.push(import.name.name.to_owned());
                    }
                }
                Payload::ComponentExportSection(reader) if depth == 0 => {
                    for export in reader {
                        let export = export.map_err(|e| {
                            LoadError::new(LoadErrorKind::Invalid, format!("malformed export: {e}"))
                        })?;
                        shape.exports.push(export.name.name.to_owned());
                    }
                }
                _ => {}
            }
        }
        Ok(shape)
    }

    /// Validates the whole component, function bodies included, as a compile would before
    /// generating code (with every feature wasmparser knows enabled, so it never refuses
    /// what the engine accepts). Far cheaper than compiling: the control API runs it on an
    /// upload, so a component that would never compile anywhere is refused at once instead
    /// of failing on every host afterwards. Fails with `invalid`, naming the problem.
    pub fn validate(bytes: &[u8]) -> Result<(), LoadError> {
        wasmparser::Validator::new_with_features(wasmparser::WasmFeatures::all())
            .validate_all(bytes)
            .map(|_| ())
            .map_err(|e| {
                LoadError::new(
                    LoadErrorKind::Invalid,
                    format!("the component is not valid WebAssembly: {e}"),
                )
            })
    }

    /// The role the component plays, from what it exports.
    pub fn world(&self) -> Result<World, LoadError> {
        let worlds: Vec<World> = self
            .exports
            .iter()
            .filter_map(|e| InterfaceName::parse(e).and_then(|n| World::from_export(&n)))
            .collect();
        match worlds.as_slice() {
            [world] => Ok(*world),
            [] => Err(LoadError::new(
                LoadErrorKind::MissingExport,
                format!(
                    "the component exports none of {PACKAGE}/handler@{PACKAGE_VERSION} (a \
                     listener), {PACKAGE}/runner@{PACKAGE_VERSION} (a script), \
                     {PACKAGE}/check@{PACKAGE_VERSION} (a hook) or {MESSAGING_HANDLER} (a \
                     messaging listener); it exports [{}]. Build it against the `listener`, \
                     `script` or `hook` world in wit/, or export wasmCloud's messaging \
                     handler (wit/deps/wasmcloud-messaging)",
                    self.exports.join(", ")
                ),
            )),
            _ => Err(LoadError::new(
                LoadErrorKind::WrongWorld,
                format!(
                    "the component exports the interfaces of more than one role or handler \
                     ([{}]); build one component per role, with one handler",
                    self.exports.join(", ")
                ),
            )),
        }
    }

    /// The interface a listener's events arrive through, when the component exports one.
    pub fn listener_handler(&self) -> Option<ListenerHandler> {
        self.exports
            .iter()
            .find_map(|e| InterfaceName::parse(e).and_then(|n| ListenerHandler::from_export(&n)))
    }

    /// Checks the component is of the `expected` world and imports only what that world
    /// provides. Returns the world.
    pub fn check(&self, expected: Option<World>) -> Result<World, LoadError> {
        let world = self.world()?;
        check_world(world, expected)?;
        super::import_check::check_imports(world, &self.imports)?;
        Ok(world)
    }
}

/// Refuses a component of `world` where a component of `expected` was asked for (`None`
/// accepts any).
pub(super) fn check_world(world: World, expected: Option<World>) -> Result<(), LoadError> {
    match expected {
        Some(expected) if expected != world => Err(LoadError::new(
            LoadErrorKind::WrongWorld,
            format!(
                "this is a {world} component (it exports {PACKAGE}/{}), but a {expected} was \
                 expected (exporting {PACKAGE}/{})",
                world.export_interface(),
                expected.export_interface()
            ),
        )),
        _ => Ok(()),
    }
}

/// Longest component name, in bytes.
pub const MAX_NAME_LEN: usize = 64;

/// Checks a component name: 1 to 64 of `[A-Za-z0-9_-]`, starting with a letter or digit.
/// No `.`, `/` or `=`, so a name can never be confused with a kv key or a subject token.
pub fn validate_component_name(name: &str) -> Result<(), LoadError> {
    let invalid = |why: String| {
        Err(LoadError::new(
            LoadErrorKind::InvalidName,
            format!(
                "invalid component name `{}`: {why}",
                crate::text::echo(name)
            ),
        ))
    };
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return invalid(format!("use 1 to {MAX_NAME_LEN} characters"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-')))
    {
        return invalid(format!("{c:?} is not allowed; use [A-Za-z0-9_-]"));
    }
    if !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return invalid("start with a letter or a digit".into());
    }
    Ok(())
}

/// A content digest: sha256 of the component bytes, as lowercase hex.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct Digest(String);

impl Digest {
    /// Digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self(hex::encode(Sha256::digest(bytes)))
    }

    /// A digest from its hex text (as stored in a manifest). Not checked: a digest that
    /// matches nothing simply finds nothing.
    pub fn from_hex(hex: &str) -> Self {
        Self(hex.to_ascii_lowercase())
    }

    /// The hex text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.0)
    }
}

/// What `sandbus inspect` reports about a component file.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ComponentInfo {
    /// The role, when it exports one.
    pub world: Option<World>,
    /// Why it has no role or would be refused, when that is the case.
    pub problem: Option<String>,
    /// Top-level imports.
    pub imports: Vec<String>,
    /// Top-level exports.
    pub exports: Vec<String>,
    /// Size in bytes.
    pub size: u64,
    /// Content digest.
    pub digest: Digest,
}

/// Describes a component without compiling it. Fails only when the bytes are not a
/// component at all; a component this host would refuse is described with its `problem`.
pub fn inspect(bytes: &[u8]) -> Result<ComponentInfo, LoadError> {
    let shape = ComponentShape::read(bytes)?;
    let (world, problem) = match shape.check(None) {
        Ok(world) => (Some(world), None),
        Err(e) => (shape.world().ok(), Some(e.message)),
    };
    Ok(ComponentInfo {
        world,
        problem,
        imports: shape.imports,
        exports: shape.exports,
        size: bytes.len() as u64,
        digest: Digest::of(bytes),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(imports: &[&str], exports: &[&str]) -> ComponentShape {
        ComponentShape {
            imports: imports.iter().map(|s| s.to_string()).collect(),
            exports: exports.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn world_comes_from_the_exported_interface() {
        let s = shape(&[], &["sandbus:host/handler@0.1.0"]);
        assert_eq!(s.check(Some(World::Listener)).unwrap(), World::Listener);
        let s = shape(&[], &["sandbus:host/runner@0.1.3"]);
        assert_eq!(s.check(None).unwrap(), World::Script);
        let err = s.check(Some(World::Listener)).unwrap_err();
        assert_eq!(err.kind, LoadErrorKind::WrongWorld);
        let err = shape(&[], &["wasi:cli/run@0.2.0"]).check(None).unwrap_err();
        assert_eq!(err.kind, LoadErrorKind::MissingExport);
        let err = shape(&[], &["sandbus:host/handler@0.2.0"])
            .check(None)
            .unwrap_err();
        assert_eq!(err.kind, LoadErrorKind::MissingExport);
    }

    #[test]
    fn a_wasmcloud_messaging_handler_is_a_listener_of_its_own_handler() {
        let s = shape(
            &["wasmcloud:messaging/consumer@0.2.0"],
            &["wasmcloud:messaging/handler@0.2.0"],
        );
        assert_eq!(s.check(Some(World::Listener)).unwrap(), World::Listener);
        assert_eq!(
            s.listener_handler(),
            Some(ListenerHandler::WasmcloudMessaging)
        );
        let s = shape(&[], &["sandbus:host/handler@0.1.0"]);
        assert_eq!(s.listener_handler(), Some(ListenerHandler::Sandbus));
        // Another major of wasmCloud's contract is not one this host speaks.
        let err = shape(&[], &["wasmcloud:messaging/handler@0.3.0"])
            .check(None)
            .unwrap_err();
        assert_eq!(err.kind, LoadErrorKind::MissingExport);
        assert!(err.message.contains(MESSAGING_HANDLER), "{}", err.message);
        // Both handlers at once: which one would the events go to?
        let err = shape(
            &[],
            &[
                "sandbus:host/handler@0.1.0",
                "wasmcloud:messaging/handler@0.2.0",
            ],
        )
        .check(None)
        .unwrap_err();
        assert_eq!(err.kind, LoadErrorKind::WrongWorld);
        assert!(err.message.contains("one handler"), "{}", err.message);
    }

    #[test]
    fn non_wasm_and_core_modules_are_told_apart() {
        let err = ComponentShape::read(b"hello world, not wasm").unwrap_err();
        assert_eq!(err.kind, LoadErrorKind::NotWasm);
        let core = wat::parse_str("(module)").unwrap();
        assert_eq!(
            ComponentShape::read(&core).unwrap_err().kind,
            LoadErrorKind::CoreModule
        );
        let component = wat::parse_str("(component)").unwrap();
        assert_eq!(ComponentShape::read(&component).unwrap(), shape(&[], &[]));
        let mut truncated =
            wat::parse_str(r#"(component (import "wasi:cli/stdout@0.2.0" (instance)))"#).unwrap();
        truncated.truncate(truncated.len() - 3);
        assert_eq!(
            ComponentShape::read(&truncated).unwrap_err().kind,
            LoadErrorKind::Invalid
        );
    }

    #[test]
    fn validation_refuses_a_component_whose_code_would_never_compile() {
        // The outer sections read fine; the function body returns an i64 as an i32.
        let bad =
            wat::parse_str(r#"(component (core module (func (result i32) i64.const 1)))"#).unwrap();
        assert!(ComponentShape::read(&bad).is_ok());
        let err = ComponentShape::validate(&bad).unwrap_err();
        assert_eq!(err.kind, LoadErrorKind::Invalid);
        assert!(err.message.contains("type mismatch"), "{}", err.message);
        let good =
            wat::parse_str(r#"(component (core module (func (result i32) i32.const 1)))"#).unwrap();
        assert_eq!(ComponentShape::validate(&good), Ok(()));
    }
}
