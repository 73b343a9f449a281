-- A third rollup, for reports by model, category or kind: per key, UTC hour, kind,
-- category and model, without the call and the end user (a tenth of the rows of
-- usage_rollup_hourly when calls are short). Sums by those groups read it; distinct
-- calls and end users per group are still counted exactly over usage_rollup_hourly,
-- which keeps both. Kept by its own statement trigger in the same transaction as every
-- insert, like the others (it fires after them: triggers fire in name order, so locks
-- are always taken table by table in the same order).
--
-- A row sums many calls of a key, so a transaction never waits for another to add to
-- it: as usage_spend_daily does, each takes a shard of the key no other open
-- transaction holds (a transaction-scoped advisory lock per key and shard, tried in
-- order: usage_rollup_dims_shard), and writes only that shard's rows until it commits.
-- Readers sum the shards. Only when all 16 shards of a key are held at once does a
-- writer wait, for one of them.
--
-- end_user_cost_usd: the cost of the events that name an end user (the report's
-- average per end user divides it by the distinct end users).
--
-- usage_report: the version of 20261128140000_telephony, reading this rollup for
-- the sums by model, category and kind, the per-call rollup for the totals' distinct
-- calls and end users, and the ledger's partial hours once; groups joined by hash.

create table public.usage_rollup_dims_hourly (
  api_key_id uuid not null references public.api_keys (id) on delete restrict,
  bucket_hour timestamptz not null,
  kind text not null,
  category text not null,
  model text not null,
  events bigint not null,
  input_tokens bigint not null,
  output_tokens bigint not null,
  cache_read_tokens bigint not null,
  input_audio_tokens bigint not null,
  output_audio_tokens bigint not null,
  cache_read_audio_tokens bigint not null,
  characters bigint not null,
  audio_seconds numeric not null,
  cost_usd numeric not null,
  end_user_cost_usd numeric not null,
  unpriced_events bigint not null,
  latency_ms_sum numeric not null,
  latency_events bigint not null,
  error_events bigint not null,
  shard smallint not null default 0 check (shard between 0 and 15),
  primary key (api_key_id, bucket_hour, kind, category, model, shard)
);

alter table public.usage_rollup_dims_hourly enable row level security;
create policy service_role_all on public.usage_rollup_dims_hourly
  for all to service_role using (true) with check (true);

-- The shard of p_key's dimensions rows this transaction writes: the first no other open
-- transaction holds (the same one for the rest of the transaction: advisory locks are
-- re-entrant), or, when all are held, one to wait for.
create or replace function public.usage_rollup_dims_shard(p_key uuid)
returns smallint
language plpgsql
set search_path = public
as $$
declare
  v_lock integer := hashtext('usage_rollup_dims:' || p_key::text);
begin
  for i in 0..15 loop
    if pg_try_advisory_xact_lock(v_lock, i) then
      return i;
    end if;
  end loop;
  perform pg_advisory_xact_lock(v_lock, (txid_current() % 16)::integer);
  return (txid_current() % 16)::smallint;
end
$$;

create or replace function public.usage_rollup_dims_apply() returns trigger
language plpgsql
set search_path = public
as $$
declare
  v_keys uuid[];
  v_key uuid;
  v_shards smallint[] := '{}';
