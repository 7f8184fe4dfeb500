//! A `NetworkBehaviour` that hands raw, negotiated streams to the application.
//!
//! Inbound: every connection's handler offers the served test protocols with
//! multistream-select; each negotiated stream goes, with its protocol and peer, into one
//! unbounded channel that the application drains (no stream is ever dropped because the
//! application was slow to pick it up).
//!
//! Outbound: `Control::open` queues a request; the behaviour passes it to a handler of a
//! connection to that peer, which asks the swarm for a new substream negotiated for that one
//! protocol (eagerly, or lazily with `--lazy`: the swarm's upgrade version), and the stream
//! (or the error) comes back through a oneshot channel. Any number of opens may be in flight.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    convert::Infallible,
    fmt,
    future::{ready, Ready},
    task::{Context, Poll, Waker},
    time::Duration,
};

use futures::channel::{mpsc, oneshot};
use futures::StreamExt as _;
use libp2p::{
    core::{transport::PortUse, Endpoint, InboundUpgrade, OutboundUpgrade, UpgradeInfo},
    swarm::{
        handler::{
            ConnectionEvent, DialUpgradeError, FullyNegotiatedInbound, FullyNegotiatedOutbound,
        },
        ConnectionDenied, ConnectionHandler, ConnectionHandlerEvent, ConnectionId, FromSwarm,
        NetworkBehaviour, NotifyHandler, SubstreamProtocol, THandler, THandlerInEvent,
        THandlerOutEvent, ToSwarm,
    },
    Multiaddr, PeerId, Stream, StreamProtocol,
};

/// Seconds a substream may take to negotiate its protocol.
const NEGOTIATION_TIMEOUT: Duration = Duration::from_secs(30);

/// A negotiated inbound stream.
pub struct Incoming {
    pub peer: PeerId,
    pub protocol: StreamProtocol,
    pub stream: Stream,
}

/// A request to open an outbound stream.
pub struct OpenRequest {
    peer: PeerId,
    protocol: StreamProtocol,
    reply: oneshot::Sender<Result<Stream, String>>,
}

impl fmt::Debug for OpenRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OpenRequest({}, {})", self.peer, self.protocol)
    }
}

/// Cloneable handle for opening outbound streams.
#[derive(Clone)]
pub struct Control {
    tx: mpsc::UnboundedSender<OpenRequest>,
}

impl Control {
    /// Opens a stream to `peer` (which must be connected) negotiated for `protocol`.
    pub async fn open(&self, peer: PeerId, protocol: StreamProtocol) -> Result<Stream, String> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .unbounded_send(OpenRequest {
                peer,
                protocol,
                reply,
            })
            .map_err(|_| "swarm is gone".to_string())?;
        rx.await.map_err(|_| "stream request dropped".to_string())?
    }
}

pub struct Behaviour {
    served: Vec<StreamProtocol>,
    incoming: mpsc::UnboundedSender<Incoming>,
    requests: mpsc::UnboundedReceiver<OpenRequest>,
    connected: HashMap<PeerId, HashSet<ConnectionId>>,
}

impl Behaviour {
    /// The behaviour, the handle for outbound streams and the channel of inbound ones.
    pub fn new(served: Vec<StreamProtocol>) -> (Self, Control, mpsc::UnboundedReceiver<Incoming>) {
        let (req_tx, req_rx) = mpsc::unbounded();
        let (in_tx, in_rx) = mpsc::unbounded();
        let behaviour = Behaviour {
            served,
            incoming: in_tx,
            requests: req_rx,
            connected: HashMap::new(),
        };
        (behaviour, Control { tx: req_tx }, in_rx)
    }

    fn handler(&self, peer: PeerId) -> Handler {
        Handler {
            peer,
            served: self.served.clone(),
            incoming: self.incoming.clone(),
            queue: VecDeque::new(),
            waker: None,
        }
    }
}

impl NetworkBehaviour for Behaviour {
    type ConnectionHandler = Handler;
    type ToSwarm = Infallible;

    fn handle_established_inbound_connection(
        &mut self,
        _: ConnectionId,
        peer: PeerId,
        _: &Multiaddr,
        _: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(self.handler(peer))
    }

    fn handle_established_outbound_connection(
        &mut self,
        _: ConnectionId,
        peer: PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(self.handler(peer))
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        match event {
            FromSwarm::ConnectionEstablished(e) => {
                self.connected
                    .entry(e.peer_id)
                    .or_default()
                    .insert(e.connection_id);
            }
            FromSwarm::ConnectionClosed(e) => {
                if let Some(set) = self.connected.get_mut(&e.peer_id) {
                    set.remove(&e.connection_id);
                    if set.is_empty() {
                        self.connected.remove(&e.peer_id);
                    }
                }
            }
            _ => {}
        }
    }

