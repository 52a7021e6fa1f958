//! `sandbus inspect FILE`: what a component file is (its world, imports, exports, size and
//! digest), and whether sandbus would refuse it (exit 1 then).

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;
use sandbus::sandbox::{self, World};

use super::output::{EXIT_FAIL, EXIT_OK, outln};

/// `sandbus inspect` arguments.
#[derive(Args, Debug)]
pub struct InspectArgs {
    /// The component file.
    file: PathBuf,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Runs `sandbus inspect`; its exit code.
pub fn run(args: &InspectArgs) -> anyhow::Result<u8> {
    let file = &args.file;
    let bytes =
        std::fs::read(file).with_context(|| format!("failed to read {}", file.display()))?;
    let info = sandbox::inspect(&bytes).with_context(|| format!("{}", file.display()))?;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&info)?);
    } else {
        let world = info.world.map_or("none", World::as_str);
        outln!("file:    {}", file.display());
        outln!("world:   {world}");
        outln!("size:    {} bytes", info.size);
        outln!("digest:  {}", info.digest);
        outln!("exports:");
        for e in &info.exports {
            outln!("  {e}");
        }
        outln!("imports:");
        for i in &info.imports {
            outln!("  {i}");
        }
        if let Some(problem) = &info.problem {
            outln!("problem: {problem}");
        }
    }
    Ok(if info.problem.is_some() {
        EXIT_FAIL
    } else {
        EXIT_OK
    })
}
