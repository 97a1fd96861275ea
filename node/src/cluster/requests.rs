//! Requests of this node waiting for an owner's [`Reply`], by id. Bounded; an entry
//! leaves when it is answered, when its node goes away, or when whoever waited for it is
//! gone (an HTTP caller that disconnected), so callers that give up cannot fill it.

use std::collections::HashMap;
use std::sync::Arc;

use relaymesh_proto::mesh::Reply;
use thiserror::Error;

/// Requests waiting for an answer, node-wide; more are refused as busy.
pub const REQUESTS_MAX: usize = 65_536;

#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum RequestError {
    #[error("too many requests are waiting for channel owners")]
    TooMany,
}

/// Where a request's answer goes.
pub trait Waiter {
    fn answer(self, reply: Reply);
    /// Nobody waits any more: the entry can go.
    fn is_gone(&self) -> bool;
}

pub struct Requests<W> {
    next: u64,
    waiting: HashMap<u64, (Arc<str>, W)>,
}

impl<W> Default for Requests<W> {
    fn default() -> Self {
        Requests {
            next: 0,
            waiting: HashMap::new(),
        }
    }
}

impl<W: Waiter> Requests<W> {
    /// A new request to `node`: its id, which the reply carries back.
    pub fn register(&mut self, node: &str, waiter: W) -> Result<u64, RequestError> {
        if self.waiting.len() >= REQUESTS_MAX {
            self.sweep();
            if self.waiting.len() >= REQUESTS_MAX {
                return Err(RequestError::TooMany);
            }
        }
        self.next += 1;
        self.waiting.insert(self.next, (node.into(), waiter));
        Ok(self.next)
    }

    pub fn complete(&mut self, reply: Reply) {
        if let Some((_, waiter)) = self.waiting.remove(&reply.request_id) {
            waiter.answer(reply);
        }
    }

    pub fn cancel(&mut self, id: u64) {
        self.waiting.remove(&id);
    }

    /// Fails every request waiting for `node` (its link went down, or it left).
    pub fn fail_node(&mut self, node: &str) {
        self.waiting
            .retain(|_, (waiting_for, _)| &**waiting_for != node);
    }

    /// Forgets the requests nobody waits for any more.
    pub fn sweep(&mut self) {
        self.waiting.retain(|_, (_, waiter)| !waiter.is_gone());
    }

    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::rc::Rc;

    /// A waiter whose caller can go away.
    struct Caller(Rc<Cell<bool>>);

    impl Waiter for Caller {
        fn answer(self, _: Reply) {}
        fn is_gone(&self) -> bool {
            self.0.get()
        }
    }

    #[test]
    fn callers_that_went_away_do_not_fill_the_table() {
        let mut requests = Requests::default();
        let gone = Rc::new(Cell::new(false));
        for _ in 0..REQUESTS_MAX {
            requests.register("b", Caller(gone.clone())).unwrap();
        }
        let alive = Rc::new(Cell::new(false));
        assert_eq!(
            requests.register("b", Caller(alive.clone())),
            Err(RequestError::TooMany),
            "every caller still waits"
        );
        gone.set(true);
        let id = requests.register("b", Caller(alive)).unwrap();
        assert_eq!(requests.len(), 1, "the abandoned entries were swept");
        requests.complete(Reply {
            request_id: id,
            ..Reply::default()
        });
        assert!(requests.is_empty());
    }
}
