"""Database access: the async supabase-py client and one small repository per table.

Every write is a targeted update of named columns or a SQL function; nothing reads a
whole row, changes it in Python and writes it back.
"""