    fn on_connection_handler_event(
        &mut self,
        _: PeerId,
        _: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        match event {}
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        while let Poll::Ready(Some(req)) = self.requests.poll_next_unpin(cx) {
            if let Some(conns) = self.connected.get(&req.peer) {
                // The most recent connection: after a reconnect, the old one may be closing.
                let conn = *conns.iter().max().expect("non-empty set");
                return Poll::Ready(ToSwarm::NotifyHandler {
                    peer_id: req.peer,
                    handler: NotifyHandler::One(conn),
                    event: req,
                });
            }
            let _ = req
                .reply
                .send(Err(format!("not connected to {}", req.peer)));
        }
        Poll::Pending
    }
}

pub struct Handler {
    peer: PeerId,
    served: Vec<StreamProtocol>,
    incoming: mpsc::UnboundedSender<Incoming>,
    queue: VecDeque<OpenRequest>,
    waker: Option<Waker>,
}

impl ConnectionHandler for Handler {
    type FromBehaviour = OpenRequest;
    type ToBehaviour = Infallible;
    type InboundProtocol = Upgrade;
    type OutboundProtocol = Upgrade;
    type InboundOpenInfo = ();
    type OutboundOpenInfo = oneshot::Sender<Result<Stream, String>>;

    fn listen_protocol(&self) -> SubstreamProtocol<Upgrade, ()> {
        SubstreamProtocol::new(Upgrade(self.served.clone()), ()).with_timeout(NEGOTIATION_TIMEOUT)
    }

    fn connection_keep_alive(&self) -> bool {
        // A test peer keeps its connections until the remote (or the process) ends them.
        true
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<ConnectionHandlerEvent<Upgrade, Self::OutboundOpenInfo, Infallible>> {
        if let Some(req) = self.queue.pop_front() {
            let protocol = SubstreamProtocol::new(Upgrade(vec![req.protocol]), req.reply)
                .with_timeout(NEGOTIATION_TIMEOUT);
            return Poll::Ready(ConnectionHandlerEvent::OutboundSubstreamRequest { protocol });
        }
        self.waker = Some(cx.waker().clone());
        Poll::Pending
    }

    fn on_behaviour_event(&mut self, event: OpenRequest) {
        self.queue.push_back(event);
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }

    fn on_connection_event(
        &mut self,
        event: ConnectionEvent<Upgrade, Upgrade, (), Self::OutboundOpenInfo>,
    ) {
        match event {
            ConnectionEvent::FullyNegotiatedInbound(FullyNegotiatedInbound {
                protocol: (stream, protocol),
                ..
            }) => {
                let _ = self.incoming.unbounded_send(Incoming {
                    peer: self.peer,
                    protocol,
                    stream,
                });
            }
            ConnectionEvent::FullyNegotiatedOutbound(FullyNegotiatedOutbound {
                protocol: (stream, _),
                info,
            }) => {
                let _ = info.send(Ok(stream));
            }
            ConnectionEvent::DialUpgradeError(DialUpgradeError { info, error }) => {
                let _ = info.send(Err(format!("opening stream: {error}")));
            }
            _ => {}
        }
    }
}

/// Multistream-select over a list of protocols; the output is the stream and the protocol.
pub struct Upgrade(Vec<StreamProtocol>);

impl UpgradeInfo for Upgrade {
    type Info = StreamProtocol;
    type InfoIter = std::vec::IntoIter<StreamProtocol>;

    fn protocol_info(&self) -> Self::InfoIter {
        self.0.clone().into_iter()
    }
}

impl InboundUpgrade<Stream> for Upgrade {
    type Output = (Stream, StreamProtocol);
    type Error = Infallible;
    type Future = Ready<Result<Self::Output, Infallible>>;

    fn upgrade_inbound(self, stream: Stream, protocol: StreamProtocol) -> Self::Future {
        ready(Ok((stream, protocol)))
    }
}

impl OutboundUpgrade<Stream> for Upgrade {
    type Output = (Stream, StreamProtocol);
    type Error = Infallible;
    type Future = Ready<Result<Self::Output, Infallible>>;

    fn upgrade_outbound(self, stream: Stream, protocol: StreamProtocol) -> Self::Future {
        ready(Ok((stream, protocol)))
    }
}
