"""Likelihood-calibration audit (`ntm-bench audit-likelihood`): are the reported NLLs what they claim to be?

Parts, one module each: `truth_gap` (model NLL against the exact NLL of a known-density world,
`benchmarks.worlds.gaussian`), `agreement` (IWAE ladder, ODE solver and probe settings, float64),
`ood` (raw and complexity-corrected NLL as an out-of-distribution score), `conditional` (does the
matched caption get the higher likelihood), `typicality` (NLL of a model's own samples against data).
`run.run_audit` runs them for a preset and `report` writes the summary and plots.
"""
