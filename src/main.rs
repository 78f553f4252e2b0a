//! `letterbox`: the command line. Each subcommand dispatches to the module that owns it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use letterbox::{config, dns, image, init, net, passwd};

#[derive(Parser)]
#[command(
    name = "letterbox",
    version,
    about = "Self-hosted mail appliance for the Raspberry Pi"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check a provisioning file; prints every error with file, line and column.
    Check {
        /// The file to check; the embedded default when omitted.
        file: Option<PathBuf>,
    },
    /// Read a password from the terminal (or stdin) and print a hash for letterbox.toml.
    Passwd,
    /// Build the SD-card image from a provisioning file (the embedded default when omitted).
    Build {
        file: Option<PathBuf>,
        #[arg(long, value_enum, default_value_t = image::Board::Rpi3)]
        board: image::Board,
        /// The image to write; out/letterbox-BOARD.img when omitted.
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// The cross-built static aarch64 agent to install.
        #[arg(
            long,
            default_value = "target-aarch64/aarch64-unknown-linux-gnu/release/letterbox"
        )]
        agent: PathBuf,
        /// Download cache and unpacked packages.
        #[arg(long, default_value = ".cache")]
        cache: PathBuf,
    },
    /// Boot an image under qemu-system-aarch64 -M raspi3b, serial console on this terminal.
    Qemu {
        image: PathBuf,
        /// Host port forwarded to the appliance's DNS server (UDP and TCP 53).
        #[arg(long, default_value_t = 5353)]
        dns_port: u16,
    },
    /// Configure or show the network of the current network namespace.
    Net {
        #[command(subcommand)]
        command: NetCommand,
    },
    /// Run the agent on this host: network, console login and services, as on the
    /// appliance but without mounting, reaping orphans or rebooting (it exits instead).
    Run {
        /// The provisioning file; the embedded default when omitted.
        file: Option<PathBuf>,
        /// State directory (keeps the last good configuration).
        #[arg(long)]
        state: PathBuf,
        /// Console device for the login (a tty or pty path, or a name such as ttyS0).
        #[arg(long)]
        console: Option<String>,
        /// Where /etc/hostname, /etc/hosts and /etc/resolv.conf are written [default: STATE/root].
        #[arg(long)]
        root: Option<PathBuf>,
    },
    /// Print the DNS zone derived from a provisioning file, in master-file format.
    Zone {
        /// The provisioning file; the embedded default when omitted.
        file: Option<PathBuf>,
        /// State directory: DKIM keys, and the SOA serial the server would serve for this
        /// content (read only: the serial is recorded by the server, never by this
        /// command). Without it: no DKIM records, and today's date-based serial.
        #[arg(long)]
        state: Option<PathBuf>,
        /// Print with this SOA serial instead (nothing is recorded).
        #[arg(long)]
        serial: Option<u32>,
    },
    /// The authoritative DNS server.
    Dns {
        #[command(subcommand)]
        command: DnsCommand,
    },
}

#[derive(Subcommand)]
enum NetCommand {
    /// Apply the file's interfaces, addresses, routes and system names; exits 1 if any failed.
    Apply {
        /// The provisioning file; the embedded default when omitted.
        file: Option<PathBuf>,
        /// Where /etc/hostname, /etc/hosts, /etc/resolv.conf and /etc/timezone are written.
        #[arg(long, default_value = "/")]
        root: PathBuf,
    },
    /// List links with their addresses and default routes, as the kernel reports them.
    Show,
}

