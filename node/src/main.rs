//! The `chorus` binary: one tool with verbs, like `etcdctl` or `cockroach`.

#[cfg(not(madsim))]
mod cli;

#[cfg(not(madsim))]
fn main() -> std::process::ExitCode {
    use clap::Parser;
    let cli = cli::Cli::parse();
    match cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The binary talks to real sockets, terminals and signals; simulations drive the library.
#[cfg(madsim)]
fn main() {
    eprintln!("the chorus binary does not run under madsim; the simulations in sim/ use the library");
    std::process::exit(2);
}
