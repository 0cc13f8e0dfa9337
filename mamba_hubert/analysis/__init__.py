"""Layer-wise mutual-information analysis: layer capture, MI estimators, plots and the `mamba-hubert-mi` CLI."""