begin
  -- Keys in a fixed order, so writers that must wait cannot deadlock.
  select array_agg(k.api_key_id order by k.api_key_id) into v_keys
  from (select distinct n.api_key_id from new_rows n) k;
  if v_keys is null then  -- an insert that added nothing (every event already recorded)
    return null;
  end if;
  foreach v_key in array v_keys loop
    v_shards := v_shards || usage_rollup_dims_shard(v_key);
  end loop;

  insert into usage_rollup_dims_hourly as r (
    api_key_id, bucket_hour, kind, category, model, shard, events, input_tokens,
    output_tokens, cache_read_tokens, input_audio_tokens, output_audio_tokens,
    cache_read_audio_tokens, characters, audio_seconds, cost_usd, end_user_cost_usd,
    unpriced_events, latency_ms_sum, latency_events, error_events)
  select
    n.api_key_id, date_trunc('hour', n.occurred_at, 'UTC'), n.kind, n.category, n.model,
    m.shard,
    count(*), sum(n.input_tokens), sum(n.output_tokens), sum(n.cache_read_tokens),
    sum(n.input_audio_tokens), sum(n.output_audio_tokens), sum(n.cache_read_audio_tokens),
    sum(n.characters), sum(n.audio_seconds), coalesce(sum(n.cost_usd), 0),
    coalesce(sum(n.cost_usd) filter (where n.end_user_id is not null), 0),
    count(*) filter (where n.cost_usd is null), coalesce(sum(n.latency_ms), 0),
    count(n.latency_ms), count(*) filter (where n.is_error)
  from new_rows n
  join unnest(v_keys, v_shards) m(api_key_id, shard) on m.api_key_id = n.api_key_id
  group by 1, 2, 3, 4, 5, 6
  order by 1, 2, 3, 4, 5, 6
  on conflict (api_key_id, bucket_hour, kind, category, model, shard)
  do update set
    events = r.events + excluded.events,
    input_tokens = r.input_tokens + excluded.input_tokens,
    output_tokens = r.output_tokens + excluded.output_tokens,
    cache_read_tokens = r.cache_read_tokens + excluded.cache_read_tokens,
    input_audio_tokens = r.input_audio_tokens + excluded.input_audio_tokens,
    output_audio_tokens = r.output_audio_tokens + excluded.output_audio_tokens,
    cache_read_audio_tokens = r.cache_read_audio_tokens + excluded.cache_read_audio_tokens,
    characters = r.characters + excluded.characters,
    audio_seconds = r.audio_seconds + excluded.audio_seconds,
    cost_usd = r.cost_usd + excluded.cost_usd,
    end_user_cost_usd = r.end_user_cost_usd + excluded.end_user_cost_usd,
    unpriced_events = r.unpriced_events + excluded.unpriced_events,
    latency_ms_sum = r.latency_ms_sum + excluded.latency_ms_sum,
    latency_events = r.latency_events + excluded.latency_events,
    error_events = r.error_events + excluded.error_events;
  return null;
end
$$;

create trigger usage_events_rollup_dims
  after insert on public.usage_events
  referencing new table as new_rows
  for each statement execute function public.usage_rollup_dims_apply();

revoke execute on function public.usage_rollup_dims_apply() from public, anon, authenticated;
revoke execute on function public.usage_rollup_dims_shard(uuid) from public, anon, authenticated;

-- Rows recorded before this migration, from the finer rollup (same sums).
insert into public.usage_rollup_dims_hourly (
  api_key_id, bucket_hour, kind, category, model, events, input_tokens, output_tokens,
  cache_read_tokens, input_audio_tokens, output_audio_tokens, cache_read_audio_tokens,
  characters, audio_seconds, cost_usd, end_user_cost_usd, unpriced_events,
  latency_ms_sum, latency_events, error_events)
select api_key_id, bucket_hour, kind, category, model, sum(events), sum(input_tokens),
  sum(output_tokens), sum(cache_read_tokens), sum(input_audio_tokens),
  sum(output_audio_tokens), sum(cache_read_audio_tokens), sum(characters),
  sum(audio_seconds), sum(cost_usd),
  coalesce(sum(cost_usd) filter (where end_user_id is not null), 0), sum(unpriced_events),
  sum(latency_ms_sum), sum(latency_events), sum(error_events)
