//! `/openapi.json`: an OpenAPI 3.1 document that covers every route the
//! gateway serves (schemathesis checks the responses against it, in
//! tests/contract/run.sh).

use crate::support::client::Api;
use crate::support::util::Gateway;

#[tokio::test]
async fn the_document_covers_every_route_and_the_auth_schemes() {
    let gw = Gateway::start().await;
    let r = gw.get("/openapi.json").await;
    assert_eq!(r.status, 200);
    let doc = r.body;
    assert_eq!(doc["openapi"], "3.1.0");
    for (path, method) in [
        ("/api/events", "post"),
        ("/events", "get"),
        ("/events", "options"),
        ("/api/registrations", "post"),
        ("/api/registrations", "get"),
        ("/api/registrations/{id}", "get"),
        ("/api/registrations/{id}", "put"),
        ("/api/registrations/{id}", "delete"),
        ("/hook", "post"),
        ("/api/v2/hook", "post"),
        ("/hooks", "get"),
        ("/api/v2/hooks", "get"),
        ("/api/event-types", "get"),
        ("/api/event-types", "post"),
        ("/api/event-types/{name}", "get"),
        ("/api/event-types/{name}", "put"),
        ("/api/event-types/{name}", "delete"),
        ("/api/accounts", "get"),
        ("/api/accounts/{id}", "delete"),
        ("/api/accounts/{id}/devices", "get"),
        ("/api/accounts/{id}/devices", "put"),
        ("/api/accounts/{id}/devices/{device}", "put"),
        ("/api/accounts/{id}/devices/{device}", "delete"),
        ("/api/stats", "get"),
        ("/api/whoami", "get"),
        ("/health", "get"),
        ("/ready", "get"),
        ("/metrics", "get"),
        ("/openapi.json", "get"),
        ("/", "get"),
        ("/static/{path}", "get"),
    ] {
        assert!(
            doc["paths"][path][method].is_object(),
            "{method} {path} missing"
        );
    }
    let stream = &doc["paths"]["/events"]["get"]["responses"]["200"]["content"];
    assert!(stream["text/event-stream"].is_object(), "{stream}");
    let problem = &doc["paths"]["/api/registrations"]["post"]["responses"]["422"]["content"];
    assert!(problem["application/problem+json"].is_object(), "{problem}");
    let schemes = &doc["components"]["securitySchemes"];
    assert_eq!(schemes["bearer"]["scheme"], "bearer");
    assert_eq!(schemes["cookie"]["name"], "ratatoskr_token");
    assert_eq!(schemes["query"]["name"], "access_token");
    // A destination is one of two tagged kinds, each closed to unknown fields.
    let kinds = doc["components"]["schemas"]["Destination"]["oneOf"]
        .as_array()
        .unwrap();
    assert_eq!(kinds.len(), 2);
    assert_eq!(kinds[0]["properties"]["type"]["enum"][0], "http");
    assert_eq!(kinds[0]["additionalProperties"], false);
    // A rotation's grace is asked for; the old secret it keeps is not a
    // request field.
    let http = &kinds[0]["properties"];
    assert!(http["previous_secret_ttl"].is_object(), "{http}");
    assert!(http["previous_secret"].is_null(), "{http}");
}
