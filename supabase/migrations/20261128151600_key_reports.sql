-- Reports over many keys at once: the operator's console (every key's usage, sorted by
-- cost, with its cost split by kind) and the billing CSV (one row per key, or per key
-- and UTC day or month).
--
-- Both read whole UTC hours from the rollups and the partial hours at either end from
-- the ledger, as usage_report does, so any range is exact. Keys are passed as an array
-- (a page of them: the CSV export pages through the keys so that no answer grows with
-- the ledger); null means every key.
--
-- usage_key_figures: per key (and period) calls, end users, events, LLM calls, tokens,
-- TTS characters, STT seconds, cost, unpriced and error events, and call_seconds: the
-- summed duration (bot start to end, or to now while running) of the calls counted.
-- Money and seconds are text, so clients keep every digit.
--
-- usage_cost_by_kind: per key and kind (llm, tts, stt, and any kind later added), the
-- events and their cost, from the dimensions rollup (usage_rollup_dims_hourly).

create or replace function public.usage_key_figures(
  p_key_ids uuid[],
  p_start timestamptz,
  p_end timestamptz,
  p_period text default null
)
returns table (
  api_key_id uuid,
  period_start timestamptz,
  period_end timestamptz,
  calls bigint,
  end_users bigint,
  events bigint,
  llm_calls bigint,
  input_tokens bigint,
  output_tokens bigint,
  cached_tokens bigint,
  tts_characters bigint,
  stt_seconds text,
  cost_usd text,
  unpriced_events bigint,
  error_events bigint,
  call_seconds text
)
language plpgsql
stable
set search_path = public
set work_mem = '64MB'
as $$
#variable_conflict use_column
declare
  keys uuid[] := coalesce(p_key_ids, array(select k.id from api_keys k));
  whole_start timestamptz := date_trunc('hour', p_start, 'UTC')
    + case when date_trunc('hour', p_start, 'UTC') = p_start then interval '0' else interval '1 hour' end;
  whole_end timestamptz := date_trunc('hour', p_end, 'UTC');
  step interval := case p_period when 'day' then interval '1 day' when 'month' then interval '1 month' end;
begin
  if p_start is null or p_end is null or p_start >= p_end then
    raise exception 'start must be before end' using errcode = '22023';
  end if;
  if p_period is not null and p_period not in ('day', 'month') then
    raise exception 'period must be day or month (got %)', p_period using errcode = '22023';
  end if;
  if whole_start >= whole_end then
    whole_start := p_end;
    whole_end := p_end;
  end if;

  return query
  with parts as materialized (
    select c.api_key_id as key_id,
      case when p_period is null then p_start
           else date_trunc(p_period, c.bucket_hour, 'UTC') end as bucket,
      c.workflow_thread_id, c.end_user_id, c.events, c.llm_calls, c.input_tokens,
      c.output_tokens, c.cache_read_tokens, c.tts_characters, c.stt_seconds, c.cost_usd,
      c.unpriced_events, c.error_events
    from usage_rollup_call_hourly c
    where c.api_key_id = any (keys)
      and c.bucket_hour >= whole_start and c.bucket_hour < whole_end
    union all
    select e.api_key_id,
      case when p_period is null then p_start
           else date_trunc(p_period, e.occurred_at, 'UTC') end,
      e.workflow_thread_id, e.end_user_id, 1, (e.kind = 'llm')::int, e.input_tokens,
      e.output_tokens, e.cache_read_tokens,
      case when e.kind = 'tts' then e.characters else 0 end,
      case when e.kind = 'stt' then e.audio_seconds else 0 end, coalesce(e.cost_usd, 0),
      (e.cost_usd is null)::int, e.is_error::int
    from usage_events e
    where e.api_key_id = any (keys)
      and ((e.occurred_at >= p_start and e.occurred_at < whole_start)
        or (e.occurred_at >= whole_end and e.occurred_at < p_end))
  ),
  sums as (
    select key_id, bucket, sum(events) as events, sum(llm_calls) as llm_calls,
      sum(input_tokens) as input_tokens, sum(output_tokens) as output_tokens,
      sum(cache_read_tokens) as cached_tokens, sum(tts_characters) as tts_characters,
      sum(stt_seconds) as stt_seconds, sum(cost_usd) as cost_usd,
      sum(unpriced_events) as unpriced_events, sum(error_events) as error_events
    from parts group by key_id, bucket
  ),
  call_set as (
    select distinct key_id, bucket, workflow_thread_id from parts
  ),
  per_calls as (
    select s.key_id, s.bucket, count(*) as calls,
      coalesce(sum(extract(epoch from coalesce(t.bot_ended_at, now()) - t.bot_started_at))
               filter (where t.bot_started_at is not null), 0) as call_seconds
    from call_set s
    join workflow_threads t on t.workflow_thread_id = s.workflow_thread_id
    group by s.key_id, s.bucket
  ),
  users as (
    select key_id, bucket, count(distinct end_user_id) as end_users
    from parts where end_user_id is not null group by key_id, bucket
  )
  select s.key_id,
    greatest(s.bucket, p_start),
    case when p_period is null then p_end else least(s.bucket + step, p_end) end,
    coalesce(c.calls, 0), coalesce(u.end_users, 0), s.events::bigint, s.llm_calls::bigint,
    s.input_tokens::bigint, s.output_tokens::bigint, s.cached_tokens::bigint,
    s.tts_characters::bigint, s.stt_seconds::text, s.cost_usd::text,
    s.unpriced_events::bigint, s.error_events::bigint,
    round(coalesce(c.call_seconds, 0), 3)::text
  from sums s
  left join per_calls c on c.key_id = s.key_id and c.bucket = s.bucket
  left join users u on u.key_id = s.key_id and u.bucket = s.bucket
  order by s.key_id, s.bucket;
