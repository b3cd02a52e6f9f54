# Times the R client against a running network:
#   Rscript clients/r/bench.R [--connect DIR/connect.json] [--n 20] [--study ID] [--syntax auto|text|tree]
# Without --connect it starts `$PLEXUS_BIN demo --serve` in a temporary
# folder (its start-up is not timed). Prints the time from library(plexus)
# to the first count's result, then the median (and range) of N counts and
# N logistic fits, each on a different cohort so that no answer is a
# repeat. Needs the package installed (R CMD INSTALL clients/r).

args <- commandArgs(trailingOnly = TRUE)
opt <- function(name, default = NULL) {
  i <- match(paste0("--", name), args)
  if (is.na(i)) default else args[[i + 1]]
}
n <- as.integer(opt("n", "20"))
connect <- opt("connect")
demo <- NULL
if (is.null(connect)) {
  bin <- Sys.getenv("PLEXUS_BIN")
  if (!nzchar(bin)) stop("give --connect DIR/connect.json or set PLEXUS_BIN to start a demo")
  dir <- tempfile("plexus-bench-")
  dir.create(dir)
  demo <- processx::process$new(bin, c("demo", "--serve", "--dir", dir),
                                stdout = file.path(dir, "demo.log"), stderr = "2>&1",
                                cleanup = TRUE, cleanup_tree = TRUE)
  connect <- file.path(dir, "connect.json")
  deadline <- Sys.time() + 180
  while (!file.exists(connect) && demo$is_alive() && Sys.time() < deadline) Sys.sleep(0.2)
  if (!file.exists(connect)) stop("the demo wrote no ", connect, "; see ", file.path(dir, "demo.log"))
  Sys.sleep(1)
}
study <- opt("study", jsonlite::fromJSON(connect)$studies$exact)

# Wait until the network answers, so the first timed count is not a
# start-up race (only when this script started the demo).
if (!is.null(demo)) {
  con <- plexus::px_connect(connect_file = connect)
  for (i in 1:120) {
    ok <- tryCatch({ plexus::px_count(con, study); TRUE }, plexus_error = function(e) FALSE)
    if (ok) break
    Sys.sleep(0.5)
  }
}

# The first count is timed in a fresh R process, so that nothing this
# script loaded (httr2, curl, jsonlite) is counted as loaded already.
first_code <- sprintf(paste(
  't0 <- Sys.time(); library(plexus);',
  'con <- px_connect(connect_file = "%s", role = "researcher", syntax = "%s");',
  'n <- px_count(con, "%s");',
  'cat(as.numeric(difftime(Sys.time(), t0, units = "secs")), as.numeric(n))'),
  connect, opt("syntax", "auto"), study)
first <- system2(file.path(R.home("bin"), "Rscript"), c("-e", shQuote(first_code)), stdout = TRUE)
first <- as.numeric(strsplit(utils::tail(first, 1), " ")[[1]])
t_first <- first[1]

library(plexus)
con <- px_connect(connect_file = connect, role = "researcher", syntax = opt("syntax", "auto"))
time_it <- function(f) {
  vapply(seq_len(n), function(i) {
    t <- Sys.time()
    f(i)
    as.numeric(difftime(Sys.time(), t, units = "secs"))
  }, numeric(1))
}
counts <- time_it(function(i) px_count(con, study, where = sprintf("age >= %d", 50 + i)))
fits <- time_it(function(i) px_glm(con, death ~ age + sex + smoking + diabetes, family = "binomial",
                                   study = study, where = sprintf("age >= %d", 50 + i)))

ms <- function(x) sprintf("%7.1f ms", 1000 * x)
cat(sprintf("plexus R client %s, study %s, %s\n", utils::packageVersion("plexus"), study, con$url))
cat(sprintf("library(plexus) to the first count (n = %s, fresh R process): %s\n", first[2], ms(t_first)))
cat(sprintf("count, median of %d:          %s (min %s, max %s)\n", n, ms(stats::median(counts)),
            ms(min(counts)), ms(max(counts))))
cat(sprintf("logistic fit, median of %d:   %s (min %s, max %s)\n", n, ms(stats::median(fits)),
            ms(min(fits)), ms(max(fits))))
if (!is.null(demo)) {
  demo$signal(tools::SIGTERM)
  demo$wait(10000)
}
