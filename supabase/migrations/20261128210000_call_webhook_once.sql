-- A finished call's webhook (call.completed or call.failed) is sent once, whoever ends
-- the call: its own instance, a live instance failing the calls of one that is gone, or
-- a stop request the database answered. The sender claims it first, in one conditional
-- update; only the writer that set this column sends.
alter table public.workflow_threads add column webhook_claimed_at timestamptz;
