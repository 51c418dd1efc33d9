//! The connection to Redis: opened, and every command on it, within [`COMMAND_TIMEOUT`].

use std::time::Duration;

use redis::aio::MultiplexedConnection;

/// How long one Redis command (or opening a connection) may take before the connection is
/// considered dead. [`connect`] sets it on the connection too: the redis crate's own default
/// response timeout (500 ms) would take a Redis that answers in 600 ms for a dead one.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);

/// `what`, or an I/O error after [`COMMAND_TIMEOUT`].
pub(crate) async fn timed<T>(
    what: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> redis::RedisResult<T> {
    match tokio::time::timeout(COMMAND_TIMEOUT, what).await {
        Ok(result) => result,
        Err(_) => Err(redis::RedisError::from((
            redis::ErrorKind::Io,
            "Redis command timed out",
        ))),
    }
}

/// Opens a multiplexed connection whose commands, and the opening itself, time out after
/// [`COMMAND_TIMEOUT`].
pub async fn connect(client: &redis::Client) -> redis::RedisResult<MultiplexedConnection> {
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(COMMAND_TIMEOUT))
        .set_response_timeout(Some(COMMAND_TIMEOUT));
    timed(client.get_multiplexed_async_connection_with_config(&config)).await
}
