//! Apps served by this node: credentials, limits and each app's runtime state (its hub,
//! its signed-in users, its live connections, its webhooks).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use relaymesh_proto::codes::ErrorCode;

use crate::config::{AppConfig, Config, SharedAppConfig, WebhookConfig};
use crate::frames;
use crate::hub::Hub;
use crate::outbox::{Conn, SocketId};
use crate::owner::Owner;
use crate::telemetry::NodeStats;
use crate::webhooks::{Outlet, Webhooks};

pub struct App {
    config: SharedAppConfig,
    /// The app id as a shared string for metric labels and webhook events.
    pub id: Arc<str>,
    /// This node's subscribers of the app's channels.
    pub hub: Hub,
    /// The app's channels this node owns.
    pub owner: Owner,
    pub webhooks: Webhooks,
    /// The node's message counters.
    pub stats: Arc<NodeStats>,
    /// Live connections, for the quota and for closing them all on shutdown.
    connections: Mutex<HashMap<SocketId, Arc<Conn>>>,
    connection_count: AtomicUsize,
    /// Signed-in users of this node → their connection count, for watchlist events.
    /// (Server-to-user events and termination reach users through their channel's owner.)
    users: Mutex<HashMap<Box<str>, usize>>,
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
    pub fn new(config: AppConfig, node: &NodeAppSettings) -> App {
        let id: Arc<str> = config.id.as_str().into();
        let config = SharedAppConfig::new(config);
        let webhooks = Webhooks::spawn(id.clone(), config.clone(), &node.webhooks, &node.outlet);
        App {
            hub: Hub::new(id.clone()),
            owner: Owner::new(id.clone(), config.clone(), node.cache_entries_max),
            config,
            id,
            webhooks,
            stats: node.stats.clone(),
            connections: Mutex::new(HashMap::new()),
            connection_count: AtomicUsize::new(0),
            users: Mutex::new(HashMap::new()),
            watchers: Mutex::new(HashMap::new()),
        }
    }

