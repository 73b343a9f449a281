-- Repricing: events recorded unpriced (a model with no known price: cost NULL) priced
-- later, from the price table of the day, and the correction exported.
--
-- reprice_usage_events(prices jsonb) takes [{id, input_cost_usd, output_cost_usd,
-- price_source, correction_id}] and, in one transaction: prices each event that is
-- still unpriced (its cost, split and source; an event priced meanwhile is left alone,
-- so a repeated or concurrent run adds nothing twice), adds the cost to its call's
-- usage_stats (total, bot or insights, the model's cost; one unpriced event fewer;
-- seconds and counts untouched), to the three hourly rollups and to the key's spend of
-- the event's UTC day that budgets read (usage_spend_daily: cost; one unpriced event
-- fewer), and records one usage_corrections row per event priced. Row locks are taken
-- threads first, in id order, like record_usage_events, then the per-call rollups; the
-- rollup over many calls (dimensions) and the day's spend are written in the shards the
-- ledger's triggers use (usage_rollup_dims_shard, usage_spend_add), so the two never
-- deadlock.
--
-- usage_corrections: what the exports send. Every destination received (or will
-- receive) the original event as it was recorded, unpriced: the sync cycle sends an
-- event that has a correction with its recorded cost (none), and each correction once,
-- as an event of its own that names the original (`corrects`), after a cursor of its
-- own (correction_txid, correction_seq: the same commit-safe cursor as the ledger's,
-- see analytics_export). So a destination counts the cost once whether it exported the
-- original before or after the repricing.

create table public.usage_corrections (
  id uuid primary key,
  seq bigint generated always as identity unique,
  event_id uuid not null unique references public.usage_events (id) on delete restrict,
  api_key_id uuid not null references public.api_keys (id) on delete restrict,
  workflow_thread_id uuid not null,
  end_user_id text,
  occurred_at timestamptz not null,
  kind text not null,
  category text not null,
  provider text not null,
  model text not null,
  cost_usd numeric(20, 10) not null check (cost_usd >= 0),
  price_source text,
  created_at timestamptz not null default now(),
  txid xid8 not null default pg_current_xact_id()
);
create index usage_corrections_export_idx on public.usage_corrections (txid, seq);
create index usage_corrections_key_export_idx
  on public.usage_corrections (api_key_id, txid, seq);

alter table public.usage_corrections enable row level security;
create policy service_role_all on public.usage_corrections
  for all to service_role using (true) with check (true);

create index usage_events_unpriced_idx on public.usage_events (api_key_id, occurred_at)
  where cost_usd is null;

alter table public.analytics_integrations
  add column correction_txid xid8 not null default '0'::xid8,
  add column correction_seq bigint not null default 0;

-- Add to a key's spend of a UTC day, as the ledger's trigger (usage_spend_apply) does:
-- in a shard of the day no other open transaction holds, so no writer waits for another.
create or replace function public.usage_spend_add(
  p_key uuid, p_day date, p_cost numeric, p_unpriced bigint)
returns void
language plpgsql
set search_path = public
as $$
declare
  v_lock integer := hashtext(p_key::text || ':' || p_day::text);
  v_shard integer;
begin
  for i in 0..15 loop
    if pg_try_advisory_xact_lock(v_lock, i) then
      v_shard := i;
      exit;
    end if;
  end loop;
  if v_shard is null then
    v_shard := (txid_current() % 16)::integer;
    perform pg_advisory_xact_lock(v_lock, v_shard);
  end if;
  insert into usage_spend_daily as s (api_key_id, day, shard, cost_usd, unpriced_events)
  values (p_key, p_day, v_shard, p_cost, p_unpriced)
  on conflict (api_key_id, day, shard) do update set
    cost_usd = s.cost_usd + excluded.cost_usd,
    unpriced_events = s.unpriced_events + excluded.unpriced_events;
end
$$;

create or replace function public.reprice_usage_events(prices jsonb)
returns jsonb
language plpgsql
set search_path = public
as $$
declare
  result jsonb;
  spend jsonb;
  dims jsonb;
  v_day jsonb;
