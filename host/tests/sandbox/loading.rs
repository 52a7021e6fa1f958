//! Bad uploads are refused with distinct, clear errors, and the compile cache never loads
//! an artifact it cannot verify.

use sandbus::sandbox::{
    ArtifactCache, CacheLookup, Digest, LoadErrorKind, Sandbox, SandboxConfig, World,
};

use super::support::{guest, wat_listener};
use super::{Harness, event, sandbox, spec};

fn refused(bytes: &[u8], world: World) -> sandbus::sandbox::LoadError {
    match sandbox().prepare(spec("bad", world, &[], &[]), bytes) {
        Ok(_) => panic!("the component should have been refused"),
        Err(e) => e,
    }
}

#[test]
fn non_wasm_is_refused() {
    let err = refused(b"#!/bin/sh\necho not wasm\n", World::Listener);
    assert_eq!(err.kind, LoadErrorKind::NotWasm);
    assert!(err.message.contains("not a WebAssembly file"));
}

#[test]
fn core_module_is_refused_with_a_hint() {
    let core = wat::parse_str(r#"(module (func (export "handle")))"#).unwrap();
    let err = refused(&core, World::Listener);
    assert_eq!(err.kind, LoadErrorKind::CoreModule);
    assert!(err.message.contains("wasm32-wasip2"), "{}", err.message);
}

#[test]
fn component_for_another_world_is_refused() {
    let err = refused(&guest("self-check"), World::Listener);
    assert_eq!(err.kind, LoadErrorKind::WrongWorld);
    assert!(
        err.message.contains("this is a script component"),
        "{}",
        err.message
    );
    let err = refused(&guest("noop-listener"), World::Script);
    assert_eq!(err.kind, LoadErrorKind::WrongWorld);
}

#[test]
fn component_without_a_role_export_is_refused() {
    let err = refused(&wat::parse_str("(component)").unwrap(), World::Listener);
    assert_eq!(err.kind, LoadErrorKind::MissingExport);
    assert!(err.message.contains("exports none of"), "{}", err.message);
}

#[test]
fn export_with_the_wrong_shape_is_refused() {
    let empty_handler = wat::parse_str(
        r#"(component
             (instance $h)
             (export "sandbus:host/handler@0.1.0" (instance $h)))"#,
    )
    .unwrap();
    let err = refused(&empty_handler, World::Listener);
    assert_eq!(
        err.kind,
        LoadErrorKind::IncompatibleInterface,
        "{}",
        err.message
    );
    assert!(err.message.contains("handle"), "{}", err.message);
}

#[test]
fn unknown_import_is_named() {
    let config = wat::parse_str(
        r#"(component
             (import "wasi:blobstore/container@0.2.0-draft" (instance))
             (instance $h)
             (export "sandbus:host/handler@0.1.0" (instance $h)))"#,
    )
    .unwrap();
    let err = refused(&config, World::Listener);
    assert_eq!(err.kind, LoadErrorKind::UnknownImport);
    assert!(
        err.message.contains("wasi:blobstore/container@0.2.0-draft"),
        "{}",
        err.message
    );
}

#[test]
fn oversized_component_is_refused() {
    let small = Sandbox::new(SandboxConfig {
        pooling: false,
        max_component_size: 1024,
        ..SandboxConfig::default()
    })
    .unwrap();
    let err = small
        .prepare(
            spec("big", World::Listener, &[], &[]),
            &guest("noop-listener"),
        )
        .err()
        .unwrap();
    assert_eq!(err.kind, LoadErrorKind::TooLarge);
}

#[test]
fn memory_limit_over_the_ceiling_is_refused() {
    let err = sandbox()
        .prepare(
            spec("greedy", World::Listener, &[], &["memory=2GiB"]),
            &guest("noop-listener"),
        )
        .err()
        .unwrap();
    assert_eq!(err.kind, LoadErrorKind::Limits);
}

