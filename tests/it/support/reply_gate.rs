//! A proxy in front of a [`Redis`] that passes every command on at once but
//! can hold back Redis's replies: to its client, a Redis that ran a command
//! and stopped before sending the reply (which SIGSTOP only hits now and
//! then, this hits every time).

use std::path::PathBuf;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;

use super::process::temp_dir;
use super::redis::Redis;

pub struct ReplyGate {
    socket: PathBuf,
    held: watch::Sender<bool>,
    /// Stops its thread (and with it every relay) when dropped.
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl ReplyGate {
    /// Listens on a Unix socket of its own; each connection to it is one to
    /// `redis`. Runs on a thread of its own (a test may block its own, as
    /// a gateway's start does).
    pub fn start(redis: &Redis) -> Self {
        let socket = temp_dir("gate").join("gate.sock");
        let upstream = redis.socket().to_owned();
        let (held, _) = watch::channel(false);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (gate, path) = (held.clone(), socket.clone());
        let (bound, is_bound) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = UnixListener::bind(&path).expect("the gate's socket");
                bound.send(()).unwrap();
                let accepting = async {
                    while let Ok((client, _)) = listener.accept().await {
                        if let Ok(server) = UnixStream::connect(&upstream).await {
                            tokio::spawn(relay(client, server, gate.subscribe()));
                        }
                    }
                };
                tokio::select! {
                    () = accepting => {}
                    _ = stopped => {}
                }
            });
        });
        is_bound.recv().expect("the gate listens");
        Self {
            socket,
            held,
            _stop: stop,
        }
    }

    pub fn url(&self) -> String {
        format!("redis+unix://{}", self.socket.display())
    }

    /// From now on, replies wait (commands still go through).
    pub fn hold(&self) {
        self.held.send_replace(true);
    }

    /// Lets the held replies, and all later ones, through.
    pub fn release(&self) {
        self.held.send_replace(false);
    }
}

/// Commands straight through; replies only while the gate is open (a
/// reply read just before it closed waits too).
async fn relay(client: UnixStream, server: UnixStream, mut held: watch::Receiver<bool>) {
    let (mut client_in, mut client_out) = client.into_split();
    let (mut server_in, mut server_out) = server.into_split();
    let commands = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut client_in, &mut server_out).await;
    });
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if held.wait_for(|h| !*h).await.is_err() {
            break;
        }
        let n = match server_in.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if held.wait_for(|h| !*h).await.is_err() || client_out.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    commands.abort();
}
