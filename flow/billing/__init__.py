"""Billing: who to bill and for what. The operator's reports over every key, the
billing CSV, the per-key Stripe customer, and repricing events recorded unpriced.

Stripe's meter events themselves are sent by the ``stripe`` export
(:mod:`flow.exporters.stripe`), on the same cycle as the analytics exports.
"""
