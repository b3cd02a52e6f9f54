# The real transport, with httr2's own mocking in place of the network.

test_that("the httr2 transport sends the certificate options, the method and the JSON body", {
  seen <- list()
  mock <- function(req) {
    seen[[length(seen) + 1]] <<- req
    if (identical(req$method, "POST")) {
      return(httr2::response(status_code = 202, headers = "Content-Type: application/json",
                             body = charToRaw('{"query_id": "q1", "status": "pending"}')))
    }
    httr2::response(status_code = 200, headers = "Content-Type: application/json",
                    body = charToRaw(fixture("count.json")))
  }
  dir <- withr::local_tempdir()
  for (f in c("ca.pem", "alice.pem", "alice.key")) writeLines("x", file.path(dir, f))
  withr::local_options(httr2_mock = mock)
  con <- px_connect(pki = dir, as = "alice", url = "https://127.0.0.1:7/", check = FALSE, syntax = "text",
                    transport = plexus:::httr2_transport)
  expect_equal(con$url, "https://127.0.0.1:7")
  res <- px_count(con, "aaa-outcomes", where = "age >= 65")
  expect_equal(as.numeric(res), 1234)
  post <- seen[[1]]
  expect_equal(post$url, "https://127.0.0.1:7/v1/studies/aaa-outcomes/queries")
  expect_equal(post$method, "POST")
  expect_equal(post$options$sslcert, normalizePath(file.path(dir, "alice.pem")))
  expect_equal(post$options$sslkey, normalizePath(file.path(dir, "alice.key")))
  expect_equal(post$options$cainfo, normalizePath(file.path(dir, "ca.pem")))
  expect_equal(post$body$data, '{"where":"age >= 65","analysis":{"count":{}}}')
  expect_match(seen[[2]]$url, "/v1/queries/q1\\?wait_ms=")
})

test_that("an error status through httr2 becomes the coordinator's condition", {
  withr::local_options(httr2_mock = function(req) {
    httr2::response(status_code = 403, headers = "Content-Type: application/json",
                    body = charToRaw(error_body("policy", "bob is not a researcher of study aaa-validation")))
  })
  dir <- withr::local_tempdir()
  for (f in c("ca.pem", "bob.pem", "bob.key")) writeLines("x", file.path(dir, f))
  con <- px_connect(pki = dir, as = "bob", url = "https://127.0.0.1:7", check = FALSE,
                    transport = plexus:::httr2_transport)
  expect_error(px_count(con, "aaa-validation"), class = "plexus_policy_error",
               regexp = "bob is not a researcher")
})

test_that("a refused connection names the coordinator", {
  dir <- withr::local_tempdir()
  make_ca_or_skip(dir)
  make_cert(dir, "alice")
  con <- px_connect(pki = dir, as = "alice", url = "https://127.0.0.1:9", check = FALSE)
  expect_error(px_studies(con), class = "plexus_connection_error",
               regexp = "cannot reach the coordinator at https://127.0.0.1:9")
})
