//! Running a set of roles in one process until SIGINT/SIGTERM or the first
//! role that stops on its own, then waiting (under a deadline) for every
//! role to drain. `chatpipe <role>` supervises one role, `chatpipe all`
//! every role.

use std::time::Duration;

use chatpipe_runtime::Shutdown;
use futures::future::BoxFuture;

use crate::roles::{RoleError, RoleHandle, RoleKind, RunningRole};

/// How long the roles together may take to stop after the shutdown began.
pub const STOP_DEADLINE: Duration = Duration::from_secs(20);

type RoleFuture = BoxFuture<'static, (RoleKind, Result<(), RoleError>)>;

/// Roles started under one shutdown tree.
#[derive(Default)]
pub struct RoleSet {
    roles: Vec<RoleFuture>,
}

impl std::fmt::Debug for RoleSet {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "RoleSet({} roles)", self.roles.len())
    }
}

impl RoleSet {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push<R: RunningRole>(&mut self, handle: RoleHandle<R>) {
        let kind = handle.kind();
        self.roles
            .push(Box::pin(async move { (kind, handle.join().await) }));
    }

    pub fn len(&self) -> usize {
        self.roles.len()
    }

    pub fn is_empty(&self) -> bool {
        self.roles.is_empty()
    }
}

/// Waits for `root` to be cancelled (a signal) or for a role to stop on its
/// own (which cancels `root`), then for every role to stop, at most
/// [`STOP_DEADLINE`]. Returns the first role's failure, if any.
pub async fn supervise(root: Shutdown, roles: RoleSet) -> Result<(), RoleError> {
    let mut pending = roles.roles;
    let mut failure = None;
    if !pending.is_empty() {
        let first = tokio::select! {
            _ = root.cancelled() => None,
            ((kind, outcome), index, _) = futures::future::select_all(pending.iter_mut()) => {
                Some((kind, outcome, index))
            }
        };
        if let Some((kind, outcome, index)) = first {
            // That future is complete; it must not be polled again.
            drop(pending.remove(index));
            match outcome {
                Ok(()) => tracing::warn!(role = %kind, "a role stopped on its own; shutting down"),
                Err(error) => {
                    tracing::error!(role = %kind, %error, "a role failed; shutting down");
                    failure = Some(error);
                }
            }
        }
    }
    root.cancel();
    match tokio::time::timeout(STOP_DEADLINE, futures::future::join_all(pending)).await {
        Ok(outcomes) => {
            for (kind, outcome) in outcomes {
                if let Err(error) = outcome {
                    tracing::error!(role = %kind, %error, "a role failed while stopping");
                    failure.get_or_insert(error);
                }
            }
        }
        Err(_elapsed) => {
            tracing::warn!(deadline = ?STOP_DEADLINE, "some roles did not stop in time");
        }
    }
    match failure {
        Some(error) => Err(error),
        None => Ok(()),
    }
}
