//! `channels`: many channels with few subscribers each; event `i` goes to channel
//! `i mod channels`, and an event arriving on a connection of another channel counts as
//! misrouted.

use super::{publish_run, Publishing};
use crate::load::report::Report;
use crate::load::session::Session;

pub async fn run(
    channels: u64,
    subs_per_channel: u64,
    publishing: &Publishing,
    session: &Session,
) -> Report {
    let channels = channels.max(1);
    publish_run(
        "channels",
        channels,
        channels * subs_per_channel,
        publishing,
        session,
    )
    .await
}
