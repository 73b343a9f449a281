"""Authentication of API callers: ``Authorization: Bearer <key>`` on every route.

Two modes, chosen by configuration:

- Unkey (``UNKEY_ROOT_KEY`` set): keys are verified by Unkey (``keys.verifyKey``, API v2)
  through the official ``unkey.py`` SDK; Unkey's ``keyId`` is mapped to our ``api_keys``
  row, created the first time the key is seen.
- Local (no Unkey): keys made by ``flow keys create``; only their sha256 is stored.

No mode accepts a token it has not verified. :class:`Authenticator` is the one entry
point the API uses; it owns the verification cache and the ``last_used_at`` throttle.
Operator tokens (``flow admin-token create``) are a separate credential for
``/api/admin/``: :mod:`flow.auth.operators`.
"""

from flow.auth.authenticator import Authenticator
from flow.auth.models import ApiKey, AuthFailure
from flow.auth.operators import Operator, OperatorAuthenticator

__all__ = ["ApiKey", "AuthFailure", "Authenticator", "Operator", "OperatorAuthenticator"]
