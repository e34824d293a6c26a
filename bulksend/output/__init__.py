"""What a send shows and writes.

``report`` (per-recipient report and summary), ``progress`` (the live line), ``logs`` (structured
logs, secrets scrubbed), ``outputs`` (every output path checked first), ``streams`` (stdout and
stderr whose reader went away), ``private`` (every file written is created owner-only).
"""
