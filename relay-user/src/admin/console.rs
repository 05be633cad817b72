//! `GET /`: the operator's console. One HTML page with its style and script inlined
//! (`console/`, embedded at build time: nothing is fetched from elsewhere). The server
//! renders the header and the allocations table into it, so it is useful with scripts
//! off; the script then polls `/api/allocations`, `/api/status` and `/api/history` each
//! second and redraws in place.
//!
//! A browser cannot send the bearer header on navigation: without credentials the page
//! answers 401 with a form asking for the token; `/?token=TOKEN` (what the form submits,
//! and what an operator bookmarks) sets the session cookie ([`super::session`]) and
//! redirects to `/`. Rendering reads the same views as `/api/allocations` (a job on each
//! shard between its batches, the kernel counters through their own handles): no lock a
//! data path waits on.

use std::{fmt::Write as _, sync::Arc};

use axum::{
    extract::{Request, State},
    http::{HeaderValue, StatusCode, header},
    response::{Html, IntoResponse, Response},
};
use relay_admin_api::{AllocationsView, StatusView, table};

use super::{session, view};
use crate::control::Control;

/// The document around both bodies (head, style).
const PAGE: &str = include_str!("console/page.html");
const CONSOLE: &str = include_str!("console/console.html");
const LOGIN: &str = include_str!("console/login.html");
const CSS: &str = include_str!("console/console.css");
const JS: &str = include_str!("console/console.js");

/// `body` in the page, titled `title`.
fn document(title: &str, body: &str) -> String {
    fill(PAGE, &[("TITLE", title), ("CSS", CSS), ("BODY", body)])
}

/// `template` with each `{{KEY}}` of it replaced by its value. One pass over the template
/// alone: a value (a user name, the script) is never searched for placeholders.
fn fill(template: &str, values: &[(&str, &str)]) -> String {
    let mut out =
        String::with_capacity(template.len() + values.iter().map(|(_, v)| v.len()).sum::<usize>());
    let mut rest = template;
    while let Some(open) = rest.find("{{") {
        let Some(len) = rest[open..].find("}}") else {
            break;
        };
        out.push_str(&rest[..open]);
        let key = &rest[open + 2..open + len];
        match values.iter().find(|(k, _)| *k == key) {
            Some((_, v)) => out.push_str(v),
            None => out.push_str(&rest[open..open + len + 2]),
        }
        rest = &rest[open + len + 2..];
    }
    out.push_str(rest);
    out
}

pub async fn page(State(control): State<Arc<Control>>, request: Request) -> Response {
    if let Some(expected) = control.config().admin.token.clone() {
        let from = super::peer(&request);
        if let Some(given) = relay_admin_api::query::token_param(request.uri().query()) {
            if !session::equal(&given, &expected) {
                tracing::warn!(%from, reason = "wrong token in /?token=",
                    "admin console login refused (401): give the [admin] token");
                return login(true);
            }
            tracing::info!(%from, "admin console: logged in, session cookie set");
            // The token leaves the address bar (and the history entry) at once.
            return (
                StatusCode::SEE_OTHER,
                [
                    (header::LOCATION, HeaderValue::from_static("/")),
                    (
                        header::SET_COOKIE,
                        session::set_cookie(&expected, control.config().admin.tls),
                    ),
                    (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
                ],
            )
                .into_response();
        }
        if let Err(refusal) = session::check(&expected, request.headers()) {
            if refusal != session::Refusal::NoCredentials {
                tracing::warn!(%from, reason = refusal.as_str(),
                    "admin console refused (401): log in again with the [admin] token");
            }
            return login(false);
        }
    }
    let answer =
        tokio::task::spawn_blocking(move || (view::status(&control), view::allocations(&control)))
            .await;
    match answer {
        Ok((status, allocations)) => (
            [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))],
            Html(render(&status, &allocations)),
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "admin console: page query failed");
            (StatusCode::INTERNAL_SERVER_ERROR, "query failed\n").into_response()
        }
    }
}

/// The 401 with the token form; `wrong`: the last token given was not it.
fn login(wrong: bool) -> Response {
    let note = if wrong {
        "<p class=\"bad\">That is not the token.</p>"
    } else {
        ""
    };
    let body = document("relay console: token", &fill(LOGIN, &[("NOTE", note)]));
    (
        StatusCode::UNAUTHORIZED,
        [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))],
        Html(body),
    )
        .into_response()
}

/// The whole page with `status` and `view` rendered in.
pub fn render(status: &StatusView, view: &AllocationsView) -> String {
    let body = fill(
        CONSOLE,
        &[
            ("HEADER", &header_html(status, view)),
            ("ROWS", &rows_html(view)),
            ("JS", JS),
        ],
    );
    document("relay console", &body)
}

fn header_html(status: &StatusView, view: &AllocationsView) -> String {
    let xdp = table::xdp(&status.xdp);
    let (draining, class) = if view.draining {
        ("DRAINING", " class=\"warn\"")
    } else {
        ("not draining", "")
    };
    format!(
        "<h1>relay <span id=\"h-version\">{version}</span></h1>\n\
         <span>up <b id=\"h-uptime\">{uptime}</b></span>\n\
         <span id=\"h-draining\"{class}>{draining}</span>\n\
         <span>XDP <b id=\"h-xdp\">{xdp}</b></span>\n\
         <span>allocations <b id=\"h-allocs\">{count} / {max}</b></span>\n\
         <span>realm <b>{realm}</b></span>",
        version = escape(&status.version),
        uptime = table::duration(status.uptime_s),
        xdp = escape(&xdp),
        count = view.count,
        max = status.limits.max_allocations,
        realm = escape(&status.realm),
    )
}

fn rows_html(view: &AllocationsView) -> String {
    let mut out = String::new();
    if !view.shards_missing.is_empty() {
        let _ = writeln!(
            out,
            "<tr><td colspan=\"14\" class=\"empty\">No answer from {}: their allocations are not listed</td></tr>",
            escape(&view.shards_missing.join(", "))
        );
    }
    if view.allocations.is_empty() {
        out.push_str("<tr><td colspan=\"14\" class=\"empty\">no allocations</td></tr>\n");
    }
    for a in &view.allocations {
        let _ = write!(out, "<tr data-id=\"{}\">", escape(&a.id));
        for (i, (col, text)) in KEYS.iter().zip(table::row(a)).enumerate() {
            let class = if i >= FIRST_FIGURE {
                " class=\"n\""
            } else {
                ""
            };
            let _ = write!(out, "<td data-col=\"{col}\"{class}>{}</td>", escape(&text));
        }
        // The script's columns (sparkline, disconnect button) stay empty without it.
        out.push_str("<td class=\"js\"></td><td class=\"js\"></td></tr>\n");
    }
    out
}

/// The table's columns (`data-col`, the script's sort keys), in
/// [`table::COLUMNS`] order; from `channels` on they are figures, set right.
const KEYS: [&str; 12] = [
    "client",
    "user",
    "listener",
    "relayed",
    "peers",
    "channels",
    "to_peer",
    "to_client",
    "dropped",
    "kernel",
    "age",
    "remaining",
];
const FIRST_FIGURE: usize = 5;

/// HTML text and attribute escaping: user names come from clients.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests;
