//! What a test asks of any gateway it talks to, over a real socket: the
//! in-process [`super::util::Gateway`] and the spawned
//! [`super::process::Process`] alike, so each request is written once.

use std::time::Duration;

use serde_json::Value;

use super::util::{Reply, SseClient};

/// A gateway's HTTP API, as a test client sees it.
#[allow(async_fn_in_trait)] // Test code: no caller needs to name the futures' bounds.
pub trait Api {
    /// The client the requests go through.
    fn http(&self) -> &reqwest::Client;

    /// `path` on the gateway (`http://host:port/path`).
    fn url(&self, path: &str) -> String;

    async fn get(&self, path: &str) -> Reply {
        Reply::read(self.http().get(self.url(path)).send().await.expect("get")).await
    }

    /// Posts `body` with `content_type`; returns status, headers and JSON body.
    async fn post(&self, path: &str, content_type: &str, body: impl Into<reqwest::Body>) -> Reply {
        self.post_with(path, content_type, body, &[]).await
    }

    /// [`Api::post`] with extra request headers.
    async fn post_with(
        &self,
        path: &str,
        content_type: &str,
        body: impl Into<reqwest::Body>,
        headers: &[(&str, &str)],
    ) -> Reply {
        let mut req = self
            .http()
            .post(self.url(path))
            .header("content-type", content_type)
            .body(body);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        Reply::read(req.send().await.expect("post")).await
    }

    /// `POST path` with a JSON body.
    async fn post_json(&self, path: &str, body: &Value) -> Reply {
        self.post(path, "application/json", body.to_string()).await
    }

    /// `PUT path` with a JSON body.
    async fn put_json(&self, path: &str, body: &Value) -> Reply {
        let req = self
            .http()
            .put(self.url(path))
            .header("content-type", "application/json")
            .body(body.to_string());
        Reply::read(req.send().await.expect("put")).await
    }

    /// Opens `GET path` as an SSE stream and waits for the response head.
    async fn subscribe(&self, path: &str) -> SseClient {
        self.subscribe_with(path, &[]).await
    }

    /// [`Api::subscribe`] with extra request headers.
    async fn subscribe_with(&self, path: &str, headers: &[(&str, &str)]) -> SseClient {
        let mut req = self
            .http()
            .get(self.url(path))
            .header("accept", "text/event-stream")
            .timeout(Duration::from_secs(3600));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req.send().await.expect("subscribe");
        assert_eq!(resp.status(), 200, "subscribe {path}");
        SseClient::new(resp)
    }
}
