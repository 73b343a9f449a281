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

revoke execute on function public.usage_rollup_apply() from public, anon, authenticated;

-- The second rollup, one row per key, UTC hour, call and end user (about a quarter of
-- the rows of usage_rollup_hourly, which also splits by kind, category and model).
-- Totals and reports by day or end user read it; reports by model, category or kind
-- read the finer one. Kept by its own statement trigger in the same transaction as
-- every insert, like the first; counts of distinct calls and end users stay exact
-- (both are its keys).

create table public.usage_rollup_call_hourly (
  api_key_id uuid not null references public.api_keys (id) on delete cascade,
  bucket_hour timestamptz not null,
  workflow_thread_id uuid not null
    references public.workflow_threads (workflow_thread_id) on delete cascade,
  end_user_id text,
  events bigint not null,
  llm_calls bigint not null,
  input_tokens bigint not null,
  output_tokens bigint not null,
  cache_read_tokens bigint not null,
  tts_characters bigint not null,
  stt_seconds numeric not null,
  cost_usd numeric not null,
  unpriced_events bigint not null,
  llm_latency_ms_sum numeric not null,
  llm_latency_events bigint not null,
  error_events bigint not null
);
create unique index usage_rollup_call_hourly_grain on public.usage_rollup_call_hourly
  (api_key_id, bucket_hour, workflow_thread_id, end_user_id) nulls not distinct;
create index usage_rollup_call_hourly_thread_idx
  on public.usage_rollup_call_hourly (workflow_thread_id);

alter table public.usage_rollup_call_hourly enable row level security;
create policy service_role_all on public.usage_rollup_call_hourly
  for all to service_role using (true) with check (true);

create or replace function public.usage_rollup_call_apply() returns trigger
language plpgsql
set search_path = public
as $$
begin
  insert into usage_rollup_call_hourly as r (
    api_key_id, bucket_hour, workflow_thread_id, end_user_id, events, llm_calls,
    input_tokens, output_tokens, cache_read_tokens, tts_characters, stt_seconds, cost_usd,
    unpriced_events, llm_latency_ms_sum, llm_latency_events, error_events)
  select
    n.api_key_id, date_trunc('hour', n.occurred_at, 'UTC'), n.workflow_thread_id,
    n.end_user_id, count(*), count(*) filter (where n.kind = 'llm'),
    sum(n.input_tokens), sum(n.output_tokens), sum(n.cache_read_tokens),
    coalesce(sum(n.characters) filter (where n.kind = 'tts'), 0),
    coalesce(sum(n.audio_seconds) filter (where n.kind = 'stt'), 0),
    coalesce(sum(n.cost_usd), 0), count(*) filter (where n.cost_usd is null),
    coalesce(sum(n.latency_ms) filter (where n.kind = 'llm'), 0),
    count(n.latency_ms) filter (where n.kind = 'llm'),
    count(*) filter (where n.is_error)
  from new_rows n
  group by 1, 2, 3, 4
  -- A fixed order of row locks, so concurrent batches cannot deadlock.
  order by 1, 2, 3, 4
  on conflict (api_key_id, bucket_hour, workflow_thread_id, end_user_id)
  do update set
    events = r.events + excluded.events,
    llm_calls = r.llm_calls + excluded.llm_calls,
    input_tokens = r.input_tokens + excluded.input_tokens,
    output_tokens = r.output_tokens + excluded.output_tokens,
    cache_read_tokens = r.cache_read_tokens + excluded.cache_read_tokens,
    tts_characters = r.tts_characters + excluded.tts_characters,
    stt_seconds = r.stt_seconds + excluded.stt_seconds,
    cost_usd = r.cost_usd + excluded.cost_usd,
    unpriced_events = r.unpriced_events + excluded.unpriced_events,
    llm_latency_ms_sum = r.llm_latency_ms_sum + excluded.llm_latency_ms_sum,
    llm_latency_events = r.llm_latency_events + excluded.llm_latency_events,
    error_events = r.error_events + excluded.error_events;
  return null;
end
$$;

-- Fires after usage_events_rollup (triggers fire in name order): locks are always
-- taken in the same order, table by table.
create trigger usage_events_rollup_calls
  after insert on public.usage_events
  referencing new table as new_rows
  for each statement execute function public.usage_rollup_call_apply();

revoke execute on function public.usage_rollup_call_apply() from public, anon, authenticated;

-- Rows recorded before this migration.
insert into public.usage_rollup_call_hourly (
  api_key_id, bucket_hour, workflow_thread_id, end_user_id, events, llm_calls,
  input_tokens, output_tokens, cache_read_tokens, tts_characters, stt_seconds, cost_usd,
  unpriced_events, llm_latency_ms_sum, llm_latency_events, error_events)
