"""Outbound network access to addresses customers give Flow (webhooks, export hosts).

Everything Flow sends to a URL a customer chose goes through :mod:`flow.net.outbound`:
one policy (what may be called) and one client (that connects only to what the policy
checked).
"""
