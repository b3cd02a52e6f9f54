codes <- c(invalid = 400, policy = 403, not_found = 404, disclosure = 422, data = 422,
           unavailable = 503, internal = 500)

test_that("each error code of the coordinator is its own condition class", {
  for (code in names(codes)) {
    msg <- sprintf("the coordinator says %s", code)
    con <- fake_connection(function(method, path, body) {
      list(status = codes[[code]], body = error_body(code, msg))
    })
    err <- tryCatch(px_count(con, "s"), error = function(e) e)
    expect_s3_class(err, c(paste0("plexus_", code, "_error"), "plexus_error", "error", "condition"),
                    exact = TRUE)
    expect_equal(conditionMessage(err), msg)
    expect_equal(err$code, code)
    expect_equal(err$status, codes[[code]])
  }
})

test_that("a failed query signals its code with the query id", {
  con <- fake_connection(function(method, path, body) {
    if (method == "POST") return(list(status = 202, body = '{"query_id": "q7", "status": "pending"}'))
    list(status = 200, body = json(list(query_id = "q7", study_id = "s", status = "failed",
      error = list(code = "disclosure", message = "the cohort is under the minimum cell size at hospital-a"),
      result = NULL)))
  })
  err <- expect_error(px_count(con, "s", where = "age > 105"), class = "plexus_disclosure_error",
                      regexp = "minimum cell size at hospital-a")
  expect_equal(err$query_id, "q7")
})

test_that("an answer that is not the error object still names the status", {
  con <- fake_connection(function(method, path, body) list(status = 502, body = "<html>bad gateway</html>"))
  expect_error(px_studies(con), class = "plexus_internal_error", regexp = "HTTP 502 from GET /v1/studies")
  con <- fake_connection(function(method, path, body) list(status = 404, body = ""))
  expect_error(px_studies(con), class = "plexus_not_found_error")
})

test_that("missing files and identities are connection errors naming them", {
  dir <- withr::local_tempdir()
  expect_error(px_connect(pki = dir, as = "alice", url = "https://127.0.0.1:1"),
               class = "plexus_connection_error", regexp = "ca.pem \\(the network CA\\) does not exist")
  file.create(file.path(dir, "ca.pem"))
  expect_error(px_connect(pki = dir, as = "alice", url = "https://127.0.0.1:1"),
               class = "plexus_connection_error", regexp = "client certificate file .*alice.pem \\(alice\\) does not exist")
  expect_error(px_connect(connect_file = file.path(dir, "connect.json")),
               class = "plexus_connection_error", regexp = "connect file .* does not exist")
  writeLines(json(list(url = "https://127.0.0.1:1", ca = file.path(dir, "ca.pem"),
                       identities = list(researcher = list(name = "alice", cert = "a", key = "b")))),
             file.path(dir, "connect.json"))
  expect_error(px_connect(connect_file = file.path(dir, "connect.json"), role = "auditor"),
               class = "plexus_connection_error", regexp = 'no identity "auditor" \\(it has: researcher\\)')
  expect_error(px_connect(connect_file = file.path(dir, "connect.json")),
               class = "plexus_connection_error", regexp = 'file a \\(alice, role "researcher"\\) does not exist')
})

test_that("TLS failures say which file to check", {
  con <- structure(list(url = "https://127.0.0.1:9", ca = "/p/ca.pem", cert = "/p/alice.pem",
                        key = "/p/alice.key", name = "alice", role = "researcher"),
                   class = "px_connection")
  msg <- function(curl) tryCatch(plexus:::tls_abort(con, curl), error = function(e) e)
  e <- msg("SSL certificate problem: unable to get local issuer certificate")
  expect_s3_class(e, "plexus_connection_error")
  expect_match(conditionMessage(e), "not signed by the CA in /p/ca.pem")
  expect_match(conditionMessage(msg("OpenSSL SSL_read: error:0A000415:SSL routines::sslv3 alert certificate expired, errno 0")),
               'refused the client certificate /p/alice.pem \\(alice, role "researcher"\\) as expired')
  expect_match(conditionMessage(msg("OpenSSL/3.0.11: error:0A000418:SSL routines::tlsv1 alert unknown ca")),
               "refused the client certificate /p/alice.pem")
  expect_match(conditionMessage(msg("Failed to connect to 127.0.0.1 port 9 after 0 ms: Couldn't connect to server")),
               "cannot reach the coordinator at https://127.0.0.1:9")
})

test_that("an expired client certificate is refused before connecting", {
  skip_if_not(nzchar(Sys.which("openssl")), "the openssl command is not installed")
  skip_if_not_installed("openssl")
  dir <- withr::local_tempdir()
  make_ca(dir)
  make_cert(dir, "old", expired = TRUE)
  err <- expect_error(px_connect(url = "https://127.0.0.1:1", ca = file.path(dir, "ca.pem"),
                                 cert = file.path(dir, "old.pem"), key = file.path(dir, "old.key"),
                                 check = FALSE),
                      class = "plexus_connection_error")
  expect_match(conditionMessage(err), "old.pem \\(old.pem\\) expired on 20[0-9-]+ ")
  make_cert(dir, "fresh", expired = FALSE)
  con <- px_connect(url = "https://127.0.0.1:1", ca = file.path(dir, "ca.pem"),
                    cert = file.path(dir, "fresh.pem"), key = file.path(dir, "fresh.key"), check = FALSE)
  expect_s3_class(con, "px_connection")
})
