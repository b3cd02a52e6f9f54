# HTTP calls to the coordinator and the conditions they signal.

# The default transport: one request through httr2 (curl) with the client
# certificate. Returns the status and the body text; TLS and connection
# failures become plexus_connection_error.
httr2_transport <- function(method, url, body, con, timeout = 60) {
  req <- httr2::request(url)
  req <- httr2::req_method(req, method)
  req <- httr2::req_headers(req, Accept = "application/json")
  req <- httr2::req_options(req,
    sslcert = con$cert, sslkey = con$key, cainfo = con$ca,
    ssl_verifypeer = 1L, ssl_verifyhost = 2L,
    connecttimeout = 10, timeout = ceiling(timeout))
  req <- httr2::req_error(req, is_error = function(resp) FALSE)
  req <- httr2::req_user_agent(req, paste0("plexus-r/", utils::packageVersion("plexus")))
  if (!is.null(body)) {
    req <- httr2::req_body_raw(req, body, type = "application/json")
  }
  resp <- tryCatch(httr2::req_perform(req), error = function(e) {
    tls_abort(con, conditionMessage(e))
  })
  raw <- resp$body
  list(status = httr2::resp_status(resp),
       body = if (length(raw) == 0) "" else rawToChar(raw))
}

# Calls the transport, decodes JSON, turns an error object into a condition.
px_call <- function(con, method, path, body = NULL, timeout = 60) {
  url <- paste0(con$url, path)
  resp <- con$transport(method, url, body, con, timeout = timeout)
  parsed <- if (nzchar(resp$body)) {
    tryCatch(jsonlite::fromJSON(resp$body, simplifyVector = FALSE),
             error = function(e) NULL)
  }
  if (resp$status >= 300) {
    err <- parsed$error
    if (is.list(err) && !is.null(err$code)) {
      px_abort(err$code, err$message %||% "", status = resp$status)
    }
    code <- status_code(resp$status)
    px_abort(code, sprintf("HTTP %d from %s %s: %s", resp$status, method, path,
                           substr(resp$body, 1, 200)), status = resp$status)
  }
  if (is.null(parsed) && nzchar(resp$body)) {
    px_abort("internal", sprintf("the coordinator's answer to %s %s is not JSON", method, path))
  }
  parsed
}

px_get <- function(con, path, query = NULL, timeout = 60) {
  if (length(query)) {
    query <- query[!vapply(query, is.null, logical(1))]
    if (length(query)) {
      q <- paste0(names(query), "=",
                  vapply(query, function(v) utils::URLencode(format_param(v), reserved = TRUE),
                         character(1)), collapse = "&")
      path <- paste0(path, "?", q)
    }
  }
  px_call(con, "GET", path, timeout = timeout)
}

format_param <- function(v) {
  if (is.numeric(v)) format(v, scientific = FALSE, trim = TRUE) else as.character(v)
}

px_post <- function(con, path, body) {
  px_call(con, "POST", path, body = body)
}

path_segment <- function(x) utils::URLencode(x, reserved = TRUE)

status_code <- function(status) {
  switch(as.character(status),
    "400" = "invalid", "401" = "unauthenticated", "403" = "policy",
    "404" = "not_found", "422" = "disclosure", "503" = "unavailable",
    "internal")
}

#' Plexus conditions
#'
#' Every failure signals an R condition of class
#' `c("plexus_<code>_error", "plexus_error", "error", "condition")`, where
#' `<code>` is the coordinator's stable error code: `invalid`, `policy`,
#' `not_found`, `disclosure`, `data`, `unavailable`, `internal` or
#' `unauthenticated`. The message is the coordinator's. TLS and network
#' failures are `plexus_connection_error`, a query still running when the
#' timeout ran out `plexus_timeout_error`. Fields: `code`, `status` (HTTP),
#' `query_id` (for a failed query).
#'
#' @name plexus-errors
#' @examples
#' \dontrun{
#' tryCatch(px_count(con, "aaa-outcomes", where = "age > 109"),
#'          plexus_disclosure_error = function(e) NA)
#' }
NULL

px_abort <- function(code, message, ...) {
  code <- gsub("[^a-z0-9_]", "_", tolower(code))
  cnd <- structure(
    class = c(paste0("plexus_", code, "_error"), "plexus_error", "error", "condition"),
    list(message = message, call = NULL, code = code, ...))
  stop(cnd)
}

connection_abort <- function(message, ...) px_abort("connection", message, ...)

# Says which file or role to check for the usual TLS failures.
tls_abort <- function(con, msg) {
  who <- identity_label(con)
  lower <- tolower(msg)
  hint <- if (grepl("ssl peer certificate or ssh remote key was not ok|unable to get local issuer|self.signed|certificate verify failed|unknown issuer|unable to verify", lower)) {
    # curl's code for a server certificate it does not trust (its detail
    # text may be left over from an earlier handshake).
    sprintf("the coordinator's certificate is not signed by the CA in %s: check that `ca` is the network's CA (pki/ca.pem)",
            con$ca)
  } else if (grepl("expired", lower)) {
    sprintf("the coordinator refused the client certificate %s (%s) as expired: ask the network admin for a new one",
            con$cert, who)
  } else if (grepl("unknown ca|bad certificate|certificate required|handshake failure|certificate unknown|decrypt error|access denied", lower)) {
    sprintf("the coordinator refused the client certificate %s (%s): it must be issued by the network's CA and not revoked",
            con$cert, who)
  } else if (grepl("unable to set private key|unable to use client certificate|could not load pem client certificate|key values mismatch|private key", lower)) {
    sprintf("the client certificate %s or its key %s (%s) cannot be used: check they are the PEM pair issued together",
            con$cert, con$key, who)
  } else if (grepl("no alternative certificate subject name|subject name does not match|ssl: certificate subject", lower)) {
    sprintf("the coordinator's certificate is not for the host in %s: connect to localhost or 127.0.0.1", con$url)
  } else if (grepl("couldn't connect|could not connect|connection refused|failed to connect|timed out|timeout|resolve host", lower)) {
    sprintf("cannot reach the coordinator at %s: is it running?", con$url)
  } else {
    sprintf("the connection to %s as %s failed", con$url, who)
  }
  connection_abort(paste0(hint, " (", msg, ")"), url = con$url)
}
