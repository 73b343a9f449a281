"""Proving the bill: the ledger compared with what the vendors say they served.

:mod:`flow.reconcile.openai` reads OpenAI's organization Usage and Costs APIs, and
:mod:`flow.reconcile.deepgram` Deepgram's project usage breakdown (or files
of their answers); :mod:`flow.reconcile.compare` lines them up with the ledger's own
daily sums per day, model and unit and diagnoses every difference; `flow reconcile`
(:mod:`flow.reconcile.commands`) prints the result and exits 1 when anything differs.
"""
