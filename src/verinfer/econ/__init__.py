"""verinfer.econ: when Proof of Sampling makes cheating unprofitable — calculator, simulator, charts."""
