//! The worker's side of its stream connections: starting a TCP/TLS listener's accept loop, and
//! what a connection asks of the worker ([`StreamHost`]).

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Instant;

use crate::config::Transport;
use crate::turn::FiveTuple;

use super::super::stream::{self, StreamHost, StreamWriter};
use super::{Shared, Worker};

impl Worker {
    /// Starts accepting on a TCP/TLS listener of this worker.
    pub fn add_tcp(shared: &Shared, listener: std::net::TcpListener, tls: bool) {
        let listener = match tokio::net::TcpListener::from_std(listener) {
            Ok(listener) => listener,
            Err(error) => {
                tracing::error!(%error, "TCP listener setup failed");
                return;
            }
        };
        let Ok(local) = listener.local_addr() else {
            return;
        };
        let (acceptor, limits, counters) = {
            let worker = shared.borrow();
            (
                tls.then(|| worker.tls.clone()),
                worker.stream_limits.clone(),
                worker.stream_counters.clone(),
            )
        };
        let task = tokio::task::spawn_local(stream::accept_loop(
            shared.clone(),
            listener,
            acceptor,
            limits,
            counters,
        ));
        let transport = if tls { Transport::Tls } else { Transport::Tcp };
        shared
            .borrow_mut()
            .tcp
            .push((transport, local, task.abort_handle()));
    }
}

impl StreamHost for RefCell<Worker> {
    fn opened(&self, tuple: FiveTuple, writer: Rc<StreamWriter>) -> bool {
        let streams = &mut self.borrow_mut().streams;
        if streams.contains_key(&tuple) {
            return false;
        }
        streams.insert(tuple, writer);
        true
    }

    fn received(&self, now: Instant, tuple: FiveTuple, message: &[u8]) {
        self.borrow_mut().handle_client(now, tuple, message);
    }

    fn malformed(&self) {
        self.borrow_mut().core.record_malformed();
    }

    fn flush(&self) {
        self.borrow_mut().flush_to_peers();
    }

    fn allocated(&self, tuple: &FiveTuple) -> bool {
        self.borrow().core.allocation_of(tuple).is_some()
    }

    fn closed(&self, now: Instant, tuple: &FiveTuple) {
        let mut worker = self.borrow_mut();
        worker.streams.remove(tuple);
        worker.core.handle_connection_closed(tuple);
        worker.after_core_call(now);
    }
}
