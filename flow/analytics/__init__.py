"""Live analytics: what Flow tells PostHog as calls happen (``$ai_generation``,
``$ai_span``, ``$ai_trace``). It reads usage events; it never records them."""
