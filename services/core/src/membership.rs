//! Membership rules as pure functions: roles, history visibility, and who
//! may change whose membership.
//!
//! The API asks [`decide`] before every membership change and maps a
//! [`Refusal`] to its HTTP answer (403 `forbidden`, 409 `conflict`); the
//! store only records what was allowed. Keeping the rules here, free of
//! I/O, lets one exhaustive unit test cover every (actor role, target,
//! action) combination.
//!
//! The rules:
//! - Roles are `owner`, `admin` and `member`. The creator of a group is its
//!   first owner; everyone else joins as a member.
//! - Only owners and admins add members. Owners remove anyone; admins
//!   remove plain members only. Anyone may leave.
//! - Only owners change roles (promote to admin or owner, demote). Handing
//!   over ownership is promoting another member to `owner`; the former owner
//!   stays an owner until they leave or step down.
//! - The last owner can neither leave nor step down while other members
//!   remain: hand over first (a [`Refusal::Conflict`]). The very last
//!   member may leave.
//! - Owners and admins change the conversation's settings
//!   ([`HistoryVisibility`]).
//! - A 1:1 conversation has fixed membership, no roles to change and fixed
//!   settings; either side may still leave.

use serde::{Deserialize, Serialize};

use crate::ids::UserId;

/// A member's role in a conversation, from most to least powerful.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Owner,
    Admin,
    Member,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Owner, Role::Admin, Role::Member];

    /// The stored and wire name (`owner`, `admin`, `member`).
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Admin => "admin",
            Role::Member => "member",
        }
    }

    /// Parses a wire or stored name; `None` for anything else.
    pub fn parse(raw: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|role| role.as_str() == raw)
    }

    /// The role of a stored member row. Rows written before roles existed
    /// have none: their conversation's creator (`created_by`) is the owner
    /// and everyone else a member, which is exactly the rule those
    /// conversations were created under, so no migration step rewrites
    /// them. An unreadable value gives the least power.
    pub fn resolve(stored: Option<&str>, user: &UserId, created_by: &UserId) -> Role {
        match stored {
            Some(raw) => Role::parse(raw).unwrap_or(Role::Member),
            None if user == created_by => Role::Owner,
            None => Role::Member,
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// Which messages a member sees in history and search.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HistoryVisibility {
    /// Every message of the conversation, also those sent before the member
    /// joined (the default, and what conversations created before this
    /// setting existed do).
    #[default]
    Shared,
    /// Only messages sent from the moment the member (last) joined.
    Joined,
}

impl HistoryVisibility {
    pub const ALL: [HistoryVisibility; 2] = [HistoryVisibility::Shared, HistoryVisibility::Joined];

    pub fn as_str(self) -> &'static str {
        match self {
            HistoryVisibility::Shared => "shared",
            HistoryVisibility::Joined => "joined",
        }
    }

    pub fn parse(raw: &str) -> Option<HistoryVisibility> {
        HistoryVisibility::ALL
            .into_iter()
            .find(|visibility| visibility.as_str() == raw)
    }

    /// The stored value; absent (older rows) is `shared`, an unreadable one
    /// the stricter `joined`.
    pub fn resolve(stored: Option<&str>) -> HistoryVisibility {
        match stored {
            None => HistoryVisibility::Shared,
            Some(raw) => HistoryVisibility::parse(raw).unwrap_or(HistoryVisibility::Joined),
        }
    }

    /// The oldest moment (unix ms) a member who joined at `joined_at_ms`
    /// may read from, or `None` for everything.
    pub fn visible_from_ms(self, joined_at_ms: u64) -> Option<u64> {
        match self {
            HistoryVisibility::Shared => None,
            HistoryVisibility::Joined => Some(joined_at_ms),
        }
    }
}

impl std::fmt::Display for HistoryVisibility {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// A 1:1 conversation (fixed membership) or a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConversationKind {
    Direct,
    Group,
}

/// Who holds power in a conversation, as far as a decision needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Headcount {
    /// Members holding the `owner` role.
    pub owners: u64,
    /// Members in all.
    pub members: u64,
}

/// A membership change the caller (the *actor*, already known to be a
/// member) asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Add another user (`target`: their role if already a member).
    Add { target: Option<Role> },
    /// Remove another user (`target`: their role, `None` if not a member).
    Remove { target: Option<Role> },
    /// Remove oneself.
    Leave { headcount: Headcount },
    /// Give a member (`target_is_self` for one's own) the role `to`.
    SetRole {
        target: Role,
        to: Role,
        target_is_self: bool,
        headcount: Headcount,
    },
    /// Change the conversation's settings.
    ChangeSettings,
}

