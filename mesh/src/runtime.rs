//! The webrtc runtime the mesh hands to every peer connection: tokio, with
//! larger UDP socket buffers.
//!
//! webrtc 0.21.1 binds its UDP sockets itself and only lets the application
//! see them through [`Runtime::wrap_udp_socket`]. DESIGN.md measured that the
//! default kernel buffers drop datagrams under load and collapse throughput,
//! and that 4 MiB buffers removed the drops, so this wrapper enlarges both
//! buffers there and delegates everything else to [`TokioRuntime`].

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use webrtc::runtime::{
    AsyncInterval, AsyncTcpListener, AsyncTcpStream, AsyncUdpSocket, JoinHandle, Runtime,
    TokioRuntime,
};

/// [`TokioRuntime`] with `socket_buffer_bytes` UDP send and receive buffers.
pub(crate) struct MeshRuntime {
    tokio: TokioRuntime,
    socket_buffer_bytes: usize,
}

impl MeshRuntime {
    pub(crate) fn new(socket_buffer_bytes: usize) -> Self {
        Self {
            tokio: TokioRuntime,
            socket_buffer_bytes,
        }
    }
}

impl std::fmt::Debug for MeshRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshRuntime")
            .field("socket_buffer_bytes", &self.socket_buffer_bytes)
            .finish()
    }
}

impl Runtime for MeshRuntime {
    fn spawn(&self, future: Pin<Box<dyn Future<Output = ()> + Send>>) -> Box<dyn JoinHandle> {
        self.tokio.spawn(future)
    }

    fn spawn_reactor(
        &self,
        reactor_pool_size: usize,
        future: Pin<Box<dyn Future<Output = ()> + Send>>,
    ) -> Box<dyn JoinHandle> {
        self.tokio.spawn_reactor(reactor_pool_size, future)
    }

    fn wrap_udp_socket(&self, socket: std::net::UdpSocket) -> io::Result<Arc<dyn AsyncUdpSocket>> {
        if self.socket_buffer_bytes > 0 {
            // Best effort: the kernel caps the sizes at net.core.{r,w}mem_max, and a
            // smaller buffer still works, only with more drops under load.
            let sock = socket2::SockRef::from(&socket);
            if let Err(e) = sock.set_recv_buffer_size(self.socket_buffer_bytes) {
                tracing::warn!(error = %e, "could not enlarge the UDP receive buffer");
            }
            if let Err(e) = sock.set_send_buffer_size(self.socket_buffer_bytes) {
                tracing::warn!(error = %e, "could not enlarge the UDP send buffer");
            }
            tracing::debug!(
                local = ?socket.local_addr().ok(),
                recv = ?sock.recv_buffer_size().ok(),
                send = ?sock.send_buffer_size().ok(),
                "UDP socket buffers"
            );
        }
        self.tokio.wrap_udp_socket(socket)
    }

    fn wrap_tcp_listener(
        &self,
        listener: std::net::TcpListener,
    ) -> io::Result<Arc<dyn AsyncTcpListener>> {
        self.tokio.wrap_tcp_listener(listener)
    }

    fn connect_tcp<'a>(
        &'a self,
        remote_addr: SocketAddr,
    ) -> Pin<Box<dyn Future<Output = io::Result<Arc<dyn AsyncTcpStream>>> + Send + 'a>> {
        self.tokio.connect_tcp(remote_addr)
    }

    fn resolve_host<'a>(
        &'a self,
        host: &'a str,
    ) -> Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + Send + 'a>> {
        self.tokio.resolve_host(host)
    }

    fn now(&self) -> Instant {
        self.tokio.now()
    }

    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        self.tokio.sleep(duration)
    }

    fn interval(&self, period: Duration) -> Box<dyn AsyncInterval> {
        self.tokio.interval(period)
    }

    fn block_on(&self, future: Pin<Box<dyn Future<Output = ()> + '_>>) {
        self.tokio.block_on(future)
    }

    fn yield_now(&self) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        self.tokio.yield_now()
    }

    fn name(&self) -> &'static str {
        "skygit-mesh-tokio"
    }
}
