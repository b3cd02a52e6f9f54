library(testthat)
library(plexus)

test_check("plexus")
