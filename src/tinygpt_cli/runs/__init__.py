"""Many runs at once: the runs table, sweeps, benchmarks of a configuration, loss plots."""