fn cache_fixture() -> (tempfile::TempDir, wasmtime::Engine, Vec<u8>, Digest) {
    let dir = tempfile::tempdir().unwrap();
    let engine = wasmtime::Engine::default();
    let bytes = wat_listener(
        r#"(func (export "sandbus:host/handler@0.1.0#handle") (param i32) (result i32) (call $ok))"#,
    );
    let digest = Digest::of(&bytes);
    let cache = ArtifactCache::open(dir.path(), &engine).unwrap();
    let component = wasmtime::component::Component::new(&engine, &bytes).unwrap();
    cache.store(&digest, &component).unwrap();
    (dir, engine, bytes, digest)
}

#[test]
fn cached_artifact_is_loaded_when_it_verifies() {
    let (dir, engine, _, digest) = cache_fixture();
    let cache = ArtifactCache::open(dir.path(), &engine).unwrap();
    assert_eq!(cache.load(&engine, &digest).0, CacheLookup::Hit);
}

#[test]
fn tampered_or_truncated_cache_entry_is_rejected_and_removed() {
    let (dir, engine, _, digest) = cache_fixture();
    let cache = ArtifactCache::open(dir.path(), &engine).unwrap();
    let path = cache.entry_path(&digest);
    let original = std::fs::read(&path).unwrap();

    let mut tampered = original.clone();
    let middle = tampered.len() / 2;
    tampered[middle] ^= 0x40;
    std::fs::write(&path, &tampered).unwrap();
    assert_eq!(cache.load(&engine, &digest).0, CacheLookup::Rejected);
    assert!(!path.exists(), "a rejected entry must be removed");

    std::fs::write(&path, &original[..original.len() - 100]).unwrap();
    assert_eq!(cache.load(&engine, &digest).0, CacheLookup::Rejected);

    // An entry signed with another host's key is refused too.
    std::fs::write(&path, &original).unwrap();
    std::fs::write(dir.path().join("cache.key"), [7u8; 32]).unwrap();
    let other = ArtifactCache::open(dir.path(), &engine).unwrap();
    assert_eq!(other.load(&engine, &digest).0, CacheLookup::Rejected);
}

#[tokio::test]
async fn sandbox_recompiles_over_a_tampered_cache_entry() {
    let dir = tempfile::tempdir().unwrap();
    let config = SandboxConfig {
        pooling: false,
        cache_dir: Some(dir.path().to_owned()),
        ..SandboxConfig::default()
    };
    let bytes = guest("noop-listener");
    let first = Sandbox::new(config.clone()).unwrap();
    first
        .prepare(spec("noop", World::Listener, &[], &[]), &bytes)
        .unwrap();
    let entry = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "cwasm"))
        .expect("the first prepare writes a cache entry");
    let mut garbage = std::fs::read(&entry).unwrap();
    garbage.truncate(garbage.len() / 3);
    std::fs::write(&entry, garbage).unwrap();

    let second = Sandbox::new(config).unwrap();
    let noop = second
        .prepare(spec("noop", World::Listener, &[], &[]), &bytes)
        .unwrap();
    let h = Harness::new();
    noop.handle(event("vm.started", "e", "{}"), &h.caps)
        .await
        .unwrap();
    let rewritten = std::fs::metadata(&entry).unwrap().len();
    assert!(
        rewritten > 1000,
        "the entry should have been rewritten whole"
    );
}

#[test]
fn cache_in_a_directory_others_can_write_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let err = ArtifactCache::open(dir.path(), &wasmtime::Engine::default())
        .err()
        .expect("a world-writable cache directory must be refused");
    assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied);
    assert!(err.to_string().contains("must be private"), "{err}");
}

#[test]
fn fuel_limit_without_fuel_metering_is_refused() {
    let err = sandbox()
        .prepare(
            spec("fuelled", World::Listener, &[], &["fuel=1000"]),
            &guest("noop-listener"),
        )
        .err()
        .unwrap();
    assert_eq!(err.kind, LoadErrorKind::Limits);
    assert!(
        err.message.contains("does not meter fuel"),
        "{}",
        err.message
    );
}

#[test]
fn more_instances_than_the_pool_holds_are_refused() {
    let err = sandbox()
        .prepare(
            spec("greedy", World::Listener, &[], &["instances=1000"]),
            &guest("noop-listener"),
        )
        .err()
        .unwrap();
    assert_eq!(err.kind, LoadErrorKind::Limits);
    assert!(err.message.contains("pool"), "{}", err.message);
}
