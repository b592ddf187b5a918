"""
Benchmarks: Prosody answering roster gets itself (A) against Prosody
delegating them to rosteradmin (B).  Run with C{python -m bench.run}.
"""
