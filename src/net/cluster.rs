//! Many nodes, one Redis: the node registry (heartbeat, alternates for 300 Try Alternate) and
//! cluster-wide allocation quotas held as leases. Runs on the control runtime; workers reach it
//! through a channel and get answers as commands, so no worker ever waits on Redis.
//!
//! No lease request waits for another one or for the heartbeat: each Redis exchange runs as its
//! own task on the shared multiplexed connection. Once an exchange fails (an error, or no answer
//! within the command timeout), leases are granted on the node's own count at once, without
//! asking Redis, until a heartbeat gets through again; every heartbeat (re)writes all the leases
//! the node holds, so those granted meanwhile, or lost with Redis, count again.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::auth::redis::{connect, timed};
use crate::auth::{CredentialKind, Principal};
use crate::clock::unix_now;
use crate::config::Transport;
use crate::turn::{AllocationId, Alternate};

use super::{BoundListener, Command, Commander};

/// How often leases are renewed and the registry entry refreshed.
const HEARTBEAT: Duration = Duration::from_secs(1);
/// A node's registry entry lives this long past its last heartbeat (seconds).
const NODE_LIVE_FOR: u64 = 5;
/// A failure like the last one warned about is warned about again only after this long: a
/// Redis that refuses every lease script while answering heartbeats would otherwise fill the
/// log.
const WARN_INTERVAL: Duration = Duration::from_secs(60);

/// Counts the user's live leases and takes one if fewer than the limit: atomic in Redis.
const ACQUIRE: &str = r"
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], ARGV[3], ARGV[4])
  redis.call('EXPIRE', KEYS[1], ARGV[5])
  return 1
end
return 0
";

/// A worker's request to the cluster.
#[derive(Debug)]
pub enum LeaseRequest {
    Acquire {
        worker: usize,
        allocation: AllocationId,
        user: Principal,
        limit: u32,
    },
    /// The allocation ended (or never got going) after its lease was granted.
    Release {
        worker: usize,
        allocation: AllocationId,
    },
}

/// One node as the registry holds it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeEntry {
    pub id: String,
    pub listeners: Vec<ListenerEntry>,
    pub allocations: u64,
    pub draining: bool,
    /// Unix seconds of the last heartbeat.
    pub heartbeat: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ListenerEntry {
    pub transport: Transport,
    pub address: std::net::SocketAddr,
}

/// Where the cluster's keys live.
pub struct ClusterSettings {
    pub prefix: String,
    pub node_id: String,
    pub lease_time: Duration,
    pub listeners: Vec<BoundListener>,
}

impl ClusterSettings {
    /// The set of node ids (an index; the entries themselves expire).
    fn nodes_key(&self) -> String {
        format!("{}:nodes", self.prefix)
    }

    /// One node's registry entry, with a time to live.
    fn node_key(prefix: &str, id: &str) -> String {
        format!("{prefix}:node:{id}")
    }

    /// One sorted set of leases per user; the name is hex-encoded into the key, so no byte of
    /// it is ever Redis syntax. A long-term user's set is `P:leases:<hex>`, as it always was; a
    /// REST id's is `P:leases:rest:<hex>`, so the two namespaces never share a set (`rest:`
    /// cannot be hex).
    fn leases_key(&self, user: &Principal) -> String {
        let hex: String = user.id.bytes().map(|b| format!("{b:02x}")).collect();
        match user.kind {
            CredentialKind::LongTerm => format!("{}:leases:{hex}", self.prefix),
            CredentialKind::Rest => format!("{}:leases:rest:{hex}", self.prefix),
        }
    }

    fn member(&self, worker: usize, allocation: AllocationId) -> String {
        format!("{}/{worker}/{allocation}", self.node_id)
    }

    /// How long a user's lease key lives past its last write (seconds).
    fn key_ttl(&self) -> u64 {
        self.lease_time.as_secs() * 2
    }
}

/// What the node knows of its link to Redis, as far as leases go.
enum Link {
    /// Before the first heartbeat's answer: lease requests wait for it (one command timeout
    /// at most).
    Starting(Vec<Acquire>),
    Up(MultiplexedConnection),
    /// The last exchange failed: leases are granted on the node's own count, and only the
    /// heartbeat tries Redis.
    Down,
}

/// A lease asked for by a worker.
struct Acquire {
    worker: usize,
    allocation: AllocationId,
    user: Principal,
    limit: u32,
}

/// A Redis exchange that finished, back on the cluster's loop.
enum Done {
    Acquired {
        worker: usize,
        allocation: AllocationId,
        member: String,
        key: String,
        result: redis::RedisResult<i64>,
    },
    Heartbeat {
        result: redis::RedisResult<Registry>,
        /// The leases (member, key) the heartbeat wrote.
        written: Vec<(String, String)>,
    },
    /// A release or a registry clean-up.
    Other(redis::RedisResult<()>),
}

