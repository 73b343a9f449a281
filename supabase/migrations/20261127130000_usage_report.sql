-- Per-key usage reports, computed in SQL.
--
-- usage_rollup_hourly sums the ledger per key, UTC hour, call, end user, kind, category
-- and model. A statement-level trigger on usage_events adds every inserted batch to it
-- in the same transaction (the ledger is append-only: rows leave only by cascade, and
-- the rollup cascades with them). usage_report reads whole hours from the rollup and
-- the partial hours at either end of the range from the ledger itself, so any range is
-- exact while a report over months reads thousands of rows instead of millions.
-- Counts of distinct calls and end users stay exact because both are rollup keys.

create table public.usage_rollup_hourly (
  api_key_id uuid not null references public.api_keys (id) on delete cascade,
  bucket_hour timestamptz not null,
  workflow_thread_id uuid not null
    references public.workflow_threads (workflow_thread_id) on delete cascade,
  end_user_id text,
  kind text not null,
  category text not null,
  model text not null,
  events bigint not null,
  input_tokens bigint not null,
  output_tokens bigint not null,
  cache_read_tokens bigint not null,
  characters bigint not null,
  audio_seconds numeric not null,
  cost_usd numeric not null,
  unpriced_events bigint not null,
  latency_ms_sum numeric not null,
  latency_events bigint not null,
  error_events bigint not null
);
create unique index usage_rollup_hourly_grain on public.usage_rollup_hourly
  (api_key_id, bucket_hour, workflow_thread_id, kind, category, model, end_user_id)
  nulls not distinct;
create index usage_rollup_hourly_thread_idx on public.usage_rollup_hourly (workflow_thread_id);

alter table public.usage_rollup_hourly enable row level security;
create policy service_role_all on public.usage_rollup_hourly
  for all to service_role using (true) with check (true);

create or replace function public.usage_rollup_apply() returns trigger
language plpgsql
set search_path = public
as $$
begin
  insert into usage_rollup_hourly as r (
    api_key_id, bucket_hour, workflow_thread_id, end_user_id, kind, category, model,
    events, input_tokens, output_tokens, cache_read_tokens, characters, audio_seconds,
    cost_usd, unpriced_events, latency_ms_sum, latency_events, error_events)
  select
    n.api_key_id, date_trunc('hour', n.occurred_at, 'UTC'), n.workflow_thread_id,
    n.end_user_id, n.kind, n.category, n.model,
    count(*), sum(n.input_tokens), sum(n.output_tokens), sum(n.cache_read_tokens),
    sum(n.characters), sum(n.audio_seconds), coalesce(sum(n.cost_usd), 0),
    count(*) filter (where n.cost_usd is null), coalesce(sum(n.latency_ms), 0),
    count(n.latency_ms), count(*) filter (where n.is_error)
  from new_rows n
  group by 1, 2, 3, 4, 5, 6, 7
  -- A fixed order of row locks, so concurrent batches cannot deadlock.
  order by 1, 2, 3, 4, 5, 6, 7
  on conflict (api_key_id, bucket_hour, workflow_thread_id, kind, category, model, end_user_id)
  do update set
    events = r.events + excluded.events,
    input_tokens = r.input_tokens + excluded.input_tokens,
    output_tokens = r.output_tokens + excluded.output_tokens,
    cache_read_tokens = r.cache_read_tokens + excluded.cache_read_tokens,
    characters = r.characters + excluded.characters,
    audio_seconds = r.audio_seconds + excluded.audio_seconds,
    cost_usd = r.cost_usd + excluded.cost_usd,
    unpriced_events = r.unpriced_events + excluded.unpriced_events,
    latency_ms_sum = r.latency_ms_sum + excluded.latency_ms_sum,
    latency_events = r.latency_events + excluded.latency_events,
    error_events = r.error_events + excluded.error_events;
  return null;
end
$$;

create trigger usage_events_rollup
  after insert on public.usage_events
  referencing new table as new_rows
  for each statement execute function public.usage_rollup_apply();

-- Rows recorded before this migration.
insert into public.usage_rollup_hourly (
  api_key_id, bucket_hour, workflow_thread_id, end_user_id, kind, category, model,
  events, input_tokens, output_tokens, cache_read_tokens, characters, audio_seconds,
  cost_usd, unpriced_events, latency_ms_sum, latency_events, error_events)
select
  api_key_id, date_trunc('hour', occurred_at, 'UTC'), workflow_thread_id, end_user_id,
  kind, category, model,
  count(*), sum(input_tokens), sum(output_tokens), sum(cache_read_tokens), sum(characters),
  sum(audio_seconds), coalesce(sum(cost_usd), 0), count(*) filter (where cost_usd is null),
  coalesce(sum(latency_ms), 0), count(latency_ms), count(*) filter (where is_error)
from public.usage_events
group by 1, 2, 3, 4, 5, 6, 7;