from public.usage_rollup_hourly
group by 1, 2, 3, 4, 5;

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
  -- rollup; the others sum the dimensions rollup and count distinct calls and end users
  -- over the finer one. A branch whose one-time filter is false is never executed.
  with edges as materialized (
    select e.*,
      case p_group_by
        when 'model' then e.model when 'category' then e.category when 'kind' then e.kind
        when 'end_user' then e.end_user_id
      end as key_text,
      case when p_group_by = 'day' then date_trunc('day', e.occurred_at, 'UTC') end as key_day
    from usage_events e
    where e.api_key_id = p_api_key_id
      and ((e.occurred_at >= p_start and e.occurred_at < whole_start)
        or (e.occurred_at >= whole_end and e.occurred_at < p_end))
  ),
  parts as (
    select
      case when p_group_by = 'end_user' then c.end_user_id end as key_text,
      case when p_group_by = 'day' then date_trunc('day', c.bucket_hour, 'UTC') end as key_day,
      c.events, c.llm_calls, c.input_tokens,
      c.output_tokens, c.cache_read_tokens, c.input_audio_tokens, c.output_audio_tokens,
      c.cache_read_audio_tokens, c.tts_characters, c.stt_seconds, c.telephony_seconds,
      c.cost_usd,
      case when c.end_user_id is not null then c.cost_usd else 0 end as end_user_cost_usd,
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
      r.events,
      case when r.kind = 'llm' then r.events else 0 end, r.input_tokens, r.output_tokens,
      r.cache_read_tokens, r.input_audio_tokens, r.output_audio_tokens,
      r.cache_read_audio_tokens, case when r.kind = 'tts' then r.characters else 0 end,
      case when r.kind = 'stt' then r.audio_seconds else 0 end,
      case when r.kind = 'telephony' then r.audio_seconds else 0 end, r.cost_usd,
      r.end_user_cost_usd,
      r.unpriced_events, case when r.kind = 'llm' then r.latency_ms_sum else 0 end,
      case when r.kind = 'llm' then r.latency_events else 0 end, r.error_events
    from usage_rollup_dims_hourly r
    where not per_call
      and r.api_key_id = p_api_key_id
      and r.bucket_hour >= whole_start and r.bucket_hour < whole_end
    union all
    select key_text, key_day, 1, (e.kind = 'llm')::int, e.input_tokens,
      e.output_tokens, e.cache_read_tokens, e.input_audio_tokens, e.output_audio_tokens,
      e.cache_read_audio_tokens,
      case when e.kind = 'tts' then e.characters else 0 end,
      case when e.kind = 'stt' then e.audio_seconds else 0 end,
      case when e.kind = 'telephony' then e.audio_seconds else 0 end, coalesce(e.cost_usd, 0),
      case when e.end_user_id is not null then coalesce(e.cost_usd, 0) else 0 end,
      (e.cost_usd is null)::int,
      case when e.kind = 'llm' then coalesce(e.latency_ms, 0) else 0 end,
      (e.kind = 'llm' and e.latency_ms is not null)::int, e.is_error::int
    from edges e
  ),
  -- Who took part in each group: the calls and end users counted once each.
  members as materialized (
    select
      case when p_group_by = 'end_user' then c.end_user_id end as key_text,
      case when p_group_by = 'day' then date_trunc('day', c.bucket_hour, 'UTC') end as key_day,
      c.workflow_thread_id, c.end_user_id
    from usage_rollup_call_hourly c
    where per_call
      and c.api_key_id = p_api_key_id
      and c.bucket_hour >= whole_start and c.bucket_hour < whole_end
    union all
    select
      case p_group_by
        when 'model' then r.model when 'category' then r.category when 'kind' then r.kind
      end,
      null::timestamptz, r.workflow_thread_id, r.end_user_id
    from usage_rollup_hourly r
    where not per_call
      and r.api_key_id = p_api_key_id
      and r.bucket_hour >= whole_start and r.bucket_hour < whole_end
    union all
    select e.key_text, e.key_day, e.workflow_thread_id, e.end_user_id from edges e
  ),
  -- Every call and end user of the period, for the totals: the per-call rollup has them
  -- all, in fewer rows than the finer one.
  everyone as materialized (
    select c.workflow_thread_id, c.end_user_id
    from usage_rollup_call_hourly c
    where c.api_key_id = p_api_key_id
      and c.bucket_hour >= whole_start and c.bucket_hour < whole_end
    union all
    select e.workflow_thread_id, e.end_user_id from edges e
  ),
  -- Groups are joined on a jsonb key (a null group stays distinct from any text), which
  -- hashes, where IS NOT DISTINCT FROM would join hundreds of groups pair by pair.
  sums as (
    select key_text, key_day, jsonb_build_array(key_text, key_day) as gk,
      sum(events) as events,
      sum(llm_calls) as llm_calls,
      sum(input_tokens) as input_tokens, sum(output_tokens) as output_tokens,
      sum(cache_read_tokens) as cached_tokens,
      sum(input_audio_tokens) as input_audio_tokens,
      sum(output_audio_tokens) as output_audio_tokens,
      sum(cache_read_audio_tokens) as cache_read_audio_tokens,
      sum(tts_characters) as tts_characters,
      sum(stt_seconds) as stt_seconds,
      sum(telephony_seconds) as telephony_seconds,
      sum(cost_usd) as cost_usd,
      sum(end_user_cost_usd) as end_user_cost_usd,
      sum(unpriced_events) as unpriced_events,
      sum(llm_latency_ms_sum) as llm_latency_ms_sum,
      sum(llm_latency_events) as llm_latency_events,
      sum(error_events) as error_events
    from parts
    group by key_text, key_day
  ),
  calls as (
    select jsonb_build_array(key_text, key_day) as gk, count(*) as calls
    from (select distinct key_text, key_day, workflow_thread_id from members) d
    group by key_text, key_day
  ),
  users as (
    select jsonb_build_array(key_text, key_day) as gk, count(*) as end_users
    from (select distinct key_text, key_day, end_user_id from members
          where end_user_id is not null) d
    group by key_text, key_day
  ),
  group_rows as (
    select false as is_total, s.key_text, s.key_day, s.events, s.llm_calls, s.input_tokens,
      s.output_tokens, s.cached_tokens, s.input_audio_tokens, s.output_audio_tokens,
      s.cache_read_audio_tokens, s.tts_characters, s.stt_seconds, s.telephony_seconds,
      s.cost_usd, s.end_user_cost_usd, s.unpriced_events, s.llm_latency_ms_sum, s.llm_latency_events,
      s.error_events, coalesce(c.calls, 0) as calls, coalesce(u.end_users, 0) as end_users
    from sums s
    left join calls c on c.gk = s.gk
    left join users u on u.gk = s.gk
    where p_group_by is not null
  ),
  total_row as (
    select true as is_total, null::text, null::timestamptz,
      coalesce(sum(s.events), 0), coalesce(sum(s.llm_calls), 0),
      coalesce(sum(s.input_tokens), 0), coalesce(sum(s.output_tokens), 0),
      coalesce(sum(s.cached_tokens), 0), coalesce(sum(s.input_audio_tokens), 0),
      coalesce(sum(s.output_audio_tokens), 0), coalesce(sum(s.cache_read_audio_tokens), 0),
      coalesce(sum(s.tts_characters), 0),
      coalesce(sum(s.stt_seconds), 0), coalesce(sum(s.telephony_seconds), 0),
      coalesce(sum(s.cost_usd), 0), coalesce(sum(s.end_user_cost_usd), 0), coalesce(sum(s.unpriced_events), 0),
      coalesce(sum(s.llm_latency_ms_sum), 0), coalesce(sum(s.llm_latency_events), 0),
      coalesce(sum(s.error_events), 0),
      (select count(*) from (select distinct workflow_thread_id from everyone) d),
      (select count(*) from (select distinct end_user_id from everyone
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
        'input_audio_tokens', r.input_audio_tokens,
        'output_audio_tokens', r.output_audio_tokens,
        'cache_read_audio_tokens', r.cache_read_audio_tokens,
        'tts_characters', r.tts_characters,
        'stt_seconds', r.stt_seconds::text,
        'telephony_seconds', r.telephony_seconds::text,
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
