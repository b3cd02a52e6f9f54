# Real TLS handshakes through curl against `openssl s_server`, which asks
# for a client certificate like the coordinator: each problem is a
# plexus_connection_error naming the file to check.

tls_server <- function(dir) {
  skip_if_not(nzchar(Sys.which("openssl")), "the openssl command is not installed")
  skip_if_not_installed("processx")
  make_ca(dir)
  writeLines(c("subjectAltName=DNS:localhost,IP:127.0.0.1", "extendedKeyUsage=serverAuth"),
             file.path(dir, "server.ext"))
  openssl_run("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
              "-keyout", file.path(dir, "server.key"), "-out", file.path(dir, "server.csr"),
              "-subj", "/CN=localhost")
  openssl_run("x509", "-req", "-in", file.path(dir, "server.csr"), "-CA", file.path(dir, "ca.pem"),
              "-CAkey", file.path(dir, "ca.key"), "-CAcreateserial", "-days", "2",
              "-out", file.path(dir, "server.pem"), "-extfile", file.path(dir, "server.ext"))
  for (attempt in 1:5) {
    port <- sample(20000:60000, 1)
    proc <- processx::process$new("openssl", c("s_server", "-accept", port, "-cert", file.path(dir, "server.pem"),
                                               "-key", file.path(dir, "server.key"), "-CAfile", file.path(dir, "ca.pem"),
                                               "-Verify", "1", "-verify_return_error", "-www"),
                                  stdout = NULL, stderr = NULL, cleanup = TRUE)
    withr::defer(if (proc$is_alive()) proc$kill(), envir = parent.frame(2))
    for (i in 1:50) {
      if (!proc$is_alive()) break
      listening <- tryCatch({
        close(socketConnection("127.0.0.1", port, open = "r+", timeout = 1))
        TRUE
      }, error = function(e) FALSE, warning = function(w) FALSE)
      if (listening) return(sprintf("https://127.0.0.1:%d", port))
      Sys.sleep(0.1)
    }
    if (proc$is_alive()) proc$kill()
  }
  skip("openssl s_server did not start")
}

connect_error <- function(...) {
  tryCatch(px_connect(..., transport = plexus:::httr2_transport), error = function(e) e)
}

test_that("TLS problems are connection errors naming the file to check", {
  dir <- withr::local_tempdir()
  url <- tls_server(dir)
  make_cert(dir, "alice")
  make_cert(dir, "old", expired = TRUE)
  other <- file.path(dir, "other")
  dir.create(other)
  make_ca(other)
  make_cert(other, "mallory")
  ca <- file.path(dir, "ca.pem")

  e <- connect_error(url = url, ca = ca, cert = file.path(dir, "old.pem"), key = file.path(dir, "old.key"))
  expect_s3_class(e, "plexus_connection_error")
  expect_match(conditionMessage(e), "refused the client certificate .*old.pem \\(old.pem\\) as expired")

  e <- connect_error(url = url, ca = file.path(other, "ca.pem"), cert = file.path(dir, "alice.pem"),
                     key = file.path(dir, "alice.key"))
  expect_s3_class(e, "plexus_connection_error")
  expect_match(conditionMessage(e), "not signed by the CA in .*other/ca.pem")

  e <- connect_error(url = url, ca = ca, cert = file.path(other, "mallory.pem"),
                     key = file.path(other, "mallory.key"))
  expect_s3_class(e, "plexus_connection_error")
  expect_match(conditionMessage(e), "refused the client certificate .*mallory.pem .*issued by the network's CA")

  e <- connect_error(url = url, ca = ca, cert = file.path(dir, "alice.pem"),
                     key = file.path(other, "mallory.key"))
  expect_s3_class(e, "plexus_connection_error")
  expect_match(conditionMessage(e), "alice.pem or its key .*mallory.key .*cannot be used")

  # The handshake succeeds with the right files (s_server then answers HTML).
  e <- connect_error(url = url, ca = ca, cert = file.path(dir, "alice.pem"), key = file.path(dir, "alice.key"))
  expect_s3_class(e, "plexus_internal_error")
  expect_match(conditionMessage(e), "not JSON")
})
