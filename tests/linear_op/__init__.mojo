# An experimental op (mwc_ln_linear) kept for its probe (tests/gpu_probe.py linear); see linear.mojo.
