-- How far each integration's export is behind the ledger, for the metrics an operator
-- alerts on (flow_export_lag_rows, flow_export_lag_seconds): the ledger rows after its
-- cursor that it will export, and how long ago the oldest of them was recorded (0 when
-- it is caught up). The same rows analytics_export_backlog counts, for every integration
-- in one statement.
create or replace function public.analytics_export_lag()
returns table (id uuid, provider text, status text, lag_rows bigint, lag_seconds double precision)
language sql
stable
set search_path = public
as $$
  select i.id, i.provider, i.status, count(e.id),
    coalesce(extract(epoch from now() - min(e.recorded_at)), 0)::double precision
  from analytics_integrations i
  left join usage_events e on (i.all_keys or e.api_key_id = i.api_key_id)
    and (e.txid, e.seq) > (i.cursor_txid, i.cursor_seq)
    and (i.backfill_from is null or e.occurred_at >= i.backfill_from)
  group by i.id, i.provider, i.status;
$$;

revoke execute on function public.analytics_export_lag() from public, anon, authenticated;
grant execute on function public.analytics_export_lag() to service_role;
