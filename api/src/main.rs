//! `genq-api`: serves the HTTP API; `genq-api token` mints a development JWT;
//! `genq-api openapi` prints the OpenAPI document (`api/openapi.json`).

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
    if let Some(Command::Openapi) = cli.command {
        // Needs no configuration: the document doesn't depend on it.
        print!("{}", genq_api::openapi::document_json());
        return Ok(());
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
        Command::Openapi => unreachable!("handled before the configuration is loaded"),
        Command::Serve => {
            telemetry::init_tracing(&settings.log);
            let shutdown = CancellationToken::new();
            tokio::spawn(genq_core::shutdown::on_signal(shutdown.clone()));
            let app = Application::build(settings).await?;
            app.run_until_stopped(shutdown).await
        }
    }
}
