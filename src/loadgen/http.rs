//! The load generator's HTTP/1.1 client: one keep-alive connection per simulated client
//! (hyper's connection API), so that N clients are N connections, as with `wrk -c N`.

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

use super::LoadError;

/// Where a server listens: `http://host:port`, without a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `host:port`, for connecting and for the Host header.
    pub authority: String,
}

impl Target {
    /// Parses `http://host[:port][/]` (HTTPS is not supported: the bench measures the service,
    /// not TLS).
    pub fn parse(url: &str) -> Result<Target, LoadError> {
        let bad = |why: &str| LoadError::Usage(format!("--server {url:?}: {why}"));
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| bad("give an http:// URL"))?;
        let authority = rest.trim_end_matches('/');
        if authority.is_empty() || authority.contains('/') {
            return Err(bad(
                "give the server's base URL (scheme, host and port only)",
            ));
        }
        let authority = if authority
            .rsplit_once(':')
            .is_some_and(|(_, p)| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()))
        {
            authority.to_string()
        } else {
            format!("{authority}:80")
        };
        Ok(Target { authority })
    }

    /// The TCP port.
    pub fn port(&self) -> Option<u16> {
        self.authority.rsplit_once(':')?.1.parse().ok()
    }
}

/// One request to send: method, path, headers and body are fixed per scenario.
#[derive(Debug, Clone)]
pub struct Call {
    pub method: hyper::Method,
    pub path: String,
    pub content_type: Option<&'static str>,
    /// `Authorization` value (`Bearer ...`), when the route needs one.
    pub authorization: Option<String>,
    pub body: Bytes,
}

/// What came back.
pub struct Answer {
    pub status: u16,
    pub body: Bytes,
}

/// One keep-alive connection.
pub struct Connection {
    target: Target,
    sender: SendRequest<Full<Bytes>>,
}

impl Connection {
    pub async fn open(target: &Target) -> Result<Connection, LoadError> {
        let net = |e: std::io::Error| LoadError::Transport(format!("{}: {e}", target.authority));
        let stream = tokio::net::TcpStream::connect(&target.authority)
            .await
            .map_err(net)?;
        stream.set_nodelay(true).map_err(net)?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| LoadError::Transport(e.to_string()))?;
        tokio::spawn(async move {
            // Ends when the server closes the connection or the sender is dropped.
            let _ = conn.await;
        });
        Ok(Connection {
            target: target.clone(),
            sender,
        })
    }

    pub fn target(&self) -> &Target {
        &self.target
    }

    /// Sends `call` and reads the whole answer.
    pub async fn send(&mut self, call: &Call) -> Result<Answer, LoadError> {
        let transport = |e: hyper::Error| LoadError::Transport(e.to_string());
        self.sender.ready().await.map_err(transport)?;
        let mut req = hyper::Request::builder()
            .method(call.method.clone())
            .uri(&call.path)
            .header(hyper::header::HOST, &self.target.authority);
        if let Some(ct) = call.content_type {
            req = req.header(hyper::header::CONTENT_TYPE, ct);
        }
        if let Some(auth) = &call.authorization {
            req = req.header(hyper::header::AUTHORIZATION, auth);
        }
        let req = req
            .body(Full::new(call.body.clone()))
            .map_err(|e| LoadError::Usage(format!("cannot build a request: {e}")))?;
        let resp = self.sender.send_request(req).await.map_err(transport)?;
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(transport)?
            .to_bytes();
        Ok(Answer { status, body })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_base_url_names_host_and_port() {
        assert_eq!(
            Target::parse("http://127.0.0.1:8080/").unwrap().authority,
            "127.0.0.1:8080"
        );
        assert_eq!(
            Target::parse("http://localhost").unwrap().authority,
            "localhost:80"
        );
    }

    #[test]
    fn a_url_with_a_path_or_another_scheme_is_refused() {
        assert!(Target::parse("https://127.0.0.1:8443").is_err());
        assert!(Target::parse("http://127.0.0.1:8080/v1").is_err());
        assert!(Target::parse("127.0.0.1:8080").is_err());
    }
}
