//! One module per subcommand; [`run`] dispatches.

mod engines;
mod roles;
mod token;
mod topology;

use crate::cli::{Cli, Command, TopologyAction};

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Token(args) => token::run(&cli.common, &args),
        Command::Secret { action } => token::secret(&action),
        Command::Topology {
            action: TopologyAction::Apply(args),
        } => topology::run(&cli.common, &args).await,
        Command::Edge(args) => roles::run_edge(&cli.common, &args).await,
        Command::Fanout(args) => roles::run_fanout(&cli.common, &args).await,
        Command::Persist(args) => roles::run_persist(&cli.common, &args).await,
        Command::Index(args) => roles::run_index(&cli.common, &args).await,
        Command::Api(args) => roles::run_api(&cli.common, &args).await,
        Command::All(args) => roles::run_all(&cli.common, &args).await,
    }
}
