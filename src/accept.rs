//! Each accepted connection runs in a task of its own, sized by the connection alone.
//!
//! pingora's listening service spawns one task per accepted connection and runs the TLS
//! handshake and then the application inside it. A task's memory is fixed at spawn by its largest
//! state, and pingora-core built with OpenSSL keeps the handshake future inline: every connection,
//! cleartext ones too, carried a 2.5 KiB task for its whole life, of which only a few words are
//! in use once the application runs. A held long poll lives for minutes, so that task was a third
//! of what each one cost (issue 13's "<= 8 KiB per held poll").
//!
//! [`Detached`] wraps the application: pingora's task hands it the ready stream, which it moves
//! into a new task holding only the application, the stream and the shutdown signal, and
//! returns; pingora's task ends and its memory goes back to the allocator for the next accept.
//! Everything else stays pingora's: binding, `SO_REUSEPORT`, the listening sockets handed over on
//! a graceful upgrade (`-u`), `TCP_NODELAY`, the L4 buffers, the peer address in the socket
//! digest, the TLS handshake and its timeout. The new task is spawned on the runtime and thread
//! the connection was accepted on, so the grace period and the runtime's shutdown treat it as
//! they treated pingora's.

use async_trait::async_trait;
use pingora_core::apps::ServerApp;
use pingora_core::protocols::Stream;
use pingora_core::server::ShutdownWatch;
use std::sync::Arc;

/// A [`ServerApp`] whose every connection runs in a task of its own (see the module docs).
pub struct Detached<A> {
    app: Arc<A>,
}

impl<A> Detached<A> {
    pub fn new(app: A) -> Detached<A> {
        Detached { app: Arc::new(app) }
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for Detached<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let app = self.app.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            // A stream the application hands back is served again, as pingora would.
            let mut next = Some(stream);
            while let Some(stream) = next {
                next = app.process_new(stream, &shutdown).await;
            }
        });
        None
    }

    async fn cleanup(&self) {
        self.app.cleanup().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora_core::protocols::l4::stream::Stream as L4Stream;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::sync::{mpsc, watch, Notify};

    /// Echoes one line, and hands the stream back once before closing it; answers only after
    /// `go`, so the test can see whether pingora's call returned before the connection ended.
    struct Echo {
        go: Notify,
        served: mpsc::UnboundedSender<&'static str>,
    }

    #[async_trait]
    impl ServerApp for Echo {
        async fn process_new(
            self: &Arc<Self>,
            mut stream: Stream,
            _shutdown: &ShutdownWatch,
        ) -> Option<Stream> {
            let mut b = [0u8; 1];
            if stream.read_exact(&mut b).await.is_err() {
                return None;
            }
            self.go.notified().await;
            stream.write_all(&b).await.unwrap();
            stream.flush().await.unwrap();
            let _ = self
                .served
                .send(if b[0] == b'1' { "first" } else { "again" });
            (b[0] == b'1').then_some(stream)
        }
    }

    async fn pair() -> (Stream, tokio::net::TcpStream) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(l.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = l.accept().await.unwrap();
        (Box::new(L4Stream::from(server)), client)
    }

    #[tokio::test]
    async fn returns_at_once_and_the_connection_carries_on_in_its_own_task() {
        let (tx, mut served) = mpsc::unbounded_channel();
        let app = Arc::new(Detached::new(Echo {
            go: Notify::new(),
            served: tx,
        }));
        let (_signal, shutdown) = watch::channel(false);
        let (stream, mut client) = pair().await;
        // pingora's task is done with the connection before the application has answered.
        // (Bounded, so a call that waits for the connection fails here instead of hanging.)
        let back = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            app.process_new(stream, &shutdown),
        )
        .await
        .expect("pingora's call returned while the connection is open");
        assert!(back.is_none(), "the stream stays with the detached task");

        client.write_all(b"1").await.unwrap();
        app.app.go.notify_one();
        let mut b = [0u8; 1];
        client.read_exact(&mut b).await.unwrap();
        assert_eq!(&b, b"1");
        assert_eq!(served.recv().await, Some("first"));
        // The stream handed back is served again, in the same task.
        client.write_all(b"2").await.unwrap();
        app.app.go.notify_one();
        client.read_exact(&mut b).await.unwrap();
        assert_eq!(&b, b"2");
        assert_eq!(served.recv().await, Some("again"));
        // Then the application closes it.
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "{rest:?}");
    }
}
