"""The study's figures (matplotlib Figures, logged by the tracking layer or written by the report)."""
