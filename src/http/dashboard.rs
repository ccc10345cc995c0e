//! The browser dashboard: files from `static/`, embedded in the binary at
//! build time so the single executable is enough.

use axum::extract::Path;
use axum::response::{IntoResponse, Response};
use http::header;

use crate::error::ApiError;

#[derive(rust_embed::RustEmbed)]
#[folder = "static/"]
struct Assets;

/// The dashboard page.
#[utoipa::path(get, path = "/", tag = "operations",
    responses((status = 200, description = "The page", content_type = "text/html", body = String)))]
pub async fn index() -> Response {
    serve("index.html")
}

/// The dashboard's scripts, styles and images.
#[utoipa::path(get, path = "/static/{path}", tag = "operations",
    params(("path" = String, Path, description = "The file")),
    responses(
        (status = 200, description = "The file", content(
            (String = "text/javascript"), (String = "text/css"), (String = "image/svg+xml"), (String = "text/html"))),
        (status = 404, description = "No such file", content_type = "application/problem+json", body = crate::http::problems::Problem)))]
pub async fn asset(Path(path): Path<String>) -> Response {
    serve(&path)
}

fn serve(path: &str) -> Response {
    match Assets::get(path) {
        Some(file) => {
            let mime = file.metadata.mimetype().to_owned();
            (
                [
                    (header::CONTENT_TYPE, mime),
                    (header::CACHE_CONTROL, "no-cache".to_owned()),
                ],
                file.data,
            )
                .into_response()
        }
        None => ApiError::not_found(format!("no asset {path:?}")).into_response(),
    }
}