    /// Counts one frame received from a client.
    pub fn count_received(&self) {
        metrics::counter!(crate::telemetry::MESSAGES_IN, "app" => self.id.clone()).increment(1);
        self.stats.messages_in.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts frames queued to clients.
    pub fn count_delivered(&self, frames: usize) {
        metrics::counter!(crate::telemetry::MESSAGES_OUT, "app" => self.id.clone())
            .increment(frames as u64);
        self.stats
            .messages_out
            .fetch_add(frames as u64, Ordering::Relaxed);
    }

    /// The app's current settings.
    pub fn config(&self) -> Arc<AppConfig> {
        self.config.get()
    }

    /// Registers a new connection, within the app's quota.
    pub fn admit(&self, conn: &Arc<Conn>) -> Result<(), AdmitError> {
        let config = self.config();
        if !config.enabled {
            return Err(AdmitError::Disabled);
        }
        let mut connections = lock(&self.connections);
        if let Some(max) = config.max_connections {
            if connections.len() >= max {
                return Err(AdmitError::OverQuota);
            }
        }
        connections.insert(conn.socket_id, conn.clone());
        let n = connections.len();
        drop(connections);
        self.connection_count.store(n, Ordering::Relaxed);
        metrics::gauge!(crate::telemetry::CONNECTIONS, "app" => self.id.clone()).set(n as f64);
        metrics::counter!(crate::telemetry::CONNECTIONS_TOTAL, "app" => self.id.clone())
            .increment(1);
        Ok(())
    }

    pub fn release(&self, socket: SocketId) {
        let mut connections = lock(&self.connections);
        connections.remove(&socket);
        let n = connections.len();
        drop(connections);
        self.connection_count.store(n, Ordering::Relaxed);
        metrics::gauge!(crate::telemetry::CONNECTIONS, "app" => self.id.clone()).set(n as f64);
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
    pub fn sign_in(&self, user_id: &str) {
        let first = {
            let mut users = lock(&self.users);
            let conns = users.entry(user_id.into()).or_default();
            *conns += 1;
            *conns == 1
        };
        if first {
            self.tell_watchers(user_id, true);
        }
    }

    /// Forgets a signed-in connection; the user's last connection takes it offline.
    pub fn sign_out(&self, user_id: &str) {
        let last = {
            let mut users = lock(&self.users);
            let Some(conns) = users.get_mut(user_id) else {
                return;
            };
            *conns -= 1;
            let last = *conns == 0;
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
        if !self.config().watchlist_events {
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
        let encoded = frames::text_frame(&text);
        for watcher in watchers {
            watcher.push(encoded.clone());
        }
    }

    /// Registers `conn` as a watcher of `watchlist`; returns the frame with their current
    /// status.
    pub fn watch(&self, watchlist: &[Box<str>], conn: &Arc<Conn>) -> bytes::Bytes {
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
        frames::text_frame(&relaymesh_proto::frame::watchlist_events(&online, &offline))
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
}

/// What every app of a node shares: webhook settings and outlet, the cache bound.
pub struct NodeAppSettings {
    pub webhooks: WebhookConfig,
    /// Where the apps' webhook events go.
    pub outlet: Outlet,
    pub cache_entries_max: usize,
    pub stats: Arc<NodeStats>,
}

#[derive(Default)]
struct Index {
    by_key: HashMap<String, Arc<App>>,
    by_id: HashMap<String, Arc<App>>,
}

/// All apps, by key (WebSocket side) and by id (HTTP side). The set changes at run time
/// when a control plane creates, updates or deletes apps.
pub struct Apps {
    index: RwLock<Index>,
    settings: NodeAppSettings,
    /// The apps of the config file, served beside a control plane's.
    configured: Vec<AppConfig>,
}

impl Apps {
    pub fn new(config: &Config, outlet: Outlet, stats: Arc<NodeStats>) -> Apps {
        let apps = Apps {
            index: RwLock::new(Index::default()),
            settings: NodeAppSettings {
                webhooks: config.webhooks.clone(),
                outlet,
                cache_entries_max: config.cache_entries_max,
                stats,
            },
            configured: config.apps.clone(),
        };
        apps.sync(config.apps.clone());
        apps
    }

    /// Serves the control plane's `registry` beside the config file's apps; a registry app
    /// whose id or key a configured app already uses is left out.
    pub fn sync_registry(&self, registry: Vec<AppConfig>) {
        let mut all = self.configured.clone();
        for app in registry {
            if all.iter().any(|c| c.id == app.id || c.key == app.key) {
                tracing::warn!(
                    app_id = app.id,
                    "the config file defines this app: ignoring the control plane's"
                );
                continue;
            }
            all.push(app);
        }
        self.sync(all);
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Index> {
        self.index.read().unwrap_or_else(|e| e.into_inner())
    }

    pub fn by_key(&self, key: &str) -> Option<Arc<App>> {
        self.read().by_key.get(key).cloned()
    }

    pub fn by_id(&self, id: &str) -> Option<Arc<App>> {
        self.read().by_id.get(id).cloned()
    }

    pub fn all(&self) -> Vec<Arc<App>> {
        self.read().by_id.values().cloned().collect()
    }

    /// Makes the served apps exactly `configs`: new ones start, changed ones take their new
    /// settings at once, missing ones are removed and their clients closed with 4001.
    pub fn sync(&self, configs: Vec<AppConfig>) {
        let mut removed = Vec::new();
        {
            let mut index = self.index.write().unwrap_or_else(|e| e.into_inner());
            let mut next = Index::default();
            for config in configs {
                let app = match index.by_id.remove(&config.id) {
                    Some(app) => {
                        app.config.set(config.clone());
                        app
                    }
                    None => Arc::new(App::new(config.clone(), &self.settings)),
                };
                next.by_key.insert(config.key.clone(), app.clone());
                next.by_id.insert(config.id.clone(), app);
            }
            removed.extend(index.by_id.drain().map(|(_, app)| app));
            *index = next;
        }
        for app in removed {
            tracing::info!(app_id = %app.id, "app removed: closing its connections");
            app.close_all(ErrorCode::AppNotFound.as_u16(), "App was deleted");
        }
    }
}
