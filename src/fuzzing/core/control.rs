//! What happens around the core besides traffic: time passing and the timer firing, cluster
//! leases answered, connections lost, allocations closed, usernames revoked, reloads.

use crate::auth::StaticCredentials;
use crate::net::{core_config, peer_policy};
use crate::stun::{Class, Message, Method};
use crate::turn::{AllocationId, CHANNEL_COOLDOWN, CoreConfig, Nonces};

use super::Harness;
use super::setup::{
    NONCE_KEY, UNIX_AT_EPOCH, bound_listeners, epoch, five_tuple, own_sockets, tuple_of,
};

impl Harness {
    /// Time moves on to the core's next deadline (if later), and the timer fires.
    pub(super) fn timeout(&mut self) {
        if let Some(deadline) = self.server.poll_timeout() {
            self.now = self.now.max(deadline);
        }
        self.fire();
    }

    /// The timer fires now: nothing past its time is kept.
    pub(super) fn fire(&mut self) {
        self.server.handle_timeout(self.now);
        self.drain_events();
        self.timer = self.server.poll_timeout();
        let now = self.now;
        for a in self.server.allocations() {
            assert!(
                a.expires() > now,
                "allocation {} outlived its lifetime",
                a.id()
            );
            assert!(
                a.permissions().iter().all(|p| p.expires > now),
                "expired permission kept"
            );
            assert!(
                a.channels()
                    .iter()
                    .all(|c| c.expires + CHANNEL_COOLDOWN > now),
                "channel kept past its cool-down"
            );
        }
        assert!(
            self.tcp
                .next_deadline()
                .is_none_or(|deadline| deadline > now),
            "a peer connection kept unbound past its ConnectionBind deadline"
        );
    }

    pub(super) fn lease(&mut self, pending: u8, granted: bool) {
        if self.pending_leases.is_empty() {
            return;
        }
        let id = self
            .pending_leases
            .remove(usize::from(pending) % self.pending_leases.len());
        let alive = self.server.allocation(id).is_some();
        let tuple = self.server.allocation(id).map(|a| a.tuple());
        let mut out = std::mem::take(&mut self.out);
        let answer = self.server.handle_lease(id, granted, &mut out);
        if granted && alive {
            assert!(answer.is_none(), "a granted lease answered the client");
            self.leased.insert(id);
        }
        if let Some((to, n)) = answer {
            assert!(!granted && alive);
            assert_eq!(Some(to), tuple);
            assert!(n > 0 && n <= out.len());
            let t = tuple_of(to);
            let tid = self.allocate_tid.get(&t).copied();
            let reply = out[..n].to_vec();
            self.check_reply(
                t,
                tid.map(|tid| (Method::ALLOCATE, Class::Request, tid)),
                &reply,
            );
            let msg = Message::parse(&reply).expect("parsed just above");
            assert_eq!(msg.class(), Class::Error);
        }
        self.out = out;
        self.drain_events();
    }

    pub(super) fn disconnect(&mut self, t: usize) {
        self.streams[t].clear();
        self.server.handle_connection_closed(&five_tuple(t));
        self.drain_events();
        assert!(self.server.allocation_of(&five_tuple(t)).is_none());
    }

    pub(super) fn close(&mut self, selector: u8) {
        let mut ids: Vec<AllocationId> = self.server.allocations().map(|a| a.id()).collect();
        ids.extend(self.closed.iter().copied());
        if ids.is_empty() {
            return;
        }
        let id = ids[usize::from(selector) % ids.len()];
        let alive = self.server.allocation(id).is_some();
        assert_eq!(self.server.close(id), alive);
        self.drain_events();
        assert!(self.server.allocation(id).is_none());
    }

    pub(super) fn revoke(&mut self, selector: u8) {
        let mut names: Vec<String> = self.users.iter().map(|(n, _)| n.clone()).collect();
        names.push("carol".to_owned());
        names.extend(self.server.allocations().map(|a| a.username().to_string()));
        let name = names[usize::from(selector) % names.len()].clone();
        self.server.revoke(std::slice::from_ref(&name));
        self.drain_events();
        // Revocation matches whole usernames: revoking the long-term user `carol` leaves the
        // REST credential `<expiry>:carol` alone (a REST id is not a long-term user name).
        for a in self.server.allocations() {
            assert!(
                *a.username() != name,
                "revoked allocation of {name} lives on"
            );
        }
    }

    /// A reload, as `NodeHandle::reload` hands one to the workers.
    pub(super) fn reload(&mut self, flavor: usize) {
        let config = self.configs[flavor].clone();
        self.listeners = bound_listeners(&config);
        self.credentials
            .set_statics(StaticCredentials::new(&config.auth, &config.realm));
        let epoch = epoch();
        self.policy = peer_policy(
            &config,
            &self.listeners,
            &own_sockets(&config),
            self.relay_v4,
            self.policy.host_addresses().clone(),
        );
        self.server.reconfigure(
            self.now,
            CoreConfig {
                offload: true,
                ..core_config(&config, self.relay_v4, epoch, UNIX_AT_EPOCH)
            },
            self.policy.clone(),
            Nonces::new(NONCE_KEY, epoch, config.auth.nonce_lifetime),
        );
        self.config = config;
        // The worker carries out the events of every command at once (`after_core_call`).
        // Left queued, an Offload of a reload that lifted a bandwidth limit would be checked
        // after a later reload had set one again.
        self.drain_events();
    }
}
