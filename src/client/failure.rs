//! What the clients say when a call fails: one line, each cause once.
//!
//! Owns: telling a server that closed the connection apart from one that answered with a
//! refusal ([`CallError`]), by the status code and the types in the error's source chain; and
//! printing an error chain on one line ([`one_line`]). Does not own: what a command does about
//! a failure (`subscribe --follow` retries, the others exit 1).
//!
//! A server over its connection cap (`--max-connections`, or a per-peer cap) accepts a
//! connection and closes it at once. tonic reports what follows as `Unknown: transport error`
//! (the connection reset, or a write into the closed socket) or `Cancelled: operation was
//! canceled` (hyper gave up the request because the connection closed before it was sent),
//! neither of which says what happened.

use std::{error::Error, io};

use tonic::Code;

/// A failed call, as the clients report it.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The server closed the connection before it answered the call. A server at its
    /// connection limit does exactly that to every connection over it.
    #[error("the server closed the connection before answering (likely at its connection limit)")]
    ClosedBeforeAnswer {
        /// What the socket said, when it said anything (`connection reset`).
        #[source]
        cause: Option<io::Error>,
    },
    /// The server closed the connection in the middle of a stream (a restart, a crash, a
    /// proxy).
    #[error("the server closed the connection")]
    Closed {
        /// What the socket said, when it said anything.
        #[source]
        cause: Option<io::Error>,
    },
    /// The server answered with this status: its code's name and its reason
    /// (`PermissionDenied: may only subscribe to your own events`).
    #[error("{:?}: {}", .0.code(), .0.message())]
    Refused(tonic::Status),
}

impl CallError {
    /// A call that ended with `status`; `answered`: whether the server had answered it (a
    /// stream's first message arrived) before it failed.
    pub fn of(status: tonic::Status, answered: bool) -> Self {
        // The codes tonic gives a transport failure; a status the server sent is never about
        // the connection it came on.
        let transport = matches!(
            status.code(),
            Code::Unknown | Code::Cancelled | Code::Unavailable | Code::Internal
        );
        if !(transport && closes(Error::source(&status))) {
            return Self::Refused(status);
        }
        let cause = socket_error(Error::source(&status));
        if answered {
            Self::Closed { cause }
        } else {
            Self::ClosedBeforeAnswer { cause }
        }
    }

    /// Whether this is a closed connection (worth trying again), not a refusal.
    pub fn is_closed(&self) -> bool {
        !matches!(self, Self::Refused(_))
    }
}

/// Whether `error` (or a cause of it) is the connection closing under a call: hyper's own
/// "closed" and "canceled because the connection closed", or the socket reset, aborted, cut
/// short or written to after the peer left.
pub fn closes(error: Option<&(dyn Error + 'static)>) -> bool {
    causes(error).any(|cause| {
        cause.downcast_ref::<hyper::Error>().is_some_and(|hyper| {
            hyper.is_closed() || hyper.is_canceled() || hyper.is_incomplete_message()
        }) || cause
            .downcast_ref::<io::Error>()
            .is_some_and(|io| closed_socket(io.kind()))
    })
}

fn closed_socket(kind: io::ErrorKind) -> bool {
    use io::ErrorKind::*;
    matches!(
        kind,
        ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof
    )
}

/// The socket's own error in `error`'s chain, as an error of our own (the chain's is shared
/// inside the status and cannot be taken).
fn socket_error(error: Option<&(dyn Error + 'static)>) -> Option<io::Error> {
    causes(error).find_map(|cause| {
        cause
            .downcast_ref::<io::Error>()
            .filter(|io| closed_socket(io.kind()))
            .map(|io| io::Error::from(io.kind()))
    })
}

fn causes<'a>(
    first: Option<&'a (dyn Error + 'static)>,
) -> impl Iterator<Item = &'a (dyn Error + 'static)> {
    std::iter::successors(first, |&error| error.source())
}

/// `error` and its causes on one line, separated by `: `, each cause once.
///
/// Some errors show their source in their own message as well as returning it from `source()`
/// (tonic's `ConnectError` displays the connector's error and is its source, so `{:#}` says
/// `tcp connect error: tcp connect error: Connection refused`). A link whose message is its
/// source's message, or ends with it, has that part said by the source: this prints it once.
/// That compares what is printed, to print it once; it never decides anything by the text.
pub fn one_line(error: &anyhow::Error) -> String {
    let messages: Vec<String> = error.chain().map(ToString::to_string).collect();
    let mut parts: Vec<&str> = Vec::with_capacity(messages.len());
    for (n, message) in messages.iter().enumerate() {
        let mut own = message.as_str();
        if let Some(rest) = messages
            .get(n + 1)
            .and_then(|next| own.strip_suffix(next.as_str()))
        {
            if rest.is_empty() {
                own = rest;
            } else if let Some(before) = rest.strip_suffix(": ") {
                own = before;
            }
        }
        if !own.is_empty() {
            parts.push(own);
        }
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("{0}")]
    struct Transparent(#[source] io::Error);

    #[derive(Debug, thiserror::Error)]
    #[error("tcp connect error: {0}")]
    struct Repeats(#[source] io::Error);

    #[test]
    fn each_cause_is_said_once() {
        let refused = || io::Error::from(io::ErrorKind::ConnectionRefused);
        let error = anyhow::Error::new(Transparent(refused())).context("cannot connect");
        assert_eq!(one_line(&error), "cannot connect: connection refused");
        let error = anyhow::Error::new(Repeats(refused())).context("cannot connect");
        assert_eq!(
            one_line(&error),
            "cannot connect: tcp connect error: connection refused"
        );
        let error = anyhow::anyhow!("plain").context("outer");
        assert_eq!(one_line(&error), "outer: plain");
        // Only a whole cause at the end is the source's.
        let error = anyhow::anyhow!("bar").context("foobar");
        assert_eq!(one_line(&error), "foobar: bar");
    }

    #[test]
    fn a_reset_connection_is_closed_and_a_refusal_is_not() {
        let reset =
            tonic::Status::from_error(Box::new(io::Error::from(io::ErrorKind::ConnectionReset)));
        assert_eq!(reset.code(), Code::Unknown);
        let closed = CallError::of(reset, false);
        assert!(
            matches!(&closed, CallError::ClosedBeforeAnswer { cause: Some(io) } if io.kind() == io::ErrorKind::ConnectionReset),
            "{closed:?}"
        );
        assert!(closed.is_closed());
        let refused = CallError::of(tonic::Status::permission_denied("no"), false);
        assert_eq!(refused.to_string(), "PermissionDenied: no");
        assert!(!refused.is_closed());
        // A status the server sent with a transport code is still its answer.
        let sent = CallError::of(tonic::Status::unknown("transport error"), false);
        assert!(!sent.is_closed());
    }
}
