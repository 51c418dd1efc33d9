//! Many nodes, one Redis: the node registry (heartbeat, alternates for 300 Try Alternate) and
//! cluster-wide allocation quotas held as leases. Runs on the control runtime; workers reach it
//! through a channel and get answers as commands, so no worker ever waits on Redis.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::auth::redis::unix_now;
use crate::auth::{CredentialKind, Principal};
use crate::config::Transport;
use crate::turn::{AllocationId, Alternate, NodeLimits};

use super::{BoundListener, Command, Commander};

/// How often leases are renewed and the registry entry refreshed.
const HEARTBEAT: Duration = Duration::from_secs(1);
/// A node's registry entry lives this long past its last heartbeat (seconds).
const NODE_LIVE_FOR: u64 = 5;
/// How long one Redis command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);

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
    Release {
        worker: usize,
        allocation: AllocationId,
        user: Principal,
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
}

async fn timed<T>(
    what: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> redis::RedisResult<T> {
    tokio::time::timeout(COMMAND_TIMEOUT, what)
        .await
        .unwrap_or_else(|_| {
            Err(redis::RedisError::from((
                redis::ErrorKind::Io,
                "Redis command timed out",
            )))
        })
}

/// The cluster side of one node.
pub struct Cluster {
    settings: ClusterSettings,
    client: redis::Client,
    conn: Option<MultiplexedConnection>,
    /// Leases this node holds: member → key.
    held: HashMap<String, String>,
    node: Arc<NodeLimits>,
    commander: Commander,
    allocations: Box<dyn Fn() -> u64 + Send>,
    warned: bool,
}

impl Cluster {
    pub fn new(
        settings: ClusterSettings,
        client: redis::Client,
        node: Arc<NodeLimits>,
        commander: Commander,
        allocations: Box<dyn Fn() -> u64 + Send>,
    ) -> Self {
        Cluster {
            settings,
            client,
            conn: None,
            held: HashMap::new(),
            node,
            commander,
            allocations,
            warned: false,
        }
    }

    /// Serves lease requests and keeps the registry until the requests channel closes.
    pub async fn run(mut self, mut requests: mpsc::UnboundedReceiver<LeaseRequest>) {
        let mut heartbeat = tokio::time::interval(HEARTBEAT);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                request = requests.recv() => match request {
                    Some(request) => self.handle(request).await,
                    None => break,
                },
                _ = heartbeat.tick() => self.heartbeat().await,
            }
        }
        self.leave().await;
    }

    async fn connection(&mut self) -> redis::RedisResult<&mut MultiplexedConnection> {
        if self.conn.is_none() {
            self.conn = Some(timed(self.client.get_multiplexed_async_connection()).await?);
        }
        // Set just above.
        Ok(self.conn.as_mut().expect("connection present"))
    }

    fn failed(&mut self, error: &redis::RedisError) {
        self.conn = None;
        if !self.warned {
            tracing::warn!(%error, "cluster: cannot reach Redis; quotas count this node only until it answers");
            self.warned = true;
        }
    }

    async fn handle(&mut self, request: LeaseRequest) {
        match request {
            LeaseRequest::Acquire {
                worker,
                allocation,
                user,
                limit,
            } => {
                let key = self.settings.leases_key(&user);
                let member = self.settings.member(worker, allocation);
                let now = unix_now();
                let expiry = now + self.settings.lease_time.as_secs();
                let ttl = self.settings.lease_time.as_secs() * 2;
                let result = async {
                    let conn = self.connection().await?;
                    timed(
                        redis::cmd("EVAL")
                            .arg(ACQUIRE)
                            .arg(1)
                            .arg(&key)
                            .arg(now)
                            .arg(limit)
                            .arg(expiry)
                            .arg(&member)
                            .arg(ttl)
                            .query_async::<i64>(conn),
                    )
                    .await
                }
                .await;
                let granted = match result {
                    Ok(1) => {
                        self.held.insert(member, key);
                        true
                    }
                    Ok(_) => false,
                    Err(error) => {
                        // Without Redis the node-local quota (already checked) is all there is.
                        self.failed(&error);
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
            LeaseRequest::Release {
                worker,
                allocation,
                user: _,
            } => {
                let member = self.settings.member(worker, allocation);
                if let Some(key) = self.held.remove(&member) {
                    let result = async {
                        let conn = self.connection().await?;
                        timed(
                            redis::cmd("ZREM")
                                .arg(&key)
                                .arg(&member)
                                .query_async::<i64>(conn),
                        )
                        .await
                    }
                    .await;
                    if let Err(error) = result {
                        // The lease expires by itself within lease-time.
                        self.failed(&error);
                    }
                }
            }
        }
    }

    /// Renews this node's leases, refreshes its registry entry, and reads the others'.
    async fn heartbeat(&mut self) {
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
            draining: self
                .node
                .draining
                .load(std::sync::atomic::Ordering::Relaxed),
            heartbeat: now,
        };
        let json = serde_json::to_string(&entry).unwrap_or_default();
        let index = self.settings.nodes_key();
        let node_id = self.settings.node_id.clone();
        let mut renew = redis::pipe();
        for (member, key) in &self.held {
            renew
                .cmd("ZADD")
                .arg(key)
                .arg("XX")
                .arg(expiry)
                .arg(member)
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
        let result = async {
            let conn = self.connection().await?;
            let (ids,): (Vec<String>,) = timed(renew.query_async(conn)).await?;
            let keys: Vec<String> = ids
                .iter()
                .map(|id| ClusterSettings::node_key(&prefix, id))
                .collect();
            let entries: Vec<Option<String>> = if keys.is_empty() {
                Vec::new()
            } else {
                timed(redis::cmd("MGET").arg(&keys).query_async(conn)).await?
            };
            Ok::<_, redis::RedisError>(ids.into_iter().zip(entries).collect::<Vec<_>>())
        };
        let entries = match result.await {
            Ok(entries) => {
                if self.warned {
                    tracing::info!("cluster: Redis answers again");
                    self.warned = false;
                }
                entries
            }
            Err(error) => {
                self.failed(&error);
                return;
            }
        };
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
            if id == node_id || other.draining {
                continue;
            }
            alternates.extend(other.listeners.iter().map(|l| Alternate {
                transport: l.transport,
                address: l.address,
                load: other.allocations,
            }));
        }
        self.node.cluster.set(alternates);
        if !expired.is_empty()
            && let Some(conn) = self.conn.as_mut()
        {
            let _ = timed(
                redis::cmd("SREM")
                    .arg(&index)
                    .arg(&expired)
                    .query_async::<i64>(conn),
            )
            .await;
        }
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
        if let Ok(conn) = self.connection().await {
            let _ = timed(goodbye.query_async::<()>(conn)).await;
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
