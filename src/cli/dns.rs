//! `letterbox dns serve`: the authoritative DNS server on its own, outside the agent.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use tokio::signal::unix::{signal, SignalKind};

use super::CliResult;
use crate::{config, dns};

#[derive(Debug, clap::Subcommand)]
pub enum DnsCommand {
    /// Serve the zone over UDP and TCP until stopped; SIGHUP rereads the file.
    Serve {
        /// The provisioning file; the embedded default when omitted.
        file: Option<PathBuf>,
        /// Address and port to serve on (repeatable); default `[dns] listen`, else port
        /// 53 on every interface address of the file.
        #[arg(long)]
        listen: Vec<SocketAddr>,
        /// State directory: DKIM keys and the SOA serial.
        #[arg(long, default_value = "/var/lib/letterbox")]
        state: PathBuf,
        /// UDP worker threads for each address; default: one per CPU.
        #[arg(long)]
        threads: Option<usize>,
    },
}

pub fn run(command: DnsCommand) -> CliResult {
    let DnsCommand::Serve {
        file,
        listen,
        state,
        threads,
    } = command;
    let Some(cfg) = super::load_or_report(file.as_deref())? else {
        return Ok(ExitCode::FAILURE);
    };
    let threads = threads.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    });
    // NOTIFY outcomes and reloads are the operator's business: the agent's logger, on stderr.
    crate::supervise::log::logger().log_to_stderr(false);
    // UDP runs on the server's own threads: this runtime has TCP, signals and reloads.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    runtime.block_on(serve(file, cfg, listen, state, threads))?;
    Ok(ExitCode::SUCCESS)
}

/// Runs until the server fails or SIGTERM/SIGINT; SIGHUP rereads the file and swaps the
/// zone in, keeping the old one when the new file is invalid.
async fn serve(
    file: Option<PathBuf>,
    cfg: config::Config,
    listen: Vec<SocketAddr>,
    state: PathBuf,
    threads: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    let listen = if listen.is_empty() {
        dns::listen_addrs(&cfg)
    } else {
        listen
    };
    let mut server = dns::DnsServer::start(&cfg, state, &listen, threads).await?;
    let handle = server.handle();
    eprintln!("letterbox dns: serving serial {}", handle.serial());
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    loop {
        tokio::select! {
            result = server.run() => return Ok(result?),
            _ = term.recv() => return Ok(()),
            _ = tokio::signal::ctrl_c() => return Ok(()),
            _ = hup.recv() => match super::load_or_report(file.as_deref()) {
                Ok(Some(cfg)) => {
                    let handle = handle.clone();
                    match tokio::task::spawn_blocking(move || handle.reload(&cfg)).await {
                        Ok(Ok(serial)) => {
                            eprintln!("letterbox dns: reloaded, serving serial {serial}")
                        }
                        Ok(Err(e)) => eprintln!(
                            "letterbox dns: reload failed, still serving the old zone: {}",
                            crate::error_chain(&e)
                        ),
                        Err(e) => eprintln!("letterbox dns: the reload task failed: {e}"),
                    }
                }
                Ok(None) => eprintln!("letterbox dns: invalid file, still serving the old zone"),
                Err(e) => eprintln!(
                    "letterbox dns: cannot reload, still serving the old zone: {}",
                    crate::error_chain(&e)
                ),
            },
        }
    }
}
