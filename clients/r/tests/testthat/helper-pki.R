# Certificates made with the openssl command line, for the TLS tests.

openssl_run <- function(...) {
  out <- suppressWarnings(system2("openssl", shQuote(c(...)), stdout = TRUE, stderr = TRUE))
  status <- attr(out, "status")
  if (!is.null(status) && status != 0) stop("openssl ", paste(c(...), collapse = " "), ":\n", paste(out, collapse = "\n"))
  invisible(out)
}

# A throwaway CA in dir/ca.pem + dir/ca.key.
make_ca <- function(dir, name = "ca") {
  openssl_run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
              "-keyout", file.path(dir, paste0(name, ".key")), "-out", file.path(dir, paste0(name, ".pem")),
              "-days", "2", "-subj", paste0("/CN=throwaway ", name))
}

# dir/NAME.pem + dir/NAME.key signed by ca_dir/ca.*; `expired` makes one valid
# in 2020 only (openssl x509 -not_before/-not_after, OpenSSL 3) or, failing
# that, through `openssl ca` with -startdate/-enddate.
make_cert <- function(dir, name, expired = FALSE, ca_dir = dir, ou = "researcher") {
  key <- file.path(dir, paste0(name, ".key"))
  csr <- file.path(dir, paste0(name, ".csr"))
  pem <- file.path(dir, paste0(name, ".pem"))
  openssl_run("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
              "-keyout", key, "-out", csr, "-subj", sprintf("/CN=%s/OU=%s", name, ou))
  ext <- file.path(dir, paste0(name, ".ext"))
  writeLines(c("basicConstraints=CA:FALSE", "keyUsage=digitalSignature",
               "extendedKeyUsage=clientAuth"), ext)
  ca <- c("-CA", file.path(ca_dir, "ca.pem"), "-CAkey", file.path(ca_dir, "ca.key"))
  if (!expired) {
    openssl_run("x509", "-req", "-in", csr, ca, "-CAcreateserial", "-days", "2", "-out", pem,
                "-extfile", ext)
    return(invisible(pem))
  }
  # openssl ca takes explicit dates on OpenSSL 1.1 and 3.
  cadir <- file.path(dir, paste0(name, "-ca"))
  dir.create(cadir, showWarnings = FALSE)
  file.create(file.path(cadir, "index.txt"))
  writeLines("01", file.path(cadir, "serial"))
  conf <- file.path(cadir, "ca.cnf")
  writeLines(c("[ca]", "default_ca = d", "[d]",
               paste0("dir = ", cadir), "database = $dir/index.txt", "serial = $dir/serial",
               "new_certs_dir = $dir", "default_md = sha256", "policy = p", "copy_extensions = none",
               "unique_subject = no",
               "[p]", "commonName = supplied", "organizationalUnitName = optional"), conf)
  openssl_run("ca", "-batch", "-config", conf, "-in", csr, "-out", pem, "-notext",
              "-cert", file.path(ca_dir, "ca.pem"), "-keyfile", file.path(ca_dir, "ca.key"),
              "-startdate", "20200101000000Z", "-enddate", "20200201000000Z", "-extfile", ext)
  invisible(pem)
}

make_ca_or_skip <- function(dir) {
  testthat::skip_if_not(nzchar(Sys.which("openssl")), "the openssl command is not installed")
  testthat::skip_if_not_installed("openssl")
  make_ca(dir)
}