/// Why [`decide`] refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Not allowed for the actor's role or in this kind of conversation
    /// (HTTP 403 `forbidden`).
    #[error("{0}")]
    Forbidden(&'static str),
    /// Allowed in principle, but not in the conversation's present state
    /// (HTTP 409 `conflict`): the last owner must hand over first.
    #[error("{0}")]
    Conflict(&'static str),
}

pub const FIXED_MEMBERSHIP: &str = "a 1:1 conversation has fixed membership";
pub const FIXED_ROLES: &str = "a 1:1 conversation has no roles to change";
pub const FIXED_SETTINGS: &str = "a 1:1 conversation has fixed settings";
pub const ONLY_ADMINS_ADD: &str = "only the conversation's owners and admins may add members";
pub const ONLY_ADMINS_REMOVE: &str =
    "only the conversation's owners and admins may remove other members";
pub const ADMINS_REMOVE_MEMBERS: &str =
    "admins may remove plain members only; owners and admins are removed by an owner";
pub const ONLY_OWNERS_SET_ROLES: &str = "only the conversation's owners may change roles";
pub const ONLY_ADMINS_SETTINGS: &str =
    "only the conversation's owners and admins may change its settings";
pub const LAST_OWNER_LEAVES: &str = "the last owner cannot leave while other members remain: \
     make another member an owner first (PATCH /v1/conversations/{id}/members/{user_id} \
     {\"role\":\"owner\"})";
pub const LAST_OWNER_STEPS_DOWN: &str = "the last owner cannot step down: make another member \
     an owner first (PATCH /v1/conversations/{id}/members/{user_id} {\"role\":\"owner\"})";

fn is_manager(role: Role) -> bool {
    matches!(role, Role::Owner | Role::Admin)
}

/// Whether `actor` may do `action` in a conversation of `kind`. Pure; see
/// the module documentation for the rules.
pub fn decide(kind: ConversationKind, actor: Role, action: Action) -> Result<(), Refusal> {
    match (kind, action) {
        (ConversationKind::Direct, Action::Leave { .. }) => Ok(()),
        (ConversationKind::Direct, Action::Add { .. } | Action::Remove { .. }) => {
            Err(Refusal::Forbidden(FIXED_MEMBERSHIP))
        }
        (ConversationKind::Direct, Action::SetRole { .. }) => Err(Refusal::Forbidden(FIXED_ROLES)),
        (ConversationKind::Direct, Action::ChangeSettings) => {
            Err(Refusal::Forbidden(FIXED_SETTINGS))
        }
        (ConversationKind::Group, Action::Add { .. }) => {
            if is_manager(actor) {
                Ok(())
            } else {
                Err(Refusal::Forbidden(ONLY_ADMINS_ADD))
            }
        }
        (ConversationKind::Group, Action::Remove { target }) => match actor {
            Role::Owner => Ok(()),
            // A user who is not a member counts as a plain one: removing
            // them changes nothing, and refusing would tell nothing new.
            Role::Admin if matches!(target, None | Some(Role::Member)) => Ok(()),
            Role::Admin => Err(Refusal::Forbidden(ADMINS_REMOVE_MEMBERS)),
            Role::Member => Err(Refusal::Forbidden(ONLY_ADMINS_REMOVE)),
        },
        (ConversationKind::Group, Action::Leave { headcount }) => {
            if actor == Role::Owner && headcount.owners <= 1 && headcount.members > 1 {
                Err(Refusal::Conflict(LAST_OWNER_LEAVES))
            } else {
                Ok(())
            }
        }
        (
            ConversationKind::Group,
            Action::SetRole {
                target,
                to,
                target_is_self,
                headcount,
            },
        ) => {
            if actor != Role::Owner {
                return Err(Refusal::Forbidden(ONLY_OWNERS_SET_ROLES));
            }
            let steps_down = target_is_self && target == Role::Owner && to != Role::Owner;
            if steps_down && headcount.owners <= 1 {
                return Err(Refusal::Conflict(LAST_OWNER_STEPS_DOWN));
            }
            Ok(())
        }
        (ConversationKind::Group, Action::ChangeSettings) => {
            if is_manager(actor) {
                Ok(())
            } else {
                Err(Refusal::Forbidden(ONLY_ADMINS_SETTINGS))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(raw: &str) -> UserId {
        UserId::parse(raw).unwrap()
    }

    const ALONE: Headcount = Headcount {
        owners: 1,
        members: 1,
    };
    const SOLE_OWNER: Headcount = Headcount {
        owners: 1,
        members: 5,
    };
    const TWO_OWNERS: Headcount = Headcount {
        owners: 2,
        members: 5,
    };

    fn targets() -> [Option<Role>; 4] {
        [
            None,
            Some(Role::Owner),
            Some(Role::Admin),
            Some(Role::Member),
        ]
    }

    #[test]
    fn names_round_trip_and_rows_without_a_role_make_the_creator_the_owner() {
        for role in Role::ALL {
            assert_eq!(Role::parse(role.as_str()), Some(role));
            assert_eq!(
                serde_json::to_value(role).unwrap(),
                serde_json::json!(role.as_str())
            );
        }
        for visibility in HistoryVisibility::ALL {
            assert_eq!(
                HistoryVisibility::parse(visibility.as_str()),
                Some(visibility)
            );
        }
        let (creator, other) = (user("creator"), user("other"));
        assert_eq!(Role::resolve(None, &creator, &creator), Role::Owner);
        assert_eq!(Role::resolve(None, &other, &creator), Role::Member);
        // A stored role wins over the fallback, both ways.
        assert_eq!(
            Role::resolve(Some("member"), &creator, &creator),
            Role::Member
        );
        assert_eq!(Role::resolve(Some("admin"), &other, &creator), Role::Admin);
        assert_eq!(Role::resolve(Some("root"), &other, &creator), Role::Member);
        assert_eq!(HistoryVisibility::resolve(None), HistoryVisibility::Shared);
        assert_eq!(
            HistoryVisibility::resolve(Some("joined")),
            HistoryVisibility::Joined
        );
        assert_eq!(
            HistoryVisibility::resolve(Some("bogus")),
            HistoryVisibility::Joined
        );
        assert_eq!(HistoryVisibility::Shared.visible_from_ms(7), None);
        assert_eq!(HistoryVisibility::Joined.visible_from_ms(7), Some(7));
    }

    /// Every (kind, actor role, action) combination, with the expected
    /// answer written out per case rather than recomputed.
    #[test]
    fn every_actor_target_and_action_is_decided_as_documented() {
        use ConversationKind::{Direct, Group};
        use Role::{Admin, Member, Owner};
        let forbidden = |message| Err(Refusal::Forbidden(message));
        for actor in Role::ALL {
            for target in targets() {
                // 1:1: nobody adds or removes anybody else.
                assert_eq!(
                    decide(Direct, actor, Action::Add { target }),
                    forbidden(FIXED_MEMBERSHIP)
                );
                assert_eq!(
                    decide(Direct, actor, Action::Remove { target }),
                    forbidden(FIXED_MEMBERSHIP)
                );
                // Groups: owners and admins add, members do not.
                let added = decide(Group, actor, Action::Add { target });
                match actor {
                    Owner | Admin => assert_eq!(added, Ok(()), "{actor} adds {target:?}"),
                    Member => assert_eq!(added, forbidden(ONLY_ADMINS_ADD)),
                }
                // Owners remove anyone; admins plain members (or users
                // who are not members); members nobody.
                let removed = decide(Group, actor, Action::Remove { target });
                let expected = match (actor, target) {
                    (Owner, _) => Ok(()),
                    (Admin, None | Some(Member)) => Ok(()),
                    (Admin, Some(Owner | Admin)) => forbidden(ADMINS_REMOVE_MEMBERS),
                    (Member, _) => forbidden(ONLY_ADMINS_REMOVE),
                };
                assert_eq!(removed, expected, "{actor} removes {target:?}");
            }
            // Anyone leaves; the last owner of a group with others in it
            // does not.
            for headcount in [ALONE, SOLE_OWNER, TWO_OWNERS] {
                assert_eq!(decide(Direct, actor, Action::Leave { headcount }), Ok(()));
                let expected = if actor == Owner && headcount == SOLE_OWNER {
                    Err(Refusal::Conflict(LAST_OWNER_LEAVES))
                } else {
                    Ok(())
                };
                assert_eq!(
                    decide(Group, actor, Action::Leave { headcount }),
                    expected,
                    "{actor} leaves {headcount:?}"
                );
            }
            // Settings: owners and admins of groups.
            assert_eq!(
                decide(Direct, actor, Action::ChangeSettings),
                forbidden(FIXED_SETTINGS)
            );
            assert_eq!(
                decide(Group, actor, Action::ChangeSettings),
                if actor == Member {
                    forbidden(ONLY_ADMINS_SETTINGS)
                } else {
                    Ok(())
                }
            );
            // Roles: only owners, never in a 1:1, and the last owner does
            // not step down.
            for target in Role::ALL {
                for to in Role::ALL {
                    for target_is_self in [false, true] {
                        for headcount in [SOLE_OWNER, TWO_OWNERS] {
                            let action = Action::SetRole {
                                target,
                                to,
                                target_is_self,
                                headcount,
                            };
                            assert_eq!(decide(Direct, actor, action), forbidden(FIXED_ROLES));
                            let expected = match actor {
                                Admin | Member => forbidden(ONLY_OWNERS_SET_ROLES),
                                Owner
                                    if target_is_self
                                        && target == Owner
                                        && to != Owner
                                        && headcount == SOLE_OWNER =>
                                {
                                    Err(Refusal::Conflict(LAST_OWNER_STEPS_DOWN))
                                }
                                Owner => Ok(()),
                            };
                            assert_eq!(
                                decide(Group, actor, action),
                                expected,
                                "{actor} sets {target} (self: {target_is_self}) to {to}, {headcount:?}"
                            );
                        }
                    }
                }
            }
        }
    }
}
