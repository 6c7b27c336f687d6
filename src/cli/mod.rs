//! The command line, shaped like ripgrep's: [`flags`] parses every flag once into plain structs,
//! `context` resolves the global ones, and each command runs in a file of its own against the
//! library; `ui` is the terminal side and `job` the loop over many photos.

mod adapt;
mod auto;
mod classify;
mod context;
mod dataset;
mod embed;
mod eval;
pub mod flags;
mod forecast;
mod index;
mod job;
mod labels;
mod leftovers;
mod models;
mod preview;
mod search;
mod serve;
mod ui;

use crate::pipeline::Stats;
use anyhow::Result;
use context::Context;
pub use flags::Cli;
use flags::{Command, LabelsCommand, ModelsCommand};

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Every input succeeded.
    Success,
    /// Some inputs failed (reported and skipped).
    SomeFailed,
    /// Stopped by Ctrl-C after the records in flight were written.
    Interrupted,
}

impl Outcome {
    /// The outcome of a run over photos.
    fn of(stats: &Stats, interrupted: bool) -> Self {
        if interrupted {
            Outcome::Interrupted
        } else if stats.failed > 0 {
            Outcome::SomeFailed
        } else {
            Outcome::Success
        }
    }
}

/// Runs a parsed command line. An `Err` is a usage or configuration error, or a failure after
/// the run started that ends it (the model, or writing the output); both exit with code 2.
pub fn run(cli: Cli) -> Result<Outcome> {
    let cx = Context::new(&cli)?;
    match &cli.command {
        Command::Classify(args) => classify::run(&cx, args),
        Command::Eval(args) => eval::run(&cx, args),
        Command::Embed(args) => embed::run(&cx, args),
        Command::Adapt(args) => adapt::run(&cx, args),
        Command::Leftovers(args) => leftovers::run(&cx, args),
        Command::Forecast(args) => forecast::run(&cx, args),
        Command::Index(args) => index::run(&cx, args),
        Command::Search(args) => search::run(&cx, args),
        Command::Preview(args) => preview::run(&cx, args),
        Command::Serve(args) => serve::run(&cx, args),
        Command::Models(ModelsCommand::List { format }) => models::list(&cx.registry, *format),
        Command::Labels(LabelsCommand::Show(args)) => labels::show(args),
        Command::Labels(LabelsCommand::Check(args)) => labels::check(&cx, args),
    }
}

/// Entry point for the binary: parses arguments, runs, prints one-line errors, and returns the
/// exit code (0 all good, 1 some inputs failed, 2 usage or configuration error, or a failure
/// that ended the run; 130 Ctrl-C).
pub fn main() -> std::process::ExitCode {
    // candle attaches a backtrace to its errors whenever RUST_BACKTRACE is set; errors here are
    // one line. RUST_LIB_BACKTRACE=1 restores them.
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        std::env::set_var("RUST_LIB_BACKTRACE", "0");
    }
    // A panic is a bug, but it still gets one line; one inside a photo's decoding becomes that
    // photo's error record (see `preprocess`). RUST_BACKTRACE=1 shows the usual report.
    if std::env::var_os("RUST_BACKTRACE").is_none() {
        std::panic::set_hook(Box::new(|info| {
            if crate::preprocess::isolating() {
                return; // the photo's own error record says what failed
            }
            let msg = info
                .payload()
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| info.payload().downcast_ref::<String>().cloned())
                .unwrap_or_default();
            let at = info
                .location()
                .map_or(String::new(), |l| format!(" at {l}"));
            eprintln!("foodclip: internal error{at}: {}", msg.replace('\n', " "));
        }));
    }
    let cli = match Cli::try_parse_args(std::env::args_os()) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return std::process::ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    match run(cli) {
        Ok(Outcome::Success) => std::process::ExitCode::SUCCESS,
        Ok(Outcome::SomeFailed) => std::process::ExitCode::from(1),
        Ok(Outcome::Interrupted) => std::process::ExitCode::from(130),
        Err(e) => {
            eprintln!("foodclip: {}", format!("{e:#}").replace('\n', " "));
            std::process::ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn serve_sizes_parse_with_units() {
        let max_body = |v: &str| {
            let cli = Cli::try_parse_from(["foodclip", "serve", "-l", "x.txt", "--max-body", v]);
            match cli.map(|c| c.command) {
                Ok(Command::Serve(s)) => Some(s.max_body),
                _ => None,
            }
        };
        assert_eq!(max_body("1000"), Some(1000));
        assert_eq!(max_body("500KB"), Some(500_000));
        assert_eq!(max_body("32MB"), Some(32_000_000));
        assert_eq!(max_body("1.5 MiB"), Some(1_572_864));
        assert_eq!(max_body("1GiB"), Some(1 << 30));
        assert_eq!(max_body("lots"), None);
        assert_eq!(max_body("3 parsecs"), None);
    }

    #[test]
    fn model_flag_is_global_and_choices_parse() {
        let cli = Cli::try_parse_from([
            "foodclip", "preview", "a.jpg", "-o", "b.png", "--model", "x/y",
        ])
        .unwrap();
        assert_eq!(cli.model.as_deref(), Some("x/y"));
        let cli = Cli::try_parse_from(["foodclip", "--model", "x/y", "models", "list"]).unwrap();
        assert_eq!(cli.model.as_deref(), Some("x/y"));
        let cli = Cli::try_parse_from([
            "foodclip",
            "--precision",
            "bf16",
            "models",
            "list",
            "-f",
            "json",
        ])
        .unwrap();
        assert_eq!(cli.precision, crate::model::Precision::Bf16);
        assert!(matches!(
            cli.command,
            Command::Models(ModelsCommand::List {
                format: crate::output::Format::Json
            })
        ));
        assert!(Cli::try_parse_from(["foodclip", "--precision", "f8", "models", "list"]).is_err());
        // search: `-term` is a term; flags and their values stay flags, wherever they are.
        let cli = Cli::try_parse_args(
            [
                "foodclip", "search", "잡채", "-국", "--top", "5", "-f", "csv", "-rice", "--db=x",
            ]
            .map(Into::into),
        )
        .unwrap();
        let Command::Search(s) = cli.command else {
            panic!("a search")
        };
        assert_eq!(s.terms, ["잡채", "-국", "-rice"]);
        assert_eq!(
            (s.top, s.db.as_deref()),
            (5, Some(std::path::Path::new("x")))
        );
        // A mistyped flag is refused, with the flag it may have meant; it is not a term.
        let wrong = ["foodclip", "search", "잡채", "--top-k", "3"].map(Into::into);
        let e = Cli::try_parse_args(wrong).unwrap_err().to_string();
        assert!(e.contains("'--top-k'") && e.contains("--top"), "{e}");
    }
}
