"""Reporting: reading run logs, plots and the step-speed bench used by the CLI."""
