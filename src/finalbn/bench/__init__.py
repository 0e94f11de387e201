"""`finalbn bench`: what the study costs on this machine, measured in one run."""