#[derive(Subcommand)]
enum DnsCommand {
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

/// hickory-server allocates several times per query: mimalloc takes about a tenth off
/// the DNS server's CPU time per query against glibc's malloc (`make bench-dns`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // One static binary: installed as /init and /sbin/letterbox-init it is the init agent.
    let argv0 = std::env::args_os().next().unwrap_or_default();
    let called_as = Path::new(&argv0).file_name().unwrap_or_default();
    if called_as == "init" || called_as == "letterbox-init" {
        return init::main_pid1(init::InitArgs::from_command_line());
    }
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("letterbox: {}", letterbox::error_chain(err.as_ref()));
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode, Box<dyn std::error::Error>> {
    match cli.command {
        Command::Check { file } => {
            let Some(cfg) = load_or_report(file.as_deref())? else {
                return Ok(ExitCode::FAILURE);
            };
            println!(
                "ok: {} ({} interface{})",
                cfg.system.fqdn(),
                cfg.interfaces.len(),
                if cfg.interfaces.len() == 1 { "" } else { "s" }
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Build {
            file,
            board,
            output,
            agent,
            cache,
        } => {
            let opts = image::BuildOptions {
                config: file,
                board,
                output: output.unwrap_or_else(|| format!("out/letterbox-{board}.img").into()),
                agent,
                cache_dir: cache,
                source_date_epoch: image::BuildOptions::epoch_from_env(),
                progress: true,
            };
            match image::build(&opts) {
                Ok(summary) => {
                    println!("{summary}");
                    Ok(ExitCode::SUCCESS)
                }
                Err(image::ImageError::Config(diagnostics)) => {
                    eprintln!("{diagnostics}");
                    eprintln!("letterbox: not building an image from a broken provisioning file");
                    Ok(ExitCode::FAILURE)
                }
                Err(e) => Err(e.into()),
            }
        }
        Command::Qemu {
            image: path,
            dns_port,
        } => {
            let work = PathBuf::from(format!("{}.qemu", path.display()));
            let prepared = image::qemu::prepare(&path, &work)?;
            let forwards = [
                format!("udp:127.0.0.1:{dns_port}-:53"),
                format!("tcp:127.0.0.1:{dns_port}-:53"),
            ];
            // Become QEMU: signals (^C, a script's kill) then reach it, not a parent.
            let err = std::os::unix::process::CommandExt::exec(&mut image::qemu::command(
                &prepared, "stdio", &forwards,
            ));
            Err(format!("cannot run qemu-system-aarch64: {err}").into())
        }
        Command::Run {
            file,
            state,
            console,
            root,
        } => Ok(init::start(init::Options {
            mode: init::Mode::Host,
            provisioning_file: file,
            system_root: root.unwrap_or_else(|| state.join("root")),
            state_dir: state,
            console,
        })),
        Command::Zone {
            file,
            state,
            serial,
        } => {
            let Some(cfg) = load_or_report(file.as_deref())? else {
                return Ok(ExitCode::FAILURE);
            };
            let zone = match state {
                Some(state) => dns::Zone::preview(&cfg, &state, serial)?,
                None => dns::build(
                    &cfg,
                    &dns::Sources::default(),
                    serial.unwrap_or_else(dns::today_serial),
                )?,
            };
            print!("{}", zone.render());
            Ok(ExitCode::SUCCESS)
        }
        Command::Dns {
            command:
                DnsCommand::Serve {
                    file,
                    listen,
                    state,
                    threads,
                },
        } => {
            let Some(cfg) = load_or_report(file.as_deref())? else {
                return Ok(ExitCode::FAILURE);
            };
            let threads = threads.unwrap_or_else(|| {
                std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
            });
            // UDP runs on the server's own threads: this runtime has TCP, signals and
            // reloads.
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()?;
            runtime.block_on(serve_dns(file, cfg, listen, state, threads))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Passwd => {
            println!("{}", passwd::prompt_and_hash()?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Net { command } => run_net(command),
    }
}

fn run_net(command: NetCommand) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match command {
        NetCommand::Apply { file, root } => {
            let Some(cfg) = load_or_report(file.as_deref())? else {
                return Ok(ExitCode::FAILURE);
            };
            let report = runtime.block_on(net::apply(&cfg, &root))?;
            println!("{report}");
            Ok(if report.failed() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
        NetCommand::Show => {
            for link in runtime.block_on(net::snapshot())? {
                println!("{link}");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Loads a provisioning file, printing its diagnostics; `None` when it is invalid.
fn load_or_report(file: Option<&Path>) -> Result<Option<config::Config>, config::LoadError> {
    match config::load(file) {
        Ok((cfg, _)) => Ok(Some(cfg)),
        Err(config::LoadError::Invalid(diagnostics)) => {
            eprintln!("{diagnostics}");
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// `letterbox dns serve`: runs until the server fails or SIGTERM/SIGINT; SIGHUP rereads
/// the file and swaps the zone in, keeping the old one when the new file is invalid.
async fn serve_dns(
    file: Option<PathBuf>,
    cfg: config::Config,
    listen: Vec<SocketAddr>,
    state: PathBuf,
    threads: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    use tokio::signal::unix::{signal, SignalKind};
    // NOTIFY outcomes and reloads are the operator's business: log them to stderr.
    if log::set_logger(&StderrLogger).is_ok() {
        log::set_max_level(log::LevelFilter::Info);
    }
    let listen = if listen.is_empty() {
        dns::listen_addrs(&cfg)
    } else {
        listen
    };
    let server = dns::DnsServer::start(&cfg, state, &listen, threads).await?;
    let handle = server.handle();
    eprintln!("letterbox dns: serving serial {}", handle.serial());
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let run = server.run();
    tokio::pin!(run);
    loop {
        tokio::select! {
            result = &mut run => return Ok(result?),
            _ = term.recv() => return Ok(()),
            _ = tokio::signal::ctrl_c() => return Ok(()),
            _ = hup.recv() => match load_or_report(file.as_deref()) {
                Ok(Some(cfg)) => match reload_off_runtime(&handle, cfg).await {
                    Ok(serial) => eprintln!("letterbox dns: reloaded, serving serial {serial}"),
                    Err(e) => {
                        eprintln!("letterbox dns: reload failed, still serving the old zone: {e}")
                    }
                },
                Ok(None) => eprintln!("letterbox dns: invalid file, still serving the old zone"),
                Err(e) => eprintln!(
                    "letterbox dns: cannot reload, still serving the old zone: {}",
                    letterbox::error_chain(&e)
                ),
            },
        }
    }
}

/// Reloads on the blocking pool: it reads files and fsyncs the serial.
async fn reload_off_runtime(handle: &dns::DnsHandle, cfg: config::Config) -> Result<u32, String> {
    let handle = handle.clone();
    match tokio::task::spawn_blocking(move || handle.reload(&cfg)).await {
        Ok(result) => result.map_err(|e| letterbox::error_chain(&e)),
        Err(e) => Err(format!("the reload task failed: {e}")),
    }
}

/// Logs letterbox's own records (not its dependencies') to stderr, one line each.
struct StderrLogger;

impl log::Log for StderrLogger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.target().starts_with("letterbox")
    }

    fn log(&self, record: &log::Record) {
        if self.enabled(record.metadata()) {
            eprintln!("letterbox: {}: {}", record.level(), record.args());
        }
    }

    fn flush(&self) {}
}
