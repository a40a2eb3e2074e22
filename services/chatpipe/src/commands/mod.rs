//! One module per subcommand; [`run`] dispatches.

mod engines;
mod roles;
mod token;
mod topology;

use crate::cli::{Cli, Command, TopologyAction};

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Token(args) => token::run(&cli.common, &args),
        Command::Topology {
            action: TopologyAction::Apply(args),
        } => topology::run(&cli.common, &args).await,
        Command::Edge(args) => roles::run_edge(&cli.common, &args).await,
        Command::Fanout(_)
        | Command::Persist(_)
        | Command::Index(_)
        | Command::Api(_)
        | Command::All(_) => {
            anyhow::bail!("this role is not wired into the binary yet")
        }
    }
}
