//! `DELETE /api/allocations/{id}`: an operator ends one allocation (`relay status
//! --disconnect ID`, the console's button). The shard that holds it ends it through the
//! core's removal path ([`Control::disconnect`]); the log line names who asked.

use std::{net::SocketAddr, sync::Arc};

use axum::{
    Extension, Json,
    extract::{ConnectInfo, Path, State},
    http::StatusCode,
    response::{IntoResponse, Response},
};
use relay_admin_api::DisconnectedView;

use crate::control::{Control, DisconnectError};

pub async fn end(
    State(control): State<Arc<Control>>,
    Path(id): Path<String>,
    from: Option<Extension<ConnectInfo<SocketAddr>>>,
) -> Response {
    let from = from.map_or_else(|| "-".to_owned(), |Extension(ConnectInfo(a))| a.to_string());
    let asked = id.clone();
    let answer = tokio::task::spawn_blocking(move || control.disconnect(&asked)).await;
    match answer {
        Ok(Ok((user, client))) => {
            tracing::info!(%from, %id, %user, %client,
                "allocation disconnected by an operator (DELETE /api/allocations): relay port released, kernel entries removed");
            Json(DisconnectedView {
                id,
                user: user.to_string(),
                client: client.client,
                transport: client.transport.to_string(),
            })
            .into_response()
        }
        Ok(Err(e)) => {
            let code = match e {
                DisconnectError::BadId(_) => StatusCode::BAD_REQUEST,
                DisconnectError::NotFound(_) => StatusCode::NOT_FOUND,
                DisconnectError::ShardsMissing { .. } => StatusCode::SERVICE_UNAVAILABLE,
            };
            tracing::warn!(%from, %id, error = %e, "disconnect refused");
            (code, format!("{e}\n")).into_response()
        }
        Err(e) => {
            tracing::error!(%from, %id, error = %e, "disconnect failed");
            (StatusCode::INTERNAL_SERVER_ERROR, "disconnect failed\n").into_response()
        }
    }
}