begin
  if prices is null or jsonb_typeof(prices) <> 'array' then
    raise exception 'prices must be a JSON array' using errcode = '22023';
  end if;
  if jsonb_array_length(prices) > 10000 then
    raise exception 'at most 10000 events per call' using errcode = '22023';
  end if;

  perform 1 from workflow_threads
  where workflow_thread_id in (
    select e.workflow_thread_id from usage_events e
    where e.id in (select (p ->> 'id')::uuid from jsonb_array_elements(prices) p))
  order by workflow_thread_id
  for no key update;

  with incoming as (
    select distinct on ((p ->> 'id')::uuid)
      (p ->> 'id')::uuid as id,
      (p ->> 'input_cost_usd')::numeric as input_cost,
      (p ->> 'output_cost_usd')::numeric as output_cost,
      p ->> 'price_source' as source,
      (p ->> 'correction_id')::uuid as correction_id
    from jsonb_array_elements(prices) p
    order by (p ->> 'id')::uuid
  ),
  priced as (
    update usage_events e
    set input_cost_usd = i.input_cost,
        output_cost_usd = i.output_cost,
        cost_usd = i.input_cost + i.output_cost,
        price_source = i.source
    from incoming i
    where e.id = i.id and e.cost_usd is null
    returning e.*, i.correction_id
  ),
  corrections as (
    insert into usage_corrections (
      id, event_id, api_key_id, workflow_thread_id, end_user_id, occurred_at, kind,
      category, provider, model, cost_usd, price_source)
    select correction_id, id, api_key_id, workflow_thread_id, end_user_id, occurred_at,
      kind, category, provider, model, cost_usd, price_source
    from priced
    returning 1
  ),
  per_thread as (
    select p.workflow_thread_id,
      jsonb_build_object(
        'total_cost_usd', sum(p.cost_usd),
        'bot_cost_usd', coalesce(sum(p.cost_usd) filter (where p.category = 'bot'), 0),
        'insights_cost_usd', coalesce(sum(p.cost_usd) filter (where p.category = 'insights'), 0),
        'unpriced_events', -count(*)) as delta,
      (select jsonb_object_agg(m.model, jsonb_build_object('cost_usd', m.cost))
       from (select q.model, sum(q.cost_usd) as cost from priced q
             where q.workflow_thread_id = p.workflow_thread_id group by q.model) m) as models
    from priced p
    group by p.workflow_thread_id
  ),
  stats as (
    update workflow_threads t
    -- usage_stats_add replaces a model's entry with the delta's fields: the delta
    -- carries every field the entry has (0), and the cost.
    set usage_stats = usage_stats_add(t.usage_stats, d.delta, (
          select jsonb_object_agg(m.key, (
              select coalesce(jsonb_object_agg(f, 0), '{}'::jsonb)
              from jsonb_object_keys(coalesce(t.usage_stats -> 'models_used' -> m.key,
                                              '{}'::jsonb)) f) || m.value)
          from jsonb_each(d.models) m))
    from per_thread d
    where t.workflow_thread_id = d.workflow_thread_id
    returning 1
  ),
  fine as (
    update usage_rollup_hourly r
    set cost_usd = r.cost_usd + g.cost, unpriced_events = r.unpriced_events - g.n
    from (select api_key_id, date_trunc('hour', occurred_at, 'UTC') as hour,
                 workflow_thread_id, end_user_id, kind, category, model,
                 sum(cost_usd) as cost, count(*) as n
          from priced group by 1, 2, 3, 4, 5, 6, 7) g
    where r.api_key_id = g.api_key_id and r.bucket_hour = g.hour
      and r.workflow_thread_id = g.workflow_thread_id
      and r.end_user_id is not distinct from g.end_user_id
      and r.kind = g.kind and r.category = g.category and r.model = g.model
    returning 1
  ),
  coarse as (
    update usage_rollup_call_hourly r
    set cost_usd = r.cost_usd + g.cost, unpriced_events = r.unpriced_events - g.n
    from (select api_key_id, date_trunc('hour', occurred_at, 'UTC') as hour,
                 workflow_thread_id, end_user_id, sum(cost_usd) as cost, count(*) as n
          from priced group by 1, 2, 3, 4) g
    where r.api_key_id = g.api_key_id and r.bucket_hour = g.hour
      and r.workflow_thread_id = g.workflow_thread_id
      and r.end_user_id is not distinct from g.end_user_id
    returning 1
  )
  -- Data-modifying CTEs always run to completion.
  select jsonb_build_object(
    'priced', (select count(*) from priced),
    'cost_usd', coalesce((select sum(cost_usd) from priced), 0)::text,
    'corrections', (select count(*) from corrections)),
    (select jsonb_agg(jsonb_build_array(d.api_key_id, d.day, d.cost::text, d.n)
                      order by d.api_key_id, d.day)
     from (select api_key_id, (occurred_at at time zone 'UTC')::date as day,
                  sum(cost_usd) as cost, count(*) as n
           from priced group by 1, 2) d),
    (select jsonb_agg(to_jsonb(d) order by d.api_key_id, d.hour, d.kind, d.category, d.model)
     from (select api_key_id, date_trunc('hour', occurred_at, 'UTC') as hour, kind, category,
                  model, sum(cost_usd) as cost,
                  coalesce(sum(cost_usd) filter (where end_user_id is not null), 0) as user_cost,
                  count(*) as n
           from priced group by 1, 2, 3, 4, 5) d)
  into result, spend, dims;

  -- The dimensions rollup sums many calls of a key: the cost goes to this transaction's
  -- shard of the key (usage_rollup_dims_shard), as the ledger's trigger writes it.
  insert into usage_rollup_dims_hourly as r (
    api_key_id, bucket_hour, kind, category, model, shard, events, input_tokens,
    output_tokens, cache_read_tokens, input_audio_tokens, output_audio_tokens,
    cache_read_audio_tokens, characters, audio_seconds, cost_usd, end_user_cost_usd,
    unpriced_events, latency_ms_sum, latency_events, error_events)
  select d.api_key_id, d.hour, d.kind, d.category, d.model,
    usage_rollup_dims_shard(d.api_key_id), 0, 0, 0, 0, 0, 0, 0, 0, 0, d.cost, d.user_cost,
    -d.n, 0, 0, 0
  from jsonb_to_recordset(coalesce(dims, '[]'::jsonb)) as d(
    api_key_id uuid, hour timestamptz, kind text, category text, model text, cost numeric,
    user_cost numeric, n bigint)
  order by 1, 2, 3, 4, 5
  on conflict (api_key_id, bucket_hour, kind, category, model, shard) do update set
    cost_usd = r.cost_usd + excluded.cost_usd,
    end_user_cost_usd = r.end_user_cost_usd + excluded.end_user_cost_usd,
    unpriced_events = r.unpriced_events + excluded.unpriced_events;

  -- Keys and days in a fixed order, as the ledger's trigger takes them.
  for v_day in select x from jsonb_array_elements(coalesce(spend, '[]'::jsonb)) x loop
    perform usage_spend_add((v_day ->> 0)::uuid, (v_day ->> 1)::date,
                            (v_day ->> 2)::numeric, -(v_day ->> 3)::bigint);
  end loop;
  return result;
