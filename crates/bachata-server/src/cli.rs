//! `bachata send` and `bachata listen`: the Rust client on the command line,
//! for scripts and quick checks.
//!
//! Exit codes: 0 done; 1 the server refused the message (400: code and
//! reason on stderr); 2 bad usage; 3 timed out; 4 cannot connect (or the
//! handshake was refused).

use std::io::Write;
use std::time::Duration;

use bachata_client::{Client, ClientConfig, ClientError, Outgoing};
use clap::Args;
use serde_json::{Value, json};

/// How to reach and log in to the server.
#[derive(Debug, Args)]
pub(crate) struct ConnectArgs {
    /// Server URL.
    #[arg(long, env = "BACHATA_URL", default_value = "ws://127.0.0.1:8000")]
    pub url: String,
    /// Channel to connect as (anonymous mode) [default: $USER, or "cli"].
    #[arg(long, conflicts_with = "token")]
    pub channel: Option<String>,
    /// JWT to connect with.
    #[arg(long, env = "BACHATA_TOKEN")]
    pub token: Option<String>,
    /// Device name.
    #[arg(long)]
    pub device: Option<String>,
    /// Bound on connecting and on each receipt: seconds (5) or with a unit (10s, 2m).
    #[arg(long, default_value = "10s", value_parser = bachata_server::parse_duration)]
    pub timeout: Duration,
    /// With a wss:// URL: a CA certificate (PEM) to trust besides the system's roots.
    #[arg(long, value_name = "FILE")]
    pub ca: Option<std::path::PathBuf>,
}

impl ConnectArgs {
    fn config(&self) -> Result<ClientConfig, Failed> {
        let mut config = match &self.token {
            Some(token) => ClientConfig::token(&self.url, token),
            None => {
                let channel = self
                    .channel
                    .clone()
                    .or_else(|| std::env::var("USER").ok().filter(|u| !u.is_empty()))
                    .unwrap_or_else(|| "cli".to_owned());
                ClientConfig::channel(&self.url, &channel)
            }
        };
        config.device = self.device.clone();
        config.timeout = self.timeout;
        // A command-line run should fail fast rather than retry forever.
        config.max_reconnects = Some(3);
        if let Some(path) = &self.ca {
            let pem = std::fs::read(path)
                .map_err(|e| usage(format!("cannot read --ca {}: {e}", path.display())))?;
            config = config.ca_pem(pem);
        }
        Ok(config)
    }
}

/// `bachata send`
#[derive(Debug, Args)]
pub(crate) struct SendArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Destination channel (a direct message).
    #[arg(long, required_unless_present = "group", conflicts_with = "group")]
    pub to: Option<String>,
    /// Destination group (a group message).
    #[arg(long)]
    pub group: Option<String>,
    /// Message type [default: direct, or group with --group].
    #[arg(long = "type")]
    pub kind: Option<String>,
    /// Message id [default: generated].
    #[arg(long)]
    pub id: Option<String>,
    /// Read TEXT as JSON for `data` instead of sending {"text": TEXT}.
    #[arg(long)]
    pub json: bool,
    /// Also wait for the 300 (delivered).
    #[arg(long)]
    pub wait_delivered: bool,
    /// The message text.
    pub text: String,
}

/// `bachata listen`
#[derive(Debug, Args)]
pub(crate) struct ListenArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Exit after this many messages.
    #[arg(long)]
    pub count: Option<u64>,
    /// Do not answer 200 (messages stay pending on the server).
    #[arg(long)]
    pub no_ack: bool,
}

/// A failed command and its exit code.
#[derive(Debug)]
pub(crate) struct Failed {
    pub code: i32,
    pub message: String,
}

impl From<ClientError> for Failed {
    fn from(e: ClientError) -> Self {
        let code = match &e {
            ClientError::Rejected(_) => 1,
            ClientError::Invalid(_) => 2,
            ClientError::Timeout(_) => 3,
            ClientError::Connect(_) | ClientError::Refused { .. } | ClientError::Closed => 4,
        };
        Failed {
            code,
            message: e.to_string(),
        }
    }
}

fn usage(message: String) -> Failed {
    Failed { code: 2, message }
}

pub(crate) async fn send(args: SendArgs) -> Result<(), Failed> {
    let data: Value = if args.json {
        serde_json::from_str(&args.text).map_err(|e| usage(format!("TEXT is not JSON: {e}")))?
    } else {
        json!({ "text": args.text })
    };
    let (default_kind, dest) = match (&args.to, &args.group) {
        (_, Some(group)) => ("group", group.clone()),
        (Some(to), None) => ("direct", to.clone()),
        (None, None) => return Err(usage("give --to CHANNEL or --group GROUP".into())),
    };
    let mut outgoing = Outgoing::new(args.kind.as_deref().unwrap_or(default_kind), &dest, data);
    if let Some(id) = &args.id {
        outgoing = outgoing.id(id)?;
    }
    let client = Client::connect(args.connect.config()?).await?;
    let mut sent = client.send(outgoing).await?;
    sent.stored().await?;
    let mut report = json!({"id": sent.id(), "stored": true});
    if args.wait_delivered {
        report["delivered_to"] = Value::String(sent.delivered().await?);
    }
    println!("{report}");
    client.close().await;
    Ok(())
}

pub(crate) async fn listen(args: ListenArgs) -> Result<(), Failed> {
    let mut config = args.connect.config()?;
    config.auto_ack = !args.no_ack;
    config.max_reconnects = None;
    let mut client = Client::connect(config).await?;
    let mut seen = 0u64;
    while args.count.is_none_or(|n| seen < n) {
        let received = tokio::select! {
            r = client.recv() => r,
            _ = tokio::signal::ctrl_c() => break,
        };
        let Some(received) = received else {
            return Err(Failed {
                code: 4,
                message: "connection closed".into(),
            });
        };
        let mut out = std::io::stdout().lock();
        let written = writeln!(out, "{}", received.raw).and_then(|()| out.flush());
        if written.is_err() {
            // stdout closed (e.g. piped into `head`): stop quietly.
            break;
        }
        seen += 1;
    }
    client.close().await;
    Ok(())
}
