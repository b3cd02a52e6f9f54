# The live tests run against `plexus demo --serve`, started once per test
# run from the binary in PLEXUS_BIN and stopped when the run ends.

live <- new.env()

# Skips (or, with CI=true, fails) when there is no binary to test against.
live_demo <- function() {
  bin <- Sys.getenv("PLEXUS_BIN")
  if (!nzchar(bin)) {
    if (identical(Sys.getenv("CI"), "true")) {
      stop("PLEXUS_BIN is not set but CI=true: the live tests must run; set PLEXUS_BIN to a plexus binary with `demo --serve`")
    }
    testthat::skip("PLEXUS_BIN is not set: set it to a plexus binary with `demo --serve` to run the live tests")
  }
  if (!is.null(live$error)) stop(live$error)
  if (is.null(live$dir)) start_demo(bin)
  live
}

start_demo <- function(bin) {
  testthat::skip_if_not_installed("processx")
  if (!file.exists(bin)) {
    live$error <- sprintf("PLEXUS_BIN=%s does not exist", bin)
    stop(live$error)
  }
  dir <- tempfile("plexus-demo-")
  dir.create(dir)
  log <- file.path(dir, "demo.log")
  proc <- processx::process$new(bin, c("demo", "--serve", "--dir", dir),
                                stdout = log, stderr = "2>&1", cleanup = TRUE, cleanup_tree = TRUE)
  withr::defer({
    if (proc$is_alive()) {
      proc$signal(tools::SIGTERM)
      proc$wait(10000)
      if (proc$is_alive()) proc$kill()
    }
  }, envir = testthat::teardown_env())
  connect <- file.path(dir, "connect.json")
  deadline <- Sys.time() + as.numeric(Sys.getenv("PLEXUS_DEMO_TIMEOUT", "180"))
  cf <- NULL
  while (Sys.time() < deadline) {
    if (!proc$is_alive()) break
    if (file.exists(connect)) {
      cf <- tryCatch(jsonlite::fromJSON(connect, simplifyVector = FALSE), error = function(e) NULL)
      if (!is.null(cf)) break
    }
    Sys.sleep(0.2)
  }
  if (is.null(cf)) {
    tail <- if (file.exists(log)) paste(utils::tail(readLines(log, warn = FALSE), 30), collapse = "\n") else ""
    live$error <- sprintf("plexus demo --serve wrote no %s (%s):\n%s", connect,
                          if (proc$is_alive()) "timed out" else paste("exited with", proc$get_exit_status()),
                          tail)
    stop(live$error)
  }
  live$bin <- bin
  live$dir <- dir
  live$proc <- proc
  live$connect_file <- connect
  live$cf <- cf
  live$exact <- cf$studies$exact
  live$private <- cf$studies$private
  # The nodes are ready a moment after the connect file appears: wait until
  # the exact study answers a count.
  con <- px_connect(connect_file = connect, role = "researcher")
  # A coordinator without the text syntax (where, formula) gets the tree
  # (px_connect's syntax = "auto" finds out on the first cohort).
  tryCatch(px_count(con, live$exact, where = "age >= 0", timeout = 60),
           plexus_unavailable_error = function(e) NULL)
  if (identical(plexus:::query_syntax(con), "tree")) {
    message("this coordinator does not read `where` and `formula` text: the live tests send query trees")
    options(plexus.syntax = "tree")
    withr::defer(options(plexus.syntax = NULL), envir = testthat::teardown_env())
    con <- px_connect(connect_file = connect, role = "researcher")
  }
  live$con <- con
  invisible(live)
}

# The reference rows of the exact study, typed as the dictionary says
# (categorical variables as factors with the dictionary's levels, so R's
# reference level is the coordinator's).
reference_data <- function(l) {
  if (!is.null(l$ref)) return(l$ref)
  path <- l$cf$reference[[l$exact]]
  ref <- utils::read.csv(path, stringsAsFactors = FALSE, na.strings = "")
  dict <- px_dictionary(l$con)
  levels <- attr(dict, "levels")
  for (i in seq_len(nrow(dict))) {
    v <- dict$name[i]
    if (!v %in% names(ref)) next
    if (dict$type[i] == "categorical") ref[[v]] <- factor(ref[[v]], levels = levels[[v]])
    if (dict$type[i] == "boolean") ref[[v]] <- as.logical(ref[[v]])
  }
  l$ref <- ref
  ref
}

# R's name of a coordinator term: "(intercept)" -> "(Intercept)",
# "sex=M" -> "sexM", "diabetes=true" -> "diabetesTRUE".
r_term <- function(term) {
  term <- sub("^\\(intercept\\)$", "(Intercept)", term)
  term <- sub("=true$", "TRUE", term)
  sub("=", "", term, fixed = TRUE)
}

# Every element within `tol` relative to the reference.
expect_relative <- function(actual, expected, tol = 1e-8, label = "") {
  testthat::expect_equal(length(actual), length(expected))
  rel <- abs(actual - expected) / pmax(abs(expected), 1e-300)
  worst <- max(rel)
  testthat::expect_true(all(is.finite(actual)) && worst <= tol,
                        label = sprintf("%s: largest relative difference %.3g (tolerance %g)", label, worst, tol))
}

# How the CLI reaches the demo: its PKI, certificate name and address.
cli_connection_args <- function(l) {
  c("--pki", l$cf$pki, "--as", l$cf$identities$researcher$name, "--coordinator", l$cf$url)
}