end
$$;

-- One page of corrections after the integration's correction cursor, for the lease
-- holder (as analytics_export_page for the ledger).
create or replace function public.analytics_correction_page(
  p_id uuid, p_owner text, p_limit integer)
returns jsonb
language plpgsql
stable
set search_path = public
as $$
declare
  i analytics_integrations;
  horizon xid8 := pg_snapshot_xmin(pg_current_snapshot());
  page jsonb;
begin
  select * into i from analytics_integrations where id = p_id;
  if not found then
    return jsonb_build_object('status', 'deleted', 'leased', false);
  end if;
  if i.lease_owner is distinct from p_owner or i.status <> 'syncing' then
    return jsonb_build_object('status', i.status, 'leased', false);
  end if;
  with scan as (
    select c.* from usage_corrections c
    where (i.all_keys or c.api_key_id = i.api_key_id)
      and (c.txid, c.seq) > (i.correction_txid, i.correction_seq) and c.txid < horizon
    order by c.txid, c.seq
    limit greatest(p_limit, 1)
  )
  select jsonb_build_object(
    'status', 'syncing', 'leased', true, 'scanned', count(*),
    'last', (array_agg(jsonb_build_array(s.txid::text, s.seq)
               order by s.txid desc, s.seq desc))[1],
    'rows', coalesce(jsonb_agg(jsonb_build_object(
        'id', s.id, 'corrects', s.event_id, 'seq', s.seq,
        'workflow_thread_id', s.workflow_thread_id, 'api_key_id', s.api_key_id,
        'end_user_id', s.end_user_id, 'occurred_at', s.occurred_at, 'kind', s.kind,
        'category', s.category, 'provider', s.provider, 'model', s.model,
        'input_tokens', 0, 'output_tokens', 0, 'input_audio_tokens', 0,
        'output_audio_tokens', 0, 'cache_read_audio_tokens', 0, 'characters', 0,
        'audio_seconds', '0', 'cost_usd', s.cost_usd::text, 'latency_ms', null,
        'status_code', null, 'is_error', false, 'cache_hit', false, 'estimated', false)
      order by s.txid, s.seq)
      filter (where i.backfill_from is null or s.occurred_at >= i.backfill_from), '[]'::jsonb))
  into page
  from scan s;
  return page;