-- The report for one key over [p_start, p_end): totals, and groups when p_group_by is
-- one of day (UTC date), model, category, kind, end_user. Decimal figures are text so
-- clients keep every digit; averages are null when there is nothing to average.
create or replace function public.usage_report(
  p_api_key_id uuid,
  p_start timestamptz,
  p_end timestamptz,
  p_group_by text default null
) returns jsonb
language plpgsql
stable
set search_path = public
as $$
declare
  -- Whole UTC hours inside the range come from the rollup, the rest from the ledger.
  whole_start timestamptz := date_trunc('hour', p_start, 'UTC')
    + case when date_trunc('hour', p_start, 'UTC') = p_start then interval '0' else interval '1 hour' end;
  whole_end timestamptz := date_trunc('hour', p_end, 'UTC');
  result jsonb;
begin
  if p_api_key_id is null or p_start is null or p_end is null then
    raise exception 'p_api_key_id, p_start and p_end are required' using errcode = '22023';
  end if;
  if p_start >= p_end then
    raise exception 'start must be before end' using errcode = '22023';
  end if;
  if p_group_by is not null and p_group_by not in ('day', 'model', 'category', 'kind', 'end_user') then
    raise exception 'group_by must be one of day, model, category, kind, end_user (got %)',
      p_group_by using errcode = '22023';
  end if;
  if whole_start >= whole_end then
    whole_start := p_end;
    whole_end := p_end;
  end if;

  with parts as (
    select r.bucket_hour as at, r.workflow_thread_id, r.end_user_id, r.kind, r.category,
      r.model, r.events, r.input_tokens, r.output_tokens, r.cache_read_tokens, r.characters,
      r.audio_seconds, r.cost_usd, r.unpriced_events, r.latency_ms_sum, r.latency_events,
      r.error_events
    from usage_rollup_hourly r
    where r.api_key_id = p_api_key_id
      and r.bucket_hour >= whole_start and r.bucket_hour < whole_end
    union all
    select e.occurred_at, e.workflow_thread_id, e.end_user_id, e.kind, e.category, e.model,
      1, e.input_tokens, e.output_tokens, e.cache_read_tokens, e.characters,
      e.audio_seconds, coalesce(e.cost_usd, 0), (e.cost_usd is null)::int,
      coalesce(e.latency_ms, 0), (e.latency_ms is not null)::int, e.is_error::int
    from usage_events e
    where e.api_key_id = p_api_key_id
      and ((e.occurred_at >= p_start and e.occurred_at < whole_start)
        or (e.occurred_at >= whole_end and e.occurred_at < p_end))
  ),
  keyed as (
    select p.*,
      case p_group_by
        when 'day' then to_char(p.at at time zone 'UTC', 'YYYY-MM-DD')
        when 'model' then p.model
        when 'category' then p.category
        when 'kind' then p.kind
        when 'end_user' then p.end_user_id
      end as group_key
    from parts p
  ),
  metrics as (
    select grouping(k.group_key) = 1 as is_total, k.group_key,
      jsonb_build_object(
        'calls', count(distinct k.workflow_thread_id),
        'end_users', count(distinct k.end_user_id),
        'events', coalesce(sum(k.events), 0),
        'llm_calls', coalesce(sum(k.events) filter (where k.kind = 'llm'), 0),
        'input_tokens', coalesce(sum(k.input_tokens), 0),
        'output_tokens', coalesce(sum(k.output_tokens), 0),
        'cached_tokens', coalesce(sum(k.cache_read_tokens), 0),
        'tts_characters', coalesce(sum(k.characters) filter (where k.kind = 'tts'), 0),
        'stt_seconds', coalesce(sum(k.audio_seconds) filter (where k.kind = 'stt'), 0)::text,
        'cost_usd', coalesce(sum(k.cost_usd), 0)::text,
        'unpriced_events', coalesce(sum(k.unpriced_events), 0),
        'avg_cost_per_call_usd',
          round(sum(k.cost_usd) / nullif(count(distinct k.workflow_thread_id), 0), 10)::text,
        'avg_cost_per_end_user_usd',
          round(sum(k.cost_usd) filter (where k.end_user_id is not null)
                / nullif(count(distinct k.end_user_id), 0), 10)::text,
        'avg_llm_latency_ms',
          round(sum(k.latency_ms_sum) filter (where k.kind = 'llm')
                / nullif(sum(k.latency_events) filter (where k.kind = 'llm'), 0), 1)::text,
        'error_events', coalesce(sum(k.error_events), 0),
        'error_rate', round(sum(k.error_events)::numeric / nullif(sum(k.events), 0), 4)::text
      ) as figures
    from keyed k
    group by grouping sets ((), (k.group_key))
  )
  select jsonb_build_object(
    -- The empty grouping set yields its row even when no event matches.
    'totals', (select m.figures from metrics m where m.is_total),
    'groups', case when p_group_by is null then '[]'::jsonb else coalesce(
      (select jsonb_agg(jsonb_build_object('key', m.group_key) || m.figures
                        order by m.group_key nulls last)
       from metrics m where not m.is_total), '[]'::jsonb) end)
  into result;
  return result;
end
$$;

revoke execute on function public.usage_report(uuid, timestamptz, timestamptz, text)
  from public, anon, authenticated;
grant execute on function public.usage_report(uuid, timestamptz, timestamptz, text) to service_role;
revoke execute on function public.usage_rollup_apply() from public, anon, authenticated;
