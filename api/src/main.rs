//! `genq-api`: serves the HTTP API; `genq-api token` mints a development JWT;
//! `genq-api openapi` prints the OpenAPI document (`api/openapi.json`);
//! `genq-api print-sql NAME` prints one of genq's composed statements.

use clap::{Parser, Subcommand};
use genq_api::auth::{Claims, ADMIN_ROLE, VIEWER_ROLE};
use genq_api::Application;
use genq_core::config::Settings;
use genq_core::telemetry;
use secrecy::ExposeSecret;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(name = "genq-api", about = "genq's HTTP API", version)]
struct Cli {
    /// A TOML configuration file (else $GENQ_CONFIG, else defaults and environment).
    #[arg(long, global = true)]
    config: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the API (the default).
    Serve,
    /// Print a bearer token signed with auth.jwt_secret, for development.
    Token {
        /// The user's external ID (`sub`).
        #[arg(long)]
        sub: String,
        /// An email, marked verified (the minter vouches for it).
        #[arg(long)]
        email: Option<String>,
        #[arg(long)]
        name: Option<String>,
        /// Give the token the admin role.
        #[arg(long, conflicts_with = "viewer")]
        admin: bool,
        /// Give the token the viewer role: every admin read, no admin action.
        #[arg(long)]
        viewer: bool,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl: u64,
    },
    /// Print the OpenAPI document the API serves at /openapi.json
    /// (regenerate the committed copy with `cargo run -q -p genq-api -- openapi > api/openapi.json`).
    Openapi,
    /// Print one of the composed statements genq runs (submit, transition,
    /// replay, outbox-claim, outbox-mark) with its parameters named
    /// (`:name`, as pgbench reads them): what `scripts/bench.sh` measures.
    PrintSql {
        name: String,
        /// Write parameter NAME as the SQL given instead (e.g. `model=NULL`,
        /// `from=:claim_from`); repeatable, the last for a name counts.
        #[arg(long = "set", value_name = "NAME=SQL")]
        set: Vec<String>,
    },
}

#[tokio::main]
async fn main() {
    // One readable line for a bad configuration or a failed start, no backtrace.
    if let Err(e) = run().await {
        eprintln!("genq-api: {e:#}");
        std::process::exit(1);
    }
}

async fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // These need no configuration: neither depends on it.
    match &cli.command {
        Some(Command::Openapi) => {
            print!("{}", genq_api::openapi::document_json());
            return Ok(());
        }
        Some(Command::PrintSql { name, set }) => return print_sql(name, set),
        _ => {}
    }
    let settings = Settings::load(cli.config.as_deref())?;
    settings.validate_api()?;
    match cli.command.unwrap_or(Command::Serve) {
        Command::Token {
            sub,
            email,
            name,
            admin,
            viewer,
            ttl,
        } => {
            let role = if admin {
                Some(ADMIN_ROLE)
            } else {
                viewer.then_some(VIEWER_ROLE)
            };
            let token = Claims::new(sub, ttl.min(i64::MAX as u64) as i64)
                .email(email.as_deref())
                .email_verified(email.is_some())
                .name(name.as_deref())
                .role(role)
                .mint(settings.auth.jwt_secret.expose_secret().as_bytes())?;
            println!("{token}");
            Ok(())
        }
        Command::Openapi | Command::PrintSql { .. } => {
            unreachable!("handled before the configuration is loaded")
        }
        Command::Serve => {
            let tracing = telemetry::init_tracing(&settings.log, "genq-api");
            let shutdown = CancellationToken::new();
            tokio::spawn(genq_core::shutdown::on_signal(shutdown.clone()));
            let app = Application::build(settings).await?;
            let result = app.run_until_stopped(shutdown).await;
            // The exporter's last send blocks (bounded by its timeout).
            let _ = tokio::task::spawn_blocking(move || tracing.shutdown()).await;
            result
        }
    }
}

fn print_sql(name: &str, set: &[String]) -> anyhow::Result<()> {
    let statements = genq_store::store::composed_statements();
    let Some((_, statement)) = statements.iter().find(|(n, _)| *n == name) else {
        let known: Vec<&str> = statements.iter().map(|(n, _)| *n).collect();
        anyhow::bail!("no statement named {name:?}; known: {}", known.join(", "));
    };
    let mut replace = Vec::new();
    for s in set {
        let (param, sql) = s
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("--set {s:?}: expected NAME=SQL"))?;
        if !statement.names().contains(&param) {
            anyhow::bail!(
                "--set {s:?}: {name} has no parameter {param:?}; it has {}",
                statement.names().join(", ")
            );
        }
        replace.push((param, sql));
    }
    // No `;`: the reader ends it (pgbench with `;`, or `\gset`).
    println!("{}", statement.with_names(&replace));
    Ok(())
}
