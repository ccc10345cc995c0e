//! TLS termination, through the shipped binary, with a self-signed
//! certificate made here (rcgen): HTTP/2 by ALPN and HTTP/1.1, the SSE
//! stream over both, plain HTTP refused, and the certificate swapped on
//! SIGHUP (a broken one refused, the one in force kept).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::support::process::{temp_dir, Process};
use crate::support::util::SseClient;

/// A self-signed certificate for `localhost` and 127.0.0.1, written as
/// `cert.pem` and `key.pem` in `dir`; returns the certificate's DER.
fn make_cert(dir: &Path, name: &str) -> (Vec<u8>, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params =
        rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    let cert = params.self_signed(&key).unwrap();
    std::fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
    (cert.der().to_vec(), cert.pem())
}

fn client(addr: &str, ca_pem: &str, http1_only: bool) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .use_rustls_tls()
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap())
        .resolve("localhost", addr.parse().unwrap())
        .tls_info(true);
    if http1_only {
        b = b.http1_only();
    }
    b.build().unwrap()
}

fn peer_cert(resp: &reqwest::Response) -> Vec<u8> {
    resp.extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|t| t.peer_certificate())
        .expect("TLS info")
        .to_vec()
}

#[tokio::test]
async fn tls_serves_h2_and_http1_streams_and_reloads_its_certificate_on_sighup() {
    let dir = temp_dir("tls");
    let (first_der, first_pem) = make_cert(&dir, "first");
    let p = Process::start(
        &dir,
        &[
            "--tls-cert",
            dir.join("cert.pem").to_str().unwrap(),
            "--tls-key",
            dir.join("key.pem").to_str().unwrap(),
        ],
    );
    let port = p.addr.rsplit(':').next().unwrap().to_owned();
    let url = |path: &str| format!("https://localhost:{port}{path}");

    for (http1, version) in [
        (false, reqwest::Version::HTTP_2),
        (true, reqwest::Version::HTTP_11),
    ] {
        let c = client(&p.addr, &first_pem, http1);
        let r = c.get(url("/health")).send().await.unwrap();
        assert_eq!((r.status().as_u16(), r.version()), (200, version));
        assert_eq!(peer_cert(&r), first_der);
        // The stream, over this protocol.
        let resp = c
            .get(url("/events?device=mac:112233445566"))
            .header("accept", "text/event-stream")
            .send()
            .await
            .unwrap();
        assert_eq!((resp.status().as_u16(), resp.version()), (200, version));
        let mut sub = SseClient::new(resp);
        let r = c
            .post(url("/api/events?device=mac:112233445566"))
            .header("content-type", "application/json")
            .body(format!("{{\"over\":\"{version:?}\"}}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
        let e = sub.expect_event().await;
        assert_eq!(e.json()["over"], format!("{version:?}"));
    }
    // Plain HTTP on the TLS port gets no HTTP answer.
    let plain = reqwest::Client::new()
        .get(format!("http://{}/health", p.addr))
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    assert!(plain.is_err() || plain.unwrap().status() != 200);

    // A new certificate, swapped in by SIGHUP.
    let (second_der, second_pem) = make_cert(&dir, "second");
    hangup(&p);
    p.wait_log(&["TLS certificate reloaded"]).await;
    let r = client(&p.addr, &second_pem, false)
        .get(url("/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(peer_cert(&r), second_der, "new connections get the new one");
    assert!(
        client(&p.addr, &first_pem, false)
            .get(url("/health"))
            .send()
            .await
            .is_err(),
        "the old one is gone"
    );

    // A broken certificate is refused; the one in force stays.
    std::fs::write(dir.join("cert.pem"), "not a certificate").unwrap();
    hangup(&p);
    p.wait_log(&["TLS certificate not reloaded"]).await;
    let r = client(&p.addr, &second_pem, true)
        .get(url("/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(peer_cert(&r), second_der);
    drop(p);
    std::fs::remove_dir_all(dir).unwrap();
}

fn hangup(p: &Process) {
    let ok = Command::new("kill")
        .args(["-HUP", &p.pid().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
}

#[test]
fn a_missing_key_or_a_bad_certificate_stops_the_start() {
    let dir = temp_dir("tls-bad");
    let bin = crate::support::process::BIN;
    let out = Command::new(bin)
        .args(["--store", "memory", "--tls-cert", "/nonexistent.pem"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "--tls-cert needs --tls-key");
    std::fs::write(dir.join("cert.pem"), "junk").unwrap();
    std::fs::write(dir.join("key.pem"), "junk").unwrap();
    let out = Command::new(bin)
        .args(["--listen", "127.0.0.1:0", "--store", "memory", "--tls-cert"])
        .arg(dir.join("cert.pem"))
        .arg("--tls-key")
        .arg(dir.join("key.pem"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--tls-cert"), "{err}");
    std::fs::remove_dir_all(dir).unwrap();
}