end
$$;

create or replace function public.usage_cost_by_kind(
  p_key_ids uuid[],
  p_start timestamptz,
  p_end timestamptz
)
returns table (api_key_id uuid, kind text, events bigint, cost_usd text)
language plpgsql
stable
set search_path = public
as $$
#variable_conflict use_column
declare
  keys uuid[] := coalesce(p_key_ids, array(select k.id from api_keys k));
  whole_start timestamptz := date_trunc('hour', p_start, 'UTC')
    + case when date_trunc('hour', p_start, 'UTC') = p_start then interval '0' else interval '1 hour' end;
  whole_end timestamptz := date_trunc('hour', p_end, 'UTC');
begin
  if p_start is null or p_end is null or p_start >= p_end then
    raise exception 'start must be before end' using errcode = '22023';
  end if;
  if whole_start >= whole_end then
    whole_start := p_end;
    whole_end := p_end;
  end if;
  return query
  select x.key_id, x.kind, sum(x.events)::bigint, sum(x.cost_usd)::text
  from (
    select r.api_key_id as key_id, r.kind, r.events, r.cost_usd
    from usage_rollup_dims_hourly r
    where r.api_key_id = any (keys)
      and r.bucket_hour >= whole_start and r.bucket_hour < whole_end
    union all
    select e.api_key_id, e.kind, 1, coalesce(e.cost_usd, 0)
    from usage_events e
    where e.api_key_id = any (keys)
      and ((e.occurred_at >= p_start and e.occurred_at < whole_start)
        or (e.occurred_at >= whole_end and e.occurred_at < p_end))
  ) x
  group by x.key_id, x.kind
  order by x.key_id, x.kind;
end
$$;

revoke execute on function public.usage_key_figures(uuid[], timestamptz, timestamptz, text)
  from public, anon, authenticated;
grant execute on function public.usage_key_figures(uuid[], timestamptz, timestamptz, text)
  to service_role;
revoke execute on function public.usage_cost_by_kind(uuid[], timestamptz, timestamptz)
  from public, anon, authenticated;
grant execute on function public.usage_cost_by_kind(uuid[], timestamptz, timestamptz)
  to service_role;
