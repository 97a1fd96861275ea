//! A presence channel's roster: user id → info and the number of local connections that
//! carry the user. A user is a member from its first connection to its last.

use std::collections::BTreeMap;

use relaymesh_proto::frame::PresenceMember;
use relaymesh_proto::mesh;
use serde_json::value::RawValue;

struct Member {
    info: Option<Box<RawValue>>,
    connections: u32,
}

/// Ordered by user id so the roster sent to clients (ids and hash of
/// `subscription_succeeded`, `Reply.users`) is deterministic.
#[derive(Default)]
pub struct Roster {
    members: BTreeMap<String, Member>,
}

impl Roster {
    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    pub fn contains(&self, user_id: &str) -> bool {
        self.members.contains_key(user_id)
    }

    /// Adds one connection of `member`; true when it is the user's first.
    pub fn join(&mut self, member: PresenceMember) -> bool {
        match self.members.get_mut(&member.user_id) {
            Some(existing) => {
                existing.connections += 1;
                false
            }
            None => {
                self.members.insert(
                    member.user_id,
                    Member {
                        info: member.user_info,
                        connections: 1,
                    },
                );
                true
            }
        }
    }

    /// Removes one connection of `user_id`; true when it was the user's last.
    pub fn leave(&mut self, user_id: &str) -> bool {
        let Some(member) = self.members.get_mut(user_id) else {
            return false;
        };
        member.connections -= 1;
        if member.connections == 0 {
            self.members.remove(user_id);
            return true;
        }
        false
    }

    /// The user's info: `Some(None)` for a member without info, `None` for a non-member.
    pub fn info(&self, user_id: &str) -> Option<Option<&RawValue>> {
        self.members.get(user_id).map(|m| m.info.as_deref())
    }

    pub fn members(&self) -> impl Iterator<Item = (&str, Option<&RawValue>)> + Clone {
        self.members
            .iter()
            .map(|(id, m)| (id.as_str(), m.info.as_deref()))
    }
}

/// The member a Subscribe carries; `None` when it is missing or its info is not JSON.
pub(super) fn member_of(member: Option<mesh::Member>) -> Option<PresenceMember> {
    let member = member?;
    let user_info = if member.info.is_empty() {
        None
    } else {
        let text = String::from_utf8(member.info.to_vec()).ok()?;
        Some(RawValue::from_string(text).ok()?)
    };
    Some(PresenceMember {
        user_id: member.user_id,
        user_info,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: &str) -> PresenceMember {
        PresenceMember {
            user_id: id.into(),
            user_info: None,
        }
    }

    #[test]
    fn first_join_and_last_leave_only() {
        let mut roster = Roster::default();
        assert!(roster.join(member("a")));
        assert!(!roster.join(member("a")));
        assert!(roster.join(member("b")));
        assert_eq!(roster.len(), 2);
        assert!(!roster.leave("a"));
        assert!(roster.leave("a"));
        assert!(!roster.leave("a"));
        assert!(roster.leave("b"));
        assert!(roster.is_empty());
    }
}
