//! What a replica sees of an HTTP request and what it answers.

use serde::{Deserialize, Serialize};

/// The header that names a multiplexed model (Ray Serve's name for it).
pub const MODEL_ID_HEADER: &str = "serve_multiplexed_model_id";
/// The header that gives a request's priority (higher first; default 0).
pub const PRIORITY_HEADER: &str = "x-flare-priority";

/// An HTTP request as a replica sees it: the path below the application's route prefix.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Request {
    pub method: String,
    /// The path below the route prefix, starting with `/`.
    pub path: String,
    /// The query string, without `?` (empty when there is none).
    pub query: String,
    /// Header names are lower case.
    pub headers: Vec<(String, String)>,
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
    /// The multiplexed model the request asked for (`serve_multiplexed_model_id`); the replica
    /// has loaded it by the time the request reaches its handler.
    pub model_id: Option<String>,
}

impl Request {
    /// A `POST` of a JSON body (for tests and deployment handles).
    pub fn post_json(path: &str, body: &impl Serialize) -> Self {
        Request {
            method: "POST".into(),
            path: path.into(),
            headers: vec![("content-type".into(), "application/json".into())],
            body: serde_json::to_vec(body).unwrap_or_default(),
            ..Default::default()
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The body parsed as JSON, or a 400 response that says what was wrong.
    #[allow(clippy::result_large_err)]
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, Response> {
        serde_json::from_slice(&self.body)
            .map_err(|e| Response::error(400, &format!("the request body is not valid JSON for this endpoint: {e}")))
    }
}

/// A replica's answer to one request.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
}

impl Response {
    /// A 200 with a JSON body.
    pub fn json(value: &impl Serialize) -> Self {
        match serde_json::to_vec(value) {
            Ok(body) => Response { status: 200, headers: vec![("content-type".into(), "application/json".into())], body },
            Err(e) => Response::error(500, &format!("the response could not be encoded as JSON: {e}")),
        }
    }

    /// A plain-text body.
    pub fn text(status: u16, text: impl Into<String>) -> Self {
        Response {
            status,
            headers: vec![("content-type".into(), "text/plain; charset=utf-8".into())],
            body: text.into().into_bytes(),
        }
    }

    /// An error in OpenAI's shape: `{"error": {"message", "type", "code"}}`.
    pub fn error(status: u16, message: &str) -> Self {
        let kind = match status {
            400..=499 => "invalid_request_error",
            503 => "overloaded_error",
            _ => "server_error",
        };
        let body = serde_json::json!({"error": {"message": message, "type": kind, "param": null, "code": status}});
        Response {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: serde_json::to_vec(&body).unwrap_or_default(),
        }
    }

    /// A streamed body (HTTP chunked): `produce` runs on its own thread in the replica and
    /// writes chunks to the sink as they are ready.
    pub fn stream(content_type: &str, produce: impl FnOnce(&mut crate::stream::StreamSink) + Send + 'static) -> Self {
        let id = crate::stream::start(false, Box::new(produce));
        Response { status: 200, headers: vec![("content-type".into(), content_type.into())], body: Vec::new() }
            .with_header(crate::stream::STREAM_HEADER, &id.to_string())
    }

    /// Server-sent events (`text/event-stream`): every `sink.send(data)` is one `data:` event.
    pub fn sse(produce: impl FnOnce(&mut crate::stream::StreamSink) + Send + 'static) -> Self {
        let id = crate::stream::start(true, Box::new(produce));
        Response {
            status: 200,
            headers: vec![("content-type".into(), "text/event-stream".into()), ("cache-control".into(), "no-cache".into())],
            body: Vec::new(),
        }
        .with_header(crate::stream::STREAM_HEADER, &id.to_string())
    }

    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_ascii_lowercase(), value.into()));
        self
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The message of an error response (`error.message`), or the body as text.
    pub fn message(&self) -> String {
        serde_json::from_slice::<serde_json::Value>(&self.body)
            .ok()
            .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
            .unwrap_or_else(|| String::from_utf8_lossy(&self.body).into_owned())
    }
}