select
  api_key_id, date_trunc('hour', occurred_at, 'UTC'), workflow_thread_id, end_user_id,
  count(*), count(*) filter (where kind = 'llm'), sum(input_tokens), sum(output_tokens),
  sum(cache_read_tokens), coalesce(sum(characters) filter (where kind = 'tts'), 0),
  coalesce(sum(audio_seconds) filter (where kind = 'stt'), 0), coalesce(sum(cost_usd), 0),
  count(*) filter (where cost_usd is null),
  coalesce(sum(latency_ms) filter (where kind = 'llm'), 0),
  count(latency_ms) filter (where kind = 'llm'), count(*) filter (where is_error)
from public.usage_events
group by 1, 2, 3, 4;

-- The report for one key over [p_start, p_end): totals, and groups when p_group_by is
-- one of day (UTC date), model, category, kind, end_user. Decimal figures are text so
-- clients keep every digit; averages are null when there is nothing to average. Sums are
-- one hash aggregate per group, distinct calls and end users hash-distinct passes, and
-- the work memory is large enough that nothing spills to disk.
create or replace function public.usage_report(
  p_api_key_id uuid,
  p_start timestamptz,
  p_end timestamptz,
  p_group_by text default null
) returns jsonb
language plpgsql
stable
set search_path = public
set work_mem = '64MB'
as $$
declare
  whole_start timestamptz := date_trunc('hour', p_start, 'UTC')
    + case when date_trunc('hour', p_start, 'UTC') = p_start then interval '0' else interval '1 hour' end;
  whole_end timestamptz := date_trunc('hour', p_end, 'UTC');
  per_call boolean := p_group_by is null or p_group_by in ('day', 'end_user');
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

  -- Reports that do not split a call by kind, category or model read the per-call
  -- rollup (about a quarter of the rows); the others the finer one. A branch whose
  -- one-time filter is false is never executed.
  with parts as materialized (
    select
      case when p_group_by = 'end_user' then c.end_user_id end as key_text,
      case when p_group_by = 'day' then date_trunc('day', c.bucket_hour, 'UTC') end as key_day,
      c.workflow_thread_id, c.end_user_id, c.events, c.llm_calls, c.input_tokens,
      c.output_tokens, c.cache_read_tokens, c.tts_characters, c.stt_seconds, c.cost_usd,
      c.unpriced_events, c.llm_latency_ms_sum, c.llm_latency_events, c.error_events
    from usage_rollup_call_hourly c
    where per_call
      and c.api_key_id = p_api_key_id
      and c.bucket_hour >= whole_start and c.bucket_hour < whole_end
    union all
    select
      case p_group_by
        when 'model' then r.model when 'category' then r.category when 'kind' then r.kind
      end,
      null::timestamptz,
      r.workflow_thread_id, r.end_user_id, r.events,
      case when r.kind = 'llm' then r.events else 0 end, r.input_tokens, r.output_tokens,
      r.cache_read_tokens, case when r.kind = 'tts' then r.characters else 0 end,
      case when r.kind = 'stt' then r.audio_seconds else 0 end, r.cost_usd,
      r.unpriced_events, case when r.kind = 'llm' then r.latency_ms_sum else 0 end,
      case when r.kind = 'llm' then r.latency_events else 0 end, r.error_events
    from usage_rollup_hourly r
    where not per_call
      and r.api_key_id = p_api_key_id
      and r.bucket_hour >= whole_start and r.bucket_hour < whole_end
    union all
    select
      case p_group_by
        when 'model' then e.model when 'category' then e.category when 'kind' then e.kind
        when 'end_user' then e.end_user_id
      end,
      case when p_group_by = 'day' then date_trunc('day', e.occurred_at, 'UTC') end,
      e.workflow_thread_id, e.end_user_id, 1, (e.kind = 'llm')::int, e.input_tokens,
      e.output_tokens, e.cache_read_tokens,
      case when e.kind = 'tts' then e.characters else 0 end,
      case when e.kind = 'stt' then e.audio_seconds else 0 end, coalesce(e.cost_usd, 0),
      (e.cost_usd is null)::int,
      case when e.kind = 'llm' then coalesce(e.latency_ms, 0) else 0 end,
      (e.kind = 'llm' and e.latency_ms is not null)::int, e.is_error::int
    from usage_events e
    where e.api_key_id = p_api_key_id
      and ((e.occurred_at >= p_start and e.occurred_at < whole_start)
        or (e.occurred_at >= whole_end and e.occurred_at < p_end))
  ),
  sums as (
    select key_text, key_day,
      sum(events) as events,
      sum(llm_calls) as llm_calls,
      sum(input_tokens) as input_tokens, sum(output_tokens) as output_tokens,
      sum(cache_read_tokens) as cached_tokens,
      sum(tts_characters) as tts_characters,
      sum(stt_seconds) as stt_seconds,
      sum(cost_usd) as cost_usd,
      coalesce(sum(cost_usd) filter (where end_user_id is not null), 0) as end_user_cost_usd,
      sum(unpriced_events) as unpriced_events,
      sum(llm_latency_ms_sum) as llm_latency_ms_sum,
      sum(llm_latency_events) as llm_latency_events,
      sum(error_events) as error_events
    from parts
    group by key_text, key_day
  ),
  calls as (
    select key_text, key_day, count(*) as calls
    from (select distinct key_text, key_day, workflow_thread_id from parts) d
    group by key_text, key_day
  ),
  users as (
    select key_text, key_day, count(*) as end_users
    from (select distinct key_text, key_day, end_user_id from parts
          where end_user_id is not null) d
    group by key_text, key_day
  ),
  group_rows as (
    select false as is_total, s.key_text, s.key_day, s.events, s.llm_calls, s.input_tokens,
      s.output_tokens, s.cached_tokens, s.tts_characters, s.stt_seconds, s.cost_usd,
      s.end_user_cost_usd, s.unpriced_events, s.llm_latency_ms_sum, s.llm_latency_events,
      s.error_events, coalesce(c.calls, 0) as calls, coalesce(u.end_users, 0) as end_users
    from sums s
    left join calls c
      on c.key_text is not distinct from s.key_text and c.key_day is not distinct from s.key_day
    left join users u
      on u.key_text is not distinct from s.key_text and u.key_day is not distinct from s.key_day
    where p_group_by is not null
  ),
  total_row as (
    select true as is_total, null::text, null::timestamptz,
      coalesce(sum(s.events), 0), coalesce(sum(s.llm_calls), 0),
      coalesce(sum(s.input_tokens), 0), coalesce(sum(s.output_tokens), 0),
      coalesce(sum(s.cached_tokens), 0), coalesce(sum(s.tts_characters), 0),
      coalesce(sum(s.stt_seconds), 0), coalesce(sum(s.cost_usd), 0),
      coalesce(sum(s.end_user_cost_usd), 0), coalesce(sum(s.unpriced_events), 0),
      coalesce(sum(s.llm_latency_ms_sum), 0), coalesce(sum(s.llm_latency_events), 0),
      coalesce(sum(s.error_events), 0),
      (select count(*) from (select distinct workflow_thread_id from parts) d),
      (select count(*) from (select distinct end_user_id from parts
                             where end_user_id is not null) d)
    from sums s
  ),
  figures as (
    select r.is_total,
      coalesce(r.key_text, to_char(r.key_day at time zone 'UTC', 'YYYY-MM-DD')) as group_key,
      jsonb_build_object(
        'calls', r.calls,
        'end_users', r.end_users,
        'events', r.events,
        'llm_calls', r.llm_calls,
        'input_tokens', r.input_tokens,
        'output_tokens', r.output_tokens,
        'cached_tokens', r.cached_tokens,
        'tts_characters', r.tts_characters,
        'stt_seconds', r.stt_seconds::text,
        'cost_usd', r.cost_usd::text,
        'unpriced_events', r.unpriced_events,
        'avg_cost_per_call_usd', round(r.cost_usd / nullif(r.calls, 0), 10)::text,
        'avg_cost_per_end_user_usd',
          round(r.end_user_cost_usd / nullif(r.end_users, 0), 10)::text,
        'avg_llm_latency_ms',
          round(r.llm_latency_ms_sum / nullif(r.llm_latency_events, 0), 1)::text,
        'error_events', r.error_events,
        'error_rate', round(r.error_events::numeric / nullif(r.events, 0), 4)::text
      ) as figures
    from (select * from group_rows union all select * from total_row) r
  )
  select jsonb_build_object(
    'totals', (select f.figures from figures f where f.is_total),
    'groups', coalesce(
      (select jsonb_agg(jsonb_build_object('key', f.group_key) || f.figures
                        order by f.group_key nulls last)
       from figures f where not f.is_total), '[]'::jsonb))
  into result;
  return result;
end
$$;

revoke execute on function public.usage_report(uuid, timestamptz, timestamptz, text)
  from public, anon, authenticated;
grant execute on function public.usage_report(uuid, timestamptz, timestamptz, text) to service_role;