/// A heartbeat's answer: the connection it used and the registry (node id, entry).
struct Registry {
    conn: MultiplexedConnection,
    entries: Vec<(String, Option<String>)>,
}

/// The cluster side of one node.
pub struct Cluster {
    settings: ClusterSettings,
    client: redis::Client,
    link: Link,
    /// Leases this node holds (member → key), whether or not Redis has them yet.
    held: HashMap<String, String>,
    /// Whether this node drains (its registry entry says so).
    draining: Arc<AtomicBool>,
    /// The other live nodes as the workers were last given them.
    alternates: Arc<[Alternate]>,
    commander: Commander,
    allocations: Box<dyn Fn() -> u64 + Send>,
    heartbeat_running: bool,
    done: mpsc::UnboundedSender<Done>,
    finished: Option<mpsc::UnboundedReceiver<Done>>,
    /// When a failure was last logged as a warning, and what kind of failure it was.
    warned: Option<(Instant, String)>,
    /// The current failure was logged as a warning, so its end is logged too.
    failure_warned: bool,
    /// Leases granted without Redis since it last answered.
    granted_locally: u64,
}

impl Cluster {
    pub fn new(
        settings: ClusterSettings,
        client: redis::Client,
        draining: Arc<AtomicBool>,
        commander: Commander,
        allocations: Box<dyn Fn() -> u64 + Send>,
    ) -> Self {
        let (done, finished) = mpsc::unbounded_channel();
        Cluster {
            settings,
            client,
            link: Link::Starting(Vec::new()),
            held: HashMap::new(),
            draining,
            alternates: Arc::from([]),
            commander,
            allocations,
            heartbeat_running: false,
            done,
            finished: Some(finished),
            warned: None,
            failure_warned: false,
            granted_locally: 0,
        }
    }