end
$$;

create or replace function public.analytics_correction_advance(
  p_id uuid, p_owner text, p_txid text, p_seq bigint, p_exported integer,
  p_skipped integer, p_warning text, p_lease_seconds integer)
returns table (status text, events_exported bigint)
language sql
volatile
set search_path = public
as $$
  update analytics_integrations a
  set correction_txid = p_txid::xid8,
      correction_seq = p_seq,
      events_exported = a.events_exported + greatest(p_exported, 0),
      events_skipped = a.events_skipped + greatest(p_skipped, 0),
      last_warning = coalesce(p_warning, a.last_warning),
      lease_expires_at = now() + make_interval(secs => p_lease_seconds)
  where a.id = p_id and a.lease_owner = p_owner
    and (a.correction_txid, a.correction_seq) < (p_txid::xid8, p_seq)
  returning a.status, a.events_exported;
$$;

-- Which of these ledger rows have a correction (the sync cycle sends them as recorded).
create or replace function public.usage_corrected(p_ids uuid[])
returns setof uuid
language sql
stable
set search_path = public
as $$
  select c.event_id from usage_corrections c where c.event_id = any (p_ids);
$$;

-- A new integration exporting "from now" starts both cursors at the current horizon.
create or replace function public.analytics_export_start_now(p_id uuid)
returns void
language sql
volatile
set search_path = public
as $$
  update analytics_integrations
  set cursor_txid = pg_snapshot_xmin(pg_current_snapshot()),
      cursor_seq = 0,
      correction_txid = pg_snapshot_xmin(pg_current_snapshot()),
      correction_seq = 0
  where id = p_id;
$$;

do $$
declare
  fn text;
begin
  foreach fn in array array[
    'reprice_usage_events(jsonb)',
    'usage_spend_add(uuid, date, numeric, bigint)',
    'usage_corrected(uuid[])',
    'analytics_correction_page(uuid, text, integer)',
    'analytics_correction_advance(uuid, text, text, bigint, integer, integer, text, integer)',
    'analytics_export_start_now(uuid)'
  ] loop
    execute format('revoke execute on function public.%s from public, anon, authenticated', fn);
    execute format('grant execute on function public.%s to service_role', fn);
  end loop;
end
$$;
