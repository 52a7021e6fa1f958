//! Shared test support: where the built guests are, and turning inline core WAT into a
//! real component of one of our worlds.
//!
//! Guests are built once by `scripts/build-guests.sh` into `target/guests/` (override with
//! `SANDBUS_GUESTS_DIR`); tests never run cargo themselves.

#![allow(dead_code, reason = "each test binary uses part of the support module")]

pub mod nats;
pub mod vm;

use std::path::PathBuf;

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default()
}

/// Path of a built guest component, e.g. `guest_path("billing-listener")`.
///
/// Panics with instructions when it has not been built.
pub fn guest_path(name: &str) -> PathBuf {
    let dir = std::env::var_os("SANDBUS_GUESTS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target").join("guests"));
    let path = dir.join(format!("{name}.wasm"));
    assert!(
        path.exists(),
        "guest `{name}` is not built ({} is missing): run scripts/build-guests.sh",
        path.display()
    );
    path
}

/// The bytes of a built guest component.
pub fn guest(name: &str) -> Vec<u8> {
    std::fs::read(guest_path(name)).unwrap()
}

/// A bump allocator and a 2-page memory, enough for the host to pass arguments in. A
/// listener's event arrives as a pointer (it flattens to more than 16 values) and its
/// outcome goes back through a pointer; `$ok` returns the address of an `ok` outcome.
const PRELUDE: &str = r#"
  (memory (export "memory") 2)
  (global $next (mut i32) (i32.const 4096))
  (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32)
    (local $p i32)
    (local.set $p (i32.and
      (i32.add (global.get $next) (i32.sub (local.get 2) (i32.const 1)))
      (i32.xor (i32.sub (local.get 2) (i32.const 1)) (i32.const -1))))
    (global.set $next (i32.add (local.get $p) (local.get 3)))
    (local.get $p))
  (func $ok (result i32)
    (i32.store8 (i32.const 64) (i32.const 0))
    (i32.const 64))
"#;

/// Builds a listener component from core WAT: `items` are extra module fields, and must
/// define `(func (export "sandbus:host/handler@0.1.0#handle") (param i32) (result i32) ...)`.
pub fn wat_listener(items: &str) -> Vec<u8> {
    wat_listener_importing("", items)
}

/// [`wat_listener`] with host imports (`(import "sandbus:host/bus@0.1.0" ...)`), which core
/// WAT requires before every definition.
pub fn wat_listener_importing(imports: &str, items: &str) -> Vec<u8> {
    wat_component("listener", &format!("(module {imports} {PRELUDE} {items})"))
}

/// A listener whose module also holds one function of `adds` straight-line `i32.add`s: a
/// small file that takes Cranelift long and much memory to compile (about 3 bytes of wasm
/// per add), like the hostile uploads the compile budget is for. The handler itself just
/// acknowledges.
pub fn straight_line_listener(adds: usize) -> Vec<u8> {
    let mut body = String::with_capacity(adds * 24);
    for _ in 0..adds {
        body.push_str("(local.get 0) i32.add\n");
    }
    wat_listener(&format!(
        r#"(func (export "sandbus:host/handler@0.1.0#handle") (param i32) (result i32) (call $ok))
           (func (export "big") (param i32) (result i32) (local.get 0)
             {body})"#
    ))
}

/// Builds a script component from core WAT: `items` must define
/// `(func (export "sandbus:host/runner@0.1.0#run") (param i32 i32) (result i32) ...)`.
pub fn wat_script(items: &str) -> Vec<u8> {
    wat_component("script", &format!("(module {PRELUDE} {items})"))
}

/// Builds a hook component from core WAT: `items` must define
/// `(func (export "sandbus:host/check@0.1.0#check") (param i32) (result i32) ...)`, returning
/// the address of a `result<decision, string>`: byte 0 is 0 (ok) or 1 (err); for ok, byte 4
/// is 0 (allow) or 1 (deny) and a deny's reason is (address, length) at 8 and 12; for err,
/// the text is (address, length) at 4 and 8.
pub fn wat_hook(items: &str) -> Vec<u8> {
    wat_component("hook", &format!("(module {PRELUDE} {items})"))
}

/// A hook that answers every proposal the same way: `allow`, `deny` (reason "denied by
/// wat"), `error` (returns the error "cannot decide"), `trap`, or `spin` (loops forever).
pub fn fixed_hook(answer: &str) -> Vec<u8> {
    let body = match answer {
        "allow" => {
            "(i32.store8 (i32.const 64) (i32.const 0)) (i32.store8 (i32.const 68) (i32.const 0))"
        }
        "deny" => {
            "(i32.store8 (i32.const 64) (i32.const 0)) (i32.store8 (i32.const 68) (i32.const 1)) \
             (i32.store (i32.const 72) (i32.const 1024)) (i32.store (i32.const 76) (i32.const 13))"
        }
        "error" => {
            "(i32.store8 (i32.const 64) (i32.const 1)) \
             (i32.store (i32.const 68) (i32.const 1040)) (i32.store (i32.const 72) (i32.const 13))"
        }
        "trap" => "unreachable",
        "spin" => "(loop $l (br $l))",
        other => panic!("no fixed hook answering {other}"),
    };
    wat_hook(&format!(
        r#"(data (i32.const 1024) "denied by wat")
           (data (i32.const 1040) "cannot decide")
           (func (export "sandbus:host/check@0.1.0#check") (param i32) (result i32)
             {body}
             (i32.const 64))"#
    ))
}

/// Encodes a core module written in WAT as a component of `world` from `wit/`.
pub fn wat_component(world: &str, module_wat: &str) -> Vec<u8> {
    let mut resolve = wit_parser::Resolve::default();
    let (package, _) = resolve.push_dir(workspace_root().join("wit")).unwrap();
    let world = resolve.select_world(&[package], Some(world)).unwrap();
    let mut module = wat::parse_str(module_wat).unwrap();
    wit_component::embed_component_metadata(
        &mut module,
        &resolve,
        world,
        wit_component::StringEncoding::UTF8,
    )
    .unwrap();
    wit_component::ComponentEncoder::default()
        .module(&module)
        .unwrap()
        .validate(true)
        .encode()
        .unwrap()
}
