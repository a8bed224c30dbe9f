//! `genqctl`: parses the command line and runs it; see `genqctl --help`.

use clap::Parser;

#[tokio::main]
async fn main() {
    let cli = genqctl::Cli::parse();
    match genqctl::run(cli).await {
        Ok(outcome) => {
            if !outcome.output.is_empty() {
                println!("{}", outcome.output.trim_end());
            }
            std::process::exit(outcome.code);
        }
        Err(e) => {
            eprintln!("genqctl: {e:#}");
            std::process::exit(1);
        }
    }
}
