-- usage_report, reworked for speed at millions of ledger rows: sums are one hash
-- aggregate per group, distinct calls and end users are hash-distinct passes (no
-- per-group sorts), the day key is formatted once per group rather than once per row,
-- and the work memory is large enough that nothing spills to disk. Same output.

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

  with parts as materialized (
    select
      case p_group_by
        when 'model' then r.model when 'category' then r.category when 'kind' then r.kind
        when 'end_user' then r.end_user_id
      end as key_text,
      case when p_group_by = 'day' then date_trunc('day', r.bucket_hour, 'UTC') end as key_day,
      r.workflow_thread_id, r.end_user_id, r.kind, r.events, r.input_tokens, r.output_tokens,
      r.cache_read_tokens, r.characters, r.audio_seconds, r.cost_usd, r.unpriced_events,
      r.latency_ms_sum, r.latency_events, r.error_events
    from usage_rollup_hourly r
    where r.api_key_id = p_api_key_id
      and r.bucket_hour >= whole_start and r.bucket_hour < whole_end
    union all
    select
      case p_group_by
        when 'model' then e.model when 'category' then e.category when 'kind' then e.kind
        when 'end_user' then e.end_user_id
      end,
      case when p_group_by = 'day' then date_trunc('day', e.occurred_at, 'UTC') end,
      e.workflow_thread_id, e.end_user_id, e.kind, 1, e.input_tokens, e.output_tokens,
      e.cache_read_tokens, e.characters, e.audio_seconds, coalesce(e.cost_usd, 0),
      (e.cost_usd is null)::int, coalesce(e.latency_ms, 0), (e.latency_ms is not null)::int,
      e.is_error::int
    from usage_events e
    where e.api_key_id = p_api_key_id
      and ((e.occurred_at >= p_start and e.occurred_at < whole_start)
        or (e.occurred_at >= whole_end and e.occurred_at < p_end))
  ),
  sums as (
    select key_text, key_day,
      sum(events) as events,
      coalesce(sum(events) filter (where kind = 'llm'), 0) as llm_calls,
      sum(input_tokens) as input_tokens, sum(output_tokens) as output_tokens,
      sum(cache_read_tokens) as cached_tokens,
      coalesce(sum(characters) filter (where kind = 'tts'), 0) as tts_characters,
      coalesce(sum(audio_seconds) filter (where kind = 'stt'), 0) as stt_seconds,
      sum(cost_usd) as cost_usd,
      coalesce(sum(cost_usd) filter (where end_user_id is not null), 0) as end_user_cost_usd,
      sum(unpriced_events) as unpriced_events,
      coalesce(sum(latency_ms_sum) filter (where kind = 'llm'), 0) as llm_latency_ms_sum,
      coalesce(sum(latency_events) filter (where kind = 'llm'), 0) as llm_latency_events,
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
