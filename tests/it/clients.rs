//! Third-party SSE clients no one here wrote: sseclient-py (over requests
//! and over urllib3) and httpx-sse, from the test virtualenv, used as
//! their READMEs show (tests/clients/python_clients.py). Each must get
//! every event within 2 s with no empty message between: the stream is
//! chunked on HTTP/1.1 (block-reading clients see each write at once),
//! and heartbeats and `retry:` carry no blank line.

use std::time::Duration;

use crate::support::util::Gateway;

#[tokio::test]
async fn python_clients_get_every_event_at_once_and_nothing_empty() {
    let Some(python) = crate::support::skip::venv_tool("python") else {
        return;
    };
    let gw = Gateway::start_with(|c| c.heartbeat = Duration::from_secs(1)).await;
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/clients/python_clients.py"
    );
    let out = tokio::process::Command::new(python)
        .arg(script)
        .arg(format!("http://{}", gw.addr))
        .output()
        .await
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    for client in [
        "sseclient-py over requests",
        "sseclient-py over urllib3",
        "httpx-sse",
    ] {
        assert!(text.contains(&format!("{client}: both events")), "{text}");
    }
}

#[tokio::test]
async fn the_http11_stream_is_chunked_and_http10_is_close_delimited() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let gw = Gateway::start().await;
    for (version, chunked) in [("1.1", true), ("1.0", false)] {
        let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        s.write_all(format!("GET /events HTTP/{version}\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut buf = vec![0u8; 4096];
        let mut got = String::new();
        while !got.contains("retry:") {
            let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
                .await
                .unwrap()
                .unwrap();
            assert!(n > 0, "{got}");
            got.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        let head = got.split("\r\n\r\n").next().unwrap().to_ascii_lowercase();
        assert_eq!(
            head.contains("transfer-encoding: chunked"),
            chunked,
            "{head}"
        );
        let body = &got[got.find("\r\n\r\n").unwrap() + 4..];
        if chunked {
            // "<hex>\r\nretry: 3000\n\r\n": one chunk, exactly the line.
            let (size, rest) = body.split_once("\r\n").unwrap();
            let size = usize::from_str_radix(size, 16).unwrap();
            assert_eq!(&rest[..size], "retry: 3000\n", "{body:?}");
        } else {
            assert!(body.starts_with("retry: 3000\n"), "{body:?}");
        }
    }
}
