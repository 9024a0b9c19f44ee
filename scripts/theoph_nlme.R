# Reference for insilico-estimation's FOCE-I on Theophylline (issue 11, item 1).
# R nlme maximum-likelihood fit of a custom one-compartment oral model in
# log ka, log CL, log V (not SSfol), AMT in mg as in ../shared/data/theoph.csv,
# diagonal random effects on all three, additive residual error.
#
#   Rscript scripts/theoph_nlme.R [path/to/theoph.csv] > estimation/tests/data/theoph_nlme.txt
#
# Constant convention: nlme's logLik includes the n*log(2*pi) term;
# -2LL is printed with it ("m2ll_with_const") and without ("m2ll_no_const").
suppressPackageStartupMessages(library(nlme))
args <- commandArgs(trailingOnly = TRUE)
path <- if (length(args) >= 1) args[1] else "../shared/data/theoph.csv"
raw <- read.csv(path, na.strings = ".")
dose <- raw[raw$EVID == 1, c("ID", "AMT")]
obs <- raw[raw$EVID == 0, c("ID", "TIME", "DV")]
obs$Dose <- dose$AMT[match(obs$ID, dose$ID)]
obs$ID <- factor(obs$ID)
d <- groupedData(DV ~ TIME | ID, data = obs)
pk1 <- function(Dose, t, lka, lCL, lV) {
  ka <- exp(lka); CL <- exp(lCL); V <- exp(lV); ke <- CL / V
  Dose * ka / (V * (ka - ke)) * (exp(-ke * t) - exp(-ka * t))
}
ctrl <- nlmeControl(maxIter = 200, pnlsMaxIter = 50, msMaxIter = 200, tolerance = 1e-7)
t0 <- proc.time()[["elapsed"]]
fit <- nlme(DV ~ pk1(Dose, TIME, lka, lCL, lV), data = d,
            fixed = lka + lCL + lV ~ 1, random = pdDiag(lka + lCL + lV ~ 1),
            start = c(lka = log(1.5), lCL = log(2.8), lV = log(32)),
            method = "ML", control = ctrl)
elapsed <- proc.time()[["elapsed"]] - t0
# Timing over repeated fits (the first one includes warm-up).
reps <- 20
t1 <- proc.time()[["elapsed"]]
for (i in seq_len(reps)) {
  invisible(nlme(DV ~ pk1(Dose, TIME, lka, lCL, lV), data = d,
                 fixed = lka + lCL + lV ~ 1, random = pdDiag(lka + lCL + lV ~ 1),
                 start = c(lka = log(1.5), lCL = log(2.8), lV = log(32)),
                 method = "ML", control = ctrl))
}
per_fit <- (proc.time()[["elapsed"]] - t1) / reps
fe <- fixef(fit)
sds <- as.numeric(VarCorr(fit)[1:3, "StdDev"])
ll <- as.numeric(logLik(fit))
n <- nrow(obs)
se <- sqrt(diag(fit$varFix))
cat(sprintf("nlme_version %s\n", as.character(packageVersion("nlme"))))
cat(sprintf("n_obs %d\n", n))
cat(sprintf("n_subjects %d\n", nlevels(obs$ID)))
cat(sprintf("ka %.10g\n", exp(fe[["lka"]])))
cat(sprintf("CL %.10g\n", exp(fe[["lCL"]])))
cat(sprintf("V %.10g\n", exp(fe[["lV"]])))
cat(sprintf("se_log_ka %.10g\n", se[["lka"]]))
cat(sprintf("se_log_CL %.10g\n", se[["lCL"]]))
cat(sprintf("se_log_V %.10g\n", se[["lV"]]))
cat(sprintf("omega_sd_ka %.10g\n", sds[1]))
cat(sprintf("omega_sd_CL %.10g\n", sds[2]))
cat(sprintf("omega_sd_V %.10g\n", sds[3]))
cat(sprintf("sigma_add %.10g\n", fit$sigma))
cat(sprintf("loglik %.10g\n", ll))
cat(sprintf("m2ll_with_const %.10g\n", -2 * ll))
cat(sprintf("m2ll_no_const %.10g\n", -2 * ll - n * log(2 * pi)))
cat(sprintf("fit_seconds_first %.4f\n", elapsed))
cat(sprintf("fit_seconds_mean_of_%d %.4f\n", reps, per_fit))
