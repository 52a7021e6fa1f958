//! Uploaded bytes, as the CLI and the daemon look at them before compiling: whatever they
//! are, reading their shape and describing them never panics.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sandbus::sandbox::{ComponentShape, inspect};

fuzz_target!(|data: &[u8]| {
    if let Ok(shape) = ComponentShape::read(data) {
        let _ = shape.check(None);
    }
    let _ = inspect(data);
});
