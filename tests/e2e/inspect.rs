//! `sandbus inspect`: the world, imports, exports, size and digest of a component file.

use super::support::guest_path;
use super::{sandbus, stderr, stdout};

#[test]
fn inspect_reports_world_interfaces_and_digest() {
    let cache = tempfile::tempdir().unwrap();
    let path = guest_path("billing-listener");
    let out = sandbus(&["inspect", path.to_str().unwrap(), "--json"], cache.path());
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let info: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(info["world"], "listener");
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(info["size"], bytes.len() as u64);
    let digest = {
        use sha2::Digest as _;
        hex::encode(sha2::Sha256::digest(&bytes))
    };
    assert_eq!(info["digest"], digest);
    let imports: Vec<&str> = info["imports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        imports.iter().any(|i| i.starts_with("sandbus:host/kv@")),
        "{imports:?}"
    );
    assert!(
        imports.iter().any(|i| i.starts_with("sandbus:host/bus@")),
        "{imports:?}"
    );
    assert!(
        info["exports"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e == "sandbus:host/handler@0.1.0")
    );
}

#[test]
fn inspect_of_a_core_module_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("core.wasm");
    std::fs::write(&file, wat::parse_str("(module)").unwrap()).unwrap();
    let out = sandbus(&["inspect", file.to_str().unwrap()], dir.path());
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("core WebAssembly module, not a component"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn output_into_a_closed_pipe_is_not_a_crash() {
    use std::process::{Command, Stdio};
    let cache = tempfile::tempdir().unwrap();
    let path = guest_path("billing-listener");
    let mut child = Command::new(env!("CARGO_BIN_EXE_sandbus"))
        .args(["inspect", path.to_str().unwrap()])
        .env("SANDBUS_CACHE_DIR", cache.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take()); // the reader goes away before anything is written
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
