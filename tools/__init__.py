"""Stand-alone commands, run as `python -m tools.NAME` (see each module's --help)."""
