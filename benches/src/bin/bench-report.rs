//! `bench-report`: writes `benches/RESULTS.md` and the PNG plots from the
//! JSON results in `benches/results/` (see `chatpipe_benches::report`).

use std::path::PathBuf;

use clap::Parser;

#[derive(Debug, Parser)]
struct Args {
    #[arg(long, default_value = "benches/results")]
    results_dir: PathBuf,
    #[arg(long, default_value = "benches/RESULTS.md")]
    output: PathBuf,
    /// Criterion's output directory (`$CARGO_TARGET_DIR/criterion`).
    #[arg(long)]
    criterion_dir: Option<PathBuf>,
    /// Hand-written analysis appended to the report.
    #[arg(long, default_value = "benches/NOTES.md")]
    notes: PathBuf,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let inputs = chatpipe_benches::report::load(
        &args.results_dir,
        args.criterion_dir.as_deref(),
        Some(&args.notes),
    );
    chatpipe_benches::report::write(&inputs, &args.results_dir, &args.output)?;
    println!("wrote {}", args.output.display());
    Ok(())
}
