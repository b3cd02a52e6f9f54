# A fake transport: answers requests from a list of handlers and records
# every request, so tests see exactly what the client sends.

fixture <- function(name) {
  paste(readLines(test_path("fixtures", name), warn = FALSE), collapse = "\n")
}

json <- function(x) as.character(jsonlite::toJSON(x, auto_unbox = TRUE, null = "null", digits = NA))

# `handler(method, path, body)` returns list(status =, body =).
fake_connection <- function(handler) {
  log <- new.env()
  log$requests <- list()
  transport <- function(method, url, body, con, ...) {
    path <- sub("^https://[^/]+", "", url)
    log$requests[[length(log$requests) + 1]] <- list(method = method, path = path, body = body)
    handler(method, path, body)
  }
  con <- px_connect(url = "https://127.0.0.1:1", ca = tf("ca"), cert = tf("cert"), key = tf("key"),
                    check = FALSE, syntax = "text", transport = transport)
  con$log <- log
  con
}

tf <- function(name) {
  path <- file.path(tempdir(), paste0("plexus-fake-", name, ".pem"))
  if (!file.exists(path)) writeLines("not read by the fake transport", path)
  path
}

# Accepts any query and answers it with `result` (a fixture's text).
answering <- function(result) {
  function(method, path, body) {
    if (method == "POST") {
      return(list(status = 202, body = '{"query_id": "q1", "study_id": "s", "status": "pending"}'))
    }
    list(status = 200, body = result)
  }
}

requests <- function(con) con$log$requests

posted <- function(con) {
  post <- Filter(function(r) r$method == "POST", requests(con))
  lapply(post, function(r) jsonlite::fromJSON(r$body, simplifyVector = FALSE))
}

error_body <- function(code, message) json(list(error = list(code = code, message = message)))
