//! The browser dashboard: files from `static/`, embedded in the binary at
//! build time so the single executable is enough.

use axum::extract::Path;
use axum::response::{IntoResponse, Response};
use http::header;

use crate::error::ApiError;

#[derive(rust_embed::RustEmbed)]
#[folder = "static/"]
struct Assets;

/// `GET /`: the dashboard page.
pub async fn index() -> Response {
    serve("index.html")
}

/// `GET /static/{path}`: scripts, styles, images.
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
