"""Scheduled exports of the usage ledger to product-analytics tools.

One event per ledger row (``prism_request`` by default) goes to PostHog (``/batch/``) or
Mixpanel (``/track`` or ``/import``). A sync cycle reads rows after the integration's
cursor, sends them, and moves the cursor only once the destination accepted them; a lease
in the database lets one Flow instance sync an integration at a time. Resent events carry
the same PostHog ``uuid`` / Mixpanel ``$insert_id`` (derived from the ledger id), so a
retry is never counted twice.
"""