    /// Serves lease requests and keeps the registry until the requests channel closes.
    pub async fn run(mut self, mut requests: mpsc::UnboundedReceiver<LeaseRequest>) {
        let Some(mut finished) = self.finished.take() else {
            return;
        };
        let mut heartbeat = tokio::time::interval(HEARTBEAT);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                request = requests.recv() => match request {
                    Some(request) => self.handle(request),
                    None => break,
                },
                Some(done) = finished.recv() => self.finish(done),
                _ = heartbeat.tick() => self.heartbeat(),
            }
        }
        self.leave().await;
    }

    /// Runs one Redis exchange as its own task; its outcome comes back to [`Cluster::finish`].
    fn spawn(&self, exchange: impl Future<Output = Done> + Send + 'static) {
        let done = self.done.clone();
        tokio::spawn(async move {
            // Err only once the loop has ended, when nobody needs the outcome.
            let _ = done.send(exchange.await);
        });
    }

    fn handle(&mut self, request: LeaseRequest) {
        match request {
            LeaseRequest::Acquire {
                worker,
                allocation,
                user,
                limit,
            } => {
                let acquire = Acquire {
                    worker,
                    allocation,
                    user,
                    limit,
                };
                match &mut self.link {
                    Link::Starting(waiting) => waiting.push(acquire),
                    Link::Up(conn) => {
                        let conn = conn.clone();
                        self.ask(conn, acquire);
                    }
                    Link::Down => self.grant_locally(acquire),
                }
            }
            LeaseRequest::Release { worker, allocation } => {
                let member = self.settings.member(worker, allocation);
                if let Some(key) = self.held.remove(&member) {
                    // Without a connection the lease, if Redis has it, expires within
                    // lease-time.
                    self.remove(key, member);
                }
            }
        }
    }

    /// Asks Redis for a lease, in its own task.
    fn ask(&self, mut conn: MultiplexedConnection, acquire: Acquire) {
        let Acquire {
            worker,
            allocation,
            user,
            limit,
        } = acquire;
        let key = self.settings.leases_key(&user);
        let member = self.settings.member(worker, allocation);
        let now = unix_now();
        let mut script = redis::cmd("EVAL");
        script
            .arg(ACQUIRE)
            .arg(1)
            .arg(&key)
            .arg(now)
            .arg(limit)
            .arg(now + self.settings.lease_time.as_secs())
            .arg(&member)
            .arg(self.settings.key_ttl());
        self.spawn(async move {
            let result = timed(script.query_async::<i64>(&mut conn)).await;
            Done::Acquired {
                worker,
                allocation,
                member,
                key,
                result,
            }
        });
    }

    /// Grants a lease on the node's own count (already checked by the worker); the next
    /// heartbeat that reaches Redis writes it there.
    fn grant_locally(&mut self, acquire: Acquire) {
        let key = self.settings.leases_key(&acquire.user);
        let member = self.settings.member(acquire.worker, acquire.allocation);
        self.held.insert(member, key);
        self.granted_locally += 1;
        self.commander.send_to(
            acquire.worker,
            Command::Lease {
                allocation: acquire.allocation,
                granted: true,
            },
        );
    }

    /// Removes a lease from Redis, in its own task, if Redis is up.
    fn remove(&self, key: String, member: String) {
        if let Link::Up(conn) = &self.link {
            let mut conn = conn.clone();
            let mut remove = redis::cmd("ZREM");
            remove.arg(&key).arg(&member);
            self.spawn(async move {
                Done::Other(timed(remove.query_async::<i64>(&mut conn)).await.map(drop))
            });
        }
    }

    fn finish(&mut self, done: Done) {
        match done {
            Done::Acquired {
                worker,
                allocation,
                member,
                key,
                result,
            } => {
                let granted = match result {
                    Ok(1) => {
                        self.held.insert(member, key);
                        true
                    }
                    Ok(_) => false,
                    Err(error) => {
                        // Without Redis the node-local quota (already checked) is all there is.
                        self.failed(&error);
                        self.held.insert(member, key);
                        self.granted_locally += 1;
                        true
                    }
                };
                self.commander.send_to(
                    worker,
                    Command::Lease {
                        allocation,
                        granted,
                    },
                );
            }
            Done::Heartbeat { result, written } => {
                self.heartbeat_running = false;
                match result {
                    Ok(registry) => self.answered(registry, written),
                    Err(error) => self.failed(&error),
                }
            }
            Done::Other(Ok(())) => {}
            Done::Other(Err(error)) => self.failed(&error),
        }
    }

    /// An exchange with Redis failed: leases are granted locally until a heartbeat gets
    /// through.
    fn failed(&mut self, error: &redis::RedisError) {
        let was = std::mem::replace(&mut self.link, Link::Down);
        if let Link::Starting(waiting) = was {
            for acquire in waiting {
                self.grant_locally(acquire);
            }
        } else if matches!(was, Link::Down) {
            tracing::debug!(%error, "cluster: Redis still failing");
            return;
        }
        let now = Instant::now();
        let kind = format!("{:?} {:?}", error.kind(), error.code());
        if self
            .warned
            .as_ref()
            .is_some_and(|(at, warned)| *warned == kind && now.duration_since(*at) < WARN_INTERVAL)
        {
            tracing::debug!(%error, "cluster: Redis failed again; quotas count this node only");
            return;
        }
        tracing::warn!(
            %error,
            "cluster: Redis failed; quotas count this node only until it answers"
        );
        self.warned = Some((now, kind));
        self.failure_warned = true;
    }

    /// A heartbeat got through: Redis is up, the leases it wrote are there, and the registry
    /// names the other nodes.
    fn answered(&mut self, registry: Registry, written: Vec<(String, String)>) {
        let Registry { conn, entries } = registry;
        let was = std::mem::replace(&mut self.link, Link::Up(conn.clone()));
        for (member, key) in written {
            // Released while the heartbeat was writing it: remove it again.
            if !self.held.contains_key(&member) {
                self.remove(key, member);
            }
        }
        match was {
            Link::Starting(waiting) => {
                for acquire in waiting {
                    self.ask(conn.clone(), acquire);
                }
            }
            Link::Down => {
                if self.failure_warned {
                    tracing::info!(
                        granted_locally = self.granted_locally,
                        leases = self.held.len(),
                        "cluster: Redis answers again; the node's leases are written there"
                    );
                } else {
                    tracing::debug!("cluster: Redis answers again");
                }
                self.failure_warned = false;
                self.granted_locally = 0;
            }
            Link::Up(_) => {}
        }
        let node_id = &self.settings.node_id;
        let mut alternates = Vec::new();
        let mut expired = Vec::new();
        for (id, json) in entries {
            let Some(json) = json else {
                expired.push(id);
                continue;
            };
            let Ok(other) = serde_json::from_str::<NodeEntry>(&json) else {
                continue;
            };
            if id == *node_id || other.draining {
                continue;
            }
            alternates.extend(other.listeners.iter().map(|l| Alternate {
                transport: l.transport,
                address: l.address,
                load: other.allocations,
            }));
        }
        if *self.alternates != *alternates {
            let alternates: Arc<[Alternate]> = alternates.into();
            self.alternates = alternates.clone();
            self.commander
                .broadcast(|| Command::Alternates(alternates.clone()));
        }
        if !expired.is_empty() {
            let mut conn = conn;
            let mut forget = redis::cmd("SREM");
            forget.arg(self.settings.nodes_key()).arg(&expired);
            self.spawn(async move {
                Done::Other(timed(forget.query_async::<i64>(&mut conn)).await.map(drop))
            });
        }
    }

    /// Starts a heartbeat (unless one is still running): writes every lease the node holds
    /// with a fresh expiry, refreshes the registry entry, and reads the others'. It connects
    /// first when there is no connection.
    fn heartbeat(&mut self) {
        if self.heartbeat_running {
            return;
        }
        self.heartbeat_running = true;
        let conn = match &self.link {
            Link::Up(conn) => Some(conn.clone()),
            Link::Starting(_) | Link::Down => None,
        };
        let now = unix_now();
        let expiry = now + self.settings.lease_time.as_secs();
        let entry = NodeEntry {
            id: self.settings.node_id.clone(),
            listeners: self
                .settings
                .listeners
                .iter()
                .map(|l| ListenerEntry {
                    transport: l.transport,
                    address: l.address,
                })
                .collect(),
            allocations: (self.allocations)(),
            draining: self.draining.load(Ordering::Relaxed),
            heartbeat: now,
        };
        let json = serde_json::to_string(&entry).unwrap_or_default();
        let index = self.settings.nodes_key();
        let node_id = self.settings.node_id.clone();
        let mut renew = redis::pipe();
        let mut written = Vec::with_capacity(self.held.len());
        let mut keys = HashSet::new();
        for (member, key) in &self.held {
            // Not `XX`: a lease granted while Redis failed, or lost with it, is written anew.
            renew.cmd("ZADD").arg(key).arg(expiry).arg(member).ignore();
            written.push((member.clone(), key.clone()));
            keys.insert(key.as_str());
        }
        // A user's key must outlive the leases in it, however long ago it was created.
        for key in keys {
            renew
                .cmd("EXPIRE")
                .arg(key)
                .arg(self.settings.key_ttl())
                .ignore();
        }
        // The entry expires by itself when this node stops beating.
        renew
            .cmd("SET")
            .arg(ClusterSettings::node_key(&self.settings.prefix, &node_id))
            .arg(&json)
            .arg("EX")
            .arg(NODE_LIVE_FOR)
            .ignore();
        renew.cmd("SADD").arg(&index).arg(&node_id).ignore();
        renew.cmd("SMEMBERS").arg(&index);
        let prefix = self.settings.prefix.clone();
        let client = self.client.clone();
        self.spawn(async move {
            let result = async {
                let mut conn = match conn {
                    Some(conn) => conn,
                    None => connect(&client).await?,
                };
                let (ids,): (Vec<String>,) = timed(renew.query_async(&mut conn)).await?;
                let keys: Vec<String> = ids
                    .iter()
                    .map(|id| ClusterSettings::node_key(&prefix, id))
                    .collect();
                let entries: Vec<Option<String>> = if keys.is_empty() {
                    Vec::new()
                } else {
                    timed(redis::cmd("MGET").arg(&keys).query_async(&mut conn)).await?
                };
                Ok(Registry {
                    conn,
                    entries: ids.into_iter().zip(entries).collect(),
                })
            }
            .await;
            Done::Heartbeat { result, written }
        });
    }

    /// Gives back every lease and leaves the registry (on shutdown).
    async fn leave(&mut self) {
        let index = self.settings.nodes_key();
        let node_id = self.settings.node_id.clone();
        let mut goodbye = redis::pipe();
        for (member, key) in &self.held {
            goodbye.cmd("ZREM").arg(key).arg(member).ignore();
        }
        goodbye
            .cmd("DEL")
            .arg(ClusterSettings::node_key(&self.settings.prefix, &node_id))
            .ignore();
        goodbye.cmd("SREM").arg(&index).arg(&node_id).ignore();
        let conn = match &self.link {
            Link::Up(conn) => Ok(conn.clone()),
            Link::Starting(_) | Link::Down => connect(&self.client).await,
        };
        if let Ok(mut conn) = conn {
            let _ = timed(goodbye.query_async::<()>(&mut conn)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rest_ids_and_long_term_users_lease_from_separate_sets() {
        let settings = ClusterSettings {
            prefix: "tp".into(),
            node_id: "n1".into(),
            lease_time: Duration::from_secs(30),
            listeners: Vec::new(),
        };
        let long_term = Principal::new(CredentialKind::LongTerm, "alice");
        let rest = Principal::new(CredentialKind::Rest, "1700000000:alice");
        // The long-term key is the one earlier releases used for everyone.
        assert_eq!(settings.leases_key(&long_term), "tp:leases:616c696365");
        assert_eq!(settings.leases_key(&rest), "tp:leases:rest:616c696365");
        // A long-term user named like a REST username keeps its whole name.
        let odd = Principal::new(CredentialKind::LongTerm, "1:a");
        assert_eq!(settings.leases_key(&odd), "tp:leases:313a61");
    }
}
