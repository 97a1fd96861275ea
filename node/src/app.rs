//! Apps served by this node: credentials, limits and each app's runtime state (its hub,
//! its signed-in users, its live connections, its webhooks).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::config::{AppConfig, Config};
use crate::edge::outbox::{Conn, SocketId};
use crate::hub::Hub;
use crate::webhooks::Webhooks;

pub struct App {
    pub config: AppConfig,
    /// The app id as a shared string for metric labels and webhook events.
    pub id: Arc<str>,
    pub hub: Hub,
    pub webhooks: Option<Webhooks>,
    /// Live connections, for the quota and for closing them all on shutdown.
    connections: Mutex<HashMap<SocketId, Arc<Conn>>>,
    connection_count: AtomicUsize,
    /// Signed-in users → their connections, for server-to-user events and termination.
    users: Mutex<HashMap<Box<str>, Vec<Arc<Conn>>>>,
    /// Watched user id → the connections whose watchlist names it.
    watchers: Mutex<HashMap<Box<str>, Vec<Arc<Conn>>>>,
}

/// Why a connection was refused by its app.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdmitError {
    Disabled,
    OverQuota,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section here is a map insert or remove: a poisoned lock is still valid.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl App {
    pub fn new(config: AppConfig, node: &Config, http: &reqwest::Client) -> App {
        let id: Arc<str> = config.id.as_str().into();
        let webhooks = Webhooks::spawn(&config, &node.webhooks, http.clone());
        let hub = Hub::new(
            id.clone(),
            webhooks.clone(),
            config.max_presence_members,
            Duration::from_secs(config.cache_ttl_secs),
            node.cache_entries_max,
        );
        App {
            config,
            id,
            hub,
            webhooks,
            connections: Mutex::new(HashMap::new()),
            connection_count: AtomicUsize::new(0),
            users: Mutex::new(HashMap::new()),
            watchers: Mutex::new(HashMap::new()),
        }
    }

    /// Registers a new connection, within the app's quota.
    pub fn admit(&self, conn: &Arc<Conn>) -> Result<(), AdmitError> {
        if !self.config.enabled {
            return Err(AdmitError::Disabled);
        }
        let mut connections = lock(&self.connections);
        if let Some(max) = self.config.max_connections {
            if connections.len() >= max {
                return Err(AdmitError::OverQuota);
            }
        }
        connections.insert(conn.socket_id, conn.clone());
        let n = connections.len();
        drop(connections);
        self.connection_count.store(n, Ordering::Relaxed);
        metrics::gauge!(crate::telemetry::CONNECTIONS, "app" => self.id.to_string()).set(n as f64);
        metrics::counter!(crate::telemetry::CONNECTIONS_TOTAL, "app" => self.id.to_string())
            .increment(1);
        Ok(())
    }

    pub fn release(&self, socket: SocketId) {
        let mut connections = lock(&self.connections);
        connections.remove(&socket);
        let n = connections.len();
        drop(connections);
        self.connection_count.store(n, Ordering::Relaxed);
        metrics::gauge!(crate::telemetry::CONNECTIONS, "app" => self.id.to_string()).set(n as f64);
    }

    pub fn connection_count(&self) -> usize {
        self.connection_count.load(Ordering::Relaxed)
    }

    /// Asks every connection to close with `code` after its queued frames.
    pub fn close_all(&self, code: u16, reason: &'static str) {
        for conn in lock(&self.connections).values() {
            conn.close(code, reason);
        }
    }

    /// Records a signed-in connection; the user's first connection brings it online.
    pub fn sign_in(&self, user_id: &str, conn: &Arc<Conn>) {
        let first = {
            let mut users = lock(&self.users);
            let conns = users.entry(user_id.into()).or_default();
            conns.push(conn.clone());
            conns.len() == 1
        };
        if first {
            self.tell_watchers(user_id, true);
        }
    }

    /// Forgets a signed-in connection; the user's last connection takes it offline.
    pub fn sign_out(&self, user_id: &str, socket: SocketId) {
        let last = {
            let mut users = lock(&self.users);
            let Some(conns) = users.get_mut(user_id) else {
                return;
            };
            conns.retain(|c| c.socket_id != socket);
            let last = conns.is_empty();
            if last {
                users.remove(user_id);
            }
            last
        };
        if last {
            self.tell_watchers(user_id, false);
        }
    }

    fn tell_watchers(&self, user_id: &str, online: bool) {
        if !self.config.watchlist_events {
            return;
        }
        let watchers = lock(&self.watchers)
            .get(user_id)
            .cloned()
            .unwrap_or_default();
        if watchers.is_empty() {
            return;
        }
        let ids = [user_id];
        let text = if online {
            relaymesh_proto::frame::watchlist_events(&ids, &[])
        } else {
            relaymesh_proto::frame::watchlist_events(&[], &ids)
        };
        let encoded = crate::edge::ws::codec::text_frame(&text);
        for watcher in watchers {
            watcher.push(encoded.clone());
        }
    }

    /// Registers `conn` as a watcher of `watchlist` and sends it their current status.
    pub fn watch(&self, watchlist: &[Box<str>], conn: &Arc<Conn>) {
        {
            let mut watchers = lock(&self.watchers);
            for id in watchlist {
                watchers.entry(id.clone()).or_default().push(conn.clone());
            }
        }
        let (online, offline): (Vec<&str>, Vec<&str>) = {
            let users = lock(&self.users);
            watchlist
                .iter()
                .map(|id| &**id)
                .partition(|id| users.contains_key(*id))
        };
        conn.push_text(&relaymesh_proto::frame::watchlist_events(&online, &offline));
    }

    pub fn unwatch(&self, watchlist: &[Box<str>], socket: SocketId) {
        let mut watchers = lock(&self.watchers);
        for id in watchlist {
            if let Some(conns) = watchers.get_mut(id) {
                conns.retain(|c| c.socket_id != socket);
                if conns.is_empty() {
                    watchers.remove(id);
                }
            }
        }
    }

    /// The connections signed in as `user_id`.
    pub fn user_connections(&self, user_id: &str) -> Vec<Arc<Conn>> {
        lock(&self.users).get(user_id).cloned().unwrap_or_default()
    }
}

/// All apps, by key (WebSocket side) and by id (HTTP side).
pub struct Apps {
    by_key: HashMap<String, Arc<App>>,
    by_id: HashMap<String, Arc<App>>,
}

impl Apps {
    pub fn new(config: &Config, http: &reqwest::Client) -> Apps {
        let mut by_key = HashMap::new();
        let mut by_id = HashMap::new();
        for app in &config.apps {
            let app = Arc::new(App::new(app.clone(), config, http));
            by_key.insert(app.config.key.clone(), app.clone());
            by_id.insert(app.config.id.clone(), app);
        }
        Apps { by_key, by_id }
    }

    pub fn by_key(&self, key: &str) -> Option<&Arc<App>> {
        self.by_key.get(key)
    }

    pub fn by_id(&self, id: &str) -> Option<&Arc<App>> {
        self.by_id.get(id)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<App>> {
        self.by_id.values()
    }
}
