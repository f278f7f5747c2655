//! The live notification page (`--web`): the static files that `scripts/build-web` builds from
//! `web/` into `web/dist/`, embedded in the binary and served at `/` of the gRPC port.
//!
//! Owns: the embedded files and the layer that answers `GET` for them. Does not own anything
//! the page does — it is an ordinary grpc-web client of `NotificationService` on the same
//! origin (so no CORS is needed), authenticated and authorized like every other client.
//!
//! The files are embedded rather than read from disk so `cargo run` needs neither Node nor a
//! working directory; `.ci/run` checks that `web/dist/` matches its sources.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use http::{HeaderValue, Method, Request, Response, StatusCode, header};

/// One embedded file.
struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

const INDEX_HTML: &[u8] = include_bytes!("../../web/dist/index.html");

const ASSETS: [Asset; 4] = [
    Asset {
        path: "/",
        content_type: "text/html; charset=utf-8",
        body: INDEX_HTML,
    },
    Asset {
        path: "/index.html",
        content_type: "text/html; charset=utf-8",
        body: INDEX_HTML,
    },
    Asset {
        path: "/app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../web/dist/app.js"),
    },
    Asset {
        path: "/app.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../../web/dist/app.css"),
    },
];

/// The page's security headers. The token may arrive in the address (`?token=`): the page
/// removes it at once, and `no-referrer` keeps it out of any request's `Referer` meanwhile.
/// The page talks to its own origin only: no `connect-src` is given, so `default-src 'self'`
/// covers its grpc-web calls too.
const CSP: &str = "default-src 'self'; img-src 'self' data:; \
                   frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

fn asset(method: &Method, path: &str) -> Option<&'static Asset> {
    if method != Method::GET && method != Method::HEAD {
        return None;
    }
    ASSETS.iter().find(|a| a.path == path)
}

fn respond(asset: &'static Asset, head_only: bool) -> Response<tonic::body::Body> {
    let body = if head_only { &[][..] } else { asset.body };
    let mut response = Response::new(tonic::body::Body::new(axum::body::Body::from(body)));
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    let set = |value: &'static str| HeaderValue::from_static(value);
    headers.insert(header::CONTENT_TYPE, set(asset.content_type));
    // Also for HEAD, whose empty body would otherwise announce a length of 0.
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(asset.body.len()));
    // Always revalidate: the files change with the binary, and they are small.
    headers.insert(header::CACHE_CONTROL, set("no-cache"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, set("nosniff"));
    headers.insert(header::REFERRER_POLICY, set("no-referrer"));
    headers.insert(header::CONTENT_SECURITY_POLICY, set(CSP));
    response
}

/// Tower layer answering `GET` (and `HEAD`) for the page's files when enabled; everything
/// else goes on to gRPC. It sits outside the grpc-web layer, which refuses plain HTTP/1.1.
#[derive(Debug, Clone, Copy)]
pub struct PageLayer {
    enabled: bool,
}

impl PageLayer {
    /// The layer; with `enabled` false it passes every request on.
    pub fn new(enabled: bool) -> Self {
        Self { enabled }
    }
}

impl<S> tower::Layer<S> for PageLayer {
    type Service = PageService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        PageService {
            inner,
            enabled: self.enabled,
        }
    }
}

/// The service of [`PageLayer`].
#[derive(Debug, Clone)]
pub struct PageService<S> {
    inner: S,
    enabled: bool,
}

impl<S, B> tower::Service<Request<B>> for PageService<S>
where
    S: tower::Service<Request<B>, Response = Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        if self.enabled
            && let Some(asset) = asset(request.method(), request.uri().path())
        {
            let head_only = request.method() == Method::HEAD;
            return Box::pin(std::future::ready(Ok(respond(asset, head_only))));
        }
        Box::pin(self.inner.call(request))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_gets_of_the_pages_files_are_answered() {
        assert!(asset(&Method::GET, "/").is_some());
        assert!(asset(&Method::HEAD, "/app.js").is_some());
        assert!(asset(&Method::POST, "/").is_none());
        // gRPC paths go on to tonic.
        assert!(
            asset(
                &Method::POST,
                "/cloudphone.notify.v1.NotificationService/Subscribe"
            )
            .is_none()
        );
        assert!(asset(&Method::GET, "/app.js.map").is_none());
        assert!(INDEX_HTML.windows(7).any(|w| w == b"/app.js"));
    }
}
