//! `fanout`: `subs` subscribers of one public channel; events published over
//! `POST /apps/{id}/events`, closed loop or paced.

use super::{publish_run, Publishing};
use crate::load::report::Report;
use crate::load::session::Session;

pub async fn run(subs: u64, publishing: &Publishing, session: &Session) -> Report {
    publish_run("fanout", 1, subs, publishing, session).await
}
