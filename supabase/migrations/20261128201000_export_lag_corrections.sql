-- An integration's export lag counts its pending corrections too: the repricings after
-- its correction cursor (what analytics_corrections_page will send), beside the ledger
-- rows after its cursor; lag_seconds is the age of the oldest of either (0 when it is
-- caught up). Otherwise as in 20261128160000_export_lag.
create or replace function public.analytics_export_lag()
returns table (id uuid, provider text, status text, lag_rows bigint, lag_seconds double precision)
language sql
stable
set search_path = public
as $$
  with ledger as (
    select i.id, count(e.id) as n, min(e.recorded_at) as oldest
    from analytics_integrations i
    left join usage_events e on (i.all_keys or e.api_key_id = i.api_key_id)
      and (e.txid, e.seq) > (i.cursor_txid, i.cursor_seq)
      and (i.backfill_from is null or e.occurred_at >= i.backfill_from)
    group by i.id
  ),
  fixes as (
    select i.id, count(c.id) as n, min(c.created_at) as oldest
    from analytics_integrations i
    left join usage_corrections c on (i.all_keys or c.api_key_id = i.api_key_id)
      and (c.txid, c.seq) > (i.correction_txid, i.correction_seq)
    group by i.id
  )
  select i.id, i.provider, i.status, l.n + f.n,
    coalesce(extract(epoch from now() - least(l.oldest, f.oldest)), 0)::double precision
  from analytics_integrations i
  join ledger l on l.id = i.id
  join fixes f on f.id = i.id;
$$;

revoke execute on function public.analytics_export_lag() from public, anon, authenticated;
grant execute on function public.analytics_export_lag() to service_role;
