"""pvq.theory: analytic SQNR, equal-compression accounting and per-layer bounds (Kuzmin et al., 2023)."""
