#' Connect to a Plexus coordinator
#'
#' Builds a connection to the coordinator's HTTP/JSON API over mutual TLS.
#' Give the files directly (`url`, `ca`, `cert`, `key`), a PKI folder and a
#' certificate name (`pki`, `as`, as the CLI's `--pki DIR --as NAME`), or the
#' `connect.json` that `plexus demo --serve` writes and an identity in it
#' (`connect_file`, `role`).
#'
#' The files are checked when connecting: a missing file, an unreadable or
#' expired certificate stops here with a `plexus_connection_error` naming the
#' file and the identity. With `check = TRUE` (the default) the coordinator is
#' asked for the studies once, so a wrong CA or a refused certificate shows
#' now rather than at the first query.
#'
#' @param url The coordinator's address, e.g. `"https://127.0.0.1:7443"`.
#'   Defaults to the `url` of `connect_file`, else the `PLEXUS_URL` or
#'   `PLEXUS_COORDINATOR` environment variable (as the CLI), else
#'   `https://127.0.0.1:7443`.
#' @param ca The network CA certificate (PEM) the coordinator's certificate
#'   must be signed by.
#' @param cert,key Your client certificate and its private key (PEM).
#' @param pki A folder holding `ca.pem`, `NAME.pem` and `NAME.key`.
#' @param as The certificate name in `pki` (e.g. `"alice"`).
#' @param connect_file A `connect.json` written by `plexus demo --serve`.
#' @param role The identity of `connect_file` to use: `"researcher"`,
#'   `"outsider"`, `"auditor"` or `"admin"`.
#' @param timeout Default seconds to wait for a query's result.
#' @param check Ask the coordinator for the studies now, to fail early.
#' @param syntax How cohorts and formulas travel: `"text"` (the
#'   coordinator parses `where` and `formula`, naming the column of a
#'   mistake), `"tree"` (R parses them and sends the query tree of the
#'   query format) or `"auto"` (text, and the tree from then on if the
#'   coordinator answers that it does not know the text fields). Default:
#'   the `plexus.syntax` option, else `"auto"`.
#' @param transport For tests: a function `(method, url, body, con, ...)`
#'   returning `list(status =, body =)`; `NULL` uses httr2 (curl) and
#'   checks the certificate's dates first.
#' @return A `px_connection`.
#' @examples
#' \dontrun{
#' con <- px_connect(connect_file = "demo/connect.json", role = "researcher")
#' con <- px_connect(pki = "pki", as = "alice", url = "https://127.0.0.1:7443")
#' }
#' @export
px_connect <- function(url = NULL, ca = NULL, cert = NULL, key = NULL,
                       pki = NULL, as = NULL,
                       connect_file = NULL, role = "researcher",
                       timeout = 300, check = TRUE,
                       syntax = getOption("plexus.syntax", "auto"), transport = NULL) {
  syntax <- match.arg(syntax, c("auto", "text", "tree"))
  name <- NULL
  source <- NULL
  if (!is.null(connect_file)) {
    if (!file.exists(connect_file)) {
      connection_abort(sprintf(
        "the connect file %s does not exist: start the demo with `plexus demo --serve --dir DIR` and pass DIR/connect.json",
        connect_file))
    }
    cf <- jsonlite::fromJSON(connect_file, simplifyVector = FALSE)
    ids <- cf$identities
    if (is.null(ids[[role]])) {
      connection_abort(sprintf(
        "the connect file %s has no identity \"%s\" (it has: %s)",
        connect_file, role, paste(names(ids), collapse = ", ")))
    }
    id <- ids[[role]]
    url <- url %||% cf$url
    ca <- ca %||% cf$ca
    cert <- cert %||% id$cert
    key <- key %||% id$key
    name <- id$name
    source <- connect_file
  } else if (!is.null(pki)) {
    if (is.null(as)) {
      connection_abort("with `pki` give the certificate name too, e.g. `as = \"alice\"`")
    }
    ca <- ca %||% file.path(pki, "ca.pem")
    cert <- cert %||% file.path(pki, paste0(as, ".pem"))
    key <- key %||% file.path(pki, paste0(as, ".key"))
    name <- as
    role <- NULL
  } else {
    role <- NULL
  }
  url <- url %||% env_or_null("PLEXUS_URL") %||% env_or_null("PLEXUS_COORDINATOR") %||%
    "https://127.0.0.1:7443"
  url <- sub("/+$", "", url)
  con <- structure(list(
    url = url, ca = ca, cert = cert, key = key, name = name, role = role,
    source = source, timeout = timeout, syntax = syntax, state = new.env(parent = emptyenv()),
    transport = transport %||% httr2_transport
  ), class = "px_connection")
  who <- identity_label(con)
  for (f in c("ca", "cert", "key")) {
    path <- con[[f]]
    what <- c(ca = "CA certificate", cert = "client certificate", key = "private key")[[f]]
    if (is.null(path)) {
      connection_abort(sprintf("no %s given (`%s`)", what, f))
    }
    if (!file.exists(path)) {
      connection_abort(sprintf("the %s file %s (%s) does not exist: check the path%s",
                               what, path, if (f == "ca") "the network CA" else who,
                               if (is.null(con$source)) "" else paste(" in", con$source)),
                       file = path)
    }
    con[[f]] <- normalizePath(path)
  }
  if (is.null(transport)) check_certificate_dates(con)
  if (isTRUE(check)) {
    px_get(con, "/v1/studies")
  }
  con
}

#' @export
print.px_connection <- function(x, ...) {
  cat("<plexus connection>\n")
  cat("  coordinator:", x$url, "\n")
  cat("  identity:   ", identity_label(x), "\n")
  cat("  certificate:", x$cert, "\n")
  cat("  CA:         ", x$ca, "\n")
  invisible(x)
}

identity_label <- function(con) {
  who <- con$name %||% basename(con$cert %||% "?")
  if (!is.null(con$role)) who <- sprintf("%s, role \"%s\"", who, con$role)
  who
}

# A clear message before any handshake when the client certificate has
# expired or is not valid yet: the handshake alert says much less.
check_certificate_dates <- function(con) {
  if (!requireNamespace("openssl", quietly = TRUE)) return(invisible())
  info <- tryCatch(openssl::read_cert(con$cert), error = function(e) e)
  if (inherits(info, "error")) {
    connection_abort(sprintf("the client certificate %s (%s) is not a PEM certificate: %s",
                             con$cert, identity_label(con), conditionMessage(info)),
                     file = con$cert)
  }
  validity <- as.list(info)$validity
  if (length(validity) != 2) return(invisible())
  dates <- as.POSIXct(validity, format = "%b %d %H:%M:%S %Y", tz = "GMT")
  now <- Sys.time()
  if (!is.na(dates[2]) && now > dates[2]) {
    connection_abort(sprintf(
      "the client certificate %s (%s) expired on %s: ask the network admin for a new one (plexus pki issue)",
      con$cert, identity_label(con), format(dates[2], "%Y-%m-%d %H:%M:%S UTC")), file = con$cert)
  }
  if (!is.na(dates[1]) && now < dates[1]) {
    connection_abort(sprintf(
      "the client certificate %s (%s) is not valid before %s: check this machine's clock",
      con$cert, identity_label(con), format(dates[1], "%Y-%m-%d %H:%M:%S UTC")), file = con$cert)
  }
  invisible()
}

env_or_null <- function(name) {
  value <- Sys.getenv(name)
  if (nzchar(value)) value
}

`%||%` <- function(a, b) if (is.null(a)) b else a
