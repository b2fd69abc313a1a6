//! `bachata`: the command line. It parses settings and starts things; the
//! server itself lives in the library.

mod cli;

/// mimalloc instead of glibc malloc: the allocator was ~13% of the
/// server's CPU under load (docs/performance.md). The `system-allocator`
/// feature keeps glibc's, for heap profilers that hook `malloc`
/// (heaptrack, valgrind).
#[cfg(not(feature = "system-allocator"))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::Context;
use bachata_server::{Config, LogFormat, ServeArgs};
use clap::{CommandFactory, FromArgMatches, Subcommand};
use tracing_subscriber::EnvFilter;

/// `bachata --version`: the crate's version and the commit it was built
/// from (`unknown` outside a git checkout, e.g. from a published crate).
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("BUILD_GIT_COMMIT"),
    ")"
);

/// A reliable chat server: WebSocket clients, routes, durable delivery.
#[derive(Debug, clap::Parser)]
#[command(name = "bachata", version = VERSION, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server.
    Serve(Box<ServeArgs>),
    /// Print the settings `serve` would run with (secrets masked), or fail
    /// with the errors it would give.
    CheckConfig(Box<ServeArgs>),
    /// Print docs/configuration.md (with --toml, bachata.example.toml) as
    /// generated from the settings' definitions.
    #[command(hide = true)]
    ConfigReference {
        #[arg(long)]
        toml: bool,
    },
    /// Send one message and wait for its 100 (and 300 with --wait-delivered).
    Send(cli::SendArgs),
    /// Print received messages, one JSON object per line, and ack them.
    Listen(cli::ListenArgs),
}

/// The command line, with each `serve` setting's `BACHATA_*` variable in
/// its help (the library reads the variables itself, through figment, so
/// clap only shows them).
fn command() -> clap::Command {
    let with_variables = |serve: clap::Command| {
        serve.mut_args(|arg| {
            let id = arg.get_id().as_str().to_owned();
            if matches!(id.as_str(), "config" | "help" | "version") || arg.is_positional() {
                return arg;
            }
            let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
            arg.help(format!("{help} [env: BACHATA_{}]", id.to_ascii_uppercase()))
        })
    };
    Cli::command()
        .mut_subcommand("serve", with_variables)
        .mut_subcommand("check-config", with_variables)
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::from_arg_matches(&command().get_matches()).unwrap_or_else(|e| e.exit());
    match cli.command {
        Command::Serve(args) => {
            // A configuration error is printed by `main`'s error, before
            // any log line: the log format is a setting too.
            let config = Config::load(&args).context("invalid configuration")?;
            init_logging(config.log_format);
            // Before the limit is read for --max-connections: the soft
            // limit is often 1024 where the hard one is far higher.
            bachata_server::raise_open_file_limit();
            runtime()?.block_on(serve(config))
        }
        Command::CheckConfig(args) => {
            let config = Config::load(&args).context("invalid configuration")?;
            // As `serve` does: --max-connections is checked against it.
            bachata_server::raise_open_file_limit();
            bachata_server::check(&config).context("invalid configuration")?;
            print!("{}", bachata_server::describe_settings(&config));
            Ok(())
        }
        Command::ConfigReference { toml } => {
            if toml {
                print!("{}", bachata_server::example_toml());
            } else {
                print!("{}", bachata_server::configuration_page());
            }
            Ok(())
        }
        Command::Send(args) => {
            init_logging(LogFormat::Text);
            exit_with(runtime()?.block_on(cli::send(args)))
        }
        Command::Listen(args) => {
            init_logging(LogFormat::Text);
            exit_with(runtime()?.block_on(cli::listen(args)))
        }
    }
}

/// Logs to stderr at `BACHATA_LOG` (an `EnvFilter` directive; `info` by
/// default), as text or JSON lines. No secret is ever a field of a log
/// event (tested in `tests/cli.rs`).
fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_env("BACHATA_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => builder.json().with_current_span(false).init(),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Client commands report failures as one line on stderr and an exit code.
fn exit_with(result: Result<(), cli::Failed>) -> anyhow::Result<()> {
    match result {
        Ok(()) => Ok(()),
        Err(failed) => {
            eprintln!("bachata: {}", failed.message);
            std::process::exit(failed.code);
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    // Listen for the signals before the server says it accepts connections:
    // a SIGTERM sent right after that line must drain, not kill.
    let signals = Signals::listen();
    let server = bachata_server::start(config)
        .await
        .context("cannot start the server")?;
    let token = server.shutdown_token();
    tokio::spawn(async move {
        signals.wait().await;
        tracing::info!("shutting down");
        token.cancel();
    });
    server.wait().await;
    tracing::info!("stopped");
    Ok(())
}

/// SIGTERM and SIGINT, listened for from [`Signals::listen`] on.
struct Signals {
    term: Option<tokio::signal::unix::Signal>,
    int: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn listen() -> Self {
        use tokio::signal::unix::{SignalKind, signal};
        let listen = |kind: SignalKind, name: &str| match signal(kind) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for {name}");
                None
            }
        };
        Signals {
            term: listen(SignalKind::terminate(), "SIGTERM"),
            int: listen(SignalKind::interrupt(), "SIGINT"),
        }
    }

    async fn wait(mut self) {
        async fn recv(signal: &mut Option<tokio::signal::unix::Signal>) {
            match signal {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending().await,
            }
        }
        tokio::select! {
            () = recv(&mut self.term) => {}
            () = recv(&mut self.int) => {}
        }
    }
}
