//! `letterbox`: the command line. It only parses and dispatches: each subcommand lives in
//! `src/cli/<name>.rs`.

use std::path::Path;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use letterbox::{cli, init};

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
    Check(cli::check::Args),
    /// Read a password from the terminal (or stdin) and print a hash for letterbox.toml.
    Passwd,
    /// Add, list or delete mail accounts in a provisioning file or an SD image, offline.
    Account(cli::account::Args),
    /// Build the SD-card image from a provisioning file (the embedded default when omitted).
    Build(cli::build::Args),
    /// Build the letterbox-mail OCI image (Postfix, Dovecot), or with --image webmail the
    /// letterbox-webmail one (Roundcube, PHP-FPM, nginx), and print its manifest digest.
    MailImage(cli::mail_image::Args),
    /// Boot an image under qemu-system-aarch64 -M raspi3b, serial console on this terminal.
    Qemu(cli::qemu::Args),
    /// Configure or show the network of the current network namespace.
    Net {
        #[command(subcommand)]
        command: cli::net::NetCommand,
    },
    /// Run the agent on this host: network, console login and services, as on the
    /// appliance but without mounting, reaping orphans or rebooting (it exits instead).
    Run(cli::run::Args),
    /// Send an admin command (`status`, `restart dns`, `help`, ...) to a running agent.
    Ctl(cli::ctl::Args),
    /// Print the DNS zone derived from a provisioning file, in master-file format.
    Zone(cli::zone::Args),
    /// The authoritative DNS server.
    Dns {
        #[command(subcommand)]
        command: cli::dns::DnsCommand,
    },
}

/// hickory-server allocates several times per query: mimalloc takes about a tenth off
/// the DNS server's CPU time per query against glibc's malloc (`make bench-dns`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc.h's `mi_option_arena_eager_commit` (the fifth option, in v2 and v3), which
/// libmimalloc-sys does not name.
const MI_OPTION_ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;

/// Runs before `main` and before Rust's first allocation (an `.init_array` constructor):
/// mimalloc commits each arena it reserves at once by default, which kept ~18 MB resident
/// in an idle agent (`make bench-mail`); committed on demand, the agent stays under 10 MB.
/// It must be set before mimalloc reserves its first arena.
#[used]
#[link_section = ".init_array"]
static COMMIT_ON_DEMAND: extern "C" fn() = {
    extern "C" fn commit_on_demand() {
        // SAFETY: sets one of mimalloc's integer options; no allocation has happened yet.
        unsafe {
            libmimalloc_sys::mi_option_set(MI_OPTION_ARENA_EAGER_COMMIT, 0);
        }
    }
    commit_on_demand
};

fn main() -> ExitCode {
    // One static binary: installed as /init and /sbin/letterbox-init it is the init agent.
    let argv0 = std::env::args_os().next().unwrap_or_default();
    let called_as = Path::new(&argv0).file_name().unwrap_or_default();
    if called_as == "init" || called_as == "letterbox-init" {
        return init::main_pid1(init::InitArgs::from_command_line());
    }
    let result = match Cli::parse().command {
        Command::Check(args) => cli::check::run(args),
        Command::Passwd => cli::passwd::run(),
        Command::Account(args) => cli::account::run(args),
        Command::Build(args) => cli::build::run(args),
        Command::MailImage(args) => cli::mail_image::run(args),
        Command::Qemu(args) => cli::qemu::run(args),
        Command::Net { command } => cli::net::run(command),
        Command::Run(args) => cli::run::run(args),
        Command::Ctl(args) => cli::ctl::run(args),
        Command::Zone(args) => cli::zone::run(args),
        Command::Dns { command } => cli::dns::run(command),
    };
    result.unwrap_or_else(|err| {
        eprintln!("letterbox: {}", letterbox::error_chain(err.as_ref()));
        ExitCode::FAILURE
    })
}
